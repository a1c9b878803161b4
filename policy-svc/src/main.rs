//! `policy-svc`: serves brindle's network policy objects, per-node policy views and trace over gRPC.

use brindle_grpc_server::ServiceArgs;
use policy_svc::runtime::{BINARY, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Ok(run(ServiceArgs::parse(&BINARY)).await?)
}
