//! The CLI against a frozen daemon (its socket accepts, nothing answers):
//! every command fails within its deadline with a sentence that says so,
//! and works again once the daemon answers.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn every_command_fails_within_its_call_timeout_while_the_daemon_is_frozen() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, 3 * MIB, 61);
    let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
    let out = root.path().join("out.bin");
    let out_arg = out.to_str().unwrap().to_string();

    daemon.signal("-STOP");
    let commands: Vec<Vec<&str>> = vec![
        vec!["stat", &id],
        vec!["ls"],
        vec!["rm", &id],
        vec!["export", "--stream-mode", &id, "-O", &out_arg],
        vec!["import", "--stream-mode", src.to_str().unwrap()],
    ];
    let mut results = Vec::new();
    for args in &commands {
        let mut full = vec!["--call-timeout", "2s"];
        full.extend(args.iter().copied());
        let started = Instant::now();
        let run = daemon.cli(&full);
        results.push((args.clone(), run, started.elapsed()));
    }
    daemon.signal("-CONT");
    for (args, run, took) in results {
        let err = failure(&run);
        // A call that got no answer, or a connection that broke waiting.
        assert!(
            err.contains("did not answer") || err.contains("cannot reach the daemon"),
            "{args:?}: {err}"
        );
        // Calls: --call-timeout. Transfers wait longer for progress (a P2P
        // download may wait on peers), but HTTP/2 keepalive (10 s + 5 s)
        // notices a frozen peer.
        assert!(took < Duration::from_secs(25), "{args:?} took {took:?}");
    }
    assert!(!out.exists(), "a failed export left its output");

    // Thawed: the same daemon answers again. (The rm that timed out may
    // still have reached it: a timeout says "no answer", not "not done".)
    eventually("the daemon to answer again", 20, || {
        daemon.cli(&["ls"]).status.success()
    });
    let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
    daemon.ok(&["export", "--stream-mode", &id, "-O", &out_arg]);
    assert!(same_bytes(&src, &out));
}
