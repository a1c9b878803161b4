//! Test support, enabled by the `testing` feature: a throw-away etcd server, and a store whose
//! watchers fall behind a compaction.

mod compaction;
mod etcd_server;

pub use compaction::CompactedAfterFirstList;
pub use etcd_server::{EtcdServer, ServerTls, free_port};
