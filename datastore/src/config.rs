//! Choosing and opening a backend from configuration (what the service mains call).

use std::path::PathBuf;
use std::sync::Arc;

use crate::embedded::EmbeddedStore;
use crate::error::StoreError;
use crate::etcd::{EtcdConfig, EtcdStore};
use crate::store::Store;

/// Which backend to use.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A redb file on this machine (the single-node default).
    Embedded {
        /// Path of the store file.
        path: PathBuf,
    },
    /// An etcd cluster.
    Etcd(EtcdConfig),
}

/// Opens the configured backend.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Embedded { path } => Arc::new(EmbeddedStore::open(path).await?),
        StoreConfig::Etcd(etcd) => Arc::new(EtcdStore::connect(etcd).await?),
    })
}
