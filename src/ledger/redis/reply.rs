//! Reading script replies: arrays of integers and short strings.
//!
//! One typed decoder per script ([`reserve`], [`settle`], [`extend`], [`top_up`],
//! [`balance`], [`usage`], [`configure`], [`sweep`]), each reading the reply shapes its
//! [`ScriptSpec`](super::scripts::ScriptSpec) declares, with a [`Reply`] cursor.

use std::fmt;

use redis::Value;

use super::scripts::{BALANCE, CONFIGURE, EXTEND, RESERVE, SETTLE, SWEEP, TOP_UP, USAGE};
use crate::ledger::{
    decayed_rate, runway_secs, AccountId, Balance, Extended, Held, Insufficient, LedgerError,
    ReserveOutcome, SettleOutcome, Settlement, ToppedUp, Usage,
};

/// A reply no script of this version sends: a mismatch between the Rust side and the
/// scripts, or a key written by something else. Reported as [`LedgerError::Corrupt`]: a
/// retry would get the same answer.
#[derive(Debug)]
pub(super) struct UnexpectedReply {
    script: &'static str,
    detail: String,
}

impl fmt::Display for UnexpectedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unexpected reply from the {} script: {}",
            self.script, self.detail
        )
    }
}

impl std::error::Error for UnexpectedReply {}

/// The error for a reply no script of this version sends.
pub(super) fn unexpected(script: &'static str, detail: impl Into<String>) -> LedgerError {
    LedgerError::Corrupt(Box::new(UnexpectedReply {
        script,
        detail: detail.into(),
    }))
}

/// A cursor over the items of one script reply.
struct Reply {
    script: &'static str,
    items: std::vec::IntoIter<Value>,
}

impl Reply {
    /// Starts reading `value`, which must be an array.
    fn new(script: &'static str, value: Value) -> Result<Self, LedgerError> {
        match value {
            Value::Array(items) => Ok(Self {
                script,
                items: items.into_iter(),
            }),
            other => Err(unexpected(script, format!("not an array: {other:?}"))),
        }
    }

    fn err(&self, detail: impl Into<String>) -> LedgerError {
        unexpected(self.script, detail)
    }

    fn next(&mut self) -> Result<Value, LedgerError> {
        self.items.next().ok_or_else(|| self.err("too short"))
    }

    /// The next item, as a string.
    fn string(&mut self) -> Result<String, LedgerError> {
        match self.next()? {
            Value::BulkString(bytes) => {
                String::from_utf8(bytes).map_err(|_| self.err("a string is not UTF-8"))
            }
            Value::SimpleString(s) => Ok(s),
            other => Err(self.err(format!("expected a string, got {other:?}"))),
        }
    }

    /// The next item, as a signed integer.
    fn i64(&mut self) -> Result<i64, LedgerError> {
        match self.next()? {
            Value::Int(n) => Ok(n),
            other => Err(self.err(format!("expected an integer, got {other:?}"))),
        }
    }

    /// The next item, as an integer in `0..=MAX_AMOUNT`.
    fn u64(&mut self) -> Result<u64, LedgerError> {
        let n = self.i64()?;
        match u64::try_from(n) {
            Ok(n) if n <= crate::MAX_AMOUNT => Ok(n),
            _ => Err(self.err(format!("{n} is not an amount"))),
        }
    }

    /// The next item, as a time in ms (non-negative).
    fn time_ms(&mut self) -> Result<u64, LedgerError> {
        let n = self.i64()?;
        u64::try_from(n).map_err(|_| self.err(format!("{n} is not a time")))
    }

    /// The next item, `0` or `1`.
    fn flag(&mut self) -> Result<bool, LedgerError> {
        match self.i64()? {
            0 => Ok(false),
            1 => Ok(true),
            n => Err(self.err(format!("{n} is not a flag"))),
        }
    }

    /// The next item, a threshold: `-1` for none.
    fn threshold(&mut self) -> Result<Option<u64>, LedgerError> {
        match self.i64()? {
            -1 => Ok(None),
            n => match u64::try_from(n) {
                Ok(n) if n <= crate::MAX_AMOUNT => Ok(Some(n)),
                _ => Err(self.err(format!("{n} is not a threshold"))),
            },
        }
    }

    /// The next item, a float stored by Redis (`"%.17g"`), as a string.
    fn f64(&mut self) -> Result<f64, LedgerError> {
        let s = self.string()?;
        match s.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(self.err(format!("{s:?} is not a rate"))),
        }
    }

    /// A settle outcome, by its name in the scripts.
    fn outcome(&mut self) -> Result<SettleOutcome, LedgerError> {
        let s = self.string()?;
        Ok(match s.as_str() {
            "committed" => SettleOutcome::Committed,
            "refunded" => SettleOutcome::Refunded,
            "already_committed" => SettleOutcome::AlreadyCommitted,
            "already_refunded" => SettleOutcome::AlreadyRefunded,
            "expired" => SettleOutcome::Expired,
            "unknown" => SettleOutcome::Unknown,
            other => return Err(self.err(format!("unknown outcome {other:?}"))),
        })
    }

    /// The items left, in pairs of strings and integers (a `HGETALL` of counters).
    fn pairs(mut self) -> Result<Vec<(String, u64)>, LedgerError> {
        let mut out = Vec::with_capacity(self.items.len() / 2);
        while self.items.len() > 0 {
            let field = self.string()?;
            let value = self.string()?;
            let value = value
                .parse::<u64>()
                .map_err(|_| self.err(format!("{value:?} is not a count")))?;
            out.push((field, value));
        }
        Ok(out)
    }

    /// Checks that nothing is left.
    fn end(self) -> Result<(), LedgerError> {
        match self.items.len() {
            0 => Ok(()),
            n => Err(self.err(format!("{n} items too many"))),
        }
    }

    /// The error for an unknown tag.
    fn unknown_tag(&self, tag: &str) -> LedgerError {
        self.err(format!("unknown reply {tag:?}"))
    }
}

fn total_out_of_range(total: u64, amount: u64) -> LedgerError {
    LedgerError::TotalOutOfRange {
        total: total.saturating_add(amount),
        max: crate::MAX_AMOUNT,
    }
}

/// Reads `rate, rate_at_ms, now_ms` and forecasts the runway, as the in-memory ledger does.
fn runway(reply: &mut Reply, available: i64) -> Result<Option<u64>, LedgerError> {
    let rate = reply.f64()?;
    let rate_at_ms = reply.time_ms()?;
    let now_ms = reply.time_ms()?;
    Ok(runway_secs(
        available,
        decayed_rate(rate, rate_at_ms, now_ms),
    ))
}

/// The reply of `reserve`; `limit` is the most open holds the call allowed.
pub(super) fn reserve(value: Value, limit: Option<u64>) -> Result<ReserveOutcome, LedgerError> {
    let mut reply = Reply::new(RESERVE.name, value)?;
    let result = match reply.string()?.as_str() {
        "held" => {
            let amount = reply.u64()?;
            let available = reply.i64()?;
            Ok(ReserveOutcome::Held(Held {
                amount,
                available,
                credit_limit: reply.u64()?,
                low_balance_threshold: reply.threshold()?,
                expires_at_ms: reply.time_ms()?,
                replayed: reply.flag()?,
                runway_secs: runway(&mut reply, available)?,
            }))
        }
        "insufficient" => Ok(ReserveOutcome::Insufficient(Insufficient {
            required: reply.u64()?,
            available: reply.i64()?,
            credit_limit: reply.u64()?,
        })),
        "closed" => Ok(ReserveOutcome::Closed(reply.outcome()?)),
        "too_many_holds" => Ok(ReserveOutcome::TooManyHolds {
            limit: limit.ok_or_else(|| reply.err("too_many_holds without a limit"))?,
        }),
        "total_out_of_range" => Err(total_out_of_range(reply.u64()?, reply.u64()?)),
        "unknown_account" => Ok(ReserveOutcome::UnknownAccount),
        tag => return Err(reply.unknown_tag(tag)),
    };
    reply.end()?;
    result
}

/// The reply of `settle` (a commit or a refund).
pub(super) fn settle(value: Value) -> Result<Settlement, LedgerError> {
    let mut reply = Reply::new(SETTLE.name, value)?;
    match reply.string()?.as_str() {
        "settled" => {
            let outcome = reply.outcome()?;
            let committed = reply.u64()?;
            let released = reply.u64()?;
            let clamped = reply.flag()?;
            let available = reply.i64()?;
            let low_balance_threshold = reply.threshold()?;
            let threshold_crossed = reply.flag()?;
            let runway = runway(&mut reply, available)?;
            reply.end()?;
            Ok(Settlement {
                outcome,
                committed,
                released,
                clamped,
                available: Some(available),
                low_balance_threshold,
                threshold_crossed,
                runway_secs: runway,
            })
        }
        "unknown_account" => {
            reply.end()?;
            Ok(Settlement {
                outcome: SettleOutcome::Unknown,
                committed: 0,
                released: 0,
                clamped: false,
                available: None,
                low_balance_threshold: None,
                threshold_crossed: false,
                runway_secs: None,
            })
        }
        tag => Err(reply.unknown_tag(tag)),
    }
}

/// The reply of `extend`.
pub(super) fn extend(value: Value) -> Result<Extended, LedgerError> {
    let mut reply = Reply::new(EXTEND.name, value)?;
    let extended = match reply.string()?.as_str() {
        "until" => Extended::Until(reply.time_ms()?),
        "not_open" => Extended::NotOpen(reply.outcome()?),
        tag => return Err(reply.unknown_tag(tag)),
    };
    reply.end()?;
    Ok(extended)
}

/// The reply of `top_up` of `amount`.
pub(super) fn top_up(value: Value, amount: u64) -> Result<ToppedUp, LedgerError> {
    let mut reply = Reply::new(TOP_UP.name, value)?;
    let result = match reply.string()?.as_str() {
        "topped_up" => Ok(ToppedUp {
            amount,
            replayed: reply.flag()?,
            available: reply.i64()?,
        }),
        "conflict" => Err(LedgerError::TopUpConflict {
            first_amount: reply.u64()?,
            amount,
        }),
        "total_out_of_range" => Err(total_out_of_range(reply.u64()?, reply.u64()?)),
        tag => return Err(reply.unknown_tag(tag)),
    };
    reply.end()?;
    result
}

/// Who holds a top-up idempotency key, as the claim script answered.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Claim {
    /// This call claimed the key for the account.
    Made,
    /// The key was already the account's (a replay, or a retry after a crash between the
    /// claim and the top-up).
    Ours,
    /// Another account holds the key.
    Other(AccountId),
}

/// The reply of the claim script for `account`.
pub(super) fn claim(value: Value, account: &AccountId) -> Result<Claim, LedgerError> {
    const SCRIPT: &str = "top-up key claim";
    let owner = match value {
        Value::Nil => return Ok(Claim::Made),
        Value::BulkString(bytes) => String::from_utf8(bytes)
            .map_err(|_| unexpected(SCRIPT, "the stored account id is not UTF-8"))?,
        Value::SimpleString(s) => s,
        other => return Err(unexpected(SCRIPT, format!("not an account id: {other:?}"))),
    };
    if owner == account.as_str() {
        return Ok(Claim::Ours);
    }
    AccountId::new(&owner)
        .map(Claim::Other)
        .map_err(|_| unexpected(SCRIPT, "the stored account id is not a valid id"))
}

/// The reply of `balance`.
pub(super) fn balance(value: Value) -> Result<Balance, LedgerError> {
    let mut reply = Reply::new(BALANCE.name, value)?;
    match reply.string()?.as_str() {
        "balance" => {
            let available = reply.i64()?;
            let balance = Balance {
                available,
                held: reply.u64()?,
                committed: reply.u64()?,
                topped_up: reply.u64()?,
                credit_limit: reply.u64()?,
                low_balance_threshold: reply.threshold()?,
                open_holds: reply.u64()?,
                runway_secs: runway(&mut reply, available)?,
            };
            reply.end()?;
            Ok(balance)
        }
        "unknown_account" => {
            reply.end()?;
            Err(LedgerError::UnknownAccount)
        }
        tag => Err(reply.unknown_tag(tag)),
    }
}

/// The reply of `usage`.
pub(super) fn usage(value: Value) -> Result<Usage, LedgerError> {
    let mut reply = Reply::new(USAGE.name, value)?;
    match reply.string()?.as_str() {
        "usage" => {
            let mut usage = Usage::default();
            for (field, count) in reply.pairs()? {
                if let Some(route) = field.strip_prefix("credits:") {
                    usage.by_route.entry(route.to_owned()).or_default().credits = count;
                } else if let Some(route) = field.strip_prefix("calls:") {
                    usage.by_route.entry(route.to_owned()).or_default().calls = count;
                } else {
                    return Err(unexpected(USAGE.name, format!("unknown field {field:?}")));
                }
            }
            Ok(usage)
        }
        "unknown_account" => {
            reply.end()?;
            Err(LedgerError::UnknownAccount)
        }
        tag => Err(reply.unknown_tag(tag)),
    }
}

/// The reply of `configure`.
pub(super) fn configure(value: Value) -> Result<(), LedgerError> {
    let mut reply = Reply::new(CONFIGURE.name, value)?;
    match reply.string()?.as_str() {
        "configured" => reply.end(),
        tag => Err(reply.unknown_tag(tag)),
    }
}

/// The reply of `sweep`: how many holds went back (none when the account's keys vanished
/// between the `SCAN` and the script).
pub(super) fn sweep(value: Value) -> Result<u64, LedgerError> {
    let mut reply = Reply::new(SWEEP.name, value)?;
    match reply.string()?.as_str() {
        "swept" => {
            let reclaimed = reply.u64()?;
            let _open_holds = reply.u64()?;
            reply.end()?;
            Ok(reclaimed)
        }
        "unknown_account" => {
            reply.end()?;
            Ok(0)
        }
        tag => Err(reply.unknown_tag(tag)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_replies_are_typed_errors() {
        let err = Reply::new("balance", Value::Int(3)).err().unwrap();
        assert!(matches!(err, LedgerError::Corrupt(_)));
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
        assert!(err.is_corrupt() && !err.is_unavailable());
        assert!(err.to_string().contains("balance script"));

        let mut r = Reply::new("x", Value::Array(vec![Value::Int(-2)])).unwrap();
        assert!(r.u64().is_err());
        let mut r = Reply::new("x", Value::Array(vec![Value::Int(-1)])).unwrap();
        assert_eq!(r.threshold().unwrap(), None);
        let mut r = Reply::new("x", Value::Array(vec![])).unwrap();
        assert!(r.i64().is_err());
        let r = Reply::new("x", Value::Array(vec![Value::Int(1)])).unwrap();
        assert!(r.end().is_err());
        let mut r =
            Reply::new("x", Value::Array(vec![Value::BulkString(b"0.25".to_vec())])).unwrap();
        assert_eq!(r.f64().unwrap(), 0.25);
    }

    #[test]
    fn claims_name_their_owner() {
        let a = AccountId::new("acct_a").unwrap();
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(claim(Value::Nil, &a).unwrap(), Claim::Made);
        assert_eq!(claim(bulk("acct_a"), &a).unwrap(), Claim::Ours);
        assert_eq!(
            claim(bulk("acct_b"), &a).unwrap(),
            Claim::Other(AccountId::new("acct_b").unwrap())
        );
        for odd in [bulk("{bad}"), Value::Int(1), bulk("")] {
            assert!(claim(odd, &a).unwrap_err().is_corrupt());
        }
    }

    #[test]
    fn decoders_read_their_shapes() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let settled = settle(Value::Array(vec![bulk("unknown_account")])).unwrap();
        assert_eq!(settled.outcome, SettleOutcome::Unknown);
        assert_eq!(settled.available, None);
        let extended = extend(Value::Array(vec![bulk("until"), Value::Int(7)])).unwrap();
        assert!(matches!(extended, Extended::Until(7)));
        let err = extend(Value::Array(vec![
            bulk("until"),
            Value::Int(7),
            Value::Int(1),
        ]));
        assert!(err.unwrap_err().to_string().contains("extend script"));
        assert_eq!(
            sweep(Value::Array(vec![
                bulk("swept"),
                Value::Int(2),
                Value::Int(0)
            ]))
            .unwrap(),
            2
        );
        assert!(configure(Value::Array(vec![bulk("nope")])).is_err());
        assert!(matches!(
            reserve(Value::Array(vec![bulk("too_many_holds")]), Some(3)),
            Ok(ReserveOutcome::TooManyHolds { limit: 3 })
        ));
        assert!(reserve(Value::Array(vec![bulk("too_many_holds")]), None)
            .unwrap_err()
            .is_corrupt());
        assert_eq!(
            reserve(Value::Array(vec![bulk("unknown_account")]), None).unwrap(),
            ReserveOutcome::UnknownAccount
        );
        // A reply of an unknown shape, or a tag no script sends, is corrupt, not an outage.
        for odd in [
            Value::Nil,
            Value::Array(vec![bulk("held")]),
            Value::Array(vec![bulk("no_such_tag")]),
        ] {
            let err = reserve(odd, None).unwrap_err();
            assert!(err.is_corrupt() && !err.is_unavailable(), "{err:?}");
        }
        let err = top_up(Value::Array(vec![bulk("topped_up"), Value::Int(2)]), 1).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
    }
}
