//! Reading script replies: arrays of integers and short strings.

use std::fmt;

use redis::Value;

use crate::ledger::{LedgerError, SettleOutcome};

/// A reply no script of this version sends: a mismatch between the Rust side and the
/// scripts, or a key written by something else. Reported as [`LedgerError::Unavailable`].
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

pub(super) fn unexpected(script: &'static str, detail: impl Into<String>) -> LedgerError {
    LedgerError::Unavailable(Box::new(UnexpectedReply {
        script,
        detail: detail.into(),
    }))
}

/// A cursor over the items of one script reply.
pub(super) struct Reply {
    script: &'static str,
    items: std::vec::IntoIter<Value>,
}

impl Reply {
    /// Starts reading `value`, which must be an array.
    pub(super) fn new(script: &'static str, value: Value) -> Result<Self, LedgerError> {
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
    pub(super) fn string(&mut self) -> Result<String, LedgerError> {
        match self.next()? {
            Value::BulkString(bytes) => {
                String::from_utf8(bytes).map_err(|_| self.err("a string is not UTF-8"))
            }
            Value::SimpleString(s) => Ok(s),
            other => Err(self.err(format!("expected a string, got {other:?}"))),
        }
    }

    /// The next item, as a signed integer.
    pub(super) fn i64(&mut self) -> Result<i64, LedgerError> {
        match self.next()? {
            Value::Int(n) => Ok(n),
            other => Err(self.err(format!("expected an integer, got {other:?}"))),
        }
    }

    /// The next item, as an integer in `0..=MAX_AMOUNT`.
    pub(super) fn u64(&mut self) -> Result<u64, LedgerError> {
        let n = self.i64()?;
        match u64::try_from(n) {
            Ok(n) if n <= crate::MAX_AMOUNT => Ok(n),
            _ => Err(self.err(format!("{n} is not an amount"))),
        }
    }

    /// The next item, as a time in ms (non-negative).
    pub(super) fn time_ms(&mut self) -> Result<u64, LedgerError> {
        let n = self.i64()?;
        u64::try_from(n).map_err(|_| self.err(format!("{n} is not a time")))
    }

    /// The next item, `0` or `1`.
    pub(super) fn flag(&mut self) -> Result<bool, LedgerError> {
        match self.i64()? {
            0 => Ok(false),
            1 => Ok(true),
            n => Err(self.err(format!("{n} is not a flag"))),
        }
    }

    /// The next item, a threshold: `-1` for none.
    pub(super) fn threshold(&mut self) -> Result<Option<u64>, LedgerError> {
        match self.i64()? {
            -1 => Ok(None),
            n => match u64::try_from(n) {
                Ok(n) if n <= crate::MAX_AMOUNT => Ok(Some(n)),
                _ => Err(self.err(format!("{n} is not a threshold"))),
            },
        }
    }

    /// The next item, a float stored by Redis (`"%.17g"`), as a string.
    pub(super) fn f64(&mut self) -> Result<f64, LedgerError> {
        let s = self.string()?;
        match s.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(self.err(format!("{s:?} is not a rate"))),
        }
    }

    /// A settle outcome, by its name in the scripts.
    pub(super) fn outcome(&mut self) -> Result<SettleOutcome, LedgerError> {
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
    pub(super) fn pairs(mut self) -> Result<Vec<(String, u64)>, LedgerError> {
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
    pub(super) fn end(self) -> Result<(), LedgerError> {
        match self.items.len() {
            0 => Ok(()),
            n => Err(self.err(format!("{n} items too many"))),
        }
    }

    /// The error for an unknown tag.
    pub(super) fn unknown_tag(&self, tag: &str) -> LedgerError {
        self.err(format!("unknown reply {tag:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_replies_are_typed_errors() {
        let err = Reply::new("balance", Value::Int(3)).err().unwrap();
        assert!(matches!(err, LedgerError::Unavailable(_)));
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
}
