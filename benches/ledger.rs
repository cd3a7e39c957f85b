//! Benchmarks, reported as ratios taken in one run on the same machine.
//!
//! * `layer/*`: one request through a `service_fn` with and without the `CreditLayer`
//!   (in-memory ledger, API key cached): the layer's own overhead.
//! * `memory_ledger/*`: a reserve + commit pair on one account, and spread over many.
//! * `redis/*` (when `redis-server` is installed; the bench starts its own on a free
//!   loopback port): a `RedisLedger` reserve + commit pair against Redis's own ceiling for
//!   the same two round trips, two `PING`s on the same kind of connection.
//!
//! `cargo bench --bench ledger` prints criterion's times and, at the end, the ratios.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_credits::pricing::Pricing;
use tower_credits::{
    AccountId, ApiKeyHash, CreditLayer, HoldId, Ledger, MemoryLedger, Reserve, MAX_AMOUNT,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request() -> Request<Full<Bytes>> {
    Request::get("/v1/echo")
        .header("authorization", "Bearer bench-key")
        .body(Full::default())
        .unwrap()
}

/// One reserve + commit of 1 credit, the unit every ledger bench measures.
async fn reserve_commit<L: Ledger>(ledger: &L, acct: &AccountId) {
    let hold = HoldId::generate();
    ledger
        .reserve(Reserve::new(acct.clone(), hold.clone(), 1))
        .await
        .unwrap();
    ledger.commit(acct, &hold, 1).await.unwrap();
}

fn layer(c: &mut Criterion) {
    let rt = runtime();
    let ledger = MemoryLedger::new();
    let acct = AccountId::new("bench").unwrap();
    rt.block_on(async {
        ledger.top_up(&acct, MAX_AMOUNT, "bench").await.unwrap();
        ledger
            .register_api_key(&ApiKeyHash::of("bench-key"), &acct)
            .await
            .unwrap();
    });
    let inner = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"echo"))))
    });
    let billed = CreditLayer::new(ledger.clone())
        .pricing(Pricing::new().route("GET /v1/echo", 1))
        .layer(inner);

    let mut group = c.benchmark_group("layer");
    group.bench_function("without_layer", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = inner;
            async move { svc.ready().await.unwrap().call(request()).await.unwrap() }
        })
    });
    group.bench_function("with_layer", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = billed.clone();
            async move { svc.ready().await.unwrap().call(request()).await.unwrap() }
        })
    });
    group.finish();
}

fn memory_ledger(c: &mut Criterion) {
    let rt = runtime();
    let ledger = MemoryLedger::new();
    let accounts: Vec<AccountId> = (0..1024)
        .map(|i| AccountId::new(format!("acct_{i}")).unwrap())
        .collect();
    rt.block_on(async {
        for a in &accounts {
            ledger.top_up(a, MAX_AMOUNT, "bench").await.unwrap();
        }
    });
    let mut group = c.benchmark_group("memory_ledger");
    group.bench_function("reserve_commit_one_account", |b| {
        b.to_async(&rt)
            .iter(|| async { reserve_commit(&ledger, &accounts[0]).await })
    });
    let mut i = 0usize;
    group.bench_function("reserve_commit_many_accounts", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % accounts.len();
            let acct = accounts[i].clone();
            let ledger = ledger.clone();
            async move { reserve_commit(&ledger, &acct).await }
        })
    });
    group.finish();
}

/// A throwaway `redis-server` on a free loopback port, stopped on drop.
struct BenchRedis {
    child: std::process::Child,
    port: u16,
}

impl BenchRedis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::yield_now();
        }
        Some(Self { child, port })
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis(c: &mut Criterion) {
    let Some(server) = BenchRedis::start() else {
        eprintln!("redis benches skipped: redis-server is not installed");
        return;
    };
    let rt = runtime();
    let url = format!("redis://127.0.0.1:{}", server.port);
    let (ledger, mut ping_conn) = rt.block_on(async {
        let ledger = tower_credits::RedisLedger::builder()
            .url(url.clone())
            .call_timeout(std::time::Duration::from_secs(5))
            .build()
            .await
            .unwrap();
        let client = redis::Client::open(url.as_str()).unwrap();
        let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        (ledger, conn)
    });
    let acct = AccountId::new("bench").unwrap();
    rt.block_on(async { ledger.top_up(&acct, MAX_AMOUNT, "bench").await.unwrap() });

    let mut group = c.benchmark_group("redis");
    group.bench_function("two_pings_ceiling", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = ping_conn.clone();
            async move {
                let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
            }
        })
    });
    group.bench_function("reserve_commit", |b| {
        b.to_async(&rt).iter(|| {
            let ledger = ledger.clone();
            let acct = acct.clone();
            async move { reserve_commit(&ledger, &acct).await }
        })
    });
    group.finish();
    let _: String = rt.block_on(async {
        redis::cmd("PING")
            .query_async(&mut ping_conn)
            .await
            .unwrap()
    });
}

criterion_group!(benches, layer, memory_ledger, redis);

/// Mean time of one benchmark of this run, from criterion's estimates.
fn mean_ns(group: &str, name: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{dir}/criterion/{group}/{name}/new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!("\nratios (this run):");
    for (what, (g1, n1), (g2, n2)) in [
        (
            "layer overhead: with / without",
            ("layer", "with_layer"),
            ("layer", "without_layer"),
        ),
        (
            "RedisLedger reserve+commit / two PINGs",
            ("redis", "reserve_commit"),
            ("redis", "two_pings_ceiling"),
        ),
    ] {
        if let (Some(a), Some(b)) = (mean_ns(g1, n1), mean_ns(g2, n2)) {
            println!("  {what}: {:.2}x ({a:.0} ns vs {b:.0} ns)", a / b);
        }
    }
}
