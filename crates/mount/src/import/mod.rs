//! The import path: files and directories written into `import/`.
//!
//! - `state.rs`: an import's state machine (streaming, spooled, finished);
//! - `write.rs`: creating, writing, flushing and releasing import files;
//! - `dirs.rs`: directories in `import/`;
//! - `commit_tree.rs`: committing an import directory as a tree.

pub mod commit_tree;
pub mod dirs;
pub mod state;
pub mod write;
