//! `dfcache csi --csi-endpoint unix:///PATH --mountpoint DIR`: the CSI node
//! plugin kubelet publishes dfcache volumes through (crates/csi), in the
//! foreground until SIGINT/SIGTERM. Volumes it published stay mounted when
//! it stops.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use dfcache_csi::endpoint::parse_endpoint;
use dfcache_csi::{serve, PluginOptions};

use super::args::parse_timeout;
use super::serve::shutdown_signal;

#[derive(Debug, Args)]
pub struct CsiArgs {
    /// Where kubelet reaches the plugin: unix:///PATH.
    #[arg(long, env = "CSI_ENDPOINT", value_parser = parse_csi_endpoint)]
    pub csi_endpoint: PathBuf,
    /// The node's dfcache mount (`dfcache mount --allow-other`) volumes are
    /// published from.
    #[arg(
        long,
        env = "DFCACHE_MOUNTPOINT",
        default_value = "/var/lib/dfcache/mnt"
    )]
    pub mountpoint: PathBuf,
    /// This node's id, as NodeGetInfo reports it [default: the host name].
    #[arg(long, env = "DFCACHE_NODE_ID")]
    pub node_id: Option<String>,
    /// A tree or task that the node's mount does not find within this long
    /// fails the publish (kubelet retries it).
    #[arg(long, value_parser = parse_timeout, default_value = "60s")]
    pub lookup_timeout: Duration,
    /// Files read at once by the warm-up of a `warmup: "true"` volume.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub warmup_concurrency: u16,
}

fn parse_csi_endpoint(s: &str) -> Result<PathBuf, String> {
    parse_endpoint(s).map_err(|e| e.to_string())
}

/// The kernel's host name: a node's name in most clusters.
fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("cannot read the host name; pass --node-id")?;
    Ok(name.trim().to_string())
}

pub async fn run(args: CsiArgs) -> anyhow::Result<()> {
    let node_id = match args.node_id {
        Some(id) if !id.is_empty() => id,
        _ => host_name()?,
    };
    let options = PluginOptions {
        mountpoint: args.mountpoint,
        node_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
        lookup_timeout: args.lookup_timeout,
        warmup_concurrency: usize::from(args.warmup_concurrency),
    };
    serve(&args.csi_endpoint, options, shutdown_signal())
        .await
        .with_context(|| {
            format!(
                "cannot serve the CSI plugin on {}",
                args.csi_endpoint.display()
            )
        })
}
