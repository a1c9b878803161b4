//! `policy-svc`: serves brindle's network policy objects, per-node policy views and trace over gRPC.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    policy_svc::runtime::run(policy_svc::runtime::Args::parse()).await
}
