//! `brindle server`: opens the datastore and serves the control plane's gRPC endpoint with health
//! (NOT_SERVING while the datastore is unreachable) and server reflection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use brindle_datastore::Store;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::cli::ServerArgs;

/// How often the datastore is probed for the health status.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let config = args.store.config();
    let store = brindle_datastore::open(&config)
        .await
        .with_context(|| format!("opening the datastore ({config:?})"))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    // Both reflection versions: grpcurl before 1.8.8 only speaks v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(brindle_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the v1alpha reflection service")?;
    tokio::spawn(probe_datastore(Arc::clone(&store), health));
    tracing::info!(listen = %args.listen, "brindle server listening");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_shutdown(args.listen, shutdown_signal())
        .await
        .with_context(|| format!("serving gRPC on {}", args.listen))?;
    tracing::info!("brindle server stopped");
    Ok(())
}

/// Reports SERVING while the datastore answers and NOT_SERVING while it does not.
async fn probe_datastore(store: Arc<dyn Store>, health: HealthReporter) {
    let mut serving = None;
    loop {
        let status = match store.revision().await {
            Ok(_) => ServingStatus::Serving,
            Err(error) => {
                tracing::warn!(%error, "datastore unreachable");
                ServingStatus::NotServing
            }
        };
        if serving != Some(status) {
            health.set_service_status("", status).await;
            serving = Some(status);
        }
        tokio::time::sleep(HEALTH_PROBE_INTERVAL).await;
    }
}

async fn shutdown_signal() {
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
