//! What every brindle gRPC server shares: datastore flags, logging setup, `grpc.health.v1`
//! reporting NOT_SERVING while the datastore is unreachable, server reflection (v1 and v1alpha)
//! limited to the services actually served, shutdown on SIGINT/SIGTERM, and the gRPC side of
//! fan-out `Sync` streams.

pub mod auth;
mod store_args;
mod store_status;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::Store;
use brindle_metrics::{GrpcMetricsLayer, Metrics};
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use store_args::StoreArgs;
pub use store_status::store_status;
pub use tls::{ClientTlsArgs, ServerTlsArgs};

/// How often the datastore is probed for the health status.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptor sets.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Binding or serving on the address failed.
    #[error("serving gRPC on {address}: {source}")]
    Transport {
        /// Listen address.
        address: SocketAddr,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS flags name files that cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The datastore the flags select could not be opened.
    #[error("opening the datastore ({config}): {source}")]
    Datastore {
        /// What the flags selected.
        config: String,
        /// Why it failed.
        #[source]
        source: brindle_datastore::StoreError,
    },
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The logging flag every brindle binary takes (filter from `RUST_LOG`, default `info`).
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, global = true, env = "BRINDLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Sets up `tracing` logs on stderr.
    pub fn init(&self) -> Result<(), String> {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Colours only on a terminal: log files and journald get plain text.
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Json => logs.json().try_init(),
            LogFormat::Text => logs.try_init(),
        }
        .map_err(|e| format!("initialising logging: {e}"))
    }
}

/// Adds `grpc.health.v1` and server reflection (v1 and v1alpha, limited to `service_names` and
/// themselves) to `routes`; returns the health reporter.
pub fn add_health_and_reflection(
    routes: &mut RoutesBuilder,
    service_names: &[&str],
) -> Result<HealthReporter, ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let names: Vec<&str> = service_names
        .iter()
        .copied()
        .chain([
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ])
        .collect();
    let reflection = || {
        names.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(brindle_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };
    // Both reflection versions: grpcurl before 1.8.8 only speaks v1alpha.
    routes
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok(health)
}

/// Serves `routes` (named `service_names`, fully qualified) on `address` with health (tied to the
/// datastore), reflection and call metrics until SIGINT or SIGTERM; with a TLS certificate, mTLS only.
pub async fn serve(
    address: SocketAddr,
    routes: RoutesBuilder,
    service_names: &[&str],
    store: Arc<dyn Store>,
    metrics: &Metrics,
    tls: &ServerTlsArgs,
) -> Result<(), ServeError> {
    let mut server = tonic::transport::Server::builder();
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
    tracing::info!(%address, services = ?service_names, mtls = tls.tls_cert.is_some(), "serving gRPC");
    let served = server
        .layer(GrpcMetricsLayer::new(metrics))
        .add_routes(routes.routes())
        .serve_with_shutdown(address, shutdown_signal())
        .await;
    probe.abort();
    served.map_err(|source| ServeError::Transport { address, source })
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

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate.recv() => {}
    }
}
