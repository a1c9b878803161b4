//! The gRPC codec of every brindle service: prost, with an encode buffer that starts small and a
//! stream yielding to the transport after every few KiB, so an idle streaming subscriber (one
//! agent's `Sync` stream) keeps a few KiB of buffer rather than the size of its largest burst.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial size of a response's encode buffer, and how much a stream encodes before handing it to
/// the transport (tonic's defaults: 8 KiB and 32 KiB).
const ENCODE_BUFFER_BYTES: usize = 4 * 1024;

/// prost encoding with [`ENCODE_BUFFER_BYTES`] buffers.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER_BYTES, ENCODE_BUFFER_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}
