use std::path::{Component, Path, PathBuf};

/// Lexical normalisation: drops `.`, resolves `..` against the preceding
/// component (never above the root), without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(component);
                }
            }
            other => out.push(other),
        }
    }
    out
}
