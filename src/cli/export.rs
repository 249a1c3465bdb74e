//! `dfcache export ID -O OUTPUT`: writes a task to a file. The file appears
//! only when complete and verified: a failed export leaves nothing behind.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use tonic::Code;
use tracing::{info_span, Instrument};

use dfcache_client::{Client, ClientError, Progress, ReadRange};
use dfcache_wire::digest::{Digest, Hasher};

use super::args::{parse_timeout, with_timeout, GlobalArgs, TransferArgs};
use super::progress::Bar;

/// Reads of this size when verifying a file written out of order.
const VERIFY_READ: usize = 4 << 20;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The task id.
    pub id: String,
    /// The file to write.
    #[arg(short = 'O', long)]
    pub output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// The id is a tree's (`import --recursive`): recreate the whole tree
    /// as the directory OUTPUT, which must not exist.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Verify the content: sha256:<hex>, sha512:<hex> or crc32:<hex>.
    #[arg(long)]
    pub digest: Option<Digest>,
    /// Legacy mode: receive the pieces' content over the socket instead of
    /// having the daemon write the output path.
    #[arg(long)]
    pub transfer_from_dfdaemon: bool,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Give up after this long.
    #[arg(long, value_parser = parse_timeout, default_value = "2h")]
    pub timeout: Duration,
}

pub async fn run(global: &GlobalArgs, args: ExportArgs) -> anyhow::Result<()> {
    let output =
        std::path::absolute(&args.output).with_context(|| format!("{}", args.output.display()))?;
    check_output(&output, args.overwrite)?;
    let client = global.client();
    let bar = Arc::new(Bar::new(!global.no_progress, "Exporting"));
    let span = info_span!("export", task_id = %args.id, path = %output.display());
    let result = with_timeout(
        args.timeout,
        export(&client, &args, &output, bar.clone() as Arc<dyn Progress>).instrument(span),
    )
    .await;
    bar.finish();
    result.with_context(|| format!("export of task {} failed", args.id))
}

/// Refuses an output that exists (without --overwrite), is a directory, or
/// has no parent directory, before anything reaches the daemon.
fn check_output(output: &Path, overwrite: bool) -> anyhow::Result<()> {
    if output.is_dir() {
        bail!("{} is a directory", output.display());
    }
    if output.exists() && !overwrite {
        bail!(
            "{} already exists (use --overwrite to replace it)",
            output.display()
        );
    }
    match output.parent() {
        Some(parent) if parent.is_dir() => Ok(()),
        _ => bail!("the directory of {} does not exist", output.display()),
    }
}

pub(super) async fn export(
    client: &Client,
    args: &ExportArgs,
    output: &Path,
    bar: Arc<dyn Progress>,
) -> anyhow::Result<()> {
    if args.transfer.stream_mode && !client.is_legacy() {
        match stream_export(client, args, output, bar.clone()).await {
            Err(ExportError::Client(ClientError::Daemon {
                code: Code::Unimplemented,
                ..
            })) => {}
            other => return other.map_err(anyhow::Error::from),
        }
    }
    if args.transfer_from_dfdaemon {
        piece_export(client, args, output, bar).await
    } else {
        daemon_writes_export(client, args, output).await
    }
}

#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Streaming: chunks in order into a temporary file, verified, renamed.
async fn stream_export(
    client: &Client,
    args: &ExportArgs,
    output: &Path,
    bar: Arc<dyn Progress>,
) -> Result<(), ExportError> {
    let mut reader = client.read_task(&args.id, ReadRange::default()).await?;
    if let Some(len) = reader.content_length() {
        bar.set_total(len);
    }
    let temp = TempOutput::create(output)?;
    let mut hasher = args.digest.as_ref().map(|d| Hasher::new(d.algorithm));
    let file = temp.file.clone();
    // One write in flight behind the network read: overlap without
    // buffering more than a chunk or two.
    let mut pending: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
    while let Some((offset, chunk)) = reader.next_chunk().await? {
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        if let Some(p) = pending.take() {
            join_write(p, output).await?;
        }
        let file = file.clone();
        let len = chunk.len() as u64;
        pending = Some(tokio::task::spawn_blocking(move || {
            file.write_all_at(&chunk, offset)
        }));
        bar.advance(len);
    }
    if let Some(p) = pending.take() {
        join_write(p, output).await?;
    }
    if let (Some(expected), Some(h)) = (&args.digest, hasher) {
        expected.verify(&h.finish()).map_err(anyhow::Error::from)?;
    }
    temp.commit(args.overwrite)?;
    Ok(())
}

async fn join_write(
    write: tokio::task::JoinHandle<std::io::Result<()>>,
    output: &Path,
) -> anyhow::Result<()> {
    write
        .await
        .map_err(|e| anyhow!("write task panicked: {e}"))?
        .with_context(|| format!("write {}", output.display()))
}

/// Legacy, `--transfer-from-dfdaemon`: pieces arrive with content in any
/// order and are placed by offset; every byte must be covered once.
async fn piece_export(
    client: &Client,
    args: &ExportArgs,
    output: &Path,
    bar: Arc<dyn Progress>,
) -> anyhow::Result<()> {
    let digest = args.digest.as_ref().map(Digest::to_string);
    let mut pieces = client
        .download_task(&args.id, None, false, args.overwrite, digest.as_deref())
        .await?;
    let temp = TempOutput::create(output)?;
    let mut seen = std::collections::BTreeMap::new();
    while let Some(piece) = pieces.next_piece().await? {
        if let Some(len) = pieces.content_length() {
            bar.set_total(len);
        }
        let content = piece
            .content
            .ok_or_else(|| anyhow!("piece {} came without content", piece.number))?;
        if content.len() as u64 != piece.length {
            bail!(
                "piece {} has {} bytes, expected {}",
                piece.number,
                content.len(),
                piece.length
            );
        }
        if seen.insert(piece.offset, piece.length).is_some() {
            bail!("piece {} arrived twice", piece.number);
        }
        let file = temp.file.clone();
        let offset = piece.offset;
        tokio::task::spawn_blocking(move || file.write_all_at(&content, offset))
            .await
            .map_err(|e| anyhow!("write task panicked: {e}"))?
            .with_context(|| format!("write {}", output.display()))?;
        bar.advance(piece.length);
    }
    let total = pieces
        .content_length()
        .ok_or_else(|| anyhow!("the daemon never said the task's size"))?;
    check_coverage(&seen, total)?;
    if let Some(expected) = &args.digest {
        let file = temp.file.clone();
        let algorithm = expected.algorithm;
        let actual = tokio::task::spawn_blocking(move || digest_of(&file, algorithm, total))
            .await
            .map_err(|e| anyhow!("digest task panicked: {e}"))??;
        expected.verify(&actual)?;
    }
    temp.commit(args.overwrite)
}

/// Legacy: the daemon writes the file at the output's host path.
async fn daemon_writes_export(
    client: &Client,
    args: &ExportArgs,
    output: &Path,
) -> anyhow::Result<()> {
    let real_parent = output
        .parent()
        .map(std::fs::canonicalize)
        .transpose()
        .with_context(|| format!("resolve the directory of {}", output.display()))?
        .ok_or_else(|| anyhow!("{} has no directory", output.display()))?;
    let name = output
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", output.display()))?;
    let literal = real_parent.join(name);
    let daemon_output = args
        .transfer
        .path_mapping
        .to_host(&literal)
        .with_context(|| format!("cannot hand {} to the daemon", output.display()))?;
    // A daemon may follow a symlink at the output path: where it leads
    // must be under a mapped prefix too, or a link out of a mapped volume
    // would smuggle a host path past the mapping.
    if let Some(target) = symlink_destination(&literal)? {
        args.transfer
            .path_mapping
            .to_host(&target)
            .with_context(|| format!("{} is a symbolic link", output.display()))?;
    }
    let digest = args.digest.as_ref().map(Digest::to_string);
    let mut pieces = client
        .download_task(
            &args.id,
            Some(&daemon_output),
            false,
            args.overwrite,
            digest.as_deref(),
        )
        .await?;
    while pieces.next_piece().await?.is_some() {}
    let expected = pieces.content_length();
    let actual = std::fs::metadata(output).map(|m| m.len()).ok();
    if actual.is_none() || (expected.is_some() && actual != expected) {
        bail!(
            "the daemon reported success but {} is not there with the task's size (it wrote {}: check --path-mapping)",
            output.display(),
            daemon_output.display()
        );
    }
    Ok(())
}

/// Where the symlink at `path` leads (followed to its end, and resolved
/// even when it dangles), or None when `path` is no symlink.
fn symlink_destination(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    const MAX_LINKS: usize = 40;
    let mut current = path.to_path_buf();
    for hops in 0..MAX_LINKS {
        let Ok(target) = std::fs::read_link(&current) else {
            return Ok((hops > 0).then_some(current));
        };
        let next = current
            .parent()
            .ok_or_else(|| anyhow!("{} has no directory", current.display()))?
            .join(target);
        let (Some(dir), Some(name)) = (next.parent(), next.file_name()) else {
            bail!(
                "{} leads to {}, which names no file",
                path.display(),
                next.display()
            );
        };
        let dir = std::fs::canonicalize(dir).with_context(|| {
            format!("resolve {} (where {} leads)", dir.display(), path.display())
        })?;
        current = dir.join(name);
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

fn check_coverage(pieces: &std::collections::BTreeMap<u64, u64>, total: u64) -> anyhow::Result<()> {
    let mut next = 0;
    for (&offset, &len) in pieces {
        if offset != next {
            bail!("pieces do not cover bytes {next}..{offset}");
        }
        next = offset + len;
    }
    if next != total {
        bail!("pieces cover {next} of {total} bytes");
    }
    Ok(())
}

fn digest_of(
    file: &File,
    algorithm: dfcache_wire::digest::Algorithm,
    len: u64,
) -> anyhow::Result<Digest> {
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; VERIFY_READ];
    let mut pos = 0;
    while pos < len {
        let want = VERIFY_READ.min((len - pos) as usize);
        file.read_exact_at(&mut buf[..want], pos)
            .context("read back for the digest")?;
        hasher.update(&buf[..want]);
        pos += want as u64;
    }
    Ok(hasher.finish())
}

/// The output under a temporary name in its directory, renamed over the
/// target only by `commit`; removed if dropped before.
struct TempOutput {
    file: Arc<File>,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl TempOutput {
    fn create(target: &Path) -> anyhow::Result<Self> {
        let name = target
            .file_name()
            .ok_or_else(|| anyhow!("{} names no file", target.display()))?;
        let temp = target.with_file_name(format!(
            ".{}.dfcache-{}.part",
            name.to_string_lossy(),
            std::process::id()
        ));
        // Readable too: an out-of-order export is read back for its digest.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .with_context(|| format!("create {}", temp.display()))?;
        Ok(Self {
            file: Arc::new(file),
            temp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    fn commit(mut self, overwrite: bool) -> anyhow::Result<()> {
        // Checked again: the target may have appeared during the transfer.
        if !overwrite && self.target.exists() {
            bail!(
                "{} appeared during the export (use --overwrite to replace it)",
                self.target.display()
            );
        }
        // Durable before it has its name, and the name durable after: an
        // export that returned is there after a power loss, whole.
        self.file
            .sync_all()
            .with_context(|| format!("fsync {}", self.temp.display()))?;
        std::fs::rename(&self.temp, &self.target).with_context(|| {
            format!(
                "rename {} to {}",
                self.temp.display(),
                self.target.display()
            )
        })?;
        self.committed = true;
        let dir = match self.target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync {}", dir.display()))?;
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
