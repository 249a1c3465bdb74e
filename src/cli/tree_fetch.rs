//! A tree's manifest read into memory, bounded: its pieces with their
//! content (any daemon, released dfdaemon included), refused as soon as
//! the daemon announces more bytes than a manifest may have.

use anyhow::bail;

use dfcache_client::{Client, Deliver};
use dfcache_wire::tree::Limits;

/// The manifest's bytes. A released dfdaemon holds the manifest afterwards
/// and marks its copy `persistent` or not (see `Client::hold`).
pub async fn manifest_bytes(
    client: &Client,
    id: &str,
    persistent: bool,
) -> anyhow::Result<Vec<u8>> {
    let limit = Limits::default().max_manifest_bytes as u64;
    let mut pieces = client.hold(id, Deliver::Content, persistent).await?;
    let mut bytes: Option<Vec<u8>> = None;
    let mut received = 0u64;
    while let Some(piece) = pieces.next_piece().await? {
        let len = pieces.content_length().unwrap_or(0);
        if len > limit {
            bail!("task {id} is {len} bytes: too large for a tree manifest (at most {limit})");
        }
        let buf = bytes.get_or_insert_with(|| vec![0; len as usize]);
        let Some(content) = piece.content else {
            bail!("the daemon sent piece {} without its content", piece.number);
        };
        let end = piece.offset.checked_add(content.len() as u64);
        match end {
            Some(end) if end <= buf.len() as u64 => {
                buf[piece.offset as usize..end as usize].copy_from_slice(&content);
                received += content.len() as u64;
            }
            _ => bail!("the daemon sent a piece past the end of task {id}"),
        }
    }
    let bytes = bytes.unwrap_or_default();
    if received != bytes.len() as u64 {
        bail!("the download of task {id} ended before all of it arrived");
    }
    Ok(bytes)
}
