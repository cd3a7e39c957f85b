#![doc = include_str!("../README.md")]
#![deny(missing_docs, unreachable_pub, unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod account;
mod amount;
mod api_key;
mod body;
mod charge;
pub mod clock;
mod future;
#[doc(hidden)]
pub mod fuzzing;
mod headers;
mod layer;
pub mod ledger;
pub mod outage;
pub mod pricing;
pub mod problem;
mod service;
mod settle;

pub use amount::MAX_AMOUNT;
pub use api_key::ApiKeyHash;
pub use body::ResponseBody;
#[cfg(feature = "axum")]
pub use charge::MissingCharge;
pub use charge::{Charge, ChargeError};
pub use future::ResponseFuture;
pub use headers::CreditHeaders;
pub use layer::{CreditLayer, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use ledger::RedisLedger;
pub use ledger::{
    AccountId, AccountSettings, AnyLedger, Balance, Extended, Held, HoldId, Insufficient, Ledger,
    LedgerError, MemoryLedger, Reserve, ReserveOutcome, SettleOutcome, Settlement, TopUp, Usage,
};
pub use outage::{BillingStats, OutagePolicy};
pub use service::CreditService;
pub use settle::PendingSettlements;
