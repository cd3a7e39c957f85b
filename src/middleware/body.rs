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

use super::grow::StreamGrowth;
use super::grpc_web::TrailerScanner;
use super::guard::HoldGuard;
use super::keeper::Cut;
use super::record::{self, Recorder};
use super::settlement::End;
use super::settlement::{at_body_end, cost_of, Awaiting};
use super::stream_end::{next_closing, paid_messages, sse_credits_event, Tail, HOLD_EXHAUSTED};
use super::watch::{HoldLifetimeExceeded, ReaderStalled};
use crate::classify::{Classify, Verdict};
use crate::wire::{grpc, headers};

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
        // A keyed request's response, copied for its replays.
        record: Option<Box<Recorder>>,
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

/// A hold waiting for the end of the body.
pub(crate) struct BodySettle {
    /// Watched by the keeper (renewals, lifetime cap, stall clock) when there is one.
    guard: HoldGuard,
    /// What the end of the body decides: the cost, or the verdict too.
    awaiting: Awaiting,
    classifier: Arc<dyn Classify>,
    /// gRPC-Web: the status may come in a trailer frame inside the body.
    scanner: Option<TrailerScanner>,
    /// How the end is told: gRPC trailers, an SSE event, or HTTP trailers.
    kind: StreamKind,
    /// Refused `add`/`set` calls already seen: one more means a frame past the hold.
    refused_seen: u64,
    /// [`StreamLimit::Grow`](crate::StreamLimit::Grow): when to grow, and the growth
    /// under way.
    growth: StreamGrowth,
}

/// What a settling body is, for how it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    Http,
    /// `text/event-stream`: the figures go in a final `event: credits` too.
    Sse,
    /// gRPC (HTTP/2, length-prefixed messages): a cut ends with `RESOURCE_EXHAUSTED`.
    Grpc,
    GrpcWeb,
}

impl BodySettle {
    /// `guard`: the hold, its head sent; watched by the keeper from now on.
    pub(crate) fn new(
        guard: HoldGuard,
        awaiting: Awaiting,
        classifier: Arc<dyn Classify>,
        scanner: Option<TrailerScanner>,
        kind: StreamKind,
    ) -> Box<Self> {
        let refused_seen = guard.hold().charge.refused();
        Box::new(Self {
            guard,
            awaiting,
            classifier,
            scanner,
            kind,
            refused_seen,
            growth: StreamGrowth::default(),
        })
    }

    /// A frame came from the handler: `Some(frame)` to deliver, or `None` when it went past
    /// the hold (a refused `add` since the last frame) and the stream must end. A gRPC
    /// frame keeps the messages that were paid for (tonic may put several in one frame).
    fn admit(&mut self, frame: Frame<Bytes>) -> Result<Frame<Bytes>, Option<Frame<Bytes>>> {
        let refused = self.guard.hold().charge.refused();
        // Fewer than seen: the handler grew its hold and recovered.
        let unpaid = refused.saturating_sub(self.refused_seen);
        self.refused_seen = refused;
        if unpaid == 0 {
            return Ok(frame);
        }
        match (self.kind, frame.into_data()) {
            (StreamKind::Grpc, Ok(data)) => Err(paid_messages(data, unpaid).map(Frame::data)),
            _ => Err(None),
        }
    }

    fn observe(&mut self, data: &Bytes) {
        if let Some(scanner) = &mut self.scanner {
            scanner.feed(data);
        }
    }

    /// Settles by what the end of the body says, and writes the final figures into
    /// `trailers` (the inner body's, when `from_inner`, else our own); returns the SSE
    /// `credits` event to send before them. `cut`: the layer ended the stream at its hold.
    fn finish(
        self: Box<Self>,
        trailers: &mut HeaderMap,
        from_inner: bool,
        cut: bool,
    ) -> Option<Bytes> {
        let mut this = *self;
        let kind = this.kind;
        let (classifier, scanner) = (&this.classifier, &this.scanner);
        let end = if cut {
            End::Early
        } else {
            at_body_end(this.awaiting, || {
                let verdict = classifier.classify_end(from_inner.then_some(&*trailers));
                match scanner.as_ref().and_then(TrailerScanner::trailers) {
                    Some(framed) if verdict == Verdict::Unknown => {
                        classifier.classify_end(Some(framed))
                    }
                    _ => verdict,
                }
            })
        };
        // `None`: the keeper settled it first; the figures are not known here.
        let cost = this.guard.settle(end).map(cost_of);
        let (hold, settler) = (this.guard.hold(), this.guard.settler());
        let names = settler.headers();
        let reserved = hold.charge.reserved();
        // The handler hit its hold: the layer cut the stream, or the handler stopped when
        // its `add` was refused.
        let hit = cut || hold.charge.refused() > 0;
        if let Some(cost) = cost {
            trailers.insert(names.cost.clone(), headers::int(cost));
            trailers.insert(names.remaining.clone(), headers::int(hold.remaining(cost)));
            headers::write_warning(trailers, names, hold.remaining(cost), &hold.thresholds);
        }
        if hit {
            trailers.insert(
                names.stop.clone(),
                http::HeaderValue::from_static(HOLD_EXHAUSTED),
            );
        }
        if cut && matches!(kind, StreamKind::Grpc | StreamKind::GrpcWeb) {
            grpc::hold_exhausted(trailers, reserved, cost.unwrap_or(reserved));
        }
        (kind == StreamKind::Sse).then(|| {
            let remaining = cost.map(|cost| hold.remaining(cost));
            sse_credits_event(cost, remaining, reserved, hit)
        })
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
    // Settles, and queues what goes out after the last frame.
    let close = |settle: &mut Option<Box<BodySettle>>, tail: &mut Tail, cut: bool| {
        let mut trailers = HeaderMap::new();
        let event = settle
            .take()
            .and_then(|pending| pending.finish(&mut trailers, false, cut));
        *tail = Tail::closing(event, trailers);
    };
    match polled {
        Some(Ok(frame)) => {
            let Some(pending) = settle.as_mut() else {
                return Some(Ok(frame));
            };
            pending.growth.frame(&pending.guard.hold().charge);
            if let Some(data) = frame.data_ref() {
                pending.observe(data);
            }
            let frame = match pending.admit(frame) {
                Ok(frame) => frame,
                // Past the hold: end here, cleanly, with what was paid for.
                Err(paid) => {
                    close(settle, tail, true);
                    return match paid {
                        Some(frame) => Some(Ok(frame)),
                        None => next_closing(tail),
                    };
                }
            };
            match frame.into_trailers() {
                Ok(mut trailers) => {
                    let event = settle
                        .take()
                        .and_then(|pending| pending.finish(&mut trailers, true, false));
                    match event {
                        Some(event) => {
                            *tail = Tail::closing(None, trailers);
                            Some(Ok(Frame::data(event)))
                        }
                        None => {
                            *tail = Tail::Done;
                            Some(Ok(Frame::trailers(trailers)))
                        }
                    }
                }
                Err(frame) => {
                    if ended {
                        close(settle, tail, false);
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
            close(settle, tail, false);
            next_closing(tail)
        }
    }
}

/// The error type of [`ResponseBody`]: the inner body's error, or [`ReaderStalled`].
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner {
                body,
                settle: None,
                tail: Tail::Streaming,
            },
            record: None,
        }
    }

    pub(crate) fn settling(body: B, settle: Box<BodySettle>) -> Self {
        Self {
            kind: Kind::Inner {
                body,
                settle: Some(settle),
                tail: Tail::Streaming,
            },
            record: None,
        }
    }

    /// Copies what this body sends for the replays of its keyed request; stored at its
    /// end (at once for a body that is already over).
    pub(crate) fn recording(mut self, recorder: Box<Recorder>) -> Self
    where
        B: Body,
    {
        let mut record = Some(recorder);
        if kind_ended(&self.kind) {
            record::observe(&mut record, &Poll::Ready(None::<Result<_, BoxError>>), true);
        }
        self.record = record;
        self
    }

    /// A refusal's body: problem JSON, or nothing (a gRPC trailers-only response).
    pub(crate) fn refusal(bytes: Option<Bytes>) -> Self {
        Self {
            kind: Kind::Full { bytes },
            record: None,
        }
    }
}

/// An empty body: what a gRPC trailers-only refusal carries.
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self {
            kind: Kind::Full { bytes: None },
            record: None,
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
        let mut this = self.project();
        let polled = poll_kind(this.kind.as_mut(), cx);
        if this.record.is_some() {
            record::observe(this.record, &polled, kind_ended(&this.kind));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        kind_ended(&self.kind)
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

fn poll_kind<B>(
    kind: Pin<&mut Kind<B>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match kind.project() {
        KindProj::Full { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        KindProj::Inner {
            mut body,
            settle,
            tail,
        } => {
            match tail {
                Tail::Done => return Poll::Ready(None),
                Tail::Closing(_) => return Poll::Ready(next_closing(tail)),
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
            // The hold grows (when the stream may) before the handler's next frame; a
            // reader waiting on that, as on the handler, is not stalled.
            let ready = match pending.growth.poll(pending.guard.hold(), cx) {
                Poll::Ready(()) => body.as_mut().poll_frame(cx),
                Poll::Pending => Poll::Pending,
            };
            let Poll::Ready(polled) = ready else {
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

fn kind_ended<B: Body>(kind: &Kind<B>) -> bool {
    match kind {
        Kind::Full { bytes } => bytes.is_none(),
        Kind::Inner {
            tail: Tail::Done, ..
        } => true,
        Kind::Inner {
            tail: Tail::Closing(_),
            ..
        } => false,
        Kind::Inner {
            body, settle: None, ..
        } => body.is_end_stream(),
        // Our trailers are still to come.
        Kind::Inner { .. } => false,
    }
}
