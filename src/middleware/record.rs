//! Idempotent requests in the layer: the response of a keyed request, copied as it streams
//! and stored for its replays when its body ends; and a replay answered from what was
//! stored.

use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::Frame;

use super::guard::HoldCtx;
use super::settle::Settler;
use crate::idempotency::IDEMPOTENT_REPLAYED;
use crate::ledger::StoreResponse;
use crate::wire::headers::{self, CreditHeaders};
use crate::wire::problem::WireResponse;

/// What a keyed hold carries: its key's digest and how much of its response to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyedHold {
    pub(crate) key: [u8; 32],
    pub(crate) max_response: usize,
}

/// The response of a keyed request, copied as it goes out.
pub(crate) struct Recorder {
    settler: Arc<dyn Settler>,
    hold: HoldCtx,
    key: [u8; 32],
    status: StatusCode,
    headers: HeaderMap,
    body: BytesMut,
    max: usize,
    too_large: bool,
}

impl Recorder {
    /// Starts copying a response whose head is `status` and `headers` (the figures of this
    /// call are left out: a replay says its own).
    pub(crate) fn new(
        settler: Arc<dyn Settler>,
        hold: HoldCtx,
        keyed: KeyedHold,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Box<Self> {
        let names = settler.headers();
        let kept = headers
            .iter()
            .filter(|(name, _)| !is_per_call(name, names))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Box::new(Self {
            settler,
            hold,
            key: keyed.key,
            status,
            headers: kept,
            body: BytesMut::new(),
            max: keyed.max_response,
            too_large: false,
        })
    }

    fn data(&mut self, data: &Bytes) {
        if self.too_large {
            return;
        }
        if self.body.len() + data.len() > self.max {
            // Served whole, billed once; its retries learn it cannot be replayed.
            self.too_large = true;
            self.body = BytesMut::new();
            return;
        }
        self.body.extend_from_slice(data);
    }

    /// The body ended: stores the response (or marks it too large), off the request's
    /// path. A response whose request was refunded is not kept (its record is gone).
    fn end(self: Box<Self>) {
        let charge = &self.hold.charge;
        let (account, hold) = (charge.account().clone(), charge.hold_id().clone());
        let store = if self.too_large {
            StoreResponse::unavailable(account, hold, self.key)
        } else {
            let encoded = encode(self.status, &self.headers, &self.body);
            StoreResponse::new(account, hold, self.key, encoded)
        };
        self.settler.store(store);
    }
}

/// Feeds what a body just gave to its recorder: the data, and the end (`ended`: the body
/// says no more frames will come). A body that fails stores nothing.
pub(crate) fn observe<E>(
    record: &mut Option<Box<Recorder>>,
    polled: &Poll<Option<Result<Frame<Bytes>, E>>>,
    ended: bool,
) {
    let Poll::Ready(polled) = polled else { return };
    match polled {
        Some(Ok(frame)) => {
            if let (Some(recorder), Some(data)) = (record.as_mut(), frame.data_ref()) {
                recorder.data(data);
            }
            if ended || frame.is_trailers() {
                if let Some(recorder) = record.take() {
                    recorder.end();
                }
            }
        }
        None => {
            if let Some(recorder) = record.take() {
                recorder.end();
            }
        }
        Some(Err(_)) => *record = None,
    }
}

/// Headers that belong to one call, never replayed as they were: the layer's figures and
/// the framing.
fn is_per_call(name: &HeaderName, names: &CreditHeaders) -> bool {
    names.is_credit_header(name)
        || name == http::header::CONTENT_LENGTH
        || name == http::header::TRANSFER_ENCODING
        || name == http::header::TRAILER
        || name == http::header::CONNECTION
}

/// A replay: the stored response, with `Idempotent-Replayed: true`, `credits-cost: 0` and
/// the balance now. `None` when what was stored does not decode.
pub(crate) fn replay(names: &CreditHeaders, stored: &[u8], available: i64) -> Option<WireResponse> {
    let (status, mut headers, body) = decode(stored)?;
    headers.insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    headers.insert(names.cost.clone(), headers::int(0));
    headers.insert(names.remaining.clone(), headers::int(available));
    let mut response = Response::new(Some(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Some(response)
}

const MAGIC: &[u8; 4] = b"TCR1";

/// `TCR1`, the status (u16), the header count (u16), each header as name (u16 length) and
/// value (u32 length), then the body.
fn encode(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + body.len());
    out.put_slice(MAGIC);
    out.put_u16(status.as_u16());
    out.put_u16(headers.len().min(u16::MAX as usize) as u16);
    for (name, value) in headers.iter().take(u16::MAX as usize) {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.put_slice(body);
    out.freeze()
}

fn decode(mut input: &[u8]) -> Option<(StatusCode, HeaderMap, Bytes)> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        (input.len() >= n).then(|| {
            let (head, rest) = input.split_at(n);
            *input = rest;
            head
        })
    }
    if take(&mut input, 4)? != MAGIC || input.len() < 4 {
        return None;
    }
    let status = StatusCode::from_u16(input.get_u16()).ok()?;
    let count = input.get_u16();
    let mut headers = HeaderMap::new();
    for _ in 0..count {
        let len = u16::from_be_bytes(take(&mut input, 2)?.try_into().ok()?) as usize;
        let name = HeaderName::from_bytes(take(&mut input, len)?).ok()?;
        let len = u32::from_be_bytes(take(&mut input, 4)?.try_into().ok()?) as usize;
        let value = HeaderValue::from_bytes(take(&mut input, len)?).ok()?;
        headers.append(name, value);
    }
    Some((status, headers, Bytes::copy_from_slice(input)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_response_decodes_as_it_was() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        let encoded = encode(StatusCode::CREATED, &headers, b"{\"ok\":true}");
        let (status, decoded, body) = decode(&encoded).unwrap();
        assert_eq!(
            (status, &body[..]),
            (StatusCode::CREATED, &b"{\"ok\":true}"[..])
        );
        assert_eq!(decoded, headers);
    }

    /// What a store holds is checked as it is read: a cut or foreign value is no replay.
    #[test]
    fn a_damaged_record_is_no_replay() {
        let encoded = encode(StatusCode::OK, &HeaderMap::new(), b"body");
        assert!(decode(&encoded[..5]).is_none());
        assert!(decode(b"XXXX\x00\xc8\x00\x00").is_none());
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("b"));
        let encoded = encode(StatusCode::OK, &headers, b"");
        assert!(decode(&encoded[..encoded.len() - 1]).is_none());
    }

    #[test]
    fn a_replay_says_it_is_one_and_costs_nothing() {
        let names = CreditHeaders::default();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let stored = encode(StatusCode::OK, &headers, b"hello");
        let response = replay(&names, &stored, 42).unwrap();
        assert_eq!(response.headers()["idempotent-replayed"], "true");
        assert_eq!(response.headers()["credits-cost"], "0");
        assert_eq!(response.headers()["credits-remaining"], "42");
        assert_eq!(response.body().as_deref(), Some(&b"hello"[..]));
    }
}
