//! A drop-in [tower] middleware that makes any axum or tonic service bill its callers in
//! **prepaid credits**.
//!
//! For every request, [`CreditLayer`]:
//!
//! 1. resolves the caller's account ([`account::AccountResolver`]: an API key stored only
//!    as a hash, a trusted header, an extension your auth layer set, or a closure);
//! 2. prices the request ([`pricing::Pricing`]: per route and method, or a closure);
//! 3. holds that price in the [`Ledger`] atomically — one Redis round trip with
//!    [`RedisLedger`], none with the embedded [`MemoryLedger`] — or refuses before your
//!    handler runs (`402` problem JSON, or gRPC `FAILED_PRECONDITION`);
//! 4. runs your service, which may lower the cost through its [`Charge`];
//! 5. commits the actual cost and releases the rest, or refunds the whole hold when the
//!    request failed, errored, panicked or was cancelled;
//! 6. tells the caller what happened: `credits-cost`, `credits-remaining`, a low-balance
//!    `credits-warning` before the cut-off, and the `credits-runway` at the current rate.
//!
//! Callers are never surprised: every billed response says what it cost and what is left,
//! and every refusal says why, how much is missing and where to top up.
//!
//! # Example
//!
//! ```
//! use axum::{routing::{get, post}, Router};
//! use tower_credits::{pricing::Pricing, Charge, CreditLayer, MemoryLedger};
//!
//! let credits = CreditLayer::new(MemoryLedger::new()) // or RedisLedger, shared by replicas
//!     .pricing(
//!         Pricing::new()
//!             .route("GET /v1/echo", 1)
//!             .route("POST /v1/generate", 50) // a hold: the handler says what it used
//!             .free("GET /health"),
//!     )
//!     .low_balance_threshold(100)
//!     .top_up_url("https://example.com/billing");
//!
//! let app = Router::new()
//!     .route("/v1/echo", get(|| async { "echo" }))
//!     .route(
//!         "/v1/generate",
//!         post(|charge: Charge| async move {
//!             charge.set(12).unwrap(); // 12 of the 50 held; 38 go back
//!             "12 tokens"
//!         }),
//!     )
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(credits);
//! # let _: Router = app;
//! ```
//!
//! Callers send `Authorization: Bearer <api key>`; register keys with
//! [`LedgerAdmin::register_api_key`] and [`ApiKeyHash::of`]. The repository's README shows the
//! quickstart (`cargo run --example quickstart`) and the responses it captured.
//!
//! # Feature flags
//!
//! Every feature is off by default.
//!
//! | feature | enables | pulls in |
//! |---|---|---|
//! | `axum` | the [`Charge`] extractor, and pricing by axum's `MatchedPath` | `axum` (no default features) |
//! | `tonic` | gRPC refusals with `google.rpc` rich details (`ErrorInfo`, `Help`), and [`credits_grpc`]: the caller's quote and readout as a gRPC service | `tonic`, `tonic-types`, `prost`, `tonic-prost` |
//! | `redis` | [`RedisLedger`]: balances shared by every replica, on Redis or Redis Cluster | `redis` (tokio, connection manager, cluster) |
//! | `redis-tls` | `rediss://` for [`RedisLedger`] (managed Redis, standalone and Cluster): Mozilla's roots or a PEM CA, client certificates (mTLS) | `redis` with `tokio-rustls-comp` and `tls-rustls-webpki-roots`, `rustls` on `ring` |
//! | `test-util` | test helpers: the Redis clock offset, and the parser oracles the fuzz targets use | nothing |
//! | `webhook` | [`events::Webhook`] and [`events::verify`]: HTTPS delivery of credit events signed in the Standard Webhooks form, and its check on the receiving side | `hyper-util`, `hyper-rustls` and `rustls` on `ring`, `webpki-roots`, `url`, `hmac` |
//! | `admin` | [`admin`]: an axum router for top-ups, account settings and API keys, guarded by a bearer token compared in constant time | `axum` (with `json`), `subtle` |
//! | `metrics` | [`metrics::Metered`]: a ledger wrapper that records `credits_*` metrics through the `metrics` facade (any exporter) and opens `credits.reserve` / `credits.settle` spans | `metrics` |
//! | `conformance` | [`conformance`]: the ledger conformance suite and its model check, for a ledger of your own (see [Writing a ledger](#writing-a-ledger)) | `proptest`, tokio's `rt-multi-thread` |
//!
//! # Refusals in your own shape
//!
//! Every refusal is a [`Refusal`] with its figures. By default HTTP routes answer RFC 9457
//! problem JSON (the `402` keeps the seed API's `"error": "Insufficient account balance"`)
//! and gRPC routes a status with rich details;
//! [`CreditLayer::refusal_response`] answers HTTP refusals in your API's own error shape
//! (for example OpenAI-style `{"error": {"message", "type", "code"}}`).
//!
//! The repository's `ARCHITECTURE.md` maps the code: which file holds which decision.
//!
//! # Writing a ledger
//!
//! [`CreditLayer`] works with any store that implements the ledger contract, written in
//! this crate or outside it, with only the public API:
//!
//! * three traits: [`Ledger`], the hot path the layer needs (`reserve`, `settle`, `extend`,
//!   `lookup_api_key`; `commit` and `refund` are provided shorthands for `settle`),
//!   [`LedgerAdmin`] (`top_up`, `configure`, `register_api_key`, `revoke_api_key`) and
//!   [`LedgerReports`] (`balance`, `usage`). The [`ledger`] module docs state the contract:
//!   holds, replays, tombstones, clamping, idempotent top-ups, the four error kinds,
//!   conservation;
//! * every operation takes a request struct ([`ledger::Reserve`], [`ledger::Settle`],
//!   [`ledger::Extend`], [`TopUp`], [`ledger::Configure`]), read through its getters, so a field can be added later
//!   without breaking a ledger;
//! * the outcomes are made with constructors and then filled in ([`ledger::Held::new`],
//!   [`ledger::Insufficient::new`], [`ledger::Settlement::new`], [`ledger::ToppedUp::new`],
//!   [`RouteUsage::new`](ledger::RouteUsage::new), `Balance::default()`,
//!   `Usage::default()`), since their structs are `#[non_exhaustive]`;
//! * [`ledger::validate`] has the checks every faithful ledger makes before it writes
//!   (amounts, totals, TTLs, routes, idempotency keys), so it refuses the same input with
//!   the same [`LedgerError`]; [`ledger::runway`] has the burn-rate and runway math, so the
//!   `credits-runway` header means the same on every ledger;
//! * [`Ledger::Future`] names the future: [`std::future::Ready`] for a ledger that answers
//!   at once, a boxed future for a networked one. [`ledger::BoxLedger`] erases a ledger's type;
//! * events are part of the contract: a commit returns what it detected in
//!   [`ledger::Settlement::events`], a refusal in [`ledger::Insufficient::events`]
//!   ([`events::CreditEvent::new`],
//!   [`ledger::check_alerts`], thresholds re-armed only by a top-up); a ledger that keeps
//!   them until delivered also implements [`events::EventOutbox`], which a
//!   [`Dispatcher`](events::Dispatcher) drains (and `conformance_outbox_suite!` checks).
//!
//! Then prove it: the `conformance` feature publishes the suite this crate's own ledgers
//! pass ([`conformance`]: about forty cases and a proptest model check). Implement
//! [`conformance::Harness`] for your ledger and expand
//! `tower_credits::conformance_suite!(MyHarness);` in an integration test. The repository's
//! `examples/custom_ledger/` writes a ledger from scratch on the public API (`TinyLedger`:
//! one lock, expiring holds reclaimed in bounded steps, tombstones, top-up key claims, the
//! low-balance, runway and depletion latches, usage by route) and a decorator that records every operation of any
//! ledger; `tests/conformance_example.rs` runs the suite on both.
//!
//! [tower]: https://docs.rs/tower
#![deny(missing_docs, unreachable_pub, unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod account;
#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
mod amount;
mod api_key;
mod backoff;
mod charge;
pub mod classify;
pub mod clock;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod credits_grpc;
#[cfg(feature = "dashboard")]
#[cfg_attr(docsrs, doc(cfg(feature = "dashboard")))]
pub mod dashboard;
pub mod events;
#[cfg(any(fuzzing, feature = "test-util"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod idempotency;
pub mod ledger;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod middleware;
pub mod outage;
pub mod pricing;
pub mod readout;
mod refusal;
mod stream_limit;
mod wire;

// What an application uses. Ledger authors' items are under [`ledger`], event types under
// [`events`].
pub use api_key::ApiKeyHash;
#[cfg(feature = "axum")]
pub use charge::MissingCharge;
pub use charge::{Charge, ChargeError, GrowError};
pub use classify::Protocol;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use ledger::RedisLedger;
pub use ledger::{
    AccountId, AccountSettings, Balance, Ledger, LedgerAdmin, LedgerError, LedgerReports,
    MemoryLedger, Threshold, TopUp,
};
pub use middleware::{
    CreditLayer, CreditService, HoldLifetimeExceeded, PendingSettlements, ReaderStalled,
    ResponseBody, ResponseFuture,
};
pub use outage::{BillingStats, OutagePolicy};
pub use refusal::Refusal;
pub use stream_limit::StreamLimit;
pub use wire::headers::CreditHeaders;
pub use wire::problem;

/// The README's Rust blocks, compiled and run as doc tests so the front page stays true
/// (they use every feature, as `scripts/test` builds them).
#[cfg(all(
    doctest,
    feature = "axum",
    feature = "tonic",
    feature = "redis",
    feature = "webhook",
    feature = "admin",
    feature = "metrics"
))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
