//! The nodes of a committed tree under `trees/<tree-id>/`, built from its
//! manifest: directories, files (each resolved to its task when opened)
//! and symbolic links.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::attr::Kind;
use crate::task_node::TaskNode;
use dfcache_wire::tree::{self, Manifest};

/// A node of a tree under `trees/`.
pub enum TreeNode {
    Dir(TreeDir),
    File(TreeFile),
    Link(TreeLink),
}

pub struct TreeDir {
    pub ino: u64,
    pub parent: u64,
    pub mode: u16,
    pub created: SystemTime,
    pub children: BTreeMap<OsString, (u64, Kind)>,
}

pub struct TreeFile {
    pub ino: u64,
    /// The inode of its tree's root directory.
    pub root: u64,
    pub mode: u16,
    pub size: u64,
    pub task_id: String,
    pub created: SystemTime,
    /// The task, once resolved (at the first open).
    pub task: Mutex<Option<Arc<TaskNode>>>,
}

pub struct TreeLink {
    pub ino: u64,
    pub target: OsString,
    pub created: SystemTime,
}

impl TreeNode {
    pub fn ino(&self) -> u64 {
        match self {
            TreeNode::Dir(d) => d.ino,
            TreeNode::File(f) => f.ino,
            TreeNode::Link(l) => l.ino,
        }
    }
}

/// Builds the nodes of `manifest` under a root directory whose parent is
/// `parent`; `allocate` gives inode numbers. Returns every node, the root
/// first.
pub fn build(
    manifest: &Manifest,
    parent: u64,
    created: SystemTime,
    allocate: &mut impl FnMut() -> u64,
) -> Vec<Arc<TreeNode>> {
    let mut out = vec![];
    let root = allocate();
    add_dir(
        &Dir {
            ino: root,
            parent,
            mode: 0o555,
            root,
            created,
        },
        &manifest.entries,
        allocate,
        &mut out,
    );
    // add_dir pushes children before their directory: the root is last.
    out.reverse();
    out
}

/// A directory being built.
struct Dir {
    ino: u64,
    parent: u64,
    mode: u16,
    root: u64,
    created: SystemTime,
}

fn add_dir(
    dir: &Dir,
    entries: &[tree::Entry],
    allocate: &mut impl FnMut() -> u64,
    out: &mut Vec<Arc<TreeNode>>,
) {
    let mut children = BTreeMap::new();
    for entry in entries {
        let child = allocate();
        let kind = match &entry.kind {
            tree::Kind::File { size, task_id } => {
                out.push(Arc::new(TreeNode::File(TreeFile {
                    ino: child,
                    root: dir.root,
                    mode: entry.mode as u16,
                    size: *size,
                    task_id: task_id.clone(),
                    created: dir.created,
                    task: Mutex::new(None),
                })));
                Kind::File
            }
            tree::Kind::Directory { entries } => {
                let sub = Dir {
                    ino: child,
                    parent: dir.ino,
                    mode: entry.mode as u16,
                    root: dir.root,
                    created: dir.created,
                };
                add_dir(&sub, entries, allocate, out);
                Kind::Directory
            }
            tree::Kind::Symlink { target } => {
                out.push(Arc::new(TreeNode::Link(TreeLink {
                    ino: child,
                    target: target.into(),
                    created: dir.created,
                })));
                Kind::Symlink
            }
        };
        children.insert(OsString::from(&entry.name), (child, kind));
    }
    out.push(Arc::new(TreeNode::Dir(TreeDir {
        ino: dir.ino,
        parent: dir.parent,
        mode: dir.mode,
        created: dir.created,
        children,
    })));
}
