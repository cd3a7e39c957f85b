//! The hold → run → settle path, in the order a request takes it:
//!
//! 1. [`layer`](CreditLayer): the builder, and [`config`] — what every service shares;
//! 2. [`service`](CreditService): resolves the account, prices the request, starts the future;
//! 3. [`future`](ResponseFuture): looks up the key, reserves, runs the inner service, and
//!    settles at the response head or hands the hold to the body;
//! 4. [`body`](ResponseBody): settles a hold whose cost is known at the end of the body;
//!    The verdict comes from [`classify`]: one place decides commit, refund or wait;
//!    `grpc_web` reads a gRPC-Web status from the trailer frame in the body;
//! 5. `guard`: the drop guard that settles a hold exactly once, whatever happens;
//! 6. `settle`: the ledger calls that commit, refund and renew, and their retries.

pub(crate) mod body;
pub mod classify;
pub(crate) mod config;
pub(crate) mod future;
mod grpc_web;
pub(crate) mod guard;
pub(crate) mod layer;
pub(crate) mod service;
pub(crate) mod settle;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use layer::{CreditLayer, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES};
pub use service::CreditService;
pub use settle::PendingSettlements;
