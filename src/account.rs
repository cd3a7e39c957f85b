//! Who pays: resolving the caller's account from the request.
//!
//! | resolver | reads | when to use |
//! |---|---|---|
//! | [`AccountResolver::api_key`] | `Authorization: Bearer <key>` | callers hold API keys registered in the ledger |
//! | [`AccountResolver::api_key_header`] | a header of your choice, e.g. `Api-Key` | the same, another header |
//! | [`AccountResolver::extension`] | an [`AccountId`] in the request extensions | an upstream auth layer already knows the account |
//! | [`AccountResolver::trusted_header`] | a header naming the account | **only** behind a gateway that sets it |
//! | [`AccountResolver::from_fn`] | anything, through your closure | everything else |
//!
//! API keys are never kept as they are. A warm key is found in a bounded in-process cache
//! by its keyed 128-bit SipHash (the secret is drawn from the OS RNG per cache and never
//! leaves the process), so a warm request costs no ledger call and no SHA-256; a key the
//! cache does not know is hashed with SHA-256, the form the ledger stores, and looked up. Known keys
//! are cached for [`DEFAULT_KEY_TTL`] and unknown ones for [`DEFAULT_UNKNOWN_KEY_TTL`]:
//! **a revoked key keeps working for up to the known-key TTL** on each replica that cached it
//! (set a shorter [`key_ttl`](AccountResolver::key_ttl) if that is too long), and a newly
//! registered key may be refused for up to the unknown-key TTL.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderMap, HeaderName, Method, Uri};

use crate::api_key::ApiKeyHash;
use crate::ledger::AccountId;

/// Distinct API keys not in the cache looked up in the ledger at once (and as many again
/// for keys recently seen valid), unless
/// [`CreditLayer::max_concurrent_key_lookups`](crate::CreditLayer::max_concurrent_key_lookups)
/// says.
pub const DEFAULT_MAX_CONCURRENT_KEY_LOOKUPS: usize = 64;

/// Known API keys are cached this long (so revocation takes up to this long to apply).
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(60);
/// Unknown API keys are cached this long (so a new key works after at most this).
pub const DEFAULT_UNKNOWN_KEY_TTL: Duration = Duration::from_secs(5);
/// Most API keys the cache keeps.
pub const DEFAULT_KEY_CACHE_CAPACITY: usize = 10_000;
/// Longest API key accepted, in bytes; longer ones are refused without hashing.
pub const MAX_API_KEY_LEN: usize = 256;

/// What a resolver sees of a request: method, URI, headers and extensions.
#[derive(Debug)]
pub struct RequestView<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions.
    pub extensions: &'a http::Extensions,
}

/// Why no account could be resolved. Each becomes a `401` (gRPC `UNAUTHENTICATED`) whose
/// detail is [`Unauthorized::detail`]; none of them echoes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unauthorized {
    /// No credentials in the request.
    Missing,
    /// Credentials present but not in the expected form.
    Malformed(&'static str),
    /// The API key is longer than [`MAX_API_KEY_LEN`].
    Oversized,
    /// The API key is not registered.
    UnknownKey,
    /// A trusted header or closure named an account id that is not valid.
    InvalidAccount,
}

impl Unauthorized {
    /// A sentence for the caller saying what is wrong and how to fix it.
    pub fn detail(&self) -> String {
        match self {
            Self::Missing => "No API key: send `Authorization: Bearer <your API key>`.".into(),
            Self::Malformed(why) => format!("The API key header is malformed: {why}."),
            Self::Oversized => format!("The API key is longer than {MAX_API_KEY_LEN} bytes."),
            Self::UnknownKey => "This API key is not known. Check it, or create a new one.".into(),
            Self::InvalidAccount => "The request names an invalid account.".into(),
        }
    }
}

type ResolveFn = dyn Fn(&RequestView<'_>) -> Result<AccountId, Unauthorized> + Send + Sync;

/// How a [`CreditLayer`](crate::CreditLayer) finds the account that pays for a request.
///
/// ```
/// use tower_credits::account::AccountResolver;
///
/// // `Authorization: Bearer <key>`, keys registered with `Ledger::register_api_key`.
/// let resolver = AccountResolver::api_key();
/// // Or `Api-Key: <key>`:
/// let resolver = AccountResolver::api_key_header("api-key");
/// # let _ = resolver;
/// ```
#[derive(Clone)]
pub struct AccountResolver {
    pub(crate) kind: Kind,
}

#[derive(Clone)]
pub(crate) enum Kind {
    ApiKey {
        header: Option<HeaderName>,
        cache: Arc<KeyCache>,
    },
    TrustedHeader(HeaderName),
    Extension,
    Fn(Arc<ResolveFn>),
}

impl fmt::Debug for AccountResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::ApiKey { header, .. } => f
                .debug_struct("AccountResolver::ApiKey")
                .field(
                    "header",
                    &header
                        .as_ref()
                        .map(HeaderName::as_str)
                        .unwrap_or("authorization: bearer"),
                )
                .finish(),
            Kind::TrustedHeader(h) => f
                .debug_tuple("AccountResolver::TrustedHeader")
                .field(h)
                .finish(),
            Kind::Extension => f.write_str("AccountResolver::Extension"),
            Kind::Fn(_) => f.write_str("AccountResolver::Fn"),
        }
    }
}

impl Default for AccountResolver {
    fn default() -> Self {
        Self::api_key()
    }
}

/// The outcome of resolving synchronously: an account, a key to look up, or a refusal.
pub(crate) enum Resolution {
    Account(AccountId),
    LookUp(KeyToLookUp),
    Refused(Unauthorized),
}

/// An API key the cache does not know: its SHA-256, what the ledger is asked for, and
/// where in the cache the answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyToLookUp {
    pub(crate) hash: ApiKeyHash,
    pub(crate) cached_as: CachedAs,
}

/// An API key as the key cache indexes it: its SipHash-1-3 (128 bits) under the cache's
/// random secret. Cheap enough for every request, and a caller who does not know the
/// secret can neither find two keys that share an entry nor learn anything from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CachedAs(u128);

#[cfg(test)]
impl KeyToLookUp {
    /// `key` to look up, as a fresh cache would have it.
    pub(crate) fn of(key: &str) -> Self {
        Self {
            hash: ApiKeyHash::of(key),
            cached_as: KeyCache::new(1, DEFAULT_KEY_TTL, DEFAULT_UNKNOWN_KEY_TTL).digest(key),
        }
    }
}

impl AccountResolver {
    /// API keys from `Authorization: Bearer <key>` (the default).
    pub fn api_key() -> Self {
        Self::api_key_in(None)
    }

    /// API keys from the header `name` (the whole value is the key).
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header name.
    pub fn api_key_header(name: &str) -> Self {
        Self::api_key_in(Some(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
        ))
    }

    fn api_key_in(header: Option<HeaderName>) -> Self {
        Self {
            kind: Kind::ApiKey {
                header,
                cache: Arc::new(KeyCache::new(
                    DEFAULT_KEY_CACHE_CAPACITY,
                    DEFAULT_KEY_TTL,
                    DEFAULT_UNKNOWN_KEY_TTL,
                )),
            },
        }
    }

    /// How long known and unknown API keys are cached (defaults [`DEFAULT_KEY_TTL`],
    /// [`DEFAULT_UNKNOWN_KEY_TTL`]). The known-key TTL is the longest a revoked key keeps
    /// working. No effect on other resolvers.
    pub fn key_ttl(self, known: Duration, unknown: Duration) -> Self {
        self.with_cache(|c| KeyCache::new(c.capacity, known, unknown))
    }

    /// The most API keys cached (default [`DEFAULT_KEY_CACHE_CAPACITY`]).
    pub fn key_cache_capacity(self, capacity: usize) -> Self {
        self.with_cache(|c| KeyCache::new(capacity, c.known_ttl, c.unknown_ttl))
    }

    fn with_cache(mut self, f: impl FnOnce(&KeyCache) -> KeyCache) -> Self {
        if let Kind::ApiKey { cache, .. } = &mut self.kind {
            *cache = Arc::new(f(cache));
        }
        self
    }

    /// The [`AccountId`] an upstream auth layer put in the request extensions.
    pub fn extension() -> Self {
        Self {
            kind: Kind::Extension,
        }
    }

    /// The account named by the header `name`, taken as true.
    ///
    /// **Warning: only use this behind a gateway that sets this header itself and strips it
    /// from callers' requests.** Otherwise any caller can name any account and spend its
    /// credits. Never enable it on a service callers reach directly. A request that carries
    /// the header more than once is refused (`401`): behind a gateway that appends rather
    /// than replaces, one of the values is the caller's.
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header name.
    pub fn trusted_header(name: &str) -> Self {
        Self {
            kind: Kind::TrustedHeader(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            ),
        }
    }

    /// Your own closure.
    ///
    /// ```
    /// use tower_credits::account::{AccountResolver, Unauthorized};
    /// use tower_credits::AccountId;
    ///
    /// // Accounts by mTLS subject, say, put in the extensions by the TLS acceptor.
    /// #[derive(Clone)]
    /// struct Subject(String);
    ///
    /// let resolver = AccountResolver::from_fn(|req| {
    ///     let subject = req.extensions.get::<Subject>().ok_or(Unauthorized::Missing)?;
    ///     AccountId::new(&subject.0).map_err(|_| Unauthorized::InvalidAccount)
    /// });
    /// # let _ = resolver;
    /// ```
    pub fn from_fn(
        f: impl Fn(&RequestView<'_>) -> Result<AccountId, Unauthorized> + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind: Kind::Fn(Arc::new(f)),
        }
    }

    pub(crate) fn resolve(&self, req: &RequestView<'_>) -> Resolution {
        match &self.kind {
            Kind::ApiKey { header, cache } => {
                let key = match header {
                    None => bearer_bytes(req.headers),
                    Some(name) => header_key_bytes(req.headers, name),
                };
                match key {
                    Err(why) => Resolution::Refused(why),
                    Ok(key) => {
                        let cached_as = cache.digest(key);
                        match cache.get(&cached_as) {
                            Some(Some(account)) => Resolution::Account(account),
                            Some(None) => Resolution::Refused(Unauthorized::UnknownKey),
                            // Not cached: checked in full before anything is looked up.
                            None => match check_key(key) {
                                Err(why) => Resolution::Refused(why),
                                Ok(key) => Resolution::LookUp(KeyToLookUp {
                                    hash: ApiKeyHash::of(key),
                                    cached_as,
                                }),
                            },
                        }
                    }
                }
            }
            Kind::TrustedHeader(name) => {
                let mut values = req.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => Resolution::Refused(Unauthorized::Missing),
                    // Behind a gateway that appends, a second value is the caller's own:
                    // whichever is taken, the caller may have picked who pays.
                    (Some(_), Some(_)) => Resolution::Refused(Unauthorized::InvalidAccount),
                    (Some(value), None) => {
                        match value.to_str().ok().and_then(|v| AccountId::new(v).ok()) {
                            Some(account) => Resolution::Account(account),
                            None => Resolution::Refused(Unauthorized::InvalidAccount),
                        }
                    }
                }
            }
            Kind::Extension => match req.extensions.get::<AccountId>() {
                Some(account) => Resolution::Account(account.clone()),
                None => Resolution::Refused(Unauthorized::Missing),
            },
            Kind::Fn(f) => match f(req) {
                Ok(account) => Resolution::Account(account),
                Err(why) => Resolution::Refused(why),
            },
        }
    }

    /// Remembers a ledger lookup's answer.
    pub(crate) fn remember(&self, key: &KeyToLookUp, account: Option<AccountId>) {
        if let Kind::ApiKey { cache, .. } = &self.kind {
            cache.insert(key.cached_as, account);
        }
    }
}

/// Key digest → account, each entry with its own deadline. Unknown keys live in a cache
/// of their own, so a flood of made-up keys cannot evict the real ones.
pub(crate) struct KeyCache {
    known: quick_cache::sync::Cache<CachedAs, (AccountId, Instant)>,
    unknown: quick_cache::sync::Cache<CachedAs, Instant>,
    /// The SipHash key of [`CachedAs`]: random per cache, never written anywhere.
    secret: [u8; 16],
    capacity: usize,
    known_ttl: Duration,
    unknown_ttl: Duration,
}

impl KeyCache {
    fn new(capacity: usize, known_ttl: Duration, unknown_ttl: Duration) -> Self {
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret).expect("the OS random number generator");
        Self {
            known: quick_cache::sync::Cache::new(capacity.max(1)),
            unknown: quick_cache::sync::Cache::new(capacity.max(1)),
            secret,
            capacity,
            known_ttl,
            unknown_ttl,
        }
    }

    /// `key` as this cache indexes it.
    fn digest(&self, key: impl AsRef<[u8]>) -> CachedAs {
        use siphasher::sip128::Hasher128;
        let mut hasher = siphasher::sip128::SipHasher13::new_with_key(&self.secret);
        std::hash::Hasher::write(&mut hasher, key.as_ref());
        CachedAs(hasher.finish128().as_u128())
    }

    /// `Some(Some(account))` known, `Some(None)` known to be unknown, `None` not cached.
    fn get(&self, hash: &CachedAs) -> Option<Option<AccountId>> {
        let now = Instant::now();
        if let Some((account, deadline)) = self.known.get(hash) {
            if now < deadline {
                return Some(Some(account));
            }
            self.known.remove(hash);
        }
        if let Some(deadline) = self.unknown.get(hash) {
            if now < deadline {
                return Some(None);
            }
            self.unknown.remove(hash);
        }
        None
    }

    fn insert(&self, hash: CachedAs, account: Option<AccountId>) {
        match account {
            Some(account) if !self.known_ttl.is_zero() => {
                self.unknown.remove(&hash);
                self.known
                    .insert(hash, (account, Instant::now() + self.known_ttl));
            }
            None if !self.unknown_ttl.is_zero() => {
                self.unknown.insert(hash, Instant::now() + self.unknown_ttl);
            }
            _ => {}
        }
    }
}

/// RFC 6750 `b64token` characters.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

fn check_key(key: &[u8]) -> Result<&str, Unauthorized> {
    let key = sent_key(key)?;
    if !key.iter().all(|&b| is_token_char(b)) {
        return Err(Unauthorized::Malformed(
            "an API key may hold only letters, digits and `-._~+/=`",
        ));
    }
    Ok(std::str::from_utf8(key).expect("ASCII checked above"))
}

/// A key as sent, its length checked but not its characters. A warm key is found in the
/// cache by these bytes, and only a key the cache does not hold is checked in full
/// ([`check_key`]): every key the cache holds was checked before its lookup, and the cache
/// is keyed by a 128-bit keyed digest of the exact bytes, so a hit is that same key.
fn sent_key(key: &[u8]) -> Result<&[u8], Unauthorized> {
    if key.is_empty() {
        return Err(Unauthorized::Missing);
    }
    if key.len() > MAX_API_KEY_LEN {
        return Err(Unauthorized::Oversized);
    }
    Ok(key)
}

/// Reads `Authorization: Bearer <key>` (the admin API's; the layer's resolver reads the
/// bytes first, for its cache).
#[cfg_attr(
    not(any(feature = "admin", feature = "test-util", fuzzing)),
    allow(dead_code)
)]
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, Unauthorized> {
    check_key(bearer_bytes(headers)?)
}

/// `Bearer ` in any case, as one compare: each byte lower-cased by setting its `0x20` bit.
/// Only `B`/`b`, `E`/`e`, … become the letters of `bearer`, and only the space (or a NUL,
/// which no header value holds) becomes the space.
fn is_bearer(scheme: &[u8; 7]) -> bool {
    let mut eight = [0u8; 8];
    eight[..7].copy_from_slice(scheme);
    u64::from_le_bytes(eight) | 0x0020_2020_2020_2020 == u64::from_le_bytes(*b"bearer \0")
}

/// The key of `Authorization: Bearer <key>` as sent (see [`sent_key`]).
fn bearer_bytes(headers: &HeaderMap) -> Result<&[u8], Unauthorized> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Unauthorized::Missing)?;
    if values.next().is_some() {
        return Err(Unauthorized::Malformed(
            "more than one Authorization header",
        ));
    }
    let bytes = value.as_bytes();
    if bytes.len() > MAX_API_KEY_LEN + 7 {
        return Err(Unauthorized::Oversized);
    }
    match bytes.split_first_chunk::<7>() {
        Some((scheme, key)) if is_bearer(scheme) => sent_key(key),
        _ => Err(Unauthorized::Malformed(
            "expected `Authorization: Bearer <key>`",
        )),
    }
}

/// Reads the API key header `name` (the fuzz entry points'; the resolver reads the bytes
/// first, for its cache).
#[cfg_attr(not(any(feature = "test-util", fuzzing)), allow(dead_code))]
pub(crate) fn header_key<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<&'a str, Unauthorized> {
    check_key(header_key_bytes(headers, name)?)
}

/// The key of an API key header as sent (see [`sent_key`]).
fn header_key_bytes<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<&'a [u8], Unauthorized> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(Unauthorized::Missing)?;
    if values.next().is_some() {
        return Err(Unauthorized::Malformed("more than one API key header"));
    }
    sent_key(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth(v: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        h
    }

    #[test]
    fn the_bearer_scheme_is_matched_as_any_case_of_bearer_and_nothing_else() {
        // Every byte a header value can hold, at each of the seven places.
        for place in 0..7 {
            for byte in (1..=255u8).filter(|&b| b >= 32 && b != 127 || b == b'\t') {
                let mut scheme = *b"bearer ";
                scheme[place] = byte;
                assert_eq!(
                    is_bearer(&scheme),
                    scheme.eq_ignore_ascii_case(b"bearer "),
                    "{:?}",
                    String::from_utf8_lossy(&scheme)
                );
            }
        }
        assert!(is_bearer(b"BeArEr "));
    }

    #[test]
    fn bearer_shapes() {
        assert_eq!(bearer_token(&auth(b"Bearer demo-rich")), Ok("demo-rich"));
        assert_eq!(bearer_token(&auth(b"bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(&HeaderMap::new()), Err(Unauthorized::Missing));
        assert_eq!(bearer_token(&auth(b"Bearer ")), Err(Unauthorized::Missing));
        assert!(matches!(
            bearer_token(&auth(b"Basic abc")),
            Err(Unauthorized::Malformed(_))
        ));
        assert!(matches!(
            bearer_token(&auth(b"Bearer a b")),
            Err(Unauthorized::Malformed(_))
        ));
        assert!(matches!(
            bearer_token(&auth(b"Bearer \xffx")),
            Err(Unauthorized::Malformed(_))
        ));
        let long = [b"Bearer ".as_slice(), &[b'a'; 300]].concat();
        assert_eq!(bearer_token(&auth(&long)), Err(Unauthorized::Oversized));
        let mut two = auth(b"Bearer a");
        two.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(matches!(
            bearer_token(&two),
            Err(Unauthorized::Malformed(_))
        ));
    }

    #[test]
    fn unknown_keys_cannot_evict_known_ones() {
        let cache = KeyCache::new(16, Duration::from_secs(60), Duration::from_secs(60));
        let real = cache.digest("real");
        let acct = AccountId::new("a").unwrap();
        cache.insert(real, Some(acct.clone()));
        for i in 0..10_000 {
            cache.insert(cache.digest(format!("junk-{i}")), None);
        }
        assert_eq!(cache.get(&real), Some(Some(acct)));
    }

    /// The digest is keyed: the same key digests alike in one cache and apart in two (each
    /// with its own secret), and two keys never share an entry.
    #[test]
    fn the_cache_digest_is_keyed_per_cache() {
        let ttl = Duration::from_secs(60);
        let (one, other) = (KeyCache::new(4, ttl, ttl), KeyCache::new(4, ttl, ttl));
        assert_eq!(one.digest("key-a"), one.digest("key-a"));
        assert_ne!(one.digest("key-a"), one.digest("key-b"));
        assert_ne!(one.digest("key-a"), other.digest("key-a"));
        let acct = AccountId::new("a").unwrap();
        one.insert(one.digest("key-a"), Some(acct.clone()));
        assert_eq!(one.get(&one.digest("key-a")), Some(Some(acct)));
        assert_eq!(one.get(&one.digest("key-b")), None, "another key misses");
    }

    #[test]
    fn cache_expires_entries() {
        let cache = KeyCache::new(10, Duration::from_secs(60), Duration::ZERO);
        let hash = cache.digest("k");
        cache.insert(hash, None); // zero TTL: not cached at all
        assert_eq!(cache.get(&hash), None);
        let acct = AccountId::new("a").unwrap();
        cache.insert(hash, Some(acct.clone()));
        assert_eq!(cache.get(&hash), Some(Some(acct)));
    }
}
