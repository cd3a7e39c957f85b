//! [`CreditsClient`]: the client side, over any tonic transport.

use std::fmt;

use tonic::body::Body;
use tonic::{Response, Status};
use tonic_prost::ProstCodec;

use super::{BoxError, QuoteReply, QuoteRequest, ReadoutReply, ReadoutRequest};
use super::{QUOTE, READOUT};

/// The client side of `tower_credits.v1.Credits`, over a tonic `Channel` or any gRPC
/// transport. Send the caller's credentials (`authorization: Bearer <key>`) in each
/// request's metadata, as on a paid call.
#[derive(Clone)]
pub struct CreditsClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> fmt::Debug for CreditsClient<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditsClient").finish_non_exhaustive()
    }
}

impl<T> CreditsClient<T>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    /// A client over `transport` (such as a `tonic::transport::Channel`).
    pub fn new(transport: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(transport),
        }
    }

    /// A client whose requests go to `origin` (for a transport that needs absolute URIs).
    pub fn with_origin(transport: T, origin: http::Uri) -> Self {
        Self {
            inner: tonic::client::Grpc::with_origin(transport, origin),
        }
    }

    /// What a call of `request.method` would cost the caller, without running it.
    pub async fn quote(
        &mut self,
        request: impl tonic::IntoRequest<QuoteRequest>,
    ) -> Result<Response<QuoteReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.into().to_string()))?;
        let path = http::uri::PathAndQuery::from_static(QUOTE);
        let codec = ProstCodec::<QuoteRequest, QuoteReply>::default();
        self.inner.unary(request.into_request(), path, codec).await
    }

    /// The caller's balance and spend by route.
    pub async fn readout(
        &mut self,
        request: impl tonic::IntoRequest<ReadoutRequest>,
    ) -> Result<Response<ReadoutReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.into().to_string()))?;
        let path = http::uri::PathAndQuery::from_static(READOUT);
        let codec = ProstCodec::<ReadoutRequest, ReadoutReply>::default();
        self.inner.unary(request.into_request(), path, codec).await
    }
}
