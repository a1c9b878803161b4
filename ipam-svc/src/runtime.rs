//! Flags and wiring of the `ipam-svc` binary: open the datastore, serve `brindle.ipam.v1` with
//! health and reflection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use brindle_datastore::{EtcdConfig, EtcdTls, StoreConfig};
use clap::Parser;
use tonic::service::RoutesBuilder;

use crate::core::Ipam;
use crate::grpc::{IpamService, SERVICE_NAME};

/// brindle's IP address management service.
#[derive(Debug, Parser)]
#[command(name = "ipam-svc", version, about)]
pub struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "IPAM_SVC_LISTEN", default_value = "0.0.0.0:7401")]
    pub listen: SocketAddr,
    /// Comma-separated etcd client URLs (the scale-out deployment).
    #[arg(
        long,
        env = "BRINDLE_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required_unless_present = "store_path"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Embedded store file instead of etcd (single process only).
    #[arg(long, env = "BRINDLE_STORE_PATH", conflicts_with = "etcd_endpoints")]
    pub store_path: Option<PathBuf>,
    /// CA bundle (PEM) that signed etcd's server certificates.
    #[arg(long, env = "BRINDLE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "BRINDLE_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Client private key (PEM) for etcd.
    #[arg(long, env = "BRINDLE_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Log lines as JSON.
    #[arg(long)]
    pub log_json: bool,
}

impl Args {
    fn store(&self) -> StoreConfig {
        if let Some(path) = &self.store_path {
            return StoreConfig::Embedded { path: path.clone() };
        }
        let mut etcd = EtcdConfig::new(self.etcd_endpoints.clone());
        etcd.request_timeout = Duration::from_secs(5);
        if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
            etcd.tls = Some(EtcdTls {
                ca: self.etcd_ca.clone(),
                cert: self.etcd_cert.clone(),
                key: self.etcd_key.clone(),
            });
        }
        StoreConfig::Etcd(etcd)
    }
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    brindle_grpc_server::init_logging(args.log_json).map_err(anyhow::Error::msg)?;
    let config = args.store();
    let store = brindle_datastore::open(&config)
        .await
        .with_context(|| format!("opening the datastore ({config:?})"))?;
    let ipam = Arc::new(Ipam::new(Arc::clone(&store)));
    let mut routes = RoutesBuilder::default();
    routes.add_service(IpamService::new(ipam).into_server());
    brindle_grpc_server::serve(args.listen, routes, &[SERVICE_NAME], store).await?;
    Ok(())
}
