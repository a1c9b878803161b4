//! `kube-sync`: mirrors the Kubernetes API into brindle's services.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kube_sync::runtime::run(kube_sync::runtime::Args::parse()).await
}
