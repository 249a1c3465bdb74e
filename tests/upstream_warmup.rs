//! `dfcache warmup` against the real released dfdaemon (1.5.10), two
//! nodes on loopback with the stand-in scheduler (`common::upstream`):
//! what node A imported, node B warms by P2P from node A; `--check`
//! before and after; an unknown id; node B's dfdaemon killed during a
//! warm-up, then restarted (empty, as dfdaemon starts by default) and a
//! second run; node B frozen. `#[ignore]`d: they need
//! `../shared/dragonfly/install.sh` (see docs/TESTING.md).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::tree::make_tree;
use common::upstream::{nodes_dir, Node};
use common::*;

/// The `--check` rows: (state, task id).
fn check_states(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("total:") && !l.starts_with("tree "))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[0].to_string(), f[3].to_string()))
        })
        .collect()
}

/// `dfcache warmup -r --check TREE` on `node`: (exit ok, rows).
fn check_tree(node: &Node, tree: &str) -> (bool, Vec<(String, String)>) {
    let out = node.cli(&["warmup", "-r", "--check", tree]);
    (
        out.status.success(),
        check_states(&String::from_utf8_lossy(&out.stdout)),
    )
}

/// Task ids of the files of the tree at `src`, as dfdaemon computes them.
fn file_ids(src: &Path) -> Vec<String> {
    let out = std::process::Command::new("find")
        .arg(src)
        .args(["-type", "f"])
        .output()
        .unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|p| expected_id(Path::new(p)))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[test]
#[ignore = "needs the released dfdaemon: bash ../shared/dragonfly/install.sh"]
fn node_b_warms_a_task_and_a_tree_from_node_a_and_check_says_so() {
    let nodes = nodes_dir();
    let data = tempdir();
    let a = Node::first(&nodes.path().join("a"), "node-a");
    let b = Node::join(&nodes.path().join("b"), &a, "127.0.0.2", "node-b");
    let src = data.path().join("one.bin");
    write_file(&src, 20 * MIB + 1, 1);
    let task = a.ok(&["import", src.to_str().unwrap()]);
    let model = data.path().join("model");
    make_tree(&model, 47);
    let tree = a.ok(&["import", "-r", model.to_str().unwrap()]);

    // Before: node B holds nothing; it knows the task through the scheduler.
    let before = b.cli(&["warmup", "--check", &task]);
    assert!(!before.status.success());
    assert_eq!(
        check_states(&String::from_utf8_lossy(&before.stdout)),
        vec![("missing".to_string(), task.clone())]
    );
    let (ok, rows) = check_tree(&b, &tree);
    assert!(!ok);
    assert_eq!(rows, vec![("missing".to_string(), tree.clone())]);

    let warmed = b.ok(&["warmup", &task]);
    assert!(warmed.starts_with("1 task local, 20.0 MiB"), "{warmed}");
    assert!(warmed.contains("(20.0 MiB fetched from peers)"), "{warmed}");
    let warmed = b.ok(&["warmup", "-r", &tree]);
    assert!(warmed.starts_with("51 tasks local"), "{warmed}");

    // After: all local, and a second run fetches nothing.
    b.ok(&["warmup", "--check", &task]);
    let (ok, rows) = check_tree(&b, &tree);
    assert!(ok, "{rows:?}");
    assert_eq!(rows.len(), 51);
    assert!(rows.iter().all(|(state, _)| state == "local"), "{rows:?}");
    let again = b.ok(&["warmup", "-r", &tree]);
    assert!(again.contains("(0 B fetched from peers)"), "{again}");

    // Every non-empty task came to node B from node A, by P2P.
    let fetched = b.fetched();
    let mut wanted = file_ids(&model);
    wanted.retain(|id| *id != id_of(b""));
    wanted.push(task.clone());
    wanted.push(tree.clone());
    for id in &wanted {
        let from = fetched
            .iter()
            .find(|(t, _)| t == id)
            .map(|(_, from)| from.clone())
            .unwrap_or_else(|| panic!("no P2P of {id} to node B: {fetched:?}"));
        assert!(
            from.starts_with(&format!("{}:", a.host_id)),
            "{id} from {from}"
        );
    }
    // Warmed copies are persistent on node B.
    let listed = b.ok(&["ls"]);
    assert!(listed.contains(&task), "{listed}");

    // The bytes node B holds are the task's.
    let out = data.path().join("out.bin");
    b.ok(&["export", &task, "-O", out.to_str().unwrap()]);
    assert!(same_bytes(&src, &out));

    let unknown = "b".repeat(64);
    let err = failure(&b.cli(&["warmup", &unknown]));
    assert!(
        err.contains(&format!(
            "not local: task {unknown}: unknown to the daemon and its P2P network"
        )),
        "{err}"
    );
    let err = failure(&b.cli(&["warmup", "--check", &unknown]));
    assert!(
        err.contains("unknown to the daemon and its P2P network"),
        "{err}"
    );
}

#[test]
#[ignore = "needs the released dfdaemon: bash ../shared/dragonfly/install.sh"]
fn node_b_killed_during_a_warm_up_fails_it_naming_the_files_and_a_second_run_completes() {
    let nodes = nodes_dir();
    let data = tempdir();
    let a = Node::first(&nodes.path().join("a"), "node-a");
    let b = Node::join(&nodes.path().join("b"), &a, "127.0.0.3", "node-b");
    let model = data.path().join("model");
    std::fs::create_dir_all(model.join("shards")).unwrap();
    for i in 0..24 {
        write_file(
            &model.join(format!("shards/s{i:02}.bin")),
            48 * MIB,
            100 + i,
        );
    }
    let tree = a.ok(&["import", "-r", model.to_str().unwrap()]);

    let warmup = std::process::Command::new(bin())
        .args([
            "warmup",
            "-r",
            &tree,
            "--concurrency",
            "1",
            "--retries",
            "0",
            "--no-progress",
        ])
        .env("DFCACHE_ENDPOINT", &b.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("node B to fetch a few files", 120, || {
        b.fetched().len() >= 4
    });
    b.kill_daemon();
    let out = warmup.wait_with_output().unwrap();
    let err = failure(&out);
    let lines: Vec<&str> = err.lines().collect();
    let (last, listed) = lines.split_last().unwrap();
    let missing: Vec<&&str> = listed
        .iter()
        .filter(|l| l.starts_with("not local: "))
        .collect();
    assert!(!missing.is_empty() && missing.len() <= 22, "{err}");
    assert!(
        last.starts_with(&format!("Error: {} of 25 tasks", missing.len())),
        "{last}"
    );
    assert!(missing.iter().all(|l| l.contains("shards/s")), "{err}");
    let done_before = b.fetched().len();

    // dfdaemon empties its storage when it starts (`storage.keep: false`,
    // its default and the harness's): after the restart node B holds
    // nothing of the tree, and --check says so.
    b.restart();
    let (ok, rows) = check_tree(&b, &tree);
    assert!(!ok);
    assert_eq!(rows, vec![("missing".to_string(), tree.clone())]);
    let second = b.ok(&["warmup", "-r", &tree]);
    assert!(second.starts_with("25 tasks local"), "{second}");
    // Everything came again, by P2P from node A.
    let again = &b.fetched()[done_before..];
    assert_eq!(again.len(), 25, "{again:?}");
    assert!(
        again
            .iter()
            .all(|(_, from)| from.starts_with(&format!("{}:", a.host_id))),
        "{again:?}"
    );
    let (ok, rows) = check_tree(&b, &tree);
    assert!(ok, "{rows:?}");
}

#[test]
#[ignore = "needs the released dfdaemon: bash ../shared/dragonfly/install.sh"]
fn a_frozen_node_b_fails_the_warm_up_and_the_check_within_their_timeouts() {
    let nodes = nodes_dir();
    let data = tempdir();
    let a = Node::first(&nodes.path().join("a"), "node-a");
    let b = Node::join(&nodes.path().join("b"), &a, "127.0.0.4", "node-b");
    let src = data.path().join("one.bin");
    write_file(&src, 8 * MIB, 5);
    let task = a.ok(&["import", src.to_str().unwrap()]);

    b.signal("-STOP");
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let err = failure(&b.cli(args));
        (err, started.elapsed())
    };
    let (err, took) = timed(&["--call-timeout", "2s", "warmup", "--retries", "1", &task]);
    assert!(err.contains(&format!("not local: task {task}")), "{err}");
    assert!(err.contains("did not answer"), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let (err, took) = timed(&["--call-timeout", "2s", "warmup", "--check", &task]);
    assert!(
        err.contains("did not answer a local stat within 2s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    b.signal("-CONT");

    eventually("node B to answer again", 30, || {
        b.cli(&["warmup", &task]).status.success()
    });
    b.ok(&["warmup", "--check", &task]);
}
