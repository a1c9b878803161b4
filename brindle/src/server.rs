//! `brindle server`: opens the datastore and serves the control plane's gRPC endpoint.

use anyhow::Context;
use tonic::service::RoutesBuilder;

use crate::cli::ServerArgs;

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let config = args.store.config();
    let store = brindle_datastore::open(&config)
        .await
        .with_context(|| format!("opening the datastore ({config:?})"))?;
    brindle_grpc_server::serve(args.listen, RoutesBuilder::default(), &[], store).await?;
    tracing::info!("brindle server stopped");
    Ok(())
}
