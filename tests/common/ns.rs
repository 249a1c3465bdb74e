//! A real mount-namespace split between a "host" (where a legacy daemon
//! runs) and a "container" (where dfcache runs), for path-mapping tests.
//!
//! `root/host` holds the files. In the container's namespace it is
//! bind-mounted at `root/container` and then hidden under an empty tmpfs,
//! so the container sees the files only under `root/container`. In the
//! daemon's namespace an empty tmpfs covers `root/container`, so the daemon
//! sees them only under `root/host`. Everything else (the socket, the
//! daemon's store) is shared. A namespace dies with its last process, so
//! its mounts vanish by themselves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::{bin, succeeded, Daemon};

/// Most a command run in the container may take before it is killed.
pub const COMMAND_DEADLINE_SECS: u32 = 60;

pub struct Split {
    pub root: PathBuf,
    /// The host's view of the shared volume (real directory, the files).
    pub host: PathBuf,
    /// The container's view of it (an empty directory outside namespaces).
    pub container: PathBuf,
}

impl Split {
    /// Creates `root/host` and `root/container`.
    pub fn new(root: &Path) -> Split {
        let host = root.join("host");
        let container = root.join("container");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::create_dir_all(&container).unwrap();
        Split {
            root: root.to_path_buf(),
            host,
            container,
        }
    }

    /// `C:H`, for `--path-mapping`.
    pub fn mapping(&self) -> String {
        format!("{}:{}", self.container.display(), self.host.display())
    }

    /// `container/rel` as a string (the container's path of `host/rel`).
    pub fn c(&self, rel: &str) -> String {
        self.container.join(rel).to_string_lossy().into_owned()
    }

    /// `host/rel` as a string.
    pub fn h(&self, rel: &str) -> String {
        self.host.join(rel).to_string_lossy().into_owned()
    }

    /// The wrapper for `Daemon::start_in`: a private mount namespace with an
    /// empty tmpfs over the container directory, then exec of the daemon.
    pub fn daemon_wrapper(&self) -> Vec<String> {
        unshare_then(&format!(
            "mount -t tmpfs none {}",
            sh_quote(&self.container)
        ))
    }

    /// A `dfcache serve` (with `extra` flags) in the host's namespace, on
    /// `root/d.sock` with its store in `root/store`.
    pub fn start_daemon(&self, extra: &[&str]) -> Daemon {
        let wrapper = self.daemon_wrapper();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let daemon = Daemon::start_in(&self.root, &wrapper, extra);
        // The split is real: an empty tmpfs covers container/ in the
        // daemon's namespace, and it sees host/ as we do.
        let pid = daemon.child.id();
        assert!(
            mounted_in(pid, &self.container, "tmpfs"),
            "no tmpfs over {} in the daemon's namespace",
            self.container.display()
        );
        assert_eq!(nsenter_ls(pid, &self.container), "");
        assert_eq!(nsenter_ls(pid, &self.host), ls(&self.host));
        daemon
    }

    /// `program args...` in a new container namespace, as a `Command` (not
    /// started). Killed after `COMMAND_DEADLINE_SECS` if still running.
    pub fn container_command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-s", "KILL", &COMMAND_DEADLINE_SECS.to_string()]);
        c.args(self.container_prefix());
        c.arg(program).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// The `unshare ... sh -c '...; exec "$0" "$@"'` prefix that enters a
    /// new container namespace and then execs what follows it.
    pub fn container_prefix(&self) -> Vec<String> {
        unshare_then(&format!(
            "mount --bind {h} {c} && mount -t tmpfs none {h}",
            h = sh_quote(&self.host),
            c = sh_quote(&self.container)
        ))
    }

    /// `sh -c script` in a new container namespace.
    pub fn sh(&self, script: &str) -> Output {
        self.container_command("sh", &["-c", script])
            .output()
            .expect("run sh in the container namespace")
    }

    /// `sh -c script` in a new container namespace; insists it succeeded
    /// and returns trimmed stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        succeeded(
            &self.sh(script),
            format_args!("in the container: `{script}`"),
        )
    }

    /// The CLI in a new container namespace, against `socket`.
    pub fn cli(&self, socket: &Path, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--no-progress");
        self.container_command(bin(), &all)
            .env("DFCACHE_ENDPOINT", socket)
            .env("DFCACHE_LOG_LEVEL", "warn")
            .output()
            .expect("run dfcache in the container namespace")
    }

    /// The CLI in the container; insists it succeeded, returns trimmed stdout.
    pub fn cli_ok(&self, socket: &Path, args: &[&str]) -> String {
        succeeded(
            &self.cli(socket, args),
            format_args!("in the container: dfcache {args:?}"),
        )
    }
}

/// Whether the mount namespace of process `pid` has a `fstype` mount at
/// `dir` (fstype matched as a prefix: "fuse" matches "fuse.dfcache").
pub fn mounted_in(pid: u32, dir: &Path, fstype: &str) -> bool {
    let target = dir.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string(format!("/proc/{pid}/mounts"))
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split(' ');
                let _ = f.next();
                f.next() == Some(target.as_str()) && f.next().is_some_and(|t| t.starts_with(fstype))
            })
        })
        .unwrap_or(false)
}

/// `ls -A dir` here.
pub fn ls(dir: &Path) -> String {
    let out = Command::new("ls").arg("-A").arg(dir).output().unwrap();
    succeeded(&out, format_args!("ls {}", dir.display()))
}

/// `ls -A dir` inside the mount namespace of process `pid`.
pub fn nsenter_ls(pid: u32, dir: &Path) -> String {
    let out = nsenter(pid, &format!("ls -A {}", sh_quote(dir)));
    succeeded(&out, format_args!("nsenter -t {pid} ls {}", dir.display()))
}

/// `sh -c script` inside the mount namespace of process `pid`, killed after
/// `COMMAND_DEADLINE_SECS`.
pub fn nsenter(pid: u32, script: &str) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", &COMMAND_DEADLINE_SECS.to_string()])
        .args(["nsenter", "-t", &pid.to_string(), "-m", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("run nsenter")
}

/// Like `nsenter`, insisting on success; returns trimmed stdout.
pub fn nsenter_ok(pid: u32, script: &str) -> String {
    succeeded(
        &nsenter(pid, script),
        format_args!("nsenter -t {pid}: `{script}`"),
    )
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Guard {
    pub child: Option<Child>,
}

impl Guard {
    pub fn new(child: Child) -> Guard {
        Guard { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process already stopped").id()
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, up to 10 s for it to exit, then SIGKILL.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        super::terminate(self.child.take()?)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command prefix: a new private mount namespace where `mounts` (a sh
/// command) runs and then the program after the prefix is exec'd.
pub fn unshare_then(mounts: &str) -> Vec<String> {
    let script = format!("{mounts} && exec \"$0\" \"$@\"");
    [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]
    .map(String::from)
    .to_vec()
}

/// `p` in single quotes for sh.
pub fn sh_quote(p: &Path) -> String {
    super::shell_quote(&p.to_string_lossy())
}
