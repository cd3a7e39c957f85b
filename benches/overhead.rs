//! In-process cost of the layer, on `MemoryLedger`: issue items 1, 5 and 6 (memory part).
//!
//! * `request/*`: one request through `service_fn` bare, behind `CreditLayer`, and behind
//!   `tower_governor` (keyed by the `authorization` header, a limit it never reaches), with
//!   the response body read to its end (that is when a hold settles). Reports ns/request
//!   (criterion median), the cost each layer adds, their ratio, and heap allocations per
//!   request counted by a counting global allocator.
//! * `scale/*`: a reserve + commit with 1k, 100k and 1M accounts; with 0 and 10k open holds
//!   on the account; 64 tasks on one hot account vs 64 tasks on 64 accounts.
//! * memory: heap bytes per idle (funded, no open holds) account.
//!
//! `cargo bench --bench overhead`; results also go to `target/bench-report/overhead.json`.

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::Criterion;
use http::{Request, Response};
use http_body_util::BodyExt;
use support::alloc::{allocations, live_bytes, Counting};
use support::report::{Report, Target};
use tower::{Layer, Service, ServiceExt};
use tower_credits::pricing::Pricing;
use tower_credits::{
    AccountId, ApiKeyHash, CreditLayer, HoldId, Ledger, MemoryLedger, Reserve, MAX_AMOUNT,
};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

#[global_allocator]
static ALLOC: Counting = Counting;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request() -> Request<Body> {
    Request::get("/v1/echo")
        .header("authorization", "Bearer bench-key")
        .body(Body::empty())
        .unwrap()
}

async fn ok(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::from("echo")))
}

/// Calls `svc` once and reads the response body to its end.
async fn one<S, B>(mut svc: S)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = svc.ready().await.unwrap().call(request()).await.unwrap();
    response.into_body().collect().await.unwrap();
}

/// tower_governor keyed by the caller's `authorization` header, as a billing layer is.
#[derive(Clone)]
struct ByAuthorization;

impl KeyExtractor for ByAuthorization {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<String, GovernorError> {
        req.headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// Allocations per call of `svc`, over `n` calls after a warm-up.
fn allocations_per_request<S, B>(rt: &tokio::runtime::Runtime, svc: &S, n: u64) -> f64
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        for _ in 0..1000 {
            one(svc.clone()).await;
        }
        let before = allocations();
        for _ in 0..n {
            one(svc.clone()).await;
        }
        (allocations() - before) as f64 / n as f64
    })
}

fn funded_ledger(rt: &tokio::runtime::Runtime) -> (MemoryLedger, AccountId) {
    let ledger = MemoryLedger::new();
    let acct = AccountId::new("bench").unwrap();
    rt.block_on(async {
        ledger.top_up(&acct, MAX_AMOUNT, "bench").await.unwrap();
        ledger
            .register_api_key(&ApiKeyHash::of("bench-key"), &acct)
            .await
            .unwrap();
    });
    (ledger, acct)
}

fn request_overhead(c: &mut Criterion, report: &mut Report) {
    let rt = runtime();
    let (ledger, _) = funded_ledger(&rt);
    let bare = tower::service_fn(ok);
    let billed = CreditLayer::new(ledger)
        .pricing(Pricing::new().route("GET /v1/echo", 1))
        .layer(bare);
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(ByAuthorization)
        .finish()
        .unwrap();
    let governed = GovernorLayer::new(config).layer(bare);

    let mut group = c.benchmark_group("request");
    group.bench_function("bare", |b| b.to_async(&rt).iter(|| one(bare)));
    group.bench_function("credit_layer", |b| {
        b.to_async(&rt).iter(|| one(billed.clone()))
    });
    group.bench_function("tower_governor", |b| {
        b.to_async(&rt).iter(|| one(governed.clone()))
    });
    group.finish();

    let section = "1. layer overhead (in process, MemoryLedger)";
    let bare_ns = median_ns("request", "bare");
    let ours_ns = median_ns("request", "credit_layer");
    let gov_ns = median_ns("request", "tower_governor");
    report.row(section, "bare service_fn", bare_ns, "ns/req", Target::None);
    report.row(section, "with CreditLayer", ours_ns, "ns/req", Target::None);
    report.row(section, "with tower_governor", gov_ns, "ns/req", Target::None);
    let ours_added = ours_ns - bare_ns;
    let gov_added = gov_ns - bare_ns;
    report.row(section, "added by CreditLayer", ours_added, "ns/req", Target::None);
    report.row(section, "added by tower_governor", gov_added, "ns/req", Target::None);
    report.row(
        section,
        "added cost: CreditLayer / tower_governor",
        ours_added / gov_added,
        "x",
        Target::AtMost(2.0),
    );

    let n = 20_000;
    let bare_allocs = allocations_per_request(&rt, &bare, n);
    let ours_allocs = allocations_per_request(&rt, &billed, n);
    let gov_allocs = allocations_per_request(&rt, &governed, n);
    report.row(section, "allocations: bare request + response", bare_allocs, "allocs/req", Target::None);
    report.row(
        section,
        "allocations added by CreditLayer",
        ours_allocs - bare_allocs,
        "allocs/req",
        Target::AtMost(8.0),
    );
    report.row(
        section,
        "allocations added by tower_governor",
        gov_allocs - bare_allocs,
        "allocs/req",
        Target::None,
    );
}

async fn reserve_commit(ledger: &MemoryLedger, acct: &AccountId) {
    let hold = HoldId::generate();
    ledger
        .reserve(Reserve::new(acct.clone(), hold.clone(), 1))
        .await
        .unwrap();
    ledger.commit(acct, &hold, 1).await.unwrap();
}

fn accounts(n: usize) -> Vec<AccountId> {
    (0..n)
        .map(|i| AccountId::new(format!("acct_{i}")).unwrap())
        .collect()
}

fn scale(c: &mut Criterion, report: &mut Report) {
    let rt = runtime();
    let section = "5. scale with the work (MemoryLedger)";
    let mut group = c.benchmark_group("scale");
    for n in [1_000usize, 100_000, 1_000_000] {
        let ledger = MemoryLedger::new();
        let ids = accounts(n);
        rt.block_on(async {
            for a in &ids {
                ledger.top_up(a, MAX_AMOUNT, "bench").await.unwrap();
            }
        });
        // A cheap LCG walks the accounts in a scattered order, so the big tables are
        // touched the way random callers touch them (cache misses included).
        let mut i = 0usize;
        group.bench_function(format!("accounts_{n}"), |b| {
            b.to_async(&rt).iter(|| {
                i = (i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407)) % n;
                let acct = ids[i].clone();
                let ledger = ledger.clone();
                async move { reserve_commit(&ledger, &acct).await }
            })
        });
    }
    for open in [0usize, 10_000] {
        let ledger = MemoryLedger::new();
        let acct = AccountId::new("holder").unwrap();
        rt.block_on(async {
            ledger.top_up(&acct, MAX_AMOUNT, "bench").await.unwrap();
            for _ in 0..open {
                let r = Reserve::new(acct.clone(), HoldId::generate(), 1)
                    .ttl(Duration::from_secs(3600));
                ledger.reserve(r).await.unwrap();
            }
        });
        group.bench_function(format!("open_holds_{open}"), |b| {
            b.to_async(&rt).iter(|| reserve_commit(&ledger, &acct))
        });
    }
    group.finish();
    let one_k = median_ns("scale", "accounts_1000");
    for n in [1_000usize, 100_000, 1_000_000] {
        report.row(
            section,
            &format!("reserve+commit, {n} accounts"),
            median_ns("scale", &format!("accounts_{n}")),
            "ns",
            Target::None,
        );
    }
    report.row(
        section,
        "1M accounts / 1k accounts",
        median_ns("scale", "accounts_1000000") / one_k,
        "x",
        Target::AtMost(1.2),
    );
    let no_holds = median_ns("scale", "open_holds_0");
    let many_holds = median_ns("scale", "open_holds_10000");
    report.row(section, "reserve+commit, 0 open holds", no_holds, "ns", Target::None);
    report.row(section, "reserve+commit, 10k open holds", many_holds, "ns", Target::None);
    report.row(
        section,
        "10k open holds / 0 open holds",
        many_holds / no_holds,
        "x",
        Target::AtMost(1.3),
    );

    // 64 tasks on a two-worker runtime: all on one account, then each on its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ledger = MemoryLedger::new();
    let ids = accounts(64);
    rt.block_on(async {
        for a in &ids {
            ledger.top_up(a, MAX_AMOUNT, "bench").await.unwrap();
        }
    });
    let per_task = 20_000;
    let run = |hot: bool| {
        rt.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..64)
                .map(|t| {
                    let ledger = ledger.clone();
                    let acct = ids[if hot { 0 } else { t }].clone();
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            reserve_commit(&ledger, &acct).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            (64 * per_task) as f64 / start.elapsed().as_secs_f64()
        })
    };
    run(false); // warm-up
    let spread = median_of(5, || run(false));
    let hot = median_of(5, || run(true));
    report.row(section, "64 tasks on 64 accounts", spread, "pairs/s", Target::None);
    report.row(section, "64 tasks on one hot account", hot, "pairs/s", Target::None);
    report.row(section, "hot / spread throughput", hot / spread, "x", Target::None);
}

fn memory(report: &mut Report) {
    let rt = runtime();
    let section = "6. memory per idle account";
    let n = 100_000;
    let ledger = MemoryLedger::new();
    let before = live_bytes();
    rt.block_on(async {
        for i in 0..n {
            let acct = AccountId::new(format!("acct_{i:06}")).unwrap();
            ledger.top_up(&acct, 1_000, "initial").await.unwrap();
        }
    });
    let after = live_bytes();
    report.row(
        section,
        "MemoryLedger, funded account with no open holds (id of 11 bytes)",
        (after - before) as f64 / n as f64,
        "bytes",
        Target::AtMost(256.0),
    );
    drop(ledger);
}

fn median_of(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut xs: Vec<f64> = (0..runs).map(|_| f()).collect();
    xs.sort_by(f64::total_cmp);
    xs[runs / 2]
}

/// Median time of one benchmark of this run, from criterion's estimates.
fn median_ns(group: &str, name: &str) -> f64 {
    let path = support::report::report_dir()
        .parent()
        .unwrap()
        .join(format!("criterion/{group}/{name}/new/estimates.json"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("criterion estimates")).unwrap();
    json["median"]["point_estimate"].as_f64().unwrap()
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    // `cargo bench --bench overhead -- request` runs only that part (for a profiler);
    // the report is written only by a whole run.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |part: &str| filter.as_deref().is_none_or(|f| part.starts_with(f) || f.starts_with(part));
    let mut report = Report::new("overhead");
    if wanted("request") {
        request_overhead(&mut c, &mut report);
    }
    if wanted("scale") {
        scale(&mut c, &mut report);
    }
    if wanted("memory") {
        memory(&mut report);
    }
    c.final_summary();
    if filter.is_none() {
        report.write();
    }
}
