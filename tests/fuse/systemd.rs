//! `--holder systemd`: the mount keeps its connection and state journal in
//! the service's file-descriptor store. This machine's PID 1 is not
//! systemd, so the test plays systemd's side of the protocol exactly as
//! deploy/systemd/dfcache-mount.service sets it up: a `$NOTIFY_SOCKET`
//! that takes `FDSTORE=1` datagrams with their descriptors, the unit's
//! `RestartKillSignal=SIGUSR2` for `systemctl restart` (and SIGKILL for a
//! crash), the stored descriptors passed back to the next start as
//! `LISTEN_FDS`/`LISTEN_FDNAMES`, and SIGTERM for `systemctl stop`.

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::common::*;
use crate::harness::*;

/// systemd's side: the notify socket and the store.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
    store: BTreeMap<String, OwnedFd>,
}

impl FakeSystemd {
    fn new(root: &Path) -> FakeSystemd {
        let path = root.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        FakeSystemd {
            socket,
            path,
            store: BTreeMap::new(),
        }
    }

    /// Takes datagrams (storing and removing descriptors as systemd does)
    /// until one says `until`; the messages seen.
    fn serve_until(&mut self, until: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let mut buf = vec![0u8; 4096];
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .unwrap_or_else(|e| panic!("no `{until}` from the mount: {e}; saw {seen:?}"));
            let mut fds: Vec<OwnedFd> = Vec::new();
            for cmsg in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel just gave this process these.
                    fds.extend(
                        raw.into_iter().map(|fd| unsafe {
                            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                        }),
                    );
                }
            }
            let len = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            let fields: BTreeMap<&str, &str> =
                text.lines().filter_map(|l| l.split_once('=')).collect();
            if let Some(name) = fields.get("FDNAME") {
                if fields.get("FDSTORE") == Some(&"1") {
                    assert_eq!(fds.len(), 1, "{text}");
                    self.store.insert(name.to_string(), fds.pop().unwrap());
                }
                if fields.get("FDSTOREREMOVE") == Some(&"1") {
                    self.store.remove(*name);
                }
            }
            let done = text.lines().any(|l| l == until) || text == until;
            seen.push(text);
            if done {
                return seen;
            }
        }
    }

    /// Starts `dfcache mount ARGS` as the service's main process, with
    /// what the store holds passed as LISTEN_FDS.
    fn start(&self, mnt: &Path, args: &[&str], log: &Path) -> Child {
        let mut names = Vec::new();
        let mut raw = Vec::new();
        for (name, fd) in &self.store {
            names.push(name.clone());
            // Numbers above 10 (CLOEXEC), moved to 3.. in the child.
            let high = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).unwrap();
            raw.push(high);
        }
        let mut command = Command::new("sh");
        command
            .args(["-c", r#"LISTEN_PID=$$ exec "$0" "$@""#, bin(), "mount"])
            .arg(mnt)
            .args(args)
            .env("NOTIFY_SOCKET", &self.path)
            .env("DFCACHE_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            ));
        if !raw.is_empty() {
            command
                .env("LISTEN_FDS", raw.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        let passed = raw.clone();
        // SAFETY: dup2 is async-signal-safe; it leaves the copies at
        // 3, 4, ... open across exec, as systemd passes them.
        unsafe {
            command.pre_exec(move || {
                for (i, fd) in passed.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        for fd in raw {
            // SAFETY: `fd` is the copy made above, owned by nobody else.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
        child
    }
}

/// The service's processes, ended (and the mount detached) also when the
/// test fails.
struct Service {
    mnt: PathBuf,
    children: Vec<Child>,
}

impl Drop for Service {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    sh_ok(&format!("kill -{sig} {}", child.id()));
}

fn exits_ok(child: &mut Child) {
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn the_systemd_store_keeps_the_mount_across_a_restart_and_a_crash_and_a_stop_unmounts() {
    let root = tempdir();
    let mut systemd = FakeSystemd::new(root.path());
    let mnt = root.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let store = root.path().join("store");
    let args = ["--embedded", store.to_str().unwrap(), "--holder", "systemd"];
    let log = root.path().join("service.log");
    let mut service = Service {
        mnt: mnt.clone(),
        children: Vec::new(),
    };

    // systemctl start: the mount stores its two descriptors, then READY=1.
    service.children.push(systemd.start(&mnt, &args, &log));
    systemd.serve_until("READY=1");
    assert_eq!(
        systemd.store.keys().collect::<Vec<_>>(),
        ["dfcache-fuse", "dfcache-state"]
    );
    let src = root.path().join("src.bin");
    write_file(&src, 20 * MIB + 7, 96);
    sh_ok(&format!("cp {} {}", q(&src), q(&mnt.join("import/f"))));
    let id = task_id_xattr(&mnt.join("import/f"));
    let code = r#"
import sys
data = open(sys.argv[2], 'rb').read()
f = open(sys.argv[1], 'rb', buffering=0)
n = 0
for step in ("restart", "crash"):
    chunk = f.read(len(data) // 3)
    assert chunk == data[n:n + len(chunk)], step
    n += len(chunk)
    print(step, flush=True)
    sys.stdin.readline()
rest = f.read()
assert data[n:] == rest, "the rest"
print("ok", flush=True)
"#;
    let mut reader = Python::start(code, &[&mnt.join("tasks").join(&id), &src]);

    // systemctl restart: RestartKillSignal=SIGUSR2, then a new start with
    // the store's descriptors.
    assert_eq!(reader.line(), "restart");
    signal(&service.children[0], "USR2");
    exits_ok(&mut service.children[0]);
    sh_ok("sync; echo 3 > /proc/sys/vm/drop_caches");
    service.children.push(systemd.start(&mnt, &args, &log));
    systemd.serve_until("READY=1");
    reader.send("go");

    // A crash (Restart=on-failure): SIGKILL, then a new start.
    assert_eq!(reader.line(), "crash");
    service.children[1].kill().unwrap();
    service.children[1].wait().unwrap();
    sh_ok("sync; echo 3 > /proc/sys/vm/drop_caches");
    service.children.push(systemd.start(&mnt, &args, &log));
    systemd.serve_until("READY=1");
    reader.send("go");
    assert_eq!(reader.line(), "ok");
    assert!(reader.finish().1);
    sh_ok(&format!(
        "cmp {} {}",
        q(&src),
        q(&mnt.join("tasks").join(&id))
    ));
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(said.matches("took the mount over").count(), 2, "{said}");
    assert!(
        said.contains("no takeover: systemd passed no mount"),
        "{said}"
    );

    // systemctl stop: SIGTERM unmounts, and the store is emptied.
    signal(&service.children[2], "TERM");
    let seen = systemd.serve_until("FDSTOREREMOVE=1\nFDNAME=dfcache-state");
    assert!(
        seen.iter()
            .any(|m| m.contains("FDSTOREREMOVE=1\nFDNAME=dfcache-fuse")),
        "{seen:?}"
    );
    exits_ok(&mut service.children[2]);
    assert!(systemd.store.is_empty());
    assert!(!is_mounted(&mnt));
}
