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
//! answers the caller's balance and spend by route, `GET /health` is free. Any billed route
//! answers a quote instead when sent `credits-quote: 1`. Ctrl-C stops it gracefully: `CreditLayer::shutdown` waits for pending settles.
//!
//! Events are printed; with `CREDITS_WEBHOOK_URL` and `CREDITS_WEBHOOK_SECRET` set they are
//! also posted there, signed (`Credits-Signature`; `http://` only to a loopback address).
//!
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart` keeps the balances in
//! Redis instead; run two (with different `PORT`s) and they behave as two replicas. A
//! managed Redis takes its TLS URL, `REDIS_URL=rediss://default:<password>@<host>:<port>`
//! (feature `redis-tls`, on for the examples): certificates chaining to a public root are
//! trusted as they are; for a provider's or a private CA, set `REDIS_CA_FILE` to its PEM.

use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tower_credits::events::{Dispatcher, Webhook};
use tower_credits::pricing::Pricing;
use tower_credits::readout::CreditsReadout;
use tower_credits::{
    AccountId, AccountSettings, AnyLedger, ApiKeyHash, Charge, CreditLayer, MemoryLedger,
    RedisLedger,
};
use tower_credits::{Configure, LedgerAdmin, TopUp};

#[derive(Deserialize)]
struct Generate {
    tokens: u64,
}

async fn echo(charge: Charge) -> String {
    format!("echo for {}\n", charge.account())
}

async fn generate(charge: Charge, Json(body): Json<Generate>) -> Json<serde_json::Value> {
    // The route holds 50; the caller pays for the tokens really generated (at most 50).
    charge
        .set(body.tokens)
        .expect("charge is open until the response head");
    Json(serde_json::json!({ "generated_tokens": body.tokens.min(charge.reserved()) }))
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
        ledger
            .top_up(TopUp::new(
                &account,
                credits,
                format!("seed-{account}-{credits}"),
            ))
            .await?;
        ledger
            .register_api_key(&ApiKeyHash::of(key), &account)
            .await?;
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

/// The embedded ledger, or Redis when `REDIS_URL` is set: then several quickstarts on one
/// Redis are replicas of one service, sharing balances (and seeding credits once).
async fn ledger() -> Result<AnyLedger, tower_credits::LedgerError> {
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("ledger: Redis at {}", without_credentials(&url));
            let mut builder = RedisLedger::builder().url(url);
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
            Ok(builder.build().await?.into())
        }
        Err(_) => {
            println!("ledger: in memory (set REDIS_URL=redis://127.0.0.1:6379 to share it)");
            Ok(MemoryLedger::new().into())
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_credits=info".into()),
        )
        .init();

    let ledger = ledger().await?;
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
        let webhook = Webhook::new(&url, secret)?;
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
                .authenticated("GET /v1/credits")
                .free("GET /health"),
        )
        .low_balance_threshold(100)
        .events(events)
        .top_up_url("https://example.com/billing");
    // Kept to shut the layer's hold keeper down after the server stops.
    let credits = layer.clone();

    let app = Router::new()
        .route("/v1/echo", get(echo))
        .route("/v1/generate", post(generate))
        .route_service("/v1/credits", CreditsReadout::new(ledger))
        .route("/health", get(|| async { "ok\n" }))
        .layer(layer);

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
    println!("  curl -i -H 'Authorization: Bearer wrong-key' {base}/v1/echo   # 401");
    println!("  curl -i -H 'Authorization: Bearer demo-poor' -H 'Credits-Quote: 1' -X POST {base}/v1/generate   # quote");
    println!("  curl -i -H 'Authorization: Bearer demo-rich' -H 'Credits-Max-Cost: 20' -H 'Content-Type: application/json' \\\n       -d '{{\"tokens\": 40}}' {base}/v1/generate   # capped at 20");
    println!("  curl -i -H 'Authorization: Bearer demo-rich' {base}/v1/credits   # balance and spend by route\n");

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let settled = credits.shutdown(Duration::from_secs(5)).await;
    println!("shut down; every pending settle finished: {settled}");
    Ok(())
}
