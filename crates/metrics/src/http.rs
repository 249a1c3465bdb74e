//! The `/metrics` endpoint: HTTP/1 with hyper (already in the dependency
//! tree through tonic), one task per connection, the registry encoded per
//! scrape by prometheus-client's OpenMetrics text encoder.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Work done right before each scrape, for values read rather than counted
/// (a store's task count, a disk's free space).
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The endpoint, serving until dropped.
pub struct MetricsServer {
    /// Where it listens (the port chosen when asked for port 0).
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Endpoint {
    registry: Registry,
    refresh: Vec<Refresh>,
}

/// Listens on `addr` (HOST:PORT) and serves `registry` at `/metrics`.
pub async fn serve_metrics(
    addr: &str,
    registry: Registry,
    refresh: Vec<Refresh>,
) -> Result<MetricsServer, MetricsError> {
    let bind_error = |source| MetricsError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let endpoint = Arc::new(Endpoint { registry, refresh });
    let task = tokio::spawn(accept(listener, endpoint));
    info!(%local_addr, "metrics at http://{local_addr}/metrics");
    Ok(MetricsServer { local_addr, task })
}

async fn accept(listener: TcpListener, endpoint: Arc<Endpoint>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: the endpoint must
                // not spin, nor take the mount down with it.
                warn!(error = %e, "cannot accept a metrics connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&endpoint, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn respond<B>(endpoint: &Endpoint, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "metrics are at /metrics\n");
    }
    for refresh in &endpoint.refresh {
        refresh();
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &endpoint.registry) {
        warn!(error = %e, "cannot encode the metrics");
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
