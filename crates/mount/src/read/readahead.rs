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
    /// Where the current run started, or how far behind it the page
    /// cache was dropped (see `drop_behind.rs`).
    dropped_to: u64,
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
            // A new run drops nothing before where it started.
            self.dropped_to = offset;
        }
        self.window
    }

    /// The range a sequential run left more than `lag` bytes behind and
    /// that was not dropped yet, once it is at least `step` long (rounded
    /// to steps); None for a reader that is not sequential.
    pub fn behind(&mut self, lag: u64, step: u64) -> Option<(u64, u64)> {
        if self.window == 0 {
            return None;
        }
        let upto = self.next_offset.saturating_sub(lag) / step * step;
        if upto < self.dropped_to.saturating_add(step) {
            return None;
        }
        let from = self.dropped_to;
        self.dropped_to = upto;
        Some((from, upto))
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
    fn a_sequential_run_drops_what_it_left_behind_in_steps_and_a_seek_starts_over() {
        let mut r = Readahead::default();
        let mib = 1 << 20;
        for i in 0..10 {
            r.on_read(i * mib, mib, 8);
        }
        // Read up to 10 MiB; 4 MiB kept behind; steps of 2 MiB.
        assert_eq!(r.behind(4 * mib, 2 * mib), Some((0, 6 * mib)));
        assert_eq!(r.behind(4 * mib, 2 * mib), None, "nothing new");
        r.on_read(10 * mib, mib, 8);
        assert_eq!(r.behind(4 * mib, 2 * mib), None, "less than a step");
        r.on_read(11 * mib, mib, 8);
        assert_eq!(r.behind(4 * mib, 2 * mib), Some((6 * mib, 8 * mib)));
        r.on_read(500 * mib, mib, 8);
        assert_eq!(r.behind(4 * mib, 2 * mib), None, "a seek is not sequential");
        for i in 501..520 {
            r.on_read(i * mib, mib, 8);
        }
        assert_eq!(
            r.behind(4 * mib, 2 * mib),
            Some((500 * mib, 516 * mib)),
            "the new run drops from where it started"
        );
    }

    #[test]
    fn random_readers_drop_nothing() {
        let mut r = Readahead::default();
        for offset in [900u64 << 20, 10 << 20, 700 << 20] {
            r.on_read(offset, 4096, 8);
            assert_eq!(r.behind(0, 4096), None);
        }
    }

    #[test]
    fn zero_max_disables() {
        let mut r = Readahead::default();
        assert_eq!(r.on_read(0, 4096, 0), 0);
        assert_eq!(r.on_read(4096, 4096, 0), 0);
    }
}
