//! The real daemon: the gRPC client behind the trait.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use dfcache_client::{Client, Deliver, NoProgress, PieceStream, TaskReader};

use super::*;

fn time_of(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

#[tonic::async_trait]
impl DaemonClient for Client {
    async fn streams(&self) -> ClientResult<bool> {
        Client::streams(self).await
    }

    fn is_legacy(&self) -> bool {
        Client::is_legacy(self)
    }

    async fn stat(&self, task_id: &str) -> ClientResult<TaskInfo> {
        let task = Client::stat(self, task_id).await?;
        Ok(TaskInfo {
            id: task.id,
            content_length: task.content_length,
            piece_length: Some(task.piece_length),
            created_at: time_of(task.created_at),
        })
    }

    async fn list(&self) -> ClientResult<Vec<TaskInfo>> {
        let tasks = self.list_local().await?;
        Ok(tasks
            .into_iter()
            .map(|t| TaskInfo {
                id: t.task_id,
                content_length: t.content_length.unwrap_or(0),
                piece_length: t.piece_length,
                created_at: time_of(t.created_at),
            })
            .collect())
    }

    async fn stat_local(&self, task_id: &str) -> ClientResult<Option<LocalCopy>> {
        Client::stat_local(self, task_id).await
    }

    async fn read(&self, task_id: &str, range: ReadRange) -> ClientResult<Box<dyn ChunkStream>> {
        if let Some(content) = self.short_read(task_id, range).await? {
            return Ok(Box::new(Whole(Some(content))));
        }
        Ok(Box::new(self.read_task(task_id, range).await?))
    }

    async fn write(
        &self,
        chunks: ChunkReceiver,
        options: &ImportOptions,
    ) -> ClientResult<WriteSummary> {
        self.write_chunks(chunks, None, options, Arc::new(NoProgress))
            .await
    }

    async fn import_file(
        &self,
        local: &Path,
        daemon_path: Result<&Path, &str>,
        options: &ImportOptions,
    ) -> ClientResult<WriteSummary> {
        Client::import_file(
            self,
            local,
            daemon_path,
            true,
            options,
            Arc::new(NoProgress),
        )
        .await
    }

    async fn download(&self, task_id: &str) -> ClientResult<Box<dyn PieceSource>> {
        Ok(Box::new(
            self.download_task(task_id, None, false, false, None)
                .await?,
        ))
    }

    async fn download_linked(
        &self,
        task_id: &str,
        daemon_path: &Path,
        persistent: bool,
    ) -> ClientResult<Box<dyn PieceSource>> {
        Ok(Box::new(
            self.hold(task_id, Deliver::LinkedAt(daemon_path), persistent)
                .await?,
        ))
    }
}

/// A range that came in one piece (from the short-read channel).
struct Whole(Option<Bytes>);

#[tonic::async_trait]
impl ChunkStream for Whole {
    async fn next_chunk(&mut self) -> ClientResult<Option<Bytes>> {
        Ok(self.0.take().filter(|c| !c.is_empty()))
    }
}

#[tonic::async_trait]
impl ChunkStream for TaskReader {
    async fn next_chunk(&mut self) -> ClientResult<Option<Bytes>> {
        Ok(TaskReader::next_chunk(self).await?.map(|(_, chunk)| chunk))
    }
}

#[tonic::async_trait]
impl PieceSource for PieceStream {
    async fn next_piece(&mut self) -> ClientResult<Option<DownloadedPiece>> {
        PieceStream::next_piece(self).await
    }
}
