//! `trees/<tree-id>/`: read-only views of committed trees.
//!
//! - `node.rs`: a tree's nodes, built from its manifest;
//! - `view.rs`: looking trees up, listing them, and resolving a file to its task.

pub mod node;
pub mod view;
