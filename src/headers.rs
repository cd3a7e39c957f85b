//! Names of the response headers (and gRPC metadata) the layer writes, and writing them.

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
/// | `credits-runway` | the account has a recent spend rate | seconds the balance lasts at that rate |
/// | `credits-hold-id` | cost settles at body end | the open hold's id |
/// | `credits-price-version` | the pricing has a version | that version |
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
}

pub(crate) fn int<T>(n: T) -> HeaderValue
where
    HeaderValue: From<T>,
{
    HeaderValue::from(n)
}

/// The low-balance warning value, e.g. `low-balance; remaining=40; threshold=100`.
pub(crate) fn warning(remaining: i64, threshold: u64) -> HeaderValue {
    HeaderValue::try_from(format!(
        "low-balance; remaining={remaining}; threshold={threshold}"
    ))
    .expect("ASCII")
}

/// Writes the figures of a settled request: cost, hold, remaining, and the warning.
pub(crate) fn write_settled(
    headers: &mut HeaderMap,
    names: &CreditHeaders,
    reserved: u64,
    cost: u64,
    remaining: i64,
    threshold: Option<u64>,
) {
    headers.insert(names.cost.clone(), int(cost));
    headers.insert(names.reserved.clone(), int(reserved));
    headers.insert(names.remaining.clone(), int(remaining));
    write_warning(headers, names, remaining, threshold);
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

pub(crate) fn write_warning(
    headers: &mut HeaderMap,
    names: &CreditHeaders,
    remaining: i64,
    threshold: Option<u64>,
) {
    if let Some(threshold) = threshold {
        if remaining < threshold as i64 {
            headers.insert(names.warning.clone(), warning(remaining, threshold));
        }
    }
}
