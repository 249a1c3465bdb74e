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

    /// When the task stops being served and is collected.
    pub fn expires_at(&self) -> SystemTime {
        self.updated_at + self.ttl
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

fn time_from_proto(t: prost_types::Timestamp) -> SystemTime {
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
        };
        assert_eq!(TaskMeta::decode(&meta.encode()).unwrap(), meta);
        assert_eq!(meta.piece_count(), 3);
    }
}
