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
//! 6. `settle`: the first try of a commit or refund, in the request's task;
//! 7. `keeper`: one worker per layer for everything a request leaves behind — settles
//!    still unanswered, renewals, stalled readers — so no request spawns a task.

pub(crate) mod body;
pub mod classify;
pub(crate) mod config;
pub(crate) mod future;
mod grpc_web;
pub(crate) mod guard;
pub(crate) mod keeper;
pub(crate) mod layer;
mod lookups;
pub(crate) mod service;
pub(crate) mod settle;

pub use body::{ReaderStalled, ResponseBody};
pub use future::ResponseFuture;
pub use layer::{
    CreditLayer, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES,
    DEFAULT_MAX_CONCURRENT_KEY_LOOKUPS, DEFAULT_MAX_HOLD_LIFETIME,
};
pub use service::CreditService;
pub use settle::PendingSettlements;
