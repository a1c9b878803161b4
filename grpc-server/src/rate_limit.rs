//! A tower layer that holds each caller — a client certificate's identity, or without TLS a
//! source address — to a number of calls per second (a token bucket with bursts of twice as many);
//! beyond it a call fails with RESOURCE_EXHAUSTED naming the caller and the limit.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use brindle_metrics::Counters;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::auth::Caller;

/// Buckets kept before full ones (callers quiet for a while) are forgotten.
const MAX_BUCKETS: usize = 65_536;

/// Who a call is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CallerKey {
    /// A client certificate, by a hash of its DER bytes.
    Certificate(u64),
    /// A source address (no TLS).
    Address(IpAddr),
    /// Neither is known (a test transport).
    Unknown,
}

/// One caller's tokens.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The shared state of every connection's limiter.
#[derive(Debug)]
struct Buckets {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<CallerKey, Bucket>>,
}

impl Buckets {
    /// Takes one token of `key`'s; `false` when it has none left.
    fn take(&self, key: CallerKey) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_second < burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Holds every caller to `per_second` calls per second.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    buckets: Arc<Buckets>,
    limited: Counters,
}

impl RateLimitLayer {
    /// `per_second` calls per second per caller, bursts of twice as many; refusals counted in
    /// `limited` (label `limit`).
    pub fn new(per_second: u32, limited: Counters) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            buckets: Arc::new(Buckets {
                per_second,
                burst: 2.0 * per_second,
                buckets: Mutex::new(HashMap::new()),
            }),
            limited,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service wrapped by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimited<S> {
    inner: S,
    layer: RateLimitLayer,
}

/// Who made `request`, for counting (and, when refused, for naming).
fn caller_of<B>(request: &Request<B>) -> (CallerKey, Option<Vec<u8>>) {
    let extensions = request.extensions();
    if let Some(tls) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
        if let Some(certificate) = tls.peer_certs().as_ref().and_then(|c| c.first().cloned()) {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            certificate.as_ref().hash(&mut hasher);
            return (
                CallerKey::Certificate(hasher.finish()),
                Some(certificate.to_vec()),
            );
        }
        if let Some(address) = tls.get_ref().remote_addr() {
            return (CallerKey::Address(address.ip()), None);
        }
    }
    match extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
    {
        Some(address) => (CallerKey::Address(address.ip()), None),
        None => (CallerKey::Unknown, None),
    }
}

/// How a refused caller is named.
fn describe(key: &CallerKey, certificate: Option<&[u8]>) -> String {
    match (key, certificate.map(Caller::from_certificate)) {
        (_, Some(Ok(Caller::Node(node)))) => format!("node {node:?}"),
        (_, Some(Ok(Caller::Admin(admin)))) => format!("administrator {admin:?}"),
        (CallerKey::Address(address), _) => format!("address {address}"),
        _ => "this caller".to_owned(),
    }
}

impl<S, B> Service<Request<B>> for RateLimited<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (key, certificate) = caller_of(&request);
        if self.layer.buckets.take(key.clone()) {
            return Box::pin(self.inner.call(request));
        }
        self.layer
            .limited
            .get_or_create(&vec![("limit", "requests_per_second".to_owned())])
            .inc();
        let status = tonic::Status::resource_exhausted(format!(
            "{} exceeded {} calls per second (--requests-per-second); retry later",
            describe(&key, certificate.as_deref()),
            self.layer.buckets.per_second
        ));
        Box::pin(std::future::ready(Ok(status.into_http())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_burst_then_its_rate() {
        let layer = RateLimitLayer::new(10, Counters::default());
        let key = CallerKey::Address(IpAddr::from([192, 0, 2, 1]));
        let granted = (0..100).filter(|_| layer.buckets.take(key.clone())).count();
        // 20 at once, and at most a token or two more while the loop ran.
        assert!((20..=22).contains(&granted), "{granted}");
        // Another caller is not held back by the first.
        assert!(
            layer
                .buckets
                .take(CallerKey::Address(IpAddr::from([192, 0, 2, 2])))
        );
    }
}
