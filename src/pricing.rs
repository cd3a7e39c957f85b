//! How much a request holds: a route table, free routes, and the policy for routes the
//! table does not know.
//!
//! Routes are written `"METHOD /path"` (or just `"/path"` for any method). A path segment
//! `{name}` or `:name` matches any one segment, and a last segment `{*name}` or `*` matches
//! the rest. gRPC methods are paths too: `"/pkg.Service/Method"`.
//!
//! When axum's [`MatchedPath`](https://docs.rs/axum/latest/axum/extract/struct.MatchedPath.html)
//! is in the request (the layer was added with `Router::layer` or `route_layer`), the table
//! is looked up by that pattern first. A layer wrapped around the whole router runs before
//! routing, so the same patterns are also matched against the raw path.
//!
//! ```
//! use tower_credits::pricing::{Price, Pricing};
//!
//! let pricing = Pricing::new()
//!     .route("GET /v1/echo", 1)
//!     .route("POST /v1/generate", 50)
//!     .route("/v1/users/{id}/reports", 5)
//!     .free("GET /health")
//!     .unpriced(Price::Free) // routes not in the table pass through unbilled
//!     .version("2026-11");
//! # let _ = pricing;
//! ```

use std::fmt;
use std::sync::Arc;

use http::Method;

use crate::amount::MAX_AMOUNT;
use crate::classify::Protocol;
use crate::ledger::check_route;
use crate::stream_limit::StreamLimit;

/// What one request costs up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Price {
    /// The request skips the ledger: no account is resolved, nothing is held or reported.
    Free,
    /// Hold this many credits before the inner service runs; the actual cost may be lower.
    Hold(u64),
    /// Resolve the caller's account (refusing unknown callers, as a billed route does) but
    /// hold and charge nothing: for routes that serve the caller its own data, such as the
    /// [readout](crate::readout). The handler finds the [`AccountId`](crate::AccountId) in
    /// the request extensions.
    Authenticated,
}

/// A priced request: how much to hold and under which route label it is accounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// What to hold.
    pub price: Price,
    /// The route label recorded in usage (the table's pattern, or `None` for unpriced routes).
    pub route: Option<Arc<str>>,
    /// What the route bills, when [`Pricing::protocol`] says; else the layer's.
    pub protocol: Option<Protocol>,
    /// The least the route can run with, when it declared one ([`Pricing::min_price`]): a
    /// `Credits-Max-Cost` at least this much lowers the hold to it.
    pub min: Option<u64>,
    /// What the route's stream does at its hold, when [`Pricing::stream_limit`] says; else
    /// the layer's.
    pub stream_limit: Option<StreamLimit>,
}

type PriceFn = dyn Fn(&Method, &str) -> Price + Send + Sync;

/// The pricing policy of a [`CreditLayer`](crate::CreditLayer).
///
/// Routes not in the table are charged [`Pricing::DEFAULT_UNPRICED`] (1 credit) unless
/// [`unpriced`](Pricing::unpriced) says otherwise: a paid API that forgot to price a new
/// route should not give it away, and the hold is refunded anyway when the route answers
/// 404. Use `.unpriced(Price::Free)` to let unknown routes pass through unbilled.
#[derive(Clone)]
pub struct Pricing {
    rules: Vec<Rule>,
    protocols: Vec<ProtocolRule>,
    unpriced: Price,
    fallback: Option<Arc<PriceFn>>,
    version: Option<http::HeaderValue>,
}

#[derive(Clone)]
struct Rule {
    method: Option<Method>,
    pattern: Arc<str>,
    segments: Vec<Segment>,
    price: Price,
    min: Option<u64>,
    stream_limit: Option<StreamLimit>,
}

#[derive(Clone)]
struct ProtocolRule {
    method: Option<Method>,
    pattern: Arc<str>,
    segments: Vec<Segment>,
    protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Param,
    Rest,
}

impl fmt::Debug for Pricing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pricing")
            .field(
                "routes",
                &self
                    .rules
                    .iter()
                    .map(|r| (r.method.as_ref().map(Method::as_str), &*r.pattern, r.price))
                    .collect::<Vec<_>>(),
            )
            .field(
                "protocols",
                &self
                    .protocols
                    .iter()
                    .map(|r| {
                        (
                            r.method.as_ref().map(Method::as_str),
                            &*r.pattern,
                            r.protocol,
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .field("unpriced", &self.unpriced)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Default for Pricing {
    fn default() -> Self {
        Self::new()
    }
}

impl Pricing {
    /// What a route not in the table holds unless [`unpriced`](Self::unpriced) is set.
    pub const DEFAULT_UNPRICED: Price = Price::Hold(1);

    /// An empty table: every route is charged [`Self::DEFAULT_UNPRICED`].
    pub fn new() -> Self {
        Self {
            rules: Vec::new(),
            protocols: Vec::new(),
            unpriced: Self::DEFAULT_UNPRICED,
            fallback: None,
            version: None,
        }
    }

    /// Prices every request with a closure of its method and path.
    ///
    /// ```
    /// use tower_credits::pricing::{Price, Pricing};
    ///
    /// let pricing = Pricing::from_fn(|method, path| {
    ///     if path.starts_with("/internal/") { Price::Free } else { Price::Hold(2) }
    /// });
    /// # let _ = pricing;
    /// ```
    pub fn from_fn(f: impl Fn(&Method, &str) -> Price + Send + Sync + 'static) -> Self {
        Self {
            fallback: Some(Arc::new(f)),
            ..Self::new()
        }
    }

    /// Holds `credits` for requests matching `route` (`"METHOD /path"` or `"/path"`).
    ///
    /// # Panics
    ///
    /// When the route does not parse (a bad method, a path not starting with `/`, a `*` or
    /// `{*name}` that is not the last segment, a control character, a path over 256 bytes)
    /// or `credits` exceeds [`MAX_AMOUNT`]: both are programming errors found at start-up,
    /// not at request time.
    pub fn route(self, route: &str, credits: u64) -> Self {
        assert!(
            credits <= MAX_AMOUNT,
            "price {credits} for {route:?} exceeds MAX_AMOUNT"
        );
        self.rule(route, Price::Hold(credits))
    }

    /// Declares that the route added last can run with as little as `credits`: a caller's
    /// `Credits-Max-Cost` between this and the route's price lowers the hold to it (an AI
    /// route can cut `max_tokens`); below it, the call is refused `412` before the handler
    /// runs. A route without a minimum has its price as minimum, so a cap never makes a
    /// fixed-price route cheaper.
    ///
    /// ```
    /// use tower_credits::pricing::Pricing;
    ///
    /// let pricing = Pricing::new().route("POST /v1/generate", 50).min_price(10);
    /// # let _ = pricing;
    /// ```
    ///
    /// # Panics
    ///
    /// When no route was added yet, when `credits` is 0 (the route would run for nothing
    /// for any caller who asks, or whose balance is empty), or when the last route is not a
    /// [`Price::Hold`] of at least `credits`.
    ///
    /// **The handler must bound its work by [`Charge::reserved`](crate::Charge::reserved)**:
    /// the hold may be anywhere between the minimum and the price (a caller's cap, or what
    /// its balance affords), and a cost above the hold is refused
    /// ([`ChargeError::HoldExceeded`](crate::ChargeError::HoldExceeded)).
    pub fn min_price(mut self, credits: u64) -> Self {
        assert!(
            credits > 0,
            "min_price(0) would let any caller run the route for free"
        );
        let rule = self.rules.last_mut().expect("min_price follows a route");
        match rule.price {
            Price::Hold(price) if credits <= price => rule.min = Some(credits),
            _ => panic!(
                "min_price({credits}) on {:?}: the route must hold at least that much",
                rule.pattern
            ),
        }
        self
    }

    /// What the stream of the route added last does at its hold, instead of the layer's
    /// [`stream_limit`](crate::CreditLayer::stream_limit): see [`StreamLimit`].
    ///
    /// ```
    /// use tower_credits::{pricing::Pricing, StreamLimit};
    ///
    /// let pricing = Pricing::new()
    ///     .route("GET /v1/stream", 20)
    ///     .stream_limit(StreamLimit::grow(20));
    /// # let _ = pricing;
    /// ```
    ///
    /// # Panics
    ///
    /// When no route was added yet, or the last route is not a [`Price::Hold`].
    pub fn stream_limit(mut self, limit: StreamLimit) -> Self {
        let rule = self.rules.last_mut().expect("stream_limit follows a route");
        assert!(
            matches!(rule.price, Price::Hold(_)),
            "stream_limit on {:?}: only a priced route streams against a hold",
            rule.pattern
        );
        rule.stream_limit = Some(limit);
        self
    }

    /// Lets requests matching `route` resolve the caller's account but hold nothing
    /// ([`Price::Authenticated`]).
    pub fn authenticated(self, route: &str) -> Self {
        self.rule(route, Price::Authenticated)
    }

    /// Lets requests matching `route` skip the ledger.
    pub fn free(self, route: &str) -> Self {
        self.rule(route, Price::Free)
    }

    /// What routes not in the table cost (default [`Self::DEFAULT_UNPRICED`]). A closure
    /// from [`from_fn`](Self::from_fn) replaces this.
    pub fn unpriced(mut self, price: Price) -> Self {
        self.unpriced = price;
        self
    }

    /// Bills requests matching `route` as `protocol`, whatever the layer's
    /// [`protocol`](crate::CreditLayer::protocol): for a server that mixes HTTP routes and a
    /// gRPC service. The first matching rule wins.
    ///
    /// ```
    /// use tower_credits::{classify::Protocol, pricing::Pricing};
    ///
    /// let pricing = Pricing::new()
    ///     .route("GET /v1/echo", 1)
    ///     .route("/echo.Echo/{*method}", 10)
    ///     .protocol("/echo.Echo/{*method}", Protocol::Grpc);
    /// # let _ = pricing;
    /// ```
    ///
    /// # Panics
    ///
    /// When the route does not parse (as for [`route`](Self::route)).
    pub fn protocol(mut self, route: &str, protocol: Protocol) -> Self {
        let (method, pattern) =
            parse_route(route).unwrap_or_else(|e| panic!("invalid route {route:?}: {e}"));
        let segments = parse_segments(pattern);
        assert!(
            !segments.iter().rev().skip(1).any(|s| *s == Segment::Rest),
            "invalid route {route:?}: `*` or `{{*name}}` must be the last segment"
        );
        self.protocols.push(ProtocolRule {
            method,
            pattern: Arc::from(pattern),
            segments,
            protocol,
        });
        self
    }

    /// A version of the price list, sent back in `Credits-Price-Version`.
    ///
    /// # Panics
    ///
    /// When `version` is not a valid header value.
    pub fn version(mut self, version: &str) -> Self {
        self.version = Some(http::HeaderValue::from_str(version).expect("price version"));
        self
    }

    pub(crate) fn version_header(&self) -> Option<&http::HeaderValue> {
        self.version.as_ref()
    }

    fn rule(self, route: &str, price: Price) -> Self {
        self.try_rule(route, price)
            .unwrap_or_else(|e| panic!("invalid route {route:?}: {e}"))
    }

    /// [`route`](Self::route) and [`free`](Self::free) without the panic: the route's
    /// parse error instead.
    pub(crate) fn try_rule(mut self, route: &str, price: Price) -> Result<Self, &'static str> {
        let (method, pattern) = parse_route(route)?;
        // The pattern is the usage label the ledger records: one it would refuse would make
        // every request on the route fail at request time instead of here.
        if check_route(pattern).is_err() {
            return Err("the path must be at most 256 bytes, without control characters");
        }
        let segments = parse_segments(pattern);
        if segments.iter().rev().skip(1).any(|s| *s == Segment::Rest) {
            return Err("`*` or `{*name}` must be the last segment");
        }
        self.rules.push(Rule {
            method,
            pattern: Arc::from(pattern),
            segments,
            price,
            min: None,
            stream_limit: None,
        });
        Ok(self)
    }

    /// Prices a request. `matched` is axum's `MatchedPath` when the router set one.
    ///
    /// `HEAD` is priced as the `GET` of the same path (axum runs the `GET` handler for it)
    /// unless a rule names `HEAD`. A path that a priced rule knows under another method is
    /// never free: it holds the unpriced default (at least
    /// [`DEFAULT_UNPRICED`](Self::DEFAULT_UNPRICED)), refunded when the route answers `405`.
    pub fn price(&self, method: &Method, path: &str, matched: Option<&str>) -> Priced {
        let protocol = self.protocol_of(method, path, matched);
        let head = method == Method::HEAD;
        // `HEAD` runs the `GET` handler: an explicit `HEAD` rule first, then the rules a
        // `GET` would match, in table order.
        let found = if head {
            self.find_named(matched, path, &Method::HEAD)
                .or_else(|| self.find(matched, path, |m| m == Method::GET))
        } else {
            self.find(matched, path, |m| m == method)
        };
        if let Some(rule) = found {
            if matches!(rule.price, Price::Free | Price::Authenticated)
                && rule.method.is_none()
                && self.priced_under_another_method(path, matched)
            {
                // A catch-all free (or authenticated-only) rule does not free a path priced
                // for other methods: axum may run the priced handler for any method.
                return self.unpriced_default(protocol);
            }
            return Priced {
                price: rule.price,
                route: Some(rule.pattern.clone()),
                protocol,
                min: rule.min,
                stream_limit: rule.stream_limit,
            };
        }
        let price = match &self.fallback {
            Some(f) => f(if head { &Method::GET } else { method }, path),
            None => self.unpriced,
        };
        if matches!(price, Price::Free | Price::Authenticated)
            && self.priced_under_another_method(path, matched)
        {
            return self.unpriced_default(protocol);
        }
        Priced {
            price,
            route: None,
            protocol,
            min: None,
            stream_limit: None,
        }
    }

    /// What a path known as priced under another method holds: the unpriced default,
    /// never free.
    fn unpriced_default(&self, protocol: Option<Protocol>) -> Priced {
        Priced {
            price: match self.unpriced {
                Price::Hold(n) => Price::Hold(n),
                Price::Free | Price::Authenticated => Self::DEFAULT_UNPRICED,
            },
            route: None,
            protocol,
            min: None,
            stream_limit: None,
        }
    }

    /// The first rule for this method and path: by axum's matched pattern, then by the raw
    /// path.
    fn find(
        &self,
        matched: Option<&str>,
        path: &str,
        method: impl Fn(&Method) -> bool,
    ) -> Option<&Rule> {
        let method_ok = |rule: &Rule| rule.method.as_ref().is_none_or(&method);
        matched
            .and_then(|matched| {
                self.rules
                    .iter()
                    .find(|r| method_ok(r) && &*r.pattern == matched)
            })
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|r| method_ok(r) && matches_path(&r.segments, path))
            })
    }

    /// The first rule that names `method` itself (not an any-method rule).
    fn find_named(&self, matched: Option<&str>, path: &str, method: &Method) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.method.as_ref() == Some(method)
                && (matched == Some(&*r.pattern) || matches_path(&r.segments, path))
        })
    }

    fn priced_under_another_method(&self, path: &str, matched: Option<&str>) -> bool {
        self.rules.iter().any(|r| {
            matches!(r.price, Price::Hold(_))
                && (matched == Some(&*r.pattern) || matches_path(&r.segments, path))
        })
    }

    fn protocol_of(&self, method: &Method, path: &str, matched: Option<&str>) -> Option<Protocol> {
        let method_ok = |m: &Option<Method>| {
            m.as_ref()
                .is_none_or(|m| m == method || (method == Method::HEAD && m == Method::GET))
        };
        self.protocols
            .iter()
            .find(|r| {
                method_ok(&r.method)
                    && (matched == Some(&*r.pattern) || matches_path(&r.segments, path))
            })
            .map(|r| r.protocol)
    }
}

pub(crate) fn parse_route(route: &str) -> Result<(Option<Method>, &str), &'static str> {
    let route = route.trim();
    let (method, path) = match route.split_once(' ') {
        Some((m, _)) if m != "*" && m.bytes().any(|b| b.is_ascii_lowercase()) => {
            // `get /x` would parse as an extension method and never match a request.
            return Err("methods are upper case (`GET /x`)");
        }
        Some((m, p)) if m != "*" => (
            Some(Method::from_bytes(m.as_bytes()).map_err(|_| "bad method")?),
            p.trim(),
        ),
        Some((_, p)) => (None, p.trim()),
        None => (None, route),
    };
    if !path.starts_with('/') {
        return Err("the path must start with `/`");
    }
    Ok((method, path))
}

pub(crate) fn parse_segments(pattern: &str) -> Vec<Segment> {
    pattern
        .split('/')
        .skip(1)
        .map(|seg| {
            if seg == "*" || (seg.starts_with("{*") && seg.ends_with('}')) {
                Segment::Rest
            } else if (seg.starts_with('{') && seg.ends_with('}')) || seg.starts_with(':') {
                Segment::Param
            } else {
                Segment::Literal(seg.to_owned())
            }
        })
        .collect()
}

/// Segment-wise match of a raw request path (no query) against a pattern: as splitting
/// the path at each `/`, without a searcher per call (a billed request matches its route
/// once or twice).
pub(crate) fn matches_path(segments: &[Segment], path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    // What is left of the path after the segments taken so far; `None` past its last one.
    let mut left = Some(rest.as_bytes());
    for seg in segments {
        let Some(now) = left else {
            return matches!(seg, Segment::Rest);
        };
        let end = match seg {
            Segment::Rest => return true,
            Segment::Literal(lit) => {
                let lit = lit.as_bytes();
                if !now.starts_with(lit) || now.get(lit.len()).is_some_and(|&b| b != b'/') {
                    return false;
                }
                lit.len()
            }
            Segment::Param => match now.iter().position(|&b| b == b'/') {
                Some(0) => return false,
                Some(end) => end,
                None if now.is_empty() => return false,
                None => now.len(),
            },
        };
        left = now.get(end + 1..);
    }
    left.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The match as first written: split the path at each `/`.
    fn matches_by_split(segments: &[Segment], path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for seg in segments {
            match seg {
                Segment::Rest => return true,
                Segment::Param => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if p == lit => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #[test]
        fn paths_match_as_split_at_each_slash(
            pattern in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(Segment::Param),
                    proptest::strategy::Just(Segment::Rest),
                    "[ab]{0,2}".prop_map(Segment::Literal),
                ],
                0..4,
            ),
            path in "/?[ab/]{0,8}",
        ) {
            proptest::prop_assert_eq!(
                matches_path(&pattern, &path),
                matches_by_split(&pattern, &path),
                "{:?} {:?}", pattern, path
            );
        }
    }

    fn table() -> Pricing {
        Pricing::new()
            .route("GET /v1/echo", 1)
            .route("POST /v1/generate", 50)
            .route("/v1/users/{id}/reports", 5)
            .route("GET /files/{*path}", 3)
            .route("/pkg.Greeter/SayHello", 7)
            .free("GET /health")
    }

    #[test]
    fn exact_routes_by_method() {
        let p = table();
        assert_eq!(
            p.price(&Method::GET, "/v1/echo", None).price,
            Price::Hold(1)
        );
        assert_eq!(
            p.price(&Method::GET, "/v1/echo", None).route.as_deref(),
            Some("/v1/echo")
        );
        // Wrong method falls to the unpriced policy.
        let other = p.price(&Method::DELETE, "/v1/echo", None);
        assert_eq!(other.price, Pricing::DEFAULT_UNPRICED);
        assert_eq!(other.route, None);
        assert_eq!(p.price(&Method::GET, "/health", None).price, Price::Free);
    }

    #[test]
    fn params_and_rest() {
        let p = table();
        assert_eq!(
            p.price(&Method::PUT, "/v1/users/42/reports", None).price,
            Price::Hold(5)
        );
        assert_eq!(
            p.price(&Method::PUT, "/v1/users//reports", None).price,
            Pricing::DEFAULT_UNPRICED
        );
        assert_eq!(
            p.price(&Method::GET, "/files/a/b/c.txt", None).price,
            Price::Hold(3)
        );
        assert_eq!(
            p.price(&Method::POST, "/pkg.Greeter/SayHello", None).price,
            Price::Hold(7)
        );
        assert_eq!(
            p.price(&Method::GET, "/v1/echo/extra", None).price,
            Pricing::DEFAULT_UNPRICED
        );
    }

    #[test]
    fn head_is_priced_as_get_unless_named() {
        let p = table();
        let head = p.price(&Method::HEAD, "/v1/echo", None);
        assert_eq!(head.price, Price::Hold(1));
        assert_eq!(head.route.as_deref(), Some("/v1/echo"));
        assert_eq!(p.price(&Method::HEAD, "/health", None).price, Price::Free);
        assert_eq!(
            p.price(&Method::HEAD, "/files/a", Some("/files/{*path}"))
                .price,
            Price::Hold(3)
        );
        let named = table().route("HEAD /v1/echo", 9).free("HEAD /v1/ping");
        assert_eq!(
            named.price(&Method::HEAD, "/v1/echo", None).price,
            Price::Hold(9)
        );
        assert_eq!(
            named.price(&Method::HEAD, "/v1/ping", None).price,
            Price::Free
        );
    }

    #[test]
    fn a_priced_path_under_another_method_is_never_free() {
        let p = table().unpriced(Price::Free);
        let post = p.price(&Method::POST, "/v1/echo", None);
        assert_eq!(post.price, Pricing::DEFAULT_UNPRICED);
        assert_eq!(post.route, None);
        // Paths no rule knows still pass under `.unpriced(Price::Free)`.
        assert_eq!(p.price(&Method::GET, "/nope", None).price, Price::Free);
        // A path only known as free stays free under other methods too.
        assert_eq!(p.price(&Method::POST, "/health", None).price, Price::Free);
        let held = table().unpriced(Price::Hold(4));
        assert_eq!(
            held.price(&Method::POST, "/v1/echo", None).price,
            Price::Hold(4)
        );
    }

    #[test]
    fn a_catch_all_free_rule_frees_neither_head_nor_other_methods_of_a_priced_path() {
        let p = Pricing::new()
            .route("GET /v1/report/{id}", 10)
            .free("/v1/{*rest}");
        assert_eq!(
            p.price(&Method::HEAD, "/v1/report/1", None).price,
            Price::Hold(10)
        );
        assert_eq!(
            p.price(&Method::POST, "/v1/report/1", None).price,
            Pricing::DEFAULT_UNPRICED
        );
        assert_eq!(p.price(&Method::GET, "/v1/other", None).price, Price::Free);
        // An explicit free rule for a method stays free.
        let p = Pricing::new()
            .route("POST /v1/items", 5)
            .free("GET /v1/items");
        assert_eq!(p.price(&Method::GET, "/v1/items", None).price, Price::Free);
        assert_eq!(p.price(&Method::HEAD, "/v1/items", None).price, Price::Free);
    }

    #[test]
    fn a_closure_prices_head_as_get() {
        let p = Pricing::from_fn(|method, _| {
            if method == Method::GET {
                Price::Hold(4)
            } else {
                Price::Free
            }
        });
        assert_eq!(p.price(&Method::HEAD, "/x", None).price, Price::Hold(4));
    }

    #[test]
    fn lower_case_methods_are_refused() {
        assert!(Pricing::new().try_rule("get /x", Price::Hold(1)).is_err());
    }

    #[test]
    fn an_authenticated_catch_all_does_not_free_a_priced_path() {
        let p = Pricing::new()
            .route("GET /v1/work", 50)
            .authenticated("/v1/{*rest}");
        assert_eq!(
            p.price(&Method::GET, "/v1/work", None).price,
            Price::Hold(50)
        );
        assert_eq!(
            p.price(&Method::POST, "/v1/work", None).price,
            Pricing::DEFAULT_UNPRICED
        );
        assert_eq!(
            p.price(&Method::GET, "/v1/credits", None).price,
            Price::Authenticated
        );
        let unpriced = Pricing::new()
            .route("GET /v1/work", 50)
            .unpriced(Price::Authenticated);
        assert_eq!(
            unpriced.price(&Method::POST, "/v1/work", None).price,
            Pricing::DEFAULT_UNPRICED
        );
    }

    #[test]
    #[should_panic(expected = "min_price(0)")]
    fn a_zero_minimum_is_refused() {
        let _ = Pricing::new().route("POST /v1/gen", 50).min_price(0);
    }

    #[test]
    fn protocols_per_route() {
        let p = table().protocol("/pkg.Greeter/{*method}", Protocol::Grpc);
        assert_eq!(
            p.price(&Method::POST, "/pkg.Greeter/SayHello", None)
                .protocol,
            Some(Protocol::Grpc)
        );
        assert_eq!(p.price(&Method::GET, "/v1/echo", None).protocol, None);
    }

    #[test]
    fn matched_path_wins() {
        let p = Pricing::new().route("GET /v1/users/{id}", 9);
        assert_eq!(
            p.price(&Method::GET, "/nested/v1/users/1", Some("/v1/users/{id}"))
                .price,
            Price::Hold(9)
        );
    }

    #[test]
    fn unpriced_policy_and_closure() {
        let free = Pricing::new().unpriced(Price::Free);
        assert_eq!(free.price(&Method::GET, "/x", None).price, Price::Free);
        let f = Pricing::from_fn(|m, _| {
            if m == Method::GET {
                Price::Hold(4)
            } else {
                Price::Free
            }
        });
        assert_eq!(f.price(&Method::GET, "/x", None).price, Price::Hold(4));
        assert_eq!(f.price(&Method::POST, "/x", None).price, Price::Free);
    }

    #[test]
    #[should_panic(expected = "invalid route")]
    fn bad_route_panics_at_startup() {
        let _ = Pricing::new().route("GET v1/echo", 1);
    }
}
