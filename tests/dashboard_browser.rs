//! The callers' dashboard in a real browser: Debian's headless Chromium, driven through
//! `chromedriver` (W3C WebDriver). After billed calls, the figures on screen equal the
//! ledger's, the per-route table lists the routes called, an unknown key shows the 401's
//! message, and the page raises no script error or policy violation. A screenshot is
//! saved to `target/dashboard.png` for review.

mod http_support;
mod support;

use axum::routing::{get, post};
use axum::{Json, Router};
use http_support::{account, get_req, http1, post_json, send, Server};
use support::rig::wait_until;
use support::webdriver::Browser;
use tower_credits::dashboard::Dashboard;
use tower_credits::ledger::Configure;
use tower_credits::pricing::Pricing;
use tower_credits::readout::{CreditsHistory, CreditsReadout};
use tower_credits::{
    AccountSettings, Charge, CreditLayer, LedgerAdmin, LedgerReports, MemoryLedger,
};

async fn generate(charge: Charge, Json(body): Json<serde_json::Value>) -> &'static str {
    charge.set(body["tokens"].as_u64().unwrap()).unwrap();
    "generated"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_ledgers_figures_in_a_real_browser() {
    let ledger = MemoryLedger::new();
    let acct = account(&ledger, "acct_dash", "key-dash", 1_100).await;
    ledger
        .configure(Configure::new(
            &acct,
            AccountSettings::new().low_balance_threshold(1_000),
        ))
        .await
        .unwrap();
    let credits = CreditLayer::new(ledger.clone()).pricing(
        Pricing::new()
            .route("GET /v1/echo", 1)
            .route("POST /v1/generate", 50)
            .authenticated("GET /v1/credits")
            .authenticated("GET /v1/credits/history"),
    );
    let app = Router::new()
        .route("/v1/echo", get(|| async { "echo" }))
        .route("/v1/generate", post(generate))
        .route_service("/v1/credits", CreditsReadout::new(ledger.clone()))
        .route_service("/v1/credits/history", CreditsHistory::new(ledger.clone()))
        .layer(credits)
        .nest_service(
            "/dashboard",
            Dashboard::new().top_up_url("https://example.com/billing"),
        );
    let server = Server::start(app).await;
    for _ in 0..3 {
        let echo = send(&http1(), get_req(&server.url("/v1/echo"), Some("key-dash"))).await;
        assert_eq!(echo.status, 200);
    }
    let generated = post_json(
        &server.url("/v1/generate"),
        "key-dash",
        serde_json::json!({"tokens": 12}),
    );
    assert_eq!(send(&http1(), generated).await.status, 200);
    let balance = ledger.balance(&acct).await.unwrap();
    assert_eq!((balance.available, balance.committed), (1_085, 15));

    let profile = tempfile::tempdir().unwrap();
    let browser = Browser::start(profile.path()).await;

    // An unknown key: the 401's own message.
    browser.goto(&server.url("/dashboard")).await;
    browser.type_into("#api-key", "not-a-key\u{E007}").await;
    wait_until("the refusal shows", || async {
        browser.text("#status").await.contains("not accepted")
    })
    .await;
    assert!(
        browser
            .text("#status")
            .await
            .contains("This API key is not known"),
        "{}",
        browser.text("#status").await
    );

    // The caller's key: the ledger's figures, exactly, with thousands separators.
    browser.type_into("#api-key", "key-dash\u{E007}").await;
    wait_until("the figures show", || async {
        !browser.text("#available").await.is_empty()
    })
    .await;
    assert_eq!(browser.text("#account-id").await, "acct_dash");
    assert_eq!(browser.text("#available").await, "1,085");
    assert_eq!(browser.text("#held").await, "0");
    assert_eq!(browser.text("#committed").await, "15");
    assert_eq!(browser.text("#thresholds").await, "1,000");
    let rows = browser
        .script(
            "return [...document.querySelectorAll('#routes tbody tr')]
                .map(tr => [...tr.children].map(td => td.textContent));",
        )
        .await;
    let rows: Vec<Vec<String>> = serde_json::from_value(rows).unwrap();
    assert_eq!(
        rows,
        vec![
            vec![
                "/v1/generate".to_owned(),
                "1".into(),
                "12".into(),
                "12".into()
            ],
            vec!["/v1/echo".to_owned(), "3".into(), "3".into(), "1".into()],
        ],
        "sorted by credits, most first"
    );
    // Sortable: by calls, most first.
    browser
        .script("document.querySelector('#routes th[data-key=calls]').click();")
        .await;
    let first = browser.text("#routes tbody tr td").await;
    assert_eq!(first, "/v1/echo");
    // The chart: a line and the threshold.
    let drawn = browser
        .script("return [document.querySelectorAll('#chart path.line').length, document.querySelectorAll('#chart line.threshold').length];")
        .await;
    assert_eq!(drawn, serde_json::json!([1, 1]));
    // The key lives in this tab's sessionStorage only.
    let stored = browser
        .script(
            "return [sessionStorage.getItem('credits-key'), localStorage.length, document.cookie];",
        )
        .await;
    assert_eq!(stored, serde_json::json!(["key-dash", 0, ""]));

    // A refresh picks up new spending.
    send(&http1(), get_req(&server.url("/v1/echo"), Some("key-dash"))).await;
    wait_until("the refresh shows the new balance", || async {
        browser.text("#available").await == "1,084"
    })
    .await;

    let errors = browser
        .script("return document.body.dataset.errors || '';")
        .await;
    assert_eq!(errors, "", "script errors or policy violations in the page");

    let png = browser.screenshot().await;
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("dashboard.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    browser.quit().await;
}
