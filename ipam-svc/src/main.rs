//! `ipam-svc`: serves brindle's IP address management over gRPC.

use brindle_grpc_server::ServiceArgs;
use ipam_svc::runtime::{BINARY, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Ok(run(ServiceArgs::parse(&BINARY)).await?)
}
