//! Committing a directory of `import/` as a tree: reading its
//! `user.dfcache.tree_id` xattr builds the directory's manifest from the
//! tasks its files became, imports the manifest as a task, and returns
//! that task's id, the tree's. The tree then opens under `trees/<id>/`.
//! EBUSY while any file inside is still being written (not yet closed or
//! fsynced): a tree is made of finished tasks only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::info;

use crate::daemon::ImportOptions;
use crate::error::{Errno, FsError, FsResult};
use crate::filesystem::DfcacheFs;
use crate::import::state::ImportState;
use crate::inodes::{ImportEntry, ImportNode, Inodes, TREES_INO};
use dfcache_wire::tree::{Entry, Kind, Manifest};

/// A directory's entries as found, files not yet resolved to tasks.
enum Planned {
    File(Arc<ImportNode>),
    Dir(Vec<(String, u16, Planned)>),
    Link(String),
}

impl DfcacheFs {
    pub(crate) async fn commit_tree(&self, dir: u64) -> FsResult<String> {
        let plan = {
            let inodes = self.inodes();
            plan_dir(&inodes, dir)?
        };
        let mut files = vec![];
        collect_files(&plan, &mut files);
        let mut tasks = HashMap::with_capacity(files.len());
        for node in files {
            let state = node.state.lock().await;
            match &*state {
                // Committed by a close() or an fsync(): its task is final
                // (later writes fail with EIO), whatever descriptors are
                // still open. Waiting for those too made a getxattr right
                // after close() fail now and then: the kernel sends the
                // RELEASE that closes the descriptor after close() returned.
                ImportState::Finished(f) => {
                    tasks.insert(node.ino, (f.task_id.clone(), f.content_length));
                }
                _ => {
                    return Err(Errno::EBUSY.because(std::io::Error::other(format!(
                        "{} is still being written: a tree holds finished files only",
                        node.meta().name.to_string_lossy()
                    ))))
                }
            }
        }
        let manifest = Manifest {
            entries: to_entries(&plan, &tasks),
        };
        let id = self.import_bytes(manifest.to_bytes()).await?;
        self.inodes()
            .add_tree(&id, &manifest, TREES_INO, SystemTime::now());
        info!(tree_id = %id, files = tasks.len(), "tree committed");
        Ok(id)
    }

    /// A new task of `bytes`: streamed, or through a spool file (a daemon
    /// that imports by path). No piece length is hashed into its id.
    async fn import_bytes(&self, bytes: Vec<u8>) -> FsResult<String> {
        let options = ImportOptions {
            piece_length: None,
            ..self.config.import.clone()
        };
        if let Some(dir) = &self.config.spool {
            let path = crate::import::write::new_spool_path(dir);
            std::fs::write(&path, &bytes).map_err(FsError::io)?;
            let daemon_path = self.daemon_path_of(&path);
            let result = self
                .client
                .import_file(
                    &path,
                    daemon_path.as_deref().map_err(String::as_str),
                    &options,
                )
                .await;
            let _ = std::fs::remove_file(&path);
            return Ok(result.map_err(FsError::from)?.task_id);
        }
        // One chunk, then the end of the content: the channel holds it.
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(Bytes::from(bytes)))
            .await
            .map_err(|_| Errno::EIO)?;
        drop(tx);
        let written = self.client.write(rx, &options).await;
        Ok(written.map_err(FsError::from)?.task_id)
    }
}

fn plan_dir(inodes: &Inodes, dir: u64) -> FsResult<Planned> {
    let mut entries = vec![];
    for (name, entry) in inodes.imports(dir) {
        let name = name.into_string().map_err(|_| Errno::EINVAL)?;
        let (mode, planned) = match &entry {
            ImportEntry::File(node) => (node.meta().perm, Planned::File(node.clone())),
            ImportEntry::Dir(d) => match &d.target {
                Some(target) => (
                    0o777,
                    Planned::Link(target.to_str().ok_or(Errno::EINVAL)?.to_string()),
                ),
                None => (d.meta().perm, plan_dir(inodes, d.ino)?),
            },
        };
        entries.push((name, mode, planned));
    }
    Ok(Planned::Dir(entries))
}

fn collect_files(plan: &Planned, out: &mut Vec<Arc<ImportNode>>) {
    match plan {
        Planned::File(node) => out.push(node.clone()),
        Planned::Dir(entries) => entries.iter().for_each(|(_, _, p)| collect_files(p, out)),
        Planned::Link(_) => {}
    }
}

fn to_entries(plan: &Planned, tasks: &HashMap<u64, (String, u64)>) -> Vec<Entry> {
    let Planned::Dir(entries) = plan else {
        return vec![];
    };
    entries
        .iter()
        .map(|(name, mode, planned)| Entry {
            name: name.clone(),
            mode: u32::from(*mode),
            kind: match planned {
                Planned::File(node) => {
                    let (task_id, size) = tasks.get(&node.ino).cloned().unwrap_or_default();
                    Kind::File { size, task_id }
                }
                Planned::Dir(_) => Kind::Directory {
                    entries: to_entries(planned, tasks),
                },
                Planned::Link(target) => Kind::Symlink {
                    target: target.clone(),
                },
            },
        })
        .collect()
}
