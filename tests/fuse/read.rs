//! Reads of tasks/<id> by ordinary programs match the source bytes.

use crate::common::*;
use crate::harness::*;

#[test]
fn programs_read_the_source_bytes() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    let len = 37 * MIB + 12345;
    write_file(&src, len, 42);
    let id = daemon.ok(&[
        "import",
        "--stream-mode",
        "--piece-length",
        "4mib",
        src.to_str().unwrap(),
    ]);
    // Small cache and read-ahead: pieces are evicted and refetched.
    let m = Mounted::on(
        &daemon,
        root.path(),
        &["--cache-size", "16mib", "--read-ahead", "8mib"],
    );
    let t = m.task(&id);
    let (s, t) = (q(&src), q(&t));
    sh_ok(&format!("cat {t} | cmp - {s}"));
    let sum = |p: &str| sh_ok(&format!("sha256sum {p} | cut -d' ' -f1"));
    assert_eq!(sum(&t), sum(&s));
    for (bs, skip, count) in [
        ("4k", 1023, 2000),
        ("1M", 3, 9),
        ("7777", 41, 3000),
        ("1M", 36, 5),
    ] {
        let dd = |f: &str| {
            format!("dd if={f} bs={bs} skip={skip} count={count} status=none | sha256sum")
        };
        assert_eq!(
            sh_ok(&dd(&t)),
            sh_ok(&dd(&s)),
            "dd bs={bs} skip={skip} count={count}"
        );
    }
    for n in [1, 4095, 4 * MIB + 1, 20 * MIB] {
        assert_eq!(
            sh_ok(&format!("tail -c {n} {t} | sha256sum")),
            sh_ok(&format!("tail -c {n} {s} | sha256sum")),
            "tail -c {n}"
        );
    }
    let code = "import mmap, random, sys\nrandom.seed(5)\n\
                a = open(sys.argv[1], 'rb'); b = open(sys.argv[2], 'rb')\n\
                ma = mmap.mmap(a.fileno(), 0, access=mmap.ACCESS_READ)\nmb = mmap.mmap(b.fileno(), 0, access=mmap.ACCESS_READ)\n\
                assert len(ma) == len(mb), (len(ma), len(mb))\n\
                for _ in range(300):\n    o = random.randrange(len(ma)); n = random.randrange(1, 3000000)\n\
                    assert ma[o:o + n] == mb[o:o + n], (o, n)\nprint('ok')\n";
    let out = python(
        code,
        &[m.task(&id).to_str().unwrap(), src.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_and_malformed_ids_are_enoent() {
    let root = tempdir();
    let m = Mounted::embedded(root.path(), &[]);
    for name in ["0".repeat(64), "not-an-id".into(), "A".repeat(64)] {
        let err = std::fs::metadata(m.task(&name)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc_enoent()), "{name}");
    }
}

fn libc_enoent() -> i32 {
    2
}

#[test]
fn concurrent_random_reads_of_a_task_with_64_mib_pieces_match_the_source() {
    let root = tempdir();
    let daemon = Daemon::start(root.path());
    let src = root.path().join("src.bin");
    write_file(&src, 70 * MIB + 4321, 43);
    let id = daemon.ok(&[
        "import",
        "--stream-mode",
        "--piece-length",
        "64mib",
        src.to_str().unwrap(),
    ]);
    // A cache smaller than a piece: blocks come and go while 8 threads
    // read 4 KiB pages and odd ranges at random places, across blocks and
    // across the piece boundary at 64 MiB.
    let m = Mounted::on(
        &daemon,
        root.path(),
        &["--cache-size", "16mib", "--read-ahead", "8mib"],
    );
    let code = r#"
import os, random, sys, threading
a = os.open(sys.argv[1], os.O_RDONLY)
b = os.open(sys.argv[2], os.O_RDONLY)
size = os.fstat(b).st_size
errors = []
def reader(seed):
    rnd = random.Random(seed)
    for _ in range(400):
        o = rnd.randrange(size)
        n = rnd.choice([4096, 4096, 1, 70000, 1 << 20])
        if rnd.random() < 0.2:
            o = (64 << 20) - rnd.randrange(1, 8192)
        if os.pread(a, n, o) != os.pread(b, n, o):
            errors.append((o, n))
ts = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
for t in ts:
    t.start()
for t in ts:
    t.join()
assert not errors, errors[:5]
print("ok")
"#;
    let out = python(
        code,
        &[m.task(&id).to_str().unwrap(), src.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kernel_read_ahead_is_raised_where_sys_is_read_only() {
    // A privileged container's /sys is read-only: the mount raises the
    // read-ahead through a sysfs of its own instead.
    let root = tempdir();
    let wrapper = crate::common::ns::unshare_then("mount -o remount,bind,ro /sys");
    let store = root.path().join("store");
    let m = Mounted::start_in(
        &wrapper,
        &root.path().join("mnt"),
        &["--embedded", store.to_str().unwrap()],
    );
    let sys_options = m.sh_ok("awk '$5 == \"/sys\" { print $6 }' /proc/self/mountinfo");
    assert!(sys_options.starts_with("ro"), "/sys is {sys_options}");
    let dev = m.sh_ok(&format!("mountpoint -d {}", q(&m.mnt)));
    let kb = std::fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
    assert_eq!(kb.trim(), "1024");
}
