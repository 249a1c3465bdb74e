//! The mapping rules of docs/KUBERNETES.md's "Path mapping" section, one test each.

use std::path::{Path, PathBuf};

use super::*;

fn mapper(spec: &str) -> PathMapper {
    spec.parse().unwrap()
}

fn host(m: &PathMapper, p: &str) -> Result<PathBuf, MappingError> {
    m.to_host(Path::new(p))
}

#[test]
fn maps_by_prefix() {
    let m = mapper("/data:/var/lib/pods/x/data");
    assert_eq!(
        host(&m, "/data/a/b.bin").unwrap(),
        Path::new("/var/lib/pods/x/data/a/b.bin")
    );
    assert_eq!(
        host(&m, "/data").unwrap(),
        Path::new("/var/lib/pods/x/data")
    );
}

#[test]
fn longest_prefix_wins_whatever_the_order() {
    for spec in ["/data:/h1,/data/models:/h2", "/data/models:/h2,/data:/h1"] {
        let m = mapper(spec);
        assert_eq!(
            host(&m, "/data/models/m.bin").unwrap(),
            Path::new("/h2/m.bin"),
            "{spec}"
        );
        assert_eq!(
            host(&m, "/data/other").unwrap(),
            Path::new("/h1/other"),
            "{spec}"
        );
    }
}

#[test]
fn prefixes_match_whole_components_only() {
    let m = mapper("/data:/h");
    assert_eq!(
        host(&m, "/database/x"),
        Err(MappingError::Unmapped("/database/x".into()))
    );
    assert_eq!(host(&m, "/dat"), Err(MappingError::Unmapped("/dat".into())));
}

#[test]
fn dot_dot_cannot_escape_the_prefix() {
    let m = mapper("/data:/h");
    assert!(matches!(
        host(&m, "/data/../etc/passwd"),
        Err(MappingError::Escapes { .. })
    ));
    assert!(matches!(
        host(&m, "/data/a/../../etc"),
        Err(MappingError::Escapes { .. })
    ));
    // `..` that stays inside is fine.
    assert_eq!(host(&m, "/data/a/../b").unwrap(), Path::new("/h/b"));
    assert_eq!(host(&m, "/data/./a").unwrap(), Path::new("/h/a"));
}

#[test]
fn relative_paths_are_refused() {
    assert_eq!(
        host(&mapper("/data:/h"), "data/x"),
        Err(MappingError::RelativePath("data/x".into()))
    );
    assert_eq!(
        host(&PathMapper::default(), "x"),
        Err(MappingError::RelativePath("x".into()))
    );
}

#[test]
fn empty_mapper_is_identity() {
    let m = mapper("");
    assert!(m.is_empty());
    assert_eq!(host(&m, "/any/path").unwrap(), Path::new("/any/path"));
}

#[test]
fn reverse_mirrors_forward() {
    let m = mapper("/data:/host/data,/data/models:/mnt/models");
    for p in ["/data/a", "/data/models/m.bin", "/data"] {
        let h = host(&m, p).unwrap();
        assert_eq!(m.to_container(&h).unwrap(), Path::new(p));
    }
    assert!(matches!(
        m.to_container(Path::new("/host/data/../x")),
        Err(MappingError::Escapes { .. })
    ));
    assert!(matches!(
        m.to_container(Path::new("/elsewhere")),
        Err(MappingError::Unmapped(_))
    ));
}

#[test]
fn sides_are_normalised() {
    let m = mapper("/data/./x/:/h/y/../z");
    assert_eq!(host(&m, "/data/x/f").unwrap(), Path::new("/h/z/f"));
}

#[test]
fn parse_errors_name_the_entry() {
    let err = |s: &str| s.parse::<PathMapper>().unwrap_err();
    assert_eq!(err("/a:/b,,/c:/d"), MappingError::EmptyEntry { index: 2 });
    assert_eq!(err("/a:/b,"), MappingError::EmptyEntry { index: 2 });
    assert!(matches!(
        err("/a"),
        MappingError::MissingSeparator { index: 1, .. }
    ));
    assert!(matches!(
        err("a:/b"),
        MappingError::NotAbsolute {
            index: 1,
            side: "container",
            ..
        }
    ));
    assert!(matches!(
        err("/a:/b,/c:d"),
        MappingError::NotAbsolute {
            index: 2,
            side: "host",
            ..
        }
    ));
    assert!(matches!(
        err("/a:/b,/a/:/c"),
        MappingError::DuplicatePrefix {
            index: 2,
            first: 1,
            ..
        }
    ));
    let msg = err("/a:/b,/c:d").to_string();
    assert!(msg.contains("entry 2") && msg.contains("\"d\""), "{msg}");
}

#[test]
fn a_prefix_through_a_symlink_also_matches_its_real_path() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("run");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("var-run");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let real = std::fs::canonicalize(&real).unwrap();
    let link = std::fs::canonicalize(dir.path()).unwrap().join("var-run");

    let spec = format!("{}:/h", link.display());
    let literal_only = mapper(&spec);
    let resolved = mapper(&spec).with_real_container_prefixes();
    // What callers hand over: paths with their symlinks resolved.
    let file = real.join("sock/x");
    assert_eq!(
        literal_only.to_host(&file),
        Err(MappingError::Unmapped(file.clone()))
    );
    assert_eq!(resolved.to_host(&file).unwrap(), Path::new("/h/sock/x"));
    // The prefix as written still maps, and the reverse answers with it.
    assert_eq!(
        resolved.to_host(&link.join("y")).unwrap(),
        Path::new("/h/y")
    );
    assert_eq!(
        resolved.to_container(Path::new("/h/sock/x")).unwrap(),
        link.join("sock/x")
    );
    // `..` out of the real prefix is refused like out of the written one.
    assert!(matches!(
        resolved.to_host(&real.join("../etc")),
        Err(MappingError::Escapes { .. })
    ));
}

#[test]
fn an_explicit_prefix_wins_over_a_symlinked_one_that_resolves_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let real = base.join("data");
    std::fs::create_dir(&real).unwrap();
    let link = base.join("alias");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let m = mapper(&format!(
        "{}:/h-link,{}:/h-real",
        link.display(),
        real.display()
    ))
    .with_real_container_prefixes();
    assert_eq!(m.to_host(&real.join("f")).unwrap(), Path::new("/h-real/f"));
    assert_eq!(m.to_host(&link.join("f")).unwrap(), Path::new("/h-link/f"));
    // A prefix that does not exist maps as written only.
    let gone = mapper("/no/such/dir:/h").with_real_container_prefixes();
    assert_eq!(
        gone.to_host(Path::new("/no/such/dir/f")).unwrap(),
        Path::new("/h/f")
    );
}
