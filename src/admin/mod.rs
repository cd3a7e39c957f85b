//! The admin API (feature `admin`): top-ups, account settings and API keys over HTTP, as an
//! axum [`Router`](axum::Router) you nest **outside** the credit layer.
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_credits::admin::{AdminRouter, AdminToken};
//! use tower_credits::{CreditLayer, MemoryLedger};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ledger = MemoryLedger::new(); // or RedisLedger, AnyLedger, BoxLedger, your own
//! let token = AdminToken::new(std::env::var("ADMIN_TOKEN").unwrap_or("a-long-random-admin-token".into()))?;
//! let app = Router::new()
//!     .route("/v1/echo", get(|| async { "echo" }))
//!     .layer(CreditLayer::new(ledger.clone()))
//!     .nest("/admin", AdminRouter::new(ledger, token).into_router());
//! # let _: Router = app;
//! # Ok(()) }
//! ```
//!
//! Nested after `.layer(credits)`, the admin routes are not billed and the admin token is
//! never read as an API key. It works over any ledger that implements
//! [`LedgerAdmin`](crate::LedgerAdmin) and [`LedgerReports`](crate::LedgerReports).
//!
//! # Guard
//!
//! [`AdminRouter::new`] opens the router only to `Authorization: Bearer <admin token>`,
//! compared in constant time ([`AdminToken`]); anything else, on any path, is `401` with
//! `WWW-Authenticate: Bearer`. [`AdminRouter::without_token`] leaves the guard to your own
//! auth layer.
//!
//! # Routes
//!
//! Paths are relative to where the router is nested (`/admin` above).
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /accounts/{account}` | | `200 {"account", "available", "held", "committed", "credit_limit", "thresholds"}`; `404` for an account never topped up or configured |
//! | `GET /accounts/{account}/history?cursor=&limit=&since=` | | `200 {"account", "entries", "next"}`: the audit trail, newest first ([`AuditEntry`](crate::ledger::AuditEntry): every reserve, grow, commit, refund, expiry and top-up with the totals after it); `next` is the cursor of the older page; `400` for a bad parameter |
//! | `POST /accounts/{account}/top-ups` | `{"amount", "idempotency_key"}` | `200 {"account", "amount", "replayed", "available"}`; a replay (same key, account and amount) answers `replayed: true` and credits nothing |
//! | `PUT /accounts/{account}/settings` | `{"credit_limit", "thresholds", "runway_horizon_secs"}` | `200` with the settings now in force; replaces all three (a field left out takes its default: no overdraft, no threshold, the default horizon); creates the account |
//! | `POST /accounts/{account}/keys` | | `201 {"account", "key", "hash"}`: a new API key, shown **once** (`Cache-Control: no-store`); the ledger keeps only its SHA-256 `hash`; `404` for an unknown account |
//! | `DELETE /keys/{hash}` | | `204`; `404` when no key has this hash |
//!
//! `thresholds` are credits (`100`) or percentages of the last top-up (`"10%"`), at most
//! [`MAX_THRESHOLDS`](crate::ledger::MAX_THRESHOLDS). A revoked key keeps working for up to
//! the layer's known-key cache TTL on each replica that cached it (see
//! [`account`](crate::account)).
//!
//! # Refusals
//!
//! Every refusal is RFC 9457 `application/problem+json` (`type`, `title`, `status`,
//! `detail`, and the fields below), with `Cache-Control: no-store`. Nothing was written.
//!
//! | case | status | `type` ends in |
//! |---|---|---|
//! | no token, or the wrong one | `401` + `WWW-Authenticate: Bearer` | `unauthorized` |
//! | malformed JSON | `400` | `invalid-body` |
//! | no `Content-Type: application/json` | `415` | `invalid-body` |
//! | a body over axum's limit (2 MB) | `413` | `invalid-body` |
//! | JSON that is not an object | `422` | `invalid-body` |
//! | a required field missing (`amount`, `idempotency_key`) | `422` | `missing-field` (`field`) |
//! | a field the route does not know | `422` | `unknown-field` (`field`) |
//! | a negative, zero, fractional or oversized amount (over [`MAX_AMOUNT`](crate::ledger::MAX_AMOUNT)), a bad threshold, limit or horizon | `400` | `invalid-field` (`field`) |
//! | a bad account id in the path | `400` | `invalid-account-id` |
//! | a key hash that is not 64 hex digits | `400` | `invalid-key-hash` |
//! | a bad idempotency key, a total past [`MAX_AMOUNT`](crate::ledger::MAX_AMOUNT), a setting the ledger refuses | `400` | `invalid-input` |
//! | a top-up key already used for another amount, or another account | `409` | `top-up-conflict` (`first_amount`, or `claimed_by`) |
//! | an unknown account | `404` | `unknown-account` |
//! | an unknown key hash | `404` | `unknown-key` |
//! | no such route / method | `404` / `405` | `not-found` / `method-not-allowed` |
//! | the ledger cannot be reached | `503` + `Retry-After: 1` | `ledger-unavailable` |
//! | the ledger answered unexpectedly | `500` | `ledger-error` |

mod auth;
mod errors;
mod handlers;
mod router;

pub use auth::{AdminToken, InvalidAdminToken, MIN_ADMIN_TOKEN_LEN};
pub use router::AdminRouter;
