//! Trees that fetch themselves (`--prefetch-trees`) on a daemon without
//! range reads (`serve --legacy`): the first open of a file of a tree
//! starts downloads of the others, so a program walking the model opens
//! each next file already local (passed through to the kernel).

use crate::common::metrics::{free_addr, scrape, value};
use crate::common::tree::make_tree;
use crate::common::*;
use crate::harness::*;

/// A 50-file model imported on a legacy daemon; the daemon, the source
/// and the tree id.
fn legacy_tree(root: &std::path::Path) -> (Daemon, std::path::PathBuf, String) {
    let daemon = Daemon::start_with(root, &["--legacy"]);
    let src = root.join("model");
    make_tree(&src, 47);
    let tree = daemon.ok(&["import", "-r", src.to_str().unwrap()]);
    (daemon, src, tree)
}

fn mount(daemon: &Daemon, root: &std::path::Path, addr: &str, prefetch: &str) -> Mounted {
    let spool = root.join("spool");
    Mounted::on(
        daemon,
        root,
        &[
            "--spool",
            spool.to_str().unwrap(),
            "--metrics-addr",
            addr,
            "--prefetch-trees",
            prefetch,
        ],
    )
}

#[test]
fn the_first_open_of_a_tree_file_fetches_the_rest_and_a_walk_finds_each_file_local() {
    let root = tempdir();
    let (daemon, src, tree) = legacy_tree(root.path());
    let addr = free_addr();
    let m = mount(&daemon, root.path(), &addr, "on");
    let view = m.path(&format!("trees/{tree}"));
    let config = std::fs::read(view.join("config.json")).unwrap();
    assert_eq!(config, std::fs::read(src.join("config.json")).unwrap());

    // 50 files: the one opened, the empty one (nothing to fetch) and 48
    // fetched ahead.
    eventually("48 files prefetched", 30, || {
        let s = scrape(&addr);
        value(&s, "dfcache_tree_prefetches_total") == 48.0
            && value(&s, "dfcache_tree_prefetch_queued") == 0.0
    });
    let before = scrape(&addr);
    sh_ok(&format!(
        "diff -r --no-dereference {} {}",
        q(&src),
        q(&view)
    ));
    let after = scrape(&addr);
    let moved = |key: &str| value(&after, key) - value(&before, key);
    // The walk started no download: every file was there, and each open
    // of a non-empty file passed through.
    assert_eq!(moved("dfcache_task_downloads_total"), 0.0);
    assert_eq!(value(&after, "dfcache_tree_prefetches_used_total"), 48.0);
    let prefetched = value(&after, "dfcache_tree_prefetch_bytes_total");
    assert_eq!(
        value(&after, "dfcache_tree_prefetch_used_bytes_total"),
        prefetched
    );
    let all: u64 = sh_ok(&format!(
        "find {} -type f -printf '%s\\n' | awk '{{s += $1}} END {{print s}}'",
        q(&src)
    ))
    .parse()
    .unwrap();
    assert_eq!(prefetched, (all - config.len() as u64) as f64);
    assert_eq!(moved("dfcache_fuse_passthrough_opens_total"), 49.0);
}

#[test]
fn with_prefetch_off_only_what_programs_open_is_fetched() {
    let root = tempdir();
    let (daemon, src, tree) = legacy_tree(root.path());
    let addr = free_addr();
    let m = mount(&daemon, root.path(), &addr, "off");
    let view = m.path(&format!("trees/{tree}"));
    sh_ok(&format!(
        "cmp {} {}",
        q(&src.join("config.json")),
        q(&view.join("config.json"))
    ));
    let s = scrape(&addr);
    assert_eq!(value(&s, "dfcache_tree_prefetches_total"), 0.0);
    // The manifest and the file opened.
    assert_eq!(value(&s, "dfcache_task_downloads_total"), 2.0);
    sh_ok(&format!(
        "diff -r --no-dereference {} {}",
        q(&src),
        q(&view)
    ));
}
