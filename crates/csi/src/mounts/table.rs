//! /proc/self/mountinfo, parsed: which mounts sit at a path, what they
//! show (the `root` of a bind: `/trees/<id>` of the node's mount) and with
//! which options. The plugin's only record of what it published.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Which directory of the mounted file system is shown (`/` for a
    /// whole mount, `/trees/<id>` for a bind of part of it).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`ro,nosuid,nodev,...`).
    pub options: String,
    /// `fuse`, `tmpfs`, ...
    pub fstype: String,
    /// What the file system says it is mounted from (`dfcache`).
    pub source: String,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }

    /// A dfcache mount: FUSE (`fuse` when root mounts it, `fuse.dfcache`
    /// through fusermount3) from the source `dfcache`.
    pub fn is_dfcache(&self) -> bool {
        (self.fstype == "fuse" || self.fstype == "fuse.dfcache") && self.source == "dfcache"
    }
}

/// Every mount at `path`, the one on top last (the table lists mounts in
/// the order they were made).
pub fn mounts_at(path: &Path) -> std::io::Result<Vec<MountEntry>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse(&table)
        .into_iter()
        .filter(|e| e.mount_point == path)
        .collect())
}

/// The entries of a mountinfo text; malformed lines are skipped.
pub fn parse(table: &str) -> Vec<MountEntry> {
    table.lines().filter_map(parse_line).collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`:
/// id, parent, device, root, mount point, options, optional fields up to
/// `-`, then type, source and super options.
fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    if dash < 6 {
        return None;
    }
    Some(MountEntry {
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        options: fields[5].to_string(),
        fstype: fields.get(dash + 1)?.to_string(),
        source: unescape(fields.get(dash + 2)?),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:45 / /var/lib/dfcache/mnt rw,nosuid,nodev,relatime shared:20 - fuse.dfcache dfcache rw,user_id=0,group_id=0,default_permissions,allow_other
41 22 0:45 /trees/abc /var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/model\\040a/mount ro,nosuid,nodev,relatime shared:20 - fuse dfcache rw,user_id=0
42 22 0:46 / /t rw,nosuid,nodev shared:21 - tmpfs dfcache-csi rw,size=64k
";

    #[test]
    fn binds_show_their_root_mount_point_options_and_type() {
        let entries = parse(TABLE);
        assert_eq!(entries.len(), 4);
        let bind = &entries[2];
        assert_eq!(bind.root, PathBuf::from("/trees/abc"));
        assert_eq!(
            bind.mount_point,
            PathBuf::from("/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/model a/mount")
        );
        assert!(bind.read_only() && bind.is_dfcache());
        assert!(!entries[1].read_only() && entries[1].is_dfcache());
        assert!(!entries[3].is_dfcache());
        assert_eq!(entries[3].fstype, "tmpfs");
        assert_eq!(entries[3].source, "dfcache-csi");
    }

    #[test]
    fn escapes_are_undone_and_malformed_lines_skipped() {
        assert_eq!(unescape("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert!(parse("garbage line\n1 2 3\n").is_empty());
    }
}
