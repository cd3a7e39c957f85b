//! How a stream that settles at its end says so: the SSE `credits` event, the paid part of
//! a gRPC frame when the handler went past its hold, and what goes out after the inner
//! body.

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;

use super::body::BoxError;

/// Why the layer ended a stream, as `credits-stop` and the SSE event's `stop` say.
pub(super) const HOLD_EXHAUSTED: &str = "hold-exhausted";

/// The final SSE event: `event: credits` with the figures known (an unknown one is left
/// out, never sent as 0), and `"stop"` when the layer ended the stream.
pub(super) fn sse_credits_event(
    cost: Option<u64>,
    remaining: Option<i64>,
    reserved: u64,
    cut: bool,
) -> Bytes {
    let mut data = serde_json::Map::new();
    if let Some(cost) = cost {
        data.insert("cost".into(), cost.into());
    }
    if let Some(remaining) = remaining {
        data.insert("remaining".into(), remaining.into());
    }
    data.insert("reserved".into(), reserved.into());
    if cut {
        data.insert("stop".into(), HOLD_EXHAUSTED.into());
    }
    let json = serde_json::Value::Object(data);
    Bytes::from(format!("event: credits\ndata: {json}\n\n"))
}

/// The leading gRPC messages of `data` (5-byte length-prefixed) without the last `unpaid`
/// ones; `None` if none is left or the framing cannot be read.
pub(super) fn paid_messages(data: Bytes, unpaid: u64) -> Option<Bytes> {
    let mut ends = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let header = data.get(at..at + 5)?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        at = at.checked_add(5 + len).filter(|&end| end <= data.len())?;
        ends.push(at);
    }
    let keep = ends.len().checked_sub(usize::try_from(unpaid).ok()?)?;
    (keep > 0).then(|| data.slice(..ends[keep - 1]))
}

/// What is left to send after the inner body of a settling response.
#[derive(Debug)]
pub(super) enum Tail {
    /// The inner body is still streaming.
    Streaming,
    /// Settled as the inner body ended (or was cut at its hold): the SSE `credits` event,
    /// if any, then our trailers, one per poll. Boxed: a response settled at its head never
    /// gets here, and every response's body is moved a few times on its way out.
    Closing(Box<Closing>),
    Done,
}

/// What a settling response sends after its inner body.
#[derive(Debug)]
pub(super) struct Closing {
    event: Option<Bytes>,
    trailers: HeaderMap,
}

impl Tail {
    /// The SSE event (if any), then `trailers`.
    pub(super) fn closing(event: Option<Bytes>, trailers: HeaderMap) -> Self {
        Self::Closing(Box::new(Closing { event, trailers }))
    }
}

/// The next frame after the inner body: the SSE event, then the trailers, then nothing.
pub(super) fn next_closing(tail: &mut Tail) -> Option<Result<Frame<Bytes>, BoxError>> {
    match std::mem::replace(tail, Tail::Done) {
        Tail::Closing(mut closing) => match closing.event.take() {
            Some(event) => {
                *tail = Tail::Closing(closing);
                Some(Ok(Frame::data(event)))
            }
            None => Some(Ok(Frame::trailers(closing.trailers))),
        },
        other => {
            *tail = other;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u8) -> Vec<u8> {
        let mut m = vec![0, 0, 0, 0, 1];
        m.push(n);
        m
    }

    #[test]
    fn a_grpc_frame_keeps_its_paid_messages() {
        let frame: Bytes = [message(1), message(2), message(3)].concat().into();
        assert_eq!(paid_messages(frame.clone(), 0).unwrap(), frame);
        assert_eq!(
            paid_messages(frame.clone(), 1).unwrap(),
            Bytes::from([message(1), message(2)].concat())
        );
        assert_eq!(paid_messages(frame.clone(), 3), None, "nothing paid");
        assert_eq!(paid_messages(frame.slice(..8), 1), None, "a cut message");
    }

    #[test]
    fn an_unknown_figure_is_left_out() {
        let event = sse_credits_event(None, None, 20, true);
        assert_eq!(
            &event[..],
            b"event: credits\ndata: {\"reserved\":20,\"stop\":\"hold-exhausted\"}\n\n"
        );
        let event = sse_credits_event(Some(5), Some(95), 20, false);
        assert_eq!(
            &event[..],
            b"event: credits\ndata: {\"cost\":5,\"remaining\":95,\"reserved\":20}\n\n"
        );
    }
}
