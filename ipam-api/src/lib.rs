//! ipam-api: what a client of brindle's IPAM, or another service reading IPAM's records, needs —
//! the stored records and their pure logic (`model`), where they live in the datastore (`keys`)
//! and how handle ids are formed and recognised (`handles`). No server, no datastore client.

pub mod handles;
pub mod keys;
pub mod model;

/// A stored IPAM record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored record {key} is corrupt: {reason}")]
pub struct DecodeError {
    /// The record's key.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}
