//! The tree manifest, version 1: canonical JSON, so the same tree always
//! gives the same bytes, and so the same task id.
//!
//! ```text
//! {"entries":[ENTRY,...],"version":1}
//! file:      {"kind":"file","mode":420,"name":"config.json","size":1234,"task_id":"<64 hex>"}
//! directory: {"entries":[ENTRY,...],"kind":"directory","mode":493,"name":"sub"}
//! symlink:   {"kind":"symlink","mode":511,"name":"latest","target":"sub/config.json"}
//! ```
//!
//! Canonical means: no whitespace; object keys in byte order (as above);
//! entries sorted by name (bytes of UTF-8); integers in decimal; strings
//! escaped only where JSON requires (`"`, `\`, control characters, as
//! `\b \f \n \r \t` or `\u00XX` in lowercase hex). A manifest whose bytes
//! are not exactly the canonical form of what they say is refused: two
//! manifests of one tree cannot differ.
//!
//! Names are UTF-8, 1 to 255 bytes, without `/` or NUL, not `.` or `..`,
//! unique in their directory. Modes are permission bits only (`0o7777`).
//! Bounds (`Limits`) cap depth, entries and sizes, so a hostile manifest
//! costs nothing to refuse.

use serde_json::{Map, Value};

use crate::domain::task_id::is_task_id;

pub const VERSION: u64 = 1;

/// What a manifest may hold at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nesting of directories (a file at the top is depth 1).
    pub max_depth: usize,
    /// Entries in the whole tree.
    pub max_entries: usize,
    /// Bytes of one file (1 PiB: beyond any real file, within u64 sums).
    pub max_file_size: u64,
    /// Bytes of the manifest itself.
    pub max_manifest_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_entries: 1_000_000,
            max_file_size: 1 << 50,
            max_manifest_bytes: 256 << 20,
        }
    }
}

pub const MAX_NAME_BYTES: usize = 255;
pub const MAX_TARGET_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File { size: u64, task_id: String },
    Directory { entries: Vec<Entry> },
    Symlink { target: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub kind: Kind,
}

/// A whole tree: the entries of its top directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the manifest is {0} bytes, more than the {1} allowed")]
    TooLarge(usize, usize),
    #[error("the manifest is not JSON: {0}")]
    NotJson(String),
    #[error("manifest version {0} is not supported (this dfcache reads version {VERSION})")]
    Version(String),
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
    #[error("the manifest is not in its canonical form (whitespace, key order, entry order or escapes differ)")]
    NotCanonical,
    #[error("the tree is deeper than {0} directories")]
    TooDeep(usize),
    #[error("the tree has more than {0} entries")]
    TooManyEntries(usize),
}

impl Manifest {
    /// The canonical bytes (entries are sorted here; names must be valid,
    /// as `check` would find them, for the result to parse back).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut top = Map::new();
        top.insert("entries".into(), entries_value(&self.entries));
        top.insert("version".into(), Value::from(VERSION));
        // A Map is ordered by key, and serde_json writes compact JSON with
        // only the escapes JSON requires: the canonical form.
        serde_json::to_vec(&Value::Object(top)).unwrap_or_default()
    }

    /// Parses and checks a manifest; anything but a canonical, valid one
    /// within `limits` is refused.
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Manifest, ManifestError> {
        if bytes.len() > limits.max_manifest_bytes {
            return Err(ManifestError::TooLarge(
                bytes.len(),
                limits.max_manifest_bytes,
            ));
        }
        // serde_json refuses nesting beyond 128 levels itself, before any
        // deep recursion here.
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
        let top = value
            .as_object()
            .ok_or_else(|| invalid("", "not an object"))?;
        match top.get("version") {
            Some(v) if v.as_u64() == Some(VERSION) => {}
            Some(v) => return Err(ManifestError::Version(v.to_string())),
            None => return Err(invalid("", "no version")),
        }
        only_keys(top, &["entries", "version"], "")?;
        let mut count = 0;
        let entries = parse_entries(top.get("entries"), "", 1, limits, &mut count)?;
        let manifest = Manifest { entries };
        if manifest.to_bytes() != bytes {
            return Err(ManifestError::NotCanonical);
        }
        Ok(manifest)
    }

    /// Every file of the tree, with its path from the top (`a/b/c`).
    pub fn files(&self) -> Vec<(String, &Entry)> {
        let mut out = vec![];
        walk(&self.entries, "", &mut |path, e| {
            if matches!(e.kind, Kind::File { .. }) {
                out.push((path.to_string(), e));
            }
        });
        out
    }
}

fn walk<'a>(entries: &'a [Entry], prefix: &str, f: &mut impl FnMut(&str, &'a Entry)) {
    for e in entries {
        let path = join(prefix, &e.name);
        f(&path, e);
        if let Kind::Directory { entries } = &e.kind {
            walk(entries, &path, f);
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

fn entries_value(entries: &[Entry]) -> Value {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Value::Array(sorted.into_iter().map(entry_value).collect())
}

fn entry_value(e: &Entry) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::from(e.name.clone()));
    m.insert("mode".into(), Value::from(e.mode));
    match &e.kind {
        Kind::File { size, task_id } => {
            m.insert("kind".into(), "file".into());
            m.insert("size".into(), Value::from(*size));
            m.insert("task_id".into(), Value::from(task_id.clone()));
        }
        Kind::Directory { entries } => {
            m.insert("kind".into(), "directory".into());
            m.insert("entries".into(), entries_value(entries));
        }
        Kind::Symlink { target } => {
            m.insert("kind".into(), "symlink".into());
            m.insert("target".into(), Value::from(target.clone()));
        }
    }
    Value::Object(m)
}

fn invalid(path: &str, problem: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        problem: problem.into(),
    }
}

fn only_keys(m: &Map<String, Value>, allowed: &[&str], path: &str) -> Result<(), ManifestError> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(invalid(path, format!("unknown field {k:?}"))),
        None => Ok(()),
    }
}

fn parse_entries(
    value: Option<&Value>,
    path: &str,
    depth: usize,
    limits: &Limits,
    count: &mut usize,
) -> Result<Vec<Entry>, ManifestError> {
    if depth > limits.max_depth {
        return Err(ManifestError::TooDeep(limits.max_depth));
    }
    let list = value
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(path, "entries is not a list"))?;
    let mut out: Vec<Entry> = Vec::with_capacity(list.len().min(1024));
    let mut seen = std::collections::HashSet::new();
    for item in list {
        *count += 1;
        if *count > limits.max_entries {
            return Err(ManifestError::TooManyEntries(limits.max_entries));
        }
        let entry = parse_entry(item, path, depth, limits, count)?;
        if !seen.insert(entry.name.clone()) {
            return Err(invalid(
                &join(path, &entry.name),
                "the name appears twice in its directory",
            ));
        }
        out.push(entry);
    }
    // Out of order: what it says is fine, how it says it is not canonical.
    if out
        .windows(2)
        .any(|w| w[0].name.as_bytes() > w[1].name.as_bytes())
    {
        return Err(ManifestError::NotCanonical);
    }
    Ok(out)
}

fn parse_entry(
    item: &Value,
    dir: &str,
    depth: usize,
    limits: &Limits,
    count: &mut usize,
) -> Result<Entry, ManifestError> {
    let m = item
        .as_object()
        .ok_or_else(|| invalid(dir, "an entry is not an object"))?;
    let name = m
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(dir, "an entry has no name"))?;
    check_name(name).map_err(|p| invalid(&join(dir, &name.escape_debug().to_string()), p))?;
    let path = join(dir, name);
    let mode = m
        .get("mode")
        .and_then(Value::as_u64)
        .filter(|&mode| mode <= 0o7777)
        .ok_or_else(|| invalid(&path, "mode is not permission bits (0 to 0o7777)"))?
        as u32;
    let kind = match m.get("kind").and_then(Value::as_str) {
        Some("file") => {
            only_keys(m, &["kind", "mode", "name", "size", "task_id"], &path)?;
            let size = m
                .get("size")
                .and_then(Value::as_u64)
                .filter(|&s| s <= limits.max_file_size)
                .ok_or_else(|| {
                    invalid(
                        &path,
                        format!("size is not 0 to {} bytes", limits.max_file_size),
                    )
                })?;
            let task_id = m
                .get("task_id")
                .and_then(Value::as_str)
                .filter(|id| is_task_id(id))
                .ok_or_else(|| invalid(&path, "task_id is not 64 lowercase hex digits"))?;
            Kind::File {
                size,
                task_id: task_id.to_string(),
            }
        }
        Some("directory") => {
            only_keys(m, &["entries", "kind", "mode", "name"], &path)?;
            Kind::Directory {
                entries: parse_entries(m.get("entries"), &path, depth + 1, limits, count)?,
            }
        }
        Some("symlink") => {
            only_keys(m, &["kind", "mode", "name", "target"], &path)?;
            let target = m
                .get("target")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty() && t.len() <= MAX_TARGET_BYTES && !t.contains('\0'))
                .ok_or_else(|| {
                    invalid(
                        &path,
                        format!("target is not 1 to {MAX_TARGET_BYTES} bytes without NUL"),
                    )
                })?;
            Kind::Symlink {
                target: target.to_string(),
            }
        }
        _ => return Err(invalid(&path, "kind is not file, directory or symlink")),
    };
    Ok(Entry {
        name: name.to_string(),
        mode,
        kind,
    })
}

/// Why `name` cannot name an entry, if it cannot.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("the name is empty")
    } else if name.len() > MAX_NAME_BYTES {
        Err("the name is longer than 255 bytes")
    } else if name == "." || name == ".." {
        Err("the name is . or ..")
    } else if name.contains('/') {
        Err("the name contains /")
    } else if name.contains('\0') {
        Err("the name contains NUL")
    } else {
        Ok(())
    }
}
