//! The codec of `kyphoplan.v1.PlanningService` (set by `codec_path` in `build.rs`, used by the
//! generated server and client): prost encoding, as `tonic_prost::ProstCodec`, and a decode
//! failure that says whose fault it is.
//!
//! tonic's prost codec answers every undecodable message with INTERNAL. A request that does not
//! decode (truncated, garbage, a field with the wrong wire type) is the client's fault: the
//! server answers INVALID_ARGUMENT naming the message type, before any handler runs. A response
//! that does not decode is still INTERNAL on the client (the server is at fault).

use std::marker::PhantomData;

use prost::{Message, Name};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

use crate::pb;

/// Who sends a message of the service: the one at fault when it does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A request (or an upload chunk): refused with INVALID_ARGUMENT.
    Client,
    /// A response: INTERNAL.
    Server,
}

/// A top-level message of the service's RPCs. Every request and response type needs an impl
/// (the generated code does not compile without it), so a new RPC makes its author choose.
pub trait ServiceMessage: Message + Name + Default + Send + 'static {
    const SENT_BY: Sender;
}

macro_rules! sent_by {
    ($sender:ident: $($message:ident),+ $(,)?) => {
        $(impl ServiceMessage for pb::$message {
            const SENT_BY: Sender = Sender::$sender;
        })+
    };
}

sent_by!(Client: UploadAnatomyChunk, GetAnatomyRequest, CreatePlanRequest, EvaluateTrajectoryRequest, GetPlanRequest, ListPlansRequest);
sent_by!(Client: DeletePlanRequest, DeleteAnatomyRequest);
sent_by!(Server: DeletePlanResponse, DeleteAnatomyResponse);
sent_by!(Server: Anatomy, Plan, PlanProgress, Evaluation, ListPlansResponse);

/// The status for a message of type `M` that does not decode, naming the type.
pub fn decode_error_status<M: ServiceMessage>(error: &prost::DecodeError) -> Status {
    let message = format!("malformed {} message: {error}", M::full_name());
    match M::SENT_BY {
        Sender::Client => Status::invalid_argument(message),
        Sender::Server => Status::internal(message),
    }
}

/// `tonic_prost::ProstCodec` with [`decode_error_status`] for undecodable messages.
#[derive(Debug, Clone)]
pub struct ServiceCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ServiceCodec<T, U> {
    fn default() -> Self {
        ServiceCodec(PhantomData)
    }
}

impl<T, U> Codec for ServiceCodec<T, U>
where
    T: Message + Send + 'static,
    U: ServiceMessage,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ServiceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServiceDecoder(PhantomData)
    }
}

/// Decodes a `U` with prost; failures become [`decode_error_status`].
#[derive(Debug, Clone)]
pub struct ServiceDecoder<U>(PhantomData<U>);

impl<U: ServiceMessage> Decoder for ServiceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| decode_error_status::<U>(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_clients_fault_and_responses_the_servers() {
        let e = pb::CreatePlanRequest::decode(&[0x0a, 0x05, 0x01][..]).unwrap_err();
        let s = decode_error_status::<pb::CreatePlanRequest>(&e);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(
            s.message()
                .starts_with("malformed kyphoplan.v1.CreatePlanRequest message: "),
            "{s:?}"
        );
        let s = decode_error_status::<pb::Plan>(&e);
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(s.message().contains("kyphoplan.v1.Plan "), "{s:?}");
    }
}
