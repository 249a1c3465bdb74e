//! `dfcache warmup` against `dfcache serve --legacy` (the released
//! dfdaemon's RPCs): its store holds every task it knows, so a warm-up is
//! a check that passes; an unknown id, a daemon killed or frozen during
//! the warm-up are reported file by file and bounded in time. The same
//! cases against the real dfdaemon are in `tests/upstream_warmup.rs`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::metrics::free_addr;
use common::tree::make_tree;
use common::*;

/// Files `make_tree` makes besides the small ones: config.json, empty and
/// the 6 MiB weights file.
const BIG_FILES: usize = 3;

/// A model tree of 50 files (nested directories, an empty file) imported
/// on `daemon`; the tree id.
fn import_tree(daemon: &Daemon, root: &Path) -> String {
    let src = root.join("model");
    make_tree(&src, 50 - BIG_FILES);
    daemon.ok(&["import", "-r", src.to_str().unwrap()])
}

/// The `--check` table: task id to (state, local bytes, size), and the
/// total line.
fn check_table(stdout: &str) -> (HashMap<String, (String, u64, u64)>, String) {
    let mut rows = HashMap::new();
    let mut total = String::new();
    for line in stdout.lines().skip(1) {
        if line.starts_with("total:") {
            total = line.to_string();
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 && f[3].len() == 64 {
            rows.insert(
                f[3].to_string(),
                (
                    f[0].to_string(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                ),
            );
        }
    }
    (rows, total)
}

/// Bytes of every file of the tree at `src` plus its manifest's.
fn dir_bytes(src: &Path) -> u64 {
    sh_out(&format!(
        "find {} -type f -printf '%s\\n' | awk '{{s += $1}} END {{print s}}'",
        shell_quote(&src.to_string_lossy())
    ))
    .parse()
    .unwrap()
}

fn sh_out(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    succeeded(&out, script)
}

#[test]
fn a_task_and_a_tree_warm_on_a_legacy_daemon_and_check_says_all_is_local() {
    let root = tempdir();
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let src = root.path().join("one.bin");
    write_file(&src, 9 * MIB + 1, 1);
    let task = expected_id(&src);

    // Before the import the daemon knows neither: check says so, exit 1.
    let before = daemon.cli(&["warmup", "--check", &task]);
    assert!(failure(&before).contains("unknown to the daemon"));

    assert_eq!(daemon.ok(&["import", src.to_str().unwrap()]), task);
    let warmed = daemon.ok(&["warmup", &task]);
    assert!(warmed.starts_with("1 task local, 9.0 MiB"), "{warmed}");
    assert!(warmed.contains("(0 B fetched from peers)"), "{warmed}");
    let (rows, total) = check_table(&daemon.ok(&["warmup", "--check", &task]));
    assert_eq!(rows[&task], ("local".into(), 9 * MIB + 1, 9 * MIB + 1));
    assert!(total.ends_with("1 of 1 tasks"), "{total}");

    let tree = import_tree(&daemon, root.path());
    let warmed = daemon.ok(&["warmup", "-r", &tree]);
    // 50 files, one of them shares its content with no other: 50 tasks,
    // and the manifest.
    assert!(warmed.starts_with("51 tasks local"), "{warmed}");
    let out = daemon.ok(&["warmup", "-r", "--check", &tree]);
    let (rows, total) = check_table(&out);
    assert_eq!(rows.len(), 51, "{out}");
    assert!(rows
        .values()
        .all(|(state, local, size)| state == "local" && local == size));
    assert_eq!(rows[&tree].0, "local");
    assert!(out.contains("(manifest)"));
    assert!(out.contains("weights/model-00001.safetensors"));
    let empty = id_of(b"");
    assert_eq!(rows[&empty], ("local".into(), 0, 0));
    let bytes = dir_bytes(&root.path().join("model")) + rows[&tree].2;
    assert!(
        total.starts_with(&format!("total: {bytes} of {bytes} bytes local")),
        "{total}"
    );
    assert!(total.ends_with("51 of 51 tasks"), "{total}");
}

#[test]
fn an_unknown_id_or_a_task_that_is_no_tree_is_an_error_naming_it_and_fetches_nothing() {
    let root = tempdir();
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let unknown = "a".repeat(64);
    let err = failure(&daemon.cli(&["warmup", &unknown]));
    assert!(
        err.contains(&format!(
            "not local: task {unknown}: unknown to the daemon and its P2P network (after 1 try)"
        )),
        "{err}"
    );
    assert!(err
        .trim_end()
        .ends_with("the same command again fetches only what is missing"));
    let err = failure(&daemon.cli(&["warmup", "-r", &unknown]));
    assert!(
        err.contains(&format!("the manifest of tree {unknown} is not local")),
        "{err}"
    );
    let err = failure(&daemon.cli(&["warmup", "-r", "--check", &unknown]));
    assert!(
        err.contains("unknown to the daemon and its P2P network"),
        "{err}"
    );
    // Not an id at all: refused before anything reaches the daemon.
    let err = failure(&daemon.cli(&["warmup", "model.bin"]));
    assert!(err.contains("is not a task id"), "{err}");

    let src = root.path().join("plain.bin");
    write_file(&src, 4096, 2);
    let id = daemon.ok(&["import", src.to_str().unwrap()]);
    let err = failure(&daemon.cli(&["warmup", "-r", &id]));
    assert!(
        err.contains(&format!("task {id} is not a tree manifest")),
        "{err}"
    );
    assert_eq!(daemon.ids(), vec![id]);
}

/// `dfcache warmup ARGS` in the background against `socket`.
fn spawn_warmup(socket: &Path, args: &[&str]) -> Child {
    Command::new(bin())
        .arg("warmup")
        .args(args)
        .arg("--no-progress")
        .env("DFCACHE_ENDPOINT", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dfcache warmup")
}

/// Downloads the daemon has answered, from its metrics.
fn downloads_served(addr: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-sSf", "--max-time", "5", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("dfcache_daemon_rpcs_total{method=\"DownloadPersistentCacheTask\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A legacy daemon on `root` that reports one piece every 150 ms (a slow
/// P2P download), with metrics at `addr`.
fn slow_daemon(root: &Path, addr: &str) -> Daemon {
    Daemon::start_with(
        root,
        &[
            "--legacy",
            "--legacy-piece-delay",
            "150ms",
            "--metrics-addr",
            addr,
        ],
    )
}

#[test]
fn a_daemon_killed_during_the_warm_up_fails_it_naming_each_file_and_a_second_run_completes() {
    let root = tempdir();
    let tree = {
        let daemon = Daemon::start_with(root.path(), &["--legacy"]);
        import_tree(&daemon, root.path())
    };
    let addr = free_addr();
    let mut daemon = slow_daemon(root.path(), &addr);
    let warmup = spawn_warmup(
        &daemon.socket,
        &["-r", &tree, "--concurrency", "2", "--retries", "0"],
    );
    eventually("ten downloads under way", 60, || {
        downloads_served(&addr) >= 10.0
    });
    daemon.kill();
    let out = warmup.wait_with_output().unwrap();
    let err = failure(&out);
    let lines: Vec<&str> = err.lines().collect();
    let (last, listed) = lines.split_last().unwrap();
    let missing: Vec<&&str> = listed
        .iter()
        .filter(|l| l.starts_with("not local: "))
        .collect();
    // The daemon answered some before it died; each of the others is named
    // with its path and why, just above the last line.
    assert!(
        (1..=47).contains(&missing.len()),
        "{} not local:\n{err}",
        missing.len()
    );
    assert!(
        last.starts_with(&format!("Error: {} of 51 tasks", missing.len())),
        "{last}"
    );
    assert!(
        missing
            .iter()
            .all(|l| l.contains("(task ") && l.contains("(after 1 try)")),
        "{err}"
    );
    assert!(
        missing
            .iter()
            .any(|l| l.contains("broke mid-call") || l.contains("cannot reach the daemon")),
        "{err}"
    );
    assert!(err.contains("weights/shards/s"), "{err}");

    // Back up: the same command completes.
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let warmed = daemon.ok(&["warmup", "-r", &tree]);
    assert!(warmed.starts_with("51 tasks local"), "{warmed}");
    daemon.ok(&["warmup", "-r", "--check", &tree]);
}

#[test]
fn retries_with_backoff_carry_a_warm_up_through_a_daemon_restart() {
    let root = tempdir();
    let tree = {
        let daemon = Daemon::start_with(root.path(), &["--legacy"]);
        import_tree(&daemon, root.path())
    };
    let addr = free_addr();
    let mut daemon = slow_daemon(root.path(), &addr);
    let warmup = spawn_warmup(
        &daemon.socket,
        &["-r", &tree, "--concurrency", "4", "--retries", "3"],
    );
    eventually("five downloads under way", 60, || {
        downloads_served(&addr) >= 5.0
    });
    daemon.kill();
    // Restarted within the first backoff (1 s).
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let out = warmup.wait_with_output().unwrap();
    let stdout = succeeded(&out, "dfcache warmup through a restart");
    assert!(stdout.starts_with("51 tasks local"), "{stdout}");
    daemon.ok(&["warmup", "-r", "--check", &tree]);
}

#[test]
fn a_frozen_daemon_fails_the_warm_up_within_its_timeouts() {
    let root = tempdir();
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let tree = import_tree(&daemon, root.path());
    let src = root.path().join("one.bin");
    write_file(&src, MIB, 3);
    let task = daemon.ok(&["import", src.to_str().unwrap()]);

    daemon.signal("-STOP");
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let out = daemon.cli(args);
        (failure(&out), started.elapsed())
    };
    // Each try waits --call-timeout, then 1 s before the next.
    let (err, took) = timed(&["--call-timeout", "1s", "warmup", "--retries", "1", &task]);
    assert!(
        err.contains(&format!("not local: task {task}: the daemon at"))
            && err.contains("did not answer a download within 1s (after 2 tries)"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (err, took) = timed(&[
        "--call-timeout",
        "1s",
        "warmup",
        "-r",
        "--retries",
        "0",
        &tree,
    ]);
    assert!(
        err.contains(&format!("the manifest of tree {tree} is not local")),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // --timeout bounds the whole warm-up, however many tries are left.
    let (err, took) = timed(&[
        "--call-timeout",
        "1s",
        "warmup",
        "--retries",
        "20",
        "--timeout",
        "4s",
        &task,
    ]);
    assert!(
        err.contains("the warm-up's --timeout (4s) ran out"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (err, took) = timed(&["--call-timeout", "1s", "warmup", "--check", &task]);
    assert!(
        err.contains("did not answer a local stat within 1s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    daemon.signal("-CONT");

    eventually("the daemon to answer again", 20, || {
        daemon.cli(&["ls"]).status.success()
    });
    daemon.ok(&["warmup", &task]);
    daemon.ok(&["warmup", "-r", &tree]);
}
