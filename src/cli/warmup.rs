//! `dfcache warmup ID...`: has the node's daemon hold tasks in its own
//! storage, fetched through its P2P network, before the programs that
//! read them start; with `-r` each id is a tree's, meaning its manifest
//! and every file. It returns when all are local, or says which are not
//! and why. `--check` only reports what is local (`warmup_check.rs`);
//! the fetching, retried with backoff, is `warmup_fetch.rs`.
//!
//! A released dfdaemon is asked `DownloadPersistentCacheTask` with no
//! output path and no piece content: the task lands in its storage and
//! nowhere else. `dfcache serve` holds every task it knows whole, so
//! there the same call is a check.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Args;
use tokio::time::Instant as Deadline;
use tracing::{info_span, Instrument};

use dfcache_client::Progress;
use dfcache_wire::domain::task_id::is_task_id;
use dfcache_wire::tree::{Kind, Limits, Manifest};

use super::args::{parse_timeout, GlobalArgs};
use super::flags::{format_duration, format_size};
use super::progress::Bar;
use super::warmup_fetch::{warm_all, with_retries, Outcome, Policy, Target};

/// Tasks fetched at once by default: on two dfdaemon nodes on loopback, a
/// 1 GiB tree of 50 files (8 shards of 128 MiB) warmed in 6.3 s one at a
/// time, 3.3 s two or four at a time, 4.3 s eight at a time (medians,
/// `bench-warmup.sh`, docs/BENCHMARKING.md). Four keeps small files from
/// queueing behind a shard without the slowdown eight showed.
pub const DEFAULT_CONCURRENCY: usize = 4;

#[derive(Debug, Args)]
pub struct WarmupArgs {
    /// Task ids; with --recursive, tree ids.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Each id is a tree's (`import --recursive`): warm its manifest and
    /// every file of it.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Fetch nothing: print, per task and in total, the bytes the daemon
    /// holds and the bytes in the task; exit 0 only when all are local.
    #[arg(long)]
    pub check: bool,
    /// Tasks fetched at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = parse_concurrency, env = "DFCACHE_WARMUP_CONCURRENCY")]
    pub concurrency: usize,
    /// Tries again after a fetch fails (the daemon went away, a peer
    /// failed, no answer), waiting 1s, 2s, 4s, ... (at most 30s) before
    /// each; a task the daemon does not know is not tried again.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=20), env = "DFCACHE_WARMUP_RETRIES")]
    pub retries: u32,
    /// Leave the warmed copies to the daemon's eviction under disk
    /// pressure. Without it they are persistent: the daemon keeps them
    /// until the task's TTL ends.
    #[arg(long)]
    pub evictable: bool,
    /// Give up after this long; what is not local by then is reported.
    #[arg(long, value_parser = parse_timeout, default_value = "2h")]
    pub timeout: Duration,
}

/// 1 to 64 tasks at once.
fn parse_concurrency(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| format!("{s:?} is not a number of tasks from 1 to 64"))
}

pub async fn run(global: &GlobalArgs, args: WarmupArgs) -> anyhow::Result<()> {
    if let Some(bad) = args.ids.iter().find(|id| !is_task_id(id)) {
        bail!("{bad:?} is not a task id (64 lowercase hex digits)");
    }
    if args.check {
        return super::warmup_check::run(global, &args).await;
    }
    let client = global.client();
    let started = Instant::now();
    let policy = Policy {
        persistent: !args.evictable,
        retries: args.retries,
        deadline: Deadline::now() + args.timeout,
        timeout: args.timeout,
    };
    let bar = Arc::new(Bar::new(!global.no_progress, "Warming"));
    let span = info_span!("warmup", recursive = args.recursive);
    let result = async {
        let mut targets = vec![];
        if args.recursive {
            for tree in &args.ids {
                targets.extend(tree_targets(&client, tree, &policy).await?);
            }
        } else {
            targets.extend(args.ids.iter().map(|id| Target::task(id)));
        }
        bar.set_total(targets.iter().filter_map(|t| t.size).sum());
        Ok::<_, anyhow::Error>(warm_all(&client, targets, &policy, args.concurrency, &bar).await)
    }
    .instrument(span)
    .await;
    bar.finish();
    report(&result?, &args, started.elapsed())
}

/// A tree's targets: its manifest (fetched first: it names the files)
/// and each of its files, a task shared by several files once.
async fn tree_targets(
    client: &dfcache_client::Client,
    tree: &str,
    policy: &Policy,
) -> anyhow::Result<Vec<Target>> {
    let bytes = with_retries(policy, || {
        super::tree_fetch::manifest_bytes(client, tree, policy.persistent)
    })
    .await
    .map_err(|e| anyhow!("the manifest of tree {tree} is not local: {e}"))?;
    let manifest = Manifest::parse(&bytes, &Limits::default())
        .map_err(|e| anyhow!("task {tree} is not a tree manifest: {e}"))?;
    let mut targets = vec![Target::manifest(tree, bytes.len() as u64)];
    let mut by_task: HashMap<String, usize> = HashMap::new();
    for (path, entry) in manifest.files() {
        let Kind::File { size, task_id } = &entry.kind else {
            continue;
        };
        match by_task.get(task_id) {
            Some(&at) => targets[at].paths.push(path),
            None => {
                by_task.insert(task_id.clone(), targets.len());
                targets.push(Target::file(task_id, path, *size));
            }
        }
    }
    Ok(targets)
}

/// The summary on stdout when all are local; otherwise each task that is
/// not, with why, on stderr, and the failure.
fn report(outcomes: &[(Target, Outcome)], args: &WarmupArgs, took: Duration) -> anyhow::Result<()> {
    let mut bytes = 0;
    let mut fetched = 0;
    let mut missing = vec![];
    for (target, outcome) in outcomes {
        match outcome {
            Outcome::Local(held) => {
                bytes += held.bytes;
                fetched += held.fetched;
            }
            Outcome::NotLocal(why) => missing.push((target, why)),
        }
    }
    let tasks = outcomes.len();
    if missing.is_empty() {
        println!(
            "{tasks} {} local, {} ({} fetched from peers) in {}",
            if tasks == 1 { "task" } else { "tasks" },
            format_size(bytes),
            format_size(fetched),
            format_duration(Duration::from_millis(took.as_millis() as u64)),
        );
        return Ok(());
    }
    for (target, why) in &missing {
        eprintln!("not local: {}: {why}", target.describe());
    }
    let trees = if args.recursive {
        " (trees and their files)"
    } else {
        ""
    };
    bail!(
        "{} of {tasks} tasks{trees} are not local (listed above); the same command again fetches only what is missing",
        missing.len()
    )
}
