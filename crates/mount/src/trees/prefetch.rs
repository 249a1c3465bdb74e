//! A tree's files queued for download ahead of the programs when one of
//! them is first opened (`--prefetch-trees`, a daemon without range
//! reads); the queue is worked by `task_files::prefetch`.

use crate::filesystem::DfcacheFs;
use crate::inodes::Node;
use crate::task_files::prefetch::Wanted;
use crate::trees::node::{TreeFile, TreeNode};

impl DfcacheFs {
    /// Queues the other files of `file`'s tree, once per tree: in path
    /// order from the file after `file`, round to the one before it (a
    /// program walking the tree opens them in that order).
    pub(crate) fn prefetch_tree_of(&self, file: &TreeFile) {
        if !self.config.prefetch_trees {
            return;
        }
        let first_open = self
            .prefetched_trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(file.root);
        if !first_open {
            return;
        }
        let mut files = self.tree_files(file.root);
        let after = files
            .iter()
            .position(|(ino, _)| *ino == file.ino)
            .map_or(0, |at| at + 1);
        files.rotate_left(after);
        let wanted: Vec<Wanted> = files
            .into_iter()
            .filter(|(ino, _)| *ino != file.ino)
            .map(|(_, wanted)| wanted)
            .collect();
        tracing::info!(files = wanted.len(), "prefetching the tree's other files");
        self.prefetch.enqueue(wanted);
    }

    /// The files of the tree whose root directory is `root`, with their
    /// inodes, in path order (names sorted, depth first).
    fn tree_files(&self, root: u64) -> Vec<(u64, Wanted)> {
        let inodes = self.inodes();
        let mut out = vec![];
        // Children pushed in reverse, so the first name comes out first.
        let mut stack = vec![root];
        while let Some(ino) = stack.pop() {
            let Some(Node::Tree(node)) = inodes.get(ino) else {
                continue;
            };
            match &*node {
                TreeNode::File(f) => out.push((
                    f.ino,
                    Wanted {
                        task_id: f.task_id.clone(),
                        size: f.size,
                    },
                )),
                TreeNode::Dir(d) => stack.extend(d.children.values().rev().map(|(ino, _)| *ino)),
                TreeNode::Link(_) => {}
            }
        }
        out
    }
}
