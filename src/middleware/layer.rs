use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower_layer::Layer;

use crate::account::AccountResolver;
use crate::events::Events;
use crate::ledger::{Ledger, DEFAULT_HOLD_TTL};
use crate::outage::{BillingStats, Breaker, OutagePolicy, Unbilled};
use crate::pricing::Pricing;
use crate::wire::headers::CreditHeaders;
use crate::wire::problem::DEFAULT_PROBLEM_TYPE_BASE;

use super::config::Shared;
use super::lookups::KeyLookups;
use super::service::CreditService;
use super::settle::PendingSettlements;
use crate::classify::{Classifiers, Classify, HttpStatus, Protocol};
use crate::refusal::Refusal;

/// How long a handler may hold credits unless [`CreditLayer::max_hold_lifetime`] says.
pub const DEFAULT_MAX_HOLD_LIFETIME: Duration = Duration::from_secs(15 * 60);

use crate::account::DEFAULT_MAX_CONCURRENT_KEY_LOOKUPS;
use crate::outage::{DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES};

/// Bills every request to the service it wraps: resolves the caller's account, holds the
/// request's price, runs the service, then commits the actual cost or refunds.
///
/// See the [crate docs](crate) for the whole flow, headers and refusals.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_credits::{pricing::Pricing, CreditLayer, MemoryLedger};
///
/// let layer = CreditLayer::new(MemoryLedger::new())
///     .pricing(Pricing::new().route("GET /v1/echo", 1).free("GET /health"))
///     .top_up_url("https://example.com/billing")
///     .low_balance_threshold(100);
///
/// let app = Router::new()
///     .route("/v1/echo", get(|| async { "echo" }))
///     .route("/health", get(|| async { "ok" }))
///     .layer(layer);
/// # let _: Router = app;
/// ```
pub struct CreditLayer<L: Ledger> {
    shared: Arc<Shared<L>>,
}

impl<L: Ledger> Clone for CreditLayer<L> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<L: Ledger> fmt::Debug for CreditLayer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditLayer")
            .field("resolver", &self.shared.resolver)
            .field("pricing", &self.shared.pricing)
            .field("hold_ttl", &self.shared.hold_ttl)
            .finish_non_exhaustive()
    }
}

impl<L: Ledger> CreditLayer<L> {
    /// A layer on `ledger` with the defaults: API keys from `Authorization: Bearer`, every
    /// route priced 1 credit ([`Pricing::new`]), holds of 60 s, success below status 400.
    pub fn new(ledger: L) -> Self {
        Self {
            shared: Arc::new(Shared {
                #[cfg(feature = "metrics")]
                requests: Arc::default(),
                grow_ledger: Arc::new(ledger.clone()),
                stream_limit: crate::StreamLimit::default(),
                ledger,
                resolver: AccountResolver::default(),
                pricing: Pricing::new(),
                headers: CreditHeaders::default(),
                hold_ttl: DEFAULT_HOLD_TTL,
                stall_timeout: None,
                max_hold_lifetime: DEFAULT_MAX_HOLD_LIFETIME,
                keeper: Arc::default(),
                lookups: Arc::new(KeyLookups::new(
                    DEFAULT_MAX_CONCURRENT_KEY_LOOKUPS,
                    DEFAULT_BREAKER_FAILURES,
                    DEFAULT_BREAKER_COOLDOWN,
                )),
                logged: Arc::default(),
                protocol: Protocol::default(),
                classifiers: Classifiers::default(),
                warned_grpc_on_http: Arc::default(),
                low_balance_threshold: None,
                events: None,
                top_up_url: None,
                problem_type_base: DEFAULT_PROBLEM_TYPE_BASE.to_owned(),
                retry_after: Duration::from_secs(1),
                pending: PendingSettlements::default(),
                outage: OutagePolicy::default(),
                breaker: Arc::new(Breaker::new(
                    DEFAULT_BREAKER_FAILURES,
                    DEFAULT_BREAKER_COOLDOWN,
                )),
                breaker_failures: DEFAULT_BREAKER_FAILURES,
                breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
                max_key_lookups: DEFAULT_MAX_CONCURRENT_KEY_LOOKUPS,
                stats: Arc::default(),
                unbilled: Unbilled::default(),
                render_refusal: None,
            }),
        }
    }

    /// Every builder method: a new configuration, with runtime state of its own (keeper,
    /// breakers, counters), so a clone reconfigured never shares them with its original.
    /// Configure a layer before taking its `stats()`, `unbilled()` or
    /// `pending_settlements()`, and before serving with it.
    fn with(mut self, f: impl FnOnce(&mut Shared<L>)) -> Self {
        let mut shared = (*self.shared).clone();
        f(&mut shared);
        shared.fresh_runtime();
        self.shared = Arc::new(shared);
        self
    }

    /// How the paying account is found (default: [`AccountResolver::api_key`]).
    pub fn account_resolver(self, resolver: AccountResolver) -> Self {
        self.with(|s| s.resolver = resolver)
    }

    /// How much each request holds.
    pub fn pricing(self, pricing: Pricing) -> Self {
        self.with(|s| s.pricing = pricing)
    }

    /// Names of the response headers.
    pub fn headers(self, headers: CreditHeaders) -> Self {
        self.with(|s| s.headers = headers)
    }

    /// How long a hold lives unless settled (default 60 s); renewed every third of it
    /// (retried until it would expire) while the handler runs or a deferred body is read.
    ///
    /// # Panics
    ///
    /// When `ttl` is under 2 ms or over a day.
    pub fn hold_ttl(self, ttl: Duration) -> Self {
        assert!(
            ttl >= Duration::from_millis(2) && ttl <= crate::ledger::MAX_HOLD_TTL,
            "hold ttl out of range"
        );
        self.with(|s| s.hold_ttl = ttl)
    }

    /// What this layer bills (default [`Protocol::Http`]): how success is read and how
    /// refusals are written. Set [`Protocol::Grpc`] on a tonic server. Routes may say
    /// otherwise with [`Pricing::protocol`]. Never read from a header: see
    /// [`classify`](crate::classify).
    ///
    /// ```
    /// use tower_credits::{classify::Protocol, CreditLayer, MemoryLedger};
    ///
    /// let layer = CreditLayer::new(MemoryLedger::new()).protocol(Protocol::Grpc);
    /// # let _ = layer;
    /// ```
    pub fn protocol(self, protocol: Protocol) -> Self {
        self.with(|s| s.protocol = protocol)
    }

    /// A body that settles at its end (a deferred charge, a gRPC stream) whose last frame
    /// was handed to the server and left unread this long — its reader stopped reading —
    /// is committed at what its `Charge` says so far, and ends with [`ReaderStalled`]
    /// (an HTTP/2 `RST_STREAM`, an HTTP/1 connection close), so a stalled reader cannot pin
    /// its hold. A body waiting on its handler (a server with nothing to send yet) is never
    /// stalled: the stall clock does not run then. Default: half the hold TTL.
    ///
    /// [`ReaderStalled`]: crate::ReaderStalled
    ///
    /// # Panics
    ///
    /// When `timeout` is zero.
    pub fn stall_timeout(self, timeout: Duration) -> Self {
        assert!(!timeout.is_zero(), "stall timeout must not be zero");
        self.with(|s| s.stall_timeout = Some(timeout))
    }

    /// What a stream does when its metered cost reaches its hold (default
    /// [`StreamLimit::End`](crate::StreamLimit::End)): end there, or grow the hold while
    /// the account affords it. A route's own
    /// [`Pricing::stream_limit`](crate::pricing::Pricing::stream_limit) wins.
    ///
    /// ```
    /// use tower_credits::{CreditLayer, MemoryLedger, StreamLimit};
    ///
    /// let layer = CreditLayer::new(MemoryLedger::new()).stream_limit(StreamLimit::grow(20));
    /// # let _ = layer;
    /// ```
    pub fn stream_limit(self, limit: crate::StreamLimit) -> Self {
        self.with(|s| s.stream_limit = limit)
    }

    /// The longest a request may hold credits (default 15 minutes), on its own timer.
    /// Past it, a handler still running is cancelled (its inner future dropped) and
    /// answered `504` (gRPC `DEADLINE_EXCEEDED`); a body still streaming ends with
    /// [`HoldLifetimeExceeded`](crate::HoldLifetimeExceeded). Either way the hold settles
    /// like any other early end: at what its [`Charge`](crate::Charge) metered so far (a
    /// fixed-price call that never answered is refunded). Holds are renewed until then.
    ///
    /// # Panics
    ///
    /// When `lifetime` is zero.
    pub fn max_hold_lifetime(self, lifetime: Duration) -> Self {
        assert!(
            !lifetime.is_zero(),
            "the hold lifetime cap must not be zero"
        );
        self.with(|s| s.max_hold_lifetime = lifetime)
    }

    /// The most distinct API keys not in the cache looked up in the ledger at once
    /// (default 64). Requests for one key share one lookup; past the bound, a request with
    /// an uncached key is refused `503` (problem type `ledger-busy`, `Retry-After: 1`; gRPC
    /// `UNAVAILABLE`), so a flood of made-up keys cannot queue work on the ledger. Cached
    /// keys are not affected.
    ///
    /// # Panics
    ///
    /// When `max` is zero.
    pub fn max_concurrent_key_lookups(self, max: usize) -> Self {
        assert!(max > 0, "at least one key lookup must be allowed");
        self.with(|s| s.max_key_lookups = max)
    }

    /// Which HTTP statuses count as success and are charged (default: below 400), on
    /// routes billed as [`Protocol::Http`]. gRPC routes are judged by `grpc-status`.
    pub fn success_when(self, f: impl Fn(StatusCode) -> bool + Send + Sync + 'static) -> Self {
        self.classifier(Protocol::Http, HttpStatus::success_when(f))
    }

    /// Replaces the classifier of one protocol (defaults: [`HttpStatus`] for HTTP,
    /// [`GrpcStatus`](crate::classify::GrpcStatus) for gRPC and gRPC-Web).
    pub fn classifier(self, protocol: Protocol, classifier: impl Classify) -> Self {
        let classifier: Arc<dyn Classify> = Arc::new(classifier);
        self.with(|s| s.classifiers.set(protocol, classifier))
    }

    /// Warn (`credits-warning`) when the remaining balance is below this, for accounts
    /// without their own threshold.
    ///
    /// # Panics
    ///
    /// When `credits` is above [`MAX_AMOUNT`](crate::ledger::MAX_AMOUNT).
    pub fn low_balance_threshold(self, credits: u64) -> Self {
        assert!(
            credits <= crate::ledger::MAX_AMOUNT,
            "low balance threshold above MAX_AMOUNT"
        );
        self.with(|s| s.low_balance_threshold = Some(credits))
    }

    /// Delivers the events this layer's requests detect (`balance.low`,
    /// `balance.runway_low`, `balance.depleted`) at once, through a running
    /// [`Dispatcher`](crate::events::Dispatcher). Without it, they wait in the ledger's
    /// outbox until a dispatcher claims them. Build the dispatcher on a clone of this
    /// layer's ledger: a detected event is leased to the ledger instance that detected it,
    /// and another instance could only take it over once that lease lapses.
    pub fn events(self, events: Events) -> Self {
        self.with(|s| s.events = Some(events))
    }

    /// Where callers top up, given in every `402`.
    pub fn top_up_url(self, url: impl Into<String>) -> Self {
        let url = url.into();
        self.with(|s| s.top_up_url = Some(url))
    }

    /// Prefix of the problem JSON `type` URIs (default `urn:tower-credits:problem:`), e.g.
    /// `https://api.example.com/problems/`.
    pub fn problem_type_base(self, base: impl Into<String>) -> Self {
        let base = base.into();
        self.with(|s| s.problem_type_base = base)
    }

    /// `Retry-After` of a `503` when the ledger is unavailable (default 1 s; whole
    /// seconds, rounded down).
    ///
    /// # Panics
    ///
    /// When `after` is under a second (a `Retry-After: 0` invites a retry storm).
    pub fn retry_after(self, after: Duration) -> Self {
        assert!(
            after >= Duration::from_secs(1),
            "retry_after must be at least a second"
        );
        self.with(|s| s.retry_after = after)
    }

    /// What to do when the ledger is unreachable or too slow (default
    /// [`OutagePolicy::FailClosed`]: `503`).
    pub fn on_outage(self, policy: OutagePolicy) -> Self {
        self.with(|s| s.outage = policy)
    }

    /// The circuit breakers: after `failures` consecutive ledger outages, requests fail fast
    /// for `cooldown` (no ledger call), then one probe is let through. Defaults: 5 failures,
    /// 1 s. Billing and API-key lookups each have a breaker with these settings (a flood of
    /// unknown keys cannot open the one that guards billing).
    ///
    /// # Panics
    ///
    /// When `failures` or `cooldown` is zero.
    pub fn circuit_breaker(self, failures: u32, cooldown: Duration) -> Self {
        assert!(
            failures > 0,
            "the circuit breaker needs at least one failure to open"
        );
        assert!(
            !cooldown.is_zero(),
            "the circuit breaker cooldown must not be zero"
        );
        self.with(|s| {
            s.breaker_failures = failures;
            s.breaker_cooldown = cooldown;
        })
    }

    /// Answers refusals of HTTP routes in your API's own error shape: `render` gets the
    /// [`Refusal`], with its figures, and returns the response, or `None` for the default
    /// (RFC 9457 problem JSON with the seed's `error` string). Where your response has no
    /// `Retry-After`, `WWW-Authenticate` or `Cache-Control`, the default's are kept. gRPC
    /// routes keep their status codes.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{header, Response};
    /// use tower_credits::{CreditLayer, MemoryLedger, Refusal};
    ///
    /// // OpenAI-style errors: {"error": {"message", "type", "code"}}.
    /// let layer = CreditLayer::new(MemoryLedger::new()).refusal_response(|refusal: &Refusal| {
    ///     let kind = match refusal {
    ///         Refusal::InsufficientCredits { .. } => "insufficient_quota",
    ///         Refusal::Unauthorized(_) => "invalid_request_error",
    ///         _ => "api_error",
    ///     };
    ///     let body = serde_json::json!({"error": {
    ///         "message": refusal.to_string(),
    ///         "type": kind,
    ///         "code": refusal.code(),
    ///     }});
    ///     Response::builder()
    ///         .status(refusal.status())
    ///         .header(header::CONTENT_TYPE, "application/json")
    ///         .body(Bytes::from(body.to_string()))
    ///         .ok()
    /// });
    /// # let _ = layer;
    /// ```
    pub fn refusal_response(
        self,
        render: impl Fn(&Refusal) -> Option<http::Response<bytes::Bytes>> + Send + Sync + 'static,
    ) -> Self {
        let render: crate::refusal::RenderRefusal = Arc::new(render);
        self.with(|s| s.render_refusal = Some(render))
    }

    /// Counters of this layer's billing: holds, confirmed commits and credits, refunds,
    /// retries, lost commits, outages.
    pub fn stats(&self) -> BillingStats {
        let mut stats = self.shared.stats.snapshot();
        let (queued, running) = self.shared.keeper.load();
        stats.keeper_queued = queued as u64;
        stats.keeper_running = running as u64;
        stats
    }

    /// Requests served unbilled under [`OutagePolicy::FailOpen`], per account.
    pub fn unbilled(&self) -> Unbilled {
        self.shared.unbilled.clone()
    }

    /// The ledger this layer bills.
    pub fn ledger(&self) -> &L {
        &self.shared.ledger
    }

    /// Settles still waiting for the ledger's answer (see [`shutdown`](Self::shutdown)).
    pub fn pending_settlements(&self) -> PendingSettlements {
        self.shared.pending.clone()
    }

    /// Graceful shutdown: closes this layer's hold keeper and waits, at most `timeout`, for
    /// the settles it still drives; `true` if they all finished. Call it after the server
    /// stopped serving (axum's `with_graceful_shutdown`, tonic's
    /// `serve_with_shutdown`). A settle that comes after is tried once, and if the ledger
    /// does not answer at once, left to expire (counted in `stats().credits_lost`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_credits::{CreditLayer, MemoryLedger};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = CreditLayer::new(MemoryLedger::new());
    /// // ... serve with `with_graceful_shutdown`, then:
    /// assert!(layer.shutdown(Duration::from_secs(5)).await);
    /// # }
    /// ```
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.shared.keeper.shutdown(timeout).await
    }
}

impl<S, L: Ledger> Layer<S> for CreditLayer<L> {
    type Service = CreditService<S, L>;

    fn layer(&self, inner: S) -> Self::Service {
        CreditService::from_shared(inner, self.shared.clone())
    }
}
