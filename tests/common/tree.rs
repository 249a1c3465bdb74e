//! A model-like directory tree, and the check that two trees are the same
//! (bytes, links, modes), for the tree tests of the CLI and the mount.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::*;

/// A model-like tree: nested directories, an empty file, an empty
/// directory, a symlink, odd modes, and `small` small files.
pub fn make_tree(dir: &Path, small: usize) {
    std::fs::create_dir_all(dir.join("weights/shards")).unwrap();
    std::fs::create_dir_all(dir.join("empty-dir")).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"hidden_size": 4096}"#).unwrap();
    std::fs::set_permissions(
        dir.join("config.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    write_file(
        &dir.join("weights/model-00001.safetensors"),
        6 * MIB + 3,
        81,
    );
    std::os::unix::fs::symlink(
        "weights/model-00001.safetensors",
        dir.join("model.safetensors"),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("weights/shards"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let mut rng = Rng::new(82);
    for i in 0..small {
        let len = rng.below(3000) as usize;
        std::fs::write(dir.join(format!("weights/shards/s{i:04}")), rng.bytes(len)).unwrap();
    }
}

/// `diff -r` finds no difference, and modes are the same (`diff` ignores them).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .args([a, b])
        .output()
        .unwrap();
    succeeded(&out, format!("diff -r {} {}", a.display(), b.display()));
    let modes = |d: &Path| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                // Sizes of files only: a directory's depends on its history.
                "cd {} && find . \\( -type d -printf '%p %M\\n' \\) -o -printf '%p %M %s\\n' | sort",
                shell_quote(&d.to_string_lossy())
            ))
            .output()
            .unwrap();
        succeeded(&out, "find")
    };
    assert_eq!(modes(a), modes(b));
}
