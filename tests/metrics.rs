//! The metrics of `metrics::Metered` after known traffic, read with `metrics-util`'s
//! debugging recorder (installed per test, on the test's own thread).

mod support;

use std::collections::BTreeMap;
use std::future::{ready, Future, Ready};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower_credits::clock::ManualClock;
use tower_credits::ledger::{HoldId, Reserve, ReserveOutcome, Settle, SettleOutcome};
use tower_credits::metrics::Metered;
use tower_credits::{
    AccountId, ApiKeyHash, Ledger, LedgerAdmin, LedgerError, LedgerReports, MemoryLedger, TopUp,
};

/// Serializes this binary's tests. `tracing` caches whether a callsite is enabled, for
/// every thread at once: a test on another thread that opens the same spans with no
/// subscriber, while a span test registers its capturing one, can leave that cache stale
/// for the span test (the spans then go nowhere).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One metric as the recorder saw it: `name{label=value,...}`.
type Snapshot = BTreeMap<String, DebugValue>;

/// Runs `traffic` on a current-thread runtime with a fresh debugging recorder, and returns
/// what it recorded.
fn recorded<F: Future<Output = ()>>(traffic: impl FnOnce() -> F) -> Snapshot {
    let _serial = serial();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(traffic()));
    read(&snapshotter)
}

/// What a debugging recorder has recorded so far, by `name{label=value,...}`.
fn read(snapshotter: &metrics_util::debugging::Snapshotter) -> Snapshot {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let name = if labels.is_empty() {
                key.name().to_owned()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            (name, value)
        })
        .collect()
}

fn counter(snapshot: &Snapshot, name: &str) -> u64 {
    match snapshot.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        other => panic!("{name} is not a counter: {other:?}"),
    }
}

fn gauge(snapshot: &Snapshot, name: &str) -> f64 {
    match snapshot.get(name) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name} is not a gauge: {other:?} in {snapshot:#?}"),
    }
}

fn observations(snapshot: &Snapshot, name: &str) -> usize {
    match snapshot.get(name) {
        Some(DebugValue::Histogram(values)) => {
            assert!(values.iter().all(|v| v.into_inner() >= 0.0));
            values.len()
        }
        None => 0,
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

fn acct(id: &str) -> AccountId {
    AccountId::new(id).unwrap()
}

fn hold(id: &str) -> HoldId {
    HoldId::new(id).unwrap()
}

/// `Metered` keeps its handles: once it has recorded into a recorder, it goes on recording
/// into that one, even under another (install the recorder before serving, as its docs say).
#[test]
fn a_metered_ledger_records_into_the_recorder_it_first_recorded_into() {
    let _serial = serial();
    let (first, second) = (DebuggingRecorder::new(), DebuggingRecorder::new());
    let (first_seen, second_seen) = (first.snapshotter(), second.snapshotter());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ledger = Metered::new(MemoryLedger::new());
    let a = acct("acct_bound");
    let pair = |id: &'static str| {
        let (ledger, a) = (ledger.clone(), a.clone());
        async move {
            ledger
                .reserve(Reserve::new(a.clone(), hold(id), 10))
                .await
                .unwrap();
            ledger.commit(&a, &hold(id), 4).await.unwrap();
        }
    };
    metrics::with_local_recorder(&first, || {
        runtime.block_on(async {
            ledger
                .top_up(TopUp::new(&a, 100, "pay-bound"))
                .await
                .unwrap();
            pair("b1").await;
        })
    });
    metrics::with_local_recorder(&second, || runtime.block_on(pair("b2")));
    let (first_seen, second_seen) = (read(&first_seen), read(&second_seen));
    assert_eq!(counter(&first_seen, "credits_reserved_total"), 20);
    assert_eq!(counter(&first_seen, "credits_committed_total"), 8);
    assert_eq!(
        observations(&first_seen, "credits_ledger_duration_seconds{op=reserve}"),
        2
    );
    assert_eq!(counter(&second_seen, "credits_reserved_total"), 0);
    assert_eq!(
        observations(&second_seen, "credits_ledger_duration_seconds{op=reserve}"),
        0
    );
}

/// Known traffic straight on the ledger: every counter, the gauge and the histogram.
#[test]
fn credit_counters_after_known_traffic() {
    let clock = ManualClock::new();
    let snapshot = recorded(|| async move {
        let ledger = Metered::new(MemoryLedger::builder().clock(clock.clone()).build());
        let a = acct("acct_m");
        ledger.top_up(TopUp::new(&a, 1000, "pay-1")).await.unwrap();
        // Committed 30 of 100: 30 committed, 70 back.
        ledger
            .reserve(Reserve::new(a.clone(), hold("h1"), 100))
            .await
            .unwrap();
        ledger.commit(&a, &hold("h1"), 30).await.unwrap();
        // Refunded: 50 back.
        ledger
            .reserve(Reserve::new(a.clone(), hold("h2"), 50))
            .await
            .unwrap();
        ledger.refund(&a, &hold("h2")).await.unwrap();
        // Reserved twice under one id (a retry): held, and counted, once; left open.
        ledger
            .reserve(Reserve::new(a.clone(), hold("h3"), 20))
            .await
            .unwrap();
        let retry = ledger
            .reserve(Reserve::new(a.clone(), hold("h3"), 20))
            .await
            .unwrap();
        assert!(matches!(retry, ReserveOutcome::Held(h) if h.replayed));
        // Refused: nothing reserved.
        let refused = ledger
            .reserve(Reserve::new(a.clone(), hold("h4"), 5000))
            .await
            .unwrap();
        assert!(matches!(refused, ReserveOutcome::Insufficient(_)));
        // A settle replayed: nothing moves, nothing counted.
        let again = ledger.commit(&a, &hold("h1"), 30).await.unwrap();
        assert_eq!(again.outcome, SettleOutcome::AlreadyCommitted);
        // Expired before its commit: its 10 credits are counted expired.
        ledger
            .reserve(Reserve::new(a.clone(), hold("h5"), 10).ttl(Duration::from_secs(1)))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(2));
        let late = ledger.commit(&a, &hold("h5"), 10).await.unwrap();
        assert_eq!(late.outcome, SettleOutcome::Expired);
        ledger.balance(&a).await.unwrap();
    });

    assert_eq!(
        counter(&snapshot, "credits_reserved_total"),
        100 + 50 + 20 + 10
    );
    assert_eq!(counter(&snapshot, "credits_committed_total"), 30);
    assert_eq!(counter(&snapshot, "credits_refunded_total"), 70 + 50);
    assert_eq!(counter(&snapshot, "credits_expired_total"), 10);
    assert_eq!(gauge(&snapshot, "credits_open_holds"), 1.0, "h3 is open");
    // reserved = committed + refunded + expired + still held (h3's 20).
    assert_eq!(180, 30 + 120 + 10 + 20);
    assert_eq!(
        observations(&snapshot, "credits_ledger_duration_seconds{op=reserve}"),
        6
    );
    assert_eq!(
        observations(&snapshot, "credits_ledger_duration_seconds{op=settle}"),
        4
    );
    assert_eq!(
        observations(&snapshot, "credits_ledger_duration_seconds{op=top_up}"),
        1
    );
    assert_eq!(
        observations(&snapshot, "credits_ledger_duration_seconds{op=balance}"),
        1
    );
    // No store failed; no label carries the account.
    assert!(!snapshot
        .keys()
        .any(|k| k.starts_with("credits_store_errors_total")));
    assert!(
        !snapshot.keys().any(|k| k.contains("acct_m")),
        "an account id in a label without opting in: {snapshot:#?}"
    );
}

/// The `account` label only when opted in.
#[test]
fn account_label_only_when_opted_in() {
    let snapshot = recorded(|| async {
        let ledger = Metered::new(MemoryLedger::new()).per_account(true);
        for (account, amount) in [("acct_x", 7), ("acct_y", 9)] {
            let a = acct(account);
            ledger.top_up(TopUp::new(&a, 100, account)).await.unwrap();
            let h = HoldId::generate();
            ledger
                .reserve(Reserve::new(a.clone(), h.clone(), amount))
                .await
                .unwrap();
            ledger.commit(&a, &h, amount).await.unwrap();
        }
    });
    assert_eq!(
        counter(&snapshot, "credits_reserved_total{account=acct_x}"),
        7
    );
    assert_eq!(
        counter(&snapshot, "credits_committed_total{account=acct_y}"),
        9
    );
    assert_eq!(
        counter(&snapshot, "credits_reserved_total"),
        0,
        "no unlabelled series"
    );
    // The gauge and the histogram stay without accounts whatever the option.
    assert_eq!(gauge(&snapshot, "credits_open_holds"), 0.0);
    assert!(snapshot
        .keys()
        .filter(|k| k.starts_with("credits_ledger_duration_seconds")
            || k.starts_with("credits_open_holds"))
        .all(|k| !k.contains("account")));
}

/// A ledger whose every call fails with the next error of a list.
#[derive(Clone)]
struct Failing(std::sync::Arc<std::sync::Mutex<Vec<LedgerError>>>);

impl Failing {
    fn fail<T>(&self) -> Ready<Result<T, LedgerError>> {
        ready(Err(self.0.lock().unwrap().remove(0)))
    }
}

impl Ledger for Failing {
    type Future<T: Send + 'static> = Ready<Result<T, LedgerError>>;
    fn reserve(&self, _: Reserve) -> Self::Future<ReserveOutcome> {
        self.fail()
    }
    fn settle(&self, _: Settle) -> Self::Future<tower_credits::ledger::Settlement> {
        self.fail()
    }
    fn extend(
        &self,
        _: tower_credits::ledger::Extend,
    ) -> Self::Future<tower_credits::ledger::Extended> {
        self.fail()
    }
    fn grow(
        &self,
        _: tower_credits::ledger::Grow,
    ) -> Self::Future<tower_credits::ledger::GrowOutcome> {
        self.fail()
    }
    fn store_response(&self, _: tower_credits::ledger::StoreResponse) -> Self::Future<bool> {
        self.fail()
    }
    fn lookup_api_key(&self, _: &ApiKeyHash) -> Self::Future<Option<AccountId>> {
        self.fail()
    }
}

/// Store errors by kind; the caller's own mistakes are not store errors.
#[test]
fn store_errors_by_kind() {
    let snapshot = recorded(|| async {
        let errors = vec![
            LedgerError::Timeout(Duration::from_millis(50)),
            LedgerError::Unavailable("connection refused".into()),
            LedgerError::Unavailable("loading".into()),
            LedgerError::Corrupt("unexpected reply".into()),
            LedgerError::InvalidHoldId,
        ];
        let ledger = Metered::new(Failing(std::sync::Arc::new(std::sync::Mutex::new(errors))));
        let a = acct("acct_e");
        for _ in 0..3 {
            assert!(ledger
                .reserve(Reserve::new(a.clone(), HoldId::generate(), 1))
                .await
                .is_err());
        }
        assert!(ledger.refund(&a, &hold("h")).await.is_err());
        assert!(ledger.lookup_api_key(&ApiKeyHash::of("k")).await.is_err());
    });
    assert_eq!(
        counter(&snapshot, "credits_store_errors_total{kind=timeout}"),
        1
    );
    assert_eq!(
        counter(&snapshot, "credits_store_errors_total{kind=unavailable}"),
        2
    );
    assert_eq!(
        counter(&snapshot, "credits_store_errors_total{kind=corrupt}"),
        1
    );
    assert_eq!(
        snapshot
            .keys()
            .filter(|k| k.starts_with("credits_store_errors_total"))
            .count(),
        3
    );
    // Failed calls are timed too; no hold was opened.
    assert_eq!(
        observations(&snapshot, "credits_ledger_duration_seconds{op=reserve}"),
        3
    );
    assert_eq!(
        observations(
            &snapshot,
            "credits_ledger_duration_seconds{op=lookup_api_key}"
        ),
        1
    );
    assert_eq!(counter(&snapshot, "credits_reserved_total"), 0);
}

/// A replica places holds and dies (no `Metered` wrapper ever saw them); they expire. The
/// credits are counted expired by whichever call reclaims them, from the ledger's own
/// answer: a reserve on the account (its script reclaims first), and the sweeper for an
/// account nobody calls again. Each credit once: later calls count nothing more.
async fn expired_counted_where_reclaimed<L, F>(dead: L, clock: ManualClock, sweep: impl Fn() -> F)
where
    L: Ledger + LedgerAdmin + LedgerReports + Clone,
    F: Future<Output = ()>,
{
    let alive = Metered::new(dead.clone());
    let (busy, idle) = (acct("acct_busy"), acct("acct_idle"));
    for account in [&busy, &idle] {
        dead.top_up(TopUp::new(account, 1000, account.as_str()))
            .await
            .unwrap();
    }
    let ttl = Duration::from_secs(1);
    for (account, id, amount) in [(&busy, "d1", 20), (&busy, "d2", 30), (&idle, "d3", 7)] {
        let placed = dead
            .reserve(Reserve::new(account.clone(), hold(id), amount).ttl(ttl))
            .await
            .unwrap();
        assert!(matches!(placed, ReserveOutcome::Held(_)), "{placed:?}");
    }
    // Not yet expired: nothing reclaimed, nothing counted.
    sweep().await;
    let placed = alive
        .reserve(Reserve::new(busy.clone(), hold("a1"), 5).ttl(ttl))
        .await
        .unwrap();
    assert!(matches!(placed, ReserveOutcome::Held(_)), "{placed:?}");
    clock.advance(Duration::from_secs(2));
    // The busy account's next reserve reclaims d1 and d2 (and a1) and still answers as
    // usual.
    let placed = alive
        .reserve(Reserve::new(busy.clone(), hold("a2"), 5))
        .await
        .unwrap();
    assert!(matches!(placed, ReserveOutcome::Held(_)), "{placed:?}");
    // Nobody calls the idle account again: the sweeper reclaims d3.
    sweep().await;
    // Counted once: a second sweep and more calls find nothing left to reclaim.
    sweep().await;
    let settled = alive.commit(&busy, &hold("a2"), 5).await.unwrap();
    assert_eq!(settled.outcome, SettleOutcome::Committed);
    assert_eq!(alive.balance(&idle).await.unwrap().held, 0, "d3 went back");
    assert_eq!(alive.balance(&busy).await.unwrap().held, 0);
}

#[test]
fn expired_credits_counted_where_reclaimed_in_memory() {
    let snapshot = recorded(|| async {
        let clock = ManualClock::new();
        let dead = MemoryLedger::builder().clock(clock.clone()).build();
        let sweeper = dead.clone();
        expired_counted_where_reclaimed(dead, clock, move || {
            sweeper.sweep_expired();
            ready(())
        })
        .await;
    });
    // d1 + d2 + d3, and a1 (this replica's own hold, left to expire).
    assert_eq!(counter(&snapshot, "credits_expired_total"), 20 + 30 + 7 + 5);
    assert_eq!(
        counter(&snapshot, "credits_reserved_total"),
        10,
        "the dead replica's holds were never this wrapper's"
    );
}

/// The same on Redis, through both ways of calling the scripts (Redis Functions and
/// `EVALSHA`): the reply's envelope is read off for the reserve that reclaims and for the
/// sweeper.
#[test]
fn expired_credits_counted_where_reclaimed_on_redis() {
    let server = support::redis::RedisServer::start();
    for evalsha_only in [false, true] {
        server.cli(&["FLUSHALL"]);
        let url = server.url();
        let snapshot = recorded(|| async move {
            let clock = ManualClock::new();
            let mut builder = tower_credits::ledger::RedisLedger::builder()
                .url(url)
                .call_timeout(Duration::from_secs(5))
                .test_clock(clock.clone());
            if evalsha_only {
                builder = builder.evalsha_only();
            }
            let dead = builder.build().await.unwrap();
            let sweeper = dead.clone();
            expired_counted_where_reclaimed(dead, clock, move || {
                let sweeper = sweeper.clone();
                async move {
                    sweeper.sweep_expired().await.unwrap();
                }
            })
            .await;
        });
        assert_eq!(
            counter(&snapshot, "credits_expired_total"),
            20 + 30 + 7 + 5,
            "evalsha_only: {evalsha_only}"
        );
    }
}

/// Through the layer: billed requests over a metered ledger, and an API key that is never
/// a label.
#[test]
fn billed_requests_through_the_layer() {
    use axum::routing::get;
    use tower::ServiceExt;

    let snapshot = recorded(|| async {
        let ledger = Metered::new(MemoryLedger::new());
        let a = acct("acct_h");
        ledger.top_up(TopUp::new(&a, 100, "pay-h")).await.unwrap();
        ledger
            .register_api_key(&ApiKeyHash::of("secret-key-h"), &a)
            .await
            .unwrap();
        let app = axum::Router::new()
            .route("/v1/echo", get(|| async { "echo" }))
            .route(
                "/v1/fail",
                get(|| async { http::StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .route("/health", get(|| async { "ok" }))
            .layer(
                tower_credits::CreditLayer::new(ledger.clone()).pricing(
                    support::rig::pricing(&[("GET /v1/echo", 3), ("GET /v1/fail", 5)])
                        .free("GET /health"),
                ),
            );
        for (path, key) in [
            ("/v1/echo", "secret-key-h"),
            ("/v1/echo", "secret-key-h"),
            ("/v1/fail", "secret-key-h"),
            ("/v1/echo", "unknown-key"),
            ("/health", "secret-key-h"),
        ] {
            let request = http::Request::get(path)
                .header("authorization", format!("Bearer {key}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        }
        support::rig::wait_until("every settle", || {
            let ledger = ledger.clone();
            let a = a.clone();
            async move { ledger.balance(&a).await.unwrap().held == 0 }
        })
        .await;
    });
    assert_eq!(counter(&snapshot, "credits_reserved_total"), 3 + 3 + 5);
    assert_eq!(counter(&snapshot, "credits_committed_total"), 6);
    assert_eq!(
        counter(&snapshot, "credits_refunded_total"),
        5,
        "the failed call"
    );
    assert_eq!(gauge(&snapshot, "credits_open_holds"), 0.0);
    // Each request counted once, by how it ended (their keys are statics: see
    // `metrics::request`).
    let requests: BTreeMap<&str, u64> = snapshot
        .iter()
        .filter(|(k, _)| k.starts_with("credits_requests_total"))
        .map(|(k, _)| (k.as_str(), counter(&snapshot, k)))
        .collect();
    assert_eq!(
        requests,
        BTreeMap::from([
            ("credits_requests_total{outcome=billed,reason=ok}", 2),
            ("credits_requests_total{outcome=free,reason=ok}", 1),
            ("credits_requests_total{outcome=refunded,reason=failed}", 1),
            (
                "credits_requests_total{outcome=refused,reason=unauthorized}",
                1
            ),
        ])
    );
    let hash = ApiKeyHash::of("secret-key-h").to_hex();
    assert!(
        !snapshot
            .keys()
            .any(|k| k.contains("secret-key-h") || k.contains(&hash) || k.contains("acct_h")),
        "{snapshot:#?}"
    );
}

mod spans {
    //! The `credits.reserve` and `credits.settle` spans, captured by a test subscriber.

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::Subscriber;
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    use super::*;

    /// One span as the subscriber saw it: its name, its parent's name, its fields.
    #[derive(Debug, Clone, Default)]
    pub(super) struct Captured {
        pub(super) name: String,
        pub(super) parent: Option<String>,
        pub(super) fields: BTreeMap<String, String>,
    }

    #[derive(Clone, Default)]
    pub(super) struct Capture(Arc<Mutex<Vec<(Id, Captured)>>>);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut captured = Captured {
                name: attrs.metadata().name().to_owned(),
                parent: ctx
                    .span(id)
                    .and_then(|span| span.parent().map(|p| p.name().to_owned())),
                fields: BTreeMap::new(),
            };
            attrs.record(&mut Fields(&mut captured.fields));
            self.0.lock().unwrap().push((id.clone(), captured));
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
            let mut spans = self.0.lock().unwrap();
            if let Some((_, captured)) = spans.iter_mut().rev().find(|(i, _)| i == id) {
                values.record(&mut Fields(&mut captured.fields));
            }
        }
    }

    impl Capture {
        pub(super) fn named(&self, name: &str) -> Vec<Captured> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|(_, c)| c.clone())
                .filter(|c| c.name == name)
                .collect()
        }

        pub(super) fn all(&self) -> Vec<Captured> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|(_, c)| c.clone())
                .collect()
        }
    }

    /// Runs `work` on a current-thread runtime under a capturing subscriber.
    pub(super) fn captured<F: Future<Output = ()>>(work: impl FnOnce() -> F) -> Capture {
        let _serial = serial();
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || runtime.block_on(work()));
        capture
    }

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reserve_and_settle_spans_carry_their_fields_under_the_current_span() {
        let capture = captured(|| async {
            let ledger = Metered::new(MemoryLedger::new());
            let a = acct("acct_s");
            ledger.top_up(TopUp::new(&a, 1000, "pay-s")).await.unwrap();
            let request = tracing::info_span!("request");
            let work = async {
                ledger
                    .reserve(Reserve::new(a.clone(), hold("h-1"), 100))
                    .await
                    .unwrap();
                ledger.commit(&a, &hold("h-1"), 30).await.unwrap();
                ledger
                    .reserve(Reserve::new(a.clone(), hold("h-2"), 5000))
                    .await
                    .unwrap();
                ledger.refund(&a, &hold("h-3")).await.unwrap();
            };
            tracing::Instrument::instrument(work, request).await;
        });
        let reserves = capture.named("credits.reserve");
        assert_eq!(reserves.len(), 2, "{:#?}", capture.all());
        assert_eq!(reserves[0].parent.as_deref(), Some("request"));
        assert_eq!(
            reserves[0].fields,
            fields(&[
                ("account", "acct_s"),
                ("hold_id", "h-1"),
                ("price", "100"),
                ("outcome", "held"),
                ("held", "100"),
                ("available", "900"),
            ])
        );
        assert_eq!(
            reserves[1].fields,
            fields(&[
                ("account", "acct_s"),
                ("hold_id", "h-2"),
                ("price", "5000"),
                ("outcome", "insufficient"),
                ("available", "970"),
            ])
        );
        let settles = capture.named("credits.settle");
        assert_eq!(settles.len(), 2);
        assert!(settles
            .iter()
            .all(|s| s.parent.as_deref() == Some("request")));
        assert_eq!(
            settles[0].fields,
            fields(&[
                ("account", "acct_s"),
                ("hold_id", "h-1"),
                ("decision", "commit"),
                ("price", "30"),
                ("outcome", "committed"),
                ("committed", "30"),
                ("released", "70"),
            ])
        );
        assert_eq!(
            settles[1].fields,
            fields(&[
                ("account", "acct_s"),
                ("hold_id", "h-3"),
                ("decision", "refund"),
                ("outcome", "unknown"),
                ("committed", "0"),
                ("released", "0"),
            ])
        );
    }

    #[test]
    fn a_failed_call_is_an_error_outcome() {
        let capture = captured(|| async {
            let errors = vec![LedgerError::Unavailable("down".into())];
            let ledger = Metered::new(Failing(Arc::new(Mutex::new(errors))));
            let result = ledger
                .reserve(Reserve::new(acct("acct_f"), hold("h-f"), 3))
                .await;
            assert!(result.is_err());
        });
        let reserve = &capture.named("credits.reserve")[0];
        assert_eq!(reserve.fields["outcome"], "error");
        assert_eq!(reserve.parent, None, "no current span: a root");
    }

    /// Through the layer under `tower_http::trace`: the spans are the request span's
    /// children, and no span anywhere carries the API key.
    #[test]
    fn spans_through_the_layer_never_carry_the_key() {
        use axum::routing::get;
        use tower::ServiceExt;

        let capture = captured(|| async {
            let ledger = Metered::new(MemoryLedger::new());
            let a = acct("acct_l");
            ledger.top_up(TopUp::new(&a, 100, "pay-l")).await.unwrap();
            ledger
                .register_api_key(&ApiKeyHash::of("the-secret-api-key"), &a)
                .await
                .unwrap();
            let app = axum::Router::new()
                .route("/v1/echo", get(|| async { "echo" }))
                .layer(
                    tower_credits::CreditLayer::new(ledger.clone())
                        .pricing(support::rig::pricing(&[("GET /v1/echo", 2)])),
                )
                .layer(tower_http::trace::TraceLayer::new_for_http());
            let request = http::Request::get("/v1/echo")
                .header("authorization", "Bearer the-secret-api-key")
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), http::StatusCode::OK);
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            support::rig::wait_until("the commit", || {
                let ledger = ledger.clone();
                let a = a.clone();
                async move { ledger.balance(&a).await.unwrap().committed == 2 }
            })
            .await;
        });
        let reserve = &capture.named("credits.reserve")[0];
        assert_eq!(reserve.parent.as_deref(), Some("request"));
        assert_eq!(reserve.fields["account"], "acct_l");
        assert_eq!(reserve.fields["price"], "2");
        let settle = &capture.named("credits.settle")[0];
        assert_eq!(settle.fields["outcome"], "committed");
        assert_eq!(settle.fields["hold_id"], reserve.fields["hold_id"]);
        let hash = ApiKeyHash::of("the-secret-api-key").to_hex();
        for span in capture.all() {
            for value in span.fields.values() {
                assert!(
                    !value.contains("the-secret-api-key") && !value.contains(&hash),
                    "{span:?}"
                );
            }
        }
        assert_eq!(settle.parent.as_deref(), Some("request"));
    }
}
