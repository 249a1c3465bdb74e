//! Path mapping between the container's view of the file system (where
//! dfcache runs) and the host's (where dfdaemon runs).
//!
//! Mapping is applied only to paths handed to a daemon that opens them
//! itself; paths dfcache opens stay as the container sees them.

mod normalize;
mod parser;

use std::path::{Path, PathBuf};

pub use normalize::normalize;
pub use parser::MappingError;

/// One `container:host` pair; both absolute and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    container: PathBuf,
    host: PathBuf,
}

/// Translates paths between container and host with the longest matching
/// prefix, on whole components. Empty: every path maps to itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMapper {
    /// Longest container prefix first (most components), so the first match
    /// is the longest.
    mappings: Vec<Mapping>,
    /// Container prefixes that lead through a symlink, by their real path
    /// (see `with_real_container_prefixes`); consulted only by `to_host`.
    real_prefixes: Vec<Mapping>,
}

#[derive(Clone, Copy)]
enum Direction {
    ToHost,
    ToContainer,
}

impl PathMapper {
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }

    /// The host path of `path` (a container path). Fails for a relative
    /// path, a path under no mapped prefix, and one whose `..` climbs out of
    /// its prefix.
    pub fn to_host(&self, path: &Path) -> Result<PathBuf, MappingError> {
        self.map(path, Direction::ToHost)
    }

    /// The container path of `path` (a host path): the mirror of `to_host`.
    pub fn to_container(&self, path: &Path) -> Result<PathBuf, MappingError> {
        self.map(path, Direction::ToContainer)
    }

    /// Also maps paths under the real location of each container prefix
    /// that leads through a symlink (`/var/run` is a link to `/run` on most
    /// systems). Callers resolve symlinks in the paths they map, so that a
    /// link cannot lead out of a mapped volume; without this, such a prefix
    /// would match none of those resolved paths. A prefix that does not
    /// exist (yet) is kept as written only. `to_container` still answers
    /// with the prefixes as written.
    pub fn with_real_container_prefixes(mut self) -> Self {
        self.real_prefixes.clear();
        for mapping in &self.mappings {
            let Ok(real) = std::fs::canonicalize(&mapping.container) else {
                continue;
            };
            // A prefix given explicitly keeps its own host side.
            let known = |m: &Mapping| m.container == real;
            if self.mappings.iter().any(known) || self.real_prefixes.iter().any(known) {
                continue;
            }
            self.real_prefixes.push(Mapping {
                container: real,
                host: mapping.host.clone(),
            });
        }
        self
    }

    fn map(&self, path: &Path, direction: Direction) -> Result<PathBuf, MappingError> {
        if !path.is_absolute() {
            return Err(MappingError::RelativePath(path.to_path_buf()));
        }
        if self.is_empty() {
            return Ok(path.to_path_buf());
        }
        // Match on the path as written (only `.` dropped) so that `C/../x`
        // is judged as a path under C that then climbs out of it.
        let literal: PathBuf = path.components().collect();
        let real_prefixes = match direction {
            Direction::ToHost => &self.real_prefixes[..],
            Direction::ToContainer => &[],
        };
        let best = self
            .mappings
            .iter()
            .chain(real_prefixes)
            .map(|m| match direction {
                Direction::ToHost => (&m.container, &m.host),
                Direction::ToContainer => (&m.host, &m.container),
            })
            .filter(|(from, _)| literal.starts_with(from))
            .max_by_key(|(from, _)| from.components().count());
        let Some((from, to)) = best else {
            return Err(MappingError::Unmapped(path.to_path_buf()));
        };
        let rest = literal
            .strip_prefix(from)
            .map_err(|_| MappingError::Unmapped(path.to_path_buf()))?;
        let mapped = normalize(&to.join(rest));
        if !mapped.starts_with(to) {
            return Err(MappingError::Escapes {
                path: path.to_path_buf(),
                prefix: from.clone(),
            });
        }
        Ok(mapped)
    }
}

#[cfg(test)]
mod tests;
