//! Reading script replies: arrays of integers and short strings.
//!
//! One typed decoder per script ([`reserve`], [`settle`], [`extend`], [`top_up`],
//! [`balance`], [`usage`], [`configure`], [`sweep`]), each reading the reply shapes its
//! [`ScriptSpec`](super::scripts::ScriptSpec) declares, with a [`Reply`] cursor.

use std::fmt;

use redis::Value;

use super::scripts::{
    BALANCE, CONFIGURE, EXTEND, GROW, HISTORY, OUTBOX, RESERVE, REWRITE, SETTLE, STORE, SWEEP,
    TOP_UP, USAGE,
};
use crate::ledger::{
    decayed_rate, runway_secs, AccountId, AuditEntry, AuditKind, Balance, CreditEvent, DeadLetter,
    EventKind, Extended, GrowOutcome, Grown, Held, HistoryPage, Insufficient, LedgerError, Replay,
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

/// The items of a reply the scripts send as one line of text (a reserve's new hold, a
/// settle without events, on an account without thresholds: reserve.lua, settle.lua),
/// read as the array it stands for: words separated by one space; a word of digits (with a leading
/// `-`) an integer, `[1,2]` an array of integers, any other word a string. One bulk
/// string costs Redis less to send than an array of a dozen, and redis-rs's parser about
/// a tenth to read.
fn words(script: &'static str, text: &[u8]) -> Result<Vec<Value>, LedgerError> {
    let mut items = Vec::with_capacity(12);
    for word in text.split(|&b| b == b' ') {
        let item = if let Some(list) = word.strip_prefix(b"[").and_then(|w| w.strip_suffix(b"]")) {
            let mut values = Vec::new();
            if !list.is_empty() {
                for n in list.split(|&b| b == b',') {
                    let n = integer(n).ok_or_else(|| {
                        unexpected(
                            script,
                            format!(
                                "{:?} is not a list of integers",
                                String::from_utf8_lossy(word)
                            ),
                        )
                    })?;
                    values.push(Value::Int(n));
                }
            }
            Value::Array(values)
        } else if let Some(n) = integer(word) {
            Value::Int(n)
        } else if word.is_empty() {
            return Err(unexpected(
                script,
                format!("an empty word in {:?}", String::from_utf8_lossy(text)),
            ));
        } else {
            Value::BulkString(word.to_vec())
        };
        items.push(item);
    }
    Ok(items)
}

/// A word of a text reply as an integer: digits, after an optional `-`, in range.
fn integer(word: &[u8]) -> Option<i64> {
    let (negative, digits) = match word.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, word),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

/// A cursor over the items of one script reply.
struct Reply {
    script: &'static str,
    items: std::vec::IntoIter<Value>,
}

impl Reply {
    /// Starts reading `value`: an array, or a reply sent as one line of text (see
    /// [`words`]).
    fn new(script: &'static str, value: Value) -> Result<Self, LedgerError> {
        match value {
            Value::Array(items) => Ok(Self {
                script,
                items: items.into_iter(),
            }),
            Value::BulkString(text) => Ok(Self {
                script,
                items: words(script, &text)?.into_iter(),
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

    /// The next item as a due time: 0 is none.
    fn due(&mut self) -> Result<Option<u64>, LedgerError> {
        Ok(Some(self.u64()?).filter(|&ms| ms > 0))
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

    /// The next item, as bytes.
    fn bytes(&mut self) -> Result<bytes::Bytes, LedgerError> {
        match self.next()? {
            Value::BulkString(bytes) => Ok(bytes.into()),
            other => Err(self.err(format!("expected bytes, got {other:?}"))),
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
            Ok(n) if n <= crate::ledger::MAX_AMOUNT => Ok(n),
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

    /// The next item, an amount or `-1` for none.
    fn optional(&mut self) -> Result<Option<u64>, LedgerError> {
        match self.i64()? {
            -1 => Ok(None),
            n => match u64::try_from(n) {
                Ok(n) if n <= crate::ledger::MAX_AMOUNT => Ok(Some(n)),
                _ => Err(self.err(format!("{n} is not an amount"))),
            },
        }
    }

    /// The next item, a nested array, read with its own cursor.
    fn nested(&mut self) -> Result<Reply, LedgerError> {
        let value = self.next()?;
        Reply::new(self.script, value)
    }

    /// The next item, an array of thresholds (credits).
    fn thresholds(&mut self) -> Result<Vec<u64>, LedgerError> {
        let mut list = self.nested()?;
        let mut values = Vec::with_capacity(list.items.len());
        while list.items.len() > 0 {
            values.push(list.u64()?);
        }
        Ok(values)
    }

    /// The next item, one event of `account`: `{entry_id, type, available, threshold | -1,
    /// runway_secs | -1, at_ms, seq}`; its id derives from the account and `seq`.
    fn event(&mut self, account: &AccountId) -> Result<CreditEvent, LedgerError> {
        let mut e = self.nested()?;
        let receipt = e.string()?;
        let kind = e.string()?;
        let kind = EventKind::parse(&kind)
            .ok_or_else(|| e.err(format!("{kind:?} is not an event type")))?;
        let available = e.i64()?;
        let threshold = e.optional()?;
        let runway = match e.i64()? {
            -1 => None,
            n => Some(u64::try_from(n).map_err(|_| e.err(format!("{n} is not a runway")))?),
        };
        let at = e.time_ms()?;
        let seq = e.u64()?;
        e.end()?;
        // The seq alone would repeat if a failover lost the counter's last writes; with
        // the detection time it does not.
        let mut event =
            CreditEvent::new(kind, account.clone(), available, at, format!("{seq}.{at}"))
                .with_receipt(receipt);
        event.threshold = threshold;
        event.runway_secs = runway;
        Ok(event)
    }

    /// The next item, an array of events of `account`.
    fn events(&mut self, account: &AccountId) -> Result<Vec<CreditEvent>, LedgerError> {
        let mut list = self.nested()?;
        let mut events = Vec::new();
        while list.items.len() > 0 {
            events.push(list.event(account)?);
        }
        Ok(events)
    }

    /// The next item, a float stored by Redis (`"%.17g"`), as a string (in a text reply,
    /// a whole one reads as an integer).
    fn f64(&mut self) -> Result<f64, LedgerError> {
        if let Some(Value::Int(n)) = self.items.as_slice().first() {
            let n = *n;
            self.items.next();
            // Any whole number a rate's text may be, as the string form reads it.
            return match u64::try_from(n) {
                Ok(n) => Ok(n as f64),
                Err(_) => Err(self.err(format!("{n} is not a rate"))),
            };
        }
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
        max: crate::ledger::MAX_AMOUNT,
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

/// The due-index entries a script asked its caller to write: when the holds or events
/// due-index must look at the account (ms), if it must be told.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    /// The holds due-index (the sweeper's).
    pub(super) holds: Option<u64>,
    /// The events due-index (the event claims').
    pub(super) events: Option<u64>,
}

/// The reply of `reserve`; `limit` is the most open holds the call allowed.
pub(super) fn reserve(
    value: Value,
    limit: Option<u64>,
    account: &AccountId,
) -> Result<(ReserveOutcome, Due), LedgerError> {
    let mut reply = Reply::new(RESERVE.name, value)?;
    let mut due = Due::default();
    let result = match reply.string()?.as_str() {
        "held" => {
            let amount = reply.u64()?;
            let available = reply.i64()?;
            let held = Held {
                amount,
                available,
                credit_limit: reply.u64()?,
                thresholds: reply.thresholds()?,
                expires_at_ms: reply.time_ms()?,
                replayed: reply.flag()?,
                runway_secs: runway(&mut reply, available)?,
            };
            due.holds = reply.due()?;
            Ok(ReserveOutcome::Held(held))
        }
        "insufficient" => {
            let mut refusal = Insufficient::new(reply.u64()?, reply.i64()?, reply.u64()?);
            refusal.events = reply.events(account)?;
            due.events = reply.due()?;
            Ok(ReserveOutcome::Insufficient(refusal))
        }
        "closed" => Ok(ReserveOutcome::Closed(reply.outcome()?)),
        "replay" => Ok(ReserveOutcome::Replay(match reply.string()?.as_str() {
            "in_progress" => Replay::InProgress,
            "key_reused" => Replay::KeyReused,
            "unavailable" => Replay::Unavailable,
            "stored" => Replay::Stored {
                response: reply.bytes()?,
                available: reply.i64()?,
            },
            other => return Err(reply.err(format!("unknown replay {other:?}"))),
        })),
        "too_many_holds" => Ok(ReserveOutcome::TooManyHolds {
            limit: limit.ok_or_else(|| reply.err("too_many_holds without a limit"))?,
        }),
        "total_out_of_range" => Err(total_out_of_range(reply.u64()?, reply.u64()?)),
        "unknown_account" => Ok(ReserveOutcome::UnknownAccount),
        tag => return Err(reply.unknown_tag(tag)),
    };
    reply.end()?;
    result.map(|outcome| (outcome, due))
}

/// The reply of `settle` (a commit or a refund).
/// With the events due-index entry the settle asked for.
pub(super) fn settle(
    value: Value,
    account: &AccountId,
) -> Result<(Settlement, Option<u64>), LedgerError> {
    let mut reply = Reply::new(SETTLE.name, value)?;
    match reply.string()?.as_str() {
        "settled" => {
            let outcome = reply.outcome()?;
            let committed = reply.u64()?;
            let released = reply.u64()?;
            let clamped = reply.flag()?;
            let available = reply.i64()?;
            let thresholds = reply.thresholds()?;
            let runway = runway(&mut reply, available)?;
            let events = reply.events(account)?;
            let events_due = reply.due()?;
            reply.end()?;
            let settlement = Settlement {
                outcome,
                committed,
                released,
                clamped,
                available: Some(available),
                thresholds,
                events,
                runway_secs: runway,
            };
            Ok((settlement, events_due))
        }
        "unknown_account" => {
            reply.end()?;
            Ok((Settlement::new(SettleOutcome::Unknown), None))
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

/// The reply of `grow`.
pub(super) fn grow(value: Value) -> Result<GrowOutcome, LedgerError> {
    let mut reply = Reply::new(GROW.name, value)?;
    let outcome = match reply.string()?.as_str() {
        "grown" => GrowOutcome::Grown(Grown::new(reply.u64()?, reply.i64()?)),
        "insufficient" => {
            GrowOutcome::Insufficient(Insufficient::new(reply.u64()?, reply.i64()?, reply.u64()?))
        }
        "not_open" => GrowOutcome::NotOpen(reply.outcome()?),
        "total_out_of_range" => return Err(total_out_of_range(reply.u64()?, reply.u64()?)),
        tag => return Err(reply.unknown_tag(tag)),
    };
    reply.end()?;
    Ok(outcome)
}

/// The reply of `history`: up to `limit` entries, and the cursor of the next page when
/// one more came. Each entry is the MessagePack array `audit` in `lib.lua` writes.
pub(super) fn history(value: Value, limit: usize) -> Result<HistoryPage, LedgerError> {
    let mut reply = Reply::new(HISTORY.name, value)?;
    match reply.string()?.as_str() {
        "entries" => {}
        tag => return Err(reply.unknown_tag(tag)),
    }
    let mut entries = Vec::new();
    while let Some(item) = reply.items.next() {
        let Value::BulkString(bytes) = item else {
            return Err(reply.err("an audit entry is not a string"));
        };
        entries.push(audit_entry(&bytes).map_err(|detail| reply.err(detail))?);
    }
    Ok(HistoryPage::from_newest(entries, limit))
}

/// One audit entry: `{seq, kind, amount, hold, route, at, available, held, committed,
/// topped_up}` in MessagePack.
fn audit_entry(bytes: &[u8]) -> Result<AuditEntry, String> {
    use rmpv::Value as M;
    let value = rmpv::decode::read_value(&mut &bytes[..])
        .map_err(|e| format!("an audit entry is not MessagePack: {e}"))?;
    let M::Array(fields) = value else {
        return Err("an audit entry is not an array".into());
    };
    let [seq, kind, amount, hold, route, at, available, held, committed, topped_up] = &fields[..]
    else {
        return Err(format!(
            "an audit entry has {} fields, not 10",
            fields.len()
        ));
    };
    let uint = |v: &M, what: &str| {
        v.as_u64()
            .filter(|&n| n <= crate::ledger::MAX_AMOUNT)
            .ok_or_else(|| format!("the audit entry's {what} is not an amount"))
    };
    let text = |v: &M| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let kind = kind
        .as_str()
        .and_then(AuditKind::parse)
        .ok_or("an audit entry of an unknown kind")?;
    let mut entry = AuditEntry::new(
        uint(seq, "number")?.to_string(),
        uint(at, "time")?,
        kind,
        uint(amount, "amount")?,
    );
    entry.hold_id = text(hold);
    entry.route = text(route);
    entry.available = available
        .as_i64()
        .ok_or("the audit entry's available is not an integer")?;
    entry.held = uint(held, "held")?;
    entry.committed = uint(committed, "committed")?;
    entry.topped_up = uint(topped_up, "topped_up")?;
    Ok(entry)
}

/// The reply of `store`.
pub(super) fn store(value: Value) -> Result<bool, LedgerError> {
    let mut reply = Reply::new(STORE.name, value)?;
    let stored = match reply.string()?.as_str() {
        "stored" => reply.flag()?,
        tag => return Err(reply.unknown_tag(tag)),
    };
    reply.end()?;
    Ok(stored)
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
                thresholds: reply.thresholds()?,
                runway_horizon: std::time::Duration::from_secs(reply.time_ms()?),
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

/// Takes the `{'expired_credits', credits, reply}` envelope (`with_expired` in `lib.lua`)
/// off an account script's reply: the reply, and the credits its reclaims took back.
pub(super) fn expired_envelope(value: Value) -> (Value, u64) {
    if let Value::Array(items) = &value {
        if let [Value::BulkString(tag), Value::Int(credits), _] = items.as_slice() {
            if tag.as_slice() == b"expired_credits" {
                let credits = u64::try_from(*credits).unwrap_or(0);
                let Value::Array(mut items) = value else {
                    unreachable!("matched above")
                };
                return (items.pop().expect("three items"), credits);
            }
        }
    }
    (value, 0)
}

/// The reply of `sweep`: how many holds went back (none when the account's keys vanished
/// since the index or the repair pass named it), and when the holds due-index should
/// look at the account next (`None`: no open hold, the entry goes).
pub(super) fn sweep(value: Value) -> Result<(u64, Option<u64>), LedgerError> {
    let mut reply = Reply::new(SWEEP.name, value)?;
    match reply.string()?.as_str() {
        "swept" => {
            let reclaimed = reply.u64()?;
            let _open_holds = reply.u64()?;
            let due = reply.due()?;
            reply.end()?;
            Ok((reclaimed, due))
        }
        "unknown_account" => {
            reply.end()?;
            Ok((0, None))
        }
        tag => Err(reply.unknown_tag(tag)),
    }
}

/// The reply of `rewrite`: whether the account changed form (`false` for an unknown one).
pub(super) fn rewrite(value: Value) -> Result<bool, LedgerError> {
    let mut reply = Reply::new(REWRITE.name, value)?;
    match reply.string()?.as_str() {
        "rewritten" => {
            let changed = reply.u64()? == 1;
            reply.end()?;
            Ok(changed)
        }
        "unknown_account" => {
            reply.end()?;
            Ok(false)
        }
        tag => Err(reply.unknown_tag(tag)),
    }
}

/// The reply of `outbox` `claim`: the events of `account` leased to the caller, and when
/// the events due-index should look at the account next (`None`: no event waits).
pub(super) fn outbox_claimed(
    value: Value,
    account: &AccountId,
) -> Result<(Vec<CreditEvent>, Option<u64>), LedgerError> {
    let mut reply = Reply::new(OUTBOX.name, value)?;
    match reply.string()?.as_str() {
        "claimed" => {
            let due = reply.due()?;
            let mut events = Vec::new();
            while reply.items.len() > 0 {
                events.push(reply.event(account)?);
            }
            Ok((events, due))
        }
        tag => Err(reply.unknown_tag(tag)),
    }
}

/// The reply of `outbox` `due` or `requeue`: when the events due-index should look at
/// the account next (`None`: no event waits, or nothing was requeued).
pub(super) fn outbox_due(value: Value) -> Result<Option<u64>, LedgerError> {
    let mut reply = Reply::new(OUTBOX.name, value)?;
    let due = match reply.string()?.as_str() {
        "due" | "requeued" => reply.due()?,
        "done" => {
            reply.flag()?;
            None
        }
        tag => return Err(reply.unknown_tag(tag)),
    };
    reply.end()?;
    Ok(due)
}

/// The reply of `outbox` `pending`: the events of `account`.
pub(super) fn outbox_events(
    value: Value,
    account: &AccountId,
) -> Result<Vec<CreditEvent>, LedgerError> {
    let mut reply = Reply::new(OUTBOX.name, value)?;
    match reply.string()?.as_str() {
        "events" => {
            let mut events = Vec::new();
            while reply.items.len() > 0 {
                events.push(reply.event(account)?);
            }
            Ok(events)
        }
        tag => Err(reply.unknown_tag(tag)),
    }
}

/// The reply of `outbox` `dead_letters`.
pub(super) fn dead_letters(
    value: Value,
    account: &AccountId,
) -> Result<Vec<DeadLetter>, LedgerError> {
    let mut reply = Reply::new(OUTBOX.name, value)?;
    match reply.string()?.as_str() {
        "dead_letters" => {
            let mut dead = Vec::new();
            while reply.items.len() > 0 {
                let mut pair = reply.nested()?;
                let event = pair.event(account)?;
                let reason = pair.string()?;
                let receipt = pair.string()?;
                pair.end()?;
                dead.push(DeadLetter::new(event, reason).with_receipt(receipt));
            }
            Ok(dead)
        }
        tag => Err(reply.unknown_tag(tag)),
    }
}

/// The reply of `outbox` `renew`, `ack` or `dead`.
pub(super) fn outbox_done(value: Value) -> Result<bool, LedgerError> {
    let mut reply = Reply::new(OUTBOX.name, value)?;
    match reply.string()?.as_str() {
        "done" => {
            let done = reply.flag()?;
            reply.end()?;
            Ok(done)
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
        assert_eq!(err.kind(), crate::ledger::ErrorKind::Corrupt);
        assert!(err.is_corrupt() && !err.is_unavailable());
        assert!(err.to_string().contains("balance script"));

        let mut r = Reply::new("x", Value::Array(vec![Value::Int(-2)])).unwrap();
        assert!(r.u64().is_err());
        let mut r = Reply::new("x", Value::Array(vec![Value::Int(-1)])).unwrap();
        assert_eq!(r.optional().unwrap(), None);
        let mut r = Reply::new("x", Value::Array(vec![])).unwrap();
        assert!(r.i64().is_err());
        let r = Reply::new("x", Value::Array(vec![Value::Int(1)])).unwrap();
        assert!(r.end().is_err());
        let mut r =
            Reply::new("x", Value::Array(vec![Value::BulkString(b"0.25".to_vec())])).unwrap();
        assert_eq!(r.f64().unwrap(), 0.25);
    }

    #[test]
    fn a_text_reply_reads_as_the_array_it_stands_for() {
        let a = AccountId::new("acct_a").unwrap();
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let now = 1_765_171_200_000_i64;
        let array = Value::Array(vec![
            bulk("held"),
            Value::Int(5),
            Value::Int(-20),
            Value::Int(100),
            Value::Array(vec![Value::Int(500), Value::Int(50)]),
            Value::Int(now + 60_000),
            Value::Int(0),
            bulk("0.5"),
            Value::Int(now - 1_000),
            Value::Int(now),
            Value::Int(now + 61_000),
        ]);
        let text = bulk(&format!(
            "held 5 -20 100 [500,50] {} 0 0.5 {} {now} {}",
            now + 60_000,
            now - 1_000,
            now + 61_000
        ));
        assert_eq!(
            reserve(text, None, &a).unwrap(),
            reserve(array, None, &a).unwrap()
        );
        // A whole rate, an exponent, no thresholds: as their array forms.
        for (rate, rate_word) in [
            ("0", "0"),
            ("2", "2"),
            ("10000000000000000", "10000000000000000"),
            ("1.0000000000000001e-05", "1.0000000000000001e-05"),
        ] {
            let settled = |rate_item: Value, thresholds: Value| {
                Value::Array(vec![
                    bulk("settled"),
                    bulk("committed"),
                    Value::Int(5),
                    Value::Int(0),
                    Value::Int(0),
                    Value::Int(95),
                    thresholds,
                    rate_item,
                    Value::Int(now),
                    Value::Int(now),
                    Value::Array(vec![]),
                    Value::Int(0),
                ])
            };
            let text = bulk(&format!(
                "settled committed 5 0 0 95 [] {rate_word} {now} {now} [] 0"
            ));
            assert_eq!(
                settle(text, &a).unwrap(),
                settle(settled(bulk(rate), Value::Array(vec![])), &a).unwrap(),
                "rate {rate}"
            );
        }
        // Words that are integers, and words that only look like them.
        assert_eq!(integer(b"-20"), Some(-20));
        assert_eq!(integer(b"9223372036854775807"), Some(i64::MAX));
        for not in [
            &b""[..],
            b"-",
            b"12a",
            b"+5",
            b"1.0",
            b"9223372036854775808",
        ] {
            assert_eq!(integer(not), None, "{:?}", String::from_utf8_lossy(not));
        }
        // Anything else is a typed error, never a guess.
        for bad in [
            "held 5  95 0 [] 1 0 0 1 1 0",
            "held 5 95 0 [1,x] 1 0 0 1 1 0",
            "held 5 95 0 [] 1 0 -0.5 1 1 0",
            "held 5 95 0 [] 1 0 0 1 1",
            "held 5 95 0 [] 1 0 0 1 1 0 7",
            "held 5.5 95 0 [] 1 0 0 1 1 0",
        ] {
            let err = reserve(bulk(bad), None, &a).unwrap_err();
            assert!(matches!(err, LedgerError::Corrupt(_)), "{bad:?}: {err:?}");
        }
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
        let a = AccountId::new("acct_1").unwrap();
        let (settled, due) = settle(Value::Array(vec![bulk("unknown_account")]), &a).unwrap();
        assert_eq!(due, None);
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
                Value::Int(0),
                Value::Int(0)
            ]))
            .unwrap(),
            (2, None)
        );
        assert_eq!(
            sweep(Value::Array(vec![
                bulk("swept"),
                Value::Int(0),
                Value::Int(1),
                Value::Int(1_700_000_000_000)
            ]))
            .unwrap(),
            (0, Some(1_700_000_000_000))
        );
        assert!(configure(Value::Array(vec![bulk("nope")])).is_err());
        assert!(matches!(
            reserve(Value::Array(vec![bulk("too_many_holds")]), Some(3), &a),
            Ok((
                ReserveOutcome::TooManyHolds { limit: 3 },
                Due {
                    holds: None,
                    events: None
                }
            ))
        ));
        assert!(
            reserve(Value::Array(vec![bulk("too_many_holds")]), None, &a)
                .unwrap_err()
                .is_corrupt()
        );
        assert_eq!(
            reserve(Value::Array(vec![bulk("unknown_account")]), None, &a)
                .unwrap()
                .0,
            ReserveOutcome::UnknownAccount
        );
        // A reply of an unknown shape, or a tag no script sends, is corrupt, not an outage.
        for odd in [
            Value::Nil,
            Value::Array(vec![bulk("held")]),
            Value::Array(vec![bulk("no_such_tag")]),
        ] {
            let err = reserve(odd, None, &a).unwrap_err();
            assert!(err.is_corrupt() && !err.is_unavailable(), "{err:?}");
        }
        let err = top_up(Value::Array(vec![bulk("topped_up"), Value::Int(2)]), 1).unwrap_err();
        assert_eq!(err.kind(), crate::ledger::ErrorKind::Corrupt);

        // Events: nested, typed; an unknown type is corrupt.
        let event = |kind: &str| {
            Value::Array(vec![
                bulk("1700000000000-0"),
                bulk(kind),
                Value::Int(4),
                Value::Int(100),
                Value::Int(-1),
                Value::Int(1_700_000_000_000),
                Value::Int(7),
            ])
        };
        let insufficient = |events: Vec<Value>| {
            Value::Array(vec![
                bulk("insufficient"),
                Value::Int(5),
                Value::Int(4),
                Value::Int(0),
                Value::Array(events),
                Value::Int(1_700_000_030_000),
            ])
        };
        let (ReserveOutcome::Insufficient(refusal), due) =
            reserve(insufficient(vec![event("balance.low")]), None, &a).unwrap()
        else {
            panic!("not a refusal")
        };
        assert_eq!(due.events, Some(1_700_000_030_000));
        let e = &refusal.events[0];
        assert_eq!(
            (e.kind, e.available, e.threshold, e.runway_secs),
            (EventKind::BalanceLow, 4, Some(100), None)
        );
        assert_eq!(e.receipt, "1700000000000-0");
        assert!(reserve(insufficient(vec![event("balance.rich")]), None, &a)
            .unwrap_err()
            .is_corrupt());
        assert!(outbox_done(Value::Array(vec![bulk("done"), Value::Int(2)])).is_err());
        let (claimed, due) = outbox_claimed(
            Value::Array(vec![bulk("claimed"), Value::Int(0), event("balance.low")]),
            &a,
        )
        .unwrap();
        assert_eq!((claimed.len(), due), (1, None));
        assert_eq!(
            outbox_due(Value::Array(vec![bulk("requeued"), Value::Int(9)])).unwrap(),
            Some(9)
        );
        assert_eq!(
            outbox_due(Value::Array(vec![bulk("done"), Value::Int(0)])).unwrap(),
            None
        );
    }
}
