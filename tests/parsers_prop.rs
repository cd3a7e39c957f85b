//! Property tests of the parsers that see caller input: API-key headers, ids, route
//! patterns and `grpc-status`. Each parser is compared with its documented grammar.

use http::Method;
use proptest::prelude::*;
use tower_credits::account::{Unauthorized, MAX_API_KEY_LEN};
use tower_credits::fuzzing;
use tower_credits::ledger::HoldId;
use tower_credits::pricing::{Price, Pricing};
use tower_credits::{AccountId, ApiKeyHash};

/// RFC 6750 `b64token` characters: what an API key may hold.
const TOKEN: &str = "[A-Za-z0-9._~+/=-]";

/// `min..=max` token characters.
fn tokens(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{TOKEN}{{{min},{max}}}")).expect("regex")
}

/// Header-value bytes (visible ASCII, space, tab, obs-text) that are not token characters.
fn non_token_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(b' '),
        Just(b'\t'),
        prop::sample::select(b"!\"#$%&'()*,:;<>?@[\\]^`{|}".to_vec()),
        0x80u8..=0xff,
    ]
}

fn valid_account_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@+=".contains(&b))
}

fn valid_hold_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A literal path segment: never `*`, a `{…}` or a `:…` parameter.
fn literal() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{1,12}"
}

fn pattern_of(segments: &[String]) -> String {
    segments.iter().map(|s| format!("/{s}")).collect()
}

fn route_of(pricing: &Pricing, method: &Method, path: &str) -> Option<String> {
    pricing
        .price(method, path, None)
        .route
        .map(|r| r.to_string())
}

proptest! {
    #[test]
    fn bearer_token_resolves_to_exactly_the_token(
        scheme in prop::sample::select(vec!["Bearer", "bearer", "BEARER", "bEaReR"]),
        token in tokens(1, 256),
    ) {
        let header = format!("{scheme} {token}");
        prop_assert_eq!(fuzzing::bearer_key(header.as_bytes()), Some(Ok(token)));
    }

    #[test]
    fn a_non_token_char_makes_the_key_malformed(
        before in tokens(0, 100),
        bad in non_token_byte(),
        after in tokens(0, 100),
    ) {
        let mut key = before.into_bytes();
        key.push(bad);
        key.extend_from_slice(after.as_bytes());
        let bearer = [b"Bearer ".as_slice(), &key].concat();
        let parsed = fuzzing::bearer_key(&bearer);
        prop_assert!(matches!(parsed, Some(Err(Unauthorized::Malformed(_)))), "{:?}", parsed);
        // A header of its own: a leading or trailing blank is not even a header value.
        if let Some(parsed) = fuzzing::header_api_key(&key) {
            prop_assert!(matches!(parsed, Err(Unauthorized::Malformed(_))), "{:?}", parsed);
        }
    }

    #[test]
    fn an_overlong_key_is_oversized_without_looking_further(
        token in tokens(257, 400),
    ) {
        prop_assert_eq!(
            fuzzing::bearer_key(format!("Bearer {token}").as_bytes()),
            Some(Err(Unauthorized::Oversized))
        );
        prop_assert_eq!(fuzzing::header_api_key(token.as_bytes()), Some(Err(Unauthorized::Oversized)));
    }

    #[test]
    fn an_api_key_header_is_the_whole_key(token in tokens(1, 256)) {
        prop_assert_eq!(fuzzing::header_api_key(token.as_bytes()), Some(Ok(token.clone())));
        prop_assert!(token.len() <= MAX_API_KEY_LEN);
    }

    #[test]
    fn another_scheme_is_malformed(
        scheme in "(Basic|Token|Bearer:|Bearerx|Digest)",
        token in tokens(1, 64),
    ) {
        let header = format!("{scheme} {token}");
        let parsed = fuzzing::bearer_key(header.as_bytes());
        prop_assert!(matches!(parsed, Some(Err(Unauthorized::Malformed(_)))), "{:?}", parsed);
    }

    #[test]
    fn account_ids_accept_exactly_their_alphabet(
        id in prop_oneof![
            "[A-Za-z0-9_.:@+=-]{0,140}",
            "[A-Za-z0-9_.:@+={} \t\n\u{0}\u{7f}é/#-]{0,140}",
            any::<String>(),
        ],
    ) {
        let parsed = AccountId::new(&id);
        prop_assert_eq!(parsed.is_ok(), valid_account_id(&id), "{:?}", id);
        if let Ok(parsed) = parsed {
            prop_assert_eq!(parsed.as_str(), id.as_str());
            prop_assert!(!parsed.as_str().contains(['{', '}']), "{:?}", parsed);
        }
    }

    #[test]
    fn hold_ids_accept_exactly_their_alphabet(
        id in prop_oneof!["[A-Za-z0-9_-]{0,70}", "[A-Za-z0-9_ .:{}é-]{0,70}", any::<String>()],
    ) {
        prop_assert_eq!(HoldId::new(&id).is_ok(), valid_hold_id(&id), "{:?}", id);
    }

    #[test]
    fn a_literal_pattern_matches_exactly_its_path(
        segments in prop::collection::vec(literal(), 1..6),
        index in any::<prop::sample::Index>(),
        replacement in literal(),
    ) {
        let pattern = pattern_of(&segments);
        let pricing = Pricing::new().unpriced(Price::Free).route(&format!("GET {pattern}"), 3);
        let priced = pricing.price(&Method::GET, &pattern, None);
        prop_assert_eq!(priced.price, Price::Hold(3));
        prop_assert_eq!(priced.route.as_deref(), Some(pattern.as_str()));
        // Another method is not this route.
        prop_assert_eq!(route_of(&pricing, &Method::POST, &pattern), None);

        // One segment changed, one more or one fewer: not this route.
        let i = index.index(segments.len());
        if replacement != segments[i] {
            let mut changed = segments.clone();
            changed[i] = replacement;
            prop_assert_eq!(route_of(&pricing, &Method::GET, &pattern_of(&changed)), None);
        }
        prop_assert_eq!(route_of(&pricing, &Method::GET, &format!("{pattern}/x")), None);
        prop_assert_eq!(route_of(&pricing, &Method::GET, &format!("{pattern}/")), None);
        prop_assert_eq!(route_of(&pricing, &Method::GET, &pattern_of(&segments[..segments.len() - 1])), None);
    }

    #[test]
    fn a_param_matches_any_non_empty_segment(
        segments in prop::collection::vec(literal(), 1..5),
        index in any::<prop::sample::Index>(),
        colon in any::<bool>(),
        value in "[^/]{1,20}",
    ) {
        let i = index.index(segments.len());
        let mut pattern_segments = segments.clone();
        pattern_segments[i] = if colon { ":id".into() } else { "{id}".into() };
        let pattern = pattern_of(&pattern_segments);
        let pricing = Pricing::new().unpriced(Price::Free).route(&pattern, 2);

        let mut path = segments.clone();
        path[i] = value;
        let route = route_of(&pricing, &Method::PUT, &pattern_of(&path));
        prop_assert_eq!(route.as_deref(), Some(pattern.as_str()));
        path[i] = String::new();
        prop_assert_eq!(route_of(&pricing, &Method::PUT, &pattern_of(&path)), None);
    }

    #[test]
    fn a_rest_matches_any_tail(
        segments in prop::collection::vec(literal(), 1..4),
        tail in prop::collection::vec("[^/]{0,8}", 0..5),
        star in any::<bool>(),
    ) {
        let rest = if star { "*" } else { "{*rest}" };
        let pattern = format!("{}/{rest}", pattern_of(&segments));
        let pricing = Pricing::new().unpriced(Price::Free).route(&pattern, 4);
        let path = format!("{}{}", pattern_of(&segments), pattern_of(&tail));
        let route = route_of(&pricing, &Method::GET, &path);
        prop_assert_eq!(route.as_deref(), Some(pattern.as_str()));
        // `!` is no literal character: the first segment no longer matches.
        let elsewhere = format!("/{}!{}{}", segments[0], pattern_of(&segments[1..]), pattern_of(&tail));
        prop_assert_eq!(route_of(&pricing, &Method::GET, &elsewhere), None);
    }

    #[test]
    fn grpc_status_round_trips_any_u32(
        code in any::<u32>(),
        before in "[ \t]{0,3}",
        after in "[ \t]{0,3}",
    ) {
        prop_assert_eq!(fuzzing::grpc_status_of(code.to_string().as_bytes()), Some(code));
        prop_assert_eq!(fuzzing::grpc_status_of(format!("{before}{code}{after}").as_bytes()), Some(code));
        prop_assert_eq!(fuzzing::grpc_status_of(format!("+{code}").as_bytes()), None);
        prop_assert_eq!(fuzzing::grpc_status_of(format!("{code}x").as_bytes()), None);
        let too_big = u64::from(code) + u64::from(u32::MAX) + 1;
        prop_assert_eq!(fuzzing::grpc_status_of(too_big.to_string().as_bytes()), None);
    }

    #[test]
    fn api_key_hashes_round_trip_through_hex(bytes in any::<[u8; 32]>(), upper in any::<bool>()) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let text = if upper { hex.to_ascii_uppercase() } else { hex.clone() };
        let hash = ApiKeyHash::from_hex(&text).expect("64 hex digits");
        prop_assert_eq!(hash.as_bytes(), &bytes);
        prop_assert_eq!(hash.to_hex(), hex);
        prop_assert_eq!(ApiKeyHash::from_hex(&text[1..]), None);
    }

    /// Whatever the bytes, no entry point's invariant fails (the fuzz targets, in small).
    #[test]
    fn fuzz_entry_points_hold_on_any_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::authorization_header(&data);
        fuzzing::api_key_header(&data);
        fuzzing::account_id(&data);
        fuzzing::hold_id(&data);
        fuzzing::idempotency_key(&data);
        fuzzing::route_label(&data);
        fuzzing::route_matching(&data);
        fuzzing::grpc_status(&data);
        fuzzing::api_key_hash_hex(&data);
    }

    /// The same, on inputs shaped like each parser's grammar, which random bytes rarely hit.
    #[test]
    fn fuzz_entry_points_hold_on_near_valid_inputs(
        route in "(GET |POST |\\* )?(/([a-z]{1,3}|\\{[a-z]{0,3}\\}|:[a-z]{0,2}|\\*|\\{\\*[a-z]{0,2}\\}|)){1,5}",
        path in "(/([a-z]{0,3}|\\{[a-z]{0,3}\\})){1,6}",
        key in proptest::string::string_regex(&format!("(Bearer |bearer |Basic )?{TOKEN}{{0,20}}[ {{}}é]?"))
            .expect("regex"),
    ) {
        fuzzing::route_matching(format!("{route}\n{path}").as_bytes());
        fuzzing::route_matching(format!("{route}\n{path}\n{path}").as_bytes());
        fuzzing::authorization_header(key.as_bytes());
        fuzzing::api_key_header(key.as_bytes());
        fuzzing::account_id(key.as_bytes());
    }
}

/// What `Pricing::route` panics on at start-up, rather than failing requests later.
#[test]
fn invalid_patterns_are_refused_at_start_up() {
    for bad in [
        "GET v1/echo",
        "G\u{e9}T /x",
        "/a/*/b",
        "/a/{*rest}/b",
        "/a\tb",
        "/a\u{85}b",
        &format!("/{}", "a".repeat(256)),
    ] {
        let refused = std::panic::catch_unwind(|| Pricing::new().route(bad, 1)).is_err();
        assert!(refused, "{bad:?} accepted");
    }
    for good in [
        "/",
        "* /x",
        "/a/*",
        "/a/{*rest}",
        "/a/{id}/b",
        &format!("/{}", "a".repeat(255)),
    ] {
        let _ = Pricing::new().route(good, 1);
    }
}
