//! Signatures of webhook deliveries, in the [Standard Webhooks] form.
//!
//! A webhook endpoint is a public URL: anyone who learns it can post a forged
//! `balance.low` event to it, and anyone who records one genuine delivery can post it
//! again later, as it is or with another id. A receiver must therefore check, before it
//! acts on a delivery, that it was sent by someone holding the shared secret and that it
//! is recent. Standard Webhooks signs the event's id, the attempt's timestamp and the body
//! together, so none of the three can be changed without breaking the signature.
//!
//! Every delivery carries three headers:
//!
//! | header | value |
//! |---|---|
//! | [`ID_HEADER`] `webhook-id` | the event's `id`, the same on every retry of that event: receivers deduplicate by it |
//! | [`TIMESTAMP_HEADER`] `webhook-timestamp` | when this attempt was sent, in Unix seconds |
//! | [`SIGNATURE_HEADER`] `webhook-signature` | `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, one per secret, space-separated |
//!
//! The secret is a [`WebhookSecret`], written `whsec_` followed by the base64 key (24 to 64
//! bytes). While a secret is rotated the sender signs with the new and the old one, and the
//! signature header carries both: a receiver holding either passes.
//!
//! [`sign`] and [`headers`] write them, [`verify`] checks them. Any Standard Webhooks
//! library checks them too: `standardwebhooks` in Python, JavaScript, Go, Rust, Ruby,
//! PHP, Java, C# or Elixir, given the same `whsec_` secret.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header that carries the event's id: the body's `id`, the same on every retry.
///
/// ```
/// use tower_credits::events::signature::ID_HEADER;
///
/// assert_eq!(ID_HEADER, "webhook-id");
/// ```
pub const ID_HEADER: &str = "webhook-id";

/// The header that carries when this attempt was sent, in Unix seconds.
///
/// ```
/// use tower_credits::events::signature::TIMESTAMP_HEADER;
///
/// assert_eq!(TIMESTAMP_HEADER, "webhook-timestamp");
/// ```
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";

/// The header that carries the signatures: `v1,<base64>` per secret, space-separated.
///
/// ```
/// use tower_credits::events::signature::SIGNATURE_HEADER;
///
/// assert_eq!(SIGNATURE_HEADER, "webhook-signature");
/// ```
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// What a serialised secret starts with: `whsec_`.
pub const SECRET_PREFIX: &str = "whsec_";

/// The shortest key a [`WebhookSecret`] takes, in bytes (192 bits), as the specification
/// says.
pub const MIN_KEY_LEN: usize = 24;

/// The longest key a [`WebhookSecret`] takes, in bytes (512 bits), as the specification
/// says.
pub const MAX_KEY_LEN: usize = 64;

/// How far a delivery's timestamp may be from the receiver's clock, either way, before
/// [`verify`] refuses it as stale: five minutes, as the reference libraries use.
///
/// ```
/// use std::time::Duration;
/// use tower_credits::events::signature::DEFAULT_TOLERANCE;
///
/// assert_eq!(DEFAULT_TOLERANCE, Duration::from_secs(300));
/// ```
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Standard base64, padded when written; read with or without its padding (the reference
/// libraries differ there).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A webhook signing secret: `whsec_` followed by the base64 of a 24 to 64 byte key, the
/// form the Standard Webhooks specification serialises it in.
///
/// Make one from 32 random bytes, for example with
/// `echo "whsec_$(openssl rand -base64 32)"`, and give the same string to the sender and
/// the receiver. `Debug` never shows it.
///
/// ```
/// use tower_credits::events::signature::{SecretError, WebhookSecret};
///
/// let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// assert_eq!(format!("{secret:?}"), "WebhookSecret(<redacted>)");
///
/// assert_eq!("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse::<WebhookSecret>().unwrap_err(),
///            SecretError::MissingPrefix);
/// assert_eq!("whsec_not base64!".parse::<WebhookSecret>().unwrap_err(),
///            SecretError::NotBase64);
/// assert_eq!("whsec_c2hvcnQ=".parse::<WebhookSecret>().unwrap_err(),
///            SecretError::KeyLength { len: 5 });
/// # Ok::<(), SecretError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Arc<[u8]>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Why a string is not a [`WebhookSecret`]. No variant holds any part of the secret.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretError {
    /// The string does not start with `whsec_`.
    #[error(
        "a webhook secret must be `whsec_` followed by the base64 key (the Standard Webhooks \
         form); this one does not start with `whsec_`: make one with \
         `echo \"whsec_$(openssl rand -base64 32)\"`"
    )]
    MissingPrefix,
    /// What follows `whsec_` is not standard base64.
    #[error(
        "a webhook secret must be `whsec_` followed by the base64 key; the part after \
         `whsec_` is not base64: make one with `echo \"whsec_$(openssl rand -base64 32)\"`"
    )]
    NotBase64,
    /// The key is shorter than [`MIN_KEY_LEN`] or longer than [`MAX_KEY_LEN`] bytes.
    #[error(
        "a webhook secret's key must be 24 to 64 bytes (Standard Webhooks); this one is {len} \
         bytes: make one with `echo \"whsec_$(openssl rand -base64 32)\"`"
    )]
    KeyLength {
        /// The key's length in bytes.
        len: usize,
    },
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(serialised: &str) -> Result<Self, SecretError> {
        let encoded = serialised
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        WebhookSecret::from_key(&key)
    }
}

impl WebhookSecret {
    /// A secret of the raw `key` (24 to 64 bytes), for keys kept as bytes rather than in
    /// the `whsec_` form.
    pub fn from_key(key: &[u8]) -> Result<WebhookSecret, SecretError> {
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
            return Err(SecretError::KeyLength { len: key.len() });
        }
        Ok(WebhookSecret { key: key.into() })
    }

    /// The MAC of `"<id>.<timestamp>.<body>"` under this key, ready to finalize or verify.
    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The [`SIGNATURE_HEADER`] value for the event `id` and `body`, sent at `unix_secs`: one
/// `v1,<base64 HMAC-SHA256(key, "<id>.<unix_secs>.<body>")>` per secret, in the order
/// given, space-separated.
///
/// This is the specification's own test vector (its reference libraries' tests):
///
/// ```
/// use tower_credits::events::signature::{sign, WebhookSecret};
///
/// let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// let body = br#"{"test": 2432232314}"#;
/// assert_eq!(
///     sign(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
///     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
/// );
/// # Ok::<(), tower_credits::events::signature::SecretError>(())
/// ```
pub fn sign(secrets: &[WebhookSecret], id: &str, unix_secs: u64, body: &[u8]) -> String {
    let timestamp = unix_secs.to_string();
    let mut header = String::new();
    for secret in secrets {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        BASE64.encode_string(
            secret.mac(id, &timestamp, body).finalize().into_bytes(),
            &mut header,
        );
    }
    header
}

/// The event id cannot be a `webhook-id`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("a webhook id must be visible ASCII characters other than `.`, and not empty")]
#[non_exhaustive]
pub struct InvalidId;

/// Whether `id` can be a `webhook-id`: not empty, visible ASCII, and no `.` (the
/// specification asks for none, so the signed `"<id>.<timestamp>.<body>"` splits one way
/// only).
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic() && b != b'.')
}

/// The three headers of a delivery of the event `id` with `body`, sent at `unix_secs` and
/// signed with every secret in `secrets`: [`ID_HEADER`], [`TIMESTAMP_HEADER`] and
/// [`SIGNATURE_HEADER`].
///
/// [`Webhook::send`](super::Webhook::send) sends these; a receiver's own tests can make
/// deliveries with it. Fails with [`InvalidId`] when `id` is empty, has a `.` or a
/// character other than visible ASCII.
///
/// ```
/// use tower_credits::events::signature::{headers, verify_at, WebhookSecret, DEFAULT_TOLERANCE};
///
/// let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// let body = br#"{"id":"evt_1","type":"balance.low"}"#;
/// let headers = headers(&[secret.clone()], "evt_1", 1_700_000_000, body)?;
/// assert_eq!(headers["webhook-id"], "evt_1");
/// assert_eq!(headers["webhook-timestamp"], "1700000000");
/// assert!(verify_at(&secret, &headers, body, DEFAULT_TOLERANCE, 1_700_000_010).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn headers(
    secrets: &[WebhookSecret],
    id: &str,
    unix_secs: u64,
    body: &[u8],
) -> Result<HeaderMap, InvalidId> {
    if !valid_id(id) {
        return Err(InvalidId);
    }
    let id_value = HeaderValue::from_str(id).map_err(|_| InvalidId)?;
    let mut map = HeaderMap::with_capacity(3);
    map.insert(ID_HEADER, id_value);
    map.insert(TIMESTAMP_HEADER, HeaderValue::from(unix_secs));
    map.insert(
        SIGNATURE_HEADER,
        HeaderValue::try_from(sign(secrets, id, unix_secs, body))
            .expect("`v1,` and base64 are valid header characters"),
    );
    Ok(map)
}

/// Why [`verify`] refused a delivery.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// A header the check needs is missing: [`ID_HEADER`], [`TIMESTAMP_HEADER`] or
    /// [`SIGNATURE_HEADER`] (its name here).
    #[error("missing `{0}` header")]
    MissingHeader(&'static str),
    /// A header is there more than once, or its value is not what it should be: an id that
    /// is empty, not visible ASCII or has a `.`, a timestamp that is not whole seconds, a
    /// signature header that is not text. Holds the header's name.
    #[error("invalid `{0}` header")]
    InvalidHeader(&'static str),
    /// The signature header has no `v1,` signature (entries of other versions, such as
    /// the asymmetric `v1a,`, are skipped).
    #[error("the `webhook-signature` header has no `v1,` signature")]
    NoSignature,
    /// No `v1,` signature matches the id, timestamp and body with this secret: a wrong
    /// secret, or a changed body, id or timestamp.
    #[error("no signature matches the id, timestamp and body with this secret")]
    Mismatch,
    /// The signature is genuine but its timestamp is further from now than the
    /// tolerance, in the past (a replay) or in the future.
    #[error("the delivery's timestamp is {age_secs} s away from now, outside the tolerance")]
    Stale {
        /// How many seconds the timestamp is from now, either way.
        age_secs: u64,
    },
}

/// Checks a delivery's headers against its raw `body` and `secret`, with the system clock
/// as now and [`DEFAULT_TOLERANCE`]: see [`verify_at`].
///
/// Verify the body's bytes as they arrived, before parsing them: JSON parsed and written
/// again need not be the same bytes. Then deduplicate by the `webhook-id` header (the
/// event's `id`): a delivery is retried until it is answered 2xx, so an event may arrive
/// more than once.
///
/// ```
/// use std::time::{SystemTime, UNIX_EPOCH};
/// use tower_credits::events::signature::{headers, verify, VerifyError, WebhookSecret};
///
/// let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// let body = br#"{"id":"evt_1","type":"balance.low"}"#;
/// let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
/// let request_headers = headers(&[secret.clone()], "evt_1", now, body)?;
///
/// assert_eq!(verify(&secret, &request_headers, body), Ok(()));
/// assert_eq!(verify(&secret, &request_headers, b"{}"), Err(VerifyError::Mismatch));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify(secret: &WebhookSecret, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
    // A clock before 1970 is broken; as 0 every recent delivery is then stale, so it
    // fails closed.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    verify_at(secret, headers, body, DEFAULT_TOLERANCE, now)
}

/// Checks a delivery's headers against its raw `body` and `secret`, with `now_unix_secs`
/// as now and timestamps up to `tolerance` away from it (either way) accepted.
///
/// It passes when any `v1,` signature in [`SIGNATURE_HEADER`] is the HMAC-SHA256 of
/// `"<webhook-id>.<webhook-timestamp>.<body>"` under the secret (compared in constant
/// time; entries of other versions are skipped) and the timestamp is within the
/// tolerance. The signature is checked first, so [`VerifyError::Stale`] means a genuine
/// but old (or future) delivery: a replay.
///
/// ```
/// use std::time::Duration;
/// use tower_credits::events::signature::{headers, verify_at, VerifyError, WebhookSecret};
///
/// let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// let body = b"{}";
/// let sent = headers(&[secret.clone()], "evt_1", 1_000, body)?;
/// let tolerance = Duration::from_secs(300);
///
/// assert_eq!(verify_at(&secret, &sent, body, tolerance, 1_200), Ok(()));
/// assert_eq!(
///     verify_at(&secret, &sent, body, tolerance, 2_000),
///     Err(VerifyError::Stale { age_secs: 1_000 }),
/// );
///
/// // A replay under another id: the id is signed too.
/// let mut replayed = sent.clone();
/// replayed.insert("webhook-id", "evt_2".parse()?);
/// assert_eq!(verify_at(&secret, &replayed, body, tolerance, 1_200), Err(VerifyError::Mismatch));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify_at(
    secret: &WebhookSecret,
    headers: &HeaderMap,
    body: &[u8],
    tolerance: Duration,
    now_unix_secs: u64,
) -> Result<(), VerifyError> {
    let id = header(headers, ID_HEADER)?;
    if !valid_id(id) {
        return Err(VerifyError::InvalidHeader(ID_HEADER));
    }
    let timestamp = header(headers, TIMESTAMP_HEADER)?;
    // Digits only: `u64::from_str` would also take a leading `+`, which the sender never
    // writes.
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::InvalidHeader(TIMESTAMP_HEADER));
    }
    let sent_at: u64 = timestamp
        .parse()
        .map_err(|_| VerifyError::InvalidHeader(TIMESTAMP_HEADER))?;
    let signatures: Vec<&str> = header(headers, SIGNATURE_HEADER)?
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .map(|(_, signature)| signature)
        .collect();
    if signatures.is_empty() {
        return Err(VerifyError::NoSignature);
    }

    let expected = secret.mac(id, timestamp, body);
    let matched = signatures.iter().any(|signature| {
        BASE64.decode(signature).is_ok_and(|tag| {
            // `verify_slice` compares in constant time.
            expected.clone().verify_slice(&tag).is_ok()
        })
    });
    if !matched {
        return Err(VerifyError::Mismatch);
    }

    let age_secs = now_unix_secs.abs_diff(sent_at);
    if age_secs > tolerance.as_secs() {
        return Err(VerifyError::Stale { age_secs });
    }
    Ok(())
}

/// The one value of the header `name`, as text.
fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(VerifyError::MissingHeader(name))?;
    if values.next().is_some() {
        return Err(VerifyError::InvalidHeader(name));
    }
    value.to_str().map_err(|_| VerifyError::InvalidHeader(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","type":"balance.low"}"#;
    const T: u64 = 1_700_000_000;

    fn secret(byte: u8) -> WebhookSecret {
        WebhookSecret::from_key(&[byte; 32]).unwrap()
    }

    fn delivery(secrets: &[WebhookSecret], id: &str, at: u64) -> HeaderMap {
        headers(secrets, id, at, BODY).unwrap()
    }

    fn check(headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), VerifyError> {
        verify_at(&secret(1), headers, body, DEFAULT_TOLERANCE, now)
    }

    fn with(mut headers: HeaderMap, name: &'static str, value: &str) -> HeaderMap {
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn round_trip() {
        let sent = delivery(&[secret(1)], "evt_1", T);
        assert_eq!(check(&sent, BODY, T), Ok(()));
        assert_eq!(check(&sent, BODY, T + 300), Ok(()));
        assert_eq!(check(&sent, BODY, T - 300), Ok(()));
    }

    #[test]
    fn round_trip_with_the_system_clock() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sent = delivery(&[secret(1)], "evt_1", now);
        assert_eq!(verify(&secret(1), &sent, BODY), Ok(()));
    }

    #[test]
    fn signs_id_timestamp_and_body() {
        let expected = {
            let mut mac = HmacSha256::new_from_slice(&[1; 32]).unwrap();
            mac.update(b"evt_1.1700000000.");
            mac.update(BODY);
            BASE64.encode(mac.finalize().into_bytes())
        };
        assert_eq!(
            sign(&[secret(1)], "evt_1", T, BODY),
            format!("v1,{expected}")
        );
    }

    #[test]
    fn several_secrets_give_space_separated_signatures() {
        let both = sign(&[secret(1), secret(2)], "evt_1", T, BODY);
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&[secret(1)], "evt_1", T, BODY));
        assert_eq!(parts[1], sign(&[secret(2)], "evt_1", T, BODY));
        let sent = delivery(&[secret(1), secret(2)], "evt_1", T);
        for key in [1, 2] {
            assert_eq!(
                verify_at(&secret(key), &sent, BODY, DEFAULT_TOLERANCE, T),
                Ok(())
            );
        }
        assert_eq!(
            verify_at(&secret(3), &sent, BODY, DEFAULT_TOLERANCE, T),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn wrong_secret_is_a_mismatch() {
        let sent = delivery(&[secret(2)], "evt_1", T);
        assert_eq!(check(&sent, BODY, T), Err(VerifyError::Mismatch));
    }

    #[test]
    fn altered_body_is_a_mismatch() {
        let sent = delivery(&[secret(1)], "evt_1", T);
        let altered = br#"{"id":"evt_1","type":"balance.depleted"}"#;
        assert_eq!(check(&sent, altered, T), Err(VerifyError::Mismatch));
    }

    #[test]
    fn changed_id_is_a_mismatch() {
        let sent = delivery(&[secret(1)], "evt_1", T);
        let replayed = with(sent, ID_HEADER, "evt_2");
        assert_eq!(check(&replayed, BODY, T), Err(VerifyError::Mismatch));
    }

    #[test]
    fn moved_timestamp_is_a_mismatch() {
        let sent = delivery(&[secret(1)], "evt_1", T);
        let moved = with(sent, TIMESTAMP_HEADER, &(T + 1).to_string());
        assert_eq!(check(&moved, BODY, T), Err(VerifyError::Mismatch));
    }

    #[test]
    fn stale_and_future_deliveries_are_refused() {
        let sent = delivery(&[secret(1)], "evt_1", T);
        assert_eq!(
            check(&sent, BODY, T + 301),
            Err(VerifyError::Stale { age_secs: 301 })
        );
        assert_eq!(
            check(&sent, BODY, T - 301),
            Err(VerifyError::Stale { age_secs: 301 })
        );
        assert_eq!(
            verify_at(&secret(1), &sent, BODY, Duration::from_secs(10), T + 11),
            Err(VerifyError::Stale { age_secs: 11 })
        );
    }

    #[test]
    fn forged_and_stale_is_a_mismatch_not_stale() {
        let sent = delivery(&[secret(2)], "evt_1", T);
        assert_eq!(check(&sent, BODY, T + 10_000), Err(VerifyError::Mismatch));
    }

    #[test]
    fn other_versions_and_junk_entries_are_skipped() {
        let good = sign(&[secret(1)], "evt_1", T, BODY);
        let value = format!("v1a,AAAA v2,{} junk v1,!!! {good} v1,", &good[3..]);
        let sent = with(delivery(&[secret(1)], "evt_1", T), SIGNATURE_HEADER, &value);
        assert_eq!(check(&sent, BODY, T), Ok(()));
    }

    #[test]
    fn no_v1_entry_is_no_signature() {
        let good = sign(&[secret(1)], "evt_1", T, BODY);
        for value in [
            format!("v1a,{}", &good[3..]),
            "junk".to_owned(),
            String::new(),
        ] {
            let sent = with(delivery(&[secret(1)], "evt_1", T), SIGNATURE_HEADER, &value);
            assert_eq!(
                check(&sent, BODY, T),
                Err(VerifyError::NoSignature),
                "{value:?}"
            );
        }
    }

    #[test]
    fn partial_signatures_are_mismatches() {
        let good = sign(&[secret(1)], "evt_1", T, BODY);
        for value in [
            "v1,".to_owned(),
            good[..8].to_owned(),
            good[..good.len() - 2].to_owned(),
        ] {
            let sent = with(delivery(&[secret(1)], "evt_1", T), SIGNATURE_HEADER, &value);
            assert_eq!(
                check(&sent, BODY, T),
                Err(VerifyError::Mismatch),
                "{value:?}"
            );
        }
    }

    #[test]
    fn missing_headers_are_named() {
        for name in [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER] {
            let mut sent = delivery(&[secret(1)], "evt_1", T);
            sent.remove(name);
            assert_eq!(check(&sent, BODY, T), Err(VerifyError::MissingHeader(name)));
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        for (name, value) in [
            (TIMESTAMP_HEADER, "abc"),
            (TIMESTAMP_HEADER, ""),
            (TIMESTAMP_HEADER, "+1700000000"),
            (TIMESTAMP_HEADER, "-1"),
            (TIMESTAMP_HEADER, "1700000000.5"),
            (TIMESTAMP_HEADER, "99999999999999999999999"),
            (ID_HEADER, ""),
            (ID_HEADER, "evt.1"),
            (ID_HEADER, "evt 1"),
        ] {
            let sent = with(delivery(&[secret(1)], "evt_1", T), name, value);
            assert_eq!(
                check(&sent, BODY, T),
                Err(VerifyError::InvalidHeader(name)),
                "{name}: {value:?}"
            );
        }
        let mut twice = delivery(&[secret(1)], "evt_1", T);
        twice.append(ID_HEADER, HeaderValue::from_static("evt_2"));
        assert_eq!(
            check(&twice, BODY, T),
            Err(VerifyError::InvalidHeader(ID_HEADER))
        );
    }

    #[test]
    fn ids_that_cannot_be_signed_are_refused() {
        for id in ["", "evt.1", "evt 1", "evt\n1", "évt"] {
            assert_eq!(headers(&[secret(1)], id, T, BODY), Err(InvalidId), "{id:?}");
        }
    }

    #[test]
    fn secrets_parse_only_in_the_whsec_form() {
        let key = BASE64.encode([7u8; 32]);
        let parsed: WebhookSecret = format!("whsec_{key}").parse().unwrap();
        assert_eq!(parsed, WebhookSecret::from_key(&[7; 32]).unwrap());
        // Padding may be left out, and surrounding whitespace (a trailing newline from a
        // file or an environment variable) is ignored.
        let unpadded = key.trim_end_matches('=');
        assert_ne!(unpadded, key);
        assert_eq!(format!("whsec_{unpadded}").parse(), Ok(parsed.clone()));
        assert_eq!(format!(" whsec_{key}\n").parse(), Ok(parsed));

        assert_eq!(
            key.parse::<WebhookSecret>(),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!("".parse::<WebhookSecret>(), Err(SecretError::MissingPrefix));
        assert_eq!(
            "whsk_abc".parse::<WebhookSecret>(),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(
            "whsec_".parse::<WebhookSecret>(),
            Err(SecretError::KeyLength { len: 0 })
        );
        assert_eq!(
            "whsec_quick start!".parse::<WebhookSecret>(),
            Err(SecretError::NotBase64)
        );
        // The old quickstart's secret: not a key of the right form.
        assert!("whsec_quickstart".parse::<WebhookSecret>().is_err());
        assert_eq!(
            format!("whsec_{}", BASE64.encode([0u8; 23])).parse::<WebhookSecret>(),
            Err(SecretError::KeyLength { len: 23 })
        );
        assert_eq!(
            format!("whsec_{}", BASE64.encode([0u8; 65])).parse::<WebhookSecret>(),
            Err(SecretError::KeyLength { len: 65 })
        );
        assert!(format!("whsec_{}", BASE64.encode([0u8; 24]))
            .parse::<WebhookSecret>()
            .is_ok());
        assert!(format!("whsec_{}", BASE64.encode([0u8; 64]))
            .parse::<WebhookSecret>()
            .is_ok());
    }

    #[test]
    fn errors_read_clearly_and_hide_the_secret() {
        assert_eq!(
            VerifyError::Stale { age_secs: 301 }.to_string(),
            "the delivery's timestamp is 301 s away from now, outside the tolerance"
        );
        assert_eq!(
            VerifyError::MissingHeader(ID_HEADER).to_string(),
            "missing `webhook-id` header"
        );
        let err = "s3cr3t-value".parse::<WebhookSecret>().unwrap_err();
        assert!(err.to_string().contains("whsec_"), "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(SecretError::KeyLength { len: 5 }
            .to_string()
            .contains("5 bytes"));
        assert!(!format!("{:?}", secret(1)).contains('1'));
    }
}
