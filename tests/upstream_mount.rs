//! The mount on a released dfdaemon node (1.5.10, `common::upstream`),
//! reading a tree node A imported: after `dfcache warmup -r` on node B,
//! the first open of every file through node B's mount passes through to
//! dfdaemon's own file and nothing more is fetched; on a fresh node B, the
//! first open of one file of the tree fetches the others ahead
//! (`--prefetch-trees`), by P2P from node A. `#[ignore]`d: they need
//! `../shared/dragonfly/install.sh`; `scripts/test-upstream.sh` runs them.

mod common;
#[allow(dead_code)]
#[path = "fuse/harness.rs"]
mod harness;

use std::path::Path;

use common::metrics::{free_addr, scrape, value};
use common::tree::make_tree;
use common::upstream::{nodes_dir, Node};
use common::*;
use harness::{q, sh_ok, Mounted};

/// Task ids of the non-empty files of the tree at `src`.
fn file_ids(src: &Path) -> Vec<String> {
    let listed = sh_ok(&format!("find {} -type f -size +0", q(src)));
    let mut ids: Vec<String> = listed.lines().map(|p| expected_id(Path::new(p))).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// `dfcache mount` of `root/mnt` on `node`, its spool in `root/spool`,
/// metrics at `addr`.
fn mount(node: &Node, root: &Path, addr: &str, prefetch: &str) -> Mounted {
    let spool = root.join("spool");
    Mounted::start_at(
        &root.join("mnt"),
        &[
            "-e",
            node.socket.to_str().unwrap(),
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
#[ignore = "needs the released dfdaemon: bash ../shared/dragonfly/install.sh"]
fn after_a_warm_up_every_first_open_through_node_bs_mount_passes_through_and_fetches_nothing() {
    let nodes = nodes_dir();
    let data = tempdir();
    let a = Node::first(&nodes.path().join("a"), "node-a");
    let b = Node::join(&nodes.path().join("b"), &a, "127.0.0.5", "node-b");
    let model = data.path().join("model");
    make_tree(&model, 47);
    let tree = a.ok(&["import", "-r", model.to_str().unwrap()]);
    let warmed = b.ok(&["warmup", "-r", &tree]);
    assert!(warmed.starts_with("51 tasks local"), "{warmed}");
    let fetched = b.fetched().len();

    let addr = free_addr();
    let m = mount(&b, data.path(), &addr, "on");
    let view = m.path(&format!("trees/{tree}"));
    let before = scrape(&addr);
    sh_ok(&format!(
        "diff -r --no-dereference {} {}",
        q(&model),
        q(&view)
    ));
    let after = scrape(&addr);
    let moved = |key: &str| value(&after, key) - value(&before, key);
    // 49 files with bytes, each opened once by diff, each the first open:
    // dfdaemon held every one, linked it into the spool at once, and the
    // open passed through to it.
    assert_eq!(file_ids(&model).len(), 49);
    assert_eq!(moved("dfcache_fuse_passthrough_opens_total"), 49.0);
    assert_eq!(moved("dfcache_spool_written_bytes_total"), 0.0);
    assert_eq!(b.fetched().len(), fetched, "node B fetched again");
}

#[test]
#[ignore = "needs the released dfdaemon: bash ../shared/dragonfly/install.sh"]
fn on_a_fresh_node_b_the_first_open_of_a_tree_file_fetches_the_others_from_node_a() {
    let nodes = nodes_dir();
    let data = tempdir();
    let a = Node::first(&nodes.path().join("a"), "node-a");
    let b = Node::join(&nodes.path().join("b"), &a, "127.0.0.6", "node-b");
    let model = data.path().join("model");
    make_tree(&model, 47);
    let tree = a.ok(&["import", "-r", model.to_str().unwrap()]);

    let addr = free_addr();
    let m = mount(&b, data.path(), &addr, "on");
    let view = m.path(&format!("trees/{tree}"));
    let config = std::fs::read(view.join("config.json")).unwrap();
    assert_eq!(config, std::fs::read(model.join("config.json")).unwrap());

    // The other 48 files with bytes, fetched ahead of any program, by P2P
    // from node A.
    let wanted = file_ids(&model);
    eventually("node B to fetch every file of the tree", 180, || {
        let fetched = b.fetched();
        wanted.iter().all(|id| fetched.iter().any(|(t, _)| t == id))
    });
    for (task, from) in b.fetched() {
        assert!(
            from.starts_with(&format!("{}:", a.host_id)),
            "{task} came from {from}"
        );
    }
    let s = scrape(&addr);
    assert_eq!(value(&s, "dfcache_tree_prefetches_total"), 48.0);
    assert_eq!(value(&s, "dfcache_tree_prefetch_queued"), 0.0);

    // A walk of the tree then starts no download of its own, and uses
    // every file fetched ahead.
    let before = scrape(&addr);
    sh_ok(&format!(
        "diff -r --no-dereference {} {}",
        q(&model),
        q(&view)
    ));
    let after = scrape(&addr);
    let moved = |key: &str| value(&after, key) - value(&before, key);
    assert_eq!(moved("dfcache_task_downloads_total"), 0.0);
    assert_eq!(value(&after, "dfcache_tree_prefetches_used_total"), 48.0);
    assert_eq!(
        value(&after, "dfcache_tree_prefetch_used_bytes_total"),
        value(&after, "dfcache_tree_prefetch_bytes_total")
    );
}
