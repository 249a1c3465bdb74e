//! Directory trees as content-addressed objects: a canonical manifest of a
//! tree (names, kinds, modes, sizes, and the task id of each file), stored
//! as a persistent cache task itself, so that one id names a whole tree on
//! every node.
//!
//! - `manifest.rs`: the format, its canonical bytes, and the checks that
//!   refuse a hostile or malformed manifest before anything is served.

pub mod manifest;

pub use manifest::{Entry, Kind, Limits, Manifest, ManifestError};
