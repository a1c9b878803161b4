//! Snapshot + delta streaming of keyed state to many subscribers, shared by route-svc and
//! policy-svc.
//!
//! A [`Fanout`] holds keyed state at a revision (the datastore revision it was built from, so
//! replicas watching the same datastore agree); each value beside its key or, when it is shared
//! and carries its key, alone ([`Storage`]). Changes are published with their revision,
//! coalesced per key and flushed as [`Batch`]es (bounded count and time) into a bounded history
//! every subscriber walks at its own pace. A subscriber starts with the snapshot (encoded and
//! compressed once per revision, shared by all) or, when it names a revision still covered by the
//! history, with only the batches after it. A [`session`] drives one subscriber over any transport:
//! hello first, acks and keepalives both ways, eviction of a subscriber that falls behind or stops
//! reading. [`Mirror`] is the subscriber's side: the state it applied and its revision.

mod config;
mod error;
mod hub;
mod mirror;
pub mod session;
mod snapshot;
mod state;
mod subscription;

pub use config::FanoutConfig;
pub use error::FanoutError;
pub use hub::{Batch, Change, Fanout, Key, SubscriberStatus, WeakFanout};
pub use mirror::Mirror;
pub use snapshot::{
    Codec, EncodedSnapshot, EncodedState, Frame, MAX_SNAPSHOT_BYTES, SnapshotData, SnapshotEncoder,
};
pub use state::{KeyInValue, OwnKey, Paired, State, Storage};
pub use subscription::{Start, Subscription};
