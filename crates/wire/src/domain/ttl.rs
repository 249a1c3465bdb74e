//! How long a task lives, and durations on the wire.

use std::time::Duration;

/// Shortest TTL a client may ask for (as upstream dfcache's CLI).
pub const MIN_TTL: Duration = Duration::from_secs(5 * 60);
/// Longest TTL a client may ask for (as upstream dfcache's CLI).
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86400);
/// TTL of a task created without one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Why a TTL is refused: it names the range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ttl {given} is outside the allowed range of {}s to {}s (5m to 7d)", .min.as_secs(), MAX_TTL.as_secs())]
pub struct TtlOutOfRange {
    pub given: String,
    pub min: Duration,
}

/// Checks a TTL against `min..=MAX_TTL` (`min` is [`MIN_TTL`] except in
/// tests that cannot wait five minutes).
pub fn check_ttl(ttl: Duration, min: Duration) -> Result<Duration, TtlOutOfRange> {
    if (min..=MAX_TTL).contains(&ttl) {
        Ok(ttl)
    } else {
        Err(TtlOutOfRange {
            given: format!("{}s", ttl.as_secs_f64()),
            min,
        })
    }
}

/// A client's TTL: unset or zero means the default (`Ok(None)`); anything
/// negative, malformed or outside `min..=MAX_TTL` is refused, not clamped,
/// so a client learns at once that its TTL was not what it got.
pub fn ttl_from_proto(
    ttl: Option<prost_types::Duration>,
    min: Duration,
) -> Result<Option<Duration>, TtlOutOfRange> {
    let Some(d) = ttl else {
        return Ok(None);
    };
    if d.seconds == 0 && d.nanos == 0 {
        return Ok(None);
    }
    let refused = || TtlOutOfRange {
        given: format!("{}s {}ns", d.seconds, d.nanos),
        min,
    };
    let (Ok(secs), Ok(nanos)) = (u64::try_from(d.seconds), u32::try_from(d.nanos)) else {
        return Err(refused());
    };
    if nanos > 999_999_999 {
        return Err(refused());
    }
    check_ttl(Duration::new(secs, nanos), min)
        .map(Some)
        .map_err(|_| refused())
}

/// A duration on the wire; one too long for it is the longest it holds.
pub fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A duration from the wire. Negative durations mean nothing here and
/// become zero.
pub fn duration_from_proto(d: prost_types::Duration) -> Duration {
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(secs, nanos.min(999_999_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_outside_five_minutes_to_seven_days_are_refused_not_clamped() {
        let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(ttl_from_proto(None, MIN_TTL).unwrap(), None);
        assert_eq!(ttl_from_proto(d(0, 0), MIN_TTL).unwrap(), None);
        assert_eq!(
            ttl_from_proto(d(3600, 0), MIN_TTL).unwrap(),
            Some(Duration::from_secs(3600))
        );
        for bad in [
            d(i64::MAX, 0),
            d(i64::MIN, 0),
            d(-1, 0),
            d(0, -1),
            d(3600, 1_000_000_000),
            d(299, 999_999_999),
            d(7 * 86400, 1),
        ] {
            let err = ttl_from_proto(bad, MIN_TTL).unwrap_err();
            assert!(err.to_string().contains("5m to 7d"), "{err}");
        }
        assert!(check_ttl(Duration::from_secs(60), MIN_TTL).is_err());
        assert!(check_ttl(MAX_TTL, MIN_TTL).is_ok());
    }

    #[test]
    fn durations_cross_the_wire_without_overflow() {
        let long = Duration::from_secs(u64::MAX);
        assert_eq!(duration_to_proto(long).seconds, i64::MAX);
        let negative = prost_types::Duration {
            seconds: -5,
            nanos: -1,
        };
        assert_eq!(duration_from_proto(negative), Duration::ZERO);
        let d = Duration::new(90, 5);
        assert_eq!(duration_from_proto(duration_to_proto(d)), d);
    }
}
