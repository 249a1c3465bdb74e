//! A fixed-size buffer whose start is [`ALIGN`]-aligned.

use super::ALIGN;

/// Built from a plain `Vec` over-allocated by one alignment, so no unsafe
/// allocation is needed; `vec![0; n]` of a large size comes from fresh
/// zeroed pages, so an unused tail costs no memory.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    capacity: usize,
    len: usize,
}

impl AlignedBuf {
    /// `capacity` should be a multiple of `ALIGN` so a full buffer can be
    /// written directly.
    pub fn new(capacity: usize) -> Self {
        Self::from_storage(vec![0u8; capacity + ALIGN], capacity)
    }

    /// Reuses `storage` (at least `capacity + ALIGN` bytes), empty.
    pub(super) fn from_storage(storage: Vec<u8>, capacity: usize) -> Self {
        debug_assert!(storage.len() >= capacity + ALIGN);
        let start = storage.as_ptr().align_offset(ALIGN);
        Self {
            storage,
            start,
            capacity,
            len: 0,
        }
    }

    pub(super) fn into_storage(self) -> Vec<u8> {
        self.storage
    }

    /// Copies as much of `data` as fits; returns how much.
    pub fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity - self.len);
        let at = self.start + self.len;
        self.storage[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// The whole capacity, for a read to fill; `set_len` says how much it did.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.capacity]
    }

    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity);
    }

    pub fn filled(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}
