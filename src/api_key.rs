//! API keys, known to the crate only by their SHA-256.

use std::fmt;

use sha2::{Digest, Sha256};

/// The SHA-256 of an API key: the only form in which a key is stored, logged or compared.
///
/// `Debug` and `Display` print the hash (hex), never the key it came from.
///
/// ```
/// use tower_credits::ApiKeyHash;
///
/// let hash = ApiKeyHash::of("demo-rich");
/// assert_eq!(hash.to_hex().len(), 64);
/// assert!(!format!("{hash:?}").contains("demo-rich"));
/// assert_eq!(ApiKeyHash::from_hex(&hash.to_hex()), Some(hash));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    /// Hashes a raw API key.
    pub fn of(raw_key: &str) -> Self {
        Self(Sha256::digest(raw_key.as_bytes()).into())
    }

    /// Parses 64 lowercase or uppercase hex digits.
    pub fn from_hex(hex_digits: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut out).ok()?;
        Some(Self(out))
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyHash({})", self.to_hex())
    }
}

impl fmt::Display for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_known_sha256() {
        // sha256("abc")
        assert_eq!(
            ApiKeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(ApiKeyHash::from_hex("zz"), None);
    }
}
