//! `ipam-svc`: serves brindle's IP address management over gRPC.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ipam_svc::runtime::run(ipam_svc::runtime::Args::parse()).await
}
