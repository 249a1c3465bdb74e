//! A task larger than `--drop-behind-above` does not stay in the kernel's
//! page cache behind a sequential reader; a smaller one keeps every page.
//!
//! What is asserted is what dfcache does, not what the kernel does under
//! memory pressure. dfcache exposes no count of the drops it sends (no
//! metric; the mount logs only a drop that failed), and the kernel may
//! reclaim any clean page-cache page whenever memory runs short (another
//! job writing 3 GB is enough to take a few pages of the small task). So
//! the reader here is `mlock` of a mapping of the task: it reads the pages
//! through the mount like any reader (the mount sees FUSE reads, front to
//! back or at random) and locks them in memory. Reclaim never takes a
//! locked page; an invalidation from the mount, which is how drop-behind
//! drops, does (the first mount below shows it). So a locked page missing
//! was dropped by dfcache, and every locked page present means dfcache's
//! drop-behind dropped none of them, however busy the machine.

use std::path::Path;

use crate::common::*;
use crate::harness::*;

/// A read-only shared mapping of a whole file, with the ranges read into
/// it locked in memory (and so in the page cache) until it is dropped.
struct Locked {
    addr: *mut libc::c_void,
    len: usize,
}

impl Locked {
    /// Maps `path` with `advice` (MADV_SEQUENTIAL, MADV_RANDOM: the
    /// kernel's read-ahead for the faults) and locks each of `ranges`
    /// (offset, length, page-aligned) in turn: the kernel reads them
    /// through the mount, in that order.
    fn read(path: &Path, advice: libc::c_int, ranges: &[(u64, u64)]) -> Locked {
        let file = std::fs::File::open(path).expect("open the task");
        let len = file.metadata().expect("stat the task").len() as usize;
        // SAFETY: a new mapping of an open descriptor; the kernel picks
        // the address. The mapping keeps the file open once `file` closes.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(
            addr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let locked = Locked { addr, len };
        // SAFETY: advice and locks on ranges of the mapping just made.
        assert_eq!(unsafe { libc::madvise(addr, len, advice) }, 0, "madvise");
        for &(offset, n) in ranges {
            assert!(offset + n <= len as u64, "range {offset}+{n} of {len}");
            let rc = unsafe { libc::mlock(locked.at(offset), n as usize) };
            let err = std::io::Error::last_os_error();
            assert_eq!(rc, 0, "mlock of {offset}+{n}: {err}");
        }
        locked
    }

    fn at(&self, offset: u64) -> *mut libc::c_void {
        // SAFETY: callers keep `offset` within the mapping.
        unsafe { self.addr.cast::<u8>().add(offset as usize).cast() }
    }

    /// Bytes of `offset..offset + len` in the kernel's page cache.
    fn resident(&self, offset: u64, len: u64) -> u64 {
        // SAFETY: sysconf only reads a constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        let mut pages = vec![0u8; len.div_ceil(page) as usize];
        // SAFETY: a range of the mapping, and one byte per page in `pages`.
        let rc = unsafe { libc::mincore(self.at(offset), len as usize, pages.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        pages.iter().filter(|p| *p & 1 != 0).count() as u64 * page
    }

    /// The mapped bytes: read from memory, where every page is locked.
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is readable and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.addr.cast::<u8>(), self.len) }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `read`, unmapped once (this unlocks it).
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

#[test]
fn a_big_task_read_front_to_back_leaves_only_its_tail_in_the_page_cache_and_a_small_one_stays() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    let len = 64 * MIB;
    write_file(&src, len, 71);
    let id = daemon.ok(&["import", "--stream-mode", src.to_str().unwrap()]);
    let content = std::fs::read(&src).unwrap();
    let whole = [(0, len)];

    // Bound 16 MiB: a quarter of it (4 MiB) is kept behind the reader.
    let m = Mounted::on(&daemon, root.path(), &["--drop-behind-above", "16mib"]);
    let task = m.task(&id);
    let locked = Locked::read(&task, libc::MADV_SEQUENTIAL, &whole);
    // Drops are sent after the reads they follow: poll for them. Locked
    // pages: what is gone, dfcache dropped.
    eventually(
        "the page cache drops what the reader left behind, locked pages too",
        10,
        || locked.resident(0, len) <= 8 * MIB,
    );
    drop(locked);
    let sum = |p: &Path| sh_ok(&format!("dd if={} bs=1M status=none | sha256sum", q(p)));
    assert_eq!(sum(&task), sum(&src));
    drop(m);

    // Bound 128 MiB: the same reader, the same task, now under the bound.
    let m = Mounted::on(&daemon, root.path(), &["--drop-behind-above", "128mib"]);
    let locked = Locked::read(&m.task(&id), libc::MADV_SEQUENTIAL, &whole);
    assert!(locked.bytes() == &content[..], "the task's bytes differ");
    assert_eq!(
        locked.resident(0, len),
        len,
        "dfcache's drop-behind dropped pages of a task under the bound"
    );
    drop(locked);
    drop(m);

    // A random reader of the big task drops nothing: each MiB it read is
    // still there.
    let m = Mounted::on(&daemon, root.path(), &["--drop-behind-above", "16mib"]);
    let ranges: Vec<(u64, u64)> = [40, 3, 57, 11, 29].iter().map(|o| (o * MIB, MIB)).collect();
    let locked = Locked::read(&m.task(&id), libc::MADV_RANDOM, &ranges);
    for &(offset, n) in &ranges {
        assert_eq!(
            locked.resident(offset, n),
            n,
            "dfcache's drop-behind dropped pages of a random read at {offset}"
        );
        let at = offset as usize..(offset + n) as usize;
        assert!(
            locked.bytes()[at.clone()] == content[at],
            "bytes at {offset} differ"
        );
    }
    drop(locked);
    drop(m);
}
