//! The messages of `tower_credits.v1.Credits`, as `prost` types.

/// What a call would cost: the request of `Quote`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QuoteRequest {
    /// The gRPC method path to price, such as `/echo.Echo/Say`.
    #[prost(string, tag = "1")]
    pub method: String,
    /// The most the caller lets the call hold, as `Credits-Max-Cost`.
    #[prost(uint64, optional, tag = "2")]
    pub max_cost: Option<u64>,
}

/// The answer of `Quote`; the fields mean what the HTTP quote's JSON fields mean.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QuoteReply {
    /// The hold a real call would place (after `max_cost`); 0 for a free method.
    #[prost(uint64, tag = "1")]
    pub price: u64,
    /// The least the method runs with, when it declared one.
    #[prost(uint64, optional, tag = "2")]
    pub min_price: Option<u64>,
    /// The caller's available balance; absent for a free method.
    #[prost(int64, optional, tag = "3")]
    pub available: Option<i64>,
    /// Whether a real call now would be served.
    #[prost(bool, tag = "4")]
    pub affordable: bool,
    /// Credits missing for the full price.
    #[prost(uint64, tag = "5")]
    pub shortfall: u64,
    /// The most a call could hold now (0 when below the least it runs with); absent for a
    /// free method.
    #[prost(uint64, optional, tag = "6")]
    pub max_affordable: Option<u64>,
    /// Seconds the balance lasts at the recent spend rate, when it spends.
    #[prost(uint64, optional, tag = "7")]
    pub runway_secs: Option<u64>,
    /// The version of the price list, when the pricing has one.
    #[prost(string, optional, tag = "8")]
    pub price_version: Option<String>,
}

/// The request of `Readout`: the caller is the account the layer resolved.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadoutRequest {}

/// The answer of `Readout`: what the HTTP [`CreditsReadout`](crate::readout::CreditsReadout)
/// answers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadoutReply {
    /// The caller's account.
    #[prost(string, tag = "1")]
    pub account: String,
    /// Credits that can be held now (negative only within the overdraft).
    #[prost(int64, tag = "2")]
    pub available: i64,
    /// Sum of open holds.
    #[prost(uint64, tag = "3")]
    pub held: u64,
    /// Sum of all commits.
    #[prost(uint64, tag = "4")]
    pub committed: u64,
    /// Overdraft allowed.
    #[prost(uint64, tag = "5")]
    pub credit_limit: u64,
    /// The account's own low-balance thresholds.
    #[prost(uint64, repeated, tag = "6")]
    pub thresholds: Vec<u64>,
    /// Seconds the balance lasts at the recent spend rate, when it spends.
    #[prost(uint64, optional, tag = "7")]
    pub runway_secs: Option<u64>,
    /// Spend by route.
    #[prost(message, repeated, tag = "8")]
    pub routes: Vec<RouteSpend>,
}

/// What the caller spent on one route.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteSpend {
    /// The route label.
    #[prost(string, tag = "1")]
    pub route: String,
    /// Commits counted.
    #[prost(uint64, tag = "2")]
    pub calls: u64,
    /// Credits committed.
    #[prost(uint64, tag = "3")]
    pub credits: u64,
    /// Credits per call.
    #[prost(double, tag = "4")]
    pub average_cost: f64,
}
