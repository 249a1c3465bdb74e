//! The inode table: fixed directories, task files (one inode per task id,
//! stable for the mount's life) and import files (by name in `import/`).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::attr::{Attr, Kind};
use crate::import::state::ImportState;
use crate::read::geometry::TaskGeometry;
use crate::takeover::state::StateLog;
pub use crate::task_node::TaskNode;
use crate::trees::node::{build as build_tree, TreeNode};
use dfcache_wire::tree::Manifest;

pub const ROOT_INO: u64 = 1;
pub const TASKS_INO: u64 = 2;
pub const IMPORT_INO: u64 = 3;
pub const TREES_INO: u64 = 4;
const FIRST_DYNAMIC_INO: u64 = 16;

pub const TASKS_DIR: &str = "tasks";
pub const IMPORT_DIR: &str = "import";
pub const TREES_DIR: &str = "trees";

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
    /// The directory it is in: `import/` or one made in it.
    pub parent: u64,
    pub name: OsString,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// When the current import began (its create, or its O_TRUNC reopen).
    pub started: std::time::Instant,
    /// Open file handles that may write.
    pub writers: u32,
    /// Still has a name in `import/`.
    pub linked: bool,
}

impl ImportMeta {
    /// chmod, chown and utimes (ctime moves with any of them).
    pub fn apply(&mut self, change: &crate::attr::SetAttr) {
        if let Some(mode) = change.mode {
            self.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = change.uid {
            self.uid = uid;
        }
        if let Some(gid) = change.gid {
            self.gid = gid;
        }
        if let Some(atime) = change.atime {
            self.atime = atime;
        }
        if let Some(mtime) = change.mtime {
            self.mtime = mtime;
        }
        self.ctime = SystemTime::now();
    }

    /// The attributes of the entry `ino` this describes, with what the
    /// entry itself knows: its kind, size and (for a finished file, read
    /// only) permission bits.
    pub fn attr(&self, ino: u64, kind: Kind, size: u64, perm: u16) -> Attr {
        Attr {
            ino,
            kind,
            size,
            perm,
            uid: self.uid,
            gid: self.gid,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            immutable: false,
        }
    }
}

impl ImportNode {
    pub fn meta(&self) -> std::sync::MutexGuard<'_, ImportMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A directory made in `import/` (mkdir), or a symbolic link made there:
/// kept by the mount alone until a tree is committed from them.
pub struct ImportDir {
    pub ino: u64,
    pub meta: Mutex<ImportMeta>,
    /// The link's target; None for a directory.
    pub target: Option<OsString>,
}

impl ImportDir {
    pub fn meta(&self) -> std::sync::MutexGuard<'_, ImportMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_link(&self) -> bool {
        self.target.is_some()
    }
}

/// A name under `import/`.
#[derive(Clone)]
pub enum ImportEntry {
    File(Arc<ImportNode>),
    /// A directory or a symbolic link.
    Dir(Arc<ImportDir>),
}

impl ImportEntry {
    pub fn ino(&self) -> u64 {
        match self {
            ImportEntry::File(n) => n.ino,
            ImportEntry::Dir(d) => d.ino,
        }
    }

    fn set_meta(&self, f: impl FnOnce(&mut ImportMeta)) {
        match self {
            ImportEntry::File(n) => f(&mut n.meta()),
            ImportEntry::Dir(d) => f(&mut d.meta()),
        }
    }
}

#[derive(Clone)]
pub enum Node {
    Task(Arc<TaskNode>),
    Import(Arc<ImportNode>),
    ImportDir(Arc<ImportDir>),
    Tree(Arc<TreeNode>),
}

impl Node {
    pub fn ino(&self) -> u64 {
        match self {
            Node::Task(t) => t.ino,
            Node::Import(i) => i.ino,
            Node::ImportDir(d) => d.ino,
            Node::Tree(t) => t.ino(),
        }
    }
}

#[derive(Default)]
pub struct Inodes {
    next: u64,
    nodes: HashMap<u64, Node>,
    tasks: HashMap<Arc<str>, Arc<TaskNode>>,
    /// Names under `import/`, by the directory they are in.
    imports: BTreeMap<(u64, OsString), ImportEntry>,
    /// Trees opened under `trees/`: their root directory's inode.
    trees: BTreeMap<String, u64>,
    /// Where new names are recorded for a takeover.
    pub(crate) log: StateLog,
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
        self.log.task(&node);
        self.insert_task(node.clone());
        node
    }

    /// A task node made here or restored after a takeover.
    pub(crate) fn insert_task(&mut self, node: Arc<TaskNode>) {
        self.tasks.insert(node.geometry.id.clone(), node.clone());
        self.nodes.insert(node.ino, Node::Task(node));
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

    pub fn tree(&self, id: &str) -> Option<u64> {
        self.trees.get(id).copied()
    }

    /// The trees this mount has opened, by id.
    pub fn trees(&self) -> Vec<(String, u64)> {
        self.trees
            .iter()
            .map(|(id, ino)| (id.clone(), *ino))
            .collect()
    }

    /// The nodes of a tree, kept for the mount's life (a tree never
    /// changes); returns its root directory's inode.
    pub fn add_tree(
        &mut self,
        id: &str,
        manifest: &Manifest,
        parent: u64,
        created: SystemTime,
    ) -> u64 {
        if let Some(root) = self.trees.get(id) {
            return *root;
        }
        let mut next = self.next.max(FIRST_DYNAMIC_INO - 1);
        let nodes = build_tree(manifest, parent, created, &mut || {
            next += 1;
            next
        });
        let root = nodes.first().map(|n| n.ino()).unwrap_or(parent);
        self.log
            .tree(id, root, nodes.len() as u64, parent, created, || {
                manifest.to_bytes()
            });
        self.next = next;
        self.insert_tree(id, root, nodes);
        root
    }

    /// A tree's nodes, made here or rebuilt after a takeover.
    pub(crate) fn insert_tree(&mut self, id: &str, root: u64, nodes: Vec<Arc<TreeNode>>) {
        for node in nodes {
            self.nodes.insert(node.ino(), Node::Tree(node));
        }
        self.trees.insert(id.to_string(), root);
    }

    /// The import file `name` in directory `parent`.
    pub fn import(&self, parent: u64, name: &OsStr) -> Option<Arc<ImportNode>> {
        match self.import_entry(parent, name)? {
            ImportEntry::File(node) => Some(node),
            ImportEntry::Dir(_) => None,
        }
    }

    pub fn import_entry(&self, parent: u64, name: &OsStr) -> Option<ImportEntry> {
        self.imports.get(&(parent, name.to_os_string())).cloned()
    }

    /// The names in import directory `parent`.
    pub fn imports(&self, parent: u64) -> Vec<(OsString, ImportEntry)> {
        self.imports
            .range((parent, OsString::new())..)
            .take_while(|((p, _), _)| *p == parent)
            .map(|((_, name), entry)| (name.clone(), entry.clone()))
            .collect()
    }

    /// Whether `ino` is a directory of `import/` (itself or one made in it).
    pub fn is_import_dir(&self, ino: u64) -> bool {
        ino == IMPORT_INO
            || matches!(self.nodes.get(&ino), Some(Node::ImportDir(d)) if !d.is_link())
    }

    pub fn add_import(&mut self, meta: ImportMeta, state: ImportState) -> Arc<ImportNode> {
        let ino = self.allocate();
        let key = (meta.parent, meta.name.clone());
        let node = Arc::new(ImportNode {
            ino,
            state: tokio::sync::Mutex::new(state),
            meta: Mutex::new(meta),
        });
        self.log.import_file(&node);
        self.log.outcome(ino, None);
        self.nodes.insert(ino, Node::Import(node.clone()));
        if let Some(old) = self.imports.insert(key, ImportEntry::File(node.clone())) {
            old.set_meta(|m| m.linked = false);
            self.record(&old);
        }
        node
    }

    /// A new directory or (with `target`) symbolic link in `import/`.
    pub fn add_import_dir(&mut self, meta: ImportMeta, target: Option<OsString>) -> Arc<ImportDir> {
        let ino = self.allocate();
        let key = (meta.parent, meta.name.clone());
        let dir = Arc::new(ImportDir {
            ino,
            meta: Mutex::new(meta),
            target,
        });
        self.log.import_dir(&dir);
        self.nodes.insert(ino, Node::ImportDir(dir.clone()));
        self.imports.insert(key, ImportEntry::Dir(dir.clone()));
        dir
    }

    /// An import entry restored after a takeover.
    pub(crate) fn insert_import(&mut self, entry: ImportEntry) {
        let ino = entry.ino();
        let (parent, name, linked) = match &entry {
            ImportEntry::File(n) => {
                let meta = n.meta();
                (meta.parent, meta.name.clone(), meta.linked)
            }
            ImportEntry::Dir(d) => {
                let meta = d.meta();
                (meta.parent, meta.name.clone(), meta.linked)
            }
        };
        let node = match &entry {
            ImportEntry::File(n) => Node::Import(n.clone()),
            ImportEntry::Dir(d) => Node::ImportDir(d.clone()),
        };
        self.nodes.insert(ino, node);
        if linked {
            self.imports.insert((parent, name), entry);
        }
    }

    /// Records an import entry as it is now (after a change of its name,
    /// attributes or link).
    pub(crate) fn record(&self, entry: &ImportEntry) {
        match entry {
            ImportEntry::File(n) => self.log.import_file(n),
            ImportEntry::Dir(d) if self.nodes.contains_key(&d.ino) => self.log.import_dir(d),
            ImportEntry::Dir(d) => self.log.node_gone(d.ino),
        }
    }

    /// Numbers after every restored inode go to new nodes.
    pub(crate) fn allocate_after(&mut self, last: u64) {
        self.next = self.next.max(last);
    }

    /// Takes `name` out of its directory; a file lives on while open.
    pub fn unlink_import(&mut self, parent: u64, name: &OsStr) -> Option<ImportEntry> {
        let entry = self.imports.remove(&(parent, name.to_os_string()))?;
        entry.set_meta(|m| m.linked = false);
        if let ImportEntry::Dir(d) = &entry {
            self.nodes.remove(&d.ino);
        }
        self.record(&entry);
        Some(entry)
    }

    /// Moves `parent/name` to `new_parent/new_name`; returns what the new
    /// name named before, if anything.
    pub fn rename_import(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Option<ImportEntry> {
        let entry = self.imports.remove(&(parent, name.to_os_string()))?;
        entry.set_meta(|m| {
            m.parent = new_parent;
            m.name = new_name.to_os_string();
        });
        self.record(&entry);
        let replaced = self
            .imports
            .insert((new_parent, new_name.to_os_string()), entry);
        if let Some(old) = &replaced {
            old.set_meta(|m| m.linked = false);
            if let ImportEntry::Dir(d) = old {
                self.nodes.remove(&d.ino);
            }
            self.record(old);
        }
        replaced
    }

    /// Whether import directory `dir` is `ancestor` or inside it.
    pub fn import_dir_is_within(&self, mut dir: u64, ancestor: u64) -> bool {
        loop {
            if dir == ancestor {
                return true;
            }
            match self.nodes.get(&dir) {
                Some(Node::ImportDir(d)) => dir = d.meta().parent,
                _ => return false,
            }
        }
    }

    /// Drops an import node that has no name and no open handle.
    pub fn release_import(&mut self, ino: u64) {
        self.nodes.remove(&ino);
        self.log.node_gone(ino);
    }

    /// Import files open for writing.
    pub fn imports_being_written(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| {
                matches!(n, Node::Import(i) if i.meta().writers > 0
                    // Locked: a write or commit is under way.
                    && i.state.try_lock().map_or(true, |s| s.is_open_for_data()))
            })
            .count()
    }

    pub fn task_count_and_bytes(&self) -> (u64, u64) {
        let bytes = self.tasks.values().map(|t| t.geometry.content_length).sum();
        (self.tasks.len() as u64, bytes)
    }
}
