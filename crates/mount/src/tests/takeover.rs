//! A mount taken over by a new process, without a kernel: everything the
//! first `DfcacheFs` gave the kernel (inodes of tasks, trees and imports;
//! handles) is answered the same by a second one restored from the state
//! journal, as the next process after a crash would be.

use std::os::fd::AsFd;
use std::sync::Arc;

use super::*;
use crate::error::Errno;
use crate::filesystem::TREE_ID_XATTR;
use crate::inodes::{IMPORT_INO, TASKS_INO, TREES_INO};
use crate::takeover::journal::Journal;

/// A file system writing its state journal, and the journal.
fn journaled(fake: &Arc<FakeDaemon>) -> (DfcacheFs, Arc<Journal>) {
    let fs = mounted(fake);
    let journal = Arc::new(Journal::create().unwrap());
    fs.attach_journal(journal.clone());
    fs.state_log().connection(45, false, 0);
    (fs, journal)
}

/// The next process: a new file system on the same daemon, restored from
/// what the journal holds now.
fn taken_over(fake: &Arc<FakeDaemon>, journal: &Journal) -> DfcacheFs {
    let (again, records) = Journal::open(journal.fd().try_clone_to_owned().unwrap()).unwrap();
    let fs = mounted(fake);
    fs.attach_journal(Arc::new(again));
    let restored = fs.restore(records);
    assert_eq!(restored.generation, 1);
    fs
}

async fn write_import(fs: &DfcacheFs, parent: u64, n: &str, data: &[u8]) -> (u64, u64) {
    let (attr, opened) = fs
        .create(parent, &name(n), 0o644, false, 0, 0)
        .await
        .unwrap();
    fs.write(opened.fh, 0, data.to_vec()).await.unwrap();
    (attr.ino, opened.fh)
}

#[tokio::test]
async fn every_inode_the_kernel_was_given_answers_the_same_after_a_takeover() {
    let fake = FakeDaemon::new(DEADLINE);
    let listed = bytes(3 * MIB, 1);
    let listed_id = fake.add_task(&listed);
    let (fs, journal) = journaled(&fake);

    // A task looked up, a finished import, a directory tree committed and
    // opened under trees/, a symlink, an import being written.
    let task = fs.lookup(TASKS_INO, &name(&listed_id)).await.unwrap();
    let (done, fh) = write_import(&fs, IMPORT_INO, "done", &bytes(MIB, 2)).await;
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    fs.setattr(
        done,
        crate::attr::SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = fs
        .mkdir(IMPORT_INO, &name("model"), 0o755, 0, 0)
        .await
        .unwrap();
    let (inner, fh) = write_import(&fs, dir.ino, "weights", &bytes(2 * MIB, 3)).await;
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    fs.symlink(
        dir.ino,
        &name("link"),
        std::path::Path::new("weights"),
        0,
        0,
    )
    .await
    .unwrap();
    let tree_id =
        String::from_utf8(fs.getxattr(dir.ino, &name(TREE_ID_XATTR)).await.unwrap()).unwrap();
    let tree = fs.lookup(TREES_INO, &name(&tree_id)).await.unwrap();
    let tree_file = fs.lookup(tree.ino, &name("weights")).await.unwrap();
    let tree_fh = fs.open(tree_file.ino, false, false).await.unwrap().fh;
    let (writing, writing_fh) = write_import(&fs, IMPORT_INO, "half", &bytes(MIB, 4)).await;
    fs.rename(
        IMPORT_INO,
        &name("done"),
        IMPORT_INO,
        &name("renamed"),
        false,
    )
    .await
    .unwrap();

    let inos = [task.ino, done, dir.ino, inner, tree.ino, tree_file.ino];
    let before: Vec<_> = {
        let mut v = Vec::new();
        for ino in inos {
            v.push(fs.getattr(ino).await.unwrap());
        }
        v
    };
    let listing_before = fs.readdir(IMPORT_INO).await.unwrap();
    drop(fs);

    let fs = taken_over(&fake, &journal);
    for (ino, attr) in inos.iter().zip(&before) {
        assert_eq!(&fs.getattr(*ino).await.unwrap(), attr, "inode {ino}");
    }
    // Names resolve to the same inodes.
    assert_eq!(
        fs.lookup(IMPORT_INO, &name("renamed")).await.unwrap().ino,
        done
    );
    assert_eq!(
        fs.lookup(dir.ino, &name("weights")).await.unwrap().ino,
        inner
    );
    assert_eq!(
        fs.readlink(fs.lookup(dir.ino, &name("link")).await.unwrap().ino)
            .unwrap(),
        b"weights"
    );
    assert_eq!(
        fs.lookup(tree.ino, &name("weights")).await.unwrap().ino,
        tree_file.ino
    );
    // The import being written is gone from import/ and fails at its next
    // write and close; the listing lost exactly it.
    let listing_after = fs.readdir(IMPORT_INO).await.unwrap();
    let lost: Vec<_> = listing_before
        .iter()
        .filter(|e| !listing_after.contains(e))
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(lost, vec![name("half")]);
    assert!(fs.is_unknown_earlier_handle(writing_fh));
    fs.adopt_handle(writing_fh, writing).await.unwrap();
    assert_eq!(
        fs.write(writing_fh, MIB, b"more".to_vec()).await,
        Err(Errno::EIO)
    );
    assert_eq!(fs.flush(writing_fh).await, Err(Errno::EIO));
    fs.release(writing_fh).await.unwrap();
    // A handle open on the tree file reads on, with the same bytes.
    fs.adopt_handle(tree_fh, tree_file.ino).await.unwrap();
    assert_eq!(
        &fs.read(tree_fh, 0, MIB as u32).await.unwrap()[..],
        &bytes(2 * MIB, 3)[..MIB as usize]
    );
    // New names do not collide with the old ones, nor handles.
    let (fresh, fresh_fh) = write_import(&fs, IMPORT_INO, "fresh", &bytes(10, 5)).await;
    assert!(inos.iter().all(|i| *i < fresh) && writing < fresh);
    assert!(!fs.is_unknown_earlier_handle(fresh_fh) && fresh_fh > writing_fh);
    // And a third process knows what the second added.
    fs.flush(fresh_fh).await.unwrap();
    drop(fs);
    let (again, records) = Journal::open(journal.fd().try_clone_to_owned().unwrap()).unwrap();
    let fs = mounted(&fake);
    fs.attach_journal(Arc::new(again));
    assert_eq!(fs.restore(records).generation, 2);
    assert_eq!(
        fs.lookup(IMPORT_INO, &name("fresh")).await.unwrap().ino,
        fresh
    );
    let _ = journal.fd().as_fd();
}

#[tokio::test]
async fn a_listing_open_before_the_takeover_answers_from_the_same_snapshot() {
    let fake = FakeDaemon::new(DEADLINE);
    let ids: Vec<_> = (0..3).map(|i| fake.add_task(&bytes(MIB, i))).collect();
    let (fs, journal) = journaled(&fake);
    let fh = fs.opendir(TASKS_INO).await.unwrap();
    let before = fs.dir_listing(fh).unwrap();
    assert_eq!(before.len(), 2 + ids.len());
    // A listing opened and closed before the takeover is not kept.
    let closed = fs.opendir(TASKS_INO).await.unwrap();
    fs.releasedir(TASKS_INO, closed);
    drop(fs);
    // The directory changes while no process serves the mount.
    fake.add_task(&bytes(MIB, 9));
    let fs = taken_over(&fake, &journal);
    // The kernel reads on by offset: the same entries, at the same places.
    assert_eq!(fs.dir_listing(fh).unwrap(), before);
    assert!(fs.dir_listing(closed).is_err());
    // A new listing sees the directory as it is.
    let now = fs.opendir(TASKS_INO).await.unwrap();
    assert_eq!(fs.dir_listing(now).unwrap().len(), 3 + ids.len());
}

#[tokio::test]
async fn a_listing_of_a_tree_directory_is_taken_again_from_its_manifest() {
    let fake = FakeDaemon::new(DEADLINE);
    let (fs, journal) = journaled(&fake);
    let dir = fs.mkdir(IMPORT_INO, &name("t"), 0o755, 0, 0).await.unwrap();
    for (n, seed) in [("a", 4), ("b", 5)] {
        let (_, fh) = write_import(&fs, dir.ino, n, &bytes(MIB, seed)).await;
        fs.flush(fh).await.unwrap();
        fs.release(fh).await.unwrap();
    }
    let tree_id = fs.getxattr(dir.ino, &name(TREE_ID_XATTR)).await.unwrap();
    let tree_id = String::from_utf8(tree_id).unwrap();
    let root = fs.lookup(TREES_INO, &name(&tree_id)).await.unwrap().ino;
    let fh = fs.opendir(root).await.unwrap();
    let before = fs.dir_listing(fh).unwrap();
    assert_eq!(before.len(), 2 + 2);
    drop(fs);
    let fs = taken_over(&fake, &journal);
    assert!(fs.dir_listing(fh).is_err() && fs.is_unknown_earlier_handle(fh));
    assert_eq!(fs.adopt_listing(fh, root).await.unwrap(), before);
}
