//! The HTTP API's way into the ledger: an in-process gRPC channel to the very tower stack
//! the gRPC port serves (call observer, status rewriting, in-flight limit, the
//! authentication interceptor, the JobLedger service). An HTTP call is a gRPC call in all
//! but its transport: the same validation, codes, limits, deadlines, metrics and trace
//! span, by construction rather than by a second implementation. Messages cross it as
//! protobuf bytes (the JSON mapping makes them), so no route needs a Rust type.

use std::convert::Infallible;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use prost_reflect::MethodDescriptor;
use tonic::{
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming},
    Request, Response, Status,
};
use tower::util::BoxCloneSyncService;

use crate::server::status;

/// The gRPC services as one tower service, as the gRPC port's connections see them.
pub(crate) type GrpcStack = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

#[derive(Clone)]
pub(crate) struct Channel {
    grpc: Grpc<GrpcStack>,
}

impl Channel {
    pub(crate) fn new(stack: GrpcStack) -> Channel {
        // The service's own limit applies to requests; a response (a page of 1,000 jobs
        // with large params) may be larger than tonic's default 4 MiB.
        let grpc = Grpc::new(stack).max_decoding_message_size(usize::MAX);
        Channel { grpc }
    }

    /// Calls a unary method with an encoded request; the encoded response.
    pub(crate) async fn unary(
        &self,
        method: &MethodDescriptor,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, Status> {
        let mut grpc = self.ready().await?;
        grpc.unary(request, path(method)?, RawCodec).await
    }

    /// Calls a server-streaming method; the stream of encoded messages.
    pub(crate) async fn server_streaming(
        &self,
        method: &MethodDescriptor,
        request: Request<Bytes>,
    ) -> Result<Response<Streaming<Bytes>>, Status> {
        let mut grpc = self.ready().await?;
        grpc.server_streaming(request, path(method)?, RawCodec)
            .await
    }

    async fn ready(&self) -> Result<Grpc<GrpcStack>, Status> {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e: Infallible| status::http_bug(&e.to_string()))?;
        Ok(grpc)
    }
}

/// `/jobledger.v1.JobLedger/CreateJob`.
fn path(method: &MethodDescriptor) -> Result<PathAndQuery, Status> {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    PathAndQuery::try_from(path).map_err(|e| status::http_bug(&e.to_string()))
}

/// Messages as they are: bytes in, bytes out.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
