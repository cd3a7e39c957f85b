//! Names of the response headers (and gRPC metadata) the layer writes, and writing them.

use std::fmt::Write as _;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Names of the headers a [`CreditLayer`](crate::CreditLayer) writes. The defaults avoid
/// the `X-` prefix (RFC 6648); gRPC responses carry the same names as metadata.
///
/// | default | when | value |
/// |---|---|---|
/// | `credits-cost` | cost known | credits charged (0 when refunded) |
/// | `credits-reserved` | every billed request | the hold |
/// | `credits-remaining` | every billed request | available after this request settles |
/// | `credits-warning` | remaining below the low-balance threshold | `low-balance; remaining=40; threshold=100` |
/// | `credits-runway` | the account has a spend history (10 commits, the first 5 minutes ago or more) | seconds the balance lasts at its recent spend rate |
/// | `credits-hold-id` | cost settles at body end | the open hold's id |
/// | `credits-price-version` | the pricing has a version | that version |
/// | `credits-stop` (trailer) | the layer ended a stream at its hold | `hold-exhausted` |
///
/// A response whose cost is known only at the end of its body announces the trailers it
/// will send in `Trailer` (appended to any the service set): HTTP/2 clients always get
/// them, HTTP/1.1 clients when they sent `TE: trailers` (hyper's rule) and the body is
/// chunked — a body with an exact size keeps its `Content-Length` and gets no trailers.
/// `text/event-stream` responses also end with an `event: credits` carrying the figures.
///
/// And two request headers callers send:
///
/// | default | value | effect |
/// |---|---|---|
/// | `credits-quote` | `1` | answer the price and whether it is affordable, without running the call |
/// | `credits-max-cost` | digits, at most [`MAX_AMOUNT`](crate::ledger::MAX_AMOUNT) | the most this call may be charged |
///
/// ```
/// use tower_credits::CreditHeaders;
///
/// let names = CreditHeaders::default().cost("x-acme-cost");
/// # let _ = names;
/// ```
#[derive(Debug, Clone)]
pub struct CreditHeaders {
    pub(crate) cost: HeaderName,
    pub(crate) reserved: HeaderName,
    pub(crate) remaining: HeaderName,
    pub(crate) warning: HeaderName,
    pub(crate) runway: HeaderName,
    pub(crate) hold_id: HeaderName,
    pub(crate) price_version: HeaderName,
    pub(crate) quote: HeaderName,
    pub(crate) max_cost: HeaderName,
    pub(crate) stop: HeaderName,
}

impl CreditHeaders {
    /// Whether `name` is one of the layer's figures of a call (cost, hold, balance, …).
    pub(crate) fn is_credit_header(&self, name: &HeaderName) -> bool {
        [
            &self.cost,
            &self.reserved,
            &self.remaining,
            &self.warning,
            &self.runway,
            &self.hold_id,
            &self.price_version,
            &self.stop,
        ]
        .contains(&name)
    }
}

impl Default for CreditHeaders {
    fn default() -> Self {
        Self {
            cost: HeaderName::from_static("credits-cost"),
            reserved: HeaderName::from_static("credits-reserved"),
            remaining: HeaderName::from_static("credits-remaining"),
            warning: HeaderName::from_static("credits-warning"),
            runway: HeaderName::from_static("credits-runway"),
            hold_id: HeaderName::from_static("credits-hold-id"),
            price_version: HeaderName::from_static("credits-price-version"),
            quote: HeaderName::from_static("credits-quote"),
            max_cost: HeaderName::from_static("credits-max-cost"),
            stop: HeaderName::from_static("credits-stop"),
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {
        impl CreditHeaders {
            $(
                #[$doc]
                ///
                /// # Panics
                ///
                /// When `name` is not a valid header name.
                pub fn $name(mut self, name: &str) -> Self {
                    self.$name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
                    self
                }
            )*
        }
    };
}

setter! {
    /// Renames `credits-cost`.
    cost,
    /// Renames `credits-reserved`.
    reserved,
    /// Renames `credits-remaining`.
    remaining,
    /// Renames `credits-warning`.
    warning,
    /// Renames `credits-runway`.
    runway,
    /// Renames `credits-hold-id`.
    hold_id,
    /// Renames `credits-price-version`.
    price_version,
    /// Renames the request header `credits-quote`.
    quote,
    /// Renames the request header `credits-max-cost`.
    max_cost,
    /// Renames the trailer `credits-stop`.
    stop,
}

// Header values are cut from a per-thread buffer. `HeaderValue::from(u64)` allocates twice
// per value, on every billed request; here a 4 KiB buffer serves about fifty responses'
// figures, so a request's three to five values cost no allocation of their own. (A value
// kept alive long after its response keeps its 4 KiB buffer alive too.)

/// Size of each per-thread buffer.
const CHUNK: usize = 4096;
/// Room one value may need: a warning with two 20-digit figures.
const LONGEST_VALUE: usize = 96;

thread_local! {
    static BUFFER: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// `n` in decimal (itoa: a tenth of `format!`'s cost); 0 to 999 from a table.
pub(crate) fn int(n: impl Into<i128>) -> HeaderValue {
    let n = n.into();
    match usize::try_from(n) {
        Ok(small) if small < SMALL_INTS => SMALL.get_or_init(small_ints)[small].clone(),
        _ => {
            let mut digits = itoa::Buffer::new();
            // 64-bit formatting where the figure fits: a third of the 128-bit one's cost.
            let text = match i64::try_from(n) {
                Ok(n) => digits.format(n),
                Err(_) => digits.format(n),
            };
            cut(|buf| buf.extend_from_slice(text.as_bytes()))
        }
    }
}

/// How many of the first integers are kept as ready header values.
const SMALL_INTS: usize = 1_000;

/// `0` to `999`: prices and holds are mostly small, and one of these costs a clone of
/// static bytes (no atomic count, no check of the text) where a value cut from the buffer
/// costs a quarter of writing a header.
static SMALL: std::sync::OnceLock<Box<[HeaderValue]>> = std::sync::OnceLock::new();

fn small_ints() -> Box<[HeaderValue]> {
    // One static text for all of them (2,890 bytes, made once per process).
    let text: &'static str = Box::leak(
        (0..SMALL_INTS)
            .map(|n| n.to_string())
            .collect::<String>()
            .into_boxed_str(),
    );
    let mut at = 0;
    (0..SMALL_INTS)
        .map(|n| {
            let len = n.checked_ilog10().map_or(1, |d| d as usize + 1);
            let value = HeaderValue::from_static(&text[at..at + len]);
            at += len;
            value
        })
        .collect()
}

/// The low-balance warning value, e.g. `low-balance; remaining=40; threshold=100`.
fn warning(remaining: i64, threshold: u64) -> HeaderValue {
    cut(|buf| {
        buf.write_fmt(format_args!(
            "low-balance; remaining={remaining}; threshold={threshold}"
        ))
        .expect("BytesMut grows as needed")
    })
}

/// Writes one value at the end of this thread's buffer and cuts it off as a header value
/// sharing the buffer; a buffer too full for the longest value is replaced.
fn cut(write: impl FnOnce(&mut BytesMut)) -> HeaderValue {
    BUFFER.with_borrow_mut(|buf| {
        if buf.capacity() - buf.len() < LONGEST_VALUE {
            *buf = BytesMut::with_capacity(CHUNK);
        }
        write(buf);
        HeaderValue::from_maybe_shared(buf.split().freeze())
            .expect("figures and warnings are visible ASCII")
    })
}

/// What a caller asked of billing in its request headers.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CallerAsks {
    /// `credits-quote: 1`: price the call, do not run it.
    pub(crate) quote: bool,
    /// `credits-max-cost: N`: the most this call may be charged.
    pub(crate) max_cost: Option<u64>,
}

/// A request header the layer reads that holds something it cannot accept.
#[derive(Debug, Clone)]
pub(crate) struct InvalidHeader {
    pub(crate) name: HeaderName,
    pub(crate) expected: &'static str,
}

/// The one value of `name`, if sent; sent twice is malformed.
fn one<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    expected: &'static str,
) -> Result<Option<&'h [u8]>, InvalidHeader> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => Ok(Some(value.as_bytes())),
        (Some(_), Some(_)) => Err(InvalidHeader {
            name: name.clone(),
            expected,
        }),
    }
}

impl From<InvalidHeader> for crate::refusal::Refusal {
    fn from(bad: InvalidHeader) -> Self {
        crate::refusal::Refusal::InvalidHeader {
            name: bad.name,
            expected: bad.expected,
        }
    }
}

impl CallerAsks {
    /// `credits-quote` alone: what a free route reads (it ignores the rest).
    pub(crate) fn read_quote(
        headers: &HeaderMap,
        names: &CreditHeaders,
    ) -> Result<bool, InvalidHeader> {
        const QUOTE: &str = "`1`, once";
        match one(headers, &names.quote, QUOTE)? {
            None => Ok(false),
            Some(b"1") => Ok(true),
            Some(_) => Err(InvalidHeader {
                name: names.quote.clone(),
                expected: QUOTE,
            }),
        }
    }

    pub(crate) fn read(headers: &HeaderMap, names: &CreditHeaders) -> Result<Self, InvalidHeader> {
        // Most requests carry neither header, and a look at the few names a request has
        // says so without hashing either name (two map lookups were 420 instructions).
        const FEW: usize = 16;
        if headers.keys_len() <= FEW
            && !headers
                .keys()
                .any(|name| *name == names.quote || *name == names.max_cost)
        {
            return Ok(Self::default());
        }
        let mut asks = Self {
            quote: Self::read_quote(headers, names)?,
            ..Self::default()
        };
        const MAX_COST: &str =
            "a whole number of credits (digits only, at most 9007199254740991), once";
        if let Some(value) = one(headers, &names.max_cost, MAX_COST)? {
            let invalid = || InvalidHeader {
                name: names.max_cost.clone(),
                expected: MAX_COST,
            };
            if value.is_empty() || value.len() > 16 || !value.iter().all(u8::is_ascii_digit) {
                return Err(invalid());
            }
            let n: u64 = std::str::from_utf8(value)
                .expect("digits")
                .parse()
                .map_err(|_| invalid())?;
            if n > crate::ledger::MAX_AMOUNT {
                return Err(invalid());
            }
            asks.max_cost = Some(n);
        }
        Ok(asks)
    }
}

/// Writes the figures of a settled request: cost, hold, remaining, the warning and the
/// runway.
pub(crate) fn write_settled(
    headers: &mut HeaderMap,
    names: &CreditHeaders,
    reserved: u64,
    cost: u64,
    remaining: i64,
    thresholds: &Thresholds,
    runway_secs: Option<u64>,
) {
    headers.insert(names.cost.clone(), int(cost));
    headers.insert(names.reserved.clone(), int(reserved));
    headers.insert(names.remaining.clone(), int(remaining));
    write_warning(headers, names, remaining, thresholds);
    write_runway(headers, names, runway_secs);
}

/// `credits-runway`, when the ledger knows the account's spend rate.
pub(crate) fn write_runway(
    headers: &mut HeaderMap,
    names: &CreditHeaders,
    runway_secs: Option<u64>,
) {
    if let Some(secs) = runway_secs {
        headers.insert(names.runway.clone(), int(secs));
    }
}

/// The thresholds a warning is measured against: the account's own, else the layer's
/// default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Thresholds {
    /// The account's own, in credits (any order).
    pub(crate) own: Vec<u64>,
    /// The layer's default, for an account without its own.
    pub(crate) fallback: Option<u64>,
}

impl Thresholds {
    /// The account's thresholds, else `fallback`.
    pub(crate) fn new(own: Vec<u64>, fallback: Option<u64>) -> Self {
        Self { own, fallback }
    }

    /// The threshold a warning names at `remaining`: the lowest one above it (the next
    /// the caller is about to cross is already crossed; the lowest crossed is the most
    /// urgent).
    pub(crate) fn warning_at(&self, remaining: i64) -> Option<u64> {
        let crossed = |t: &u64| remaining < *t as i64;
        if self.own.is_empty() {
            self.fallback.filter(crossed)
        } else {
            self.own.iter().copied().filter(crossed).min()
        }
    }
}

/// Announces the trailers a response settled at the end of its body will send, appended to
/// any `Trailer` the service set: hyper sends HTTP/1.1 trailers only when they are named.
pub(crate) fn announce_trailers(headers: &mut HeaderMap, names: &CreditHeaders) {
    let ours = [&names.cost, &names.remaining, &names.warning, &names.stop];
    let mut value = String::new();
    for existing in headers.get_all(http::header::TRAILER) {
        if let Ok(existing) = existing.to_str() {
            value.push_str(existing);
            value.push_str(", ");
        }
    }
    for (i, name) in ours.iter().enumerate() {
        if i > 0 {
            value.push_str(", ");
        }
        value.push_str(name.as_str());
    }
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(http::header::TRAILER, value);
    }
}

/// The head of a response settled at the end of its body: the hold, a lower bound of the
/// balance (the final figures come in trailers), the hold id, the warning and the runway.
pub(crate) fn write_pending(
    headers: &mut HeaderMap,
    names: &CreditHeaders,
    reserved: u64,
    available: i64,
    hold_id: &crate::ledger::HoldId,
    thresholds: &Thresholds,
    runway_secs: Option<u64>,
) {
    headers.insert(names.reserved.clone(), int(reserved));
    headers.insert(names.remaining.clone(), int(available));
    headers.insert(
        names.hold_id.clone(),
        HeaderValue::from_str(hold_id.as_str()).expect("hold ids are ASCII"),
    );
    write_warning(headers, names, available, thresholds);
    write_runway(headers, names, runway_secs);
}

/// `credits-warning`, when `remaining` is below a threshold: it names the lowest threshold
/// above `remaining`.
pub(crate) fn write_warning(
    headers: &mut HeaderMap,
    names: &CreditHeaders,
    remaining: i64,
    thresholds: &Thresholds,
) {
    if let Some(threshold) = thresholds.warning_at(remaining) {
        headers.insert(names.warning.clone(), warning(remaining, threshold));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asks(pairs: &[(&'static str, &'static str)]) -> Result<CallerAsks, InvalidHeader> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        CallerAsks::read(&h, &CreditHeaders::default())
    }

    /// Whether a request has few headers (names looked at one by one) or many (each name
    /// looked up), the caller's asks read the same.
    #[test]
    fn caller_asks_read_alike_with_few_headers_and_many() {
        let others: Vec<String> = (0..40).map(|i| format!("x-other-{i}")).collect();
        for count in [0, 3, 15, 16, 17, 40] {
            let with = |pairs: &[(&str, &str)]| {
                let mut h = HeaderMap::new();
                for name in &others[..count] {
                    h.append(
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        HeaderValue::from_static("v"),
                    );
                }
                for (k, v) in pairs {
                    h.append(
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    );
                }
                CallerAsks::read(&h, &CreditHeaders::default())
            };
            let none = with(&[]).unwrap();
            assert!(!none.quote && none.max_cost.is_none(), "{count}");
            let asked = with(&[("credits-quote", "1"), ("credits-max-cost", "7")]).unwrap();
            assert!(asked.quote && asked.max_cost == Some(7), "{count}");
            assert!(with(&[("credits-max-cost", "x")]).is_err(), "{count}");
            assert!(
                with(&[("credits-quote", "1"), ("credits-quote", "1")]).is_err(),
                "{count}"
            );
        }
    }

    #[test]
    fn caller_asks_are_strict() {
        let none = asks(&[]).unwrap();
        assert!(!none.quote && none.max_cost.is_none());
        assert!(asks(&[("credits-quote", "1")]).unwrap().quote);
        assert_eq!(
            asks(&[("credits-max-cost", "0")]).unwrap().max_cost,
            Some(0)
        );
        assert_eq!(
            asks(&[("credits-max-cost", "9007199254740991")])
                .unwrap()
                .max_cost,
            Some(crate::ledger::MAX_AMOUNT)
        );
        for bad in [
            vec![("credits-quote", "yes")],
            vec![("credits-quote", "1"), ("credits-quote", "1")],
            vec![("credits-max-cost", "")],
            vec![("credits-max-cost", "-1")],
            vec![("credits-max-cost", "+5")],
            vec![("credits-max-cost", " 5")],
            vec![("credits-max-cost", "1e3")],
            vec![("credits-max-cost", "9007199254740992")],
            vec![("credits-max-cost", "99999999999999999999")],
            vec![("credits-max-cost", "5"), ("credits-max-cost", "6")],
        ] {
            assert!(asks(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_cut_from_shared_buffers_keep_their_own_text() {
        // Enough values to cross several 4 KiB buffers, each checked after all are cut.
        let values: Vec<(i64, HeaderValue)> = (0..2_000)
            .map(|i| {
                let n = i64::MAX - i * 7_919;
                (n, int(n))
            })
            .collect();
        for (n, value) in &values {
            assert_eq!(value.to_str().unwrap(), n.to_string());
        }
        assert_eq!(int(0u64), "0");
        assert_eq!(int(-40i64), "-40");
        for n in [1u64, 9, 10, 99, 100, 998, 999, 1_000, 1_001] {
            assert_eq!(int(n), n.to_string().as_str(), "{n}");
        }
        // Past `i64` either way: the 128-bit formatting.
        for n in [u64::MAX, i64::MAX as u64 + 1] {
            assert_eq!(int(n), n.to_string().as_str(), "{n}");
        }
        assert_eq!(int(i64::MIN), i64::MIN.to_string().as_str());
        assert_eq!(
            warning(-40, 100),
            "low-balance; remaining=-40; threshold=100"
        );
    }
}
