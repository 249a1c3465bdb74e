//! Users made for one test (`useradd`, removed on drop), commands run as
//! them (`setpriv`), and connections to a daemon made as them from inside
//! the test process.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use super::succeeded;

/// A user made for one test, deleted on drop. It is in no group but its
/// own.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    pub fn create() -> TestUser {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dfct{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(&format!(
            "useradd --no-create-home --user-group --shell /usr/sbin/nologin {name}"
        ));
        let id = |flag: &str| -> u32 {
            run_ok(&format!("id {flag} {name}"))
                .parse()
                .expect("a numeric id")
        };
        let (uid, gid) = (id("-u"), id("-g"));
        TestUser { name, uid, gid }
    }

    /// A command prefix that runs the rest as this user.
    pub fn prefix(&self) -> Vec<String> {
        as_ids(self.uid, self.gid)
    }

    /// `sh -c script` as this user.
    pub fn sh(&self, script: &str) -> Output {
        sh_as(&self.prefix(), script)
    }

    /// `sh -c script` as this user, which must succeed; trimmed stdout.
    pub fn ok(&self, script: &str) -> String {
        ok_as(&self.prefix(), script)
    }

    /// A directory this user owns (mode 0700), removed with the returned
    /// guard.
    pub fn own_dir(&self) -> tempfile::TempDir {
        let dir = super::tempdir();
        chown(dir.path(), self.uid, self.gid);
        dir
    }

    /// A connection to `socket` made as this user, groups cleared.
    pub fn connect(&self, socket: &Path) -> std::io::Result<UnixStream> {
        connect_as(socket, self.uid, self.gid, &[])
    }

    /// A gRPC channel to `socket` whose every connection is made as this
    /// user (see [`connect_as`]), with `groups` as its supplementary groups.
    pub fn channel(&self, socket: &Path, groups: &[u32]) -> tonic::transport::Channel {
        let (socket, uid, gid, groups) =
            (socket.to_path_buf(), self.uid, self.gid, groups.to_vec());
        tonic::transport::Endpoint::from_static("http://dfdaemon.sock")
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                let (socket, groups): (PathBuf, Vec<u32>) = (socket.clone(), groups.clone());
                async move {
                    let stream =
                        tokio::task::spawn_blocking(move || connect_as(&socket, uid, gid, &groups))
                            .await
                            .map_err(std::io::Error::other)??;
                    stream.set_nonblocking(true)?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::from_std(stream)?,
                    ))
                }
            }))
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// Connects to `socket` from a thread that first becomes `uid`:`gid` with
/// `groups` (the raw system calls, which change only the calling thread;
/// glibc's wrappers would change the whole test process). The daemon
/// reads the connecting thread's credentials (`SO_PEERCRED`,
/// `SO_PEERGROUPS`), so the connection is this user's; the thread ends
/// after the connect, and the test process stays root.
pub fn connect_as(
    socket: &Path,
    uid: u32,
    gid: u32,
    groups: &[u32],
) -> std::io::Result<UnixStream> {
    let (socket, groups) = (socket.to_path_buf(), groups.to_vec());
    std::thread::spawn(move || {
        let last = std::io::Error::last_os_error;
        // SAFETY: raw credential calls on this thread alone; the group
        // list outlives the call.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                return Err(last());
            }
        }
        UnixStream::connect(&socket)
    })
    .join()
    .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
}

pub fn as_ids(uid: u32, gid: u32) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
    ]
}

/// `sh -c script` as `prefix`'s user.
pub fn sh_as(prefix: &[String], script: &str) -> Output {
    Command::new(&prefix[0])
        .args(&prefix[1..])
        .args(["sh", "-c", script])
        .output()
        .expect("run sh as another user")
}

pub fn ok_as(prefix: &[String], script: &str) -> String {
    succeeded(
        &sh_as(prefix, script),
        format_args!("`{script}` as {prefix:?}"),
    )
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    run_ok(&format!(
        "chown -h {uid}:{gid} {}",
        super::ns::sh_quote(path)
    ));
}

fn run_ok(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("run sh");
    succeeded(&out, format_args!("`{script}`"))
}
