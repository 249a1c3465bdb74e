//! `dfcache csi`: a CSI node plugin (spec v1.x) that publishes what the
//! node's dfcache mount holds as pod volumes, so a pod declares
//! `csi: {driver: dfcache.d7y.io, volumeAttributes: {tree: <id>}}` and
//! needs neither a hostPath volume nor privileges.
//!
//! - `endpoint`: the `unix:///PATH` endpoint kubelet's convention gives;
//! - `server`: the Unix socket and the gRPC server;
//! - `identity`, `node`: the two services (no controller: inline
//!   ephemeral volumes need none);
//! - `volume`: what a publish request asks for, checked;
//! - `node_mount`: the node's dfcache mount, the source of every volume;
//! - `publish`: the mounts that make a volume (a read-only bind of
//!   `trees/<id>`, or a one-file tmpfs holding a bind of `tasks/<id>`),
//!   and their removal;
//! - `mounts`: the mount table and the mount syscalls;
//! - `warmup`: reading a volume's content through the mount before it is
//!   published, so the pod starts at local speed;
//! - `error`: what fails, with the CSI spec's status codes.
//!
//! Published volumes are kernel mounts and the plugin keeps no state of
//! its own: a restarted plugin finds them in the mount table, so they
//! keep working and are unpublished as if it had never stopped.

pub mod endpoint;
pub mod error;
pub mod identity;
pub mod mounts;
pub mod node;
pub mod node_mount;
pub mod publish;
pub mod server;
pub mod volume;
pub mod warmup;

/// The driver name pods and the `CSIDriver` object use.
pub const DRIVER_NAME: &str = "dfcache.d7y.io";

pub use server::{serve, PluginOptions};
