//! The fetching of `dfcache warmup`: each task held by the daemon
//! (`Client::hold`, no output), several at once, a failed fetch tried
//! again with backoff, everything bounded by the warm-up's deadline; one
//! progress bar over all of it.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant as Deadline;
use tracing::{debug, info_span, Instrument};

use dfcache_client::{Client, ClientError, Code, Deliver, Progress};

use super::flags::format_duration;
use super::progress::Bar;

/// First wait before a try again; doubled each time, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How every task is warmed.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Mark the daemon's copies persistent.
    pub persistent: bool,
    /// Tries after the first.
    pub retries: u32,
    /// When the whole warm-up gives up.
    pub deadline: Deadline,
    /// What the deadline came from (`--timeout`), for messages.
    pub timeout: Duration,
}

/// A task to warm and what it is to the user.
#[derive(Debug, Clone)]
pub struct Target {
    pub task_id: String,
    /// Its paths in a tree (none: a task named on the command line).
    pub paths: Vec<String>,
    /// The tree it is the manifest of.
    pub manifest_of: Option<String>,
    /// Known before the fetch (a tree's files); otherwise learnt from it.
    pub size: Option<u64>,
}

impl Target {
    pub fn task(id: &str) -> Self {
        Target {
            task_id: id.to_string(),
            paths: vec![],
            manifest_of: None,
            size: None,
        }
    }

    pub fn file(id: &str, path: String, size: u64) -> Self {
        Target {
            paths: vec![path],
            size: Some(size),
            ..Target::task(id)
        }
    }

    pub fn manifest(tree: &str, size: u64) -> Self {
        Target {
            manifest_of: Some(tree.to_string()),
            size: Some(size),
            ..Target::task(tree)
        }
    }

    /// `weights/a.bin (task <id>)`, `the manifest of tree <id>`, `task <id>`.
    pub fn describe(&self) -> String {
        if let Some(tree) = &self.manifest_of {
            return format!("the manifest of tree {tree}");
        }
        match self.paths.as_slice() {
            [] => format!("task {}", self.task_id),
            [one] => format!("{one} (task {})", self.task_id),
            [first, rest @ ..] => {
                format!("{first} and {} more (task {})", rest.len(), self.task_id)
            }
        }
    }
}

/// A task the daemon holds whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held {
    pub bytes: u64,
    /// Of which the daemon fetched from peers for this warm-up (the rest
    /// it held already).
    pub fetched: u64,
}

#[derive(Debug)]
pub enum Outcome {
    Local(Held),
    /// Why not, as one sentence.
    NotLocal(String),
}

/// Warms `targets`, `at_once` at a time; each target's outcome, in order.
pub async fn warm_all(
    client: &Client,
    targets: Vec<Target>,
    policy: &Policy,
    at_once: usize,
    bar: &Arc<Bar>,
) -> Vec<(Target, Outcome)> {
    let mut outcomes: Vec<Option<Outcome>> = targets.iter().map(|_| None).collect();
    let mut running = tokio::task::JoinSet::new();
    let mut next = targets.iter().enumerate();
    loop {
        while running.len() < at_once.max(1) {
            let Some((index, target)) = next.next() else {
                break;
            };
            let (client, target, policy, bar) =
                (client.clone(), target.clone(), policy.clone(), bar.clone());
            let span = info_span!("warm", task_id = %target.task_id);
            running.spawn(
                async move { (index, warm(&client, &target, &policy, &bar).await) }
                    .instrument(span),
            );
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        match done {
            Ok((index, outcome)) => outcomes[index] = Some(outcome),
            // A panic in one warm must not hide the others' outcomes; its
            // slot stays empty and is reported below.
            Err(e) => debug!(error = %e, "a warm-up task ended abnormally"),
        }
    }
    targets
        .into_iter()
        .zip(outcomes)
        .map(|(target, outcome)| {
            let outcome = outcome
                .unwrap_or_else(|| Outcome::NotLocal("its warm-up task ended abnormally".into()));
            (target, outcome)
        })
        .collect()
}

async fn warm(client: &Client, target: &Target, policy: &Policy, bar: &Arc<Bar>) -> Outcome {
    // Pieces already counted on the bar (a try again reports them again).
    let counted = Arc::new(Mutex::new(Counted::default()));
    let result = with_retries(policy, || {
        hold_once(client, target, policy, bar.clone(), counted.clone())
    })
    .await;
    match result {
        Ok(held) => Outcome::Local(held),
        Err(why) => Outcome::NotLocal(why),
    }
}

/// What the bar was told of one target, across tries.
#[derive(Default)]
struct Counted {
    pieces: HashSet<u32>,
    fetched: u64,
    total_set: bool,
}

/// One try: the daemon reports every piece once it holds it; they must
/// cover the task.
async fn hold_once(
    client: &Client,
    target: &Target,
    policy: &Policy,
    bar: Arc<Bar>,
    counted: Arc<Mutex<Counted>>,
) -> anyhow::Result<Held> {
    let mut pieces = client
        .hold(&target.task_id, Deliver::Nothing, policy.persistent)
        .await?;
    let mut covered = BTreeMap::new();
    while let Some(piece) = pieces.next_piece().await? {
        if covered.insert(piece.offset, piece.length).is_some() {
            anyhow::bail!("the daemon reported piece {} twice", piece.number);
        }
        let mut counted = counted.lock().unwrap_or_else(|p| p.into_inner());
        if !counted.total_set && target.size.is_none() {
            if let Some(len) = pieces.content_length() {
                bar.grow_total(len);
                counted.total_set = true;
            }
        }
        if counted.pieces.insert(piece.number) {
            bar.advance(piece.length);
            if piece.fetched {
                counted.fetched += piece.length;
            }
        }
    }
    let total = pieces
        .content_length()
        .ok_or_else(|| anyhow::anyhow!("the daemon never said the task's size"))?;
    let mut next = 0;
    for (&offset, &len) in &covered {
        if offset != next {
            anyhow::bail!("the daemon reported no piece for bytes {next}..{offset}");
        }
        next = offset + len;
    }
    if next != total {
        anyhow::bail!("the download ended with {next} of {total} bytes held");
    }
    if let Some(size) = target.size {
        if size != total {
            anyhow::bail!("the tree's manifest says {size} bytes, but the task has {total}");
        }
    }
    let fetched = counted.lock().unwrap_or_else(|p| p.into_inner()).fetched;
    Ok(Held {
        bytes: total,
        fetched,
    })
}

/// Runs `attempt` until it succeeds, fails for good, runs out of tries or
/// meets the deadline; the error says why and after how many tries.
pub async fn with_retries<T, F, Fut>(policy: &Policy, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = FIRST_BACKOFF;
    let out_of_time = || {
        format!(
            "the warm-up's --timeout ({}) ran out",
            format_duration(policy.timeout)
        )
    };
    for tried in 1..=policy.retries + 1 {
        let error = match tokio::time::timeout_at(policy.deadline, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_) => return Err(format!("{} (try {tried})", out_of_time())),
        };
        let tries = if tried == 1 {
            "1 try".to_string()
        } else {
            format!("{tried} tries")
        };
        if !worth_another_try(&error) || tried > policy.retries {
            return Err(format!("{} (after {tries})", why(&error)));
        }
        debug!(error = %format!("{error:#}"), tried, "trying again after {backoff:?}");
        if Deadline::now() + backoff >= policy.deadline {
            return Err(format!(
                "{}; then {} (after {tries})",
                why(&error),
                out_of_time()
            ));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    Err(out_of_time())
}

/// A failure as one sentence; a task nobody has says so plainly.
fn why(error: &anyhow::Error) -> String {
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::NotFound(_)) => "unknown to the daemon and its P2P network".into(),
        _ => format!("{error:#}"),
    }
}

/// A failure that another try may not meet: the daemon does not know the
/// task, refuses the request, or lacks the RPC. Everything else (the
/// daemon gone or silent, a peer that failed, a download cut short) is
/// tried again.
fn worth_another_try(error: &anyhow::Error) -> bool {
    !matches!(
        error.downcast_ref::<ClientError>(),
        Some(
            ClientError::NotFound(_)
                | ClientError::InvalidArgument { .. }
                | ClientError::PermissionDenied { .. }
                | ClientError::Unsupported { .. }
                | ClientError::NoSpace { .. }
                | ClientError::Daemon {
                    code: Code::Unimplemented,
                    ..
                }
        )
    )
}
