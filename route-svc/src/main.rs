//! `route-svc`: serves brindle's node registry and routing-state stream over gRPC.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    route_svc::runtime::run(route_svc::runtime::Args::parse()).await
}
