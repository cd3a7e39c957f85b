//! The layer's configuration: what every service a [`CreditLayer`](super::CreditLayer)
//! makes shares, built by the layer's builder methods and read on every request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::keeper::{Keeper, WorkerCtx};
use super::lookups::KeyLookups;
use super::settle::PendingSettlements;
use crate::account::AccountResolver;
use crate::classify::{Classifiers, Protocol};
use crate::events::Events;
use crate::ledger::Ledger;
use crate::outage::{Breaker, OutagePolicy, Stats, Unbilled};
use crate::pricing::Pricing;
use crate::refusal::RenderRefusal;
use crate::wire::headers::CreditHeaders;
use crate::wire::problem::ProblemCtx;

/// Everything a layer's services share: its frozen configuration, and the runtime state
/// (keeper, breakers, counters) that belongs to that configuration alone. Cloned only
/// while the layer is being configured, and every builder call gives the copy runtime
/// state of its own ([`Shared::fresh_runtime`]).
#[derive(Clone)]
pub(crate) struct Shared<L: Ledger> {
    pub(crate) ledger: L,
    /// `credits_requests_total`'s handles, kept.
    #[cfg(feature = "metrics")]
    pub(crate) requests: Arc<crate::metrics::RequestCounters>,
    pub(crate) resolver: AccountResolver,
    pub(crate) pricing: Pricing,
    pub(crate) headers: CreditHeaders,
    pub(crate) hold_ttl: Duration,
    /// A body not polled this long is ended (default: half the hold's TTL).
    pub(crate) stall_timeout: Option<Duration>,
    /// How long a handler may hold credits before it is cancelled and refunded.
    pub(crate) max_hold_lifetime: Duration,
    pub(crate) keeper: Arc<Keeper<L>>,
    pub(crate) lookups: Arc<KeyLookups>,
    /// Which kinds of billing error were logged already: each is logged once, in full.
    pub(crate) logged: Arc<LoggedOnce>,
    /// What the layer bills, unless the route's pricing says otherwise.
    pub(crate) protocol: Protocol,
    pub(crate) classifiers: Classifiers,
    /// Set once an HTTP-billed route answered with a gRPC content type.
    pub(crate) warned_grpc_on_http: Arc<AtomicBool>,
    pub(crate) low_balance_threshold: Option<u64>,
    /// Where detected events go at once (else they wait in the outbox for a claim).
    pub(crate) events: Option<Events>,
    pub(crate) top_up_url: Option<String>,
    pub(crate) problem_type_base: String,
    pub(crate) retry_after: Duration,
    pub(crate) pending: PendingSettlements,
    pub(crate) outage: OutagePolicy,
    pub(crate) breaker: Arc<Breaker>,
    /// The billing breaker's settings; the key-lookup breaker follows them.
    pub(crate) breaker_failures: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) max_key_lookups: usize,
    pub(crate) stats: Arc<Stats>,
    pub(crate) unbilled: Unbilled,
    /// Renders HTTP refusals in the user's shape.
    pub(crate) render_refusal: Option<RenderRefusal>,
    /// The ledger again, as what a `Charge` grows its hold with (one per layer, shared).
    pub(crate) grow_ledger: Arc<dyn crate::charge::GrowHold>,
    /// What a stream does at its hold, unless its route says.
    pub(crate) stream_limit: crate::StreamLimit,
}

/// Billing errors that are logged once per kind (they repeat on every request until fixed).
#[derive(Default)]
pub(crate) struct LoggedOnce {
    ledger: AtomicBool,
    pricing: AtomicBool,
}

/// A kind of billing error (never the caller's fault, never an outage).
#[derive(Clone, Copy, Debug)]
pub(crate) enum BillingErrorKind {
    /// The ledger answered with an error that is not an outage: an unexpected reply, a
    /// script error, input it refused.
    Ledger,
    /// The pricing closure returned a price the ledger cannot hold.
    Pricing,
}

impl<L: Ledger> Shared<L> {
    /// New runtime state for this configuration: a keeper (whose worker takes this
    /// configuration's TTL, stall timeout and events), breakers built from its settings,
    /// counters from zero. A layer cloned and then reconfigured shares none of it with its
    /// original.
    pub(crate) fn fresh_runtime(&mut self) {
        self.keeper = Arc::default();
        self.breaker = Arc::new(Breaker::new(self.breaker_failures, self.breaker_cooldown));
        self.lookups = Arc::new(KeyLookups::new(
            self.max_key_lookups,
            self.breaker_failures,
            self.breaker_cooldown,
        ));
        self.stats = Arc::default();
        self.unbilled = Unbilled::default();
        self.pending = PendingSettlements::default();
        self.logged = Arc::default();
        self.warned_grpc_on_http = Arc::default();
    }

    /// Counts a billing error, and logs its kind the first time, with what to do.
    pub(crate) fn billing_error(&self, kind: BillingErrorKind, detail: &dyn std::fmt::Display) {
        crate::outage::Stats::add(&self.stats.billing_errors, 1);
        let flag = match kind {
            BillingErrorKind::Ledger => &self.logged.ledger,
            BillingErrorKind::Pricing => &self.logged.pricing,
        };
        if flag.swap(true, Ordering::Relaxed) {
            tracing::debug!(?kind, %detail, "billing error");
            return;
        }
        match kind {
            BillingErrorKind::Ledger => tracing::error!(
                %detail,
                "the ledger answered with an error that is not an outage (an unexpected reply, \
                 a script error, corrupt state): requests are refused with 500 and nothing is \
                 served unbilled. Check the ledger's version and its keys; logged once, counted \
                 in `stats().billing_errors`"
            ),
            BillingErrorKind::Pricing => tracing::error!(
                %detail,
                "the pricing closure returned a price above MAX_AMOUNT: such requests are refused \
                 with 500. Fix the closure; logged once, counted in `stats().billing_errors`"
            ),
        }
    }

    /// What the keeper's worker takes with it when it starts.
    pub(crate) fn worker_ctx(&self) -> WorkerCtx<L> {
        WorkerCtx {
            ledger: self.ledger.clone(),
            breaker: self.breaker.clone(),
            stats: self.stats.clone(),
            events: self.events.clone(),
            hold_ttl: self.hold_ttl,
            stall_timeout: self.stall_timeout(),
        }
    }

    pub(crate) fn stall_timeout(&self) -> Duration {
        self.stall_timeout.unwrap_or(self.hold_ttl / 2)
    }

    /// A layer billing HTTP saw a gRPC response: it is judged by its HTTP status (a
    /// content type is not proof of anything), but the server is likely misconfigured.
    pub(crate) fn warn_grpc_response_on_http(&self) {
        if !self.warned_grpc_on_http.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a route billed as HTTP answered with an application/grpc content type; it is \
                 billed by its HTTP status. If this server serves gRPC, set \
                 `CreditLayer::protocol(Protocol::Grpc)` or `Pricing::protocol` for its routes"
            );
        }
    }

    pub(crate) fn problem_ctx(&self, grpc: bool) -> ProblemCtx<'_> {
        ProblemCtx {
            type_base: &self.problem_type_base,
            top_up_url: self.top_up_url.as_deref(),
            retry_after_secs: self.retry_after.as_secs().max(1),
            grpc,
        }
    }
}
