//! The embedded daemon in this test process, on a real Unix socket.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;

use dfcache_client::connect_channel;
use dfcache_client::Client;
use dfcache_daemon::server::{serve, ServeOptions};
use dfcache_daemon::store::Store;
use dfcache_wire::pb::dfdaemon::dfdaemon_download_client::DfdaemonDownloadClient;

pub struct Running {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(options: ServeOptions) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let store = Store::open(&dir.path().join("store")).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (s, st) = (socket.clone(), store.clone());
        let task = tokio::spawn(async move {
            serve(st, &s, options, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Running {
            _dir: dir,
            socket,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn raw(&self) -> DfdaemonDownloadClient<tonic::transport::Channel> {
        DfdaemonDownloadClient::new(connect_channel(&self.socket))
            .max_encoding_message_size(256 << 20)
            .max_decoding_message_size(256 << 20)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// The store's directory.
    pub fn store_dir(&self) -> PathBuf {
        self._dir.path().join("store")
    }

    pub fn leftovers(&self) -> usize {
        std::fs::read_dir(self._dir.path().join("store/tmp"))
            .unwrap()
            .count()
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// Streams `data` into a new task with default options; returns its id.
pub async fn write_bytes(client: &Client, data: &[u8]) -> String {
    client
        .write_task(
            std::io::Cursor::new(data.to_vec()),
            None,
            &dfcache_client::ImportOptions::default(),
            std::sync::Arc::new(dfcache_client::NoProgress),
        )
        .await
        .expect("write task")
        .task_id
}

/// A raw write message carrying `data`.
pub fn chunk(
    data: &[u8],
) -> dfcache_wire::pb::dfdaemon::write_persistent_cache_task_request::Response {
    use dfcache_wire::pb::dfdaemon::write_persistent_cache_task_request::Response;
    Response::WriteChunkRequest(dfcache_wire::pb::dfdaemon::WriteChunkRequest {
        content: bytes::Bytes::copy_from_slice(data),
    })
}

/// The raw write message that ends a stream.
pub fn finished() -> dfcache_wire::pb::dfdaemon::write_persistent_cache_task_request::Response {
    use dfcache_wire::pb::dfdaemon::write_persistent_cache_task_request::Response;
    Response::WritePersistentCacheTaskFinishedRequest(
        dfcache_wire::pb::dfdaemon::WritePersistentCacheTaskFinishedRequest {},
    )
}

/// A raw `ReadPersistentCacheTask` stream of a whole task.
pub type ReadStream = tonic::Streaming<dfcache_wire::pb::dfdaemon::ReadPersistentCacheTaskResponse>;

impl Running {
    /// Opens a raw read of the whole task `id`.
    pub async fn read_stream(&self, id: &str) -> ReadStream {
        self.raw()
            .read_persistent_cache_task(
                dfcache_wire::pb::dfdaemon::ReadPersistentCacheTaskRequest {
                    task_id: id.to_string(),
                    ..Default::default()
                },
            )
            .await
            .expect("open a read")
            .into_inner()
    }
}

/// Reads `stream` to its end, appending its chunks to `got`.
pub async fn drain(mut stream: ReadStream, mut got: Vec<u8>) -> Vec<u8> {
    use dfcache_wire::pb::dfdaemon::read_persistent_cache_task_response::Response;
    use tokio_stream::StreamExt;
    while let Some(item) = stream.next().await {
        if let Some(Response::ReadChunkResponse(c)) = item.expect("read a chunk").response {
            got.extend_from_slice(&c.content);
        }
    }
    got
}
