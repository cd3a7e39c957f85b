//! Low-balance, runway and depletion events, delivered where callers live.
//!
//! A ledger detects each event inside the operation that moves the credits (exactly once
//! per crossing) and keeps it in its outbox ([`EventOutbox`]). A
//! [`Dispatcher`] delivers it: to your callback ([`Dispatcher::on_event`]) and, with the
//! `webhook` feature, to signed HTTPS endpoints ([`Webhook`]). The replica that detected an
//! event delivers it at once, off the request path; every replica's dispatcher also claims
//! what a replica that died left behind, once its lease lapses.
//!
//! **Delivery is at least once.** A replica killed after it delivered but before it
//! acknowledged leaves the event for another, which delivers it again with the same
//! [`id`](crate::events::CreditEvent::id): receivers deduplicate by `id`. Each event is delivered
//! and retried on its own, so events of one account may arrive out of order: receivers
//! order them by `created_at`.
//!
//! ```
//! use tower_credits::events::Dispatcher;
//! use tower_credits::{CreditLayer, MemoryLedger};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ledger = MemoryLedger::new();
//! let events = Dispatcher::new(ledger.clone())
//!     .on_event(|event| async move {
//!         println!("{} for {}: {} left", event.kind, event.account, event.available);
//!         Ok(())
//!     })
//!     .spawn();
//! let layer = CreditLayer::new(ledger).events(events); // detected events go out at once
//! # let _ = layer;
//! # }
//! ```
//!
//! A receiver of webhooks checks the signature before it trusts the body:
//!
//! ```
//! # #[cfg(feature = "webhook")] {
//! use std::time::Duration;
//! use tower_credits::events::signature::{sign, verify_signature, DEFAULT_TOLERANCE};
//!
//! # let secret = b"whsec_test";
//! # let body = br#"{"id":"evt_1","type":"balance.low"}"#;
//! # let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
//! # let header = sign(secret, now, body);
//! // `header` is the request's `Credits-Signature`, `body` its raw bytes.
//! verify_signature(secret, &header, body, DEFAULT_TOLERANCE).expect("a genuine event");
//! # }
//! ```

mod dispatcher;
mod retry;
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub mod signature;
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub mod webhook;

pub use dispatcher::{Dispatcher, EventStats, Events};
pub use retry::RetryPolicy;
#[cfg(feature = "webhook")]
pub use signature::verify_signature;
#[cfg(feature = "webhook")]
pub use webhook::Webhook;

pub use crate::ledger::events::{CreditEvent, DeadLetter, EventKind, EventOutbox};
