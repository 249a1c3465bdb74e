//! The inode table: fixed directories, task files (one inode per task id,
//! stable for the mount's life) and import files (by name in `import/`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::fs::geometry::TaskGeometry;
use crate::fs::import::ImportState;

pub const ROOT_INO: u64 = 1;
pub const TASKS_INO: u64 = 2;
pub const IMPORT_INO: u64 = 3;
const FIRST_DYNAMIC_INO: u64 = 16;

pub const TASKS_DIR: &str = "tasks";
pub const IMPORT_DIR: &str = "import";

/// A task file under `tasks/`.
#[derive(Debug)]
pub struct TaskNode {
    pub ino: u64,
    pub geometry: TaskGeometry,
    pub created: SystemTime,
    /// When the daemon last said the task exists (a stat, listing or read).
    pub confirmed: Mutex<Instant>,
}

impl TaskNode {
    pub fn confirmed_within(&self, limit: std::time::Duration) -> bool {
        self.confirmed.lock().is_ok_and(|at| at.elapsed() < limit)
    }

    pub fn confirm(&self) {
        if let Ok(mut at) = self.confirmed.lock() {
            *at = Instant::now();
        }
    }
}

/// A file in `import/`.
pub struct ImportNode {
    pub ino: u64,
    /// Held for the whole of a finish, so readers of the result (getattr,
    /// getxattr) wait for the daemon's answer instead of racing it.
    pub state: tokio::sync::Mutex<ImportState>,
    pub meta: Mutex<ImportMeta>,
}

#[derive(Debug, Clone)]
pub struct ImportMeta {
    pub name: OsString,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Open file handles that may write.
    pub writers: u32,
    /// Still has a name in `import/`.
    pub linked: bool,
}

impl ImportNode {
    pub fn meta(&self) -> std::sync::MutexGuard<'_, ImportMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
pub enum Node {
    Task(Arc<TaskNode>),
    Import(Arc<ImportNode>),
}

impl Node {
    pub fn ino(&self) -> u64 {
        match self {
            Node::Task(t) => t.ino,
            Node::Import(i) => i.ino,
        }
    }
}

#[derive(Default)]
pub struct Inodes {
    next: u64,
    nodes: HashMap<u64, Node>,
    tasks: HashMap<Arc<str>, Arc<TaskNode>>,
    imports: BTreeMap<OsString, Arc<ImportNode>>,
}

impl Inodes {
    fn allocate(&mut self) -> u64 {
        self.next = self.next.max(FIRST_DYNAMIC_INO - 1) + 1;
        self.next
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.nodes.get(&ino).cloned()
    }

    pub fn task(&self, id: &str) -> Option<Arc<TaskNode>> {
        self.tasks.get(id).cloned()
    }

    /// The task's node, created on first sight; a known task keeps its inode.
    pub fn add_task(&mut self, geometry: TaskGeometry, created: SystemTime) -> Arc<TaskNode> {
        if let Some(node) = self.tasks.get(&geometry.id) {
            node.confirm();
            return node.clone();
        }
        let ino = self.allocate();
        let node = Arc::new(TaskNode {
            ino,
            geometry,
            created,
            confirmed: Mutex::new(Instant::now()),
        });
        self.tasks.insert(node.geometry.id.clone(), node.clone());
        self.nodes.insert(ino, Node::Task(node.clone()));
        node
    }

    /// The tasks this mount knows (imported, opened or listed).
    pub fn known_tasks(&self) -> Vec<Arc<TaskNode>> {
        let mut tasks: Vec<_> = self.tasks.values().cloned().collect();
        tasks.sort_by(|a, b| a.geometry.id.cmp(&b.geometry.id));
        tasks
    }

    /// Forgets a task that is gone: its name no longer resolves here (a
    /// lookup asks the daemon again); open handles keep their node.
    pub fn forget_task(&mut self, id: &str) -> Option<Arc<TaskNode>> {
        self.tasks.remove(id)
    }

    pub fn import(&self, name: &OsStr) -> Option<Arc<ImportNode>> {
        self.imports.get(name).cloned()
    }

    pub fn imports(&self) -> Vec<(OsString, u64)> {
        self.imports
            .iter()
            .map(|(name, node)| (name.clone(), node.ino))
            .collect()
    }

    pub fn add_import(&mut self, meta: ImportMeta, state: ImportState) -> Arc<ImportNode> {
        let ino = self.allocate();
        let name = meta.name.clone();
        let node = Arc::new(ImportNode {
            ino,
            state: tokio::sync::Mutex::new(state),
            meta: Mutex::new(meta),
        });
        self.nodes.insert(ino, Node::Import(node.clone()));
        if let Some(old) = self.imports.insert(name, node.clone()) {
            old.meta().linked = false;
        }
        node
    }

    /// Takes `name` out of `import/`; the node lives on while open.
    pub fn unlink_import(&mut self, name: &OsStr) -> Option<Arc<ImportNode>> {
        let node = self.imports.remove(name)?;
        node.meta().linked = false;
        Some(node)
    }

    /// Moves `from` to `to`; returns the node that `to` named before, if any.
    pub fn rename_import(&mut self, from: &OsStr, to: &OsStr) -> Option<Arc<ImportNode>> {
        let node = self.imports.remove(from)?;
        node.meta().name = to.to_os_string();
        let replaced = self.imports.insert(to.to_os_string(), node);
        if let Some(old) = &replaced {
            old.meta().linked = false;
        }
        replaced
    }

    /// Drops an import node that has no name and no open handle.
    pub fn release_import(&mut self, ino: u64) {
        self.nodes.remove(&ino);
    }

    pub fn task_count_and_bytes(&self) -> (u64, u64) {
        let bytes = self.tasks.values().map(|t| t.geometry.content_length).sum();
        (self.tasks.len() as u64, bytes)
    }
}
