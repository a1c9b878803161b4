//! `node-agent`: brindle's per-node agent.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    node_agent::runtime::run(node_agent::runtime::Args::parse()).await
}
