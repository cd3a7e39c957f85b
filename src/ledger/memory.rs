//! The embedded ledger: balances in process memory, no server needed.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::{ready, Ready};
use std::hash::BuildHasher;
use std::sync::{Arc, Weak};
use std::time::Duration;

use foldhash::fast::RandomState;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use super::audit::{check_history, AuditKind, HistoryPage};
use super::audit_ring::{AuditRing, Move};
use super::closed_ids::ClosedIds;
use super::expired;
use super::idempotency::check_retention;
use super::ids::hex_value;
use super::open_holds::{Expiring, OpenHolds};
use super::outbox_memory::MemoryOutbox;
use super::route_usage::UsageByRoute;
use super::DEFAULT_RUNWAY_HORIZON;
use super::{
    burn_rate_after, check_alerts, check_idempotency_key, check_route, check_ttl, decayed_rate,
    runway::runway_known, runway_secs, AccountId, AccountSettings, Alerts, Balance, Configure,
    CreditEvent, DeadLetter, EventKind, EventOutbox, Extend, Extended, Grow, GrowOutcome, Grown,
    Held, HoldId, IdempotencyClaim, Insufficient, Ledger, LedgerAdmin, LedgerError, LedgerReports,
    LongestTtl, OutboxFuture, Replay, Reserve, ReserveOutcome, Settle, SettleOutcome, Settlement,
    StoreResponse, TopUp, ToppedUp, Usage, RECLAIM_LIMIT,
};
use crate::amount::{check_amount, checked_total};
use crate::api_key::ApiKeyHash;
use crate::clock::{Clock, SystemClock};

/// Audit entries a [`MemoryLedger`] keeps per account by default: 100 (memory is the
/// limit here; [`MemoryLedgerBuilder::audit_cap`] sets it).
pub const DEFAULT_MEMORY_AUDIT_CAP: usize = 100;

/// Hash maps keyed by ids the server makes or checks (account ids, hold ids, digests):
/// foldhash, seeded per process, instead of SipHash, which was a tenth of a billed
/// request's time.
type FastMap<K, V> = HashMap<K, V, RandomState>;

/// Number of independently locked shards of accounts. Accounts in different shards never
/// contend; a power of two keeps the shard pick a mask.
const SHARDS: usize = 64;
const _: () = assert!(SHARDS.is_power_of_two() && SHARDS > 1);

/// How long a closed hold id is remembered past the moment its hold expires (or closes,
/// if later): the call timeout (none here: a `MemoryLedger` call runs to its end before it
/// answers, so no call about the id can still be on its way) + 1 s of margin, as on the
/// Redis ledger. A retried settle or extend is sent only while the hold lives and a
/// retried reserve only while the first is unanswered, so none comes later than that.
const CLOSED_GRACE_MS: u64 = 1_000;

/// When a hold closed at `now_ms` (expiring at `expires_at_ms`) is forgotten. Its expiry
/// is at most its TTL (from the last reserve or extend) after the close, so this is never
/// later than close time + TTL + call timeout + 1 s.
fn forget_at(now_ms: u64, expires_at_ms: u64) -> u64 {
    now_ms.max(expires_at_ms) + CLOSED_GRACE_MS
}

/// Credits kept in process memory, with the same semantics as the Redis ledger.
///
/// Accounts live in 64 shards, each behind its own lock, so requests of different accounts
/// rarely contend and one account's operations are serialised (that is what makes them
/// atomic). Each account keeps an expiry index of its open holds (ordered by expiry), so
/// reclaiming expired holds costs at most [`RECLAIM_LIMIT`] entries per call, never a scan.
/// Expired holds are reclaimed on the account's next operation, or by the optional
/// [sweeper](MemoryLedger::spawn_sweeper) for accounts that see no traffic.
///
/// Cloning is cheap and clones share the same balances. State is lost when the process
/// exits: use [`RedisLedger`](crate::ledger::RedisLedger) to share balances between replicas
/// or keep them across restarts.
///
/// ```
/// use std::time::Duration;
/// use tower_credits::{clock::ManualClock, AccountId, Ledger, MemoryLedger};
/// use tower_credits::ledger::{HoldId, Reserve};
/// use tower_credits::{LedgerAdmin, LedgerReports, TopUp};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_credits::LedgerError> {
/// let clock = ManualClock::new();
/// let ledger = MemoryLedger::builder().clock(clock.clone()).build();
/// let acct = AccountId::new("acct_1")?;
/// ledger.top_up(TopUp::new(&acct, 10, "pay-1")).await?;
/// let hold = HoldId::generate();
/// ledger.reserve(Reserve::new(acct.clone(), hold, 10).ttl(Duration::from_secs(5))).await?;
/// assert_eq!(ledger.balance(&acct).await?.available, 0);
///
/// clock.advance(Duration::from_secs(6)); // the hold expires and comes back
/// assert_eq!(ledger.balance(&acct).await?.available, 10);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryLedger {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// Picks an account's shard.
    shard_hasher: RandomState,
    api_keys: RwLock<FastMap<ApiKeyHash, AccountId>>,
    /// Every top-up idempotency key ever credited, by [`topup_digest`]: the account it
    /// credited (its text: a funded account's one entry here is 8 bytes smaller without
    /// the id's hash) and the amount. One map for the whole ledger, since a key credits
    /// one account only; locked before the account's shard (top-ups are rare).
    topups: Mutex<FastMap<[u8; 16], CreditedBy>>,
    clock: Arc<dyn Clock>,
    /// How long a refund tombstone of a never-seen id is kept (see [`LongestTtl`]).
    longest_ttl: LongestTtl,
    max_open_holds: Option<u64>,
    /// Detected events until delivered (an in-process queue with leases).
    outbox: MemoryOutbox,
    /// Audit entries kept per account (0: none).
    audit_cap: usize,
    /// The lease marks of every [`Leased`](super::Leased) wrapper of this ledger.
    lease_board: std::sync::OnceLock<Arc<super::lease::MemoryLeaseBoard>>,
}

/// Builds a [`MemoryLedger`].
pub struct MemoryLedgerBuilder {
    clock: Arc<dyn Clock>,
    max_open_holds: Option<u64>,
    event_lease: Duration,
    audit_cap: usize,
}

impl fmt::Debug for MemoryLedgerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLedgerBuilder")
            .field("max_open_holds", &self.max_open_holds)
            .finish_non_exhaustive()
    }
}

impl MemoryLedgerBuilder {
    /// How many audit entries each account keeps, the oldest dropped first (default
    /// [`DEFAULT_MEMORY_AUDIT_CAP`]); 0 keeps no trail. At most 10,000,000, as
    /// `RedisLedgerBuilder::audit_cap`; an account
    /// also keeps at most 1 GiB of entries, its oldest going first past that.
    ///
    /// # Panics
    ///
    /// If `entries` is more than 10,000,000.
    pub fn audit_cap(mut self, entries: usize) -> Self {
        assert!(
            entries <= 10_000_000,
            "audit_cap({entries}): at most 10,000,000"
        );
        self.audit_cap = entries;
        self
    }

    /// The clock holds expire by (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The most open holds one account may have; a reserve beyond it answers
    /// [`ReserveOutcome::TooManyHolds`] (default: no limit).
    pub fn max_open_holds(mut self, limit: u64) -> Self {
        self.max_open_holds = Some(limit);
        self
    }

    /// How long a detected event stays leased to the dispatcher of this process before
    /// another claim may take it (default [`DEFAULT_EVENT_LEASE`](super::DEFAULT_EVENT_LEASE)).
    pub fn event_lease(mut self, lease: Duration) -> Self {
        self.event_lease = lease;
        self
    }

    /// Builds the ledger.
    pub fn build(self) -> MemoryLedger {
        MemoryLedger {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                shard_hasher: RandomState::default(),
                api_keys: RwLock::default(),
                topups: Mutex::default(),
                clock: self.clock.clone(),
                longest_ttl: LongestTtl::default(),
                max_open_holds: self.max_open_holds,
                outbox: MemoryOutbox::new(self.clock.clone(), self.event_lease),
                audit_cap: self.audit_cap,
                lease_board: std::sync::OnceLock::new(),
            }),
        }
    }
}

/// What a top-up key credited: the account's text and the amount.
type CreditedBy = (Arc<str>, u64);

/// The accounts of one shard, under one lock.
#[derive(Default)]
struct Shard {
    accounts: FastMap<AccountId, AccountState>,
}

/// A top-up's idempotency key, as the first 128 bits of its SHA-256 (16 bytes and no
/// allocation per key): a collision needs about 2^64 keys.
fn topup_digest(key: &str) -> [u8; 16] {
    let digest = Sha256::digest(key.as_bytes());
    digest[..16].try_into().expect("SHA-256 is 32 bytes")
}

/// A hold id as the ledger keys it, open or closed: 16 bytes instead of the id's 40, since
/// every settle leaves one until its hold's TTL + 1 s has passed (a busy account keeps
/// thousands), and one computation per call serves the open holds, their expiry index and
/// the closed ids alike.
///
/// An id spelled as 32 lowercase hex digits (every generated one) is keyed by the number
/// those digits spell, its UUID: distinct such ids never share a key, and decoding them
/// eight at a time costs about a third of hashing them. Any other id is its text through
/// a keyed 128-bit SipHash-1-3 (a random key per process, never stored). Such an id meeting
/// another id of its account in the key is a 2^-128 event for an id the caller cannot aim
/// (the key is secret), and its worst outcome is a refusal, never a shared hold: an open
/// hold found by key is checked to be of the same id (`LedgerError::Corrupt` if not), and a
/// fresh id answered as already closed is refused with nothing charged.
type IdKey = u128;

fn id_key(id: &HoldId) -> IdKey {
    // A generated id, or its text chosen: the same key either way.
    // The generated check first, inlined: through `hex_digits` alone the usual id costs
    // about 25 instructions more (measured).
    if let Some(digits) = id.generated_digits().or_else(|| id.hex_digits()) {
        return hex_value(digits);
    }
    let text = id.as_bytes();
    static KEY: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).expect("the OS random number generator");
        key
    });
    use siphasher::sip128::Hasher128;
    let mut hasher = siphasher::sip128::SipHasher13::new_with_key(key);
    std::hash::Hasher::write(&mut hasher, text);
    hasher.finish128().as_u128()
}

/// Whether the hold `found` by `id`'s key is another id's. Two generated ids never meet
/// in their key (it is the number they spell), so only a pair with a chosen id compares
/// text.
fn another_ids(found: &HoldId, id: &HoldId) -> bool {
    let both_generated = found.generated_digits().is_some() && id.generated_digits().is_some();
    !both_generated && found != id
}

/// Two ids met in their key: refused as a store fault, so neither shares the other's hold.
#[cold]
fn key_collision(id: &HoldId) -> LedgerError {
    LedgerError::Corrupt(format!("hold id {id} met another open hold's id key").into())
}

/// One account: its balance inline, the rest boxed apart until it has some. An idle funded
/// account is these 64 bytes (88 with its id in the map's slot, where a flat account took
/// 232) and its trail's one entry.
#[derive(Default)]
struct AccountState {
    topped_up: u64,
    committed: u64,
    held: u64,
    /// The last top-up's amount: a percentage threshold is of it. Kept here, so a top-up
    /// of an account with no settings makes no [`AccountDetails`].
    last_top_up: u64,
    /// Settings, alerts, spend history, usage and idempotency records: made by the first
    /// commit, setting, refusal or keyed request.
    details: Option<Box<AccountDetails>>,
    /// Open holds and closed ids, boxed apart and dropped once empty.
    activity: Option<Box<Activity>>,
    /// The audit trail, packed.
    log: AuditRing,
}

/// What an account keeps beyond its balance and its holds.
#[derive(Default)]
struct AccountDetails {
    credit_limit: u64,
    /// Thresholds, runway horizon, and which events have fired.
    alerts: Alerts,
    rate: f64,
    rate_at_ms: u64,
    /// Commits of at least a credit, and when the first was: the history a runway needs.
    commits: u64,
    first_commit_ms: Option<u64>,
    usage: UsageByRoute,
    /// Idempotency records, kept apart and dropped once empty.
    requests: Option<Box<Requests>>,
}

impl AccountDetails {
    /// Forgets up to [`RECLAIM_LIMIT`] idempotency records past their retention.
    fn forget_requests(&mut self, now_ms: u64) {
        let Some(requests) = self.requests.as_deref_mut() else {
            return;
        };
        for _ in 0..RECLAIM_LIMIT {
            match requests.expiry.first() {
                Some(&(at, key)) if at <= now_ms => {
                    requests.expiry.pop_first();
                    requests.records.remove(&key);
                }
                _ => break,
            }
        }
        if requests.records.is_empty() {
            self.requests = None;
        }
    }
}

/// The idempotency records of one account, by key digest, with their expiry index.
#[derive(Default)]
struct Requests {
    records: FastMap<[u8; 32], Record>,
    expiry: BTreeSet<(u64, [u8; 32])>,
}

/// What a keyed request came to (see [`idempotency`](super::idempotency)).
struct Record {
    fingerprint: [u8; 32],
    hold: HoldId,
    /// When its hold was committed (ms), once it was.
    committed_at: Option<u64>,
    response: Option<bytes::Bytes>,
    /// The response cannot be replayed (too large to store).
    unavailable: bool,
    /// When it is forgotten (ms): its entry in the expiry index.
    expires_at: u64,
}

impl Requests {
    fn remove(&mut self, key: &[u8; 32]) {
        if let Some(record) = self.records.remove(key) {
            self.expiry.remove(&(record.expires_at, *key));
        }
    }
}

/// Open holds and recently closed ids of one account, by their ids' [`IdKey`].
#[derive(Default)]
struct Activity {
    /// Open holds, with their expiry order.
    holds: OpenHolds<OpenHold>,
    /// Settled, refunded, expired and tombstoned ids, with how they closed, until their
    /// forget-at time: the first few inline.
    done: ClosedIds,
    /// The latest forget-at time in `done`: once passed, all of `done` goes at once (as
    /// the `PEXPIRE` of the Redis ledger's `done` key), however many ids it holds.
    done_until: u64,
    /// No hold expires and no closed id is due to be forgotten before this time (ms): a
    /// call before it skips the reclaim. Lowered by each entry made, set exactly by each
    /// reclaim; zero (due at once) for new activity.
    next_due: u64,
}

impl Activity {
    /// Opens a hold.
    fn open(&mut self, key: IdKey, hold: OpenHold) {
        self.next_due = self.next_due.min(hold.expires_at_ms);
        self.holds.insert(key, hold);
    }

    /// When the earliest hold expires or closed id is due to be forgotten.
    fn earliest_due(&self) -> u64 {
        let expires = self.holds.earliest_expiry().unwrap_or(u64::MAX);
        let forgets = self.done.earliest().unwrap_or(u64::MAX);
        expires.min(forgets)
    }

    fn is_empty(&self) -> bool {
        self.holds.is_empty() && self.done.is_empty()
    }

    /// Remembers how a hold id closed, until `forget_at` (ms).
    fn remember(&mut self, key: IdKey, how: SettleOutcome, forget_at: u64) {
        self.done.insert(key, how, forget_at);
        self.done_until = self.done_until.max(forget_at);
        self.next_due = self.next_due.min(forget_at);
    }

    /// Forgets closed ids whose time has come: all of them once `done_until` has passed,
    /// else up to [`RECLAIM_LIMIT`] of the earliest due.
    fn forget_due(&mut self, now_ms: u64) {
        if self.done.is_empty() {
            return;
        }
        if self.done_until <= now_ms {
            self.done.clear();
            return;
        }
        self.done.forget_due(now_ms, RECLAIM_LIMIT);
    }
}

struct OpenHold {
    id: HoldId,
    amount: u64,
    expires_at_ms: u64,
    route: Option<Arc<str>>,
}

impl Expiring for OpenHold {
    fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    fn set_expires_at_ms(&mut self, at: u64) {
        self.expires_at_ms = at;
    }
}

impl AccountState {
    fn available(&self) -> i64 {
        self.topped_up as i64 - self.committed as i64 - self.held as i64
    }

    fn runway(&self, now_ms: u64) -> Option<u64> {
        let d = self.details.as_deref()?;
        if !runway_known(d.commits, d.first_commit_ms, now_ms) {
            return None;
        }
        runway_secs(self.available(), decayed_rate(d.rate, d.rate_at_ms, now_ms))
    }

    #[inline]
    fn details(&mut self) -> &mut AccountDetails {
        // As `activity`.
        if self.details.is_none() {
            self.details = Some(Box::default());
        }
        self.details.as_deref_mut().expect("made above")
    }

    fn credit_limit(&self) -> u64 {
        self.details.as_deref().map_or(0, |d| d.credit_limit)
    }

    /// The thresholds in credits, highest first.
    #[inline]
    fn thresholds(&self) -> Vec<u64> {
        self.details
            .as_deref()
            .map_or_else(Vec::new, |d| d.alerts.resolved(self.last_top_up))
    }

    fn requests(&self) -> Option<&Requests> {
        self.details.as_deref()?.requests.as_deref()
    }

    fn requests_mut(&mut self) -> Option<&mut Requests> {
        self.details.as_deref_mut()?.requests.as_deref_mut()
    }

    #[inline(always)]
    fn activity(&mut self) -> &mut Activity {
        // Not `get_or_insert_default`, whose call is not inlined: the usual account has
        // its box already.
        if self.activity.is_none() {
            self.activity = Some(Box::default());
        }
        self.activity.as_deref_mut().expect("made above")
    }

    fn open_hold(&self, key: IdKey) -> Option<&OpenHold> {
        self.activity.as_ref()?.holds.get(key)
    }

    fn open_holds(&self) -> usize {
        self.activity.as_ref().map_or(0, |a| a.holds.len())
    }

    /// How the id of `key` was closed, if it is still remembered.
    fn closed(&self, key: IdKey) -> Option<SettleOutcome> {
        self.activity.as_ref()?.done.get(key)
    }

    /// Reclaims up to [`RECLAIM_LIMIT`] expired holds and forgets closed ids whose time
    /// has come; the credits that went back.
    #[inline(always)]
    fn reclaim(&mut self, now_ms: u64, audit_cap: usize) -> u64 {
        match self.activity.as_deref() {
            None => 0,
            Some(activity) if now_ms < activity.next_due => {
                // Nothing is due: the usual call, on an account whose holds live seconds.
                self.forget_requests(now_ms);
                0
            }
            Some(_) => self.reclaim_due(now_ms, audit_cap),
        }
    }

    /// [`Self::reclaim`] once something is due.
    fn reclaim_due(&mut self, now_ms: u64, audit_cap: usize) -> u64 {
        let Some(activity) = self.activity.as_deref_mut() else {
            return 0;
        };
        let mut released = 0;
        let mut expired = Vec::new();
        for _ in 0..RECLAIM_LIMIT {
            let Some((key, hold)) = activity.holds.pop_expired(now_ms) else {
                break;
            };
            released += hold.amount;
            let forget = forget_at(now_ms, hold.expires_at_ms);
            activity.remember(key, SettleOutcome::Expired, forget);
            if audit_cap > 0 {
                expired.push((hold.id, hold.amount, hold.route));
            }
        }
        activity.forget_due(now_ms);
        activity.next_due = activity.earliest_due();
        if activity.is_empty() {
            self.activity = None;
        }
        self.forget_requests(now_ms);
        // Expired holds give credits back, but only a top-up re-arms a threshold: a caller
        // who lets holds lapse must not get a second warning for the same fall.
        let mut audited = 0;
        for (id, amount, route) in expired {
            // Each entry with the totals right after its own expiry.
            self.held -= amount;
            audited += amount;
            let entry = (AuditKind::Expire, amount, Some(&id), route.as_ref());
            self.audit(audit_cap, entry, now_ms);
        }
        self.held -= released - audited;
        released
    }

    /// Appends `(kind, amount, hold, route)` to the audit trail with the totals now,
    /// dropping the oldest entry past `cap`.
    fn audit(
        &mut self,
        cap: usize,
        (kind, amount, hold, route): (AuditKind, u64, Option<&HoldId>, Option<&Arc<str>>),
        now_ms: u64,
    ) {
        self.log.push(
            cap,
            &Move {
                at_ms: now_ms,
                kind,
                amount,
                hold,
                route: route.map(|r| &**r),
                held: self.held,
                committed: self.committed,
                topped_up: self.topped_up,
            },
        );
    }

    /// A page of the trail, newest first, older than `cursor`.
    fn history(&self, cursor: Option<u64>, limit: usize) -> HistoryPage {
        self.log.history(cursor, limit)
    }

    /// Forgets up to [`RECLAIM_LIMIT`] idempotency records past their retention.
    #[inline]
    fn forget_requests(&mut self, now_ms: u64) {
        if let Some(details) = self.details.as_deref_mut() {
            if details.requests.is_some() {
                // The rare account with records: the loop out of line.
                details.forget_requests(now_ms);
            }
        }
    }

    /// What the first request with `claim`'s key came to, if it still counts; a record
    /// whose hold expired or was refunded unsettled is dropped (the retry runs again).
    fn replay(&mut self, claim: &IdempotencyClaim, now_ms: u64) -> Option<Replay> {
        let record = self.requests()?.records.get(claim.key())?;
        if record.expires_at <= now_ms {
            self.requests_mut()?.remove(claim.key());
            return None;
        }
        if record.fingerprint != *claim.fingerprint() {
            return Some(Replay::KeyReused);
        }
        let replay = match (record.committed_at, &record.response) {
            _ if record.unavailable => Some(Replay::Unavailable),
            (Some(_), Some(response)) => Some(Replay::Stored {
                response: response.clone(),
                available: self.available(),
            }),
            (Some(at), None) => Some(Replay::committed_unstored(now_ms.saturating_sub(at))),
            (None, _) if self.open_hold(id_key(&record.hold)).is_some() => Some(Replay::InProgress),
            (None, _) => None,
        };
        if replay.is_none() {
            let requests = self.requests_mut().expect("read above");
            requests.remove(claim.key());
        }
        replay
    }

    /// Records `claim` for the hold `hold` just placed.
    fn claim(&mut self, claim: &IdempotencyClaim, hold: &HoldId, now_ms: u64) {
        let requests = self.details().requests.get_or_insert_default();
        let expires_at = now_ms + claim.retention_period().as_millis() as u64;
        requests.expiry.insert((expires_at, *claim.key()));
        requests.records.insert(
            *claim.key(),
            Record {
                fingerprint: *claim.fingerprint(),
                hold: hold.clone(),
                committed_at: None,
                response: None,
                unavailable: false,
                expires_at,
            },
        );
    }

    /// The record of `key` made by `hold`, if it is still kept.
    fn record_of(&mut self, key: &[u8; 32], hold: &HoldId) -> Option<&mut Record> {
        let record = self.requests_mut()?.records.get_mut(key)?;
        (record.hold == *hold).then_some(record)
    }

    /// Remembers how the id of `key` closed, until `forget_at` (ms).
    fn close(&mut self, key: IdKey, how: SettleOutcome, forget_at: u64) {
        self.activity().remember(key, how, forget_at);
    }

    fn settlement(&self, outcome: SettleOutcome, now_ms: u64) -> Settlement {
        Settlement {
            outcome,
            committed: 0,
            released: 0,
            clamped: false,
            available: Some(self.available()),
            thresholds: self.thresholds(),
            events: Vec::new(),
            runway_secs: self.runway(now_ms),
        }
    }
}

/// What a closed id answers when settled again.
fn already(how: SettleOutcome) -> SettleOutcome {
    match how {
        SettleOutcome::Committed => SettleOutcome::AlreadyCommitted,
        SettleOutcome::Refunded => SettleOutcome::AlreadyRefunded,
        other => other,
    }
}

fn unknown_settlement() -> Settlement {
    Settlement {
        outcome: SettleOutcome::Unknown,
        committed: 0,
        released: 0,
        clamped: false,
        available: None,
        thresholds: Vec::new(),
        events: Vec::new(),
        runway_secs: None,
    }
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLedger")
            .field("max_open_holds", &self.inner.max_open_holds)
            .finish_non_exhaustive()
    }
}

impl MemoryLedger {
    /// The [`LeaseBoard`](super::LeaseBoard) of [`Leased`](super::Leased) wrappers of this
    /// ledger, on the ledger's clock: one per ledger, shared by every clone.
    pub fn lease_board(&self) -> Arc<dyn super::LeaseBoard> {
        self.inner
            .lease_board
            .get_or_init(|| {
                Arc::new(super::lease::MemoryLeaseBoard::with_clock(
                    self.inner.clock.clone(),
                ))
            })
            .clone()
    }

    /// A ledger on the system clock, with default settings.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts a [`MemoryLedgerBuilder`].
    pub fn builder() -> MemoryLedgerBuilder {
        MemoryLedgerBuilder {
            clock: Arc::new(SystemClock),
            max_open_holds: None,
            event_lease: super::DEFAULT_EVENT_LEASE,
            audit_cap: DEFAULT_MEMORY_AUDIT_CAP,
        }
    }

    /// Tests only (feature `test-util`): how many closed hold ids (settled, expired, or
    /// refund tombstones) `account` remembers right now, without reclaiming anything;
    /// `None` when it keeps no hold tables at all (an idle or unknown account).
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn remembered_closed_ids(&self, account: &AccountId) -> Option<usize> {
        let shard = self.shard(account).lock();
        let activity = shard.accounts.get(account)?.activity.as_ref()?;
        Some(activity.done.len())
    }

    /// Reclaims expired holds of every account, [`RECLAIM_LIMIT`] per account, one shard
    /// at a time, and forgets their closed ids whose time has come. Returns how many holds
    /// went back.
    pub fn sweep_expired(&self) -> u64 {
        let now = self.inner.clock.now_ms();
        let mut reclaimed = 0;
        for shard in self.inner.shards.iter() {
            let mut shard = shard.lock();
            for state in shard.accounts.values_mut() {
                let before = state.open_holds();
                expired(state.reclaim(now, self.inner.audit_cap));
                reclaimed += (before - state.open_holds()) as u64;
            }
        }
        reclaimed
    }

    /// Runs [`sweep_expired`](Self::sweep_expired) every `interval` on the current tokio
    /// runtime, for accounts that receive no new request. The task ends when every clone of
    /// the ledger is dropped, or when the returned handle is aborted.
    pub fn spawn_sweeper(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let swept = MemoryLedger { inner }.sweep_expired();
                if swept > 0 {
                    tracing::debug!(swept, "reclaimed expired holds");
                }
            }
        })
    }

    fn shard(&self, account: &AccountId) -> &Mutex<Shard> {
        let hash = self.inner.shard_hasher.hash_one(account);
        // The high bits: the shard's own map indexes by the low ones of its own hasher.
        &self.inner.shards[(hash >> (64 - SHARDS.trailing_zeros())) as usize]
    }

    /// Runs `op` on an existing account after reclaiming its expired holds.
    fn with_account<T>(
        &self,
        account: &AccountId,
        op: impl FnOnce(&mut AccountState, u64) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let now = self.inner.clock.now_ms();
        let mut shard = self.shard(account).lock();
        // Not `ok_or`: its error is made, and dropped, on every call that finds the account.
        let Some(state) = shard.accounts.get_mut(account) else {
            return Err(LedgerError::UnknownAccount);
        };
        expired(state.reclaim(now, self.inner.audit_cap));
        op(state, now)
    }

    fn do_reserve(&self, r: Reserve) -> Result<ReserveOutcome, LedgerError> {
        check_amount(r.amount)?;
        if let Some(min) = r.min_amount {
            check_amount(min)?;
        }
        let ttl_ms = check_ttl(r.ttl)?;
        if let Some(route) = &r.route {
            check_route(route)?;
        }
        if let Some(claim) = &r.idempotency {
            check_retention(claim.retention_period())?;
        }
        self.inner.longest_ttl.note(ttl_ms);
        let max_open = self.inner.max_open_holds;
        let audit_cap = self.inner.audit_cap;
        let outbox = &self.inner.outbox;
        let result = self.with_account(&r.account, |state, now| {
            let key = id_key(&r.hold_id);
            if let Some(hold) = state.open_hold(key) {
                if another_ids(&hold.id, &r.hold_id) {
                    return Err(key_collision(&r.hold_id));
                }
                return Ok(ReserveOutcome::Held(Held {
                    amount: hold.amount,
                    available: state.available(),
                    credit_limit: state.credit_limit(),
                    thresholds: state.thresholds(),
                    expires_at_ms: hold.expires_at_ms,
                    replayed: true,
                    runway_secs: state.runway(now),
                }));
            }
            if let Some(how) = state.closed(key) {
                return Ok(ReserveOutcome::Closed(already(how)));
            }
            if let Some(claim) = &r.idempotency {
                if let Some(replay) = state.replay(claim, now) {
                    return Ok(ReserveOutcome::Replay(replay));
                }
            }
            let spendable = state.available() as i128 + state.credit_limit() as i128;
            // All of it, or (with a minimum) what the account can afford down to it.
            let least = r.min_amount.unwrap_or(r.amount).min(r.amount);
            let amount = if (r.amount as i128) <= spendable {
                r.amount
            } else if (least as i128) <= spendable {
                spendable as u64
            } else {
                let mut refusal = Insufficient::new(least, state.available(), state.credit_limit());
                if state.details().alerts.after_refusal() {
                    let event =
                        outbox.new_event(EventKind::Depleted, &r.account, state.available(), now);
                    refusal.events.push(outbox.push(event, now));
                }
                return Ok(ReserveOutcome::Insufficient(refusal));
            };
            if let Some(limit) = max_open {
                if state.open_holds() as u64 >= limit {
                    return Ok(ReserveOutcome::TooManyHolds { limit });
                }
            }
            // committed + held can reach topped_up + credit_limit: keep both in range.
            let held = checked_total(state.held, amount)?;
            checked_total(state.committed, held)?;
            let expires_at_ms = now + ttl_ms;
            state.held = held;
            if let Some(claim) = &r.idempotency {
                state.claim(claim, &r.hold_id, now);
            }
            let entry = (
                AuditKind::Reserve,
                amount,
                Some(&r.hold_id),
                r.route.as_ref(),
            );
            state.audit(audit_cap, entry, now);
            state.activity().open(
                key,
                OpenHold {
                    id: r.hold_id,
                    amount,
                    expires_at_ms,
                    route: r.route,
                },
            );
            Ok(ReserveOutcome::Held(Held {
                amount,
                available: state.available(),
                credit_limit: state.credit_limit(),
                thresholds: state.thresholds(),
                expires_at_ms,
                replayed: false,
                runway_secs: state.runway(now),
            }))
        });
        match result {
            Err(LedgerError::UnknownAccount) => Ok(ReserveOutcome::UnknownAccount),
            other => other,
        }
    }

    fn do_settle(
        &self,
        account: &AccountId,
        hold_id: &HoldId,
        actual: Option<u64>,
        key: Option<&[u8; 32]>,
    ) -> Result<Settlement, LedgerError> {
        if let Some(actual) = actual {
            check_amount(actual)?;
        }
        let tombstone_ttl_ms = self.inner.longest_ttl.get();
        let result = self.with_account(account, |state, now| {
            let hold_key = id_key(hold_id);
            let open = state
                .activity
                .as_deref_mut()
                .and_then(|a| a.holds.remove(hold_key));
            if open
                .as_ref()
                .is_some_and(|hold| another_ids(&hold.id, hold_id))
            {
                // Another id's hold, met in the key: put back, and this call refused.
                let other = open.expect("checked above");
                state.activity().holds.insert(hold_key, other);
                return Err(key_collision(hold_id));
            }
            let Some(hold) = open else {
                if let Some(how) = state.closed(hold_key) {
                    return Ok(state.settlement(already(how), now));
                }
                if actual.is_none() {
                    // A refund that overtook its reserve: the tombstone keeps the reserve out
                    // for as long as that hold could live (see `LongestTtl`).
                    let forget = now + tombstone_ttl_ms + CLOSED_GRACE_MS;
                    state.close(hold_key, SettleOutcome::Refunded, forget);
                }
                return Ok(state.settlement(SettleOutcome::Unknown, now));
            };
            state.held -= hold.amount;
            let (outcome, charged, clamped) = match actual {
                Some(actual) => (
                    SettleOutcome::Committed,
                    actual.min(hold.amount),
                    actual > hold.amount,
                ),
                None => (SettleOutcome::Refunded, 0, false),
            };
            let mut events = Vec::new();
            if outcome == SettleOutcome::Committed {
                state.committed += charged;
                {
                    let d = state.details();
                    d.rate = burn_rate_after(d.rate, d.rate_at_ms, now, charged);
                    d.rate_at_ms = now;
                    if charged > 0 {
                        d.commits += 1;
                        d.first_commit_ms.get_or_insert(now);
                    }
                    d.usage.add(hold.route.as_ref(), charged);
                }
                let available = state.available();
                let runway = state.runway(now);
                let last_top_up = state.last_top_up;
                let (crossed, runway_low) =
                    state
                        .details()
                        .alerts
                        .after_commit(last_top_up, available, runway);
                let outbox = &self.inner.outbox;
                for threshold in crossed {
                    let event = outbox
                        .new_event(EventKind::BalanceLow, account, available, now)
                        .with_threshold(threshold);
                    events.push(outbox.push(event, now));
                }
                if let Some(runway) = runway_low {
                    let event = outbox
                        .new_event(EventKind::RunwayLow, account, available, now)
                        .with_runway_secs(runway);
                    events.push(outbox.push(event, now));
                }
            }
            let kind = match outcome {
                SettleOutcome::Committed => (AuditKind::Commit, charged),
                _ => (AuditKind::Refund, hold.amount),
            };
            let entry = (kind.0, kind.1, Some(hold_id), hold.route.as_ref());
            state.audit(self.inner.audit_cap, entry, now);
            state.close(hold_key, outcome, forget_at(now, hold.expires_at_ms));
            if let Some(key) = key {
                match outcome {
                    SettleOutcome::Committed => {
                        if let Some(record) = state.record_of(key, hold_id) {
                            record.committed_at = Some(now);
                        }
                    }
                    _ => {
                        // Refunded: the retry runs again.
                        if state.record_of(key, hold_id).is_some() {
                            let requests = state.requests_mut().expect("found");
                            requests.remove(key);
                        }
                    }
                }
            }
            let mut settlement = state.settlement(outcome, now);
            settlement.committed = charged;
            settlement.released = hold.amount - charged;
            settlement.clamped = clamped;
            settlement.events = events;
            Ok(settlement)
        });
        match result {
            Err(LedgerError::UnknownAccount) => Ok(unknown_settlement()),
            other => other,
        }
    }

    fn do_extend(
        &self,
        account: &AccountId,
        hold_id: &HoldId,
        ttl: Duration,
    ) -> Result<Extended, LedgerError> {
        let ttl_ms = check_ttl(ttl)?;
        let result = self.with_account(account, |state, now| {
            let key = id_key(hold_id);
            let closed = state.closed(key);
            if state
                .open_hold(key)
                .is_some_and(|hold| another_ids(&hold.id, hold_id))
            {
                return Err(key_collision(hold_id));
            }
            let Some(activity) = state.activity.as_deref_mut() else {
                return Ok(Extended::NotOpen(SettleOutcome::Unknown));
            };
            let expires_at_ms = now + ttl_ms;
            if activity.holds.set_expiry(key, expires_at_ms).is_none() {
                let how = closed.map(already);
                return Ok(Extended::NotOpen(how.unwrap_or(SettleOutcome::Unknown)));
            }
            activity.next_due = activity.next_due.min(expires_at_ms);
            Ok(Extended::Until(expires_at_ms))
        });
        match result {
            Err(LedgerError::UnknownAccount) => Ok(Extended::NotOpen(SettleOutcome::Unknown)),
            other => other,
        }
    }

    fn do_grow(&self, g: &Grow) -> Result<GrowOutcome, LedgerError> {
        let (to, least) = (g.amount(), g.least_amount());
        check_amount(to)?;
        let result = self.with_account(g.account(), |state, now| {
            let key = id_key(g.hold_id());
            let closed = state.closed(key);
            let Some(hold) = state.open_hold(key) else {
                let how = closed.map(already).unwrap_or(SettleOutcome::Unknown);
                return Ok(GrowOutcome::NotOpen(how));
            };
            if another_ids(&hold.id, g.hold_id()) {
                return Err(key_collision(g.hold_id()));
            }
            let current = hold.amount;
            if to <= current {
                // Already there (a retried grow): nothing moves.
                return Ok(GrowOutcome::Grown(Grown::new(current, state.available())));
            }
            let spendable = state.available() as i128 + state.credit_limit() as i128;
            let least = least.max(current);
            let target = if ((to - current) as i128) <= spendable {
                to
            } else if ((least - current) as i128) <= spendable {
                current + spendable.max(0) as u64
            } else {
                let refusal =
                    Insufficient::new(least - current, state.available(), state.credit_limit());
                return Ok(GrowOutcome::Insufficient(refusal));
            };
            let raise = target - current;
            // committed + held can reach topped_up + credit_limit: keep both in range.
            let held = checked_total(state.held, raise)?;
            checked_total(state.committed, held)?;
            state.held = held;
            let hold = state
                .activity
                .as_deref_mut()
                .and_then(|a| a.holds.get_mut(key))
                .expect("open above");
            hold.amount = target;
            let entry = (AuditKind::Grow, raise, Some(g.hold_id()), None);
            state.audit(self.inner.audit_cap, entry, now);
            Ok(GrowOutcome::Grown(Grown::new(target, state.available())))
        });
        match result {
            Err(LedgerError::UnknownAccount) => Ok(GrowOutcome::NotOpen(SettleOutcome::Unknown)),
            other => other,
        }
    }

    fn do_top_up(
        &self,
        account: &AccountId,
        amount: u64,
        key: &str,
    ) -> Result<ToppedUp, LedgerError> {
        check_amount(amount)?;
        check_idempotency_key(key)?;
        let now = self.inner.clock.now_ms();
        let digest = topup_digest(key);
        // The key's owner first (the lock order: top-ups, then a shard).
        let mut topups = self.inner.topups.lock();
        let owner = topups.get(&digest);
        if let Some((owner, _)) = owner.filter(|(owner, _)| **owner != *account.as_str()) {
            // Another account's payment: this one is not even created.
            return Err(LedgerError::TopUpKeyClaimed {
                account: AccountId::from_shared_text(owner.clone()),
            });
        }
        let first = owner.map(|&(_, first)| first);
        let mut shard = self.shard(account).lock();
        let state = shard.accounts.entry(account.clone()).or_default();
        expired(state.reclaim(now, self.inner.audit_cap));
        if let Some(first) = first {
            if first != amount {
                return Err(LedgerError::TopUpConflict {
                    first_amount: first,
                    amount,
                });
            }
            return Ok(ToppedUp {
                amount,
                replayed: true,
                available: state.available(),
            });
        }
        state.topped_up = checked_total(state.topped_up, amount)?;
        topups.insert(digest, (account.shared_text().clone(), amount));
        state.audit(
            self.inner.audit_cap,
            (AuditKind::TopUp, amount, None, None),
            now,
        );
        state.last_top_up = amount;
        let available = state.available();
        if let Some(details) = state.details.as_deref_mut() {
            details.alerts.after_top_up(amount, available);
        }
        Ok(ToppedUp {
            amount,
            replayed: false,
            available: state.available(),
        })
    }

    fn do_configure(
        &self,
        account: &AccountId,
        settings: AccountSettings,
    ) -> Result<(), LedgerError> {
        check_amount(settings.credit_limit)?;
        check_alerts(&settings.thresholds, settings.runway_horizon)?;
        let mut shard = self.shard(account).lock();
        let state = shard.accounts.entry(account.clone()).or_default();
        let details = state.details();
        details.credit_limit = settings.credit_limit;
        details
            .alerts
            .configure(settings.thresholds, settings.runway_horizon);
        Ok(())
    }
}

impl Ledger for MemoryLedger {
    type Future<T: Send + 'static> = Ready<Result<T, LedgerError>>;
    const IN_PROCESS: bool = true;

    fn reserve(&self, reserve: Reserve) -> Self::Future<ReserveOutcome> {
        ready(self.do_reserve(reserve))
    }

    fn settle(&self, settle: Settle) -> Self::Future<Settlement> {
        ready(self.do_settle(
            settle.account(),
            settle.hold_id(),
            settle.actual(),
            settle.idempotency_key(),
        ))
    }

    fn extend(&self, extend: Extend) -> Self::Future<Extended> {
        ready(self.do_extend(extend.account(), extend.hold_id(), extend.hold_ttl()))
    }

    fn grow(&self, grow: Grow) -> Self::Future<GrowOutcome> {
        ready(self.do_grow(&grow))
    }

    fn store_response(&self, store: StoreResponse) -> Self::Future<bool> {
        let result = self.with_account(store.account(), |state, _now| {
            let Some(record) = state.record_of(store.key(), store.hold_id()) else {
                return Ok(false);
            };
            match store.response() {
                Some(response) => record.response = Some(response.clone()),
                None => record.unavailable = true,
            }
            Ok(true)
        });
        ready(match result {
            Err(LedgerError::UnknownAccount) => Ok(false),
            other => other,
        })
    }

    fn lookup_api_key(&self, key: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        ready(Ok(self.inner.api_keys.read().get(key).cloned()))
    }

    fn reports(&self) -> Option<&dyn super::DynReports> {
        Some(self)
    }
}

impl LedgerAdmin for MemoryLedger {
    fn top_up(&self, top_up: TopUp) -> Self::Future<ToppedUp> {
        ready(self.do_top_up(top_up.account(), top_up.amount(), top_up.idempotency_key()))
    }

    fn configure(&self, configure: Configure) -> Self::Future<()> {
        ready(self.do_configure(configure.account(), configure.settings().clone()))
    }

    fn register_api_key(&self, key: &ApiKeyHash, account: &AccountId) -> Self::Future<()> {
        // The account's own id when it exists: the layer's calls then carry the very id
        // the shard is keyed by, which compares without reading its text.
        let account = self
            .shard(account)
            .lock()
            .accounts
            .get_key_value(account)
            .map_or_else(|| account.clone(), |(id, _)| id.clone());
        self.inner.api_keys.write().insert(*key, account);
        ready(Ok(()))
    }

    fn revoke_api_key(&self, key: &ApiKeyHash) -> Self::Future<bool> {
        ready(Ok(self.inner.api_keys.write().remove(key).is_some()))
    }
}

impl EventOutbox for MemoryLedger {
    fn replica(&self) -> &str {
        self.inner.outbox.replica()
    }

    fn claim(&self, lease: Duration, max: usize) -> OutboxFuture<Vec<CreditEvent>> {
        Box::pin(ready(Ok(self.inner.outbox.claim(lease, max))))
    }

    fn renew(&self, event: &CreditEvent, lease: Duration) -> OutboxFuture<bool> {
        Box::pin(ready(Ok(self.inner.outbox.renew(event, lease))))
    }

    fn ack(&self, event: &CreditEvent) -> OutboxFuture<()> {
        self.inner.outbox.ack(event);
        Box::pin(ready(Ok(())))
    }

    fn dead_letter(&self, event: &CreditEvent, reason: &str) -> OutboxFuture<()> {
        self.inner.outbox.dead_letter(event, reason);
        Box::pin(ready(Ok(())))
    }

    fn dead_letters(&self, account: &AccountId) -> OutboxFuture<Vec<DeadLetter>> {
        Box::pin(ready(Ok(self.inner.outbox.dead_letters(account))))
    }

    fn requeue(&self, dead: &DeadLetter) -> OutboxFuture<bool> {
        Box::pin(ready(Ok(self.inner.outbox.requeue(dead))))
    }

    fn pending(&self, account: &AccountId) -> OutboxFuture<Vec<CreditEvent>> {
        Box::pin(ready(Ok(self.inner.outbox.pending(account))))
    }
}

impl LedgerReports for MemoryLedger {
    fn balance(&self, account: &AccountId) -> Self::Future<Balance> {
        ready(self.with_account(account, |state, now| {
            Ok(Balance {
                available: state.available(),
                held: state.held,
                committed: state.committed,
                topped_up: state.topped_up,
                credit_limit: state.credit_limit(),
                thresholds: state.thresholds(),
                runway_horizon: state
                    .details
                    .as_deref()
                    .map_or(DEFAULT_RUNWAY_HORIZON, |d| d.alerts.horizon()),
                open_holds: state.open_holds() as u64,
                runway_secs: state.runway(now),
            })
        }))
    }

    fn usage(&self, account: &AccountId) -> Self::Future<Usage> {
        ready(self.with_account(account, |state, _| {
            Ok(Usage {
                by_route: state
                    .details
                    .as_deref()
                    .map(|d| d.usage.to_map())
                    .unwrap_or_default(),
            })
        }))
    }

    fn history(
        &self,
        account: &AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> super::BoxLedgerFuture<HistoryPage> {
        let page = check_history(cursor, limit).map(|(cursor, limit)| {
            let cursor = cursor.map(|c| c.parse::<u64>().unwrap_or(0));
            let shard = self.shard(account).lock();
            shard
                .accounts
                .get(account)
                .map(|state| state.history(cursor, limit))
                .unwrap_or_default()
        });
        Box::pin(ready(page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "at most 10,000,000")]
    fn an_audit_cap_past_the_redis_ledgers_limit_is_refused_when_built() {
        let _ = MemoryLedger::builder().audit_cap(10_000_001);
    }

    #[test]
    fn an_account_drops_its_hold_tables_once_nothing_is_open_or_remembered() {
        let clock = crate::clock::ManualClock::new();
        let ledger = MemoryLedger::builder().clock(clock.clone()).build();
        let acct = AccountId::new("acct_idle").unwrap();
        let has_tables =
            |l: &MemoryLedger| l.shard(&acct).lock().accounts[&acct].activity.is_some();
        ledger.do_top_up(&acct, 10, "pay-1").unwrap();
        assert!(
            !has_tables(&ledger),
            "a funded account without holds has none"
        );

        let hold = HoldId::generate();
        let ttl = Duration::from_secs(5);
        ledger
            .do_reserve(Reserve::new(acct.clone(), hold.clone(), 4).ttl(ttl))
            .unwrap();
        ledger.do_settle(&acct, &hold, Some(4), None).unwrap();
        assert!(has_tables(&ledger), "the closed id is remembered");
        // Up to the hold's expiry + 1 s a late call about it still gets its answer.
        clock.advance(Duration::from_millis(5_999));
        assert_eq!(
            ledger
                .do_settle(&acct, &hold, Some(4), None)
                .unwrap()
                .outcome,
            SettleOutcome::AlreadyCommitted
        );
        assert!(has_tables(&ledger));

        clock.advance(Duration::from_millis(1));
        assert_eq!(ledger.do_top_up(&acct, 1, "pay-2").unwrap().available, 7);
        assert!(!has_tables(&ledger), "past TTL + 1 s nothing is left");

        // Holds of different TTLs are forgotten by their own time, not in closing order.
        let long = HoldId::generate();
        let short = HoldId::generate();
        let reserve = |id: &HoldId, secs| {
            let r = Reserve::new(acct.clone(), id.clone(), 1).ttl(Duration::from_secs(secs));
            ledger.do_reserve(r).unwrap();
        };
        reserve(&long, 60);
        reserve(&short, 2);
        ledger.do_settle(&acct, &long, Some(1), None).unwrap();
        ledger.do_settle(&acct, &short, Some(1), None).unwrap();
        clock.advance(Duration::from_secs(3));
        let closed = |id: &HoldId| ledger.shard(&acct).lock().accounts[&acct].closed(id_key(id));
        ledger.do_top_up(&acct, 1, "pay-3").unwrap();
        assert_eq!(closed(&short), None);
        assert_eq!(closed(&long), Some(SettleOutcome::Committed));
        clock.advance(Duration::from_secs(58));
        ledger.do_top_up(&acct, 1, "pay-4").unwrap();
        assert!(!has_tables(&ledger));
    }

    #[test]
    fn holds_expire_on_time_though_calls_before_then_skip_the_reclaim() {
        let clock = crate::clock::ManualClock::new();
        let ledger = MemoryLedger::builder().clock(clock.clone()).build();
        let acct = AccountId::new("acct_due").unwrap();
        ledger.do_top_up(&acct, 100, "pay-1").unwrap();
        let reserve = |id: &HoldId, amount, secs| {
            let r = Reserve::new(acct.clone(), id.clone(), amount).ttl(Duration::from_secs(secs));
            ledger.do_reserve(r).unwrap();
        };
        let held = || ledger.balance(&acct).into_inner().unwrap().held;
        let settle_short = |id: &HoldId| ledger.do_settle(&acct, id, Some(5), None).unwrap();
        // A later hold first, then a sooner one: the sooner one sets when work is due.
        let (long, short) = (HoldId::generate(), HoldId::generate());
        reserve(&long, 10, 60);
        reserve(&short, 5, 2);
        clock.advance(Duration::from_millis(1_999));
        assert_eq!(held(), 15, "nothing expired yet");
        clock.advance(Duration::from_millis(1));
        assert_eq!(held(), 10, "the 2 s hold expired at 2 s");
        assert_eq!(settle_short(&short).outcome, SettleOutcome::Expired);
        // A hold extended to expire sooner than it would have expires at its new time.
        let (kept, cut) = (HoldId::generate(), HoldId::generate());
        reserve(&kept, 1, 600);
        reserve(&cut, 20, 600);
        // (Before anything else is due: the expired id is forgotten at 3 s.)
        ledger
            .do_extend(&acct, &cut, Duration::from_millis(500))
            .unwrap();
        clock.advance(Duration::from_millis(500));
        assert_eq!(held(), 11, "the extended hold expired at its new time");
        // Closed ids are still forgotten on time: expired at 2 s, forgotten at 3 s.
        clock.advance(Duration::from_millis(499));
        assert_eq!(settle_short(&short).outcome, SettleOutcome::Expired);
        clock.advance(Duration::from_millis(1));
        assert_eq!(settle_short(&short).outcome, SettleOutcome::Unknown);
    }

    #[test]
    fn a_refund_tombstone_lives_as_long_as_the_longest_hold_reserved() {
        let clock = crate::clock::ManualClock::new();
        let ledger = MemoryLedger::builder().clock(clock.clone()).build();
        let acct = AccountId::new("acct_tomb").unwrap();
        ledger.do_top_up(&acct, 10, "pay-1").unwrap();
        let ttl = Duration::from_secs(600);
        let first = HoldId::generate();
        ledger
            .do_reserve(Reserve::new(acct.clone(), first.clone(), 1).ttl(ttl))
            .unwrap();
        ledger.do_settle(&acct, &first, None, None).unwrap();
        let late = HoldId::generate();
        ledger.do_settle(&acct, &late, None, None).unwrap();
        // Past the default TTL, the tombstone still stands for a 600 s reserve.
        clock.advance(Duration::from_secs(600));
        let r = ledger
            .do_reserve(Reserve::new(acct.clone(), late.clone(), 1).ttl(ttl))
            .unwrap();
        assert_eq!(r, ReserveOutcome::Closed(SettleOutcome::AlreadyRefunded));
        clock.advance(Duration::from_secs(2));
        ledger.do_top_up(&acct, 1, "pay-2").unwrap();
        assert!(ledger.shard(&acct).lock().accounts[&acct]
            .activity
            .is_none());
    }

    #[test]
    fn ids_that_meet_in_their_key_never_share_a_hold() {
        // A 2^-128 event, made here by hand: the open hold of h1's key is another id's.
        let ledger = MemoryLedger::new();
        let acct = AccountId::new("acct_keys").unwrap();
        ledger.do_top_up(&acct, 100, "pay-1").unwrap();
        let (mine, theirs) = (HoldId::new("h1").unwrap(), HoldId::new("h2").unwrap());
        ledger
            .do_reserve(Reserve::new(acct.clone(), theirs.clone(), 30))
            .unwrap();
        {
            let mut shard = ledger.shard(&acct).lock();
            let activity = shard.accounts.get_mut(&acct).unwrap().activity.as_mut();
            let holds = &mut activity.unwrap().holds;
            let hold = holds.remove(id_key(&theirs)).unwrap();
            holds.insert(id_key(&mine), hold);
        }
        fn corrupt<T>(r: Result<T, LedgerError>) -> bool {
            matches!(r, Err(LedgerError::Corrupt(_)))
        }
        let reserve = Reserve::new(acct.clone(), mine.clone(), 30);
        assert!(
            corrupt(ledger.do_reserve(reserve)),
            "not answered as its hold"
        );
        assert!(corrupt(ledger.do_settle(&acct, &mine, Some(30), None)));
        assert!(corrupt(ledger.do_extend(
            &acct,
            &mine,
            Duration::from_secs(5)
        )));
        assert!(corrupt(ledger.do_grow(&Grow::to(&acct, &mine, 40))));
        let balance = ledger.balance(&acct).into_inner().unwrap();
        assert_eq!((balance.held, balance.committed), (30, 0), "nothing moved");
    }

    #[test]
    fn hex_ids_are_keyed_by_the_number_they_spell() {
        let mut x = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        for _ in 0..10_000 {
            let text = format!("{x:032x}");
            assert_eq!(hex_value(text.as_bytes().try_into().unwrap()), x, "{text}");
            x = x
                .wrapping_mul(0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15)
                .wrapping_add(1);
        }
        for edge in [0, u128::MAX, 1 << 127, 0xf] {
            let text = format!("{edge:032x}");
            assert_eq!(hex_value(text.as_bytes().try_into().unwrap()), edge);
        }
        let id = HoldId::generate();
        let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(id_key(&id), uuid.as_u128());
    }

    #[test]
    fn id_keys_follow_the_text_of_an_id() {
        let generated = HoldId::generate();
        let same_text = HoldId::new(generated.as_str()).unwrap();
        assert_eq!(id_key(&generated), id_key(&same_text));
        assert_ne!(id_key(&generated), id_key(&HoldId::generate()));
        let upper = HoldId::new(generated.as_str().to_uppercase()).unwrap();
        if upper != generated {
            assert_ne!(id_key(&upper), id_key(&generated));
        }
        let chosen = HoldId::new("order-42").unwrap();
        assert_eq!(id_key(&chosen), id_key(&HoldId::new("order-42").unwrap()));
        assert_ne!(id_key(&chosen), id_key(&HoldId::new("order-43").unwrap()));
    }
}
