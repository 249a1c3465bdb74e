//! Carrying out a file-system operation with a caller's rights.
//!
//! The kernel keeps credentials per thread. The C library turns most
//! identity calls into process-wide ones (it has every thread repeat
//! them, as POSIX asks), but not `setfsuid`/`setfsgid`, and the raw
//! `setgroups` system call changes only the thread that makes it. So an
//! operation for a caller runs on a thread made for it: the thread takes
//! the caller's file-system uid and gid and supplementary groups, drops
//! every effective capability, does the work and exits. The identity ends
//! with the thread; no other work of the daemon ever runs under it.
//!
//! Every permission check the kernel makes on the way (each directory
//! searched, each symlink followed, the file opened or created, the
//! directory written) is then the caller's, made at the moment of the
//! call: nothing is checked first and used later, so a path swapped for a
//! symlink in between has no check to race.

use std::io;

use tokio::sync::Semaphore;

use super::Caller;

/// Threads acting for callers at once; more operations wait for one to
/// end. An open can hang (a dead NFS server) and every call would add a
/// thread; the runtime's own blocking pool is bounded the same way.
const MAX_ACTING_THREADS: usize = 64;
static ACTING_THREADS: Semaphore = Semaphore::const_new(MAX_ACTING_THREADS);

/// With whose rights a caller's path operations are carried out.
#[derive(Debug, Clone)]
pub enum Acting {
    /// The daemon's own: for root (who has them anyway) and for the
    /// daemon's own uid (whose they are).
    AsDaemon,
    /// The caller's, on a thread of their own.
    AsCaller(Caller),
}

/// Why an operation could not be carried out with a caller's rights.
#[derive(Debug, thiserror::Error)]
pub enum ActingError {
    /// The daemon cannot take on that identity (it does not run as root).
    #[error("the daemon (uid {daemon_uid}) cannot act with the rights of uid {uid}: {source}")]
    CannotAssume {
        uid: u32,
        daemon_uid: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot start a thread to act as uid {uid}: {source}")]
    Thread {
        uid: u32,
        #[source]
        source: io::Error,
    },
    /// The operation's thread ended without an answer (it panicked).
    #[error("an operation for uid {uid} ended without an answer")]
    Lost { uid: u32 },
}

impl Acting {
    pub fn for_caller(caller: &Caller) -> Acting {
        if caller.uid == 0 || caller.uid == daemon_uid() {
            Acting::AsDaemon
        } else {
            Acting::AsCaller(caller.clone())
        }
    }

    pub fn is_daemon(&self) -> bool {
        matches!(self, Acting::AsDaemon)
    }

    /// The uid whose rights apply, for messages; the daemon's own for
    /// [`Acting::AsDaemon`].
    pub fn uid(&self) -> u32 {
        match self {
            Acting::AsDaemon => daemon_uid(),
            Acting::AsCaller(caller) => caller.uid,
        }
    }

    /// Runs `op` with these rights, off the async runtime's threads.
    pub async fn run<T, F>(&self, op: F) -> Result<T, ActingError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Acting::AsDaemon => tokio::task::spawn_blocking(op)
                .await
                .map_err(|_| ActingError::Lost { uid: daemon_uid() }),
            Acting::AsCaller(caller) => {
                let uid = caller.uid;
                let permit = ACTING_THREADS
                    .acquire()
                    .await
                    .map_err(|_| ActingError::Lost { uid })?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                spawn_as(
                    caller.clone(),
                    move |result| {
                        drop(permit);
                        let _ = tx.send(result);
                    },
                    op,
                )?;
                rx.await.map_err(|_| ActingError::Lost { uid })?
            }
        }
    }

    /// Runs `op` with these rights and waits for it: for clean-ups in
    /// `Drop`, which cannot wait asynchronously (nor for a thread slot:
    /// they are single unlinks, which do not hang).
    pub fn run_blocking<T, F>(&self, op: F) -> Result<T, ActingError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Acting::AsDaemon => Ok(op()),
            Acting::AsCaller(caller) => {
                let uid = caller.uid;
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                spawn_as(
                    caller.clone(),
                    move |result| {
                        let _ = tx.send(result);
                    },
                    op,
                )?;
                rx.recv().map_err(|_| ActingError::Lost { uid })?
            }
        }
    }
}

/// Runs `op` on a new thread that has taken on `caller`'s identity, and
/// hands its result (or why the identity could not be taken) to `done`.
fn spawn_as<T, F>(
    caller: Caller,
    done: impl FnOnce(Result<T, ActingError>) + Send + 'static,
    op: F,
) -> Result<(), ActingError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let uid = caller.uid;
    std::thread::Builder::new()
        .name("dfcache-as-caller".into())
        .spawn(move || {
            let result =
                assume(&caller)
                    .map(|()| op())
                    .map_err(|source| ActingError::CannotAssume {
                        uid: caller.uid,
                        daemon_uid: daemon_uid(),
                        source,
                    });
            done(result);
        })
        .map(drop)
        .map_err(|source| ActingError::Thread { uid, source })
}

fn daemon_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Gives the calling thread, and it alone, `caller`'s file-system
/// identity, and no capabilities in effect.
fn assume(caller: &Caller) -> io::Result<()> {
    let groups: Vec<libc::gid_t> = caller.groups.to_vec();
    // The system call, not glibc's setgroups(), which would change the
    // groups of every thread in the daemon.
    // SAFETY: the count and pointer describe `groups`, alive for the call.
    if unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Groups and gid before the uid, as every privilege drop orders them.
    set_checked(libc::setfsgid, caller.gid)?;
    set_checked(libc::setfsuid, caller.uid)?;
    drop_effective_capabilities()
}

/// `setfsuid` and `setfsgid` report no error: they return the previous id
/// either way. Asked again for an id no one has (-1), they change nothing
/// and return the id in effect, which says whether the first call took.
fn set_checked(set: unsafe extern "C" fn(u32) -> libc::c_int, id: u32) -> io::Result<()> {
    // SAFETY: both calls change only this thread's credentials.
    let now = unsafe {
        set(id);
        set(u32::MAX)
    };
    if now as u32 == id {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
}

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two of them.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// A uid other than root already clears the file-system capabilities
/// (CAP_DAC_OVERRIDE and the like); the rest would still make the thread
/// more than the caller (CAP_SYS_RESOURCE writes past quotas and into the
/// blocks ext4 reserves for root). Permitted ones stay: the thread ends
/// after one operation anyway.
fn drop_effective_capabilities() -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0, // this thread
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 reads and writes exactly two data structs.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for d in &mut data {
        d.effective = 0;
    }
    // SAFETY: as above; capset with pid 0 changes this thread only.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
