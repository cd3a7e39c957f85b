//! Signatures of webhook deliveries.
//!
//! A webhook endpoint is a public URL: anyone who learns it can post a forged
//! `balance.low` event to it, and anyone who records one genuine delivery can post it
//! again later. A receiver must therefore check two things before it acts on a delivery:
//! that it was sent by someone holding the shared secret (the HMAC), and that it is
//! recent (the timestamp, which the HMAC covers, so it cannot be moved). Within the
//! tolerance window a receiver still sees retries of the same event, which it
//! deduplicates by the event's `id`.
//!
//! Every delivery carries a [`SIGNATURE_HEADER`] whose value is
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>`. [`sign`] writes it,
//! [`verify_signature`] checks it. A header may carry several `v1=` entries, one per
//! secret, while a secret is being rotated: any one that matches is enough. Entries of
//! other schemes (`v0=`, ...) are ignored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The name of the HTTP header that carries a delivery's signature.
///
/// Its value is `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>`.
///
/// ```
/// use tower_credits::events::signature::SIGNATURE_HEADER;
///
/// assert_eq!(SIGNATURE_HEADER, "credits-signature");
/// ```
pub const SIGNATURE_HEADER: &str = "credits-signature";

/// How far a signature's timestamp may be from the receiver's clock, either way, before
/// [`verify_signature`] refuses it as stale: five minutes.
///
/// ```
/// use std::time::Duration;
/// use tower_credits::events::signature::DEFAULT_TOLERANCE;
///
/// assert_eq!(DEFAULT_TOLERANCE, Duration::from_secs(300));
/// ```
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why [`verify_signature`] refused a delivery.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header has no `t=` timestamp, its timestamp is not a number, it has several,
    /// or a `v1=` value is not hexadecimal.
    #[error("malformed signature header: expected `t=<unix seconds>,v1=<hex>`")]
    Malformed,
    /// The header has a timestamp but no `v1=` signature.
    #[error("signature header has no `v1=` signature")]
    NoSignature,
    /// The signature is genuine but its timestamp is further from now than the
    /// tolerance, in the past (a replay) or in the future.
    #[error("signature timestamp is {age_secs} s away from now, outside the tolerance")]
    Stale {
        /// How many seconds the timestamp is from now, either way.
        age_secs: u64,
    },
    /// No `v1=` signature matches the body with this secret.
    #[error("no signature matches the body with this secret")]
    Mismatch,
}

/// The MAC of `t + "." + body` under `secret`, ready to finalize or verify.
fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The [`SIGNATURE_HEADER`] value for `body`, signed with `secret` at `unix_secs`:
/// `t=<unix_secs>,v1=<hex HMAC-SHA256(secret, "<unix_secs>." + body)>`.
///
/// ```
/// use tower_credits::events::signature::sign;
///
/// let header = sign(b"whsec_test", 1_700_000_000, br#"{"id":"evt_1"}"#);
/// assert!(header.starts_with("t=1700000000,v1="));
/// assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
/// ```
pub fn sign(secret: &[u8], unix_secs: u64, body: &[u8]) -> String {
    let timestamp = unix_secs.to_string();
    let tag = mac(secret, &timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Checks a [`SIGNATURE_HEADER`] value against `body` and `secret`, with the system clock
/// as now: see [`verify_signature_at`].
///
/// ```
/// use std::time::{SystemTime, UNIX_EPOCH};
/// use tower_credits::events::signature::{sign, verify_signature, DEFAULT_TOLERANCE};
///
/// let body = br#"{"id":"evt_1","type":"balance.low"}"#;
/// let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
/// let header = sign(b"whsec_test", now, body);
///
/// assert_eq!(verify_signature(b"whsec_test", &header, body, DEFAULT_TOLERANCE), Ok(()));
/// assert!(verify_signature(b"another secret", &header, body, DEFAULT_TOLERANCE).is_err());
/// ```
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), SignatureError> {
    // A clock before 1970 is broken; as 0 every recent signature is then stale, so it
    // fails closed.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    verify_signature_at(secret, header, body, tolerance, now)
}

/// Checks a [`SIGNATURE_HEADER`] value against `body` and `secret`, with
/// `now_unix_secs` as now.
///
/// The header must have exactly one `t=` timestamp and at least one `v1=` signature;
/// entries with other keys are ignored. It passes when any `v1=` value is the HMAC of
/// `t + "." + body` under `secret` (compared in constant time) and the timestamp is
/// within `tolerance` of now, either way. The signature is checked first, so
/// [`SignatureError::Stale`] means a genuine but old (or future) delivery: a replay.
///
/// ```
/// use std::time::Duration;
/// use tower_credits::events::signature::{sign, verify_signature_at, SignatureError};
///
/// let body = b"{}";
/// let header = sign(b"secret", 1_000, body);
/// let tolerance = Duration::from_secs(300);
///
/// assert_eq!(verify_signature_at(b"secret", &header, body, tolerance, 1_200), Ok(()));
/// assert_eq!(
///     verify_signature_at(b"secret", &header, body, tolerance, 2_000),
///     Err(SignatureError::Stale { age_secs: 1_000 }),
/// );
/// assert_eq!(
///     verify_signature_at(b"secret", &header, b"{ }", tolerance, 1_200),
///     Err(SignatureError::Mismatch),
/// );
/// ```
pub fn verify_signature_at(
    secret: &[u8],
    header: &str,
    body: &[u8],
    tolerance: Duration,
    now_unix_secs: u64,
) -> Result<(), SignatureError> {
    let mut timestamp: Option<(&str, u64)> = None;
    let mut signatures = Vec::new();
    for entry in header.split(',') {
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" => {
                let raw = value.trim();
                // Digits only: `u64::from_str` would also take a leading `+`.
                if timestamp.is_some() || raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(SignatureError::Malformed);
                }
                let secs = raw.parse().map_err(|_| SignatureError::Malformed)?;
                timestamp = Some((raw, secs));
            }
            "v1" => signatures.push(value.trim()),
            _ => {}
        }
    }
    let (raw_timestamp, secs) = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }

    let expected = mac(secret, raw_timestamp, body);
    let mut undecodable = false;
    let mut matched = false;
    for signature in signatures {
        match hex::decode(signature) {
            // `verify_slice` compares in constant time.
            Ok(tag) => matched |= expected.clone().verify_slice(&tag).is_ok(),
            Err(_) => undecodable = true,
        }
    }
    if !matched {
        return Err(if undecodable {
            SignatureError::Malformed
        } else {
            SignatureError::Mismatch
        });
    }

    let age_secs = now_unix_secs.abs_diff(secs);
    if age_secs > tolerance.as_secs() {
        return Err(SignatureError::Stale { age_secs });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_unit";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"balance.low"}"#;
    const T: u64 = 1_700_000_000;

    fn check(header: &str, body: &[u8], now: u64) -> Result<(), SignatureError> {
        verify_signature_at(SECRET, header, body, DEFAULT_TOLERANCE, now)
    }

    /// The `v1=` hex of a header written by [`sign`].
    fn v1(header: &str) -> &str {
        header.split_once(",v1=").unwrap().1
    }

    #[test]
    fn round_trip() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(check(&header, BODY, T), Ok(()));
        assert_eq!(check(&header, BODY, T + 300), Ok(()));
        assert_eq!(check(&header, BODY, T - 300), Ok(()));
    }

    #[test]
    fn round_trip_with_the_system_clock() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = sign(SECRET, now, BODY);
        assert_eq!(
            verify_signature(SECRET, &header, BODY, DEFAULT_TOLERANCE),
            Ok(())
        );
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256("key", "1." + "body"), computed independently.
        let header = sign(b"key", 1, b"body");
        let expected = {
            let mut mac = HmacSha256::new_from_slice(b"key").unwrap();
            mac.update(b"1.body");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(header, format!("t=1,v1={expected}"));
    }

    #[test]
    fn wrong_secret_is_a_mismatch() {
        let header = sign(b"another secret", T, BODY);
        assert_eq!(check(&header, BODY, T), Err(SignatureError::Mismatch));
    }

    #[test]
    fn altered_body_is_a_mismatch() {
        let header = sign(SECRET, T, BODY);
        let altered = br#"{"id":"evt_2","type":"balance.low"}"#;
        assert_eq!(check(&header, altered, T), Err(SignatureError::Mismatch));
    }

    #[test]
    fn moved_timestamp_is_a_mismatch() {
        let header = sign(SECRET, T, BODY);
        let moved = format!("t={},v1={}", T + 1, v1(&header));
        assert_eq!(check(&moved, BODY, T), Err(SignatureError::Mismatch));
    }

    #[test]
    fn stale_signature_is_refused() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(
            check(&header, BODY, T + 301),
            Err(SignatureError::Stale { age_secs: 301 })
        );
        assert_eq!(
            verify_signature_at(SECRET, &header, BODY, Duration::from_secs(10), T + 11),
            Err(SignatureError::Stale { age_secs: 11 })
        );
    }

    #[test]
    fn future_signature_is_refused() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(
            check(&header, BODY, T - 301),
            Err(SignatureError::Stale { age_secs: 301 })
        );
    }

    #[test]
    fn forged_and_stale_is_a_mismatch_not_stale() {
        let header = sign(b"forger", T, BODY);
        assert_eq!(
            check(&header, BODY, T + 10_000),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_of_several_v1_values_passes() {
        let good = sign(SECRET, T, BODY);
        let old = sign(b"old secret", T, BODY);
        let both = format!("t={T},v1={},v1={}", v1(&old), v1(&good));
        assert_eq!(check(&both, BODY, T), Ok(()));
        let reversed = format!("t={T},v1={},v1={}", v1(&good), v1(&old));
        assert_eq!(check(&reversed, BODY, T), Ok(()));
        let none = format!("t={T},v1={},v1={}", v1(&old), v1(&old));
        assert_eq!(check(&none, BODY, T), Err(SignatureError::Mismatch));
    }

    #[test]
    fn unknown_keys_and_spaces_are_ignored() {
        let good = sign(SECRET, T, BODY);
        let header = format!("v0=deadbeef, t={T}, x=1, v1={}, junk", v1(&good));
        assert_eq!(check(&header, BODY, T), Ok(()));
    }

    #[test]
    fn v0_alone_is_no_signature() {
        let header = format!("t={T},v0=deadbeef");
        assert_eq!(check(&header, BODY, T), Err(SignatureError::NoSignature));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = sign(SECRET, T, BODY);
        let hex = v1(&good);
        for header in [
            String::new(),
            "t=abc,v1=00".to_owned(),
            format!("t=,v1={hex}"),
            format!("t=+{T},v1={hex}"),
            format!("t=-1,v1={hex}"),
            format!("t=99999999999999999999999,v1={hex}"),
            format!("v1={hex}"),
            format!("t={T},t={T},v1={hex}"),
            format!("t={T},v1=not-hex"),
            format!("t={T},v1=abc"),
        ] {
            assert_eq!(
                check(&header, BODY, T),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
        assert_eq!(
            check(&format!("t={T}"), BODY, T),
            Err(SignatureError::NoSignature)
        );
        assert_eq!(
            check(&format!("t={T},v1="), BODY, T),
            Err(SignatureError::Mismatch),
            "an empty v1 decodes to no bytes and matches nothing"
        );
    }

    #[test]
    fn a_good_v1_beside_a_non_hex_one_passes() {
        let good = sign(SECRET, T, BODY);
        let header = format!("t={T},v1=zz,v1={}", v1(&good));
        assert_eq!(check(&header, BODY, T), Ok(()));
    }

    #[test]
    fn errors_read_clearly() {
        assert_eq!(
            SignatureError::Stale { age_secs: 301 }.to_string(),
            "signature timestamp is 301 s away from now, outside the tolerance"
        );
        assert!(SignatureError::Mismatch.to_string().contains("secret"));
    }
}
