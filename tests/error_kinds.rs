//! Errors are not outages: what a Redis ledger reports when its state is corrupt (a key of
//! the wrong type, a field that is not a number, a stored id that is not an id) is
//! `Corrupt`, never retried nor counted as an outage; a server that is gone or frozen is
//! `Unavailable` or `Timeout`.
//!
//! Every test starts its own `redis-server` (see `tests/support/redis.rs`).
//!
//! These tests read and poke an account's fields, so their ledgers keep the field form
//! (`pack_accounts(false)`); the packed form, the default, is tested by the conformance
//! suite, `tests/redis_packed_accounts.rs` and `tests/chaos_redis.rs`.

mod support;

use std::time::Duration;

use support::redis::RedisServer;
use tower_credits::ledger::RedisLedger;
use tower_credits::ledger::{ErrorKind, HoldId, Reserve, ReserveOutcome};
use tower_credits::{AccountId, ApiKeyHash, Ledger, LedgerError};
use tower_credits::{LedgerAdmin, LedgerReports, TopUp};

const PATIENT: Duration = Duration::from_secs(5);

fn acct(id: &str) -> AccountId {
    AccountId::new(id).unwrap()
}

fn hold(id: &str) -> HoldId {
    HoldId::new(id).unwrap()
}

async fn ledger(server: &RedisServer, timeout: Duration) -> RedisLedger {
    RedisLedger::builder()
        .pack_accounts(false)
        .url(server.url())
        .call_timeout(timeout)
        .build()
        .await
        .expect("connect to the test redis-server")
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, LedgerError>) {
    match r {
        Err(e) => {
            assert!(matches!(e, LedgerError::Corrupt(_)), "{e:?}");
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{e:?}");
            assert!(e.is_corrupt() && !e.is_unavailable(), "{e:?}");
        }
        Ok(v) => panic!("expected Corrupt, got {v:?}"),
    }
}

/// A key of the wrong type under an account (`holds` a string, not a hash) makes the
/// scripts hit `WRONGTYPE`: corrupt state, not an outage. Other accounts are untouched.
#[tokio::test]
async fn a_key_of_the_wrong_type_is_corrupt() {
    let server = RedisServer::start();
    let l = ledger(&server, PATIENT).await;
    let (a, fine) = (acct("acct_broken"), acct("acct_fine"));
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    l.top_up(TopUp::new(&fine, 100, "pay-2")).await.unwrap();
    assert_eq!(
        server.cli(&["SET", "credits:{acct_broken}:holds", "x"]),
        "OK"
    );

    assert_corrupt(l.reserve(Reserve::new(a.clone(), hold("h1"), 10)).await);
    assert_corrupt(l.commit(&a, &hold("h1"), 10).await);

    // The account hash itself a string: every script's first read fails.
    assert_eq!(
        server.cli(&["SET", "credits:{acct_broken}:acct", "x"]),
        "OK"
    );
    assert_corrupt(l.balance(&a).await);
    assert_corrupt(l.top_up(TopUp::new(&a, 5, "pay-3")).await);

    let held = l
        .reserve(Reserve::new(fine.clone(), hold("h1"), 10))
        .await
        .unwrap();
    assert!(matches!(held, ReserveOutcome::Held(_)), "{held:?}");
}

/// A counter that is not a number makes `HINCRBY` fail inside the script (`ERR hash value
/// is not an integer`): corrupt, and nothing credited.
#[tokio::test]
async fn a_script_error_is_corrupt() {
    let server = RedisServer::start();
    let l = ledger(&server, PATIENT).await;
    let a = acct("acct_nan");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    assert_eq!(
        server.cli(&["HSET", "credits:{acct_nan}:acct", "topped_up", "lots"]),
        "0"
    );
    assert_corrupt(l.top_up(TopUp::new(&a, 5, "pay-2")).await);
    assert_eq!(
        server.cli(&["HGET", "credits:{acct_nan}:acct", "topped_up"]),
        "lots"
    );
}

/// A stored value no ledger writes is an unexpected reply: corrupt. Here an API key that
/// maps to something that is not an account id, and a top-up claim of the wrong type.
#[tokio::test]
async fn an_unexpected_reply_is_corrupt() {
    let server = RedisServer::start();
    let l = ledger(&server, PATIENT).await;
    let key = ApiKeyHash::of("sk_corrupt");
    let stored = format!("credits:apikey:{}", key.to_hex());
    assert_eq!(server.cli(&["SET", &stored, "{not an id}"]), "OK");
    assert_corrupt(l.lookup_api_key(&key).await);

    let claim = l.top_up_claim_key("pay_hash");
    assert_eq!(server.cli(&["HSET", &claim, "f", "v"]), "1");
    let a = acct("acct_claim");
    assert_corrupt(l.top_up(TopUp::new(&a, 5, "pay_hash")).await);
    assert!(matches!(
        l.balance(&a).await,
        Err(LedgerError::UnknownAccount)
    ));
}

/// A frozen server is a `Timeout`, a killed one `Unavailable` (or a `Timeout`): both of
/// kind `Unavailable`, neither corrupt.
#[tokio::test]
async fn a_paused_or_killed_server_is_unavailable() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(200);
    let l = ledger(&server, timeout).await;
    let a = acct("acct_outage");
    l.top_up(TopUp::new(&a, 100, "pay-1")).await.unwrap();
    l.balance(&a).await.unwrap();

    server.pause();
    let r = l.balance(&a).await;
    server.resume();
    match r {
        Err(e @ LedgerError::Timeout(_)) => {
            assert_eq!(e.kind(), ErrorKind::Unavailable);
            assert!(e.is_unavailable() && !e.is_corrupt());
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    l.balance(&a).await.unwrap();

    server.kill();
    for _ in 0..3 {
        let e = l.balance(&a).await.unwrap_err();
        assert!(
            matches!(e, LedgerError::Unavailable(_) | LedgerError::Timeout(_)),
            "{e:?}"
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:?}");
        assert!(!e.is_corrupt());
        let e = l.top_up(TopUp::new(&a, 1, "pay-2")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:?}");
    }
}
