//! The `dfcache` command line: one file per subcommand.

pub mod args;
pub mod completions;
pub mod csi;
pub mod export;
pub mod flags;
pub mod import;
pub mod ls;
pub mod metrics_endpoint;
pub mod mount;
pub mod mount_holder;
pub mod progress;
pub mod rm;
pub mod serve;
pub mod stat;
pub mod takeover;
pub mod tree;
mod tree_fetch;
pub mod warmup;
mod warmup_check;
mod warmup_fetch;

use clap::{Parser, Subcommand};

use args::GlobalArgs;

#[derive(Debug, Parser)]
#[command(
    name = "dfcache",
    version,
    about = "Dragonfly persistent cache tasks as files: import, export, stat, ls, rm, and an embedded daemon"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import a file; prints the task id on stdout.
    Import(import::ImportArgs),
    /// Export a task to a file.
    Export(export::ExportArgs),
    /// Show a task's information.
    Stat(stat::StatArgs),
    /// List the daemon's local tasks.
    Ls(ls::LsArgs),
    /// Delete a task.
    Rm(rm::RmArgs),
    /// Have the daemon hold tasks (or trees, -r) locally, fetched through its
    /// P2P network, before the programs that read them start.
    Warmup(warmup::WarmupArgs),
    /// Run the embedded single-node daemon.
    Serve(serve::ServeArgs),
    /// Mount tasks/ and import/ at a directory (stays in the foreground).
    Mount(mount::MountArgs),
    /// Serve the CSI node plugin that publishes the node mount's trees and
    /// tasks as pod volumes (driver dfcache.d7y.io).
    Csi(csi::CsiArgs),
    /// Keep a mount's connection between the processes serving it: run
    /// beside `dfcache mount --holder external` (the Kubernetes DaemonSet
    /// does); `dfcache mount` starts one itself otherwise.
    MountHolder(mount_holder::MountHolderArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
}
