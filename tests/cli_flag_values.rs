//! Sizes and durations are read as upstream dfcache reads them (bytesize,
//! humantime): spellings upstream accepts work here with the same
//! meaning, checked on what the daemon stored.

mod common;

use common::{failure, tempdir, write_file, Daemon, MIB};

#[test]
fn an_import_with_upstream_spellings_stores_that_ttl_and_piece_length() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("f");
    write_file(&src, 9 * MIB, 7);
    let id = daemon.ok(&[
        "import",
        "--stream-mode",
        "--piece-length",
        "4 MiB",
        "--ttl",
        "1h 30m",
        src.to_str().unwrap(),
    ]);
    let stat = daemon.ok(&["stat", &id]);
    for want in [
        "Piece length:     4.0 MiB (4194304 bytes)",
        "Piece count:      3",
        "TTL:              1h 30m",
    ] {
        assert!(stat.contains(want), "stat lacks {want:?}:\n{stat}");
    }
}

#[test]
fn decimal_units_mean_powers_of_1000_so_5mb_is_above_the_4mib_minimum() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("f");
    write_file(&src, 11 * MIB, 8);
    let id = daemon.ok(&[
        "import",
        "--stream-mode",
        "--piece-length",
        "5mb",
        src.to_str().unwrap(),
    ]);
    let stat = daemon.ok(&["stat", &id]);
    assert!(stat.contains("(5000000 bytes)"), "{stat}");
    let err = failure(&daemon.cli(&["import", "--piece-length", "4mb", src.to_str().unwrap()]));
    assert!(err.contains("below the minimum of 4mib"), "{err}");
}

#[test]
fn a_duration_without_a_unit_is_refused_before_any_daemon_call() {
    let root = tempdir();
    let missing = root.path().join("no.sock");
    let src = root.path().join("f");
    write_file(&src, 1, 1);
    let err = failure(&common::cli(
        &missing,
        &["import", "--ttl", "90", src.to_str().unwrap()],
    ));
    assert!(err.contains("is not a duration"), "{err}");
}

#[test]
fn a_metrics_address_without_a_port_is_refused_and_a_taken_one_is_reported() {
    let root = tempdir();
    let serve = |addr: &str| {
        std::process::Command::new(common::bin())
            .args(["serve", "--socket"])
            .arg(root.path().join("d.sock"))
            .arg("--dir")
            .arg(root.path().join("store"))
            .args(["--metrics-addr", addr])
            .output()
            .expect("run dfcache serve")
    };
    let err = failure(&serve("localhost"));
    assert!(err.contains("is not HOST:PORT"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let err = failure(&serve(&addr));
    assert!(
        err.contains(&format!("cannot listen for metrics on {addr}")),
        "{err}"
    );
}

#[test]
fn a_memory_budget_below_16mib_or_a_zero_progress_timeout_is_refused_and_nothing_starts() {
    let root = tempdir();
    let run = |cmd: &[&str], extra: &[&str]| {
        std::process::Command::new(common::bin())
            .args(cmd)
            .args(extra)
            .output()
            .expect("run dfcache")
    };
    let (socket, store) = (root.path().join("d.sock"), root.path().join("store"));
    let serve = [
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--dir",
        store.to_str().unwrap(),
    ];
    let err = failure(&run(&serve, &["--memory-budget", "8mib"]));
    assert!(err.contains("below the minimum of 16mib"), "{err}");
    let err = failure(&run(&serve, &["--memory-budget", "lots"]));
    assert!(err.contains("is not a size"), "{err}");
    let err = failure(&run(&serve, &["--progress-timeout", "0s"]));
    assert!(err.contains("must be longer than 0"), "{err}");
    let mnt = root.path().join("mnt");
    let err = failure(&run(
        &["mount", mnt.to_str().unwrap()],
        &["--memory-budget", "1mib"],
    ));
    assert!(err.contains("below the minimum of 16mib"), "{err}");
    assert!(
        !socket.exists() && !store.exists() && !mnt.exists(),
        "nothing was started"
    );
}

#[test]
fn warmup_and_prefetch_flags_are_checked_before_any_daemon_call() {
    let root = tempdir();
    let missing = root.path().join("no.sock");
    let id = "a".repeat(64);
    let cases: [(&[&str], &str); 4] = [
        (
            &["warmup", "--concurrency", "0", &id],
            "not a number of tasks from 1 to 64",
        ),
        (
            &["warmup", "--retries", "many", &id],
            "invalid value 'many'",
        ),
        (&["warmup", "--timeout", "90", &id], "is not a duration"),
        (
            &["mount", "/nonexistent/mnt", "--prefetch-trees", "maybe"],
            "\"maybe\" is not one of: on, off",
        ),
    ];
    for (args, why) in cases {
        let err = failure(&common::cli(&missing, args));
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(!err.contains("cannot reach the daemon"), "{args:?}: {err}");
    }
    assert!(!std::path::Path::new("/nonexistent").exists());
}
