//! A `dfcache mount` process and helpers to drive it with real programs:
//! the one mount harness, for mounts in the tests' own mount namespace and
//! for mounts in a namespace of their own (`start_in`, the legacy tests'
//! "container" of `common::ns`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::ns::{mounted_in, nsenter_ok};
use crate::common::{bin, succeeded, terminate, Daemon};

pub struct Mounted {
    pub child: Option<Child>,
    pub mnt: PathBuf,
    /// Where the mount's holder listens (`--holder-socket`), so a holder
    /// left by a crashed mount is found and ended with the test.
    pub holder_socket: PathBuf,
    /// The arguments it was started with, for `restart`.
    args: Vec<std::ffi::OsString>,
    wrapper: Vec<String>,
    /// A later process serves this mount point (`restart`): dropping this
    /// one leaves the holder and the mount alone.
    succeeded: bool,
    /// It has a holder process (the default `--holder process`).
    held: bool,
    /// Mounted in a private mount namespace (the child's): checked and
    /// driven through `nsenter`, and gone with the namespace.
    in_namespace: bool,
    /// Mounted by another user (a command prefix running as that user):
    /// without allow_other only that user can look inside.
    as_user: Vec<String>,
}

impl Mounted {
    /// `dfcache mount` of `root/mnt` on the daemon's socket.
    pub fn on(daemon: &Daemon, root: &Path, extra: &[&str]) -> Mounted {
        let mut args: Vec<String> = vec!["-e".into(), daemon.socket.to_string_lossy().into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start(root, &args)
    }

    /// `dfcache mount --embedded root/store root/mnt`.
    pub fn embedded(root: &Path, extra: &[&str]) -> Mounted {
        let mut args: Vec<String> = vec![
            "--embedded".into(),
            root.join("store").to_string_lossy().into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start(root, &args)
    }

    fn start(root: &Path, args: &[String]) -> Mounted {
        Self::start_at(&root.join("mnt"), args)
    }

    /// `dfcache mount mnt ARGS`.
    pub fn start_at(mnt: &Path, args: &[impl AsRef<std::ffi::OsStr>]) -> Mounted {
        Self::start_in(&[], mnt, args)
    }

    /// `dfcache mount mnt ARGS` run by `wrapper` (a command prefix that
    /// sets up a private mount namespace and execs the rest, such as
    /// `Split::container_prefix`); none: the tests' own namespace.
    pub fn start_in(
        wrapper: &[String],
        mnt: &Path,
        args: &[impl AsRef<std::ffi::OsStr>],
    ) -> Mounted {
        Self::spawn(wrapper, !wrapper.is_empty(), mnt, args, None)
    }

    /// `dfcache mount mnt ARGS` run by `as_user` (a command prefix that
    /// runs the rest as another user, such as `setpriv --reuid=...`), in
    /// the tests' own namespace; `mnt` must be that user's to mount on.
    pub fn start_as(
        as_user: &[String],
        mnt: &Path,
        args: &[impl AsRef<std::ffi::OsStr>],
    ) -> Mounted {
        Self::spawn(as_user, false, mnt, args, None)
    }

    /// `dfcache mount mnt ARGS` with its log (stderr) in `log`, appended.
    pub fn start_logged(mnt: &Path, args: &[impl AsRef<std::ffi::OsStr>], log: &Path) -> Mounted {
        Self::spawn(&[], false, mnt, args, Some(log))
    }

    /// The same mount started again at the same place, with the same
    /// arguments (and `extra`), as a restarted container or systemd's
    /// `Restart=` does; waits until it serves.
    pub fn restart(&mut self, extra: &[&str], log: Option<&Path>) -> Mounted {
        let mut args = self.args.clone();
        args.extend(extra.iter().map(std::ffi::OsString::from));
        self.succeeded = true;
        let mut next = Self::spawn(&self.wrapper, self.in_namespace, &self.mnt, &args, log);
        // Its own restart is with the arguments it was first started with.
        next.args = self.args.clone();
        next
    }

    /// Waits (`secs` at most) for the mount process to exit by itself (it
    /// handed over); its exit status.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("mount already stopped");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the mount") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "the mount process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(
        wrapper: &[String],
        in_namespace: bool,
        mnt: &Path,
        args: &[impl AsRef<std::ffi::OsStr>],
        log: Option<&Path>,
    ) -> Mounted {
        let mnt = mnt.to_path_buf();
        // Only the parent: a mount held for the next process answers
        // nothing until one serves it.
        std::fs::create_dir_all(mnt.parent().unwrap()).unwrap();
        let _ = std::fs::create_dir(&mnt);
        let args: Vec<std::ffi::OsString> =
            args.iter().map(|a| a.as_ref().to_os_string()).collect();
        let holder_socket = holder_socket_of(&mnt, &args);
        let stderr = match log {
            Some(log) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("open the mount's log"),
            ),
            None => Stdio::inherit(),
        };
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        // A holder process: the default, unless the arguments or the
        // environment choose another holder.
        let holder = match args.iter().position(|a| a == "--holder") {
            Some(i) => args.get(i + 1).map(|a| a.to_string_lossy().into_owned()),
            None => std::env::var("DFCACHE_HOLDER").ok(),
        };
        let held = holder.is_none_or(|h| h == "process");
        let own_holder = !args
            .iter()
            .any(|a| a == "--holder-socket" || a == "--holder");
        let level = match log {
            Some(_) => "info".to_string(),
            None => std::env::var("DFCACHE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        };
        let child = command
            .arg("mount")
            .arg(&mnt)
            .args(&args)
            .args(
                own_holder
                    .then(|| ["--holder-socket".as_ref(), holder_socket.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .env("DFCACHE_LOG_LEVEL", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn dfcache mount");
        let mut m = Mounted {
            child: Some(child),
            mnt,
            holder_socket,
            args,
            wrapper: wrapper.to_vec(),
            succeeded: false,
            held,
            in_namespace,
            as_user: if in_namespace {
                Vec::new()
            } else {
                wrapper.to_vec()
            },
        };
        m.wait_mounted();
        m
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // opendir of import/ is answered by the mount itself (tasks/
            // asks the daemon, which may not be up yet), and unlike a
            // lookup it is never answered from a dead mount's caches.
            if self.in_namespace {
                if mounted_in(self.pid(), &self.mnt, "fuse") {
                    self.sh_ok(&format!("test -d {}", q(&self.path("import"))));
                    return;
                }
            } else if is_mounted(&self.mnt) && self.import_dir_opens() && self.is_held() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("dfcache mount exited early: {status}");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} was not mounted", self.mnt.display());
    }

    /// Whether the mount's holder (if it has one) holds its connection: a
    /// crash before it does leaves nothing to take over.
    fn is_held(&self) -> bool {
        !self.held
            || holder_pids(&self.holder_socket).iter().any(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                    fds.flatten().any(|fd| {
                        std::fs::read_link(fd.path()).is_ok_and(|l| l == Path::new("/dev/fuse"))
                    })
                })
            })
    }

    /// Whether import/ opens, for the user who mounted.
    fn import_dir_opens(&self) -> bool {
        let import = self.mnt.join("import");
        match self.as_user.split_first() {
            None => std::fs::read_dir(import).is_ok(),
            Some((program, rest)) => Command::new(program)
                .args(rest)
                .arg("ls")
                .arg(import)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn import(&self, name: &str) -> PathBuf {
        self.mnt.join("import").join(name)
    }

    pub fn task(&self, id: &str) -> PathBuf {
        self.mnt.join("tasks").join(id)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mount already stopped").id()
    }

    /// `sh -c script` where the mount is (in its namespace, if it has
    /// one); insists it succeeded, returns trimmed stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        if self.in_namespace {
            nsenter_ok(self.pid(), script)
        } else {
            sh_ok(script)
        }
    }

    /// SIGKILL the mount process, as a crash or an OOM kill: its holder
    /// keeps the mount for the next process (programs using it wait).
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL the mount process and its holder: nothing is left to take
    /// over, and the mount stays, dead (ENOTCONN), as after a reboot of
    /// the holder or a mount with `--holder none`.
    pub fn crash_with_holder(&mut self) {
        self.crash();
        self.kill_holder();
    }

    /// SIGKILL of the holder of this mount, if one runs.
    pub fn kill_holder(&self) {
        for pid in holder_pids(&self.holder_socket) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            eventually_gone(pid);
        }
    }

    /// SIGTERM and wait: the clean way out.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        terminate(self.child.take()?)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.succeeded {
            // A process that handed over exits by itself; a SIGTERM would
            // unmount its successor's mount.
            if self.child.is_some() && !std::thread::panicking() {
                self.wait_exit(10);
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            return;
        }
        self.stop();
        // A crashed mount's holder would keep it (and its programs
        // waiting) for minutes.
        self.kill_holder();
        // A namespace's mounts vanish with it.
        if !self.in_namespace && is_mounted(&self.mnt) {
            // The process is gone but the mount is not: detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// The holder socket of a mount at `mnt` started with `args`: theirs, or
/// one beside the mount point, which its user may create.
fn holder_socket_of(mnt: &Path, args: &[std::ffi::OsString]) -> PathBuf {
    if let Some(i) = args.iter().position(|a| a == "--holder-socket") {
        if let Some(socket) = args.get(i + 1) {
            return PathBuf::from(socket);
        }
    }
    let mut name = mnt.file_name().unwrap_or_default().to_os_string();
    name.push(".holder.sock");
    mnt.with_file_name(name)
}

/// Processes running `dfcache mount-holder --socket SOCKET`.
pub fn holder_pids(socket: &Path) -> Vec<u32> {
    let want = socket.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&&b"mount-holder"[..]) && args.contains(&want)
        })
        .collect()
}

/// Waits (10 s at most) until process `pid` is gone, or a zombie (its
/// parent may be gone too, and nobody reaps it): its descriptors are
/// closed either way.
pub fn eventually_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            // "pid (comm) S ...": the state follows the last ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    };
    while Instant::now() < deadline && running() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether /proc/mounts lists `mnt`.
pub fn is_mounted(mnt: &Path) -> bool {
    let target = mnt.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(target.as_str()))
        })
        .unwrap_or(false)
}

/// Runs `sh -c script`; returns the output.
pub fn sh(script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .expect("run sh")
}

/// Runs `sh -c script` and insists it succeeded; returns trimmed stdout.
pub fn sh_ok(script: &str) -> String {
    succeeded(&sh(script), format_args!("`{script}`"))
}

/// The line of `ls -l tasks/` output naming task `id`; insists it shows
/// `len` bytes.
pub fn listed_task<'a>(listing: &'a str, id: &str, len: u64) -> &'a str {
    let line = listing
        .lines()
        .find(|l| l.ends_with(id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{listing}"));
    assert_eq!(
        line.split_whitespace().nth(4),
        Some(len.to_string().as_str()),
        "{line}"
    );
    line
}

/// Runs python3 with `code`, arguments after it; returns the output.
pub fn python(code: &str, args: &[&str]) -> Output {
    Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3")
}

pub fn task_id_xattr(path: &Path) -> String {
    sh_ok(&format!(
        "getfattr --only-values -n user.dfcache.task_id '{}'",
        path.display()
    ))
}

/// `p` quoted for `sh -c`.
pub fn q(p: &Path) -> String {
    crate::common::ns::sh_quote(p)
}

/// `cp` from a fifo (in `root`) into `import/big`, with 16 MiB written and
/// the rest pending: a copy in progress. Returns cp and the fifo's writer.
pub fn cp_in_progress(root: &Path, m: &Mounted) -> (Child, std::fs::File) {
    use std::io::Write;
    let fifo = root.join("fifo");
    let _ = std::fs::remove_file(&fifo);
    sh_ok(&format!("mkfifo {}", q(&fifo)));
    let cp = Command::new("cp")
        .arg(&fifo)
        .arg(m.import("big"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cp");
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open the fifo");
    writer
        .write_all(&vec![5u8; 16 << 20])
        .expect("write the fifo");
    (cp, writer)
}

/// python3 running `code` with `args`, driven a line at a time: the test
/// waits for what it prints, then tells it to go on. Killed when dropped.
pub struct Python {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Python {
    pub fn start(code: &str, args: &[&Path]) -> Python {
        Self::start_in(&[], code, args)
    }

    /// python3 run by `prefix` (a command that runs the rest, such as
    /// `unshare -m --propagation slave`).
    pub fn start_in(prefix: &[&str], code: &str, args: &[&Path]) -> Python {
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg("python3");
                c
            }
            None => Command::new("python3"),
        };
        let mut child = command
            .arg("-c")
            .arg(code)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3");
        let out = std::io::BufReader::new(child.stdout.take().expect("python's stdout"));
        Python { child, out }
    }

    /// The next line it prints, trimmed.
    pub fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read python's output");
        line.trim().to_string()
    }

    /// Sends `line` to its stdin.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("python's stdin");
        writeln!(stdin, "{line}").expect("write to python");
    }

    /// Everything else it prints, and whether it exited successfully.
    pub fn finish(mut self) -> (Vec<String>, bool) {
        use std::io::BufRead;
        let rest = (&mut self.out)
            .lines()
            .map(|l| l.expect("read python's output"));
        let rest = rest.collect();
        let ok = self.child.wait().is_ok_and(|s| s.success());
        (rest, ok)
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
