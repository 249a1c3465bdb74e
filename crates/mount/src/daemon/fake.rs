//! An in-memory daemon for tests of the file system: tasks in a map, task
//! ids computed as dfdaemon computes them, and the faults of the real
//! world injected per call: a daemon that does not answer (the call fails
//! as the real client's deadline makes it fail), one that lacks an RPC, one
//! that answers an error, breaks the connection mid-stream, sends a short
//! or reordered piece, refuses an import at its end, or trickles.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tonic::Status;

use dfcache_wire::domain::piece::{default_piece_length, piece_count};
use dfcache_wire::domain::task_id::{TaskIdHasher, TaskIdInputs};
use dfcache_wire::domain::CHUNK_SIZE;

use super::*;

/// The calls a fault can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Stat,
    StatLocal,
    List,
    Read,
    Write,
    Import,
    Download,
}

/// What goes wrong with one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// No answer: the call fails with TimedOut after the fake's deadline,
    /// as the gRPC client's deadline makes it fail.
    Stall,
    /// The daemon has no such RPC (an older daemon).
    Unimplemented,
    /// The daemon answers this status.
    Status(Code),
    /// The connection breaks after this many chunks (or pieces).
    DisconnectAfter(usize),
    /// A read ends before its range does (the client reports a malformed
    /// response); a download sends one piece shorter than it is.
    Short,
    /// A download sends its pieces last to first (legal: pieces come in
    /// any order).
    Reorder,
    /// An import is refused after all its bytes were taken.
    FailAtFinish(Code),
    /// Every chunk (or piece) comes this long after the previous one.
    Trickle(Duration),
}

#[derive(Default)]
struct State {
    tasks: BTreeMap<String, Stored>,
    faults: HashMap<Call, VecDeque<Fault>>,
    /// Refusals at the end of an import, taken by the next import that
    /// reaches its end (so the order is that of commits, not of starts).
    finish_faults: HashMap<Call, VecDeque<Code>>,
    calls: HashMap<Call, u64>,
    /// The range of every read asked, in order.
    read_ranges: Vec<ReadRange>,
    /// The task of every download asked, in order.
    downloads: Vec<String>,
    /// No streaming RPCs (a released dfdaemon): reads and writes are
    /// UNIMPLEMENTED, imports go by path, reads by whole-task downloads.
    legacy: bool,
}

#[derive(Clone)]
struct Stored {
    content: Bytes,
    piece_length: u64,
    created_at: SystemTime,
    /// In this daemon's own storage (false: only its peers have it, and
    /// a download fetches it).
    local: bool,
    /// How a download last marked this daemon's copy.
    persistent: bool,
}

/// See the module documentation.
pub struct FakeDaemon {
    state: Mutex<State>,
    deadline: Duration,
}

impl FakeDaemon {
    /// A daemon with the streaming RPCs whose stalls last `deadline`.
    pub fn new(deadline: Duration) -> Arc<FakeDaemon> {
        Arc::new(FakeDaemon {
            state: Mutex::new(State::default()),
            deadline,
        })
    }

    /// A released dfdaemon: no streaming RPCs.
    pub fn legacy(deadline: Duration) -> Arc<FakeDaemon> {
        let fake = Self::new(deadline);
        fake.state().legacy = true;
        fake
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `content` as a task with the default options; its id.
    pub fn add_task(&self, content: &[u8]) -> String {
        self.store(Bytes::copy_from_slice(content), &ImportOptions::default())
            .task_id
    }

    /// Stores `content` as a task with `options` (a piece length, say).
    pub fn add_task_with(&self, content: &[u8], options: &ImportOptions) -> String {
        self.store(Bytes::copy_from_slice(content), options).task_id
    }

    /// Stores `content` as a task that only this daemon's peers hold: its
    /// local stat finds nothing until a download fetches it.
    pub fn add_remote_task(&self, content: &[u8]) -> String {
        let id = self.add_task(content);
        if let Some(task) = self.state().tasks.get_mut(&id) {
            task.local = false;
        }
        id
    }

    /// Whether this daemon holds the task itself, and marked persistent.
    pub fn local_copy(&self, task_id: &str) -> Option<(bool, bool)> {
        self.state()
            .tasks
            .get(task_id)
            .map(|t| (t.local, t.persistent))
    }

    /// The tasks of the downloads asked so far, in order.
    pub fn downloads(&self) -> Vec<String> {
        self.state().downloads.clone()
    }

    /// The ranges of the reads asked so far, in order.
    pub fn read_ranges(&self) -> Vec<ReadRange> {
        self.state().read_ranges.clone()
    }

    /// Deletes a task (as another client, or the TTL, would).
    pub fn remove(&self, task_id: &str) -> bool {
        self.state().tasks.remove(task_id).is_some()
    }

    /// A task's content, if the daemon has it.
    pub fn content(&self, task_id: &str) -> Option<Bytes> {
        self.state().tasks.get(task_id).map(|t| t.content.clone())
    }

    pub fn task_ids(&self) -> Vec<String> {
        self.state().tasks.keys().cloned().collect()
    }

    /// The next `call` fails with `fault` (faults queue up, one per call).
    /// `FailAtFinish` goes to the next import of that kind to reach its end.
    pub fn inject(&self, call: Call, fault: Fault) {
        let mut state = self.state();
        match fault {
            Fault::FailAtFinish(code) => {
                state.finish_faults.entry(call).or_default().push_back(code)
            }
            fault => state.faults.entry(call).or_default().push_back(fault),
        }
    }

    /// The refusal waiting for the next import of `call` to end, if any.
    fn finish_fault(&self, call: Call) -> Option<Code> {
        self.state()
            .finish_faults
            .get_mut(&call)
            .and_then(VecDeque::pop_front)
    }

    /// How many times `call` was made.
    pub fn calls(&self, call: Call) -> u64 {
        self.state().calls.get(&call).copied().unwrap_or(0)
    }

    /// Counts the call and takes its fault, if one was injected.
    fn begin(&self, call: Call) -> Option<Fault> {
        let mut state = self.state();
        *state.calls.entry(call).or_default() += 1;
        state.faults.get_mut(&call).and_then(VecDeque::pop_front)
    }

    fn store(&self, content: Bytes, options: &ImportOptions) -> WriteSummary {
        let mut hasher = TaskIdHasher::new(TaskIdInputs {
            tag: options.tag.clone(),
            application: options.application.clone(),
            piece_length: options.piece_length,
            content_for_calculating_task_id: options.content_for_calculating_task_id.clone(),
        });
        hasher.update(&content);
        let task_id = hasher.finish();
        let piece_length = options
            .piece_length
            .unwrap_or_else(|| default_piece_length(content.len() as u64));
        let summary = WriteSummary {
            task_id: task_id.clone(),
            content_length: content.len() as u64,
            piece_length,
            piece_count: piece_count(content.len() as u64, piece_length),
        };
        self.state().tasks.entry(task_id).or_insert(Stored {
            content,
            piece_length,
            created_at: SystemTime::now(),
            local: true,
            persistent: true,
        });
        summary
    }

    fn stored(&self, task_id: &str) -> ClientResult<Stored> {
        self.state()
            .tasks
            .get(task_id)
            .cloned()
            .ok_or_else(|| ClientError::NotFound(task_id.to_string()))
    }

    fn is_legacy_daemon(&self) -> bool {
        self.state().legacy
    }

    /// The error a fault that ends a call at once stands for; None for
    /// faults that act later in a stream.
    async fn immediate(&self, fault: &Option<Fault>, what: &'static str) -> ClientResult<()> {
        match fault {
            Some(Fault::Stall) => {
                tokio::time::sleep(self.deadline).await;
                Err(ClientError::TimedOut {
                    socket: fake_socket(),
                    what,
                    after: self.deadline,
                })
            }
            Some(Fault::Unimplemented) => Err(status(Code::Unimplemented, what)),
            Some(Fault::Status(code)) => Err(status(*code, what)),
            _ => Ok(()),
        }
    }
}

fn fake_socket() -> PathBuf {
    PathBuf::from("fake-daemon")
}

fn status(code: Code, what: &str) -> ClientError {
    ClientError::from_status(
        Status::new(code, format!("injected: {what}")),
        None,
        &fake_socket(),
    )
}

/// What a fault does to a stream before its item number `sent`: a
/// disconnect at its count, a trickle's wait before every item.
async fn mid_stream(fault: &Option<Fault>, sent: usize) -> ClientResult<()> {
    match fault {
        Some(Fault::DisconnectAfter(n)) if sent == *n => Err(ClientError::ConnectionLost {
            socket: fake_socket(),
            message: "injected: disconnect".into(),
        }),
        Some(Fault::Trickle(every)) => {
            tokio::time::sleep(*every).await;
            Ok(())
        }
        _ => Ok(()),
    }
}

fn info(id: &str, task: &Stored) -> TaskInfo {
    TaskInfo {
        id: id.to_string(),
        content_length: task.content.len() as u64,
        piece_length: Some(task.piece_length),
        created_at: Some(task.created_at),
    }
}

#[tonic::async_trait]
impl DaemonClient for FakeDaemon {
    async fn streams(&self) -> ClientResult<bool> {
        Ok(!self.is_legacy_daemon())
    }

    fn is_legacy(&self) -> bool {
        self.is_legacy_daemon()
    }

    async fn stat(&self, task_id: &str) -> ClientResult<TaskInfo> {
        let fault = self.begin(Call::Stat);
        self.immediate(&fault, "a stat").await?;
        let task = self.stored(task_id)?;
        Ok(info(task_id, &task))
    }

    async fn list(&self) -> ClientResult<Vec<TaskInfo>> {
        let fault = self.begin(Call::List);
        self.immediate(&fault, "a listing").await?;
        let state = self.state();
        Ok(state.tasks.iter().map(|(id, t)| info(id, t)).collect())
    }

    async fn stat_local(&self, task_id: &str) -> ClientResult<Option<LocalCopy>> {
        let fault = self.begin(Call::StatLocal);
        self.immediate(&fault, "a local stat").await?;
        Ok(self
            .state()
            .tasks
            .get(task_id)
            .filter(|t| t.local)
            .map(|t| LocalCopy {
                content_length: Some(t.content.len() as u64),
                complete: true,
                persistent: t.persistent,
                failed: false,
            }))
    }

    async fn read(&self, task_id: &str, range: ReadRange) -> ClientResult<Box<dyn ChunkStream>> {
        let fault = self.begin(Call::Read);
        self.state().read_ranges.push(range);
        if self.is_legacy_daemon() {
            return Err(status(Code::Unimplemented, "ReadPersistentCacheTask"));
        }
        self.immediate(&fault, "a read").await?;
        let task = self.stored(task_id)?;
        let len = task.content.len() as u64;
        let start = range.offset.min(len);
        let end = range
            .length
            .map_or(len, |l| start.saturating_add(l).min(len));
        let mut content = task.content.slice(start as usize..end as usize);
        let mut cut_short = false;
        if fault == Some(Fault::Short) && !content.is_empty() {
            content = content.slice(..content.len() / 2);
            cut_short = true;
        }
        let chunks = content
            .chunks(CHUNK_SIZE)
            .map(|c| content.slice_ref(c))
            .collect();
        Ok(Box::new(FakeChunks {
            chunks,
            fault,
            sent: 0,
            cut_short,
        }))
    }

    async fn write(
        &self,
        mut chunks: ChunkReceiver,
        options: &ImportOptions,
    ) -> ClientResult<WriteSummary> {
        let fault = self.begin(Call::Write);
        if self.is_legacy_daemon() {
            return Err(status(Code::Unimplemented, "WritePersistentCacheTask"));
        }
        self.immediate(&fault, "an import").await?;
        let mut content = Vec::new();
        let mut taken = 0;
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.map_err(|e| ClientError::io("read import source", e))?;
            mid_stream(&fault, taken).await?;
            content.extend_from_slice(&chunk);
            taken += 1;
        }
        if let Some(code) = self.finish_fault(Call::Write) {
            return Err(status(code, "the end of an import"));
        }
        Ok(self.store(Bytes::from(content), options))
    }

    async fn import_file(
        &self,
        local: &Path,
        daemon_path: Result<&Path, &str>,
        options: &ImportOptions,
    ) -> ClientResult<WriteSummary> {
        let fault = self.begin(Call::Import);
        self.immediate(&fault, "an import").await?;
        if self.is_legacy_daemon() {
            // The daemon opens the file itself, by the path it sees.
            let path = daemon_path.map_err(|reason| ClientError::NoDaemonPath {
                path: local.to_path_buf(),
                reason: reason.to_string(),
            })?;
            let content = std::fs::read(path)
                .map_err(|e| ClientError::io(format!("open {}", path.display()), e))?;
            return Ok(self.store(Bytes::from(content), options));
        }
        let content = std::fs::read(local)
            .map_err(|e| ClientError::io(format!("open {}", local.display()), e))?;
        if let Some(code) = self.finish_fault(Call::Import) {
            return Err(status(code, "the end of an import"));
        }
        Ok(self.store(Bytes::from(content), options))
    }

    async fn download(&self, task_id: &str) -> ClientResult<Box<dyn PieceSource>> {
        self.download_pieces(task_id, None, false).await
    }

    async fn download_linked(
        &self,
        task_id: &str,
        daemon_path: &Path,
        persistent: bool,
    ) -> ClientResult<Box<dyn PieceSource>> {
        self.download_pieces(task_id, Some(daemon_path), persistent)
            .await
    }
}

impl FakeDaemon {
    /// A download's pieces; with `output`, the content is written there
    /// first (as a daemon's hard link would show it) and the pieces carry
    /// none. The daemon holds the task afterwards, marked `persistent` (as
    /// a released dfdaemon marks its copy at every download).
    async fn download_pieces(
        &self,
        task_id: &str,
        output: Option<&Path>,
        persistent: bool,
    ) -> ClientResult<Box<dyn PieceSource>> {
        let fault = self.begin(Call::Download);
        self.state().downloads.push(task_id.to_string());
        self.immediate(&fault, "a download").await?;
        let task = self.stored(task_id)?;
        if let Some(stored) = self.state().tasks.get_mut(task_id) {
            stored.local = true;
            stored.persistent = persistent;
        }
        if let Some(path) = output {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &task.content))
                .map_err(|e| ClientError::io(format!("link {}", path.display()), e))?;
        }
        let len = task.content.len() as u64;
        let mut pieces: Vec<DownloadedPiece> = (0..piece_count(len, task.piece_length))
            .map(|number| {
                let offset = u64::from(number) * task.piece_length;
                let end = (offset + task.piece_length).min(len);
                DownloadedPiece {
                    number,
                    offset,
                    length: end - offset,
                    content: output
                        .is_none()
                        .then(|| task.content.slice(offset as usize..end as usize)),
                    fetched: !task.local,
                }
            })
            .collect();
        match &fault {
            Some(Fault::Reorder) => pieces.reverse(),
            Some(Fault::Short) => {
                if let Some(content) = pieces.last_mut().and_then(|p| p.content.as_mut()) {
                    *content = content.slice(..content.len() / 2);
                }
            }
            _ => {}
        }
        Ok(Box::new(FakePieces {
            pieces: pieces.into(),
            fault,
            sent: 0,
        }))
    }
}

struct FakeChunks {
    chunks: VecDeque<Bytes>,
    fault: Option<Fault>,
    sent: usize,
    cut_short: bool,
}

#[tonic::async_trait]
impl ChunkStream for FakeChunks {
    async fn next_chunk(&mut self) -> ClientResult<Option<Bytes>> {
        mid_stream(&self.fault, self.sent).await?;
        match self.chunks.pop_front() {
            Some(chunk) => {
                self.sent += 1;
                Ok(Some(chunk))
            }
            // The real reader checks that the range came whole.
            None if self.cut_short => Err(ClientError::Protocol(
                "injected: the read ended before its range".into(),
            )),
            None => Ok(None),
        }
    }
}

struct FakePieces {
    pieces: VecDeque<DownloadedPiece>,
    fault: Option<Fault>,
    sent: usize,
}

#[tonic::async_trait]
impl PieceSource for FakePieces {
    async fn next_piece(&mut self) -> ClientResult<Option<DownloadedPiece>> {
        mid_stream(&self.fault, self.sent).await?;
        self.sent += 1;
        Ok(self.pieces.pop_front())
    }
}
