//! What every brindle process that speaks gRPC shares, server or client: the logging flag, TLS
//! flags and configuration (servers' and clients'), `grpc.health.v1` and server reflection for a
//! server's routes, shutdown on SIGINT/SIGTERM, and client certificates that rotate under running
//! channels ([`Dialer`], [`ClientIdentity`]). No datastore: the node agent and the CLI use it as
//! the services do.

pub mod client_identity;
mod dialer;
pub mod tls;

use tonic::service::RoutesBuilder;
use tonic_health::server::HealthReporter;

pub use client_identity::{ClientIdentity, IdentityConnector};
pub use dialer::Dialer;
pub use tls::{ClientTlsArgs, ServerTlsArgs, TRANSPORT_HEADER, TlsError, Transport};

/// Largest answer brindle's clients read (tonic's default is 4 MiB). Answers grow with the
/// cluster: a node's first policy view, every pod kube-sync lists at 150,000 pods, an `ipam check`
/// of a cluster whose handles were lost — each can pass 4 MiB, and each is needed most when large.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

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
) -> Result<HealthReporter, tonic_reflection::server::Error> {
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
