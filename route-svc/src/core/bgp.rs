//! The BGP configuration and peers in the datastore: written by administrators, read back, and
//! (through the watcher, like every routing record) streamed to every node.

use std::sync::Arc;

use brindle_datastore::{Store, StoreError, Txn};
use route_api::bgp::{self, BgpConfiguration, BgpPeer};

/// Why a BGP object could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// A stored object does not decode.
    #[error("record {key} does not decode: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// What is wrong.
        reason: String,
    },
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

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, BgpError> {
    serde_json::from_slice(value).map_err(|e| BgpError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
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
            Some(kv) => decode(bgp::CONFIGURATION_KEY, &kv.value),
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
        listed.kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
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
