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
#[derive(Clone)]
pub struct AccountId {
    text: Arc<str>,
    /// The text's hash, made once with a per-process random seed: a billed request hashes
    /// its account four times (two ledger calls, each a shard and a map), and the text is
    /// not read for any of them.
    hash: u64,
}

/// The hash made when the id is: the same text always gives the same value in a process,
/// and a caller cannot predict it (the seed is random), so maps keyed by ids stay as
/// resistant to chosen collisions as with the text itself.
impl std::hash::Hash for AccountId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash)
    }
}

/// Equal by text, but a clone of the same id is equal without reading the text, and ids of
/// different hashes without it either: the ledger's map compares the caller's id with its
/// own key on every call, and among a million accounts that key's text is a cache miss.
impl PartialEq for AccountId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.text, &other.text) || (self.hash == other.hash && self.text == other.text)
    }
}

impl Eq for AccountId {}

/// By text.
impl PartialOrd for AccountId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// By text.
impl Ord for AccountId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

/// The seeded hash of an account id's text.
fn text_hash(text: &str) -> u64 {
    static SEED: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    std::hash::BuildHasher::hash_one(SEED.get_or_init(Default::default), text)
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
            None => Ok(Self {
                text: Arc::from(id),
                hash: text_hash(id),
            }),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The id's text, shared: what a map that rarely needs the id back keeps of it (8
    /// bytes fewer than the id, which carries its hash).
    pub(crate) fn shared_text(&self) -> &Arc<str> {
        &self.text
    }

    /// The id of a text [`Self::shared_text`] gave (valid already).
    pub(crate) fn from_shared_text(text: Arc<str>) -> Self {
        let hash = text_hash(&text);
        Self { text, hash }
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({:?})", &*self.text)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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

/// The low 62 of the 74 random bits: the version and variant take the top of each part.
const LOW_BITS: u64 = (1 << 62) - 1;

/// A thread's first random bits, from the operating system (once per thread).
fn random_start() -> (u16, u64) {
    let mut seed = [0u8; 10];
    getrandom::fill(&mut seed).expect("the OS random number generator");
    let high = u16::from_be_bytes([seed[0], seed[1]]);
    let low = u64::from_be_bytes(seed[2..].try_into().expect("8 bytes")) & LOW_BITS;
    (high, low)
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

    /// A fresh UUIDv7 hold id (RFC 9562): the time in milliseconds, then 74 bits that are
    /// random for each thread's first id and count up from there ("monotonic random",
    /// RFC 9562 section 6.2, method 2).
    ///
    /// Ids of one thread never repeat (its count does not wrap in 2^62 ids), and ids of two
    /// threads or replicas meet only if their random starts fall within as many ids of each
    /// other in the same millisecond. A hold id is a name, not a secret: nothing accepts it
    /// from a caller as proof of anything.
    pub fn generate() -> Self {
        thread_local! {
            /// This thread's 12 fixed random bits and 62-bit count.
            static NEXT: std::cell::Cell<(u16, u64)> = std::cell::Cell::new(random_start());
        }
        let (high, low) = NEXT.with(|next| {
            let (high, low) = next.get();
            next.set((high, low.wrapping_add(1) & LOW_BITS));
            (high, low)
        });
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let mut bits = [0u8; 10];
        bits[..2].copy_from_slice(&high.to_be_bytes());
        bits[2..].copy_from_slice(&low.to_be_bytes());
        let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &bits).into_uuid();
        let mut digits = [0u8; uuid::fmt::Simple::LENGTH];
        uuid.simple().encode_lower(&mut digits);
        Self(HoldRepr::Generated(digits))
    }

    /// The 32 lowercase hex digits of a generated id; `None` for a chosen one (whatever
    /// its text).
    pub(crate) fn generated_digits(&self) -> Option<&[u8; 32]> {
        match &self.0 {
            HoldRepr::Generated(digits) => Some(digits),
            HoldRepr::Chosen(_) => None,
        }
    }

    /// The id's 32 digits if its text is 32 lowercase hex digits: every generated id, and
    /// a chosen one spelled the same way (which is then the same id).
    #[inline]
    pub(crate) fn hex_digits(&self) -> Option<&[u8; 32]> {
        if let Some(digits) = self.generated_digits() {
            return Some(digits);
        }
        let digits = <&[u8; 32]>::try_from(self.as_bytes()).ok()?;
        digits
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            .then_some(digits)
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

/// The number 32 lowercase hex digits spell (the first digit the most significant).
pub(crate) fn hex_value(digits: &[u8; 32]) -> u128 {
    let mut value = 0u128;
    for eight in digits.chunks_exact(8) {
        let w = u64::from_be_bytes(eight.try_into().expect("chunks of 8"));
        // Each digit to its nibble: '0'..='9' are 0x30..=0x39, 'a'..='f' 0x61..=0x66.
        let n = (w & 0x0f0f_0f0f_0f0f_0f0f) + 9 * ((w >> 6) & 0x0101_0101_0101_0101);
        // Eight nibbles, one a byte, packed to 32 bits: pairs, then quads, then all.
        let n = ((n >> 4) | n) & 0x00ff_00ff_00ff_00ff;
        let n = ((n >> 8) | n) & 0x0000_ffff_0000_ffff;
        let n = ((n >> 16) | n) & 0x0000_0000_ffff_ffff;
        value = (value << 32) | u128::from(n);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_its_text_however_its_id_was_made() {
        use std::collections::HashMap;
        let made = AccountId::new("acct_42").unwrap();
        let parsed: AccountId = "acct_42".parse().unwrap();
        assert!(!Arc::ptr_eq(&made.text, &parsed.text), "two separate ids");
        assert_eq!(made, parsed);
        assert_eq!(made.cmp(&parsed), std::cmp::Ordering::Equal);
        let mut balances = HashMap::new();
        balances.insert(made.clone(), 10);
        assert_eq!(balances.get(&parsed), Some(&10), "found by the other id");
        // Another text is another account, however close.
        for other in ["acct_43", "Acct_42", "acct_42x", "acct_4"] {
            let other = AccountId::new(other).unwrap();
            assert_ne!(made, other);
            assert_eq!(balances.get(&other), None);
        }
        assert!(AccountId::new("a").unwrap() < AccountId::new("b").unwrap());
    }

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

    /// Generated ids are UUIDv7 (version 7, RFC variant, the time now), distinct across
    /// threads, and within one thread each follows the last.
    #[test]
    fn generated_hold_ids_are_unique_time_ordered_uuidv7s() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let threads: Vec<Vec<HoldId>> = (0..4)
            .map(|_| std::thread::spawn(|| (0..10_000).map(|_| HoldId::generate()).collect()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let mut all = std::collections::HashSet::new();
        for ids in &threads {
            for pair in ids.windows(2) {
                assert!(pair[0] < pair[1], "{pair:?} out of order in one thread");
            }
            for id in ids {
                let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
                assert_eq!(uuid.get_version_num(), 7, "{id:?}");
                assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id:?}");
                let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
                let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
                assert!(millis >= before && millis < before + 60_000, "{id:?}");
                assert!(all.insert(id.clone()), "{id:?} made twice");
            }
        }
        assert_eq!(all.len(), 40_000);
    }

    #[test]
    fn idempotency_keys_are_printable() {
        assert!(check_idempotency_key("pay_123").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("a b").is_err());
        assert!(check_idempotency_key(&"k".repeat(256)).is_err());
    }
}
