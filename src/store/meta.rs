//! A stored task's metadata, kept beside its content as an encoded
//! `common.v2.PersistentCacheTask` (the wire type already has every field).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::grpc::pb::common::PersistentCacheTask;
use crate::store::error::{StoreError, StoreResult};
use crate::store::piece::piece_count;

/// State string reported for every finished task.
pub const STATE_SUCCEEDED: &str = "Succeeded";

/// What the store knows of one finished task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMeta {
    pub id: String,
    pub content_length: u64,
    pub piece_length: u64,
    pub persistent_replica_count: u64,
    pub tag: Option<String>,
    pub application: Option<String>,
    pub ttl: Duration,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl TaskMeta {
    pub fn piece_count(&self) -> u32 {
        piece_count(self.content_length, self.piece_length)
    }

    /// When the task stops being served and is collected; `None` when that
    /// time cannot be represented (metadata written with an absurd TTL by
    /// an older daemon), which callers treat as expired.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.updated_at.checked_add(self.ttl)
    }

    /// Whether the task is still served at `now`.
    pub fn is_live_at(&self, now: SystemTime) -> bool {
        self.expires_at().is_some_and(|at| at > now)
    }

    pub fn to_proto(&self) -> PersistentCacheTask {
        PersistentCacheTask {
            id: self.id.clone(),
            persistent_replica_count: self.persistent_replica_count,
            current_persistent_replica_count: 1,
            current_replica_count: 1,
            tag: self.tag.clone(),
            application: self.application.clone(),
            piece_length: self.piece_length,
            content_length: self.content_length,
            piece_count: self.piece_count(),
            state: STATE_SUCCEEDED.to_string(),
            ttl: Some(duration_to_proto(self.ttl)),
            created_at: Some(self.created_at.into()),
            updated_at: Some(self.updated_at.into()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> StoreResult<Self> {
        let task = PersistentCacheTask::decode(bytes)
            .map_err(|e| StoreError::InvalidArgument(format!("corrupt metadata: {e}")))?;
        Ok(Self {
            id: task.id,
            content_length: task.content_length,
            piece_length: task.piece_length,
            persistent_replica_count: task.persistent_replica_count,
            tag: task.tag,
            application: task.application,
            ttl: task.ttl.map(duration_from_proto).unwrap_or_default(),
            created_at: task.created_at.map(time_from_proto).unwrap_or(UNIX_EPOCH),
            updated_at: task.updated_at.map(time_from_proto).unwrap_or(UNIX_EPOCH),
        })
    }
}

pub fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Negative durations mean nothing here and become zero.
pub fn duration_from_proto(d: prost_types::Duration) -> Duration {
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(secs, nanos.min(999_999_999))
}

/// Latest time accepted from stored metadata (9999-12-31T23:59:59Z): every
/// later or earlier-than-1970 time is nonsense here and becomes the epoch,
/// which makes the task expired rather than a panic when it is converted
/// back to a timestamp.
const MAX_STORED_SECS: i64 = 253_402_300_799;

fn time_from_proto(t: prost_types::Timestamp) -> SystemTime {
    if !(0..=MAX_STORED_SECS).contains(&t.seconds) {
        return UNIX_EPOCH;
    }
    SystemTime::try_from(t).unwrap_or(UNIX_EPOCH)
}

/// Shortest TTL a client may ask for (as upstream dfcache's CLI).
pub const MIN_TTL: Duration = Duration::from_secs(5 * 60);
/// Longest TTL a client may ask for (as upstream dfcache's CLI).
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86400);

/// A client's TTL: unset or zero means the default (`Ok(None)`); anything
/// negative, malformed or outside `min..=MAX_TTL` is refused, not clamped,
/// so a client learns at once that its TTL was not what it got.
pub fn ttl_from_proto(
    ttl: Option<prost_types::Duration>,
    min: Duration,
) -> StoreResult<Option<Duration>> {
    let Some(d) = ttl else {
        return Ok(None);
    };
    if d.seconds == 0 && d.nanos == 0 {
        return Ok(None);
    }
    let range = || {
        format!(
            "ttl {}s {}ns is outside the allowed range of {}s to {}s (5m to 7d)",
            d.seconds,
            d.nanos,
            min.as_secs(),
            MAX_TTL.as_secs()
        )
    };
    let (Ok(secs), Ok(nanos)) = (u64::try_from(d.seconds), u32::try_from(d.nanos)) else {
        return Err(StoreError::InvalidArgument(range()));
    };
    if nanos > 999_999_999 {
        return Err(StoreError::InvalidArgument(range()));
    }
    let ttl = Duration::new(secs, nanos);
    if !(min..=MAX_TTL).contains(&ttl) {
        return Err(StoreError::InvalidArgument(range()));
    }
    Ok(Some(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_encoding() {
        let now = SystemTime::now();
        let meta = TaskMeta {
            id: "a".repeat(64),
            content_length: 10 << 20,
            piece_length: 4 << 20,
            persistent_replica_count: 2,
            tag: Some("tag".into()),
            application: None,
            ttl: Duration::from_secs(3600),
            created_at: now,
            updated_at: now,
        };
        assert_eq!(TaskMeta::decode(&meta.encode()).unwrap(), meta);
        assert_eq!(meta.piece_count(), 3);
    }

    #[test]
    fn absurd_stored_times_and_ttls_make_an_expired_task_not_a_panic() {
        let mut task = TaskMeta {
            id: "b".repeat(64),
            content_length: 1,
            piece_length: 4 << 20,
            persistent_replica_count: 1,
            tag: None,
            application: None,
            ttl: Duration::from_secs(60),
            created_at: UNIX_EPOCH,
            updated_at: UNIX_EPOCH,
        }
        .to_proto();
        for (secs, ttl) in [
            (i64::MAX, 60),
            (i64::MIN, 60),
            (-1, 60),
            (1_700_000_000, i64::MAX),
            (MAX_STORED_SECS, i64::MAX),
        ] {
            let ts = prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            };
            task.created_at = Some(ts);
            task.updated_at = Some(ts);
            task.ttl = Some(prost_types::Duration {
                seconds: ttl,
                nanos: 0,
            });
            let meta = TaskMeta::decode(&task.encode_to_vec()).unwrap();
            assert!(!meta.is_live_at(SystemTime::now()), "{secs} {ttl}");
            let _ = meta.to_proto();
        }
    }

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
    }
}
