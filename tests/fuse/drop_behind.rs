//! A task larger than `--drop-behind-above` does not stay in the kernel's
//! page cache behind a sequential reader; a smaller one keeps every page.
//! `fincore` counts the pages the kernel holds for the file.

use std::path::Path;

use crate::common::*;
use crate::harness::*;

/// Bytes of `path` in the kernel's page cache.
fn resident(path: &Path) -> u64 {
    let out = sh_ok(&format!(
        "fincore --bytes --noheadings --output RES {}",
        q(path)
    ));
    out.trim().parse().expect("fincore prints a byte count")
}

#[test]
fn a_big_task_read_front_to_back_leaves_only_its_tail_in_the_page_cache_and_a_small_one_stays() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    let len = 64 * MIB;
    write_file(&src, len, 71);
    let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
    let sum = |p: &Path| sh_ok(&format!("dd if={} bs=1M status=none | sha256sum", q(p)));

    // Bound 16 MiB: a quarter of it (4 MiB) is kept behind the reader.
    let m = Mounted::on(&daemon, root.path(), &["--drop-behind-above", "16mib"]);
    let task = m.task(&id);
    assert_eq!(sum(&task), sum(&src));
    // Drops are sent after the reads they follow: poll for them.
    eventually(
        "the page cache drops what the reader left behind",
        10,
        || resident(&task) <= 8 * MIB,
    );
    drop(m);

    let m = Mounted::on(&daemon, root.path(), &["--drop-behind-above", "128mib"]);
    let task = m.task(&id);
    assert_eq!(sum(&task), sum(&src));
    assert_eq!(resident(&task), len, "a task under the bound stays cached");
    drop(m);

    // A random reader of the big task drops nothing.
    let m = Mounted::on(&daemon, root.path(), &["--drop-behind-above", "16mib"]);
    let task = m.task(&id);
    sh_ok(&format!(
        "for o in 40 3 57 11 29; do dd if={} bs=1M skip=$o count=1 status=none > /dev/null; done",
        q(&task)
    ));
    // Each read keeps its MiB (the kernel may read a little ahead too).
    assert!(resident(&task) >= 5 * MIB, "random reads keep their pages");
}
