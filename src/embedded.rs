//! What joins the embedded daemon to the mount, which knows neither the
//! daemon nor its store: the store's content files, passed through to the
//! kernel on open.

use dfcache_daemon::store::Store;
use dfcache_mount::passthrough::{LocalContent, LocalFile};

/// The embedded daemon's store as a source of local task files: every task
/// in it is complete.
pub struct StoreFiles(pub Store);

impl LocalContent for StoreFiles {
    fn open(&self, task_id: &str) -> Option<LocalFile> {
        let (_meta, file, lease) = self.0.open_content(task_id).ok()?;
        Some(LocalFile::new(file, Some(Box::new(lease))))
    }
}
