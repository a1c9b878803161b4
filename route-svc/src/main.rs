//! `route-svc`: serves brindle's node registry and routing-state stream over gRPC.

use brindle_grpc_server::ServiceArgs;
use route_svc::runtime::{BINARY, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Ok(run(ServiceArgs::parse(&BINARY)).await?)
}
