//! Many readers and writers at once, on one mount.

use std::process::Command;

use crate::common::*;
use crate::harness::*;

#[test]
fn sixteen_readers_over_four_tasks_and_eight_concurrent_imports() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let m = Mounted::on(&daemon, root.path(), &["--cache-size", "32mib"]);
    let mut sources = Vec::new();
    for i in 0..4u64 {
        let src = root.path().join(format!("t{i}.bin"));
        write_file(&src, 21 * MIB + i * 1000, 200 + i);
        let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
        sources.push((src, id));
    }
    let mut readers = Vec::new();
    for r in 0..16 {
        let (src, id) = &sources[r % 4];
        readers.push(
            Command::new("cmp")
                .arg(src)
                .arg(m.task(id))
                .spawn()
                .unwrap(),
        );
    }
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let src = root.path().join(format!("w{w}.bin"));
        write_file(&src, 9 * MIB + w, 300 + w);
        writers.push((
            Command::new("cp")
                .arg(&src)
                .arg(m.import(&format!("w{w}")))
                .spawn()
                .unwrap(),
            src,
            w,
        ));
    }
    for mut r in readers {
        assert!(r.wait().unwrap().success(), "a reader saw wrong bytes");
    }
    for (mut cp, src, w) in writers {
        assert!(cp.wait().unwrap().success(), "cp {w} failed");
        assert_eq!(
            task_id_xattr(&m.import(&format!("w{w}"))),
            expected_id(&src)
        );
    }
    assert_eq!(daemon.ids().len(), 12);
}

#[test]
fn sixty_four_operations_at_once_are_byte_exact_and_identical_content_is_stored_once() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let m = Mounted::on(&daemon, root.path(), &["--cache-size", "64mib"]);
    let mut tasks = Vec::new();
    for i in 0..4u64 {
        let src = root.path().join(format!("t{i}.bin"));
        write_file(&src, 6 * MIB + i * 777, 400 + i);
        let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
        tasks.push((src, id));
    }
    let same = root.path().join("same.bin");
    write_file(&same, 5 * MIB + 5, 499);
    let mut script = String::new();
    for i in 0..16 {
        // Different content, identical content, one task, many tasks.
        let own = root.path().join(format!("own{i}.bin"));
        write_file(&own, MIB + i as u64 * 4099, 500 + i as u64);
        script += &format!("cp {} {} &\n", q(&own), q(&m.import(&format!("own{i}"))));
        script += &format!("cp {} {} &\n", q(&same), q(&m.import(&format!("same{i}"))));
        let (src, id) = &tasks[0];
        script += &format!("cmp {} {} &\n", q(src), q(&m.task(id)));
        let (src, id) = &tasks[i % 4];
        script += &format!("cmp {} {} &\n", q(src), q(&m.task(id)));
    }
    // Every job's status: `wait PID` one by one, failing on the first bad.
    script = format!(
        "pids=''\n{}",
        script.replace(" &\n", " & pids=\"$pids $!\"\n")
    );
    script += "for p in $pids; do wait $p || exit 1; done\n";
    sh_ok(&script);

    for i in 0..16 {
        let own = root.path().join(format!("own{i}.bin"));
        assert_eq!(
            task_id_xattr(&m.import(&format!("own{i}"))),
            expected_id(&own)
        );
        assert_eq!(
            task_id_xattr(&m.import(&format!("same{i}"))),
            expected_id(&same)
        );
    }
    // 4 + 16 different + 1 identical, each stored once, nothing left over.
    assert_eq!(daemon.ids().len(), 21);
    let data_files = std::fs::read_dir(daemon.dir.join("tasks"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".data"))
        .count();
    assert_eq!(data_files, 21);
    assert!(daemon.leftovers().is_empty(), "{:?}", daemon.leftovers());
}
