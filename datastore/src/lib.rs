//! brindle's datastore: one [`Store`] trait (get, list, compare-and-swap transactions, ordered
//! resumable watches, leases) with two backends — [`EmbeddedStore`] (redb, the single-node default)
//! and [`EtcdStore`] (real clusters).
//!
//! Every write in brindle is a [`Txn`] whose [`Compare`]s pin the mod-revision of what it read; a
//! failed compare is a typed [`StoreError::Conflict`] the caller retries with a backoff. Watches
//! yield one [`WatchBatch`] per revision, resume exactly after a given revision, and report
//! [`StoreError::Compacted`] when that history is gone (the caller then re-lists).

mod config;
mod embedded;
mod error;
mod etcd;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod types;

pub use config::{StoreConfig, open};
pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use etcd::{EtcdConfig, EtcdStore, EtcdTls};
pub use store::{Store, WatchStream};
pub use types::{
    Compare, EventKind, KeyValue, LeaseId, ListResult, MAX_REQUEST_BYTES, MAX_TXN_OPS, Op, Revision, Txn,
    WatchBatch, WatchEvent, prefix_end,
};
