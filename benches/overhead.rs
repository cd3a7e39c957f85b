//! In-process cost of the layer, on `MemoryLedger`: issue items 1, 5 and 6 (memory part).
//!
//! * request: one request through `service_fn` bare, behind `CreditLayer`, and behind
//!   `tower_governor` (keyed by the `authorization` header, a limit it never reaches), with
//!   the response body read to its end (that is when a hold settles). Reports ns/request,
//!   the cost each layer adds, their ratio, and heap allocations per request counted by a
//!   counting global allocator.
//! * scale: a reserve + commit with 1k, 100k and 1M accounts; with 0 and 10k open holds on
//!   the account; 64 tasks on one hot account vs 64 tasks on 64 accounts.
//! * memory: heap bytes per idle (funded, no open holds) account.
//!
//! Timings are medians of rounds in which the variants compared run in turns (see
//! [`interleaved`]). `cargo bench --bench overhead` runs it all, `-- request`, `-- scale` or
//! `-- memory` one part; a whole run writes `target/bench-report/overhead.json`.

mod support;

use std::cell::Cell;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use support::alloc::{allocations, live_bytes, Counting};
use support::report::{Report, Target};
use tower::{Layer, Service, ServiceExt};
use tower_credits::clock::ManualClock;
use tower_credits::ledger::{HoldId, Reserve, MAX_AMOUNT};
use tower_credits::pricing::Pricing;
use tower_credits::{AccountId, ApiKeyHash, CreditLayer, Ledger, MemoryLedger};
use tower_credits::{LedgerAdmin, TopUp};
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

/// [`ok`] behind what `http` makes any billing layer pay: one value put in the request's
/// (empty) extensions, one header written into the response's (empty) header map.
async fn forced(mut req: Request<Body>) -> Result<Response<Body>, Infallible> {
    const COST: http::HeaderName = http::HeaderName::from_static("credits-cost");
    req.extensions_mut().insert(7u64);
    let mut response = ok(req).await?;
    response
        .headers_mut()
        .insert(COST, http::HeaderValue::from_static("1"));
    Ok(response)
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

/// `tower_governor` keyed by `authorization`, with a limit it never reaches (a macro: its
/// middleware type is not nameable from here).
macro_rules! governor_layer {
    () => {
        GovernorLayer::new(
            GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .key_extractor(ByAuthorization)
                .finish()
                .unwrap(),
        )
    };
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
        ledger
            .top_up(TopUp::new(&acct, MAX_AMOUNT, "bench"))
            .await
            .unwrap();
        ledger
            .register_api_key(&ApiKeyHash::of("bench-key"), &acct)
            .await
            .unwrap();
    });
    (ledger, acct)
}

/// The request bench's three services on `rt`: bare, behind the layer (a funded key, one
/// credit a call), behind `tower_governor` (a macro, for the governor's unnameable type).
macro_rules! request_services {
    ($rt:expr) => {{
        let (ledger, _) = funded_ledger($rt);
        let bare = tower::service_fn(ok);
        let billed = CreditLayer::new(ledger)
            .pricing(Pricing::new().route("GET /v1/echo", 1))
            .layer(bare);
        (bare, billed, governor_layer!().layer(bare))
    }};
}

fn request_overhead(report: &mut Report) {
    let rt = runtime();
    let (bare, billed, governed) = request_services!(&rt);

    // The three run in turns, round after round, and each figure is the median of its
    // rounds: on a noisy machine a burst of load then hits all three alike, which
    // benchmarks run one after the other cannot promise.
    let [bare_ns, ours_ns, gov_ns] = interleaved(
        15,
        20_000,
        [
            &mut |n| {
                rt.block_on(async {
                    for _ in 0..n {
                        one(bare).await
                    }
                })
            },
            &mut |n| {
                rt.block_on(async {
                    for _ in 0..n {
                        one(billed.clone()).await
                    }
                })
            },
            &mut |n| {
                rt.block_on(async {
                    for _ in 0..n {
                        one(governed.clone()).await
                    }
                })
            },
        ],
    );
    let section = "1. layer overhead (in process, MemoryLedger)";
    report.row(section, "bare service_fn", bare_ns, "ns/req", Target::None);
    report.row(section, "with CreditLayer", ours_ns, "ns/req", Target::None);
    report.row(
        section,
        "with tower_governor",
        gov_ns,
        "ns/req",
        Target::None,
    );
    let ours_added = ours_ns - bare_ns;
    let gov_added = gov_ns - bare_ns;
    report.row(
        section,
        "added by CreditLayer",
        ours_added,
        "ns/req",
        Target::None,
    );
    report.row(
        section,
        "added by tower_governor",
        gov_added,
        "ns/req",
        Target::None,
    );
    // A peer cheaper than the noise would make any ratio meaningless: say so as NaN.
    let ratio = if gov_added > 0.0 {
        ours_added / gov_added
    } else {
        f64::NAN
    };
    report.row(
        section,
        "added cost: CreditLayer / tower_governor",
        ratio,
        "x",
        Target::AtMost(5.0),
    );

    let n = 20_000;
    let bare_allocs = allocations_per_request(&rt, &bare, n);
    let ours_allocs = allocations_per_request(&rt, &billed, n);
    let gov_allocs = allocations_per_request(&rt, &governed, n);
    // What `http` itself makes any layer pay that puts one value in the request's (empty)
    // extensions and writes one header into the response's (empty) header map: the
    // extension map's box and table and the value's box (3), the header map's index and
    // entries (2). The layer's own allocations are what it adds beyond these.
    let forced_allocs = allocations_per_request(&rt, &tower::service_fn(forced), n);
    report.row(
        section,
        "allocations: bare request + response",
        bare_allocs,
        "allocs/req",
        Target::None,
    );
    report.row(
        section,
        "allocations added by CreditLayer",
        ours_allocs - bare_allocs,
        "allocs/req",
        Target::None,
    );
    report.row(
        section,
        "of which forced by http (one extension, one response header)",
        forced_allocs - bare_allocs,
        "allocs/req",
        Target::None,
    );
    report.row(
        section,
        "allocations of CreditLayer's own (added - forced)",
        ours_allocs - forced_allocs,
        "allocs/req",
        Target::AtMost(3.0),
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

fn funded(rt: &tokio::runtime::Runtime, ids: &[AccountId]) -> MemoryLedger {
    fund(rt, MemoryLedger::new(), ids)
}

/// A ledger of `ids` as a server that has run a while leaves it: each account funded and
/// used once (a reserve + commit of a 1 s hold), then, 3 s of its clock later, swept, so
/// every closed id is forgotten and its hold tables freed (their memory back with the
/// allocator, to be reused, not fresh pages the kernel must zero).
fn used(rt: &tokio::runtime::Runtime, ids: &[AccountId]) -> MemoryLedger {
    let clock = ManualClock::new();
    let ledger = fund(
        rt,
        MemoryLedger::builder().clock(clock.clone()).build(),
        ids,
    );
    rt.block_on(async {
        for a in ids {
            let hold = HoldId::generate();
            let r = Reserve::new(a.clone(), hold.clone(), 1).ttl(Duration::from_secs(1));
            ledger.reserve(r).await.unwrap();
            ledger.commit(a, &hold, 1).await.unwrap();
        }
    });
    clock.advance(Duration::from_secs(3));
    ledger.sweep_expired();
    ledger
}

fn fund(rt: &tokio::runtime::Runtime, ledger: MemoryLedger, ids: &[AccountId]) -> MemoryLedger {
    rt.block_on(async {
        for a in ids {
            ledger
                .top_up(TopUp::new(a, MAX_AMOUNT, format!("bench-{a}")))
                .await
                .unwrap();
        }
    });
    ledger
}

/// `n` reserve + commit pairs on accounts of `ids` drawn at random (splitmix64; its state
/// carried from round to round in `state`), so every account of a big table is as likely
/// as any other: a million accounts are touched the way a million random callers touch
/// them, cache misses, first touches and all.
///
/// (Until the seventh session this was an LCG whose output, reduced modulo the table's
/// size, was fed back as its state, restarted at 0 each round: a random mapping of the
/// indexes, which falls into a short cycle. Its rounds touched 45 of 1,000 accounts, 378
/// of 100,000 and 517 of 1,000,000, so "1M / 1k" compared two small hot sets.)
fn scattered(
    rt: &tokio::runtime::Runtime,
    ledger: &MemoryLedger,
    ids: &[AccountId],
    n: u64,
    state: &Cell<u64>,
) {
    rt.block_on(async {
        let mut s = state.get();
        for _ in 0..n {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            reserve_commit(ledger, &ids[(z % ids.len() as u64) as usize]).await;
        }
        state.set(s);
    })
}

fn scale(report: &mut Report) {
    let rt = runtime();
    let section = "5. scale with the work (MemoryLedger)";
    let sizes = [1_000usize, 100_000, 1_000_000];
    let ids: Vec<Vec<AccountId>> = sizes.iter().map(|&n| accounts(n)).collect();
    // Two states of the same tables: accounts funded and never used, so nearly every call
    // of the 1M run is an account's first (its hold tables, details and trail allocated
    // in memory the kernel must first zero); and accounts each used once before, their
    // hold tables freed, as a server that has run a while keeps them (the target's).
    for (state, warm) in [("first use", false), ("used before", true)] {
        let ledgers: Vec<MemoryLedger> = ids
            .iter()
            .map(|ids| {
                if warm {
                    used(&rt, ids)
                } else {
                    funded(&rt, ids)
                }
            })
            .collect();
        let states = [Cell::new(1), Cell::new(2), Cell::new(3)];
        let per_size = interleaved(
            11,
            20_000,
            [
                &mut |n| scattered(&rt, &ledgers[0], &ids[0], n, &states[0]),
                &mut |n| scattered(&rt, &ledgers[1], &ids[1], n, &states[1]),
                &mut |n| scattered(&rt, &ledgers[2], &ids[2], n, &states[2]),
            ],
        );
        drop(ledgers);
        for (n, ns) in sizes.iter().zip(per_size) {
            report.row(
                section,
                &format!("reserve+commit, {n} accounts ({state})"),
                ns,
                "ns",
                Target::None,
            );
        }
        report.row(
            section,
            &format!("1M accounts / 1k accounts ({state})"),
            per_size[2] / per_size[0],
            "x",
            if warm {
                Target::AtMost(1.2)
            } else {
                Target::None
            },
        );
    }

    let holder = [AccountId::new("holder").unwrap()];
    let idle = funded(&rt, &holder);
    let busy = funded(&rt, &holder);
    rt.block_on(async {
        for _ in 0..10_000 {
            let r = Reserve::new(holder[0].clone(), HoldId::generate(), 1)
                .ttl(Duration::from_secs(3600));
            busy.reserve(r).await.unwrap();
        }
    });
    let [no_holds, many_holds] = interleaved(
        11,
        20_000,
        [
            &mut |n| scattered(&rt, &idle, &holder, n, &Cell::new(0)),
            &mut |n| scattered(&rt, &busy, &holder, n, &Cell::new(0)),
        ],
    );
    report.row(
        section,
        "reserve+commit, 0 open holds",
        no_holds,
        "ns",
        Target::None,
    );
    report.row(
        section,
        "reserve+commit, 10k open holds",
        many_holds,
        "ns",
        Target::None,
    );
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
    let ids = accounts(64);
    let ledger = funded(&rt, &ids);
    let run = |hot: bool, per_task: u64| {
        rt.block_on(async {
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
        })
    };
    let [spread_ns, hot_ns] = interleaved(
        7,
        64 * 2_000,
        [&mut |n| run(false, n / 64), &mut |n| run(true, n / 64)],
    );
    report.row(
        section,
        "64 tasks on 64 accounts",
        1e9 / spread_ns,
        "pairs/s",
        Target::None,
    );
    report.row(
        section,
        "64 tasks on one hot account",
        1e9 / hot_ns,
        "pairs/s",
        Target::None,
    );
    report.row(
        section,
        "hot / spread throughput",
        spread_ns / hot_ns,
        "x",
        Target::None,
    );
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
            ledger
                .top_up(TopUp::new(&acct, 1_000, format!("initial-{acct}")))
                .await
                .unwrap();
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

    // What each settled request leaves behind for `settled_retention` (1 hour by
    // default): the record that answers a repeated settle or reserve of its hold id.
    let (ledger, acct) = funded_ledger(&rt);
    rt.block_on(reserve_commit(&ledger, &acct));
    let before = live_bytes();
    rt.block_on(async {
        for _ in 0..n {
            reserve_commit(&ledger, &acct).await;
        }
    });
    report.row(
        section,
        "MemoryLedger, kept per settled request until settled_retention passes",
        (live_bytes() - before) as f64 / n as f64,
        "bytes",
        Target::None,
    );
}

/// Runs each variant `per_round` times per round, all variants in turn each round, and
/// returns each one's median ns per call over `rounds` rounds (after one warm-up round).
/// Interleaving means a burst of noise from elsewhere on the machine hits every variant
/// alike, so their ratios hold even when absolute times wobble.
fn interleaved<const N: usize>(
    rounds: usize,
    per_round: u64,
    mut variants: [&mut dyn FnMut(u64); N],
) -> [f64; N] {
    for run in variants.iter_mut() {
        run(per_round / 4);
    }
    let mut samples = vec![Vec::with_capacity(rounds); N];
    for _ in 0..rounds {
        for (run, samples) in variants.iter_mut().zip(&mut samples) {
            let start = Instant::now();
            run(per_round);
            samples.push(start.elapsed().as_nanos() as f64 / per_round as f64);
        }
    }
    std::array::from_fn(|i| {
        let s = &mut samples[i];
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    })
}

/// One variant of the request bench, `n` requests after 1,000 of warm-up, and nothing
/// else: what `instructions` runs under callgrind (and what `valgrind --tool=dhat` can be
/// pointed at to find where each allocation comes from). Variant: `bare`, `layer` or
/// `governor`.
fn only(variant: &str, n: u64) {
    let rt = runtime();
    let (bare, billed, governed) = request_services!(&rt);
    let mut run = |n: u64| {
        rt.block_on(async {
            for _ in 0..n {
                match variant {
                    "bare" => one(bare).await,
                    "layer" => one(billed.clone()).await,
                    "governor" => one(governed.clone()).await,
                    "forced" => one(tower::service_fn(forced)).await,
                    other => panic!("unknown variant {other}: bare, layer, governor or forced"),
                }
            }
        })
    };
    run(1_000);
    measured(&mut run, n);
}

/// What callgrind is told to count (`--toggle-collect`): the measured requests, not the
/// setup and warm-up around them.
#[inline(never)]
fn measured(run: &mut dyn FnMut(u64), n: u64) {
    run(n)
}

/// Instructions per request, counted by `valgrind --tool=callgrind`: each variant runs
/// under callgrind twice, with 2,000 and 12,000 measured requests, and the difference
/// over 10,000 is its count per request, setup and warm-up cancelled out. Unlike times,
/// these repeat from run to run on a noisy machine. Skipped (with a note) without
/// valgrind.
fn instructions(report: &mut Report) {
    let section = "1. layer overhead (in process, MemoryLedger)";
    let count = |variant: &str, n: u64| -> Option<f64> {
        support::callgrind::count_self(
            &["only", variant, &n.to_string()],
            Some("*overhead::measured*"),
        )
    };
    let per_request = |variant: &str| -> Option<f64> {
        Some((count(variant, 12_000)? - count(variant, 2_000)?) / 10_000.0)
    };
    let (Some(bare), Some(layer), Some(governor)) = (
        per_request("bare"),
        per_request("layer"),
        per_request("governor"),
    ) else {
        println!("  [{section}] instructions: skipped (valgrind not found or failed)");
        return;
    };
    report.row(
        section,
        "instructions: bare request + response",
        bare,
        "instr/req",
        Target::None,
    );
    // Issue 29: half of the 16,988 the layer added when it was filed.
    report.row(
        section,
        "instructions added by CreditLayer",
        layer - bare,
        "instr/req",
        Target::AtMost(16_988.0 / 2.0),
    );
    report.row(
        section,
        "instructions added by tower_governor",
        governor - bare,
        "instr/req",
        Target::None,
    );
}

fn main() {
    // `cargo bench --bench overhead -- request` runs only that part (for a profiler); the
    // report is written only by a whole run. (`--bench` is what cargo itself passes.)
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let filter = args.next();
    if filter.as_deref() == Some("only") {
        let variant = args.next().unwrap_or_else(|| "layer".into());
        let n = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
        only(&variant, n);
        return;
    }
    let wanted = |part: &str| filter.as_deref().is_none_or(|f| f == part);
    let mut report = Report::new("overhead");
    if wanted("request") {
        request_overhead(&mut report);
    }
    if wanted("instructions") {
        instructions(&mut report);
    }
    if wanted("scale") {
        scale(&mut report);
    }
    if wanted("memory") {
        memory(&mut report);
    }
    if filter.is_none() {
        report.write();
    }
}
