//! Idempotent requests over HTTP: [`IdempotencyLayer`] reads the `Idempotency-Key` header
//! and fingerprints the request, so the [`CreditLayer`](crate::CreditLayer) inside it
//! bills a retried call once and answers its retries from the first response.
//!
//! # What a caller gets
//!
//! | the key's request | a request with the same key gets |
//! |---|---|
//! | none yet (or forgotten after the retention, 24 h by default) | the call, billed once |
//! | committed, response stored | the stored status, headers and body, with `Idempotent-Replayed: true` and `credits-cost: 0`; nothing charged |
//! | still running (or its response still being stored) | `409` `request-in-progress`, with `Retry-After` |
//! | another method, path, query or body | `422` `idempotency-key-reused` |
//! | committed, its response too large to store or lost in a crash | `409` `replay-unavailable`: never run again, since that would charge twice |
//! | refused, or refunded (a `4xx`/`5xx` the layer refunds) | the call again: nothing was stored |
//!
//! A malformed key is `400` `invalid-header`; a keyed body over
//! [`max_request_body`](IdempotencyLayer::max_request_body) (1 MiB) is `413`
//! `payload-too-large`. Keys are per account: the same key from two accounts is two keys.
//!
//! # What it costs
//!
//! A request without the header costs nothing more. A keyed request's body is buffered
//! (to fingerprint it: SHA-256 of method, path with query, and body), its claim rides in
//! the reserve script, and its response is copied (up to
//! [`max_stored_response`](IdempotencyLayer::max_stored_response)) and stored by one more
//! ledger call after the body ends, off the request's path. A streamed response is replayed
//! whole when it was stored whole.
//!
//! HTTP only: gRPC requests are not fingerprinted (their retries carry no such header).
//!
//! # Where it goes
//!
//! Outside the credit layer (in axum, a `.layer` call after the credit layer's), so the
//! credit layer finds the key in the request:
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{routing::post, Router};
//! use tower_credits::{idempotency::IdempotencyLayer, pricing::Pricing, CreditLayer, MemoryLedger};
//!
//! let credits = CreditLayer::new(MemoryLedger::new())
//!     .pricing(Pricing::new().route("POST /v1/generate", 50));
//! let app: Router = Router::new()
//!     .route("/v1/generate", post(|| async { "generated" }))
//!     .layer(credits)
//!     .layer(IdempotencyLayer::new());
//! # }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, Either};
use http::{HeaderName, Request};
use http_body::Body;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tower_layer::Layer;
use tower_service::Service;

use crate::ledger::idempotency::{check_retention, DEFAULT_IDEMPOTENCY_RETENTION};
use crate::ledger::IdempotencyClaim;

/// The request header: `Idempotency-Key`.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header of a replay: `Idempotent-Replayed: true`.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Default most bytes of a keyed request's body: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;
/// Default most bytes of a response stored for replays: 1 MiB.
pub const DEFAULT_MAX_STORED_RESPONSE: usize = 1 << 20;

/// What a keyed request asks of the credit layer, put in its extensions by
/// [`Idempotency`].
#[derive(Debug, Clone)]
pub(crate) enum Keyed {
    /// A valid key: claim it in the reserve, store the response up to `max_response`.
    Claim {
        claim: IdempotencyClaim,
        max_response: usize,
    },
    /// The header is not a valid key.
    Invalid,
    /// The body is over the limit.
    TooLarge { limit: usize },
}

/// Reads `Idempotency-Key` and fingerprints keyed requests for the
/// [`CreditLayer`](crate::CreditLayer) inside it. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

#[derive(Debug, Clone)]
struct Config {
    retention: Duration,
    max_request_body: usize,
    max_stored_response: usize,
}

impl Default for IdempotencyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl IdempotencyLayer {
    /// Keys kept 24 hours, keyed bodies up to 1 MiB, responses stored up to 1 MiB.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                retention: DEFAULT_IDEMPOTENCY_RETENTION,
                max_request_body: DEFAULT_MAX_REQUEST_BODY,
                max_stored_response: DEFAULT_MAX_STORED_RESPONSE,
            }),
        }
    }

    /// How long a key is remembered (default 24 hours; at most 30 days). Past it, the key
    /// is new again.
    ///
    /// # Panics
    ///
    /// When `retention` is zero or over 30 days.
    pub fn retention(mut self, retention: Duration) -> Self {
        check_retention(retention).expect("idempotency retention of 1 ms to 30 days");
        Arc::make_mut(&mut self.config).retention = retention;
        self
    }

    /// The most bytes of body a keyed request may carry (default 1 MiB): it is buffered to
    /// be fingerprinted. A larger one is answered `413`.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_request_body = bytes;
        self
    }

    /// The most bytes of response body stored for replays (default 1 MiB). A larger
    /// response is still served and billed once; its retries get `409`
    /// `replay-unavailable`.
    pub fn max_stored_response(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_stored_response = bytes;
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Idempotency<S> {
        Idempotency {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`IdempotencyLayer`].
#[derive(Debug, Clone)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, B> Service<Request<B>> for Idempotency<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut keys = req.headers().get_all(&IDEMPOTENCY_KEY).iter();
        let Some(value) = keys.next() else {
            // No key: no buffering, no extra cost.
            return Either::Left(self.inner.call(req));
        };
        let key = match keys.next() {
            Some(_) => None,
            None => parse_key(value.as_bytes()),
        };
        // The service that was made ready goes with the request (tower's clone-and-swap).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let config = self.config.clone();
        Either::Right(Box::pin(async move {
            let req = keyed(req, key, &config).await;
            inner.call(req).await
        }))
    }
}

/// The request with what the credit layer needs to know in its extensions: its claim (its
/// body buffered and put back), or why it has none.
async fn keyed<B>(req: Request<B>, key: Option<String>, config: &Config) -> Request<B>
where
    B: Body + From<Bytes>,
{
    let (mut parts, body) = req.into_parts();
    let Some(key) = key else {
        parts.extensions.insert(Keyed::Invalid);
        return Request::from_parts(parts, body);
    };
    let limit = config.max_request_body;
    let Some(bytes) = buffer(body, limit).await else {
        parts.extensions.insert(Keyed::TooLarge { limit });
        return Request::from_parts(parts, B::from(Bytes::new()));
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let fingerprint = fingerprint(parts.method.as_str(), path, &bytes);
    let claim = IdempotencyClaim::new(&key, fingerprint)
        .expect("a parsed key is a valid key")
        .retention(config.retention);
    parts.extensions.insert(Keyed::Claim {
        claim,
        max_response: config.max_stored_response,
    });
    Request::from_parts(parts, B::from(bytes))
}

/// The body, whole, if it is at most `limit` bytes (and reads without error; a failed
/// body fingerprints as what was read, and the service sees the same bytes).
async fn buffer<B: Body>(body: B, limit: usize) -> Option<Bytes> {
    let mut body = std::pin::pin!(body);
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(mut data) = frame.into_data() {
            use bytes::Buf;
            if bytes.len() + data.remaining() > limit {
                return None;
            }
            while data.has_remaining() {
                let chunk = data.chunk();
                bytes.extend_from_slice(chunk);
                let n = chunk.len();
                data.advance(n);
            }
        }
    }
    Some(bytes.freeze())
}

/// SHA-256 of the method, the path with its query, and the body, each length-prefixed so
/// no two requests share a fingerprint by moving bytes between parts.
pub(crate) fn fingerprint(method: &str, path_and_query: &str, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [method.as_bytes(), path_and_query.as_bytes(), body] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// The key of an `Idempotency-Key` value: a structured-field string (`"…"`, with `\"` and
/// `\\` escapes) or a bare token; 1 to 255 printable ASCII characters. `None`: malformed.
pub(crate) fn parse_key(value: &[u8]) -> Option<String> {
    let printable = |b: u8| (0x20..=0x7e).contains(&b);
    let key = match value {
        [b'"', inner @ .., b'"'] => {
            let mut key = Vec::with_capacity(inner.len());
            let mut escaped = false;
            for &b in inner {
                match (escaped, b) {
                    (false, b'\\') => escaped = true,
                    (false, b'"') => return None,
                    (true, b'"' | b'\\') => {
                        key.push(b);
                        escaped = false;
                    }
                    (true, _) => return None,
                    (false, b) if printable(b) => key.push(b),
                    _ => return None,
                }
            }
            if escaped {
                return None;
            }
            key
        }
        bare if bare.iter().all(|&b| b.is_ascii_graphic() && b != b'"') => bare.to_vec(),
        _ => return None,
    };
    if key.is_empty() || key.len() > 255 {
        return None;
    }
    String::from_utf8(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_as_strings_or_tokens() {
        let table: [(&[u8], Option<&str>); 11] = [
            (b"abc-123", Some("abc-123")),
            (b"\"abc 123\"", Some("abc 123")),
            (b"\"a\\\"b\\\\c\"", Some("a\"b\\c")),
            (b"\"\"", None),
            (b"", None),
            (b"\"open", None),
            (b"a b", None),
            (b"\"bad \\x escape\"", None),
            (b"\"tab\there\"", None),
            (b"caf\xc3\xa9", None),
            (b"\"trailing\\\"", None),
        ];
        for (value, expected) in table {
            assert_eq!(
                parse_key(value).as_deref(),
                expected,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        assert!(parse_key("k".repeat(255).as_bytes()).is_some());
        assert!(parse_key("k".repeat(256).as_bytes()).is_none());
    }

    #[test]
    fn fingerprints_differ_by_every_part() {
        let base = fingerprint("POST", "/v1/generate?x=1", b"{}");
        assert_eq!(base, fingerprint("POST", "/v1/generate?x=1", b"{}"));
        assert_ne!(base, fingerprint("PUT", "/v1/generate?x=1", b"{}"));
        assert_ne!(base, fingerprint("POST", "/v1/generate?x=2", b"{}"));
        assert_ne!(base, fingerprint("POST", "/v1/generate?x=1", b"{ }"));
        // Bytes moved between parts do not collide.
        assert_ne!(
            fingerprint("POST", "/a", b"b"),
            fingerprint("POST", "/ab", b"")
        );
    }
}
