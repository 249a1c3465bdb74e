//! A task file under `tasks/` (and the task behind a file of a tree).

use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crate::read::geometry::TaskGeometry;

/// A task file under `tasks/`.
#[derive(Debug)]
pub struct TaskNode {
    pub ino: u64,
    pub geometry: TaskGeometry,
    pub created: SystemTime,
    /// When the daemon last said the task exists (a stat, listing or read).
    pub confirmed: Mutex<Instant>,
}

impl TaskNode {
    pub fn confirmed_within(&self, limit: std::time::Duration) -> bool {
        self.confirmed.lock().is_ok_and(|at| at.elapsed() < limit)
    }

    pub fn confirm(&self) {
        if let Ok(mut at) = self.confirmed.lock() {
            *at = Instant::now();
        }
    }
}
