//! `dfcache import PATH`: creates a task and prints its id on stdout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tracing::info_span;
use tracing::Instrument;

use dfcache_client::Progress;

use super::args::{parse_timeout, with_timeout, GlobalArgs, TaskArgs, TransferArgs};
use super::progress::Bar;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file to import (with --recursive, the directory).
    pub path: PathBuf,
    /// Import a directory tree: every file, then the tree's manifest; prints
    /// the tree id, which `export --recursive` and the mount's trees/ take.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub task: TaskArgs,
    /// Compute the task id from this string instead of the content.
    #[arg(long)]
    pub content_for_calculating_task_id: Option<String>,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Give up after this long.
    #[arg(long, value_parser = parse_timeout, default_value = "30m")]
    pub timeout: Duration,
}

pub async fn run(global: &GlobalArgs, args: ImportArgs) -> anyhow::Result<()> {
    let local =
        std::path::absolute(&args.path).with_context(|| format!("{}", args.path.display()))?;
    let meta =
        std::fs::metadata(&local).with_context(|| format!("cannot import {}", local.display()))?;
    if meta.is_dir() {
        bail!(
            "cannot import {}: it is a directory (--recursive imports a tree)",
            local.display()
        );
    }
    // The path the daemon would open: symlinks resolved first, so a link
    // out of a mapped volume cannot smuggle a host path past the mapping.
    let daemon_path = daemon_path_of(&local, &args.transfer);
    if !args.transfer.stream_mode {
        if let Err(reason) = &daemon_path {
            bail!("cannot hand {} to the daemon: {reason}", local.display());
        }
    }
    let client = global.client();
    let mut options = args.task.import_options(Some(args.timeout));
    options.content_for_calculating_task_id = args.content_for_calculating_task_id.clone();
    let bar = Arc::new(Bar::new(!global.no_progress, "Importing"));
    bar.set_total(meta.len());
    let span = info_span!("import", path = %local.display());
    let summary = with_timeout(args.timeout, async {
        let daemon_path = daemon_path.as_deref().map_err(String::as_str);
        Ok(client
            .import_file(
                &local,
                daemon_path,
                args.transfer.stream_mode,
                &options,
                bar.clone(),
            )
            .instrument(span)
            .await?)
    })
    .await
    .with_context(|| format!("import of {} failed", local.display()));
    bar.finish();
    let summary = summary?;
    println!("{}", summary.task_id);
    Ok(())
}

pub(super) fn daemon_path_of(local: &Path, transfer: &TransferArgs) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(local).map_err(|e| format!("{}: {e}", local.display()))?;
    transfer
        .path_mapping
        .to_host(&real)
        .map_err(|e| e.to_string())
}
