//! `trees/<tree-id>/`: read-only views of committed trees.
//!
//! - `node.rs`: a tree's nodes, built from its manifest;
//! - `view.rs`: looking trees up, listing them, and resolving a file to its task;
//! - `prefetch.rs`: a tree's files queued for download ahead of the programs.

pub mod node;
pub mod prefetch;
pub mod view;
