//! Local task files, which opens may pass through to: finished downloads
//! a released daemon linked into the spool.

use std::io::Read;

use super::*;
use crate::daemon::fake::{Call, Fault};
use crate::daemon::Code;

/// A mount on a released daemon with a spool the daemon links into.
fn spooled(fake: &Arc<FakeDaemon>, spool: &std::path::Path) -> DfcacheFs {
    let mut config = config();
    config.spool = Some(spool.to_path_buf());
    DfcacheFs::new(fake.clone(), config)
}

#[tokio::test]
async fn a_released_daemon_links_its_file_into_the_spool_and_the_finished_download_is_local() {
    let fake = FakeDaemon::legacy(DEADLINE);
    let content = bytes(9 * MIB + 5, 3);
    // Only the daemon's peers have it: the download fetches it, a piece
    // every 20 ms.
    let id = fake.add_remote_task(&content);
    fake.inject(Call::Download, Fault::Trickle(Duration::from_millis(20)));
    let spool = tempfile::tempdir().unwrap();
    let fs = spooled(&fake, spool.path());
    let fh = open_task(&fs, &id).await;
    assert!(
        fs.local_file(fh).is_none(),
        "a task the daemon does not hold is not local at its open"
    );

    let tail = fs.read(fh, 9 * MIB - 3, 100).await.unwrap();
    assert_eq!(&tail[..], &content[9 * MIB as usize - 3..]);
    assert_eq!(fake.calls(Call::Download), 1);
    // The daemon's name for the file is gone: the mount holds it open.
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);

    // Every piece read: the download is complete.
    let mut offset = 0;
    while offset < content.len() as u64 {
        offset += fs.read(fh, offset, 1 << 20).await.unwrap().len() as u64;
    }
    let local = fs
        .local_file(fh)
        .expect("the finished download is a local file");
    let mut read_back = Vec::new();
    (&*local.file).read_to_end(&mut read_back).unwrap();
    assert!(read_back == content, "the local file is not the task");
    // Another open of the task is local at once, with no new download.
    let again = open_task(&fs, &id).await;
    assert!(fs.local_file(again).is_some());
    assert_eq!(fake.calls(Call::Download), 1);
    // The download left the daemon's copy unmarked, as it found it.
    assert_eq!(fake.local_copy(&id), Some((true, false)));
}

#[tokio::test]
async fn a_task_the_daemon_holds_is_local_at_its_first_open_and_keeps_its_mark() {
    let fake = FakeDaemon::legacy(DEADLINE);
    let content = bytes(6 * MIB + 1, 5);
    let id = fake.add_task(&content);
    let spool = tempfile::tempdir().unwrap();
    let fs = spooled(&fake, spool.path());
    let fh = open_task(&fs, &id).await;
    let local = fs
        .local_file(fh)
        .expect("a task the daemon holds is linked and complete within its open");
    let mut read_back = Vec::new();
    (&*local.file).read_to_end(&mut read_back).unwrap();
    assert!(read_back == content, "the local file is not the task");
    assert_eq!(fake.calls(Call::StatLocal), 1);
    assert_eq!(fake.calls(Call::Download), 1);
    // A persistent copy stays persistent through the mount's download.
    assert_eq!(fake.local_copy(&id), Some((true, true)));
}

#[tokio::test]
async fn a_daemon_that_cannot_say_what_it_holds_still_serves_reads() {
    let fake = FakeDaemon::legacy(DEADLINE);
    let content = bytes(5 * MIB, 6);
    let id = fake.add_task(&content);
    fake.inject(Call::StatLocal, Fault::Status(Code::Internal));
    let spool = tempfile::tempdir().unwrap();
    let fs = spooled(&fake, spool.path());
    let fh = open_task(&fs, &id).await;
    let mut offset = 0;
    while offset < content.len() as u64 {
        let got = fs.read(fh, offset, 1 << 20).await.unwrap();
        assert_eq!(
            &got[..],
            &content[offset as usize..offset as usize + got.len()]
        );
        offset += got.len() as u64;
    }
    assert_eq!(fake.calls(Call::Download), 1);
}

#[tokio::test]
async fn a_streaming_daemon_without_a_store_here_has_no_local_files() {
    let fake = FakeDaemon::new(DEADLINE);
    let id = fake.add_task(&bytes(3 * MIB, 4));
    let fs = mounted(&fake);
    let fh = open_task(&fs, &id).await;
    fs.read(fh, 0, 4096).await.unwrap();
    assert!(fs.local_file(fh).is_none());
    assert_eq!(fs.local_source(), None);
}
