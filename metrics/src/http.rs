//! The HTTP endpoint: a small HTTP/1.1 server answering Prometheus scrapes (`/metrics`) and
//! readiness probes (`/healthz`).

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::Metrics;

/// The media type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound (in use, or not an address of this host).
    #[error("binding the metrics endpoint on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

/// Serves `metrics` at `http://<address>/metrics` from a background task; the bound address
/// (port 0 picks a free one).
pub async fn serve(address: SocketAddr, metrics: Metrics) -> Result<SocketAddr, MetricsError> {
    let bind_error = |source| MetricsError::Bind { address, source };
    let listener = TcpListener::bind(address).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    tracing::info!(address = %bound, "serving metrics at /metrics");
    tokio::spawn(accept(listener, metrics));
    Ok(bound)
}

async fn accept(listener: TcpListener, metrics: Metrics) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a metrics connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(&metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics connection ended");
            }
        });
    }
}

fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => reply(StatusCode::OK, CONTENT_TYPE, metrics.encode()),
        (&Method::GET, "/healthz") if metrics.ready() => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/healthz") => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        (&Method::GET, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "brindle serves /metrics and /healthz\n".into(),
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("response");
        response
    }

    #[tokio::test]
    async fn answers_scrapes_on_loopback() {
        let metrics = Metrics::new();
        metrics
            .counters("scrapes_seen", "test")
            .get_or_create(&Vec::new())
            .inc();
        let address = serve("127.0.0.1:0".parse().expect("address"), metrics.clone())
            .await
            .expect("serve");
        let response = get(address, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("brindle_scrapes_seen_total{} 1"), "{response}");
        assert!(get(address, "/other").await.starts_with("HTTP/1.1 404"));
        assert!(
            get(address, "/healthz").await.starts_with("HTTP/1.1 503"),
            "not ready at first"
        );
        metrics.set_ready(true);
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 200"));
        let taken = serve(address, Metrics::new()).await.expect_err("port in use");
        assert!(taken.to_string().contains(&address.to_string()), "{taken}");
    }
}
