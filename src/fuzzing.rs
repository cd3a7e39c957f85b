//! Entry points for the fuzz targets in `fuzz/` and the corpus replay tests. Not a stable
//! API: hidden from the docs.
//!
//! Each `fn(&[u8])` feeds arbitrary bytes to one parser that sees caller input and asserts
//! its invariants: it never panics, what it accepts is exactly what its documented grammar
//! allows, and what it returns is consistent with the input. A failed assertion is a bug.
//! The few functions that return a value are thin wrappers for the property tests.

use std::sync::LazyLock;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::account::{
    bearer_token, header_key, AccountResolver, RequestView, Resolution, Unauthorized,
    MAX_API_KEY_LEN,
};
use crate::api_key::ApiKeyHash;
use crate::ledger::{
    check_idempotency_key, check_route, AccountId, HoldId, MAX_ACCOUNT_ID_LEN, MAX_HOLD_ID_LEN,
    MAX_IDEMPOTENCY_KEY_LEN,
};
use crate::pricing::{matches_path, parse_route, parse_segments, Price, Pricing, Segment};
use crate::wire::grpc;

/// The header [`api_key_header`] reads the key from.
const API_KEY_HEADER: &str = "api-key";
/// The header [`account_id`] runs the trusted-header resolver on.
const ACCOUNT_HEADER: &str = "x-account-id";

// Shared resolvers: they are never told a ledger answer, so their caches stay empty.
static BEARER: LazyLock<AccountResolver> = LazyLock::new(AccountResolver::api_key);
static API_KEY: LazyLock<AccountResolver> =
    LazyLock::new(|| AccountResolver::api_key_header(API_KEY_HEADER));
static TRUSTED: LazyLock<AccountResolver> =
    LazyLock::new(|| AccountResolver::trusted_header(ACCOUNT_HEADER));

/// RFC 6750 `b64token` characters, written out again so the parser is checked against it.
fn token_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// What `AccountId::new` must accept, from its documentation.
fn valid_account_id(s: &str) -> bool {
    (1..=MAX_ACCOUNT_ID_LEN).contains(&s.len())
        && s.bytes().all(|b| {
            matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b':' | b'@' | b'+' | b'=')
        })
}

/// What `HoldId::new` must accept, from its documentation.
fn valid_hold_id(s: &str) -> bool {
    (1..=MAX_HOLD_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-'))
}

fn headers_with(name: HeaderName, value: HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    headers
}

fn resolve(resolver: &AccountResolver, headers: &HeaderMap) -> Resolution {
    let uri = Uri::from_static("/");
    let extensions = http::Extensions::new();
    resolver.resolve(&RequestView {
        method: &Method::GET,
        uri: &uri,
        headers,
        extensions: &extensions,
    })
}

/// A key the parsers accepted: 1 to [`MAX_API_KEY_LEN`] token characters.
fn assert_key_shape(key: &str) {
    assert!(
        (1..=MAX_API_KEY_LEN).contains(&key.len()),
        "key of {} bytes accepted",
        key.len()
    );
    assert!(
        key.bytes().all(token_char),
        "key {key:?} has a non-token char"
    );
}

/// The resolver agrees with the parser: a lookup of the key's hash, or the same refusal.
fn assert_resolution(resolution: Resolution, parsed: &Result<&str, Unauthorized>) {
    match (resolution, parsed) {
        (Resolution::LookUp(looked_up), Ok(key)) => assert_eq!(looked_up.hash, ApiKeyHash::of(key)),
        (Resolution::Refused(why), Err(expected)) => assert_eq!(&why, expected),
        (Resolution::Account(_), _) => panic!("an empty key cache resolved an account"),
        (_, parsed) => panic!("resolver and parser disagree on {parsed:?}"),
    }
}

/// The key `Authorization: <value>` carries, or why it is refused; `None` when `value` is
/// not a valid header value at all.
pub fn bearer_key(value: &[u8]) -> Option<Result<String, Unauthorized>> {
    let value = HeaderValue::from_bytes(value).ok()?;
    let headers = headers_with(header::AUTHORIZATION, value);
    Some(bearer_token(&headers).map(str::to_owned))
}

/// The key an `Api-Key: <value>` header carries, or why it is refused; `None` when `value` is
/// not a valid header value at all.
pub fn header_api_key(value: &[u8]) -> Option<Result<String, Unauthorized>> {
    let value = HeaderValue::from_bytes(value).ok()?;
    let name = HeaderName::from_static(API_KEY_HEADER);
    let headers = headers_with(name.clone(), value);
    Some(header_key(&headers, &name).map(str::to_owned))
}

/// The `grpc-status` read from a header `value`; `None` when absent, invalid or not a status.
pub fn grpc_status_of(value: &[u8]) -> Option<u32> {
    let value = HeaderValue::from_bytes(value).ok()?;
    grpc::grpc_status(&headers_with(HeaderName::from_static("grpc-status"), value))
}

/// `Authorization` header bytes through `bearer_token` and the default resolver.
pub fn authorization_header(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let headers = headers_with(header::AUTHORIZATION, value.clone());
    let parsed = bearer_token(&headers);
    let well_formed = data.len() > 7
        && data.len() <= MAX_API_KEY_LEN + 7
        && data[..7].eq_ignore_ascii_case(b"bearer ")
        && data[7..].iter().all(|&b| token_char(b));
    match &parsed {
        Ok(key) => {
            assert_key_shape(key);
            assert!(well_formed, "{data:?} accepted");
            assert_eq!(
                key.as_bytes(),
                &data[7..],
                "the key is not the header's rest"
            );
        }
        Err(why) => {
            assert!(!well_formed, "{data:?} refused: {why:?}");
            let _ = why.detail();
        }
    }
    assert_resolution(resolve(&BEARER, &headers), &parsed);

    // Two Authorization headers are refused, whatever they hold.
    let mut twice = headers.clone();
    twice.append(header::AUTHORIZATION, value);
    assert!(matches!(
        bearer_token(&twice),
        Err(Unauthorized::Malformed(_))
    ));
}

/// `Api-Key` header bytes through `header_key` and the resolver for that header.
pub fn api_key_header(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let name = HeaderName::from_static(API_KEY_HEADER);
    let headers = headers_with(name.clone(), value);
    let parsed = header_key(&headers, &name);
    let well_formed =
        (1..=MAX_API_KEY_LEN).contains(&data.len()) && data.iter().all(|&b| token_char(b));
    match &parsed {
        Ok(key) => {
            assert_key_shape(key);
            assert_eq!(key.as_bytes(), data, "the key is not the whole header");
        }
        Err(why) => assert!(!well_formed, "{data:?} refused: {why:?}"),
    }
    assert_resolution(resolve(&API_KEY, &headers), &parsed);
}

/// Account ids through `AccountId::new`, `FromStr` and the trusted-header resolver.
pub fn account_id(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let expected = valid_account_id(&text);
    match AccountId::new(&*text) {
        Ok(id) => {
            assert!(expected, "{text:?} accepted");
            assert_eq!(id.as_str(), text);
            assert_eq!(id.to_string(), text);
            assert!(!id.as_str().contains(|c: char| c == '{'
                || c == '}'
                || c.is_whitespace()
                || c.is_control()
                || !c.is_ascii()));
            assert_eq!(text.parse::<AccountId>().ok(), Some(id));
        }
        Err(_) => {
            assert!(!expected, "{text:?} refused");
            assert!(text.parse::<AccountId>().is_err());
        }
    }

    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let headers = headers_with(HeaderName::from_static(ACCOUNT_HEADER), value);
    let expected = std::str::from_utf8(data).is_ok_and(valid_account_id);
    match resolve(&TRUSTED, &headers) {
        Resolution::Account(id) => {
            assert!(expected, "{data:?} accepted as an account");
            assert_eq!(id.as_str().as_bytes(), data);
        }
        Resolution::Refused(why) => {
            assert!(!expected, "{data:?} refused: {why:?}");
            assert_eq!(why, Unauthorized::InvalidAccount);
        }
        Resolution::LookUp(_) => panic!("a trusted header asked for a key lookup"),
    }
}

/// Hold ids through `HoldId::new`.
pub fn hold_id(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match HoldId::new(&*text) {
        Ok(id) => {
            assert!(valid_hold_id(&text), "{text:?} accepted");
            assert_eq!(id.as_str(), text);
        }
        Err(_) => assert!(!valid_hold_id(&text), "{text:?} refused"),
    }
    assert!(HoldId::new(HoldId::generate().as_str()).is_ok());
}

/// Top-up idempotency keys through `check_idempotency_key`.
pub fn idempotency_key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let expected = (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_graphic());
    assert_eq!(check_idempotency_key(&text).is_ok(), expected, "{text:?}");
}

/// Usage route labels through `check_route`.
pub fn route_label(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let expected = text.len() <= 256 && !text.chars().any(char::is_control);
    assert_eq!(check_route(&text).is_ok(), expected, "{text:?}");
}

/// A path the segments must match: each parameter filled in, a rest given two segments.
fn instance_of(segments: &[Segment]) -> String {
    let mut path = String::new();
    for segment in segments {
        match segment {
            Segment::Literal(literal) => {
                path.push('/');
                path.push_str(literal);
            }
            Segment::Param => path.push_str("/p"),
            Segment::Rest => {
                path.push_str("/r/s");
                break;
            }
        }
    }
    path
}

/// A route pattern and a path (`route\npath[\nmatched]`) through `Pricing` and `price`.
pub fn route_matching(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let route = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let matched = lines.next();

    let price = Price::Hold(7);
    let Ok(pricing) = Pricing::new().unpriced(Price::Free).try_rule(route, price) else {
        return;
    };
    let (method, pattern) = parse_route(route).expect("try_rule accepted it");
    assert!(pattern.starts_with('/'));
    assert!(
        check_route(pattern).is_ok(),
        "pattern {pattern:?} accepted but the ledger refuses it as a route label"
    );
    let segments = parse_segments(pattern);
    assert!(
        !segments.iter().rev().skip(1).any(|s| *s == Segment::Rest),
        "a rest segment before the last one in {pattern:?}"
    );

    let any_method = method.is_none();
    let method = method.unwrap_or(Method::GET);
    let other = if method == Method::TRACE {
        Method::OPTIONS
    } else {
        Method::TRACE
    };
    let label = Some(pattern);

    // The raw path: priced by the rule exactly when it matches.
    let priced = pricing.price(&method, path, None);
    if matches_path(&segments, path) {
        assert_eq!((priced.price, priced.route.as_deref()), (price, label));
    } else {
        assert_eq!((priced.price, priced.route), (Price::Free, None));
    }
    // Only the rule's method pays, if it names one.
    if !any_method {
        assert_eq!(pricing.price(&other, path, None).route, None);
    }

    // axum's matched path wins when it is the pattern, and falls back to the raw path.
    if let Some(matched) = matched {
        let priced = pricing.price(&method, path, Some(matched));
        if matched == pattern || matches_path(&segments, path) {
            assert_eq!(priced.route.as_deref(), label);
        } else {
            assert_eq!(priced.route, None);
        }
    }
    assert_eq!(
        pricing
            .price(&method, "/elsewhere", Some(pattern))
            .route
            .as_deref(),
        label
    );

    // The pattern matches a path built from it; a path with a changed literal does not.
    let instance = instance_of(&segments);
    assert_eq!(
        pricing.price(&method, &instance, None).route.as_deref(),
        label,
        "{pattern:?} does not match {instance:?}"
    );
    if let Some(i) = segments
        .iter()
        .position(|s| matches!(s, Segment::Literal(_)))
    {
        let mut changed = segments.clone();
        if let Segment::Literal(literal) = &mut changed[i] {
            literal.push('~');
        }
        let changed = instance_of(&changed);
        assert_eq!(
            pricing.price(&method, &changed, None).route,
            None,
            "{pattern:?} matches {changed:?}"
        );
    }
    // An extra segment only matches when the pattern ends with a rest.
    let longer = format!("{instance}/x");
    assert_eq!(
        matches_path(&segments, &longer),
        segments.last() == Some(&Segment::Rest),
        "{pattern:?} against {longer:?}"
    );
}

/// `grpc-status` and `content-type` header bytes through `grpc_status` and `is_grpc`.
pub fn grpc_status(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let status = grpc::grpc_status(&headers_with(
        HeaderName::from_static("grpc-status"),
        value.clone(),
    ));
    let digits = data.trim_ascii();
    let expected = if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
        std::str::from_utf8(digits)
            .expect("ASCII")
            .parse::<u32>()
            .ok()
    } else {
        None
    };
    assert_eq!(status, expected, "grpc-status {data:?}");
    if let Some(code) = status {
        let canonical = HeaderValue::from(code);
        assert_eq!(
            grpc::grpc_status(&headers_with(
                HeaderName::from_static("grpc-status"),
                canonical
            )),
            Some(code)
        );
    }

    let grpc = grpc::is_grpc(&headers_with(header::CONTENT_TYPE, value));
    assert_eq!(grpc, data.starts_with(b"application/grpc"));
}

/// Hex digits through `ApiKeyHash::from_hex`, and raw bytes back through `to_hex`.
pub fn api_key_hash_hex(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let expected = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
    match ApiKeyHash::from_hex(&text) {
        Some(hash) => {
            assert!(expected, "{text:?} accepted");
            assert_eq!(hash.to_hex(), text.to_ascii_lowercase());
            assert_eq!(ApiKeyHash::from_hex(&hash.to_hex()), Some(hash));
            assert_eq!(format!("{hash}"), hash.to_hex());
        }
        None => assert!(!expected, "{text:?} refused"),
    }
    if let Some(bytes) = data.get(..32) {
        let hex = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let hash = ApiKeyHash::from_hex(&hex).expect("64 hex digits");
        assert_eq!(hash.as_bytes().as_slice(), bytes);
        assert_eq!(hash.to_hex(), hex);
    }
}
