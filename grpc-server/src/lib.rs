//! What every brindle service backed by the datastore shares: datastore flags, serving with
//! `grpc.health.v1` reporting NOT_SERVING while the datastore is unreachable and every caller held
//! to its limits (connections, silence, streams, calls per second), who is calling and what they
//! may do, datastore failures as status codes, and the server's side of fan-out `Sync`
//! streams. What any gRPC process shares (logging, TLS, health and reflection, shutdown) is
//! `brindle-grpc`'s.

pub mod auth;
mod incoming;
mod limits;
mod rate_limit;
mod service;
mod store_args;
mod store_status;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
mod transport_header;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::Store;
use brindle_grpc::{ServerTlsArgs, TlsError, Transport, add_health_and_reflection, shutdown_signal};
use brindle_metrics::{GrpcMetricsLayer, Metrics};
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use limits::{FIRST_BYTES_WITHIN, LimitArgs};
pub use service::{BootstrapPort, ServiceArgs, ServiceBinary, ServiceRoutes, run_service};
pub use store_args::StoreArgs;
pub use store_status::store_status;

/// How often the datastore is probed for the health status.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptor sets.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listen address could not be bound.
    #[error("listening on {address}: {source}")]
    Bind {
        /// Listen address.
        address: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// Serving on the address failed.
    #[error("serving gRPC on {address}: {source}")]
    Transport {
        /// Listen address.
        address: SocketAddr,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A bootstrap port was asked for without a server certificate.
    #[error("the bootstrap port needs the server's certificate (--tls-cert, --tls-key)")]
    BootstrapWithoutTls,
    /// The TLS flags name files that cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The datastore the flags select could not be opened.
    #[error("opening the datastore ({config}): {source}")]
    Datastore {
        /// What the flags selected.
        config: String,
        /// Why it failed.
        #[source]
        source: brindle_datastore::StoreError,
    },
    /// Logging could not be set up.
    #[error("{0}")]
    Logging(String),
    /// The metrics endpoint could not be served.
    #[error(transparent)]
    Metrics(#[from] brindle_metrics::MetricsError),
}

/// Serves `routes` (named `service_names`, fully qualified) on `address` with health (tied to the
/// datastore), reflection and call metrics until SIGINT or SIGTERM; with a TLS certificate, mTLS
/// only; plain text only on loopback, or where `--insecure-plaintext` accepts it (a warning and
/// `brindle_insecure_plaintext 1`); every caller held to `limits`.
pub async fn serve(
    address: SocketAddr,
    routes: RoutesBuilder,
    service_names: &[&str],
    store: Arc<dyn Store>,
    metrics: &Metrics,
    tls: &ServerTlsArgs,
    limits: &LimitArgs,
) -> Result<(), ServeError> {
    let transport = tls.transport(address)?;
    metrics
        .gauges(
            "insecure_plaintext",
            "1 while this server speaks plain text on the network (--insecure-plaintext): every caller is trusted",
        )
        .get_or_create(&Vec::new())
        .set(i64::from(transport == Transport::InsecurePlaintext));
    if transport == Transport::InsecurePlaintext {
        tracing::warn!(%address, "serving plain text on the network (--insecure-plaintext): anyone who reaches this address can change pools, routes and policies");
    }
    let listener = bind(address).await?;
    // The port bound (the one asked for, or the kernel's choice for port 0).
    let address = listener.local_addr().unwrap_or(address);
    let limited = metrics.counters(
        "limited",
        "Connections and calls refused by a per-caller limit, by limit",
    );
    let mut server =
        tonic::transport::Server::builder().max_concurrent_streams(limits.max_streams_per_connection);
    if let Some(config) = tls.config()? {
        server = server
            .tls_config(config)
            .map_err(|source| ServeError::Transport { address, source })?;
    }
    let mut routes = routes;
    let health = add_health_and_reflection(&mut routes, service_names)?;
    let probe = tokio::spawn(probe_datastore(
        store,
        health,
        service_names.iter().map(|s| (*s).to_owned()).collect(),
        metrics.clone(),
    ));
    tracing::info!(%address, services = ?service_names, transport = transport.describe(), "serving gRPC");
    let served = server
        .layer(GrpcMetricsLayer::new(metrics))
        .layer(rate_limit::RateLimitLayer::new(
            limits.requests_per_second,
            limited.clone(),
        ))
        .layer(transport_header::transport_header_layer::<tonic::body::Body>(
            transport,
        ))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming::guarded(listener, limits, limited), shutdown_signal())
        .await;
    probe.abort();
    served.map_err(|source| ServeError::Transport { address, source })
}

/// Serves `served` — its main port on `address` as [`serve`] does, and its bootstrap port, if
/// any, as [`serve_bootstrap`] does — until SIGINT or SIGTERM.
pub async fn serve_routes(
    address: SocketAddr,
    served: ServiceRoutes,
    store: Arc<dyn Store>,
    metrics: &Metrics,
    tls: &ServerTlsArgs,
    limits: &LimitArgs,
) -> Result<(), ServeError> {
    let main = serve(address, served.routes, &served.names, store, metrics, tls, limits);
    match served.bootstrap {
        Some(bootstrap) => {
            let bootstrap = serve_bootstrap(bootstrap.listen, bootstrap.routes, metrics, tls, limits);
            tokio::try_join!(main, bootstrap).map(|_| ())
        }
        None => main.await,
    }
}

async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })
}

/// Serves `routes` on `address` over TLS that asks callers for no certificate — the bootstrap
/// port, for services that authenticate callers themselves (a join token) — until SIGINT or
/// SIGTERM, every caller held to `limits` (refusals in `brindle_bootstrap_limited_total`).
pub async fn serve_bootstrap(
    address: SocketAddr,
    routes: RoutesBuilder,
    metrics: &Metrics,
    tls: &ServerTlsArgs,
    limits: &LimitArgs,
) -> Result<(), ServeError> {
    let config = tls.server_only_config()?.ok_or(ServeError::BootstrapWithoutTls)?;
    let listener = bind(address).await?;
    let address = listener.local_addr().unwrap_or(address);
    let limited = metrics.counters(
        "bootstrap_limited",
        "Connections and calls to the bootstrap port refused by a per-caller limit, by limit",
    );
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .tls_config(config)
        .map_err(|source| ServeError::Transport { address, source })?;
    tracing::info!(%address, "serving the bootstrap port (TLS, no client certificates)");
    server
        .layer(rate_limit::RateLimitLayer::new(
            limits.requests_per_second,
            limited.clone(),
        ))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming::guarded(listener, limits, limited), shutdown_signal())
        .await
        .map_err(|source| ServeError::Transport { address, source })
}

/// Reports SERVING (overall and per service, and ready on `/healthz`) while the datastore answers,
/// NOT_SERVING otherwise.
async fn probe_datastore(
    store: Arc<dyn Store>,
    health: HealthReporter,
    services: Vec<String>,
    metrics: Metrics,
) {
    let datastore_up = metrics.gauges(
        "datastore_up",
        "1 while the datastore answers, 0 while it does not (health reports NOT_SERVING then)",
    );
    let mut reported = None;
    loop {
        let status = match store.revision().await {
            Ok(_) => ServingStatus::Serving,
            Err(error) => {
                tracing::warn!(%error, "datastore unreachable");
                ServingStatus::NotServing
            }
        };
        datastore_up
            .get_or_create(&Vec::new())
            .set(i64::from(status == ServingStatus::Serving));
        metrics.set_ready(status == ServingStatus::Serving);
        if reported != Some(status) {
            health.set_service_status("", status).await;
            for service in &services {
                health.set_service_status(service, status).await;
            }
            reported = Some(status);
        }
        tokio::time::sleep(HEALTH_PROBE_INTERVAL).await;
    }
}
