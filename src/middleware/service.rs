use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::body::ResponseBody;
use super::config::Shared;
use super::future::ResponseFuture;
use super::layer::CreditLayer;
use super::plan::plan;
use crate::account::RequestView;
use crate::ledger::Ledger;

/// The service made by a [`CreditLayer`]: bills each request, then calls `S`.
pub struct CreditService<S, L: Ledger> {
    inner: S,
    shared: Arc<Shared<L>>,
}

impl<S: Clone, L: Ledger> Clone for CreditService<S, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, L: Ledger> fmt::Debug for CreditService<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, L: Ledger> CreditService<S, L> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: &CreditLayer<L>) -> Self {
        tower_layer::Layer::layer(layer, inner)
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<L>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, L, ReqBody, ResBody> Service<Request<ReqBody>> for CreditService<S, L>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: http_body::Body,
    L: Ledger,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, L>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The ready service is the one to call: keep it and leave a fresh clone behind. See
        // https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = &self.shared;
        let priced = shared
            .pricing
            .price(req.method(), req.uri().path(), matched_path(&req));
        // Server configuration, never the request's content type.
        let protocol = priced.protocol.unwrap_or(shared.protocol);
        let plan = plan(priced, req.headers(), &shared.headers, || {
            shared.resolver.resolve(&RequestView {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: req.extensions(),
            })
        });
        ResponseFuture::start(shared.clone(), inner, protocol, req, plan)
    }
}

#[cfg(feature = "axum")]
fn matched_path<B>(req: &Request<B>) -> Option<&str> {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
}

#[cfg(not(feature = "axum"))]
fn matched_path<B>(_: &Request<B>) -> Option<&str> {
    None
}
