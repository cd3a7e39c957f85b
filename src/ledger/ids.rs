//! Validated identifiers: accounts, holds and top-up idempotency keys.
//!
//! Every identifier that reaches a ledger is checked here first, so that an account id can
//! never break out of its Redis hash tag (`{acct}`) and no id smuggles in control characters
//! that end up in logs or keys.

use std::fmt;
use std::sync::Arc;

use super::LedgerError;

/// Longest accepted account id, in bytes.
pub const MAX_ACCOUNT_ID_LEN: usize = 128;
/// Longest accepted hold id, in bytes.
pub const MAX_HOLD_ID_LEN: usize = 64;
/// Longest accepted top-up idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

fn is_account_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'+' | b'=')
}

fn is_hold_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
}

/// An account id: 1 to 128 bytes of ASCII letters, digits and `_ - . : @ + =`.
///
/// The allowed set leaves out `{`, `}`, whitespace, control characters and non-ASCII, so
/// the id is safe inside a Redis hash tag and in a log line. Cloning is cheap.
///
/// ```
/// use tower_credits::AccountId;
///
/// let id = AccountId::new("acct_42").unwrap();
/// assert_eq!(id.as_str(), "acct_42");
/// assert!(AccountId::new("acct}{x").is_err());
/// assert!(AccountId::new("").is_err());
/// ```
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct AccountId(Arc<str>);

/// As derived: the text's hash (consistent with `eq`, which is the text's equality).
impl std::hash::Hash for AccountId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

/// Equal by text, as derived, but a clone of the same id is equal without reading the
/// text: the ledger's map compares the caller's id with its own key on every call, and
/// among a million accounts that key's text is a cache miss.
impl PartialEq for AccountId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl AccountId {
    /// Validates and wraps an account id.
    pub fn new(id: impl AsRef<str>) -> Result<Self, LedgerError> {
        let id = id.as_ref();
        let reason = if id.is_empty() {
            Some("is empty")
        } else if id.len() > MAX_ACCOUNT_ID_LEN {
            Some("is longer than 128 bytes")
        } else if !id.bytes().all(is_account_char) {
            Some("may hold only ASCII letters, digits and `_ - . : @ + =`")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(LedgerError::InvalidAccountId { reason }),
            None => Ok(Self(Arc::from(id))),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({:?})", &*self.0)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for AccountId {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The id of one hold, made by the caller of [`reserve`](super::Ledger::reserve).
///
/// Because the caller makes it, a reserve whose reply was lost can still be refunded by id,
/// and a retried reserve with the same id returns the first answer instead of holding twice.
/// [`HoldId::generate`] makes a UUIDv7 (time-ordered, unique across replicas).
///
/// ```
/// use tower_credits::ledger::HoldId;
///
/// let a = HoldId::generate();
/// let b = HoldId::generate();
/// assert_ne!(a, b);
/// assert!(HoldId::new("h-1").is_ok());
/// assert!(HoldId::new("h 1").is_err());
/// ```
#[derive(Clone)]
pub struct HoldId(HoldRepr);

#[derive(Clone)]
enum HoldRepr {
    /// A generated UUIDv7 as 32 lowercase hex digits, inline: a billed request makes one,
    /// and this keeps it off the heap.
    Generated([u8; uuid::fmt::Simple::LENGTH]),
    /// A caller-chosen id.
    Chosen(Arc<str>),
}

// Equality, order and hash are those of the text, whichever way the id is stored. They
// work on the bytes: `as_str` would check UTF-8 on every map probe of a billed request.
impl PartialEq for HoldId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for HoldId {}

impl PartialOrd for HoldId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HoldId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for HoldId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, terminator included, so a `Borrow<str>` would stay consistent.
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl HoldId {
    /// Validates a caller-chosen id: 1 to 64 bytes of ASCII letters, digits, `_` and `-`.
    pub fn new(id: impl AsRef<str>) -> Result<Self, LedgerError> {
        let id = id.as_ref();
        if id.is_empty() || id.len() > MAX_HOLD_ID_LEN || !id.bytes().all(is_hold_char) {
            return Err(LedgerError::InvalidHoldId);
        }
        Ok(Self(HoldRepr::Chosen(Arc::from(id))))
    }

    /// A fresh UUIDv7 hold id.
    pub fn generate() -> Self {
        let mut digits = [0u8; uuid::fmt::Simple::LENGTH];
        uuid::Uuid::now_v7().simple().encode_lower(&mut digits);
        Self(HoldRepr::Generated(digits))
    }

    /// The id's text as bytes (no UTF-8 check, unlike [`Self::as_str`]).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            HoldRepr::Generated(digits) => digits.as_slice(),
            HoldRepr::Chosen(id) => id.as_bytes(),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            HoldRepr::Generated(digits) => {
                std::str::from_utf8(digits).expect("hex digits are ASCII")
            }
            HoldRepr::Chosen(id) => id,
        }
    }
}

impl fmt::Debug for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HoldId({:?})", self.as_str())
    }
}

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a top-up idempotency key: 1 to 255 bytes of printable ASCII (no spaces).
pub fn check_idempotency_key(key: &str) -> Result<(), LedgerError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(LedgerError::InvalidIdempotencyKey);
    }
    Ok(())
}

/// Checks a route label used for usage accounting: at most 256 bytes, no control characters.
pub fn check_route(route: &str) -> Result<(), LedgerError> {
    if route.len() > 256 || route.chars().any(char::is_control) {
        return Err(LedgerError::InvalidRoute);
    }
    Ok(())
}

/// Lets request constructors take `&AccountId` as well as an owned one.
impl From<&AccountId> for AccountId {
    fn from(account: &AccountId) -> Self {
        account.clone()
    }
}

/// Lets request constructors take `&HoldId` as well as an owned one.
impl From<&HoldId> for HoldId {
    fn from(hold: &HoldId) -> Self {
        hold.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_cannot_break_out_of_a_hash_tag() {
        for bad in [
            "acct}{x",
            "{a}",
            "a b",
            "a\nb",
            "é",
            "",
            &"x".repeat(129),
            "a\u{0}",
        ] {
            assert!(AccountId::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a",
            "acct_42",
            "user@example.com",
            "org:team-1",
            &"x".repeat(128),
        ] {
            assert!(AccountId::new(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn a_generated_hold_id_is_the_same_id_as_its_text() {
        use std::hash::BuildHasher;
        let generated = HoldId::generate();
        let chosen = HoldId::new(generated.as_str()).unwrap();
        assert_eq!(generated, chosen);
        assert_eq!(generated.cmp(&chosen), std::cmp::Ordering::Equal);
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(hasher.hash_one(&generated), hasher.hash_one(&chosen));
        assert_eq!(generated.as_str().len(), 32);
        assert_ne!(generated, HoldId::generate());
    }

    #[test]
    fn idempotency_keys_are_printable() {
        assert!(check_idempotency_key("pay_123").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("a b").is_err());
        assert!(check_idempotency_key(&"k".repeat(256)).is_err());
    }
}
