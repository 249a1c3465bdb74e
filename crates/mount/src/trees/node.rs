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
        root,
        parent,
        0o555,
        &manifest.entries,
        created,
        allocate,
        &mut out,
    );
    // add_dir pushes children before their directory: the root is last.
    out.reverse();
    out
}

fn add_dir(
    ino: u64,
    parent: u64,
    mode: u16,
    entries: &[tree::Entry],
    created: SystemTime,
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
                    mode: entry.mode as u16,
                    size: *size,
                    task_id: task_id.clone(),
                    created,
                    task: Mutex::new(None),
                })));
                Kind::File
            }
            tree::Kind::Directory { entries } => {
                add_dir(
                    child,
                    ino,
                    entry.mode as u16,
                    entries,
                    created,
                    allocate,
                    out,
                );
                Kind::Directory
            }
            tree::Kind::Symlink { target } => {
                out.push(Arc::new(TreeNode::Link(TreeLink {
                    ino: child,
                    target: target.into(),
                    created,
                })));
                Kind::Symlink
            }
        };
        children.insert(OsString::from(&entry.name), (child, kind));
    }
    out.push(Arc::new(TreeNode::Dir(TreeDir {
        ino,
        parent,
        mode,
        created,
        children,
    })));
}
