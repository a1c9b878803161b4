//! Full-state snapshots: encoded by the service's encoder and compressed once per revision, then
//! shared by every subscriber that needs one. An encoder may hand over pieces it compressed once
//! for many snapshots ([`Frame`]s): zstd decodes concatenated frames as one stream, and each
//! snapshot holds such a frame without copying it ([`SnapshotData`]).

use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::state::{Paired, State, Storage};

/// Turns the whole state into the service's wire encoding (e.g. a protobuf `RouteState`).
pub type SnapshotEncoder<V, S = Paired> = Arc<dyn Fn(&State<V, S>) -> EncodedState + Send + Sync>;

/// How [`EncodedSnapshot::data`] is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Not compressed.
    None,
    /// zstd.
    Zstd,
}

/// Part of an encoding compressed once as one zstd frame; cloning shares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    data: Bytes,
    raw_len: u64,
}

impl Frame {
    /// `raw`, compressed.
    pub fn compress(raw: &[u8]) -> io::Result<Self> {
        let mut data = zstd::bulk::compress(raw, ZSTD_LEVEL)?;
        // Allocated for the worst case (about the raw size); kept as long as the frame is, so
        // only what it holds stays.
        data.shrink_to_fit();
        Ok(Self {
            data: Bytes::from(data),
            raw_len: raw.len() as u64,
        })
    }

    /// Size of what it compresses.
    pub fn raw_len(&self) -> u64 {
        self.raw_len
    }

    /// Its compressed size.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether it holds no byte at all.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// One piece of an [`EncodedState`].
#[derive(Debug)]
enum Piece {
    Raw(Vec<u8>),
    Compressed(Frame),
}

/// A state's wire encoding as the concatenation of pieces, some of them possibly compressed
/// already.
#[derive(Debug, Default)]
pub struct EncodedState {
    pieces: Vec<Piece>,
    /// Entries of the encoding, when not one per key of the state.
    entries: Option<u64>,
}

impl From<Vec<u8>> for EncodedState {
    fn from(raw: Vec<u8>) -> Self {
        let mut state = Self::default();
        state.push_raw(raw);
        state
    }
}

impl EncodedState {
    /// Appends encoded bytes.
    pub fn push_raw(&mut self, raw: Vec<u8>) {
        match self.pieces.last_mut() {
            _ if raw.is_empty() => {}
            Some(Piece::Raw(last)) => last.extend_from_slice(&raw),
            _ => self.pieces.push(Piece::Raw(raw)),
        }
    }

    /// Says how many entries the encoding holds, when the state holds values that stand for
    /// several entries each (or none): a snapshot announces its encoding's entries.
    pub fn set_entries(&mut self, entries: u64) {
        self.entries = Some(entries);
    }

    /// Appends encoded bytes compressed already.
    pub fn push_frame(&mut self, frame: Frame) {
        self.pieces.push(Piece::Compressed(frame));
    }

    /// Size of the whole encoding, uncompressed.
    pub fn raw_len(&self) -> u64 {
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Raw(raw) => raw.len() as u64,
                Piece::Compressed(frame) => frame.raw_len,
            })
            .sum()
    }

    /// The whole encoding uncompressed (frames decompressed).
    fn into_raw(mut self) -> io::Result<Vec<u8>> {
        if let [Piece::Raw(raw)] = self.pieces.as_mut_slice() {
            return Ok(std::mem::take(raw));
        }
        let mut out = Vec::with_capacity(usize::try_from(self.raw_len()).unwrap_or(0));
        for piece in self.pieces {
            match piece {
                Piece::Raw(raw) => out.extend_from_slice(&raw),
                Piece::Compressed(frame) => out.extend_from_slice(&zstd::bulk::decompress(
                    &frame.data,
                    usize::try_from(frame.raw_len).unwrap_or(usize::MAX),
                )?),
            }
        }
        Ok(out)
    }

    /// The whole encoding compressed: raw pieces compressed, frames as they are (shared).
    fn compress(&self) -> io::Result<SnapshotData> {
        let mut data = SnapshotData::default();
        for piece in &self.pieces {
            match piece {
                Piece::Raw(raw) => data.push(Frame::compress(raw)?.data),
                Piece::Compressed(frame) => data.push(frame.data.clone()),
            }
        }
        Ok(data)
    }

    fn has_frames(&self) -> bool {
        self.pieces
            .iter()
            .any(|piece| matches!(piece, Piece::Compressed(_)))
    }
}

/// A snapshot's bytes in order, held as segments: a frame shared by many snapshots is held once,
/// not copied into each. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct SnapshotData {
    segments: Vec<Bytes>,
    len: usize,
}

impl SnapshotData {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes in `range` (cut to the data's end): shared when they lie in one segment, copied
    /// when they span several.
    pub fn slice(&self, range: Range<usize>) -> Bytes {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        let mut parts = Vec::new();
        let mut segment_start = 0;
        for segment in &self.segments {
            let segment_end = segment_start + segment.len();
            if segment_end > start && segment_start < end {
                parts.push(
                    segment.slice(
                        start.max(segment_start) - segment_start..end.min(segment_end) - segment_start,
                    ),
                );
            }
            segment_start = segment_end;
        }
        match parts.as_slice() {
            [] => Bytes::new(),
            [part] => part.clone(),
            _ => {
                let mut joined = BytesMut::with_capacity(end - start);
                for part in &parts {
                    joined.extend_from_slice(part);
                }
                joined.freeze()
            }
        }
    }

    /// All of it in one buffer (shared when it is one segment).
    pub fn contiguous(&self) -> Bytes {
        self.slice(0..self.len)
    }

    /// Its bytes in order, across segments.
    fn bytes(&self) -> impl Iterator<Item = &u8> {
        self.segments.iter().flat_map(|segment| segment.iter())
    }

    fn push(&mut self, segment: Bytes) {
        if !segment.is_empty() {
            self.len += segment.len();
            self.segments.push(segment);
        }
    }
}

impl From<Bytes> for SnapshotData {
    fn from(bytes: Bytes) -> Self {
        let mut data = Self::default();
        data.push(bytes);
        data
    }
}

impl From<Vec<u8>> for SnapshotData {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::from(bytes).into()
    }
}

impl PartialEq for SnapshotData {
    /// Equal bytes, however they are segmented.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.bytes().eq(other.bytes())
    }
}

impl Eq for SnapshotData {}

/// The state at one revision, encoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSnapshot {
    /// Revision of the state.
    pub revision: u64,
    /// Compression of `data`.
    pub codec: Codec,
    /// The (possibly compressed) encoding; cloning shares it.
    pub data: SnapshotData,
    /// Entries in the encoding (the state's keys unless its encoder said otherwise).
    pub entries: u64,
    /// Size of the uncompressed encoding.
    pub raw_bytes: u64,
}

/// Largest snapshot a subscriber decompresses (a bound on what a bad `raw_bytes` can allocate).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// zstd level: fast, still a large ratio on repetitive keyed state.
const ZSTD_LEVEL: i32 = 3;

impl EncodedSnapshot {
    /// Encodes `state` with `encoder`, compressing when it is at least `compress_from` bytes or
    /// the encoder compressed part of it. An error only when it can be sent neither compressed
    /// nor uncompressed.
    pub(crate) fn encode<V, S: Storage<V>>(
        revision: u64,
        state: &State<V, S>,
        encoder: &SnapshotEncoder<V, S>,
        compress_from: usize,
    ) -> io::Result<Self> {
        let encoded = encoder(state);
        let raw_bytes = encoded.raw_len();
        let entries = encoded.entries.unwrap_or(state.len() as u64);
        let compress = encoded.has_frames() || raw_bytes >= compress_from as u64;
        let compressed = match compress.then(|| encoded.compress()) {
            Some(Ok(compressed)) => Some(compressed),
            Some(Err(error)) => {
                tracing::warn!(%error, "compressing a snapshot failed; sending it uncompressed");
                None
            }
            None => None,
        };
        let (codec, data) = match compressed {
            Some(compressed) => (Codec::Zstd, compressed),
            None => (Codec::None, SnapshotData::from(encoded.into_raw()?)),
        };
        Ok(Self {
            revision,
            codec,
            data,
            entries,
            raw_bytes,
        })
    }

    /// The uncompressed encoding (what the service's decoder reads).
    pub fn decompress(&self) -> std::io::Result<Vec<u8>> {
        match self.codec {
            Codec::None => Ok(self.data.contiguous().to_vec()),
            Codec::Zstd if self.raw_bytes > MAX_SNAPSHOT_BYTES => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "snapshot claims {} bytes, more than the {MAX_SNAPSHOT_BYTES} allowed",
                    self.raw_bytes
                ),
            )),
            Codec::Zstd => zstd::bulk::decompress(&self.data.contiguous(), self.raw_bytes as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_in_segments_slices_like_one_buffer_and_shares_what_lies_in_one_segment() {
        let segments = [&b"abc"[..], b"defgh", b"", b"ij"].map(Bytes::from_static);
        let mut data = SnapshotData::default();
        for segment in &segments {
            data.push(segment.clone());
        }
        assert_eq!(data.len(), 10);
        assert_eq!(data.contiguous(), Bytes::from_static(b"abcdefghij"));
        assert_eq!(
            data.slice(2..9),
            Bytes::from_static(b"cdefghi"),
            "across segments"
        );
        assert_eq!(data.slice(8..100), Bytes::from_static(b"ij"), "cut at the end");
        assert!(data.slice(4..4).is_empty());
        let inside = data.slice(4..7);
        assert_eq!(inside, Bytes::from_static(b"efg"));
        assert_eq!(inside.as_ptr(), segments[1][1..].as_ptr(), "shared, not copied");
        assert_eq!(
            data,
            SnapshotData::from(b"abcdefghij".to_vec()),
            "equal bytes, other segments"
        );
    }
}
