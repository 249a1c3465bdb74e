//! `import --recursive DIR` and `export --recursive TREE_ID -O DIR`: a
//! directory tree as one id. Every file is imported as a task, then the
//! tree's manifest (`dfcache_wire::tree`) is imported as a task of its own,
//! whose id names the tree. Exporting reads the manifest back, checks it,
//! and recreates the tree under a temporary name that becomes DIR only
//! once every file is there with the size the manifest gives.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use tracing::{info, info_span, Instrument};

use dfcache_client::{Client, ImportOptions, NoProgress, Progress};
use dfcache_wire::tree::manifest::check_name;
use dfcache_wire::tree::{Entry, Kind, Limits, Manifest};

use super::args::{with_timeout, GlobalArgs, TransferArgs};
use super::export::ExportArgs;
use super::import::{daemon_path_of, ImportArgs};
use super::progress::Bar;

/// One bar over the whole tree: each file's own total is ignored.
struct TreeProgress(Arc<Bar>);

impl Progress for TreeProgress {
    fn advance(&self, bytes: u64) {
        self.0.advance(bytes);
    }
}

/// A file found by the walk, and its path in the tree (`a/b`), which
/// stands in for its task id in the manifest until it is imported.
struct Found {
    local: PathBuf,
    rel: String,
    size: u64,
}

/// `import --recursive`: the directory as a tree.
pub async fn run_import(global: &GlobalArgs, args: ImportArgs) -> anyhow::Result<()> {
    let dir =
        std::path::absolute(&args.path).with_context(|| format!("{}", args.path.display()))?;
    import(global, &args, &dir).await
}

async fn import(global: &GlobalArgs, args: &ImportArgs, dir: &Path) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(dir).with_context(|| format!("cannot import {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "cannot import {} with --recursive: it is not a directory",
            dir.display()
        );
    }
    let mut files = vec![];
    let mut entries = walk(dir, "", 1, &mut files)?;
    let client = global.client();
    let options = args.task.import_options(Some(args.timeout));
    let bar = Arc::new(Bar::new(!global.no_progress, "Importing"));
    bar.set_total(files.iter().map(|f| f.size).sum());
    let progress: Arc<dyn Progress> = Arc::new(TreeProgress(bar.clone()));
    let span = info_span!("import_tree", path = %dir.display());
    let tree_id = with_timeout(
        args.timeout,
        async {
            let ids = import_files(&client, &files, &args.transfer, &options, &progress).await?;
            fill_ids(&mut entries, &ids);
            import_manifest(&client, dir, &Manifest { entries }, args, &options).await
        }
        .instrument(span),
    )
    .await;
    bar.finish();
    let tree_id = tree_id?;
    info!(tree_id, files = files.len(), "tree imported");
    println!("{tree_id}");
    Ok(())
}

/// The entries of `dir`, recursively; files are listed in `files`.
fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    files: &mut Vec<Found>,
) -> anyhow::Result<Vec<Entry>> {
    let limits = Limits::default();
    if depth > limits.max_depth {
        bail!(
            "{} is more than {} directories deep",
            dir.display(),
            limits.max_depth
        );
    }
    let mut entries = vec![];
    for item in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let item = item.with_context(|| format!("read {}", dir.display()))?;
        let local = item.path();
        let name = item.file_name().into_string().map_err(|raw| {
            anyhow::anyhow!(
                "{}: the name {raw:?} is not UTF-8, which a tree manifest requires",
                dir.display()
            )
        })?;
        check_name(&name).map_err(|why| anyhow::anyhow!("{}: {why}", local.display()))?;
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(&local)
            .with_context(|| format!("stat {}", local.display()))?;
        let mode = meta.mode() & 0o7777;
        let kind = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&local)
                .with_context(|| format!("read the link {}", local.display()))?;
            let target = target.into_os_string().into_string().map_err(|raw| {
                anyhow::anyhow!("{}: the target {raw:?} is not UTF-8", local.display())
            })?;
            Kind::Symlink { target }
        } else if meta.is_dir() {
            Kind::Directory {
                entries: walk(&local, &rel, depth + 1, files)?,
            }
        } else if meta.is_file() {
            files.push(Found {
                local: local.clone(),
                rel: rel.clone(),
                size: meta.len(),
            });
            Kind::File {
                size: meta.len(),
                task_id: rel,
            }
        } else {
            bail!(
                "{} is neither a file, a directory nor a symbolic link",
                local.display()
            );
        };
        entries.push(Entry { name, mode, kind });
    }
    Ok(entries)
}

/// Imports that run at once: a tree of small files is bound by round trips
/// to the daemon, not by bytes (1,000 files of a few KiB: one at a time,
/// each import waits for the daemon's answer before the next starts).
const IMPORTS_AT_ONCE: usize = 8;

/// Every file's task id, by its path in the tree.
async fn import_files(
    client: &Client,
    files: &[Found],
    transfer: &TransferArgs,
    options: &ImportOptions,
    progress: &Arc<dyn Progress>,
) -> anyhow::Result<HashMap<String, String>> {
    let mut ids = HashMap::with_capacity(files.len());
    let mut running = tokio::task::JoinSet::new();
    let mut next = files.iter();
    loop {
        while running.len() < IMPORTS_AT_ONCE {
            let Some(file) = next.next() else { break };
            let (client, transfer, options, progress) = (
                client.clone(),
                transfer.clone(),
                options.clone(),
                progress.clone(),
            );
            let (local, rel, size) = (file.local.clone(), file.rel.clone(), file.size);
            running.spawn(async move {
                let file = Found { local, rel, size };
                let id = import_file(&client, &file, &transfer, &options, &progress)
                    .await
                    .with_context(|| format!("import of {} failed", file.local.display()));
                (file.rel, id)
            });
        }
        let Some(done) = running.join_next().await else {
            return Ok(ids);
        };
        let (rel, id) = done.context("an import task failed")?;
        // The first failure ends the tree (the rest are aborted with the set).
        ids.insert(rel, id?);
    }
}

async fn import_file(
    client: &Client,
    file: &Found,
    transfer: &TransferArgs,
    options: &ImportOptions,
    progress: &Arc<dyn Progress>,
) -> anyhow::Result<String> {
    let daemon_path = daemon_path_of(&file.local, transfer);
    if !transfer.stream_mode {
        if let Err(reason) = &daemon_path {
            bail!(
                "cannot hand {} to the daemon: {reason}",
                file.local.display()
            );
        }
    }
    let summary = client
        .import_file(
            &file.local,
            daemon_path.as_deref().map_err(String::as_str),
            transfer.stream_mode,
            options,
            progress.clone(),
        )
        .await?;
    if summary.content_length != file.size {
        bail!(
            "it changed while it was imported ({} bytes, then {})",
            file.size,
            summary.content_length
        );
    }
    Ok(summary.task_id)
}

/// Replaces each file's path (the walk's stand-in) by its task id.
fn fill_ids(entries: &mut [Entry], ids: &HashMap<String, String>) {
    for entry in entries {
        match &mut entry.kind {
            Kind::File { task_id, .. } => {
                if let Some(id) = ids.get(task_id.as_str()) {
                    *task_id = id.clone();
                }
            }
            Kind::Directory { entries } => fill_ids(entries, ids),
            Kind::Symlink { .. } => {}
        }
    }
}

/// Imports the manifest as a task; its id is the tree's. It is written
/// beside the tree first, so a daemon that imports by path opens it as it
/// opens the tree's files; its id depends on its bytes alone (no piece
/// length is hashed in).
async fn import_manifest(
    client: &Client,
    dir: &Path,
    manifest: &Manifest,
    args: &ImportArgs,
    options: &ImportOptions,
) -> anyhow::Result<String> {
    let parent = dir.parent().unwrap_or(dir);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = TempPath(parent.join(format!(".{name}.dfcache-manifest-{}", std::process::id())));
    std::fs::write(&temp.0, manifest.to_bytes())
        .with_context(|| format!("write the tree's manifest to {}", temp.0.display()))?;
    let options = ImportOptions {
        piece_length: None,
        ..options.clone()
    };
    let found = Found {
        local: temp.0.clone(),
        rel: String::new(),
        size: manifest.to_bytes().len() as u64,
    };
    let none: Arc<dyn Progress> = Arc::new(NoProgress);
    import_file(client, &found, &args.transfer, &options, &none)
        .await
        .context("import of the tree's manifest failed")
}

/// A path removed when dropped (a temporary file or directory).
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

pub async fn export(global: &GlobalArgs, args: &ExportArgs) -> anyhow::Result<()> {
    let target =
        std::path::absolute(&args.output).with_context(|| format!("{}", args.output.display()))?;
    if std::fs::symlink_metadata(&target).is_ok() {
        bail!(
            "{} already exists (export --recursive creates the directory)",
            target.display()
        );
    }
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        bail!("{} names no directory", target.display());
    };
    if !parent.is_dir() {
        bail!("the directory of {} does not exist", target.display());
    }
    let client = global.client();
    let bar = Arc::new(Bar::new(!global.no_progress, "Exporting"));
    let span = info_span!("export_tree", tree_id = %args.id, path = %target.display());
    let temp = TempPath(parent.join(format!(
        ".{}.dfcache-{}.part",
        name.to_string_lossy(),
        std::process::id()
    )));
    let result = with_timeout(
        args.timeout,
        async {
            // Not persistent: an export leaves the node's copy to the
            // daemon's eviction, as upstream's export does.
            let bytes = super::tree_fetch::manifest_bytes(&client, &args.id, false).await?;
            let manifest = Manifest::parse(&bytes, &Limits::default())
                .with_context(|| format!("task {} is not a tree manifest", args.id))?;
            let files = manifest.files();
            bar.set_total(files.iter().map(|(_, e)| size_of(e)).sum());
            let progress: Arc<dyn Progress> = Arc::new(TreeProgress(bar.clone()));
            recreate(&client, args, &temp.0, &manifest, &progress).await
        }
        .instrument(span),
    )
    .await;
    bar.finish();
    result.with_context(|| format!("export of tree {} failed", args.id))?;
    std::fs::rename(&temp.0, &target)
        .with_context(|| format!("rename the tree into place at {}", target.display()))?;
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", parent.display()))?;
    Ok(())
}

fn size_of(entry: &Entry) -> u64 {
    match entry.kind {
        Kind::File { size, .. } => size,
        _ => 0,
    }
}

/// The tree under `root`: directories, then files (each exported and its
/// size checked against the manifest's), then links, then modes, deepest
/// directories last so a read-only directory is filled before it closes.
async fn recreate(
    client: &Client,
    args: &ExportArgs,
    root: &Path,
    manifest: &Manifest,
    progress: &Arc<dyn Progress>,
) -> anyhow::Result<()> {
    std::fs::create_dir(root).with_context(|| format!("create {}", root.display()))?;
    let mut all = vec![];
    flatten(&manifest.entries, "", &mut all);
    for (rel, entry) in &all {
        if let Kind::Directory { .. } = entry.kind {
            let path = root.join(rel);
            std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        }
    }
    for (rel, entry) in &all {
        let Kind::File { size, task_id } = &entry.kind else {
            continue;
        };
        let path = root.join(rel);
        let file_args = ExportArgs {
            id: task_id.clone(),
            output: path.clone(),
            overwrite: false,
            recursive: false,
            digest: None,
            transfer_from_dfdaemon: args.transfer_from_dfdaemon,
            transfer: args.transfer.clone(),
            timeout: args.timeout,
        };
        super::export::export(client, &file_args, &path, progress.clone())
            .await
            .with_context(|| format!("{rel} (task {task_id})"))?;
        let got = std::fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        if got != *size {
            bail!("{rel}: the manifest says {size} bytes, but task {task_id} has {got}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(entry.mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    for (rel, entry) in &all {
        if let Kind::Symlink { target } = &entry.kind {
            let path = root.join(rel);
            std::os::unix::fs::symlink(target, &path)
                .with_context(|| format!("create the link {}", path.display()))?;
        }
    }
    for (rel, entry) in all.iter().rev() {
        if let Kind::Directory { .. } = entry.kind {
            let path = root.join(rel);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(entry.mode))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
    }
    Ok(())
}

/// Every entry with its path from the top, parents before children.
fn flatten<'a>(entries: &'a [Entry], prefix: &str, out: &mut Vec<(String, &'a Entry)>) {
    for entry in entries {
        let rel = if prefix.is_empty() {
            entry.name.clone()
        } else {
            format!("{prefix}/{}", entry.name)
        };
        out.push((rel.clone(), entry));
        if let Kind::Directory { entries } = &entry.kind {
            flatten(entries, &rel, out);
        }
    }
}
