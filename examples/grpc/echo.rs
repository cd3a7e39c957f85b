//! A tiny gRPC service, `echo.Echo`, written by hand so no `protoc` is needed: the prost
//! messages, the server routing and the client are what `tonic-build` would generate.
//!
//! ```proto
//! service Echo {
//!   rpc Say(SayRequest) returns (SayReply);                 // unary
//!   rpc Count(CountRequest) returns (stream SayReply);      // server streaming
//!   rpc Chat(stream ChatRequest) returns (stream SayReply); // bidirectional streaming
//!   rpc Upload(stream UploadChunk) returns (UploadReply);   // client streaming
//! }
//! ```
//!
//! Every method bills through the `Charge` the layer put in the request's extensions:
//! `Say` sets the tokens it used, `Count` and `Chat` defer the charge and add to it per
//! message (settled at the end of the stream), `Upload` adds per chunk received before it
//! answers.
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

#[derive(Clone, PartialEq, prost::Message)]
pub struct ChatRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Credits added when the server receives this message.
    #[prost(uint64, tag = "2")]
    pub credits: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UploadChunk {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    /// Credits added when the server receives this chunk.
    #[prost(uint64, tag = "2")]
    pub credits: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UploadReply {
    /// Chunks received.
    #[prost(uint32, tag = "1")]
    pub chunks: u32,
    /// Bytes received.
    #[prost(uint64, tag = "2")]
    pub bytes: u64,
}

pub const SAY: &str = "/echo.Echo/Say";
pub const COUNT: &str = "/echo.Echo/Count";
pub const CHAT: &str = "/echo.Echo/Chat";
pub const UPLOAD: &str = "/echo.Echo/Upload";

/// The request metadata that names an upload in [`chunks_received`].
pub const UPLOAD_ID: &str = "upload-id";

/// Chunks received so far by the uploads that sent an [`UPLOAD_ID`]: lets a test cancel an
/// upload once the server has seen (and billed) a known number of chunks.
static UPLOADS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, u32>>> =
    std::sync::LazyLock::new(Default::default);

/// How many chunks the upload named `id` (its [`UPLOAD_ID`] metadata) has received.
pub fn chunks_received(id: &str) -> u32 {
    UPLOADS.lock().unwrap().get(id).copied().unwrap_or(0)
}

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
        // The work is bounded by the hold: a cost past it would be refused.
        charge
            .set(tokens.min(charge.reserved()))
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

/// Replies to each message as it comes; the charge is deferred to the end of the call and
/// grows by each message's `credits`.
async fn chat(
    request: Request<tonic::Streaming<ChatRequest>>,
) -> Result<Response<ItemStream>, Status> {
    let charge = request.extensions().get::<Charge>().cloned();
    if let Some(charge) = &charge {
        charge.defer();
        charge.set(0).map_err(|e| Status::internal(e.to_string()))?;
    }
    let replies = futures_util::StreamExt::map(request.into_inner(), move |message| {
        let message = message?;
        if let Some(charge) = &charge {
            let _ = charge.add(message.credits);
        }
        Ok(SayReply {
            message: format!("echo: {}", message.message),
        })
    });
    Ok(Response::new(Box::pin(replies) as ItemStream))
}

/// Adds each chunk's `credits` as it arrives; answers once the client's stream ends.
async fn upload(
    request: Request<tonic::Streaming<UploadChunk>>,
) -> Result<Response<UploadReply>, Status> {
    let charge = request.extensions().get::<Charge>().cloned();
    let id = request
        .metadata()
        .get(UPLOAD_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(charge) = &charge {
        charge.set(0).map_err(|e| Status::internal(e.to_string()))?;
    }
    let mut chunks = request.into_inner();
    let mut reply = UploadReply::default();
    while let Some(chunk) = chunks.message().await? {
        if let Some(charge) = &charge {
            let _ = charge.add(chunk.credits);
        }
        reply.chunks += 1;
        reply.bytes += chunk.data.len() as u64;
        if let Some(id) = &id {
            *UPLOADS.lock().unwrap().entry(id.clone()).or_default() += 1;
        }
    }
    Ok(Response::new(reply))
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
            CHAT => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<SayReply, ChatRequest>::default());
                Ok(grpc.streaming(tower::service_fn(chat), req).await)
            }),
            UPLOAD => Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<UploadReply, UploadChunk>::default());
                Ok(grpc.client_streaming(tower::service_fn(upload), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The client side of `echo.Echo`, over a tonic `Channel` or any gRPC transport (a
/// `tonic_web::GrpcWebClientService` for gRPC-Web).
#[derive(Clone)]
pub struct EchoClient<T = tonic::transport::Channel> {
    inner: tonic::client::Grpc<T>,
}

impl EchoClient {
    pub async fn connect(url: String) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect()
            .await?;
        Ok(Self::new(channel))
    }
}

impl<T> EchoClient<T>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    pub fn new(transport: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(transport),
        }
    }

    /// A client whose requests go to `origin` (a transport that needs absolute URIs, such
    /// as hyper's client).
    pub fn with_origin(transport: T, origin: http::Uri) -> Self {
        Self {
            inner: tonic::client::Grpc::with_origin(transport, origin),
        }
    }

    pub async fn say(
        &mut self,
        request: Request<SayRequest>,
    ) -> Result<Response<SayReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.into().to_string()))?;
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
            .map_err(|e| Status::unavailable(e.into().to_string()))?;
        let path = http::uri::PathAndQuery::from_static(COUNT);
        self.inner
            .server_streaming(
                request,
                path,
                ProstCodec::<CountRequest, SayReply>::default(),
            )
            .await
    }

    pub async fn chat(
        &mut self,
        request: Request<impl Stream<Item = ChatRequest> + Send + 'static>,
    ) -> Result<Response<tonic::codec::Streaming<SayReply>>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.into().to_string()))?;
        let path = http::uri::PathAndQuery::from_static(CHAT);
        self.inner
            .streaming(
                request,
                path,
                ProstCodec::<ChatRequest, SayReply>::default(),
            )
            .await
    }

    pub async fn upload(
        &mut self,
        request: Request<impl Stream<Item = UploadChunk> + Send + 'static>,
    ) -> Result<Response<UploadReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.into().to_string()))?;
        let path = http::uri::PathAndQuery::from_static(UPLOAD);
        self.inner
            .client_streaming(
                request,
                path,
                ProstCodec::<UploadChunk, UploadReply>::default(),
            )
            .await
    }
}

/// Keeps `BodyExt` in use for callers that read raw bodies.
pub fn _body_ext_in_scope<B: BodyExt>(_: &B) {}
