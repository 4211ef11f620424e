//! The codec of every Fjord service: prost's, except that a message that does not decode is
//! `INVALID_ARGUMENT` (the sender's fault, not to be retried as sent) instead of prost's `INTERNAL`, which
//! clients treat as transient and retry.

use tonic::Status;
use tonic::codec::BufferSettings;
use tonic::codec::Codec;
use tonic::codec::DecodeBuf;
use tonic::codec::Decoder;
use tonic_prost::ProstCodec;
use tonic_prost::ProstDecoder;
use tonic_prost::ProstEncoder;

/// prost's codec with decode errors as `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct FjordCodec<T, U> {
    prost: ProstCodec<T, U>,
}

impl<T, U> Default for FjordCodec<T, U> {
    fn default() -> Self {
        FjordCodec { prost: ProstCodec::new() }
    }
}

impl<T, U> Codec for FjordCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = InvalidArgumentDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgumentDecoder { prost: self.prost.decoder() }
    }
}

/// prost's decoder, whose errors are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct InvalidArgumentDecoder<U> {
    prost: ProstDecoder<U>,
}

impl<U: prost::Message + Default> Decoder for InvalidArgumentDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.prost
            .decode(buf)
            .map_err(|status| Status::invalid_argument(format!("undecodable message: {}", status.message())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.prost.buffer_settings()
    }
}
