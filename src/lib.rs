#![doc = include_str!("../README.md")]
#![deny(missing_docs, unreachable_pub, unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod amount;
mod api_key;
pub mod clock;
pub mod ledger;

pub use amount::MAX_AMOUNT;
pub use api_key::ApiKeyHash;
pub use ledger::{
    AccountId, AccountSettings, AnyLedger, Balance, Extended, Held, HoldId, Insufficient, Ledger,
    LedgerError, MemoryLedger, Reserve, ReserveOutcome, SettleOutcome, Settlement, TopUp, Usage,
};
