//! Sequential-read detection for one open file: a reader that keeps reading
//! where it left off gets a read-ahead window of blocks that doubles while
//! the run lasts; a seek resets it, so random readers get none.

/// Reads this close to where the last one ended still count as sequential:
/// the kernel's own read-ahead issues requests slightly out of order.
const SLACK: u64 = 2 << 20;

#[derive(Debug, Default)]
pub struct Readahead {
    next_offset: u64,
    /// Blocks to keep ahead of the reader; 0 while not sequential.
    window: u64,
    seen_first: bool,
}

impl Readahead {
    /// Records a read of `len` bytes at `offset` and returns how many blocks
    /// past the end of this read should be fetched ahead (at most `max`).
    pub fn on_read(&mut self, offset: u64, len: u64, max: u64) -> u64 {
        let sequential = if self.seen_first {
            offset + SLACK >= self.next_offset && offset <= self.next_offset + SLACK
        } else {
            // A first read at the start is the beginning of a run.
            offset == 0
        };
        self.seen_first = true;
        self.window = if sequential {
            (self.window * 2).clamp(1, max.max(1))
        } else {
            0
        };
        if max == 0 {
            self.window = 0;
        }
        self.next_offset = self.next_offset.max(offset + len);
        if !sequential {
            self.next_offset = offset + len;
        }
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_grows_while_sequential_and_resets_on_seek() {
        let mut r = Readahead::default();
        let mib = 1 << 20;
        assert_eq!(r.on_read(0, mib, 8), 1);
        assert_eq!(r.on_read(mib, mib, 8), 2);
        assert_eq!(r.on_read(2 * mib, mib, 8), 4);
        assert_eq!(r.on_read(3 * mib, mib, 8), 8);
        assert_eq!(r.on_read(4 * mib, mib, 8), 8);
        assert_eq!(r.on_read(900 * mib, mib, 8), 0, "a seek resets");
        assert_eq!(r.on_read(901 * mib, mib, 8), 1, "a new run starts small");
    }

    #[test]
    fn random_reads_get_no_readahead() {
        let mut r = Readahead::default();
        for offset in [500u64, 90 << 20, 7 << 20, 300 << 20] {
            assert_eq!(r.on_read(offset, 4096, 8), 0);
        }
    }

    #[test]
    fn zero_max_disables() {
        let mut r = Readahead::default();
        assert_eq!(r.on_read(0, 4096, 0), 0);
        assert_eq!(r.on_read(4096, 4096, 0), 0);
    }
}
