//! A snapshot's pieces put together again on the subscriber's side, refusing pieces that do not
//! continue the snapshot being received.

use brindle_fanout::{Codec, EncodedSnapshot, MAX_SNAPSHOT_BYTES};
use brindle_proto::common::v1 as pb;

/// Why snapshot pieces cannot be put together.
#[derive(Debug, thiserror::Error)]
pub enum PieceError {
    /// The codec is not one this subscriber knows.
    #[error("snapshot.codec: unknown codec {0}")]
    UnknownCodec(i32),
    /// A piece does not continue where the previous one ended, or belongs to another snapshot
    /// (another revision, codec or size).
    #[error(
        "snapshot.offset: piece at {offset} of revision {revision}, expected {expected} of revision {expected_revision}"
    )]
    OutOfOrder {
        /// The piece's offset.
        offset: u64,
        /// Its revision.
        revision: u64,
        /// The offset expected.
        expected: u64,
        /// The revision expected.
        expected_revision: u64,
    },
    /// The pieces add up to more than the snapshot's stated size, or more than is allowed.
    #[error("snapshot.total_bytes: {0}")]
    Size(String),
}

/// Puts a snapshot's pieces together on the subscriber's side.
#[derive(Debug, Default)]
pub struct SnapshotAssembler {
    pending: Option<PendingSnapshot>,
}

/// The snapshot being received: what its first piece said, and the bytes so far.
#[derive(Debug)]
struct PendingSnapshot {
    revision: u64,
    codec: i32,
    total: u64,
    entries: u64,
    raw_bytes: u64,
    data: Vec<u8>,
}

impl SnapshotAssembler {
    /// Adds a piece of the snapshot at `revision`; returns the snapshot once it is whole. A piece
    /// that does not continue the snapshot being received (offset, revision, codec, sizes) is
    /// refused, and the next snapshot starts from scratch.
    pub fn add(
        &mut self,
        revision: u64,
        piece: pb::EncodedSnapshot,
    ) -> Result<Option<EncodedSnapshot>, PieceError> {
        let codec = match pb::Codec::try_from(piece.codec) {
            Ok(pb::Codec::Zstd) => Codec::Zstd,
            Ok(pb::Codec::None | pb::Codec::Unspecified) => Codec::None,
            Err(_) => return Err(PieceError::UnknownCodec(piece.codec)),
        };
        // A whole snapshot in one message (total_bytes 0, from servers that do not split).
        let total = if piece.total_bytes == 0 {
            piece.data.len() as u64
        } else {
            piece.total_bytes
        };
        if total > MAX_SNAPSHOT_BYTES {
            self.pending = None;
            return Err(PieceError::Size(format!(
                "{total} bytes, more than the {MAX_SNAPSHOT_BYTES} allowed"
            )));
        }
        let pending = self.pending.take().unwrap_or(PendingSnapshot {
            revision,
            codec: piece.codec,
            total,
            entries: piece.entries,
            raw_bytes: piece.raw_bytes,
            data: Vec::new(),
        });
        let expected = pending.data.len() as u64;
        let continues = piece.offset == expected
            && revision == pending.revision
            && (piece.codec, total, piece.entries, piece.raw_bytes)
                == (pending.codec, pending.total, pending.entries, pending.raw_bytes);
        if !continues {
            return Err(PieceError::OutOfOrder {
                offset: piece.offset,
                revision,
                expected,
                expected_revision: pending.revision,
            });
        }
        let mut pending = pending;
        pending.data.extend_from_slice(&piece.data);
        let received = pending.data.len() as u64;
        if received > total {
            return Err(PieceError::Size(format!(
                "pieces hold {received} bytes, the snapshot {total}"
            )));
        }
        if received < total {
            self.pending = Some(pending);
            return Ok(None);
        }
        Ok(Some(EncodedSnapshot {
            revision,
            codec,
            data: pending.data.into(),
            entries: pending.entries,
            raw_bytes: pending.raw_bytes,
        }))
    }
}
