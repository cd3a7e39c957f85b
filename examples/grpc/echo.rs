//! A tiny gRPC service, `echo.Echo`, written by hand so no `protoc` is needed: the prost
//! messages, the server routing and the client are what `tonic-build` would generate.
//!
//! ```proto
//! service Echo {
//!   rpc Say(SayRequest) returns (SayReply);            // unary
//!   rpc Count(CountRequest) returns (stream SayReply); // server streaming
//! }
//! ```
#![allow(dead_code)]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;
use tower_credits::Charge;

#[derive(Clone, PartialEq, prost::Message)]
pub struct SayRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Tokens actually used: the handler sets them on its `Charge`.
    #[prost(uint64, optional, tag = "2")]
    pub tokens: Option<u64>,
    /// A gRPC code to fail with (0: succeed).
    #[prost(int32, tag = "3")]
    pub fail_code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SayReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    #[prost(uint32, tag = "1")]
    pub n: u32,
    /// Credits added per item streamed (the charge is deferred to the end of the stream).
    #[prost(uint64, tag = "2")]
    pub credits_per_item: u64,
    /// A gRPC code to end the stream with after the items (0: succeed): in trailers.
    #[prost(int32, tag = "3")]
    pub fail_code: i32,
}

pub const SAY: &str = "/echo.Echo/Say";
pub const COUNT: &str = "/echo.Echo/Count";

async fn say(request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
    let charge = request.extensions().get::<Charge>().cloned();
    let body = request.into_inner();
    if body.fail_code != 0 {
        return Err(Status::new(
            Code::from_i32(body.fail_code),
            "failed on request",
        ));
    }
    if let (Some(charge), Some(tokens)) = (&charge, body.tokens) {
        charge
            .set(tokens)
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    Ok(Response::new(SayReply {
        message: format!("echo: {}", body.message),
    }))
}

type ItemStream = Pin<Box<dyn Stream<Item = Result<SayReply, Status>> + Send>>;

async fn count(request: Request<CountRequest>) -> Result<Response<ItemStream>, Status> {
    let charge = request.extensions().get::<Charge>().cloned();
    let body = request.into_inner();
    if let Some(charge) = &charge {
        charge.defer();
        charge.set(0).map_err(|e| Status::internal(e.to_string()))?;
    }
    let items = futures_util::stream::unfold(0u32, move |i| {
        let charge = charge.clone();
        async move {
            if i < body.n {
                if let Some(charge) = &charge {
                    let _ = charge.add(body.credits_per_item);
                }
                let reply = SayReply {
                    message: format!("item {i}"),
                };
                Some((Ok(reply), i + 1))
            } else if i == body.n && body.fail_code != 0 {
                let status = Status::new(Code::from_i32(body.fail_code), "failed mid-stream");
                Some((Err(status), i + 1))
            } else {
                None
            }
        }
    });
    Ok(Response::new(Box::pin(items) as ItemStream))
}

/// The server side of `echo.Echo`.
#[derive(Clone, Default)]
pub struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = "echo.Echo";
}

impl<B> tower::Service<http::Request<B>> for EchoServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            SAY => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<SayReply, SayRequest>::default());
                Ok(grpc.unary(tower::service_fn(say), req).await)
            }),
            COUNT => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<SayReply, CountRequest>::default());
                Ok(grpc.server_streaming(tower::service_fn(count), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The client side of `echo.Echo`.
#[derive(Clone)]
pub struct EchoClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    pub async fn connect(url: String) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect()
            .await?;
        Ok(Self {
            inner: tonic::client::Grpc::new(channel),
        })
    }

    pub async fn say(
        &mut self,
        request: Request<SayRequest>,
    ) -> Result<Response<SayReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(SAY);
        self.inner
            .unary(request, path, ProstCodec::<SayRequest, SayReply>::default())
            .await
    }

    pub async fn count(
        &mut self,
        request: Request<CountRequest>,
    ) -> Result<Response<tonic::codec::Streaming<SayReply>>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(COUNT);
        self.inner
            .server_streaming(
                request,
                path,
                ProstCodec::<CountRequest, SayReply>::default(),
            )
            .await
    }
}

/// Keeps `BodyExt` in use for callers that read raw bodies.
pub fn _body_ext_in_scope<B: BodyExt>(_: &B) {}
