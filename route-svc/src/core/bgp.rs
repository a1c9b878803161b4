//! The BGP configuration and peers in the datastore: written by administrators, read back, and
//! (through the watcher, like every routing record) streamed to every node.

use std::sync::Arc;

use brindle_datastore::{Store, StoreError, Txn};
use route_api::bgp::{self, BgpConfiguration, BgpPeer};

use super::derive::{CorruptRecord, decode};

/// Why a BGP object could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// A stored object does not decode.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// The peer is not there.
    #[error("no BGP peer {0:?}")]
    NoPeer(String),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The BGP objects of a datastore.
#[derive(Clone)]
pub struct BgpObjects {
    store: Arc<dyn Store>,
}

impl BgpObjects {
    /// The BGP objects of `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    async fn put<T: serde::Serialize>(&self, key: String, value: &T) -> Result<(), BgpError> {
        let value = serde_json::to_vec(value).unwrap_or_default();
        self.store.txn(Txn::new().put(key, value)).await?;
        Ok(())
    }

    /// Replaces the configuration.
    pub async fn set_configuration(&self, configuration: &BgpConfiguration) -> Result<(), BgpError> {
        self.put(bgp::CONFIGURATION_KEY.to_owned(), configuration).await
    }

    /// The configuration (the defaults when none was set).
    pub async fn configuration(&self) -> Result<BgpConfiguration, BgpError> {
        match self.store.get(bgp::CONFIGURATION_KEY).await? {
            Some(kv) => Ok(decode(bgp::CONFIGURATION_KEY, &kv.value)?),
            None => Ok(BgpConfiguration::default()),
        }
    }

    /// Creates or replaces a peer.
    pub async fn apply_peer(&self, peer: &BgpPeer) -> Result<(), BgpError> {
        self.put(bgp::peer_key(&peer.name), peer).await
    }

    /// Every peer, by name.
    pub async fn peers(&self) -> Result<Vec<BgpPeer>, BgpError> {
        let listed = self.store.list(bgp::PEERS_PREFIX).await?;
        Ok(listed
            .kvs
            .iter()
            .map(|kv| decode(&kv.key, &kv.value))
            .collect::<Result<_, _>>()?)
    }

    /// Deletes a peer (NoPeer when there is none).
    pub async fn delete_peer(&self, name: &str) -> Result<(), BgpError> {
        let key = bgp::peer_key(name);
        if self.store.get(&key).await?.is_none() {
            return Err(BgpError::NoPeer(name.to_owned()));
        }
        self.store.txn(Txn::new().delete(key)).await?;
        Ok(())
    }
}
