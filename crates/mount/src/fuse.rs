//! The fuser adapter: translates kernel requests into `DfcacheFs` calls
//! and their results into replies. Nothing here waits on the daemon: each
//! request that may is answered from a task on the runtime, so the FUSE
//! request loop keeps serving other files while a piece is on its way.
//!
//! Every request passes the takeover gate first (`takeover::gate`): one
//! held back is left unanswered for the next process. A handle given by an
//! earlier process of the same mount is taken on from the inode the kernel
//! sends with it (`takeover::restore`).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno as FuseErrno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{debug, warn, Instrument};

use crate::attr::{Attr, Kind, SetAttr};
use crate::error::Errno;
use crate::filesystem::DfcacheFs;
use crate::handles::Opened;
use crate::passthrough::kernel::KernelPassthrough;
use crate::passthrough::{Decision, PassthroughMode};
use crate::takeover::connection::Negotiated;
use crate::takeover::gate::{Gate, Pass};

/// Task content never changes, but a task can be deleted or expire: the
/// kernel asks again after this long, so `stat` notices (the page cache is
/// kept across opens regardless: FOPEN_KEEP_CACHE).
const TASK_TTL: Duration = crate::filesystem::REVALIDATE_AFTER;
/// Directories and imports change: keep them briefly only.
const SHORT_TTL: Duration = Duration::from_secs(1);
/// Largest request the kernel sends (max_pages_limit = 256 pages).
pub const MAX_REQUEST: u32 = 1 << 20;

pub struct FuseAdapter {
    fs: Arc<DfcacheFs>,
    rt: Handle,
    /// Some when task opens may pass through to local files.
    passthrough: Option<Arc<KernelPassthrough>>,
    gate: Arc<Gate>,
    /// What FUSE_INIT settled, once it has (or as an earlier process of
    /// the mount recorded it).
    negotiated: Arc<OnceLock<Negotiated>>,
}

impl FuseAdapter {
    pub fn new(
        fs: Arc<DfcacheFs>,
        rt: Handle,
        passthrough: PassthroughMode,
        gate: Arc<Gate>,
    ) -> Self {
        let decision = Decision::at_start(passthrough, fs.local_source());
        Self {
            passthrough: KernelPassthrough::new(&decision, fs.state_log()).map(Arc::new),
            fs,
            rt,
            gate,
            negotiated: Arc::default(),
        }
    }

    /// The adapter of a process that took the mount over: FUSE_INIT was
    /// answered by an earlier one, which settled `negotiated`.
    pub fn adopted(
        fs: Arc<DfcacheFs>,
        rt: Handle,
        passthrough: PassthroughMode,
        gate: Arc<Gate>,
        negotiated: Negotiated,
    ) -> Self {
        let adapter = Self::new(fs, rt, passthrough, gate);
        if let Some(p) = &adapter.passthrough {
            p.granted(negotiated.passthrough);
        }
        let _ = adapter.negotiated.set(negotiated);
        adapter
    }

    /// What FUSE_INIT settled, once it has.
    pub fn negotiated(&self) -> Arc<OnceLock<Negotiated>> {
        self.negotiated.clone()
    }

    pub fn passthrough(&self) -> Option<Arc<KernelPassthrough>> {
        self.passthrough.clone()
    }

    /// Lets a request in, or leaves it unanswered (`reply` is forgotten:
    /// dropped, it would answer EIO) when the gate holds it back; the
    /// kernel resends it to the next process.
    fn admit<R>(&self, import: bool, reply: R) -> Option<(Pass, R)> {
        let pass = if import {
            self.gate.enter_import()
        } else {
            self.gate.enter()
        };
        match pass {
            Some(pass) => Some((pass, reply)),
            None => {
                debug!("request held back for the next process of this mount");
                std::mem::forget(reply);
                None
            }
        }
    }

    /// Runs `f` on the runtime with a handle on the file system, in a span
    /// naming the operation and its inode (the file system records the task
    /// id in it where there is one): what it logs, and the failure the
    /// reply logs, carry them. `pass` is held until `f` has answered.
    fn spawn<F, Fut>(&self, op: &'static str, ino: u64, pass: Pass, f: F)
    where
        F: FnOnce(Arc<DfcacheFs>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let span = tracing::info_span!("fuse", op, ino, task_id = tracing::field::Empty);
        let work = f(self.fs.clone());
        self.rt.spawn(
            dfcache_metrics::fuse_ops::observe(op, async move {
                work.await;
                drop(pass);
            })
            .instrument(span),
        );
    }
}

/// The errno a failed operation replies with. This is the one place a
/// failure is logged: a warning with its cause when the errno alone would
/// not explain it (the daemon failed, timed out, lacks an RPC), a debug
/// line for plain answers (ENOENT and the like).
fn errno(e: Errno) -> FuseErrno {
    dfcache_metrics::fuse_ops::replied_error(e.code());
    if e.is_failure() {
        warn!(errno = e.code(), error = %e, "operation failed");
    } else {
        debug!(errno = e.code(), error = %e, "operation answered an error");
    }
    FuseErrno::from_i32(e.code())
}

/// The kernel's caching flags for an opened file.
fn fopen_flags(opened: Opened) -> FopenFlags {
    let mut flags = FopenFlags::empty();
    if opened.keep_cache {
        flags |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if opened.direct_io {
        flags |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if opened.no_flush {
        flags |= FopenFlags::FOPEN_NOFLUSH;
    }
    flags
}

fn ttl_of(attr: &Attr) -> Duration {
    match attr.kind {
        Kind::File | Kind::Directory | Kind::Symlink if attr.immutable => TASK_TTL,
        // An import's size and mode change when it is committed.
        Kind::File | Kind::Symlink => Duration::ZERO,
        Kind::Directory => SHORT_TTL,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: if a.kind == Kind::Directory { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: MAX_REQUEST,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Directory => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

fn time_of(t: Option<TimeOrNow>) -> Option<SystemTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    })
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Ask for the largest requests; the kernel caps what it offers
        // (read-ahead is raised after mounting through sysfs).
        let _ = config.set_max_write(MAX_REQUEST);
        let _ = config.set_max_readahead(MAX_REQUEST);
        let _ = config.set_max_background(64);
        // O_TRUNC arrives with open() (instead of a separate truncate), so
        // reopening a finished import with O_TRUNC starts a new import.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC) {
            warn!(
                ?missing,
                "kernel lacks atomic O_TRUNC: overwriting a finished import will fail"
            );
        }
        if let (Some(passthrough), Some(source)) = (&self.passthrough, self.fs.local_source()) {
            passthrough.init(config, source);
        }
        let _ = self.negotiated.set(Negotiated {
            minor: config.kernel_abi().1,
            passthrough: self.passthrough.as_ref().is_some_and(|p| p.is_on()),
        });
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        let name = name.to_os_string();
        self.spawn("lookup", parent.0, pass, move |fs| async move {
            match fs.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&ttl_of(&attr), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        self.spawn("getattr", ino.0, pass, move |fs| async move {
            match fs.getattr(ino.0).await {
                Ok(attr) => reply.attr(&ttl_of(&attr), &file_attr(&attr)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_of(atime),
            mtime: time_of(mtime),
        };
        self.spawn("setattr", ino.0, pass, move |fs| async move {
            match fs.setattr(ino.0, change).await {
                Ok(attr) => reply.attr(&ttl_of(&attr), &file_attr(&attr)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let Some((_pass, reply)) = self.admit(false, reply) else {
            return;
        };
        // From the tree's manifest, already in memory: nothing waits.
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        self.spawn("opendir", ino.0, pass, move |fs| async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let Some((_pass, reply)) = self.admit(false, reply) else {
            return;
        };
        self.fs.releasedir(ino.0, fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        // From the snapshot taken at opendir: nothing here waits, unless
        // the directory was opened by an earlier process of the mount.
        match self.fs.dir_listing(fh.0) {
            Err(_) if self.fs.is_unknown_earlier_handle(fh.0) => {
                self.spawn("readdir", ino.0, pass, move |fs| async move {
                    match fs.adopt_listing(fh.0, ino.0).await {
                        Ok(entries) => reply_listing(&entries, offset, reply),
                        Err(e) => reply.error(errno(e)),
                    }
                });
            }
            Ok(entries) => reply_listing(&entries, offset, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let Some((pass, reply)) = self.admit(write, reply) else {
            return;
        };
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let passthrough = self.passthrough.clone().filter(|_| !write);
        self.spawn("open", ino.0, pass, move |fs| async move {
            match (fs.open(ino.0, write, truncate).await, passthrough) {
                (Ok(opened), Some(passthrough)) => {
                    let local = fs.local_file(opened.fh);
                    passthrough.reply_open(ino.0, opened.fh, fopen_flags(opened), local, reply)
                }
                (Ok(opened), None) => reply.opened(FileHandle(opened.fh), fopen_flags(opened)),
                (Err(e), _) => reply.error(errno(e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        self.spawn("read", ino.0, pass, move |fs| async move {
            if let Err(e) = adopt_if_earlier(&fs, fh.0, ino.0).await {
                return reply.error(errno(e));
            }
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let Some((pass, reply)) = self.admit(true, reply) else {
            return;
        };
        let name = name.to_os_string();
        let (uid, gid) = (req.uid(), req.gid());
        let exclusive = flags & libc::O_EXCL != 0;
        self.spawn("create", parent.0, pass, move |fs| async move {
            match fs
                .create(parent.0, &name, mode & !umask, exclusive, uid, gid)
                .await
            {
                Ok((attr, opened)) => reply.created(
                    &ttl_of(&attr),
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(opened.fh),
                    fopen_flags(opened),
                ),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        let data = data.to_vec();
        self.spawn("write", ino.0, pass, move |fs| async move {
            if let Err(e) = adopt_if_earlier(&fs, fh.0, ino.0).await {
                return reply.error(errno(e));
            }
            match fs.write(fh.0, offset, data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        self.spawn("flush", ino.0, pass, move |fs| async move {
            if let Err(e) = adopt_if_earlier(&fs, fh.0, ino.0).await {
                return reply.error(errno(e));
            }
            reply_empty(fs.flush(fh.0).await, reply)
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        if let Some(passthrough) = &self.passthrough {
            passthrough.release(fh.0);
        }
        self.spawn("release", ino.0, pass, move |fs| async move {
            reply_empty(fs.release(fh.0).await, reply)
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        self.spawn("fsync", ino.0, pass, move |fs| async move {
            if let Err(e) = adopt_if_earlier(&fs, fh.0, ino.0).await {
                return reply.error(errno(e));
            }
            reply_empty(fs.fsync(fh.0).await, reply)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        let name = name.to_os_string();
        self.spawn("unlink", parent.0, pass, move |fs| async move {
            reply_empty(fs.unlink(parent.0, &name).await, reply)
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            reply.error(FuseErrno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (name, newname) = (name.to_os_string(), newname.to_os_string());
        self.spawn("rename", parent.0, pass, move |fs| async move {
            match fs
                .rename(parent.0, &name, newparent.0, &newname, no_replace)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        let name = name.to_os_string();
        self.spawn("getxattr", ino.0, pass, move |fs| async move {
            xattr_reply(fs.getxattr(ino.0, &name).await, size, reply)
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        self.spawn("listxattr", ino.0, pass, move |fs| async move {
            xattr_reply(fs.listxattr(ino.0).await, size, reply)
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let Some((_pass, reply)) = self.admit(false, reply) else {
            return;
        };
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            s.free_blocks,
            s.free_blocks,
            s.files,
            s.free_files,
            s.block_size,
            255,
            s.block_size,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        let name = name.to_os_string();
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("mkdir", parent.0, pass, move |fs| async move {
            match fs.mkdir(parent.0, &name, mode & !umask, uid, gid).await {
                Ok(attr) => reply.entry(&ttl_of(&attr), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        let name = name.to_os_string();
        self.spawn("rmdir", parent.0, pass, move |fs| async move {
            reply_empty(fs.rmdir(parent.0, &name).await, reply)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let Some((pass, reply)) = self.admit(false, reply) else {
            return;
        };
        let (name, target) = (link_name.to_os_string(), target.to_path_buf());
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("symlink", parent.0, pass, move |fs| async move {
            match fs.symlink(parent.0, &name, &target, uid, gid).await {
                Ok(attr) => reply.entry(&ttl_of(&attr), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(FuseErrno::EPERM);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(FuseErrno::EPERM);
    }

    /// No xattr can be set (ACLs included): ENOTSUP makes `cp -p` and
    /// `rsync` fall back to chmod instead of failing.
    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(FuseErrno::from_i32(libc::ENOTSUP));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(FuseErrno::from_i32(libc::ENOTSUP));
    }
}

/// A handle an earlier process of this mount gave, which this one does
/// not know yet, is taken on from its inode.
async fn adopt_if_earlier(fs: &DfcacheFs, fh: u64, ino: u64) -> Result<(), Errno> {
    if fs.is_unknown_earlier_handle(fh) {
        fs.adopt_handle(fh, ino).await?;
    }
    Ok(())
}

fn reply_listing(entries: &[crate::handles::DirEntry], offset: u64, mut reply: ReplyDirectory) {
    for (i, e) in entries.iter().enumerate().skip(offset as usize) {
        if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
            break;
        }
    }
    reply.ok();
}

fn reply_empty(result: Result<(), Errno>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn xattr_reply(value: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
    match value {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(FuseErrno::ERANGE),
        Err(e) => reply.error(errno(e)),
    }
}
