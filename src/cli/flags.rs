//! Flag values as upstream dfcache parses them: sizes with `bytesize`
//! (`4mib`, `4MiB`, `1gb`, `1.5 GiB`: KB/MB are powers of 1000, KiB/MiB
//! of 1024) and durations with `humantime` (`30s`, `1h 30m`, `7d`,
//! `500ms`), so every value upstream accepts means the same here. Also
//! the renderings `stat` and `ls` print.

use std::time::Duration;

use bytesize::ByteSize;

/// A size in bytes, as `bytesize` reads it.
pub fn parse_size(input: &str) -> Result<u64, String> {
    input
        .trim()
        .parse::<ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("{input:?} is not a size like 4mib or 1gb: {e}"))
}

/// A duration, as `humantime` reads it.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    humantime::parse_duration(input.trim())
        .map_err(|e| format!("{input:?} is not a duration like 30s, 5m, 24h or 7d: {e}"))
}

/// `1h 30m`-style rendering, for messages and `stat`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `1.5 GiB`-style rendering (binary units, as the sizes users type).
pub fn format_size(bytes: u64) -> String {
    ByteSize(bytes).to_string_as(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_binary_and_decimal_units_like_upstream() {
        assert_eq!(parse_size("32mib"), Ok(32 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("4 MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1gb"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4194304"), Ok(4194304));
        assert_eq!(parse_size("1k"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4 parsecs").is_err());
    }

    #[test]
    fn durations_read_humantime_units_like_upstream() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn renderings_are_short_and_human() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(9 << 20), "9.0 MiB");
    }
}
