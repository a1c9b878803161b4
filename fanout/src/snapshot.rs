//! Full-state snapshots: encoded by the service's encoder and compressed once per revision, then
//! shared by every subscriber that needs one.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::Key;

/// Turns the whole state into the service's wire encoding (e.g. a protobuf `RouteState`).
pub type SnapshotEncoder<V> = Arc<dyn Fn(&BTreeMap<Key, V>) -> Vec<u8> + Send + Sync>;

/// How [`EncodedSnapshot::data`] is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Not compressed.
    None,
    /// zstd.
    Zstd,
}

/// The state at one revision, encoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSnapshot {
    /// Revision of the state.
    pub revision: u64,
    /// Compression of `data`.
    pub codec: Codec,
    /// The (possibly compressed) encoding; cloning shares it.
    pub data: Bytes,
    /// Keys in the state.
    pub entries: u64,
    /// Size of the uncompressed encoding.
    pub raw_bytes: u64,
}

/// Largest snapshot a subscriber decompresses (a bound on what a bad `raw_bytes` can allocate).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// zstd level: fast, still a large ratio on repetitive keyed state.
const ZSTD_LEVEL: i32 = 3;

impl EncodedSnapshot {
    /// Encodes `state` with `encoder`, compressing when it is at least `compress_from` bytes.
    pub(crate) fn encode<V>(
        revision: u64,
        state: &BTreeMap<Key, V>,
        encoder: &SnapshotEncoder<V>,
        compress_from: usize,
    ) -> Self {
        let raw = encoder(state);
        let raw_bytes = raw.len() as u64;
        let (codec, data) = if raw.len() >= compress_from {
            match zstd::bulk::compress(&raw, ZSTD_LEVEL) {
                Ok(mut compressed) => {
                    // Allocated for the worst case (about the raw size); kept as long as the
                    // snapshot is, so only what it holds stays.
                    compressed.shrink_to_fit();
                    (Codec::Zstd, compressed)
                }
                Err(error) => {
                    tracing::warn!(%error, "compressing a snapshot failed; sending it uncompressed");
                    (Codec::None, raw)
                }
            }
        } else {
            (Codec::None, raw)
        };
        Self {
            revision,
            codec,
            data: Bytes::from(data),
            entries: state.len() as u64,
            raw_bytes,
        }
    }

    /// The uncompressed encoding (what the service's decoder reads).
    pub fn decompress(&self) -> std::io::Result<Vec<u8>> {
        match self.codec {
            Codec::None => Ok(self.data.to_vec()),
            Codec::Zstd if self.raw_bytes > MAX_SNAPSHOT_BYTES => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "snapshot claims {} bytes, more than the {MAX_SNAPSHOT_BYTES} allowed",
                    self.raw_bytes
                ),
            )),
            Codec::Zstd => zstd::bulk::decompress(&self.data, self.raw_bytes as usize),
        }
    }
}
