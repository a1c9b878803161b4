//! `ipam-svc`: serves brindle's IP address management over gRPC.

use brindle_grpc_server::ServiceArgs;
use brindle_identity::SigningArgs;
use ipam_svc::runtime::{BINARY, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (args, signing) = ServiceArgs::parse_with::<SigningArgs>(&BINARY);
    run(args, signing).await
}
