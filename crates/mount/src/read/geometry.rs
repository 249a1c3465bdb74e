//! What the mount knows of a task's layout: its size and piece length.

use std::sync::Arc;

use dfcache_wire::domain::piece::reported_or_default;

/// What the cache needs to know of a task to fetch its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskGeometry {
    pub id: Arc<str>,
    pub content_length: u64,
    pub piece_length: u64,
}

impl TaskGeometry {
    /// A task as a daemon described it: its piece length, or the default
    /// rule's when it reported none.
    pub fn new(id: &str, content_length: u64, reported_piece_length: Option<u64>) -> Self {
        TaskGeometry {
            id: id.into(),
            content_length,
            piece_length: reported_or_default(reported_piece_length, content_length),
        }
    }

    pub fn piece_count(&self) -> u64 {
        self.content_length.div_ceil(self.piece_length.max(1))
    }

    /// Byte range `(offset, len)` of piece `index`.
    pub fn piece_range(&self, index: u64) -> (u64, u64) {
        let offset = index * self.piece_length;
        (
            offset,
            self.piece_length
                .min(self.content_length.saturating_sub(offset)),
        )
    }
}
