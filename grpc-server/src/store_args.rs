//! Command-line flags choosing the datastore, shared by every brindle server binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::{EtcdConfig, EtcdTls, Store, StoreConfig};
use clap::Args;

use crate::ServeError;

/// Where the datastore is: an embedded file by default, etcd when endpoints are given.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Path of the embedded store file (single-node default).
    #[arg(
        long,
        env = "BRINDLE_STORE_PATH",
        default_value = "/var/lib/brindle/store.redb"
    )]
    pub store_path: PathBuf,
    /// Comma-separated etcd client URLs; switches the datastore to etcd.
    #[arg(long, env = "BRINDLE_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// CA bundle (PEM) that signed etcd's server certificates.
    #[arg(long, env = "BRINDLE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "BRINDLE_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Client private key (PEM) for etcd.
    #[arg(long, env = "BRINDLE_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Timeout of one etcd request, in seconds.
    #[arg(long, default_value_t = 5)]
    pub etcd_request_timeout: u64,
}

impl StoreArgs {
    /// Opens the datastore these flags select.
    pub async fn open(&self) -> Result<Arc<dyn Store>, ServeError> {
        let config = self.config();
        brindle_datastore::open(&config)
            .await
            .map_err(|source| ServeError::Datastore {
                config: format!("{config:?}"),
                source,
            })
    }

    /// The datastore these flags select.
    fn config(&self) -> StoreConfig {
        if self.etcd_endpoints.is_empty() {
            return StoreConfig::Embedded {
                path: self.store_path.clone(),
            };
        }
        let mut etcd = EtcdConfig::new(self.etcd_endpoints.clone());
        etcd.request_timeout = Duration::from_secs(self.etcd_request_timeout);
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
