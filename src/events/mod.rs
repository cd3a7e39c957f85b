//! Low-balance, runway and depletion events, delivered where callers live.
//!
//! A ledger detects each event inside the operation that moves the credits (exactly once
//! per crossing) and keeps it in its outbox ([`EventOutbox`]). A
//! [`Dispatcher`] delivers it: to your callback ([`Dispatcher::on_event`]) and, with the
//! `webhook` feature, to signed HTTPS endpoints ([`Webhook`], in the [Standard Webhooks]
//! form). The replica that detected an
//! event delivers it at once, off the request path; every replica's dispatcher also claims
//! what a replica that died left behind, once its lease lapses.
//!
//! **Delivery is at least once.** A replica killed after it delivered but before it
//! acknowledged leaves the event for another, which delivers it again with the same
//! [`id`](crate::events::CreditEvent::id) (a webhook's signed `webhook-id` header): receivers
//! deduplicate by it. Each event is delivered
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
//! A receiver of webhooks checks the signature before it trusts the body, with [`verify`]
//! or any Standard Webhooks library, then deduplicates by `webhook-id`:
//!
//! ```
//! # #[cfg(feature = "webhook")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_credits::events::{verify, WebhookSecret};
//!
//! let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
//! # let body = br#"{"id":"evt_1","type":"balance.low"}"#;
//! # let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
//! # let headers = tower_credits::events::signature::headers(&[secret.clone()], "evt_1", now, body)?;
//! // `headers`: the request's headers; `body`: its raw bytes, before parsing.
//! verify(&secret, &headers, body)?; // else answer 401
//! let id = &headers["webhook-id"]; // seen before? answer 2xx and do nothing
//! # let _ = id; Ok(()) }
//! # #[cfg(not(feature = "webhook"))] fn main() {}
//! ```
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

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
pub use signature::{verify, WebhookSecret};
#[cfg(feature = "webhook")]
pub use webhook::Webhook;

pub use crate::ledger::events::{CreditEvent, DeadLetter, EventKind, EventOutbox};
