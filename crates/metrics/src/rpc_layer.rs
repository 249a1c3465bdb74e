//! The daemon's RPCs by method and gRPC code, timed: a tower layer on the
//! gRPC server, so the handlers stay free of metrics. The method is the
//! last segment of the request path; the code is the `grpc-status` header
//! of the response, which tonic sets when a handler fails before any
//! message ("trailers-only"); a response without it started with OK (a
//! stream that fails later says so in its trailers, not counted here).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tower::{Layer, Service};

use super::daemon;
use super::labels::grpc_code_name;

const SERVICE_PREFIX: &str = "/dfdaemon.v2.DfdaemonDownload/";

/// The service's methods (proto/dfdaemon.proto). Any other path is
/// "other", so a client probing paths cannot grow the families.
const METHODS: [&str; 8] = [
    "WritePersistentCacheTask",
    "ReadPersistentCacheTask",
    "DownloadPersistentCacheTask",
    "UploadPersistentCacheTask",
    "StatPersistentCacheTask",
    "StatLocalPersistentCacheTask",
    "ListLocalPersistentCacheTasks",
    "DeletePersistentCacheTask",
];

fn method_of(path: &str) -> &'static str {
    path.strip_prefix(SERVICE_PREFIX)
        .and_then(|name| METHODS.iter().find(|m| **m == name))
        .copied()
        .unwrap_or("other")
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .map_or("OK", grpc_code_name),
                Err(_) => "Unknown",
            };
            daemon().rpc(method, code, started.elapsed());
            response
        })
    }
}
