//! Credit events: what a ledger detects while it moves credits (a balance that fell below
//! a threshold, a runway that fell below its horizon, a refusal for lack of credits), and
//! the outbox that keeps each one until it is delivered.
//!
//! Detection happens inside the operation that moves the credits, exactly once per
//! crossing: the commit that crosses a threshold disarms it in the same atomic step, and
//! only a top-up re-arms it. The event is written to the ledger's outbox in that same step
//! (on Redis, a stream under the account's hash tag) and leased to the replica that made
//! the call, which delivers it at once; a replica that dies before it delivers leaves the
//! event for any other replica's [`Dispatcher`](crate::events::Dispatcher) once the lease
//! lapses. Delivery is therefore **at least once**: receivers deduplicate by
//! [`CreditEvent::id`].
//!
//! `types.rs` holds what an event is and the outbox contract; `detection.rs` holds the
//! thresholds and the alert state every ledger evaluates the same way.

mod detection;
mod types;

pub(crate) use detection::Alerts;
pub use detection::{
    check_alerts, Threshold, DEFAULT_RUNWAY_HORIZON, MAX_RUNWAY_HORIZON, MAX_THRESHOLDS,
};
pub use types::{
    CreditEvent, DeadLetter, EventKind, EventOutbox, OutboxFuture, DEFAULT_EVENT_LEASE,
};
