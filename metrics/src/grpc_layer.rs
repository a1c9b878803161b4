//! A tower layer for gRPC servers: every call counted by service, method and status code
//! (`brindle_grpc_requests_total`) and timed until the response starts
//! (`brindle_grpc_request_duration_seconds`; for streams, until the stream opens). Calls to paths
//! the server does not route share one label, so callers cannot create series at will.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::{Request, Response};
use tower::{Layer, Service};

use crate::{Counters, Histograms, LATENCY_BUCKETS, Metrics, labels};

/// The service and method label of calls to paths the server does not route.
pub const UNROUTED: &str = "unrouted";

/// Adds call metrics to a server's routes.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    requests: Counters,
    durations: Histograms,
}

impl GrpcMetricsLayer {
    /// Registers the call metrics with `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            requests: metrics.counters(
                "grpc_requests",
                "gRPC calls answered, by service, method and status code",
            ),
            durations: metrics.histograms(
                "grpc_request_duration_seconds",
                "Time from a gRPC call's arrival to the start of its response",
                LATENCY_BUCKETS,
            ),
        }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service wrapped by [`GrpcMetricsLayer`].
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

impl<S, B, R> Service<Request<B>> for GrpcMetricsService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (service, method) = match request.uri().path().trim_start_matches('/').split_once('/') {
            Some((service, method)) => (service.to_owned(), method.to_owned()),
            None => ("unknown".to_owned(), request.uri().path().to_owned()),
        };
        let started = Instant::now();
        let layer = self.layer.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            // Errors end calls trailers-only: the status is a header. Without one the call
            // succeeded so far (a unary call's OK comes in the trailers).
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u8>().ok())
                    .map_or("OK", code_name),
                Err(_) => "Unavailable",
            };
            // A path the server does not route is answered UNIMPLEMENTED: its name comes from
            // the caller, so it is counted under one label instead of a series of its own (as
            // is a call that failed before any routing answered it).
            let (service, method) = if response.is_err() || code == "Unimplemented" {
                (UNROUTED.to_owned(), UNROUTED.to_owned())
            } else {
                (service, method)
            };
            layer
                .requests
                .get_or_create(&labels([
                    ("service", &service),
                    ("method", &method),
                    ("code", code),
                ]))
                .inc();
            layer
                .durations
                .get_or_create(&labels([("service", &service), ("method", &method)]))
                .observe(started.elapsed().as_secs_f64());
            response
        })
    }
}

/// The name of a gRPC status code.
fn code_name(code: u8) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Cancelled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(usize::from(code)).copied().unwrap_or("Unknown")
}
