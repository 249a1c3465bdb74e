//! Streaming writes hold a few chunks, not the stream. In a test binary of
//! its own: the peak RSS it reads is the whole process's.

mod common;

use common::inproc::Running;
use dfcache_client::{ImportOptions, NoProgress};
use dfcache_daemon::server::ServeOptions;

const MIB: usize = 1 << 20;

#[tokio::test]
async fn write_memory_is_bounded_by_backpressure() {
    // A reader that produces 256 MiB lazily: if the client buffered the
    // stream, this process would grow by that much. Checked via VmHWM.
    struct Endless {
        left: usize,
    }
    impl tokio::io::AsyncRead for Endless {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = buf.remaining().min(self.left).min(64 * 1024);
            buf.put_slice(&vec![0x5a; n]);
            self.left -= n;
            std::task::Poll::Ready(Ok(()))
        }
    }
    let d = Running::start(ServeOptions::default()).await;
    let before = peak_rss_kib();
    let summary = d
        .client()
        .write_task(
            Endless { left: 256 * MIB },
            None,
            &ImportOptions::default(),
            std::sync::Arc::new(NoProgress),
        )
        .await
        .unwrap();
    assert_eq!(summary.content_length, 256 * MIB as u64);
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 96 * 1024,
        "peak RSS grew by {grown} KiB for a 256 MiB stream"
    );
    d.stop().await;
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
