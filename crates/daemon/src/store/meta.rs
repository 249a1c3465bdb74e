//! A stored task's metadata, kept beside its content. The file holds a
//! protobuf message with the field numbers of `common.v2.PersistentCacheTask`
//! (stores written before this type existed hold exactly that message), but
//! the store owns its format: it does not depend on the generated gRPC code.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::store::error::{StoreError, StoreResult};
use dfcache_wire::domain::piece::piece_count;
use dfcache_wire::domain::ttl::{duration_from_proto, duration_to_proto};

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
    /// The uids that stored this content (the first import and each
    /// import of the same content since), at most [`MAX_IMPORTERS`]: who
    /// may delete the task besides root. Empty for a task stored before
    /// importers were recorded.
    pub importers: Vec<u32>,
}

/// Importers recorded per task; one past them is served the task as
/// everyone else but is not recorded (and so may not delete it). Bounds a
/// metadata file that any uid re-importing the content would grow.
pub const MAX_IMPORTERS: usize = 32;

/// The metadata file's message: `common.v2.PersistentCacheTask`'s numbers
/// for the fields the store keeps (the others, replica counts and state,
/// are what the server reports, not what the store knows).
#[derive(Clone, PartialEq, Message)]
struct StoredTask {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(uint64, tag = "2")]
    persistent_replica_count: u64,
    #[prost(string, optional, tag = "5")]
    tag: Option<String>,
    #[prost(string, optional, tag = "6")]
    application: Option<String>,
    #[prost(uint64, tag = "7")]
    piece_length: u64,
    #[prost(uint64, tag = "8")]
    content_length: u64,
    #[prost(uint32, tag = "9")]
    piece_count: u32,
    #[prost(message, optional, tag = "11")]
    ttl: Option<prost_types::Duration>,
    #[prost(message, optional, tag = "12")]
    created_at: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "13")]
    updated_at: Option<prost_types::Timestamp>,
    /// The store's own field, numbered far past the wire message's, which
    /// ignores it (a decoder of `PersistentCacheTask` skips it).
    #[prost(uint32, repeated, tag = "100")]
    importers: Vec<u32>,
}

impl TaskMeta {
    /// Records `uid` among the importers, unless it is one or the list is
    /// full.
    pub fn add_importer(&mut self, uid: u32) {
        if !self.importers.contains(&uid) && self.importers.len() < MAX_IMPORTERS {
            self.importers.push(uid);
        }
    }

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

    pub fn encode(&self) -> Vec<u8> {
        StoredTask {
            id: self.id.clone(),
            persistent_replica_count: self.persistent_replica_count,
            tag: self.tag.clone(),
            application: self.application.clone(),
            piece_length: self.piece_length,
            content_length: self.content_length,
            piece_count: self.piece_count(),
            ttl: Some(duration_to_proto(self.ttl)),
            created_at: Some(self.created_at.into()),
            updated_at: Some(self.updated_at.into()),
            importers: self.importers.clone(),
        }
        .encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> StoreResult<Self> {
        let task = StoredTask::decode(bytes)
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
            // A file written by hand or by another program may hold more.
            importers: task.importers.into_iter().take(MAX_IMPORTERS).collect(),
        })
    }
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
            importers: vec![0, 1000],
        };
        assert_eq!(TaskMeta::decode(&meta.encode()).unwrap(), meta);
        assert_eq!(meta.piece_count(), 3);
    }

    #[test]
    fn absurd_stored_times_and_ttls_make_an_expired_task_not_a_panic() {
        let meta = TaskMeta {
            id: "b".repeat(64),
            content_length: 1,
            piece_length: 4 << 20,
            persistent_replica_count: 1,
            tag: None,
            application: None,
            ttl: Duration::from_secs(60),
            created_at: UNIX_EPOCH,
            updated_at: UNIX_EPOCH,
            importers: Vec::new(),
        };
        let mut task = StoredTask::decode(meta.encode().as_slice()).unwrap();
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
            let _ = meta.encode();
        }
    }
}
