//! Benchmarks, reported as ratios taken in one run on the same machine.
//!
//! * `layer/*`: one request through a `service_fn` with and without the `CreditLayer`
//!   (in-memory ledger, API key cached): the layer's own overhead.
//! * `memory_ledger/*`: a reserve + commit pair on one account, and spread over many.
//!
//! `cargo bench --bench ledger` prints criterion's times; compare `with_layer` against
//! `without_layer` for the overhead ratio.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
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
        b.to_async(&rt).iter(|| async {
            let hold = HoldId::generate();
            ledger
                .reserve(Reserve::new(accounts[0].clone(), hold.clone(), 1))
                .await
                .unwrap();
            ledger.commit(&accounts[0], &hold, 1).await.unwrap()
        })
    });
    let mut i = 0usize;
    group.bench_function("reserve_commit_many_accounts", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % accounts.len();
            let acct = accounts[i].clone();
            let ledger = ledger.clone();
            async move {
                let hold = HoldId::generate();
                ledger
                    .reserve(Reserve::new(acct.clone(), hold.clone(), 1))
                    .await
                    .unwrap();
                ledger.commit(&acct, &hold, 1).await.unwrap()
            }
        })
    });
    group.finish();
}

criterion_group!(benches, layer, memory_ledger);
criterion_main!(benches);
