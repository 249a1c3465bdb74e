//! Piece-length rules shared by every path that creates a task.

/// Smallest piece length dfdaemon accepts (and the CLI allows).
pub const MIN_PIECE_LENGTH: u64 = 4 << 20;
/// Largest piece length the default rule picks.
pub const MAX_PIECE_LENGTH: u64 = 64 << 20;
/// Largest piece length a client may ask for: pieces are held whole in
/// memory (the mount's cache, legacy piece content).
pub const MAX_REQUESTED_PIECE_LENGTH: u64 = 1 << 30;
/// The default rule aims at about this many pieces.
const TARGET_PIECE_COUNT: u64 = 500;

/// Piece length for a task of `content_length` bytes when none was given:
/// content length / 500, rounded up to a power of two, clamped to
/// [4 MiB, 64 MiB].
pub fn default_piece_length(content_length: u64) -> u64 {
    let raw = content_length.div_ceil(TARGET_PIECE_COUNT).max(1);
    raw.checked_next_power_of_two()
        .unwrap_or(MAX_PIECE_LENGTH)
        .clamp(MIN_PIECE_LENGTH, MAX_PIECE_LENGTH)
}

/// The piece length a daemon reported, or the default rule's when it
/// reported none (0: a dragonfly-api 2.1.12 daemon, or a listing without it).
pub fn reported_or_default(reported: Option<u64>, content_length: u64) -> u64 {
    reported
        .filter(|&p| p > 0)
        .unwrap_or_else(|| default_piece_length(content_length))
}

/// Number of pieces of a task; an empty task has none.
pub fn piece_count(content_length: u64, piece_length: u64) -> u32 {
    if piece_length == 0 {
        return 0;
    }
    u32::try_from(content_length.div_ceil(piece_length)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_clamped_power_of_two() {
        assert_eq!(default_piece_length(0), MIN_PIECE_LENGTH);
        assert_eq!(default_piece_length(1), MIN_PIECE_LENGTH);
        assert_eq!(default_piece_length(500 * (4 << 20)), 4 << 20);
        assert_eq!(default_piece_length(500 * (4 << 20) + 1), 8 << 20);
        assert_eq!(default_piece_length(500 * (16 << 20)), 16 << 20);
        assert_eq!(default_piece_length(u64::MAX / 2), MAX_PIECE_LENGTH);
    }

    #[test]
    fn piece_count_rounds_up() {
        assert_eq!(piece_count(0, 4 << 20), 0);
        assert_eq!(piece_count(1, 4 << 20), 1);
        assert_eq!(piece_count(4 << 20, 4 << 20), 1);
        assert_eq!(piece_count((4 << 20) + 1, 4 << 20), 2);
    }
}
