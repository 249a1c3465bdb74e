//! Parsing `--path-mapping "container:host[,container:host...]"`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{normalize, Mapping, PathMapper};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("path mapping entry {index} is empty")]
    EmptyEntry { index: usize },
    #[error("path mapping entry {index} ({entry:?}) is not of the form container:host")]
    MissingSeparator { index: usize, entry: String },
    #[error("path mapping entry {index} ({entry:?}): {side} path {path:?} is not absolute")]
    NotAbsolute {
        index: usize,
        entry: String,
        side: &'static str,
        path: String,
    },
    #[error("path mapping entry {index} ({entry:?}) repeats the container prefix {prefix:?} of entry {first}")]
    DuplicatePrefix {
        index: usize,
        entry: String,
        prefix: PathBuf,
        first: usize,
    },
    #[error("{0} is not an absolute path")]
    RelativePath(PathBuf),
    #[error("{0} is under no mapped prefix, so the daemon cannot see it")]
    Unmapped(PathBuf),
    #[error("{path} climbs out of the mapped prefix {prefix}")]
    Escapes { path: PathBuf, prefix: PathBuf },
}

impl FromStr for PathMapper {
    type Err = MappingError;

    /// Parses the flag's value; entries are numbered from 1 in errors.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut mappings: Vec<(usize, Mapping)> = Vec::new();
        if spec.trim().is_empty() {
            return Ok(PathMapper::default());
        }
        for (i, raw) in spec.split(',').enumerate() {
            let index = i + 1;
            let entry = raw.trim();
            if entry.is_empty() {
                return Err(MappingError::EmptyEntry { index });
            }
            let (container, host) =
                entry
                    .split_once(':')
                    .ok_or_else(|| MappingError::MissingSeparator {
                        index,
                        entry: entry.to_string(),
                    })?;
            let side = |name: &'static str, value: &str| {
                let p = Path::new(value);
                if p.is_absolute() {
                    Ok(normalize(p))
                } else {
                    Err(MappingError::NotAbsolute {
                        index,
                        entry: entry.to_string(),
                        side: name,
                        path: value.to_string(),
                    })
                }
            };
            let mapping = Mapping {
                container: side("container", container)?,
                host: side("host", host)?,
            };
            if let Some((first, _)) = mappings
                .iter()
                .find(|(_, m)| m.container == mapping.container)
            {
                return Err(MappingError::DuplicatePrefix {
                    index,
                    entry: entry.to_string(),
                    prefix: mapping.container,
                    first: *first,
                });
            }
            mappings.push((index, mapping));
        }
        let mut mappings: Vec<Mapping> = mappings.into_iter().map(|(_, m)| m).collect();
        mappings.sort_by_key(|m| std::cmp::Reverse(m.container.components().count()));
        Ok(PathMapper {
            mappings,
            real_prefixes: Vec::new(),
        })
    }
}
