//! A reference model of `import/`, checked against the real file system
//! (`DfcacheFs` on the in-memory fake daemon) with proptest: random
//! sequences of create, sequential and out-of-order writes, fsync, close
//! of duplicated descriptors, unlink, rename, chmod and truncate, reads,
//! listings, stats, xattrs and commit failures; every result must be what a plain-Rust model says.
//! Streaming and spool modes both. A failure shrinks to a minimal sequence
//! of operations, printed with the first result that differed.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use dfcache_client::mapping::PathMapper;
use dfcache_mount::attr::{Modes, Owner, SetAttr};
use dfcache_mount::daemon::fake::{Call, FakeDaemon, Fault};
use dfcache_mount::daemon::{Code, ImportOptions};
use dfcache_mount::inodes::IMPORT_INO;
use dfcache_mount::{DfcacheFs, FsConfig};
use dfcache_wire::domain::task_id::{TaskIdHasher, TaskIdInputs};

const FILES: u8 = 3;
const ENOENT: i32 = libc::ENOENT;
const EIO: i32 = libc::EIO;
const EINVAL: i32 = libc::EINVAL;
const ENODATA: i32 = libc::ENODATA;

/// Where a write lands.
#[derive(Debug, Clone, Copy)]
enum At {
    /// At the current end: the only offset a streamed import takes.
    End,
    /// Past the end, leaving a hole.
    Past(u16),
    /// Back at the start (a rewrite).
    Start,
}

#[derive(Debug, Clone)]
enum Op {
    /// `open(import/fN, O_CREAT|O_WRONLY)`: a new descriptor.
    Create(u8),
    Write {
        desc: u8,
        at: At,
        len: u16,
    },
    Fsync(u8),
    /// `dup()` of a descriptor: one more descriptor on the same handle.
    Dup(u8),
    /// `close()`: a flush, and the handle's release after its last one.
    Close(u8),
    Unlink(u8),
    Rename(u8, u8),
    /// open read-only, `pread`, close.
    Read {
        file: u8,
        offset: u16,
        len: u16,
    },
    Listing,
    Xattr(u8),
    Stat(u8),
    /// chmod and/or truncate (`setattr`).
    Setattr {
        file: u8,
        mode: Option<u16>,
        size: Option<u16>,
    },
    /// The next import to reach the daemon's commit fails with this status.
    FailNextCommit(Code),
}

fn op() -> impl Strategy<Value = Op> {
    let at = prop_oneof![
        6 => Just(At::End),
        1 => (1u16..300).prop_map(At::Past),
        1 => Just(At::Start),
    ];
    let code = prop_oneof![
        Just(Code::ResourceExhausted),
        Just(Code::InvalidArgument),
        Just(Code::Internal),
    ];
    prop_oneof![
        3 => (0..FILES).prop_map(Op::Create),
        6 => (any::<u8>(), at, 0u16..3000).prop_map(|(desc, at, len)| Op::Write { desc, at, len }),
        1 => any::<u8>().prop_map(Op::Fsync),
        1 => any::<u8>().prop_map(Op::Dup),
        3 => any::<u8>().prop_map(Op::Close),
        1 => (0..FILES).prop_map(Op::Unlink),
        1 => (0..FILES, 0..FILES).prop_map(|(a, b)| Op::Rename(a, b)),
        2 => (0..FILES, 0u16..4000, 1u16..3000).prop_map(|(file, offset, len)| Op::Read { file, offset, len }),
        1 => Just(Op::Listing),
        1 => (0..FILES).prop_map(Op::Xattr),
        1 => (0..FILES).prop_map(Op::Stat),
        1 => (0..FILES, prop::option::of(0u16..0o1000), prop::option::of(0u16..4000))
            .prop_map(|(file, mode, size)| Op::Setattr { file, mode, size }),
        1 => code.prop_map(Op::FailNextCommit),
    ]
}

/// What an operation returned, in terms both sides can produce.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Err(i32),
    Written(u32),
    Bytes(Vec<u8>),
    Names(Vec<String>),
    /// Size and permission bits.
    Attr(u64, u16),
    /// A close: the flush's result and the release's, when it was the last.
    Closed(Box<Outcome>, Option<Box<Outcome>>),
    Skipped,
}

fn of<T>(r: Result<T, dfcache_mount::FsError>, ok: impl FnOnce(T) -> Outcome) -> Outcome {
    match r {
        Ok(v) => ok(v),
        Err(e) => Outcome::Err(e.code()),
    }
}

/// The handle behind descriptor number `desc` (taken modulo how many are
/// open), if any is open.
fn pick(descs: &[usize], desc: u8) -> Option<usize> {
    descs.get(usize::from(desc) % descs.len().max(1)).copied()
}

fn fname(i: u8) -> String {
    format!("f{i}")
}

// ---------------------------------------------------------------- model

#[derive(Debug, Clone)]
enum State {
    Writing(Vec<u8>),
    Finished(Vec<u8>),
    Failed(i32),
    Cancelled,
}

#[derive(Debug)]
struct Node {
    state: State,
    writers: usize,
    perm: u16,
}

#[derive(Debug)]
struct Model {
    spool: bool,
    nodes: Vec<Node>,
    names: BTreeMap<String, usize>,
    /// Open handles: (node, descriptors on it).
    handles: Vec<(usize, usize)>,
    /// Descriptors: the handle each refers to.
    descs: Vec<usize>,
    pending_faults: VecDeque<i32>,
}

fn errno_of(code: Code) -> i32 {
    match code {
        Code::ResourceExhausted => libc::ENOSPC,
        Code::InvalidArgument => libc::EINVAL,
        _ => libc::EIO,
    }
}

fn task_id(data: &[u8]) -> String {
    let mut h = TaskIdHasher::new(TaskIdInputs::default());
    h.update(data);
    h.finish()
}

impl Model {
    fn new(spool: bool) -> Self {
        Model {
            spool,
            nodes: Vec::new(),
            names: BTreeMap::new(),
            handles: Vec::new(),
            descs: Vec::new(),
            pending_faults: VecDeque::new(),
        }
    }

    fn start_import(&mut self, node: usize) {
        self.nodes[node].state = State::Writing(Vec::new());
    }

    /// Commits `node`'s import; its outcome.
    fn commit(&mut self, node: usize) -> Outcome {
        let State::Writing(data) = self.nodes[node].state.clone() else {
            return Outcome::Ok;
        };
        match self.pending_faults.pop_front() {
            Some(errno) => {
                self.nodes[node].state = State::Failed(errno);
                self.names.retain(|_, n| *n != node);
                Outcome::Err(errno)
            }
            None => {
                self.nodes[node].state = State::Finished(data);
                Outcome::Ok
            }
        }
    }

    fn flush(&mut self, node: usize) -> Outcome {
        match &self.nodes[node].state {
            State::Writing(data) if !data.is_empty() => self.commit(node),
            State::Failed(errno) => Outcome::Err(*errno),
            _ => Outcome::Ok,
        }
    }

    fn apply(&mut self, op: &Op, seed: u8) -> Outcome {
        match *op {
            Op::Create(f) => {
                let name = fname(f);
                let node = match self.names.get(&name).copied() {
                    Some(node) => {
                        if !matches!(self.nodes[node].state, State::Writing(_)) {
                            // O_TRUNC over a finished import: a new import,
                            // writable again.
                            self.start_import(node);
                            self.nodes[node].perm |= 0o200;
                        }
                        node
                    }
                    None => {
                        self.nodes.push(Node {
                            state: State::Cancelled,
                            writers: 0,
                            perm: 0o644,
                        });
                        let node = self.nodes.len() - 1;
                        self.start_import(node);
                        self.names.insert(name, node);
                        node
                    }
                };
                self.nodes[node].writers += 1;
                self.handles.push((node, 1));
                self.descs.push(self.handles.len() - 1);
                Outcome::Ok
            }
            Op::Write { desc, at, len } => {
                let Some(h) = pick(&self.descs, desc) else {
                    return Outcome::Skipped;
                };
                let node = self.handles[h].0;
                let spool = self.spool;
                match &mut self.nodes[node].state {
                    State::Writing(data) => {
                        let offset = match at {
                            At::End => data.len(),
                            At::Past(gap) => data.len() + usize::from(gap),
                            At::Start => 0,
                        };
                        if !spool && offset != data.len() {
                            return Outcome::Err(EINVAL);
                        }
                        let end = offset + usize::from(len);
                        if data.len() < end {
                            data.resize(end, 0);
                        }
                        data[offset..end].fill(seed);
                        Outcome::Written(u32::from(len))
                    }
                    State::Failed(errno) => Outcome::Err(*errno),
                    State::Finished(_) | State::Cancelled => Outcome::Err(EIO),
                }
            }
            Op::Fsync(desc) => {
                let Some(h) = pick(&self.descs, desc) else {
                    return Outcome::Skipped;
                };
                self.flush(self.handles[h].0)
            }
            Op::Dup(desc) => {
                let Some(h) = pick(&self.descs, desc) else {
                    return Outcome::Skipped;
                };
                self.handles[h].1 += 1;
                self.descs.push(h);
                Outcome::Ok
            }
            Op::Close(desc) => {
                if self.descs.is_empty() {
                    return Outcome::Skipped;
                }
                let h = self.descs.remove(usize::from(desc) % self.descs.len());
                let node = self.handles[h].0;
                let flushed = self.flush(node);
                self.handles[h].1 -= 1;
                let released = (self.handles[h].1 == 0).then(|| {
                    self.nodes[node].writers -= 1;
                    let last = self.nodes[node].writers == 0;
                    Box::new(if last { self.commit(node) } else { Outcome::Ok })
                });
                Outcome::Closed(Box::new(flushed), released)
            }
            Op::Unlink(f) => match self.names.remove(&fname(f)) {
                None => Outcome::Err(ENOENT),
                Some(node) => {
                    self.cancel(node);
                    Outcome::Ok
                }
            },
            Op::Rename(a, b) => {
                let (a, b) = (fname(a), fname(b));
                let Some(&node) = self.names.get(&a) else {
                    return Outcome::Err(ENOENT);
                };
                if a == b {
                    return Outcome::Ok;
                }
                self.names.remove(&a);
                if let Some(old) = self.names.insert(b, node) {
                    self.cancel(old);
                }
                Outcome::Ok
            }
            Op::Read { file, offset, len } => {
                let Some(&node) = self.names.get(&fname(file)) else {
                    return Outcome::Err(ENOENT);
                };
                match &self.nodes[node].state {
                    State::Finished(data) => {
                        let start = usize::from(offset).min(data.len());
                        let end = (start + usize::from(len)).min(data.len());
                        Outcome::Bytes(data[start..end].to_vec())
                    }
                    _ => Outcome::Err(EINVAL),
                }
            }
            Op::Listing => Outcome::Names(self.names.keys().cloned().collect()),
            Op::Xattr(f) => {
                let Some(&node) = self.names.get(&fname(f)) else {
                    return Outcome::Err(ENOENT);
                };
                match &self.nodes[node].state {
                    State::Finished(data) => Outcome::Bytes(task_id(data).into_bytes()),
                    _ => Outcome::Err(ENODATA),
                }
            }
            Op::Stat(f) => {
                let Some(&node) = self.names.get(&fname(f)) else {
                    return Outcome::Err(ENOENT);
                };
                self.attr(node)
            }
            Op::Setattr { file, mode, size } => {
                let Some(&node) = self.names.get(&fname(file)) else {
                    return Outcome::Err(ENOENT);
                };
                if let Some(size) = size {
                    let spool = self.spool;
                    match &mut self.nodes[node].state {
                        State::Writing(data) if spool => data.resize(usize::from(size), 0),
                        State::Writing(data) | State::Finished(data)
                            if data.len() == usize::from(size) => {}
                        _ => return Outcome::Err(EINVAL),
                    }
                }
                if let Some(mode) = mode {
                    self.nodes[node].perm = mode;
                }
                self.attr(node)
            }
            Op::FailNextCommit(code) => {
                self.pending_faults.push_back(errno_of(code));
                Outcome::Ok
            }
        }
    }

    /// What stat shows: the bytes so far, and a finished import read-only.
    fn attr(&self, node: usize) -> Outcome {
        let n = &self.nodes[node];
        match &n.state {
            State::Writing(d) => Outcome::Attr(d.len() as u64, n.perm),
            State::Finished(d) => Outcome::Attr(d.len() as u64, n.perm & 0o555),
            State::Failed(_) | State::Cancelled => Outcome::Attr(0, n.perm),
        }
    }

    fn cancel(&mut self, node: usize) {
        if matches!(self.nodes[node].state, State::Writing(_)) {
            self.nodes[node].state = State::Cancelled;
        }
    }
}

// ----------------------------------------------------------- the real fs

struct Real {
    fs: DfcacheFs,
    fake: Arc<FakeDaemon>,
    spool: bool,
    /// Open handles (fh) and, per descriptor, its handle's index.
    handles: Vec<(u64, usize)>,
    descs: Vec<usize>,
}

impl Real {
    fn new(spool: Option<&std::path::Path>) -> Self {
        let fake = FakeDaemon::new(Duration::from_millis(50));
        let config = FsConfig {
            cache_size: 16 << 20,
            read_ahead: 8 << 20,
            spool: spool.map(|p| p.to_path_buf()),
            free_space_of: None,
            path_mapping: PathMapper::default(),
            import: ImportOptions::default(),
            fetch_timeout: Duration::from_secs(5),
            import_memory: dfcache_budget::MemoryBudget::new(256 << 20),
            negative_ttl: Duration::from_secs(5),
            task_cache_size: 1 << 30,
            prefetch_trees: true,
            owner: Owner { uid: 0, gid: 0 },
            modes: Modes::default(),
        };
        Real {
            fs: DfcacheFs::new(fake.clone(), config),
            fake,
            spool: spool.is_some(),
            handles: Vec::new(),
            descs: Vec::new(),
        }
    }

    async fn apply(&mut self, op: &Op, seed: u8) -> Outcome {
        let fs = &self.fs;
        match *op {
            Op::Create(f) => {
                let created = fs
                    .create(IMPORT_INO, &OsString::from(fname(f)), 0o644, false, 0, 0)
                    .await;
                of(created, |(_, opened)| {
                    self.handles.push((opened.fh, 1));
                    self.descs.push(self.handles.len() - 1);
                    Outcome::Ok
                })
            }
            Op::Write { desc, at, len } => {
                let Some(h) = pick(&self.descs, desc) else {
                    return Outcome::Skipped;
                };
                let fh = self.handles[h].0;
                // The offset as the model computes it: from the file's size.
                let size = self.size_of_handle(fh).await;
                let offset = match at {
                    At::End => size,
                    At::Past(gap) => size + u64::from(gap),
                    At::Start => 0,
                };
                let written = fs.write(fh, offset, vec![seed; usize::from(len)]).await;
                of(written, Outcome::Written)
            }
            Op::Fsync(desc) => {
                let Some(h) = pick(&self.descs, desc) else {
                    return Outcome::Skipped;
                };
                of(fs.fsync(self.handles[h].0).await, |()| Outcome::Ok)
            }
            Op::Dup(desc) => {
                let Some(h) = pick(&self.descs, desc) else {
                    return Outcome::Skipped;
                };
                self.handles[h].1 += 1;
                self.descs.push(h);
                Outcome::Ok
            }
            Op::Close(desc) => {
                if self.descs.is_empty() {
                    return Outcome::Skipped;
                }
                let h = self.descs.remove(usize::from(desc) % self.descs.len());
                let fh = self.handles[h].0;
                let flushed = of(fs.flush(fh).await, |()| Outcome::Ok);
                self.handles[h].1 -= 1;
                let released = if self.handles[h].1 == 0 {
                    Some(Box::new(of(fs.release(fh).await, |()| Outcome::Ok)))
                } else {
                    None
                };
                Outcome::Closed(Box::new(flushed), released)
            }
            Op::Unlink(f) => of(
                fs.unlink(IMPORT_INO, &OsString::from(fname(f))).await,
                |()| Outcome::Ok,
            ),
            Op::Rename(a, b) => of(
                fs.rename(
                    IMPORT_INO,
                    &OsString::from(fname(a)),
                    IMPORT_INO,
                    &OsString::from(fname(b)),
                    false,
                )
                .await,
                |()| Outcome::Ok,
            ),
            Op::Read { file, offset, len } => {
                let attr = match fs.lookup(IMPORT_INO, &OsString::from(fname(file))).await {
                    Ok(attr) => attr,
                    Err(e) => return Outcome::Err(e.code()),
                };
                let fh = match fs.open(attr.ino, false, false).await {
                    Ok(opened) => opened.fh,
                    Err(e) => return Outcome::Err(e.code()),
                };
                let read = fs.read(fh, u64::from(offset), u32::from(len)).await;
                let _ = fs.release(fh).await;
                of(read, |b| Outcome::Bytes(b.to_vec()))
            }
            Op::Listing => {
                let fh = match fs.opendir(IMPORT_INO).await {
                    Ok(fh) => fh,
                    Err(e) => return Outcome::Err(e.code()),
                };
                let names = fs
                    .dir_listing(fh)
                    .map(|entries| {
                        entries
                            .iter()
                            .map(|e| e.name.to_string_lossy().into_owned())
                            .filter(|n| n != "." && n != "..")
                            .collect()
                    })
                    .unwrap_or_default();
                fs.releasedir(IMPORT_INO, fh);
                Outcome::Names(names)
            }
            Op::Xattr(f) => {
                let attr = match fs.lookup(IMPORT_INO, &OsString::from(fname(f))).await {
                    Ok(attr) => attr,
                    Err(e) => return Outcome::Err(e.code()),
                };
                of(
                    fs.getxattr(attr.ino, &OsString::from("user.dfcache.task_id"))
                        .await,
                    Outcome::Bytes,
                )
            }
            Op::Stat(f) => of(
                fs.lookup(IMPORT_INO, &OsString::from(fname(f))).await,
                |attr| Outcome::Attr(attr.size, attr.perm),
            ),
            Op::Setattr { file, mode, size } => {
                let attr = match fs.lookup(IMPORT_INO, &OsString::from(fname(file))).await {
                    Ok(attr) => attr,
                    Err(e) => return Outcome::Err(e.code()),
                };
                let change = SetAttr {
                    mode: mode.map(u32::from),
                    size: size.map(u64::from),
                    ..SetAttr::default()
                };
                of(fs.setattr(attr.ino, change).await, |attr| {
                    Outcome::Attr(attr.size, attr.perm)
                })
            }
            Op::FailNextCommit(code) => {
                let call = if self.spool {
                    Call::Import
                } else {
                    Call::Write
                };
                self.fake.inject(call, Fault::FailAtFinish(code));
                Outcome::Ok
            }
        }
    }

    /// The size of the file behind an open handle (its import's bytes).
    async fn size_of_handle(&self, fh: u64) -> u64 {
        // Handles are on imports; getattr by the inode the handle opened.
        match self.fs.handle_ino(fh) {
            Some(ino) => self.fs.getattr(ino).await.map_or(0, |a| a.size),
            None => 0,
        }
    }
}

fn run(ops: &[Op], spool: bool) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    rt.block_on(async {
        let mut real = Real::new(spool.then(|| dir.path()));
        let mut model = Model::new(spool);
        for (i, op) in ops.iter().enumerate() {
            let seed = i as u8 ^ 0x5a;
            let expected = model.apply(op, seed);
            let got = real.apply(op, seed).await;
            prop_assert_eq!(
                &got,
                &expected,
                "step {} ({:?}) of {:?}, spool: {}",
                i,
                op,
                ops,
                spool
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn streamed_imports_behave_as_the_model_says(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops, false)?;
    }

    #[test]
    fn spooled_imports_behave_as_the_model_says(ops in prop::collection::vec(op(), 1..40)) {
        run(&ops, true)?;
    }
}
