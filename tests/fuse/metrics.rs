//! `--metrics-addr`: a live mount and a live daemon scraped over HTTP with
//! curl, before and after real traffic (cp into import/, cat of
//! tasks/<id>, a lookup of an unknown id); the counters moved by exactly
//! what that traffic did.

use std::collections::HashMap;

use crate::common::metrics::{free_addr, scrape, value};
use crate::common::*;
use crate::harness::*;

/// How much `key` grew from `before` to `after` (absent: 0).
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[test]
fn a_cp_and_a_cat_move_the_mount_and_daemon_counters_by_what_they_did() {
    let root = tempdir();
    let (daemon_addr, mount_addr) = (free_addr(), free_addr());
    let daemon = Daemon::start_with(root.path(), &["--metrics-addr", &daemon_addr]);
    let m = Mounted::on(
        &daemon,
        root.path(),
        &["--metrics-addr", &mount_addr, "--piece-length", "4mib"],
    );
    let (mount0, daemon0) = (scrape(&mount_addr), scrape(&daemon_addr));

    // Three pieces of 4 MiB: 9 MiB and 5 bytes.
    let len = 9 * MIB + 5;
    let src = root.path().join("src.bin");
    write_file(&src, len, 11);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("model.bin"))));
    let id = task_id_xattr(&m.import("model.bin"));
    let out = root.path().join("out.bin");
    sh_ok(&format!("cat {} > {}", q(&m.task(&id)), q(&out)));
    assert!(same_bytes(&src, &out));
    let (mount1, daemon1) = (scrape(&mount_addr), scrape(&daemon_addr));
    // cp looks its destination up too (ENOENT): the unknown id is counted
    // on its own.
    let unknown = "0".repeat(64);
    let miss = sh(&format!("stat {}", q(&m.task(&unknown))));
    assert!(!miss.status.success());
    let (mount2, daemon2) = (scrape(&mount_addr), scrape(&daemon_addr));
    let lookup_enoent = r#"dfcache_fuse_operations_total{op="lookup",result="ENOENT"}"#;
    assert_eq!(delta(&mount1, &mount2, lookup_enoent), 1.0);
    let stat_not_found = "{rpc=\"StatPersistentCacheTask\",code=\"NotFound\"}";
    assert_eq!(
        delta(
            &mount1,
            &mount2,
            &format!("dfcache_daemon_calls_total{stat_not_found}")
        ),
        1.0
    );
    assert_eq!(
        delta(
            &daemon1,
            &daemon2,
            &format!(
                "dfcache_daemon_rpcs_total{}",
                stat_not_found.replace("rpc=", "method=")
            )
        ),
        1.0
    );
    let moved = |key: &str| delta(&mount0, &mount1, key);
    assert_eq!(moved("dfcache_imports_started_total"), 1.0);
    assert_eq!(moved("dfcache_imports_finished_total"), 1.0);
    assert_eq!(moved("dfcache_imports_failed_total"), 0.0);
    assert_eq!(moved("dfcache_import_bytes_total"), len as f64);
    assert_eq!(moved("dfcache_import_duration_seconds_count"), 1.0);
    assert_eq!(
        moved(r#"dfcache_fuse_operations_total{op="create",result="ok"}"#),
        1.0
    );
    assert!(moved(r#"dfcache_fuse_operations_total{op="write",result="ok"}"#) >= 9.0);
    assert!(moved(r#"dfcache_fuse_operations_total{op="read",result="ok"}"#) >= 9.0);
    assert!(moved(r#"dfcache_fuse_operation_duration_seconds_count{op="read"}"#) >= 9.0);
    // Each of the three 4 MiB blocks fetched once, then held. The kernel's
    // read-ahead may deliver a read before the one at offset 0 (two FUSE
    // threads): that read looks random and fetches the 4 KiB pages it
    // covers (up to a 1 MiB request, seen in CI), once.
    let misses = moved("dfcache_block_cache_misses_total");
    assert!((3.0..=5.0).contains(&misses), "misses: {misses}");
    assert!(moved("dfcache_block_cache_hits_total") >= 1.0);
    assert_eq!(moved("dfcache_block_cache_evictions_total"), 0.0);
    let held = value(&mount1, "dfcache_block_cache_bytes");
    let most = (misses - 3.0) * (MIB + 2 * 4096) as f64;
    assert!(
        held >= len as f64 && held <= len as f64 + most,
        "held {held} of {len}"
    );
    assert_eq!(value(&mount1, "dfcache_block_fetches_in_flight"), 0.0);
    assert_eq!(
        moved(r#"dfcache_daemon_calls_total{rpc="WritePersistentCacheTask",code="OK"}"#),
        1.0
    );
    // Three piece fetches, plus a range read for any read the kernel sent
    // out of order before its piece was asked for (not sequential yet).
    let reads = moved(r#"dfcache_daemon_calls_total{rpc="ReadPersistentCacheTask",code="OK"}"#);
    assert!(reads >= 3.0, "{reads} range reads");
    assert_eq!(moved("dfcache_task_downloads_total"), 0.0);
    assert_eq!(value(&mount1, "dfcache_fuse_passthrough_opens_total"), 0.0);
    assert!(mount1.contains_key("dfcache_readahead_window_bytes"));
    assert!(
        !mount1.contains_key("dfcache_store_tasks"),
        "a mount on a daemon elsewhere has no store"
    );

    let served = |key: &str| delta(&daemon0, &daemon1, key);
    assert_eq!(
        served(r#"dfcache_daemon_rpcs_total{method="WritePersistentCacheTask",code="OK"}"#),
        1.0
    );
    // The daemon saw exactly the reads the mount made.
    assert_eq!(
        served(r#"dfcache_daemon_rpcs_total{method="ReadPersistentCacheTask",code="OK"}"#),
        reads
    );
    assert_eq!(value(&daemon1, "dfcache_store_tasks"), 1.0);
    assert_eq!(value(&daemon1, "dfcache_store_stored_bytes"), len as f64);
    assert!(value(&daemon1, "dfcache_store_free_bytes") > 0.0);
    assert_eq!(value(&daemon1, "dfcache_daemon_imports_in_flight"), 0.0);
    assert!(value(&daemon1, "dfcache_gc_runs_total") >= 1.0);
    assert_eq!(value(&daemon1, "dfcache_gc_collected_tasks_total"), 0.0);
}

#[test]
fn a_mount_with_an_embedded_daemon_exposes_both_and_only_metrics_is_served() {
    let root = tempdir();
    let addr = free_addr();
    let m = Mounted::embedded(root.path(), &["--metrics-addr", &addr]);
    let src = root.path().join("small");
    write_file(&src, 4096, 3);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("small"))));
    let samples = scrape(&addr);
    assert_eq!(value(&samples, "dfcache_imports_finished_total"), 1.0);
    assert_eq!(value(&samples, "dfcache_store_tasks"), 1.0);
    assert_eq!(value(&samples, "dfcache_store_stored_bytes"), 4096.0);
    let status = sh_ok(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' http://{addr}/"
    ));
    assert_eq!(status, "404");
}

#[test]
fn against_a_released_daemon_spooled_imports_and_whole_task_downloads_are_counted() {
    let root = tempdir();
    let addr = free_addr();
    let daemon = Daemon::start_with(root.path(), &["--legacy"]);
    let spool = root.path().join("spool");
    let m = Mounted::on(
        &daemon,
        root.path(),
        &[
            "--spool",
            spool.to_str().unwrap(),
            "--metrics-addr",
            &addr,
            "--piece-length",
            "4mib",
        ],
    );
    let before = scrape(&addr);
    let len = 6 * MIB + 1;
    let src = root.path().join("src.bin");
    write_file(&src, len, 21);
    sh_ok(&format!("cp {} {}", q(&src), q(&m.import("f"))));
    let id = task_id_xattr(&m.import("f"));
    let imported = scrape(&addr);
    // A fresh mount knows nothing cached: its cat downloads the whole task.
    drop(m);
    let m = Mounted::on(
        &daemon,
        root.path(),
        &["--spool", spool.to_str().unwrap(), "--metrics-addr", &addr],
    );
    let fresh = scrape(&addr);
    sh_ok(&format!("cmp {} {}", q(&src), q(&m.task(&id))));
    let after = scrape(&addr);

    // The first mount: the import went through the spool and the upload RPC.
    let first = |key: &str| delta(&before, &imported, key);
    assert_eq!(first("dfcache_spool_written_bytes_total"), len as f64);
    assert_eq!(first("dfcache_imports_finished_total"), 1.0);
    assert_eq!(
        first(r#"dfcache_daemon_calls_total{rpc="UploadPersistentCacheTask",code="OK"}"#),
        1.0
    );
    // The second: one whole-task download of the task's bytes, no range
    // reads. The daemon sees the spool (one file system here), so it links
    // its content file there: the mount writes none of those bytes.
    let moved = |key: &str| delta(&fresh, &after, key);
    assert_eq!(moved("dfcache_task_downloads_total"), 1.0);
    assert_eq!(
        value(&after, "dfcache_task_downloads_held_bytes"),
        len as f64
    );
    assert_eq!(moved("dfcache_spool_written_bytes_total"), 0.0);
    assert_eq!(
        moved(r#"dfcache_daemon_calls_total{rpc="DownloadPersistentCacheTask",code="OK"}"#),
        1.0
    );
    assert_eq!(moved("dfcache_block_cache_misses_total"), 0.0);
    // Asked at the open whether the daemon holds the task: it does, so
    // the open waited for the link and passed through.
    assert_eq!(
        moved(r#"dfcache_daemon_calls_total{rpc="StatLocalPersistentCacheTask",code="OK"}"#),
        1.0
    );
    assert_eq!(moved("dfcache_fuse_passthrough_opens_total"), 1.0);
}
