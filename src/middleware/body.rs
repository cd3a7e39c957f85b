//! The response body: the inner body, a refusal's JSON, or an inner body whose hold settles
//! when it ends.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::guard::{Decision, HoldGuard};
use crate::wire::grpc::grpc_status;
use crate::wire::headers;

pin_project! {
    /// Response body of a [`CreditService`](crate::CreditService).
    ///
    /// Either the inner service's body, passed through, or a refusal's problem JSON. When
    /// the cost is only known at the end of the body (a deferred [`Charge`](crate::Charge),
    /// or a gRPC status sent in trailers), the hold settles when the body ends — at its last
    /// frame, at its trailers, or when [`is_end_stream`](Body::is_end_stream) turns true, as
    /// hyper stops polling then — and the final `credits-cost` and `credits-remaining` go in
    /// the trailers. A body dropped early settles by policy: a deferred HTTP charge commits
    /// what it says so far; a gRPC response without a status is refunded.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
            settle: Option<Box<BodySettle>>,
        },
        Full {
            bytes: Option<Bytes>,
        },
    }
}

/// A hold waiting for the end of the body.
pub(crate) struct BodySettle {
    guard: HoldGuard,
    /// Success known from the response head (`None`: a gRPC status still to come).
    success: Option<bool>,
    /// Renews the hold every half TTL, whether or not the caller reads: a slow reader does
    /// not poll the body, and must not make the hold expire.
    renewer: Option<tokio::task::AbortHandle>,
    phase: Phase,
}

enum Phase {
    Streaming,
    /// Settled; our trailers go out on the next poll.
    Trailers(HeaderMap),
    Done,
}

impl BodySettle {
    /// `next_renewal` continues the schedule the handler's renewals kept.
    pub(crate) fn new(
        mut guard: HoldGuard,
        success: Option<bool>,
        next_renewal: tokio::time::Instant,
    ) -> Box<Self> {
        if success == Some(true) {
            guard.head_succeeded();
        }
        let settler = guard.settler().clone();
        let hold = guard.hold().clone();
        let renewer = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let every = settler.hold_ttl() / 2;
            runtime
                .spawn(async move {
                    let mut at = next_renewal;
                    loop {
                        tokio::time::sleep_until(at).await;
                        settler.extend(&hold);
                        at += every;
                    }
                })
                .abort_handle()
        });
        Box::new(Self {
            guard,
            success,
            renewer,
            phase: Phase::Streaming,
        })
    }

    /// Settles and writes the final figures into `trailers`.
    fn finish(&mut self, trailers: &mut HeaderMap) {
        self.stop_renewing();
        let hold = self.guard.hold().clone();
        if hold.grpc && self.success.is_none() {
            self.success = grpc_status(trailers).map(|code| code == 0);
        }
        // A gRPC response that ends without a status did not succeed.
        let success = self.success.unwrap_or(!hold.grpc);
        hold.charge.close();
        let cost = if success { hold.charge.cost() } else { 0 };
        self.guard.settle(if success {
            Decision::Commit(hold.charge.actual().unwrap_or(hold.charge.reserved()))
        } else {
            Decision::Refund
        });
        let names = self.guard.settler().headers();
        trailers.insert(names.cost.clone(), headers::int(cost));
        trailers.insert(names.remaining.clone(), headers::int(hold.remaining(cost)));
        headers::write_warning(trailers, names, hold.remaining(cost), hold.threshold);
    }

    fn stop_renewing(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

impl Drop for BodySettle {
    fn drop(&mut self) {
        self.stop_renewing();
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body, settle: None },
        }
    }

    pub(crate) fn settling(body: B, settle: Box<BodySettle>) -> Self {
        Self {
            kind: Kind::Inner {
                body,
                settle: Some(settle),
            },
        }
    }

    /// A refusal's body: problem JSON, or nothing (a gRPC trailers-only response).
    pub(crate) fn refusal(bytes: Option<Bytes>) -> Self {
        Self {
            kind: Kind::Full { bytes },
        }
    }
}

/// An empty body: what a gRPC trailers-only refusal carries.
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self {
            kind: Kind::Full { bytes: None },
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { settle, .. } => f
                .debug_struct("ResponseBody::Inner")
                .field("settles_at_end", &settle.is_some())
                .finish(),
            Kind::Full { bytes } => f
                .debug_struct("ResponseBody::Full")
                .field("len", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            KindProj::Inner { mut body, settle } => {
                let Some(pending) = settle.as_mut() else {
                    return body.poll_frame(cx);
                };
                match std::mem::replace(&mut pending.phase, Phase::Done) {
                    Phase::Done => return Poll::Ready(None),
                    Phase::Trailers(trailers) => {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    Phase::Streaming => pending.phase = Phase::Streaming,
                }
                let polled = ready!(body.as_mut().poll_frame(cx));
                Poll::Ready(match polled {
                    Some(Ok(frame)) => match frame.into_trailers() {
                        Ok(mut trailers) => {
                            pending.finish(&mut trailers);
                            pending.phase = Phase::Done;
                            Some(Ok(Frame::trailers(trailers)))
                        }
                        Err(frame) => {
                            if body.is_end_stream() {
                                // hyper will not poll a body that says it ended: settle now.
                                let mut trailers = HeaderMap::new();
                                pending.finish(&mut trailers);
                                pending.phase = Phase::Trailers(trailers);
                            }
                            Some(Ok(frame))
                        }
                    },
                    Some(Err(error)) => {
                        // A broken stream: dropping the guard settles by its policy.
                        *settle = None;
                        Some(Err(error))
                    }
                    None => {
                        let mut trailers = HeaderMap::new();
                        pending.finish(&mut trailers);
                        pending.phase = Phase::Done;
                        Some(Ok(Frame::trailers(trailers)))
                    }
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { bytes } => bytes.is_none(),
            Kind::Inner { body, settle: None } => body.is_end_stream(),
            Kind::Inner {
                settle: Some(pending),
                ..
            } => matches!(pending.phase, Phase::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Inner { body, .. } => body.size_hint(),
        }
    }
}
