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
//! | `webhook` | [`events::Webhook`] and [`events::verify_signature`]: signed HTTPS delivery of credit events, and its check on the receiving side | `hyper-util`, `hyper-rustls` and `rustls` on `ring`, `webpki-roots`, `url`, `hmac` |
//! | `conformance` | [`conformance`]: the ledger conformance suite and its model check, for a ledger of your own (see [Writing a ledger](#writing-a-ledger)) | `proptest`, tokio's `rt-multi-thread` |
//!
//! # Code map
//!
//! A request takes the hold → run → settle path through `src/middleware/`, in this order:
//!
//! | file | holds |
//! |---|---|
//! | `middleware/layer.rs` | [`CreditLayer`], its builder methods |
//! | `middleware/config.rs` | the configuration every service of a layer shares |
//! | `middleware/service.rs` | [`CreditService`]: resolves the account, prices, starts the future |
//! | `middleware/future.rs` | [`ResponseFuture`]: key lookup, reserve, inner call, settle at the head |
//! | `middleware/classify.rs` | the one place that decides commit, refund or wait for the end |
//! | `middleware/body.rs` | [`ResponseBody`]: settles at the end of a body whose cost grows with it |
//! | `middleware/grpc_web.rs` | the gRPC-Web trailer frame, read from the body |
//! | `middleware/guard.rs` | the drop guard, and the settle decision written once |
//! | `middleware/settle.rs` | the ledger calls that commit, refund and renew, their retries |
//!
//! Around it: `account.rs` (who pays), `pricing.rs` (how much), `charge.rs` (what the
//! handler used), `outage.rs` (what to do when the ledger is down), `wire/` (what callers
//! see: headers, problem JSON, gRPC statuses), `ledger/` (the [`Ledger`] contract,
//! `memory.rs`, `runway.rs`, `events.rs` (what a ledger detects, its outbox), and `redis/`
//! with one Lua script per operation), and `events/` (the [`events::Dispatcher`] that
//! delivers credit events: callback, signed webhooks, retries, dead letters).
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
//! * every operation takes a request struct ([`Reserve`], [`Settle`], [`Extend`],
//!   [`TopUp`], [`Configure`]), read through its getters, so a field can be added later
//!   without breaking a ledger;
//! * the outcomes are made with constructors and then filled in ([`Held::new`],
//!   [`Insufficient::new`], [`Settlement::new`], [`ToppedUp::new`],
//!   [`RouteUsage::new`](ledger::RouteUsage::new), `Balance::default()`,
//!   `Usage::default()`), since their structs are `#[non_exhaustive]`;
//! * [`ledger::validate`] has the checks every faithful ledger makes before it writes
//!   (amounts, totals, TTLs, routes, idempotency keys), so it refuses the same input with
//!   the same [`LedgerError`]; [`ledger::runway`] has the burn-rate and runway math, so the
//!   `credits-runway` header means the same on every ledger;
//! * [`Ledger::Future`] names the future: [`std::future::Ready`] for a ledger that answers
//!   at once, a boxed future for a networked one. [`BoxLedger`] erases a ledger's type;
//! * events are part of the contract: a commit returns what it detected in
//!   [`Settlement::events`], a refusal in [`Insufficient::events`] ([`CreditEvent::new`],
//!   [`ledger::check_alerts`], thresholds re-armed only by a top-up); a ledger that keeps
//!   them until delivered also implements [`EventOutbox`], which a
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
mod amount;
mod api_key;
mod charge;
pub mod clock;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod credits_grpc;
pub mod events;
#[cfg(any(fuzzing, feature = "test-util"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod ledger;
mod middleware;
pub mod outage;
pub mod pricing;
pub mod readout;
mod wire;

pub use amount::MAX_AMOUNT;
pub use api_key::ApiKeyHash;
#[cfg(feature = "axum")]
pub use charge::MissingCharge;
pub use charge::{Charge, ChargeError};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use ledger::RedisLedger;
pub use ledger::{
    AccountId, AccountSettings, AnyLedger, Balance, BoxLedger, Configure, CreditEvent, ErrorKind,
    EventKind, EventOutbox, Extend, Extended, Held, HoldId, Insufficient, Ledger, LedgerAdmin,
    LedgerError, LedgerReports, MemoryLedger, Reserve, ReserveOutcome, Settle, SettleDecision,
    SettleOutcome, Settlement, Threshold, TopUp, ToppedUp, Usage,
};
pub use middleware::classify;
pub use middleware::classify::Protocol;
pub use middleware::{
    CreditLayer, CreditService, PendingSettlements, ReaderStalled, ResponseBody, ResponseFuture,
    DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES, DEFAULT_MAX_CONCURRENT_KEY_LOOKUPS,
    DEFAULT_MAX_HOLD_LIFETIME,
};
pub use outage::{BillingStats, OutagePolicy};
pub use wire::headers::CreditHeaders;
pub use wire::problem;

/// The README's Rust blocks, compiled and run as doc tests so the front page stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
