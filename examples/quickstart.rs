//! The quickstart: an axum API billed in prepaid credits, on the embedded ledger.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Listens on 127.0.0.1:3000 (`PORT` overrides) with two accounts: API key `demo-rich`
//! (1000 credits, `DEMO_RICH_CREDITS` overrides; threshold 100) and `demo-poor` (5 credits;
//! thresholds 100 and 4: its first `GET /v1/echo` fires `balance.low` for 100, its second
//! for 4, and its first 402 fires `balance.depleted`). `GET /v1/echo` costs 1, `POST /v1/generate` holds 50 and charges the JSON
//! field `tokens` (a `credits-max-cost` cap of at least 10 lowers the hold), `GET /v1/credits`
//! answers the caller's balance and spend by route (`GET /v1/credits/history` every move, newest
//! first), `GET /v1/stream?n=K` sends K server-sent
//! events at 1 credit each (holds 20 and grows 20 at a time while the account affords it;
//! when the credits run out it ends with `"stop":"hold-exhausted"`, and always with an
//! `event: credits` saying what it cost), `GET /health` is free. Any billed route
//! answers a quote instead when sent `credits-quote: 1`, and a call sent again with the same
//! `Idempotency-Key` is answered from its first response and charged once. Ctrl-C stops it gracefully: `CreditLayer::shutdown` waits for pending settles.
//!
//! Events are printed; with `CREDITS_WEBHOOK_URL` and `CREDITS_WEBHOOK_SECRET` set they are
//! also posted there as Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`; `http://` only to a loopback address). The secret is `whsec_`
//! followed by a base64 key of 24 to 64 bytes, for example
//! `CREDITS_WEBHOOK_SECRET="whsec_$(openssl rand -base64 32)"`; several, space-separated,
//! sign each event with each (a rotation). Any other form stops the quickstart at start.
//!
//! `GET /dashboard` is the callers' usage page (paste an API key: balance, cost per route, balance
//! over time). `GET /metrics` answers Prometheus metrics (`credits_*`, see `tower_credits::metrics`), free
//! and without a key. `RUST_LOG` sets what is logged (default `info`).
//!
//! `CREDITS_LEASES=1` bills busy accounts (50 billed requests a second or more on one route)
//! in process against leased blocks of their credits, flushed every second: balances shown
//! lag other replicas by at most that second (see `tower_credits::ledger::lease`).
//!
//! `ADMIN_TOKEN=<16+ characters>` mounts the admin API at `/admin` (top-ups, settings, API
//! keys; `Authorization: Bearer <ADMIN_TOKEN>`), outside the credit layer.
//!
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart` keeps the balances in
//! Redis instead; run two (with different `PORT`s) and they behave as two replicas. A
//! managed Redis takes its TLS URL, `REDIS_URL=rediss://default:<password>@<host>:<port>`
//! (feature `redis-tls`, on for the examples): certificates chaining to a public root are
//! trusted as they are; for a provider's or a private CA, set `REDIS_CA_FILE` to its PEM.
//! `REDIS_CLUSTER_URLS=redis://127.0.0.1:7000,redis://127.0.0.1:7001` (comma-separated, any
//! of the masters; the client learns the rest, and it wins over `REDIS_URL`) keeps them in a
//! Redis Cluster instead: each account's keys share one hash slot, so its scripts run on
//! the master that owns it.
//!
//! `DEMO_ACCOUNTS=N` seeds N more accounts, `acct_demo_0` … with API keys `demo-key-0` …
//! `demo-key-<N-1>`, each funded like `demo-rich` (`DEMO_RICH_CREDITS`): load spread over
//! many accounts, as the HTTP bench sends to a Redis Cluster.

use std::time::Duration;

use axum::extract::Query;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use tower_credits::admin::{AdminRouter, AdminToken};
use tower_credits::dashboard::Dashboard;
use tower_credits::events::webhook::WebhookError;
use tower_credits::events::{Dispatcher, Webhook};
use tower_credits::idempotency::IdempotencyLayer;
use tower_credits::ledger::Configure;
use tower_credits::ledger::{AnyLedger, Leased};
use tower_credits::metrics::Metered;
use tower_credits::pricing::Pricing;
use tower_credits::readout::{CreditsHistory, CreditsReadout};
use tower_credits::{
    AccountId, AccountSettings, ApiKeyHash, Charge, CreditLayer, MemoryLedger, RedisLedger,
    StreamLimit,
};
use tower_credits::{LedgerAdmin, TopUp};

#[derive(Deserialize)]
struct Generate {
    tokens: u64,
}

async fn echo(charge: Charge) -> String {
    format!("echo for {}\n", charge.account())
}

async fn generate(charge: Charge, Json(body): Json<Generate>) -> Json<serde_json::Value> {
    // The route holds 50 (less under a cap): the work is bounded by the hold, and the caller
    // pays for the tokens really generated.
    let tokens = body.tokens.min(charge.reserved());
    charge
        .set(tokens)
        .expect("charge is open until the response head, and within the hold");
    Json(serde_json::json!({ "generated_tokens": tokens }))
}

#[derive(Deserialize)]
struct StreamParams {
    n: u64,
}

/// `n` server-sent events, 1 credit each, metered before each is sent. The route holds 20
/// (as little as 1 when that is all the account has) and grows 20 at a time while the
/// account affords it: past what it can pay, the layer ends the stream cleanly, and every
/// stream ends with an `event: credits` saying what it cost.
async fn stream(
    charge: Charge,
    Query(params): Query<StreamParams>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    charge.defer();
    let events = futures_util::stream::iter(0..params.n).map(move |i| {
        // A handler may stop when this is refused; one that does not is cut by the layer.
        let _ = charge.add(1);
        Ok(Event::default().data(format!("{{\"i\":{i}}}")))
    });
    Sse::new(events)
}

/// Tops `account` up with `credits` (once: the payment id names the seed) and gives it
/// the API key `key`.
async fn fund(
    ledger: &impl LedgerAdmin,
    account: &AccountId,
    key: &str,
    credits: u64,
) -> Result<(), tower_credits::LedgerError> {
    ledger
        .top_up(TopUp::new(
            account,
            credits,
            format!("seed-{account}-{credits}"),
        ))
        .await?;
    ledger.register_api_key(&ApiKeyHash::of(key), account).await
}

/// Creates the demo accounts. Fixed top-up keys make this safe to run on every start and
/// from every replica: a key credits once, ever.
async fn seed(ledger: &impl LedgerAdmin) -> Result<(), tower_credits::LedgerError> {
    let rich_credits = std::env::var("DEMO_RICH_CREDITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    for (key, account, credits, thresholds) in [
        ("demo-rich", "acct_rich", rich_credits, &[100][..]),
        ("demo-poor", "acct_poor", 5, &[100, 4][..]),
    ] {
        let account = AccountId::new(account)?;
        let settings = thresholds
            .iter()
            .fold(AccountSettings::new(), |s, &t| s.low_balance_threshold(t));
        ledger.configure(Configure::new(&account, settings)).await?;
        fund(ledger, &account, key, credits).await?;
    }
    // `DEMO_ACCOUNTS=N`: `acct_demo_<i>` with the key `demo-key-<i>`, a few at a time.
    let accounts: usize = std::env::var("DEMO_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    futures_util::stream::iter(0..accounts)
        .map(|i| async move {
            let account = AccountId::new(format!("acct_demo_{i}"))?;
            fund(ledger, &account, &format!("demo-key-{i}"), rich_credits).await
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<(), _>>()?;
    if accounts > 0 {
        println!(
            "demo accounts: {accounts} more, API keys demo-key-0 … demo-key-{}",
            accounts - 1
        );
    }
    Ok(())
}

/// `redis://user:secret@host:6379/0` → `redis://***@host:6379/0`: a URL's password never
/// goes to a terminal or a log.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsed URL)".to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// The embedded ledger, or Redis when `REDIS_URL` is set (a Redis Cluster with
/// `REDIS_CLUSTER_URLS`): then several quickstarts on one Redis are replicas of one
/// service, sharing balances (and seeding credits once).
async fn ledger() -> Result<AnyLedger, tower_credits::LedgerError> {
    let cluster = std::env::var("REDIS_CLUSTER_URLS").ok().map(|urls| {
        urls.split(',')
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty())
            .collect::<Vec<_>>()
    });
    let builder = match (cluster, std::env::var("REDIS_URL")) {
        (Some(urls), _) => {
            let shown: Vec<String> = urls.iter().map(|url| without_credentials(url)).collect();
            println!("ledger: Redis Cluster through {}", shown.join(", "));
            Some(RedisLedger::builder().cluster_urls(urls))
        }
        (None, Ok(url)) => {
            println!("ledger: Redis at {}", without_credentials(&url));
            Some(RedisLedger::builder().url(url))
        }
        (None, Err(_)) => None,
    };
    match builder {
        Some(mut builder) => {
            // A private CA (or a provider's own) for a `rediss://` URL.
            if let Ok(path) = std::env::var("REDIS_CA_FILE") {
                let pem = std::fs::read(&path).map_err(|e| {
                    tower_credits::LedgerError::InvalidSetting {
                        what: "REDIS_CA_FILE",
                        detail: format!("cannot read {path}: {e}"),
                    }
                })?;
                builder = builder.tls_ca_pem(pem);
            }
            let ledger = builder.build().await?;
            // Reclaims expired holds of idle accounts, found by the due-index (a few
            // commands a pass, whatever else the Redis holds).
            ledger.spawn_sweeper(Duration::from_secs(1));
            Ok(ledger.into())
        }
        None => {
            println!("ledger: in memory (set REDIS_URL=redis://127.0.0.1:6379 to share it)");
            Ok(MemoryLedger::new().into())
        }
    }
}

/// A webhook to `url`, signing with each space-separated `whsec_` secret in `secrets`.
fn webhook(url: &str, secrets: &str) -> Result<Webhook, WebhookError> {
    let mut secrets = secrets.split_whitespace();
    let mut webhook = Webhook::new(url, secrets.next().unwrap_or_default())?;
    for next in secrets {
        webhook = webhook.also_sign_with(next)?;
    }
    Ok(webhook)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_credits=info".into()),
        )
        .init();

    // Metrics through the `metrics` facade, rendered by the Prometheus exporter at
    // `GET /metrics`; the ledger is wrapped once, and the wrapper used everywhere.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        // A histogram (summable across replicas), not the exporter's default summary.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                tower_credits::metrics::LEDGER_DURATION_SECONDS.into(),
            ),
            &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
        )?
        .install_recorder()?;
    tower_credits::metrics::describe();
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    // `CREDITS_LEASES=1`: busy accounts are billed in process against leased blocks of
    // their credits, flushed every second (see `tower_credits::ledger::lease`).
    let leases = std::env::var("CREDITS_LEASES").is_ok_and(|v| v == "1");
    let any = ledger().await?;
    let board = any.lease_board();
    let leased = Leased::new(any).enabled(leases).board(board);
    let flusher = leased.spawn_flusher();
    if leases {
        println!("leases: on (busy accounts billed in process, flushed every second)");
    }
    let ledger = Metered::new(leased.clone());
    seed(&ledger).await?;

    // Low-balance, runway and depletion events: printed, and posted to a webhook if set.
    let mut dispatcher = Dispatcher::new(ledger.clone()).on_event(|event| async move {
        println!("event: {}", String::from_utf8_lossy(&event.to_json()));
        Ok(())
    });
    if let (Ok(url), Ok(secret)) = (
        std::env::var("CREDITS_WEBHOOK_URL"),
        std::env::var("CREDITS_WEBHOOK_SECRET"),
    ) {
        // `whsec_…`, or several space-separated during a rotation. Any other form stops
        // here, before anything is served, with what is wrong (never the secret itself).
        let webhook = webhook(&url, &secret).unwrap_or_else(|err| {
            eprintln!("error: CREDITS_WEBHOOK_URL / CREDITS_WEBHOOK_SECRET: {err}");
            std::process::exit(2)
        });
        println!("events: posted to {}", webhook.redacted_url());
        dispatcher = dispatcher.webhook(webhook);
    }
    let events = dispatcher.spawn();

    let layer = CreditLayer::new(ledger.clone())
        .pricing(
            Pricing::new()
                .route("GET /v1/echo", 1)
                // Holds 50, runs with as little as 10 under a `credits-max-cost` cap.
                .route("POST /v1/generate", 50)
                .min_price(10)
                .route("GET /v1/stream", 20)
                .min_price(1)
                .stream_limit(StreamLimit::grow(20))
                .authenticated("GET /v1/credits")
                .authenticated("GET /v1/credits/history")
                .free("GET /health"),
        )
        .low_balance_threshold(100)
        .events(events)
        .top_up_url("https://example.com/billing");
    // Refusals are RFC 9457 problem JSON; an API with its own error shape renders them
    // itself, for example OpenAI-style:
    //   .refusal_response(|refusal| http::Response::builder()
    //       .status(refusal.status())
    //       .header("content-type", "application/json")
    //       .body(serde_json::json!({"error": {"message": refusal.to_string(),
    //           "type": "insufficient_quota", "code": refusal.code()}}).to_string().into())
    //       .ok())
    // Kept to shut the layer's hold keeper down after the server stops.
    let credits = layer.clone();

    let mut app = Router::new()
        .route("/v1/echo", get(echo))
        .route("/v1/generate", post(generate))
        .route("/v1/stream", get(stream))
        .route_service("/v1/credits", CreditsReadout::new(ledger.clone()))
        .route_service("/v1/credits/history", CreditsHistory::new(ledger.clone()))
        .route("/health", get(|| async { "ok\n" }))
        .layer(layer)
        // Outside the credit layer: a retried call with the same `Idempotency-Key` is
        // answered from its first response and charged once.
        .layer(IdempotencyLayer::new())
        // After `.layer`: free, no key. The callers' usage page reads the two readouts above
        // with the key a caller pastes into it.
        .nest_service(
            "/dashboard",
            Dashboard::new().top_up_url("https://example.com/billing"),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        );
    // Nested after `.layer`: the admin API is not billed, and its token is never read as an
    // API key.
    let admin_token = std::env::var("ADMIN_TOKEN").ok();
    if let Some(token) = &admin_token {
        let admin = AdminRouter::new(ledger.clone(), AdminToken::new(token)?);
        app = app.nest("/admin", admin.into_router());
    }

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("tower-credits quickstart listening on {base}\n");
    println!("  curl -i {base}/health");
    println!("  curl -i -H 'Authorization: Bearer demo-rich' {base}/v1/echo");
    println!(
        "  curl -i -H 'Authorization: Bearer demo-rich' -H 'Content-Type: application/json' \\\n       -d '{{\"tokens\": 12}}' {base}/v1/generate"
    );
    println!("  curl -i -H 'Authorization: Bearer demo-poor' -H 'Content-Type: application/json' \\\n       -d '{{\"tokens\": 12}}' {base}/v1/generate   # 402");
    println!("  curl -i -H 'Authorization: Bearer demo-rich' -H 'Idempotency-Key: order-1' -H 'Content-Type: application/json' \\\n       -d '{{\"tokens\": 12}}' {base}/v1/generate   # twice: the second is a free replay");
    println!("  curl -i -H 'Authorization: Bearer wrong-key' {base}/v1/echo   # 401");
    println!("  curl -i -H 'Authorization: Bearer demo-poor' -H 'Credits-Quote: 1' -X POST {base}/v1/generate   # quote");
    println!("  curl -i -H 'Authorization: Bearer demo-rich' -H 'Credits-Max-Cost: 20' -H 'Content-Type: application/json' \\\n       -d '{{\"tokens\": 40}}' {base}/v1/generate   # capped at 20");
    println!("  curl -i -H 'Authorization: Bearer demo-rich' {base}/v1/credits   # balance and spend by route");
    println!("  curl -s -H 'Authorization: Bearer demo-rich' '{base}/v1/credits/history?limit=5'   # every move, newest first");
    println!("  curl -N -H 'Authorization: Bearer demo-rich' '{base}/v1/stream?n=50'  # SSE, grows its hold, ends with event: credits");
    println!("  curl -N -H 'Authorization: Bearer demo-poor' '{base}/v1/stream?n=50'  # cut when its credits run out");
    println!("  curl -s {base}/metrics | grep credits_   # Prometheus metrics, free");
    println!("  open {base}/dashboard and paste demo-rich   # the callers' usage page\n");
    if admin_token.is_some() {
        println!("admin API at {base}/admin (Authorization: Bearer $ADMIN_TOKEN):");
        println!(
            "  curl -i -H \"Authorization: Bearer $ADMIN_TOKEN\" {base}/admin/accounts/acct_poor"
        );
        println!("  curl -i -H \"Authorization: Bearer $ADMIN_TOKEN\" -H 'Content-Type: application/json' \\\n       -d '{{\"amount\": 500, \"idempotency_key\": \"pay_1\"}}' {base}/admin/accounts/acct_poor/top-ups");
        println!("  curl -i -H \"Authorization: Bearer $ADMIN_TOKEN\" -X POST {base}/admin/accounts/acct_poor/keys\n");
    } else {
        println!("(set ADMIN_TOKEN to mount the admin API at /admin)\n");
    }

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let settled = credits.shutdown(Duration::from_secs(5)).await;
    // After the pending settles: commit what the leases spent and give their blocks back.
    if let Err(err) = leased.shutdown().await {
        eprintln!("leases: could not return every block ({err}); they expire in the ledger");
    }
    flusher.abort();
    println!("shut down; every pending settle finished: {settled}");
    Ok(())
}
