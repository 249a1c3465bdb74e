//! The store's metadata format is stable: a store whose metadata files hold
//! an encoded `common.v2.PersistentCacheTask` (as every version before the
//! store had its own message wrote them) opens and serves unchanged.

use std::time::{Duration, SystemTime};

use prost::Message;

use dfcache_daemon::store::Store;
use dfcache_wire::domain::ttl::duration_to_proto;
use dfcache_wire::pb::common::PersistentCacheTask;

#[test]
fn a_store_written_with_wire_type_metadata_opens_and_lists_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let id = "c".repeat(64);
    let now = SystemTime::now();
    let task = PersistentCacheTask {
        id: id.clone(),
        persistent_replica_count: 2,
        current_persistent_replica_count: 1,
        current_replica_count: 1,
        tag: Some("t".into()),
        application: None,
        piece_length: 4 << 20,
        content_length: 5,
        piece_count: 1,
        state: "Succeeded".into(),
        ttl: Some(duration_to_proto(Duration::from_secs(3600))),
        created_at: Some(now.into()),
        updated_at: Some(now.into()),
    };
    std::fs::write(tasks.join(format!("{id}.meta")), task.encode_to_vec()).unwrap();
    std::fs::write(tasks.join(format!("{id}.data")), b"hello").unwrap();

    let store = Store::open(dir.path()).unwrap();
    let listed = store.list();
    assert_eq!(listed.len(), 1);
    let meta = &listed[0];
    assert_eq!(meta.id, id);
    assert_eq!(meta.content_length, 5);
    assert_eq!(meta.piece_length, 4 << 20);
    assert_eq!(meta.persistent_replica_count, 2);
    assert_eq!(meta.tag.as_deref(), Some("t"));
    assert_eq!(meta.ttl, Duration::from_secs(3600));
    // And what the store writes now is that same message.
    let back = PersistentCacheTask::decode(meta.encode().as_slice()).unwrap();
    assert_eq!((back.id, back.content_length, back.piece_count), (id, 5, 1));
}
