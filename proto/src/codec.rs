//! The gRPC codec of every brindle service: prost, with an encode buffer that starts small and a
//! stream yielding to the transport after every few KiB, so an idle streaming subscriber (one
//! agent's `Sync` stream) keeps a few KiB of buffer rather than the size of its largest burst; a
//! message that does not decode is the sender's fault, INVALID_ARGUMENT (tonic says INTERNAL).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
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
    type Decoder = InvalidArgumentDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER_BYTES, ENCODE_BUFFER_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgumentDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

/// prost decoding whose failures are INVALID_ARGUMENT, naming the message type.
#[derive(Debug)]
pub struct InvalidArgumentDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for InvalidArgumentDecoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, tonic::Status> {
        self.0.decode(src).map_err(|status| {
            tonic::Status::invalid_argument(format!(
                "a {} does not decode: {}",
                std::any::type_name::<U>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("message"),
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
