//! A `DaemonClient` that counts and times every call the mount makes, by
//! RPC and gRPC code (`dfcache_daemon_calls_total`), around any other
//! client: the gRPC one in a real mount. A streamed read is timed to its
//! first response; its chunks are the piece cache's business.

use std::future::Future;
use std::path::Path;
use std::time::Instant;

use tonic::Code;

use dfcache_metrics::labels::grpc_code_name;

use super::*;

pub struct Metered<C> {
    inner: C,
}

impl<C: DaemonClient> Metered<C> {
    pub fn new(inner: C) -> Self {
        Self { inner }
    }
}

/// Runs one call, recording it under `rpc` with the code it ended with.
async fn call<T>(rpc: &'static str, fut: impl Future<Output = ClientResult<T>>) -> ClientResult<T> {
    let started = Instant::now();
    let result = fut.await;
    let code = match &result {
        Ok(_) => "OK",
        Err(e) => code_of(e),
    };
    dfcache_metrics::mount().daemon_call(rpc, code, started.elapsed());
    result
}

/// The gRPC code behind a client error; "client" when the call failed on
/// this side (a spool file unreadable, no path the daemon can open).
fn code_of(e: &ClientError) -> &'static str {
    match e {
        ClientError::NotFound(_) => grpc_code_name(Code::NotFound),
        ClientError::Unavailable { .. } => grpc_code_name(Code::Unavailable),
        ClientError::ConnectionLost { .. } => grpc_code_name(Code::Unknown),
        ClientError::Unsupported { .. } => grpc_code_name(Code::Unimplemented),
        ClientError::InvalidArgument { .. } => grpc_code_name(Code::InvalidArgument),
        ClientError::NoSpace { .. } => grpc_code_name(Code::ResourceExhausted),
        ClientError::PermissionDenied { .. } => grpc_code_name(Code::PermissionDenied),
        ClientError::AlreadyExists { .. } => grpc_code_name(Code::AlreadyExists),
        ClientError::Daemon { code, .. } => grpc_code_name(*code),
        ClientError::TimedOut { .. } => grpc_code_name(Code::DeadlineExceeded),
        ClientError::Protocol(_) => grpc_code_name(Code::Internal),
        ClientError::NoDaemonPath { .. } | ClientError::Io { .. } => "client",
    }
}

#[tonic::async_trait]
impl<C: DaemonClient> DaemonClient for Metered<C> {
    async fn streams(&self) -> ClientResult<bool> {
        // Answered from what is known when it is: counted only as the
        // RPCs it makes when it has to ask.
        self.inner.streams().await
    }

    fn is_legacy(&self) -> bool {
        self.inner.is_legacy()
    }

    async fn stat(&self, task_id: &str) -> ClientResult<TaskInfo> {
        call("StatPersistentCacheTask", self.inner.stat(task_id)).await
    }

    async fn list(&self) -> ClientResult<Vec<TaskInfo>> {
        call("ListLocalPersistentCacheTasks", self.inner.list()).await
    }

    async fn stat_local(&self, task_id: &str) -> ClientResult<Option<LocalCopy>> {
        call(
            "StatLocalPersistentCacheTask",
            self.inner.stat_local(task_id),
        )
        .await
    }

    async fn read(&self, task_id: &str, range: ReadRange) -> ClientResult<Box<dyn ChunkStream>> {
        call("ReadPersistentCacheTask", self.inner.read(task_id, range)).await
    }

    async fn write(
        &self,
        chunks: ChunkReceiver,
        options: &ImportOptions,
    ) -> ClientResult<WriteSummary> {
        call(
            "WritePersistentCacheTask",
            self.inner.write(chunks, options),
        )
        .await
    }

    async fn import_file(
        &self,
        local: &Path,
        daemon_path: Result<&Path, &str>,
        options: &ImportOptions,
    ) -> ClientResult<WriteSummary> {
        let rpc = if self.inner.is_legacy() {
            "UploadPersistentCacheTask"
        } else {
            "WritePersistentCacheTask"
        };
        call(rpc, self.inner.import_file(local, daemon_path, options)).await
    }

    async fn download(&self, task_id: &str) -> ClientResult<Box<dyn PieceSource>> {
        call("DownloadPersistentCacheTask", self.inner.download(task_id)).await
    }

    async fn download_linked(
        &self,
        task_id: &str,
        daemon_path: &Path,
        persistent: bool,
    ) -> ClientResult<Box<dyn PieceSource>> {
        let linked = self.inner.download_linked(task_id, daemon_path, persistent);
        call("DownloadPersistentCacheTask", linked).await
    }
}
