//! podman as the container runtime: its settings for this machine, an
//! image made from the binary under test, and pods played from manifests,
//! removed when dropped (also when a test fails).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::succeeded;

/// Bound on any one podman command (an image import, a pod start).
const PODMAN_TIMEOUT: &str = "120";

/// podman with a containers.conf of its own (../shared/LIMITS.md): rlimits
/// this machine allows, and runc (crun refuses hybrid cgroups). Nothing
/// under /etc is changed.
pub struct Podman {
    conf: PathBuf,
}

impl Podman {
    /// Why podman cannot run here, if it cannot.
    pub fn unavailable() -> Option<String> {
        for program in ["podman", "runc"] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {program}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                return Some(format!("{program} is not installed"));
            }
        }
        None
    }

    pub fn new(dir: &Path) -> Podman {
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\n\
             default_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
             [engine]\n\
             runtime = \"runc\"\n",
        )
        .unwrap();
        Podman { conf }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.arg(PODMAN_TIMEOUT)
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run podman")
    }

    /// Runs podman, which must succeed; trimmed stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(&self.run(args), format_args!("podman {args:?}"))
    }

    /// `podman exec CONTAINER ARGS...`.
    pub fn exec(&self, container: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", container];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// A container's log so far (stdout and stderr).
    pub fn logs(&self, container: &str) -> String {
        let out = self.run(&["logs", container]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Polls `container`'s log until a line satisfies `want`; that line.
    pub fn wait_log_line(&self, container: &str, secs: u64, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.logs(container);
            if let Some(line) = log.lines().find(|l| want(l)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{container} logged no expected line in {secs} s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `podman wait`: the container's exit code, once it exits.
    pub fn wait_exit(&self, container: &str) -> i32 {
        self.ok(&["wait", container])
            .parse()
            .unwrap_or_else(|e| panic!("podman wait {container}: {e}"))
    }

    /// The container's state (`running`, `exited`, ...).
    pub fn state(&self, container: &str) -> String {
        self.ok(&["inspect", "-f", "{{.State.Status}}", container])
    }
}

/// An image with the binary under test, the libraries `ldd` names,
/// busybox (a shell and coreutils for commands and probes) and
/// fusermount3 (the preStop hook's); removed when dropped.
pub struct Image<'a> {
    podman: &'a Podman,
    pub name: String,
}

impl<'a> Image<'a> {
    pub fn build(podman: &'a Podman, dir: &Path, binary: &Path) -> Image<'a> {
        let rootfs = dir.join("rootfs");
        for d in [
            "bin",
            "usr/local/bin",
            "usr/bin",
            "etc",
            "tmp",
            "proc",
            "sys",
            "dev",
            "mnt",
        ] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        install(binary, &rootfs.join("usr/local/bin/dfcache"));
        // The debug build's symbols are most of its size: a smaller image
        // imports faster. Best effort: binutils may be missing.
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(rootfs.join("usr/local/bin/dfcache"))
            .status();
        install(
            Path::new("/usr/bin/fusermount3"),
            &rootfs.join("usr/bin/fusermount3"),
        );
        std::fs::set_permissions(
            rootfs.join("usr/bin/fusermount3"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        let busybox = Command::new("sh")
            .arg("-c")
            .arg("command -v busybox")
            .output()
            .unwrap();
        let busybox = succeeded(&busybox, "finding busybox");
        install(Path::new(&busybox), &rootfs.join("bin/busybox"));
        let applets = Command::new(&busybox).arg("--list").output().unwrap();
        for applet in succeeded(&applets, "busybox --list").lines() {
            let link = rootfs.join("bin").join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link).unwrap();
            }
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        // fusermount3 reads the mount table there, as on Debian.
        std::os::unix::fs::symlink("/proc/self/mounts", rootfs.join("etc/mtab")).unwrap();
        let tar = dir.join("rootfs.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap();
        succeeded(&out, "tar of the image's rootfs");
        let name = format!("localhost/dfcache-kube-test:{}", std::process::id());
        podman.ok(&[
            "import",
            "--quiet",
            "--change",
            "ENV PATH=/usr/local/bin:/usr/bin:/bin",
            tar.to_str().unwrap(),
            &name,
        ]);
        Image { podman, name }
    }
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run(&["rmi", "--force", &self.name]);
    }
}

/// Copies `program` to `to`, with every library `ldd` names at its path.
fn install(program: &Path, to: &Path) {
    std::fs::copy(program, to).unwrap_or_else(|e| panic!("copy {}: {e}", program.display()));
    let rootfs = to
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "rootfs"))
        .expect("a path in the rootfs");
    let ldd = Command::new("ldd").arg(program).output().unwrap();
    // A static program: "not a dynamic executable", exit 1.
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dest = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        if !dest.exists() {
            // The library itself, not the symlink the loader names.
            let real = std::fs::canonicalize(lib).unwrap();
            std::fs::copy(real, &dest).unwrap();
        }
    }
}

/// A manifest played with `podman kube play`, taken down when dropped.
pub struct Played<'a> {
    podman: &'a Podman,
    file: PathBuf,
    pub pod: String,
}

impl<'a> Played<'a> {
    /// Plays `yaml` (written to `file`); `start`: start its containers.
    pub fn play(podman: &'a Podman, file: &Path, yaml: &str, pod: &str, start: bool) -> Self {
        std::fs::write(file, yaml).unwrap();
        let played = Played {
            podman,
            file: file.to_path_buf(),
            pod: pod.to_string(),
        };
        let start = format!("--start={start}");
        podman.ok(&["kube", "play", &start, file.to_str().unwrap()]);
        played
    }

    /// The container `name` of the pod, as podman names it.
    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.pod)
    }

    /// `podman kube down`, checked. The pod is stopped first with a short
    /// grace: a `sh -c '... && sleep infinity'` container ignores SIGTERM
    /// (it is its pid 1) and would hold the default 10 s.
    pub fn down(mut self) {
        self.podman.ok(&["pod", "stop", "--time", "2", &self.pod]);
        let file = std::mem::take(&mut self.file);
        self.podman.ok(&["kube", "down", file.to_str().unwrap()]);
    }
}

impl Drop for Played<'_> {
    fn drop(&mut self) {
        if !self.file.as_os_str().is_empty() {
            let _ = self
                .podman
                .run(&["kube", "down", self.file.to_str().unwrap()]);
        }
        let _ = self.podman.run(&["pod", "rm", "--force", &self.pod]);
    }
}
