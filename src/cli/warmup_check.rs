//! `dfcache warmup --check`: what the daemon holds, per task and in
//! total, asked with `StatLocalPersistentCacheTask`; nothing is fetched.
//! A tree's files are known only from its manifest, so a tree whose
//! manifest the daemon does not hold is reported as that alone.

use anyhow::{anyhow, bail, Context};

use dfcache_client::{Client, ClientError, LocalCopy};
use dfcache_wire::tree::{Kind, Limits, Manifest};

use super::args::{with_timeout, GlobalArgs};
use super::flags::format_size;
use super::warmup::WarmupArgs;

/// How much of a task the daemon holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// All of it.
    Local,
    /// A download of it started and did not finish: the daemon has some
    /// pieces, and does not say which (counted as 0 bytes local).
    Partial,
    /// Nothing.
    Missing,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Local => "local",
            State::Partial => "partial",
            State::Missing => "missing",
        }
    }
}

struct Row {
    state: State,
    local: u64,
    size: u64,
    task_id: String,
    /// Its path in a tree, "(manifest)" for a tree's manifest, "-" for a
    /// task named on the command line.
    path: String,
}

pub async fn run(global: &GlobalArgs, args: &WarmupArgs) -> anyhow::Result<()> {
    let client = global.client();
    let work = async {
        let mut rows = vec![];
        let mut notes = vec![];
        for id in &args.ids {
            if args.recursive {
                tree_rows(&client, id, args.concurrency, &mut rows, &mut notes).await?;
            } else {
                let copy = local_copy(&client, id).await?;
                rows.push(row(&client, id, "-".into(), None, copy).await?);
            }
        }
        Ok::<_, anyhow::Error>((rows, notes))
    };
    let (rows, notes) = with_timeout(args.timeout, work).await?;
    print(&rows);
    for note in &notes {
        println!("{note}");
    }
    let missing = rows.iter().filter(|r| r.state != State::Local).count();
    if missing > 0 {
        bail!("{missing} of {} tasks are not local", rows.len());
    }
    Ok(())
}

async fn local_copy(client: &Client, id: &str) -> anyhow::Result<Option<LocalCopy>> {
    client
        .stat_local(id)
        .await
        .with_context(|| format!("cannot ask the daemon about task {id}"))
}

/// A task's row from its local copy; the size of a task the daemon holds
/// nothing of comes from `size` (a tree's manifest gives it) or a stat,
/// which also tells a task nobody has from one only peers have.
async fn row(
    client: &Client,
    id: &str,
    path: String,
    size: Option<u64>,
    copy: Option<LocalCopy>,
) -> anyhow::Result<Row> {
    let (state, size) = match copy {
        Some(copy) => {
            let state = if copy.complete {
                State::Local
            } else {
                State::Partial
            };
            (state, copy.content_length.or(size))
        }
        None => (State::Missing, size),
    };
    let size = match size {
        Some(size) => size,
        None => match client.stat(id).await {
            Ok(task) => task.content_length,
            Err(ClientError::NotFound(_)) => {
                bail!("task {id} is unknown to the daemon and its P2P network")
            }
            Err(e) => return Err(anyhow!(e).context(format!("cannot stat task {id}"))),
        },
    };
    let local = if state == State::Local { size } else { 0 };
    Ok(Row {
        state,
        local,
        size,
        task_id: id.to_string(),
        path,
    })
}

/// The rows of a tree: its manifest's, then, if the daemon holds the
/// manifest, every file's (`at_once` asked at a time).
async fn tree_rows(
    client: &Client,
    tree: &str,
    at_once: usize,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let copy = local_copy(client, tree).await?;
    let manifest_row = row(client, tree, "(manifest)".into(), None, copy.clone()).await?;
    let Some(copy) = copy.filter(|c| c.complete) else {
        rows.push(manifest_row);
        notes.push(format!(
            "tree {tree}: its files are not known here until its manifest is local \
             (`dfcache warmup -r {tree}` fetches it)"
        ));
        return Ok(());
    };
    rows.push(manifest_row);
    // Held already: read from the daemon's storage, its mark kept.
    let bytes = super::tree_fetch::manifest_bytes(client, tree, copy.persistent).await?;
    let manifest = Manifest::parse(&bytes, &Limits::default())
        .map_err(|e| anyhow!("task {tree} is not a tree manifest: {e}"))?;
    let files: Vec<(String, String, u64)> = manifest
        .files()
        .into_iter()
        .filter_map(|(path, entry)| match &entry.kind {
            Kind::File { size, task_id } => Some((path, task_id.clone(), *size)),
            _ => None,
        })
        .collect();
    let mut found: Vec<Option<Row>> = files.iter().map(|_| None).collect();
    let mut running = tokio::task::JoinSet::new();
    let mut next = files.into_iter().enumerate();
    loop {
        while running.len() < at_once.max(1) {
            let Some((index, (path, id, size))) = next.next() else {
                break;
            };
            let client = client.clone();
            running.spawn(async move {
                let copy = local_copy(&client, &id).await;
                let row = match copy {
                    Ok(copy) => row(&client, &id, path, Some(size), copy).await,
                    Err(e) => Err(e),
                };
                (index, row)
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        let (index, row) = done.context("a check task ended abnormally")?;
        found[index] = Some(row?);
    }
    rows.extend(found.into_iter().flatten());
    Ok(())
}

fn print(rows: &[Row]) {
    println!(
        "{:<8}  {:>14}  {:>14}  {:<64}  PATH",
        "STATE", "LOCAL", "SIZE", "TASK"
    );
    for r in rows {
        println!(
            "{:<8}  {:>14}  {:>14}  {:<64}  {}",
            r.state.name(),
            r.local,
            r.size,
            r.task_id,
            r.path
        );
    }
    let local: u64 = rows.iter().map(|r| r.local).sum();
    let size: u64 = rows.iter().map(|r| r.size).sum();
    let whole = rows.iter().filter(|r| r.state == State::Local).count();
    println!(
        "total: {local} of {size} bytes local ({} of {}), {whole} of {} tasks",
        format_size(local),
        format_size(size),
        rows.len()
    );
}
