//! The import state machine: create, write, flush (close), fsync, release,
//! duplicated handles, unlink, on the fake daemon.

use super::*;
use crate::daemon::fake::{Call, Fault};
use crate::daemon::Code;
use crate::error::Errno;
use crate::inodes::IMPORT_INO;

/// Creates `import/<n>` and writes `data` sequentially; the handle.
async fn create_and_write(fs: &DfcacheFs, n: &str, data: &[u8]) -> u64 {
    let (_, opened) = fs
        .create(IMPORT_INO, &name(n), 0o644, false, 0, 0)
        .await
        .unwrap();
    for (i, chunk) in data.chunks(300_000).enumerate() {
        let n = fs
            .write(opened.fh, (i * 300_000) as u64, chunk.to_vec())
            .await
            .unwrap();
        assert_eq!(n as usize, chunk.len());
    }
    opened.fh
}

#[tokio::test]
async fn the_first_close_after_data_commits_and_later_closes_commit_nothing() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted(&fake);
    let data = bytes(5 * MIB + 3, 1);
    let fh = create_and_write(&fs, "f", &data).await;
    // A duplicate of the descriptor (the same handle, as after dup()).
    fs.flush(fh).await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(fake.calls(Call::Write), 1, "committed more than once");
    let attr = fs.lookup(IMPORT_INO, &name("f")).await.unwrap();
    assert_eq!(attr.size, data.len() as u64);
    assert_eq!(fake.task_ids().len(), 1);
    let id = fs
        .getxattr(attr.ino, &name("user.dfcache.task_id"))
        .await
        .unwrap();
    assert_eq!(id, fake.task_ids()[0].as_bytes());
    let stored = fake.content(&fake.task_ids()[0]).unwrap();
    assert_eq!(&stored[..], &data[..]);
}

#[tokio::test]
async fn two_handles_on_one_import_commit_once_and_a_write_after_the_commit_is_eio() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted(&fake);
    let data = bytes(MIB, 2);
    let first = create_and_write(&fs, "f", &data).await;
    let ino = fs.lookup(IMPORT_INO, &name("f")).await.unwrap().ino;
    // A second open for writing joins the same import (no O_TRUNC).
    let second = fs.open(ino, true, false).await.unwrap().fh;
    fs.flush(first).await.unwrap();
    assert_eq!(
        fs.write(second, data.len() as u64, b"late".to_vec()).await,
        Err(Errno::EIO)
    );
    fs.flush(second).await.unwrap();
    fs.release(first).await.unwrap();
    fs.release(second).await.unwrap();
    assert_eq!(fake.calls(Call::Write), 1, "committed more than once");
    assert_eq!(fake.task_ids().len(), 1);
}

#[tokio::test]
async fn a_write_not_at_the_end_of_a_streamed_import_is_einval_and_changes_nothing() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted(&fake);
    let fh = create_and_write(&fs, "f", &bytes(1000, 3)).await;
    assert_eq!(fs.write(fh, 10, b"x".to_vec()).await, Err(Errno::EINVAL));
    assert_eq!(fs.write(fh, 2000, b"x".to_vec()).await, Err(Errno::EINVAL));
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    let stored = fake.content(&fake.task_ids()[0]).unwrap();
    assert_eq!(&stored[..], &bytes(1000, 3)[..]);
}

#[tokio::test]
async fn fsync_commits_what_was_written_and_later_writes_are_eio() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted(&fake);
    let data = bytes(2 * MIB, 4);
    let fh = create_and_write(&fs, "f", &data).await;
    fs.fsync(fh).await.unwrap();
    assert_eq!(
        fake.task_ids().len(),
        1,
        "fsync returned before the task existed"
    );
    assert_eq!(
        fs.write(fh, data.len() as u64, b"more".to_vec()).await,
        Err(Errno::EIO)
    );
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(fake.calls(Call::Write), 1);
}

#[tokio::test]
async fn fsync_before_any_data_commits_nothing_and_the_import_goes_on() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted(&fake);
    let fh = create_and_write(&fs, "f", &[]).await;
    fs.fsync(fh).await.unwrap();
    fs.write(fh, 0, b"data".to_vec()).await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(&fake.content(&fake.task_ids()[0]).unwrap()[..], b"data");
}

#[tokio::test]
async fn a_file_closed_without_data_becomes_an_empty_task_on_its_last_release() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted(&fake);
    let fh = create_and_write(&fs, "empty", &[]).await;
    fs.flush(fh).await.unwrap();
    assert!(fake.task_ids().is_empty(), "a close before data committed");
    fs.release(fh).await.unwrap();
    assert_eq!(fake.task_ids().len(), 1);
    assert!(fake.content(&fake.task_ids()[0]).unwrap().is_empty());
}

#[tokio::test]
async fn unlink_of_an_unfinished_import_cancels_it() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted(&fake);
    let fh = create_and_write(&fs, "f", &bytes(3 * MIB, 5)).await;
    fs.unlink(IMPORT_INO, &name("f")).await.unwrap();
    assert_eq!(fs.lookup(IMPORT_INO, &name("f")).await, Err(Errno::ENOENT));
    let _ = fs.flush(fh).await;
    let _ = fs.release(fh).await;
    assert!(fake.task_ids().is_empty(), "a cancelled import was stored");
}

#[tokio::test]
async fn a_refused_import_fails_close_with_its_errno_and_its_name_goes() {
    for (fault, errno) in [
        (
            Fault::FailAtFinish(Code::ResourceExhausted),
            Errno::new(libc::ENOSPC),
        ),
        (Fault::FailAtFinish(Code::InvalidArgument), Errno::EINVAL),
        (Fault::FailAtFinish(Code::Internal), Errno::EIO),
        (Fault::Unimplemented, Errno::EOPNOTSUPP),
        (Fault::Stall, Errno::ETIMEDOUT),
        (Fault::DisconnectAfter(1), Errno::EIO),
    ] {
        let fake = FakeDaemon::new(DEADLINE);
        let fs = mounted(&fake);
        fake.inject(Call::Write, fault.clone());
        let (_, opened) = fs
            .create(IMPORT_INO, &name("f"), 0o644, false, 0, 0)
            .await
            .unwrap();
        // Writes may fail already (the call ended early) with the same errno.
        let mut failed = None;
        for i in 0..3u64 {
            if let Err(e) = fs.write(opened.fh, i * MIB, bytes(MIB, 6)).await {
                failed = Some(e);
                break;
            }
        }
        let closed = fs.flush(opened.fh).await;
        let _ = fs.release(opened.fh).await;
        assert_eq!(
            failed.map_or(closed, Err),
            Err(errno),
            "{fault:?}: the error seen first"
        );
        assert_eq!(
            fs.lookup(IMPORT_INO, &name("f")).await,
            Err(Errno::ENOENT),
            "{fault:?}: the name of a failed import stayed"
        );
        assert!(fake.task_ids().is_empty(), "{fault:?}: a task was stored");
    }
}

#[tokio::test]
async fn a_daemon_known_to_lack_streaming_refuses_imports_at_create_without_a_spool() {
    let fake = FakeDaemon::legacy(DEADLINE);
    let fs = mounted(&fake);
    let created = fs.create(IMPORT_INO, &name("f"), 0o644, false, 0, 0).await;
    assert_eq!(created.err(), Some(Errno::EOPNOTSUPP));
}

/// A mount whose imports' budget holds `shares` imports at once, waiting
/// `within` for one to give its share back.
fn mounted_with_import_shares(fake: &Arc<FakeDaemon>, shares: u64, within: Duration) -> DfcacheFs {
    let mut config = config();
    config.import_memory =
        dfcache_budget::MemoryBudget::new(shares * crate::import::state::IMPORT_SHARE);
    config.fetch_timeout = within;
    DfcacheFs::new(fake.clone(), config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_writers_than_the_import_budget_holds_wait_their_turn_and_all_finish() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = Arc::new(mounted_with_import_shares(
        &fake,
        2,
        Duration::from_secs(10),
    ));
    let budget = fs.config.import_memory.clone();
    // Two writers take both shares and keep their files open.
    let first: Vec<u64> = [
        create_and_write(&fs, "f0", &bytes(3 * MIB, 0)).await,
        create_and_write(&fs, "f1", &bytes(3 * MIB, 1)).await,
    ]
    .into();
    assert_eq!(budget.held(), budget.capacity());
    // Six more wait in their first write for a share.
    let writers: Vec<_> = (2..8u8)
        .map(|i| {
            let fs = fs.clone();
            tokio::spawn(async move {
                let fh = create_and_write(&fs, &format!("f{i}"), &bytes(3 * MIB, i)).await;
                fs.flush(fh).await.unwrap();
                fs.release(fh).await.unwrap();
            })
        })
        .collect();
    for _ in 0..2000 {
        if budget.waiting() == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(budget.waiting(), 6, "the six wait for a share");
    assert_eq!(fake.calls(Call::Write), 2, "only the two have a stream");
    // As the first two end, the others get their shares in turn.
    for fh in first {
        fs.flush(fh).await.unwrap();
        fs.release(fh).await.unwrap();
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(fake.task_ids().len(), 8);
    for i in 0..8u8 {
        let attr = fs
            .lookup(IMPORT_INO, &name(&format!("f{i}")))
            .await
            .unwrap();
        let id = fs
            .getxattr(attr.ino, &name("user.dfcache.task_id"))
            .await
            .unwrap();
        let stored = fake.content(std::str::from_utf8(&id).unwrap()).unwrap();
        assert!(stored[..] == bytes(3 * MIB, i)[..], "import {i}");
    }
    assert_eq!(budget.held(), 0, "every share was given back");
}

#[tokio::test]
async fn a_writer_waiting_for_a_share_nobody_gives_back_gets_etimedout_then_goes_on() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted_with_import_shares(&fake, 1, DEADLINE);
    // `a` holds the only share and writes nothing more for now.
    let a = create_and_write(&fs, "a", &bytes(1000, 1)).await;
    let (_, b) = fs
        .create(IMPORT_INO, &name("b"), 0o644, false, 0, 0)
        .await
        .unwrap();
    let err = fs.write(b.fh, 0, b"b".to_vec()).await.unwrap_err();
    assert_eq!(err, Errno::ETIMEDOUT);
    assert!(err.to_string().contains("memory budget"), "{err}");
    // Once `a` is done, `b` gets the share on its next write.
    fs.flush(a).await.unwrap();
    fs.release(a).await.unwrap();
    fs.write(b.fh, 0, b"b".to_vec()).await.unwrap();
    fs.flush(b.fh).await.unwrap();
    fs.release(b.fh).await.unwrap();
    assert_eq!(fake.task_ids().len(), 2);
    assert_eq!(fs.config.import_memory.held(), 0);
}

#[tokio::test]
async fn an_import_holds_no_share_before_its_first_write_and_an_empty_one_is_stored() {
    let fake = FakeDaemon::new(DEADLINE);
    let fs = mounted_with_import_shares(&fake, 1, DEADLINE);
    let opened: Vec<_> = create_empty(&fs, 3).await;
    assert_eq!(fs.config.import_memory.held(), 0, "created, not written");
    assert_eq!(fake.calls(Call::Write), 0, "no stream opened yet");
    for fh in opened {
        fs.release(fh).await.unwrap();
    }
    assert_eq!(fake.task_ids().len(), 1, "three empty imports are one task");
    assert_eq!(fake.content(&fake.task_ids()[0]).unwrap().len(), 0);
}

/// Creates `n` imports without writing; their handles.
async fn create_empty(fs: &DfcacheFs, n: usize) -> Vec<u64> {
    let mut handles = Vec::new();
    for i in 0..n {
        let (_, opened) = fs
            .create(IMPORT_INO, &name(&format!("e{i}")), 0o644, false, 0, 0)
            .await
            .unwrap();
        handles.push(opened.fh);
    }
    handles
}
