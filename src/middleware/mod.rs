//! The hold → run → settle path. See `ARCHITECTURE.md` for the code map.

pub(crate) mod body;
pub(crate) mod config;
pub(crate) mod future;
mod grow;
mod grpc_web;
pub(crate) mod guard;
pub(crate) mod keeper;
pub(crate) mod layer;
mod lookup;
mod lookups;
pub(crate) mod plan;
mod record;
mod respond;
pub(crate) mod service;
pub(crate) mod settle;
pub(crate) mod settlement;
mod steps;
mod stream_end;
mod watch;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use layer::{CreditLayer, DEFAULT_MAX_HOLD_LIFETIME};
pub use service::CreditService;
pub use settle::PendingSettlements;
pub use watch::{HoldLifetimeExceeded, ReaderStalled};
