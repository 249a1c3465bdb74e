//! Every injected daemon fault, mapped to the errno a program sees.

use super::*;
use crate::daemon::fake::{Call, Fault};
use crate::daemon::Code;
use crate::error::Errno;
use crate::inodes::TASKS_INO;

#[tokio::test]
async fn each_read_fault_gives_its_errno_and_the_next_read_works() {
    for (fault, errno) in [
        (Fault::Stall, Errno::ETIMEDOUT),
        (Fault::Unimplemented, Errno::EOPNOTSUPP),
        (Fault::Status(Code::Unavailable), Errno::EIO),
        (Fault::Status(Code::PermissionDenied), Errno::EACCES),
        (Fault::Short, Errno::EIO),
        (Fault::DisconnectAfter(0), Errno::EIO),
    ] {
        let fake = FakeDaemon::new(DEADLINE);
        let data = bytes(6 * MIB, 12);
        let id = fake.add_task(&data);
        let fs = mounted_without_readahead(&fake);
        let fh = open_task(&fs, &id).await;
        fake.inject(Call::Read, fault.clone());
        let read = fs.read(fh, 0, 4096).await.map(|b| b.len());
        assert_eq!(read, Err(errno), "{fault:?}");
        // The fault was one call's: the same file reads again.
        let got = fs.read(fh, 0, 4096).await.unwrap();
        assert_eq!(&got[..], &data[..4096], "{fault:?}: after the fault");
    }
}

#[tokio::test]
async fn a_slow_trickle_is_not_a_failure() {
    let fake = FakeDaemon::new(DEADLINE);
    let data = bytes(3 * MIB, 13);
    let id = fake.add_task(&data);
    let fs = mounted(&fake);
    let fh = open_task(&fs, &id).await;
    fake.inject(Call::Read, Fault::Trickle(DEADLINE / 2));
    let got = fs.read(fh, 0, 1 << 20).await.unwrap();
    assert_eq!(&got[..], &data[..1 << 20]);
}

#[tokio::test]
async fn lookup_faults_give_their_errno_and_an_unknown_id_is_asked_once() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted(&fake);
    let unknown = "a".repeat(64);
    fake.inject(Call::Stat, Fault::Stall);
    assert_eq!(
        fs.lookup(TASKS_INO, &name(&unknown)).await,
        Err(Errno::ETIMEDOUT)
    );
    assert_eq!(
        fs.lookup(TASKS_INO, &name(&unknown)).await,
        Err(Errno::ENOENT)
    );
    assert_eq!(
        fs.lookup(TASKS_INO, &name(&unknown)).await,
        Err(Errno::ENOENT)
    );
    assert_eq!(
        fake.calls(Call::Stat),
        2,
        "a known-unknown id was asked again"
    );
    // A daemon without stat (2.1.12): unknown, not an error.
    let other = "b".repeat(64);
    fake.inject(Call::Stat, Fault::Unimplemented);
    assert_eq!(
        fs.lookup(TASKS_INO, &name(&other)).await,
        Err(Errno::ENOENT)
    );
    // Not an id at all: no call.
    assert_eq!(
        fs.lookup(TASKS_INO, &name("model.bin")).await,
        Err(Errno::ENOENT)
    );
    assert_eq!(fake.calls(Call::Stat), 3);
}

#[tokio::test]
async fn a_listing_fault_fails_opendir_and_a_daemon_without_listing_shows_known_tasks() {
    let fake = FakeDaemon::new(DEADLINE);
    let id = fake.add_task(b"known");
    let fs = mounted(&fake);
    fake.inject(Call::List, Fault::Stall);
    assert_eq!(fs.opendir(TASKS_INO).await, Err(Errno::ETIMEDOUT));
    fake.inject(Call::List, Fault::Unimplemented);
    let fh = fs.opendir(TASKS_INO).await.unwrap();
    assert!(fs
        .dir_listing(fh)
        .unwrap()
        .iter()
        .all(|e| e.name != *id.as_str()));
    fs.releasedir(TASKS_INO, fh);
    // Once opened by id, a task is known and listed.
    fs.lookup(TASKS_INO, &name(&id)).await.unwrap();
    fake.inject(Call::List, Fault::Unimplemented);
    let fh = fs.opendir(TASKS_INO).await.unwrap();
    assert!(fs
        .dir_listing(fh)
        .unwrap()
        .iter()
        .any(|e| e.name == *id.as_str()));
}

#[tokio::test]
async fn a_listing_is_a_snapshot_per_opendir() {
    let fake = FakeDaemon::new(DEADLINE);
    let ids: Vec<String> = (0..5u8).map(|i| fake.add_task(&[i; 10])).collect();
    let fs = mounted(&fake);
    let fh = fs.opendir(TASKS_INO).await.unwrap();
    fake.remove(&ids[0]);
    fake.add_task(b"new");
    let listed: Vec<_> = fs
        .dir_listing(fh)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    for id in &ids {
        assert!(listed.contains(&name(id)), "{id} left the open listing");
    }
    assert_eq!(fake.calls(Call::List), 1);
    let fresh = fs.opendir(TASKS_INO).await.unwrap();
    let listed: Vec<_> = fs
        .dir_listing(fresh)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert!(!listed.contains(&name(&ids[0])));
}

#[tokio::test]
async fn a_task_deleted_while_open_is_estale_and_forgotten() {
    let fake = FakeDaemon::new(DEADLINE);
    let data = bytes(9 * MIB, 14);
    let id = fake.add_task(&data);
    let fs = mounted_without_readahead(&fake);
    let fh = open_task(&fs, &id).await;
    fs.read(fh, 0, 4096).await.unwrap();
    fake.remove(&id);
    assert_eq!(fs.read(fh, 8 * MIB, 4096).await, Err(Errno::ESTALE));
    // Forgotten: the name is asked of the daemon again, which says no.
    assert_eq!(fs.lookup(TASKS_INO, &name(&id)).await, Err(Errno::ENOENT));
}

#[tokio::test]
async fn whole_task_download_faults_give_their_errno() {
    for (fault, errno) in [
        (Fault::Short, Errno::EIO),
        (Fault::DisconnectAfter(1), Errno::EIO),
        (Fault::Stall, Errno::ETIMEDOUT),
    ] {
        let fake = FakeDaemon::legacy(DEADLINE);
        let data = bytes(9 * MIB, 15);
        let id = fake.add_task(&data);
        let fs = mounted(&fake);
        // The whole-task download starts at the open. The daemon fails
        // every download of it: one that has failed before the read asks
        // is started again by that read (see `TaskFiles::get_or_start`),
        // and which comes first depends on the scheduler.
        fake.inject(Call::Download, fault.clone());
        fake.inject(Call::Download, fault.clone());
        let fh = open_task(&fs, &id).await;
        // The last piece is where a short one shows.
        assert_eq!(fs.read(fh, 8 * MIB, 4096).await, Err(errno), "{fault:?}");
    }
}
