//! The response body: the inner body, a refusal's JSON, or an inner body whose hold settles
//! when it ends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use std::sync::Arc;

use super::grpc_web::TrailerScanner;
use super::guard::HoldGuard;
use super::keeper::Cut;
use super::settlement::{at_body_end, cost_of, Awaiting};
use crate::classify::{Classify, Verdict};
use crate::wire::headers;

pin_project! {
    /// Response body of a [`CreditService`](crate::CreditService).
    ///
    /// Either the inner service's body, passed through, or a refusal's problem JSON. When
    /// the cost is only known at the end of the body (a deferred [`Charge`](crate::Charge),
    /// or a gRPC status sent in trailers), the hold settles when the body ends — at its last
    /// frame, at its trailers, or when [`is_end_stream`](Body::is_end_stream) turns true, as
    /// hyper stops polling then — and the final `credits-cost` and `credits-remaining` go in
    /// the trailers. A body that ends early (dropped, reset, failed, no status at all) commits
    /// what its `Charge` says so far; see [`classify`](crate::classify). A body whose reader
    /// leaves a frame unread for the layer's
    /// [`stall_timeout`](crate::CreditLayer::stall_timeout) is committed the same way and
    /// ends with [`ReaderStalled`]; one still streaming at the
    /// [`max_hold_lifetime`](crate::CreditLayer::max_hold_lifetime) ends with
    /// [`HoldLifetimeExceeded`].
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
            tail: Tail,
        },
        Full {
            bytes: Option<Bytes>,
        },
    }
}

/// What is left to send after the inner body of a settling response.
#[derive(Debug)]
enum Tail {
    /// The inner body is still streaming.
    Streaming,
    /// Settled as the inner body ended; our trailers go out on the next poll.
    Trailers(HeaderMap),
    Done,
}

/// A hold waiting for the end of the body.
pub(crate) struct BodySettle {
    /// Watched by the keeper (renewals, lifetime cap, stall clock) when there is one.
    guard: HoldGuard,
    /// What the end of the body decides: the cost, or the verdict too.
    awaiting: Awaiting,
    classifier: Arc<dyn Classify>,
    /// gRPC-Web: the status may come in a trailer frame inside the body.
    scanner: Option<TrailerScanner>,
}

impl BodySettle {
    /// `guard`: the hold, its head sent; watched by the keeper from now on.
    pub(crate) fn new(
        guard: HoldGuard,
        awaiting: Awaiting,
        classifier: Arc<dyn Classify>,
        scanner: Option<TrailerScanner>,
    ) -> Box<Self> {
        Box::new(Self {
            guard,
            awaiting,
            classifier,
            scanner,
        })
    }

    fn observe(&mut self, data: &Bytes) {
        if let Some(scanner) = &mut self.scanner {
            scanner.feed(data);
        }
    }

    /// Settles by what the end of the body says, and writes the final figures into
    /// `trailers` (the inner body's, when `from_inner`, else our own).
    fn finish(self: Box<Self>, trailers: &mut HeaderMap, from_inner: bool) {
        let this = *self;
        let (classifier, scanner) = (&this.classifier, &this.scanner);
        let end = at_body_end(this.awaiting, || {
            let verdict = classifier.classify_end(from_inner.then_some(&*trailers));
            match scanner.as_ref().and_then(TrailerScanner::trailers) {
                Some(framed) if verdict == Verdict::Unknown => {
                    classifier.classify_end(Some(framed))
                }
                _ => verdict,
            }
        });
        let hold = this.guard.hold().clone();
        let settler = this.guard.settler().clone();
        let cost = this.guard.settle(end).map_or(0, cost_of);
        let names = settler.headers();
        trailers.insert(names.cost.clone(), headers::int(cost));
        trailers.insert(names.remaining.clone(), headers::int(hold.remaining(cost)));
        headers::write_warning(trailers, names, hold.remaining(cost), &hold.thresholds);
    }
}

/// A frame of a settling body, passed on: the hold settles at the trailers, at the end, or
/// when the inner body says it ended (hyper will not poll a body that says so).
fn settle_on_end<E: Into<BoxError>>(
    polled: Option<Result<Frame<Bytes>, E>>,
    ended: bool,
    settle: &mut Option<Box<BodySettle>>,
    tail: &mut Tail,
) -> Option<Result<Frame<Bytes>, BoxError>> {
    let finish = |settle: &mut Option<Box<BodySettle>>, trailers: &mut HeaderMap, inner| {
        if let Some(pending) = settle.take() {
            pending.finish(trailers, inner);
        }
    };
    match polled {
        Some(Ok(frame)) => {
            if let (Some(data), Some(pending)) = (frame.data_ref(), settle.as_mut()) {
                pending.observe(data);
            }
            match frame.into_trailers() {
                Ok(mut trailers) => {
                    finish(settle, &mut trailers, true);
                    *tail = Tail::Done;
                    Some(Ok(Frame::trailers(trailers)))
                }
                Err(frame) => {
                    if ended {
                        let mut trailers = HeaderMap::new();
                        finish(settle, &mut trailers, false);
                        *tail = Tail::Trailers(trailers);
                    }
                    Some(Ok(frame))
                }
            }
        }
        Some(Err(error)) => {
            // A broken stream after a good head: the guard, dropped, commits what the
            // `Charge` says so far.
            *settle = None;
            Some(Err(error.into()))
        }
        None => {
            let mut trailers = HeaderMap::new();
            finish(settle, &mut trailers, false);
            *tail = Tail::Done;
            Some(Ok(Frame::trailers(trailers)))
        }
    }
}

/// The error type of [`ResponseBody`]: the inner body's error, or [`ReaderStalled`].
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A [`ResponseBody`] that settles at its end left a frame unread for the layer's
/// [`stall_timeout`](crate::CreditLayer::stall_timeout): its hold was committed at what the
/// `Charge` said so far, and the body ends with this error. A body waiting on the handler
/// (nothing to send yet) is never stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reader stopped reading; the response was cut short and billed for what was sent")]
#[non_exhaustive]
pub struct ReaderStalled;

/// A [`ResponseBody`] that settles at its end was still streaming at the layer's
/// [`max_hold_lifetime`](crate::CreditLayer::max_hold_lifetime): its hold was committed at
/// what the `Charge` said so far, and the body ends with this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the response ran past the hold lifetime cap; it was cut short and billed for what was sent"
)]
#[non_exhaustive]
pub struct HoldLifetimeExceeded;

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner {
                body,
                settle: None,
                tail: Tail::Streaming,
            },
        }
    }

    pub(crate) fn settling(body: B, settle: Box<BodySettle>) -> Self {
        Self {
            kind: Kind::Inner {
                body,
                settle: Some(settle),
                tail: Tail::Streaming,
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
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            KindProj::Inner {
                mut body,
                settle,
                tail,
            } => {
                match std::mem::replace(tail, Tail::Streaming) {
                    Tail::Done => {
                        *tail = Tail::Done;
                        return Poll::Ready(None);
                    }
                    Tail::Trailers(trailers) => {
                        *tail = Tail::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Tail::Streaming => {}
                }
                let Some(pending) = settle.as_mut() else {
                    return body.poll_frame(cx).map_err(Into::into);
                };
                if let Some(watch) = pending.guard.watched() {
                    if let Some(cut) = watch.cut() {
                        // The keeper settled it: end the stream visibly truncated.
                        *settle = None;
                        *tail = Tail::Done;
                        let error: BoxError = match cut {
                            Cut::Stalled => Box::new(ReaderStalled),
                            Cut::Lifetime => Box::new(HoldLifetimeExceeded),
                        };
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                let Poll::Ready(polled) = body.as_mut().poll_frame(cx) else {
                    if let Some(watch) = pending.guard.watched() {
                        watch.waiting(cx.waker());
                    }
                    return Poll::Pending;
                };
                if let Some(watch) = pending.guard.watched() {
                    watch.delivered();
                }
                Poll::Ready(settle_on_end(polled, body.is_end_stream(), settle, tail))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { bytes } => bytes.is_none(),
            Kind::Inner {
                tail: Tail::Done, ..
            } => true,
            Kind::Inner {
                tail: Tail::Trailers(_),
                ..
            } => false,
            Kind::Inner {
                body, settle: None, ..
            } => body.is_end_stream(),
            // Our trailers are still to come.
            Kind::Inner { .. } => false,
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
