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
