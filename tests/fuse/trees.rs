//! Trees through the mount: `cp -r` (and rsync, tar) into `import/`, the
//! tree id from the directory's xattr, and `trees/<id>/` on any mount,
//! equal to the source; what is not a tree is refused.

use std::path::Path;

use crate::common::ns::ls;
use crate::common::tree::{assert_same_tree, make_tree};
use crate::common::*;
use crate::harness::*;

fn tree_id_of(dir: &Path) -> String {
    sh_ok(&format!(
        "getfattr --only-values -n user.dfcache.tree_id {}",
        q(dir)
    ))
}

/// `diff -r` of the tree's view against the source (modes: read-only).
fn assert_view_matches(view: &Path, src: &Path) {
    let out = std::process::Command::new("diff")
        .args(["-r", "--no-dereference"])
        .args([src, view])
        .output()
        .unwrap();
    succeeded(
        &out,
        format!("diff -r {} {}", src.display(), view.display()),
    );
}

#[test]
fn cp_r_rsync_and_tar_of_a_model_give_the_clis_tree_id_and_trees_shows_it_on_another_mount() {
    let root = tempdir();
    let src = root.path().join("model");
    make_tree(&src, 1000);
    let m = Mounted::embedded(root.path(), &[]);
    sh_ok(&format!("cp -r {} {}", q(&src), q(&m.path("import"))));
    let id = tree_id_of(&m.import("model"));
    assert_eq!(id.len(), 64, "{id}");

    let socket = root.path().join("store/dfdaemon.sock");
    let imported = cli(
        &socket,
        &["import", "-r", "--stream-mode", src.to_str().unwrap()],
    );
    assert_eq!(succeeded(&imported, "dfcache import -r"), id);

    sh_ok(&format!(
        "rsync -rl {}/ {}/",
        q(&src),
        q(&m.import("by-rsync"))
    ));
    assert_eq!(tree_id_of(&m.import("by-rsync")), id);
    sh_ok(&format!(
        "mkdir {d} && tar -C {s} -cf - . | tar -x -C {d}",
        s = q(&src),
        d = q(&m.import("by-tar"))
    ));
    assert_eq!(tree_id_of(&m.import("by-tar")), id);
    drop(m);

    // A new mount knows nothing of the tree but its id.
    let m = Mounted::embedded(root.path(), &[]);
    let view = m.path(&format!("trees/{id}"));
    assert_view_matches(&view, &src);
    let listing = sh_ok(&format!("ls -lR {} | wc -l", q(&view)));
    assert!(listing.parse::<u32>().unwrap() > 1000, "{listing}");
    let code = r#"
import json, mmap, sys
view, src = sys.argv[1], sys.argv[2]
assert json.load(open(view + '/config.json')) == {'hidden_size': 4096}
name = '/weights/model-00001.safetensors'
with open(view + name, 'rb') as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    assert m[:] == open(src + name, 'rb').read()
print('ok')
"#;
    let out = python(code, &[view.to_str().unwrap(), src.to_str().unwrap()]);
    assert_eq!(succeeded(&out, "python"), "ok");

    // export --recursive recreates it byte for byte, modes included.
    let out = root.path().join("exported");
    let export = cli(&socket, &["export", "-r", &id, "-O", out.to_str().unwrap()]);
    succeeded(&export, "dfcache export -r");
    assert_same_tree(&src, &out);
}

#[test]
fn a_directory_is_busy_while_a_file_in_it_is_written_and_directories_behave_like_directories() {
    let root = tempdir();
    let m = Mounted::embedded(root.path(), &[]);
    sh_ok(&format!("mkdir -p {}", q(&m.import("a/b/c"))));
    let code = r#"
import errno, os, sys
d = sys.argv[1]
fd = os.open(d + '/b/f', os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b'half')
try:
    os.getxattr(d, 'user.dfcache.tree_id')
    print('committed while writing')
except OSError as e:
    print('busy' if e.errno == errno.EBUSY else e)
os.close(fd)
print(len(os.getxattr(d, 'user.dfcache.tree_id')))
"#;
    let out = python(code, &[m.import("a").to_str().unwrap()]);
    assert_eq!(succeeded(&out, "python"), "busy\n64");

    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error().unwrap();
    assert_eq!(errno(std::fs::remove_dir(m.import("a/b"))), libc::ENOTEMPTY);
    assert_eq!(
        errno(std::fs::rename(m.import("a"), m.import("a/b/c/a"))),
        libc::EINVAL
    );
    assert_eq!(errno(std::fs::create_dir(m.import("a/.."))), libc::EEXIST);
    std::fs::rename(m.import("a/b/f"), m.import("a/b/c/g")).unwrap();
    std::fs::rename(m.import("a/b"), m.import("moved")).unwrap();
    assert_eq!(ls(&m.import("moved")), "c");
    assert_eq!(std::fs::read(m.import("moved/c/g")).unwrap(), b"half");
    std::fs::remove_file(m.import("moved/c/g")).unwrap();
    std::fs::remove_dir(m.import("moved/c")).unwrap();
    std::fs::remove_dir(m.import("moved")).unwrap();
    assert_eq!(ls(&m.path("import")), "a");
}

#[test]
fn a_file_fsynced_but_still_open_is_finished_for_its_tree_and_takes_no_more_writes() {
    let root = tempdir();
    let m = Mounted::embedded(root.path(), &[]);
    sh_ok(&format!("mkdir -p {}", q(&m.import("a"))));
    let code = r#"
import errno, os, sys
d = sys.argv[1]
fd = os.open(d + '/f', os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b'whole')
os.fsync(fd)
print(len(os.getxattr(d, 'user.dfcache.tree_id')))
try:
    os.write(fd, b'more')
    print('written after the commit')
except OSError as e:
    print('EIO' if e.errno == errno.EIO else e)
os.close(fd)
"#;
    let out = python(code, &[m.import("a").to_str().unwrap()]);
    assert_eq!(succeeded(&out, "python"), "64\nEIO");
    assert_eq!(std::fs::read(m.import("a/f")).unwrap(), b"whole");
}

#[test]
fn a_released_dfdaemon_with_a_spool_commits_and_shows_the_same_tree() {
    let root = tempdir();
    let src = root.path().join("model");
    make_tree(&src, 30);
    let current = Daemon::start(root.path());
    let id = current.ok(&["import", "-r", "--stream-mode", src.to_str().unwrap()]);

    let legacy_root = root.path().join("legacy");
    std::fs::create_dir_all(&legacy_root).unwrap();
    let legacy = Daemon::start_with(&legacy_root, &["--legacy"]);
    let spool = legacy_root.join("spool");
    let m = Mounted::on(&legacy, &legacy_root, &["--spool", spool.to_str().unwrap()]);
    sh_ok(&format!("cp -r {} {}", q(&src), q(&m.path("import"))));
    assert_eq!(tree_id_of(&m.import("model")), id);
    assert_view_matches(&m.path(&format!("trees/{id}")), &src);
}

#[test]
fn an_id_that_is_no_manifest_is_einval_and_a_file_whose_size_is_a_lie_is_eio() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let data = root.path().join("data.bin");
    write_file(&data, 5000, 91);
    let data_id = daemon.ok(&["import", "--stream-mode", data.to_str().unwrap()]);
    let lying = root.path().join("lying.json");
    std::fs::write(
        &lying,
        format!(
            r#"{{"entries":[{{"kind":"file","mode":420,"name":"data.bin","size":4999,"task_id":"{data_id}"}}],"version":1}}"#
        ),
    )
    .unwrap();
    let lying_id = daemon.ok(&["import", "--stream-mode", lying.to_str().unwrap()]);
    let m = Mounted::on(&daemon, root.path(), &[]);

    let out = sh(&format!("ls {}", q(&m.path(&format!("trees/{data_id}")))));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
        "{out:?}"
    );
    let unknown = "0".repeat(64);
    let out = sh(&format!("ls {}", q(&m.path(&format!("trees/{unknown}")))));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));

    // Listed from the manifest; nothing served from the lie.
    let view = m.path(&format!("trees/{lying_id}"));
    assert_eq!(ls(&view), "data.bin");
    let out = sh(&format!("cat {} > /dev/null", q(&view.join("data.bin"))));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Input/output error"),
        "{out:?}"
    );
}
