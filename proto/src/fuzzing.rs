//! Strategies for fuzzing what decodes brindle's messages: valid encoded messages with bytes
//! replaced, inserted and removed (decoding often still succeeds, with fields turned into odd
//! values), and random bytes.

use proptest::prelude::*;
use prost::Message;

/// Encoded `seeds` with a few random byte edits, or random bytes.
pub fn damaged<M: Message>(seeds: Vec<M>) -> impl Strategy<Value = Vec<u8>> {
    let encoded: Vec<Vec<u8>> = seeds.iter().map(Message::encode_to_vec).collect();
    let edit = (0..3u8, any::<usize>(), any::<u8>());
    prop_oneof![
        4 => (prop::sample::select(encoded), prop::collection::vec(edit, 0..4)).prop_map(|(mut bytes, edits)| {
            for (kind, at, byte) in edits {
                let len = bytes.len();
                match kind {
                    0 if len > 0 => bytes[at % len] = byte,
                    1 => bytes.insert(at % (len + 1), byte),
                    2 if len > 0 => {
                        bytes.remove(at % len);
                    }
                    _ => {}
                }
            }
            bytes
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// `bytes` decoded as `M`, when they decode.
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

/// Passes an answer that is a success or a clean refusal; fails on INTERNAL or UNKNOWN, which
/// mean the input reached a path the service did not handle.
pub fn refused_cleanly(context: &str, answer: Result<(), tonic::Status>) -> Result<(), TestCaseError> {
    match answer {
        Err(status) if matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown) => {
            Err(TestCaseError::fail(format!("{context}: {status:?}")))
        }
        _ => Ok(()),
    }
}
