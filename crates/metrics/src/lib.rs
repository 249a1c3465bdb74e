//! Prometheus metrics: the mount's and the embedded daemon's families, and
//! the HTTP endpoint (`--metrics-addr`) that serves them at `/metrics`.
//!
//! - `mount.rs`, `daemon.rs`: the families, process-wide (`mount()`,
//!   `daemon()`), so a hook elsewhere is one line and needs no handle
//!   threaded through; counting is a few atomic adds whether or not an
//!   endpoint is served;
//! - `fuse_ops.rs`: FUSE operations by op and by result errno, timed;
//! - `rpc_layer.rs`: the daemon's RPCs by method and gRPC code, timed, as
//!   a tower layer on the gRPC server;
//! - `labels.rs`: label values (errno and gRPC code names) and buckets;
//! - `http.rs`: the endpoint (hyper, already in the tree through tonic).
//!
//! The exposition is prometheus-client's OpenMetrics text encoder; names
//! follow Prometheus conventions (`dfcache_` prefix, `_total`, `_bytes`,
//! `_seconds`: the encoder appends the suffixes from each metric's type
//! and unit).

pub mod daemon;
pub mod fuse_ops;
pub mod http;
pub mod labels;
pub mod mount;
pub mod rpc_layer;

use prometheus_client::registry::Registry;

pub use daemon::daemon;
pub use http::{serve_metrics, MetricsError, MetricsServer, Refresh};
pub use mount::{mount, passthrough_opened};

/// Which families a process exposes: a mount, a daemon, or both (a mount
/// with an embedded daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposed {
    pub mount: bool,
    pub daemon: bool,
}

/// A registry holding the exposed families (handles onto the process-wide
/// ones, so what hooks count is what is served).
pub fn registry(exposed: Exposed) -> Registry {
    let mut registry = Registry::default();
    if exposed.mount {
        mount().register(&mut registry);
    }
    if exposed.daemon {
        daemon().register(&mut registry);
    }
    registry
}
