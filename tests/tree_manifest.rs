//! The tree manifest: one tree, one byte string; anything else refused
//! with a reason, whatever a hostile producer sends.

use dfcache_wire::tree::{Entry, Kind, Limits, Manifest, ManifestError};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn file(name: &str, size: u64) -> Entry {
    Entry {
        name: name.into(),
        mode: 0o644,
        kind: Kind::File {
            size,
            task_id: ID.into(),
        },
    }
}

fn dir(name: &str, entries: Vec<Entry>) -> Entry {
    Entry {
        name: name.into(),
        mode: 0o755,
        kind: Kind::Directory { entries },
    }
}

fn sample() -> Manifest {
    Manifest {
        entries: vec![
            file("tokenizer.json", 7),
            dir(
                "weights",
                vec![file("b.safetensors", 1 << 33), file("a.safetensors", 0)],
            ),
            Entry {
                name: "latest".into(),
                mode: 0o777,
                kind: Kind::Symlink {
                    target: "weights/a.safetensors".into(),
                },
            },
            file("config.json", 3),
        ],
    }
}

fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    Manifest::parse(bytes, &Limits::default())
}

#[test]
fn a_tree_has_one_canonical_form_whatever_order_it_is_listed_in() {
    let m = sample();
    let bytes = m.to_bytes();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.starts_with(
            r#"{"entries":[{"kind":"file","mode":420,"name":"config.json","size":3,"task_id":""#
        ),
        "{text}"
    );
    assert!(text.ends_with(r#"],"version":1}"#));
    let mut reversed = m.clone();
    reversed.entries.reverse();
    assert_eq!(reversed.to_bytes(), bytes);
    let parsed = parse(&bytes).unwrap();
    assert_eq!(parsed.to_bytes(), bytes);
    let files: Vec<String> = parsed.files().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        files,
        [
            "config.json",
            "tokenizer.json",
            "weights/a.safetensors",
            "weights/b.safetensors"
        ]
    );
}

#[test]
fn an_empty_tree_and_names_that_need_escapes_round_trip() {
    assert_eq!(
        parse(&Manifest::default().to_bytes()).unwrap(),
        Manifest::default()
    );
    let m = Manifest {
        entries: vec![file("quote\" back\\ tab\t é", 1)],
    };
    assert_eq!(parse(&m.to_bytes()).unwrap(), m);
}

/// The canonical bytes of `sample()` with `from` replaced by `to`.
fn tampered(from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(sample().to_bytes()).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    text.replacen(from, to, 1).into_bytes()
}

fn refused(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(m) => panic!("accepted: {m:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hostile_names_are_refused_with_the_reason() {
    for (name, reason) in [
        ("a/b", "contains /"),
        ("..", "is . or .."),
        (".", "is . or .."),
        ("", "is empty"),
        ("nul\\u0000", "contains NUL"),
    ] {
        let err = refused(&tampered("\"config.json\"", &format!("\"{name}\"")));
        assert!(err.contains(reason), "{name:?}: {err}");
    }
    let long = "x".repeat(256);
    assert!(
        refused(&tampered("\"config.json\"", &format!("\"{long}\""))).contains("longer than 255")
    );
}

#[test]
fn duplicate_or_unsorted_names_and_non_canonical_bytes_are_refused() {
    let dup = tampered("\"tokenizer.json\"", "\"config.json\"");
    assert!(refused(&dup).contains("appears twice"), "{}", refused(&dup));
    let unsorted = tampered("\"config.json\"", "\"zzz.json\"");
    assert_eq!(parse(&unsorted), Err(ManifestError::NotCanonical));
    let spaced = tampered("\"version\":1", "\"version\": 1");
    assert_eq!(parse(&spaced), Err(ManifestError::NotCanonical));
    let escaped = tampered("config.json", "config\\u002ejson");
    assert_eq!(parse(&escaped), Err(ManifestError::NotCanonical));
}

#[test]
fn absurd_sizes_modes_ids_kinds_and_versions_are_refused() {
    let cases = [
        (
            tampered("\"size\":3", "\"size\":18446744073709551615"),
            "size is not",
        ),
        (tampered("\"size\":3", "\"size\":-3"), "size is not"),
        (
            tampered("\"mode\":420", "\"mode\":4294967295"),
            "mode is not",
        ),
        (tampered(ID, "not-an-id"), "task_id is not"),
        (
            tampered("\"kind\":\"file\"", "\"kind\":\"fifo\""),
            "kind is not",
        ),
        (
            tampered("\"version\":1", "\"version\":2"),
            "version 2 is not supported",
        ),
        (
            tampered("\"target\":\"weights/a.safetensors\"", "\"target\":\"\""),
            "target is not",
        ),
        (
            tampered("\"size\":3,", "\"size\":3,\"extra\":1,"),
            "unknown field",
        ),
        (b"[1,2]".to_vec(), "not an object"),
        (b"{\"entries\":[".to_vec(), "not JSON"),
    ];
    for (bytes, reason) in cases {
        let err = refused(&bytes);
        assert!(err.contains(reason), "{reason}: {err}");
    }
}

#[test]
fn depth_entry_count_and_manifest_size_are_bounded() {
    let mut deep = file("leaf", 1);
    for i in 0..10 {
        deep = dir(&format!("d{i}"), vec![deep]);
    }
    let bytes = Manifest {
        entries: vec![deep],
    }
    .to_bytes();
    let tight = Limits {
        max_depth: 10,
        ..Limits::default()
    };
    assert_eq!(
        Manifest::parse(&bytes, &tight),
        Err(ManifestError::TooDeep(10))
    );
    assert!(Manifest::parse(
        &bytes,
        &Limits {
            max_depth: 11,
            ..tight
        }
    )
    .is_ok());

    let many = Manifest {
        entries: (0..100).map(|i| file(&format!("f{i:03}"), 1)).collect(),
    };
    let few = Limits {
        max_entries: 99,
        ..Limits::default()
    };
    assert_eq!(
        Manifest::parse(&many.to_bytes(), &few),
        Err(ManifestError::TooManyEntries(99))
    );

    let small = Limits {
        max_manifest_bytes: 100,
        ..Limits::default()
    };
    assert!(matches!(
        Manifest::parse(&many.to_bytes(), &small),
        Err(ManifestError::TooLarge(_, 100))
    ));
    // Nesting beyond what the parser follows is refused, not a stack overflow.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(refused(nested.as_bytes()).contains("not JSON"));
}
