//! The audit trail over HTTP, on the in-memory ledger, a Redis server and a Redis
//! Cluster: the admin route and the caller's own history answer every move of the
//! account, newest first, in pages; a caller sees only its own account's.

mod http_support;
#[macro_use]
mod support;

use axum::routing::get;
use axum::Router;
use http_support::{account, get_req, http1, send, Server};
use serde_json::Value;
use tower_credits::admin::{AdminRouter, AdminToken};
use tower_credits::pricing::Pricing;
use tower_credits::readout::CreditsHistory;
use tower_credits::{CreditLayer, Ledger, LedgerAdmin, LedgerReports};

const ADMIN: &str = "an-admin-token-long-enough";

async fn app<L: Ledger + LedgerAdmin + LedgerReports>(ledger: L) -> Server {
    let credits = CreditLayer::new(ledger.clone()).pricing(
        Pricing::new()
            .route("GET /v1/echo", 3)
            .authenticated("GET /v1/credits/history"),
    );
    let admin = AdminRouter::new(ledger.clone(), AdminToken::new(ADMIN).unwrap());
    let router = Router::new()
        .route("/v1/echo", get(|| async { "echo" }))
        .route_service("/v1/credits/history", CreditsHistory::new(ledger))
        .layer(credits)
        .nest("/admin", admin.into_router());
    Server::start(router).await
}

fn kinds(body: &Value) -> Vec<(String, u64)> {
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["amount"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Two billed calls: the caller's history and the admin's show the top-up, each reserve
/// and each commit, newest first, with the totals after each; pages of 2 chain by cursor;
/// a bad parameter is `400`; another caller sees only its own account.
async fn history_answers_every_move<L: Ledger + LedgerAdmin + LedgerReports>(ledger: L) {
    let acct = account(&ledger, "acct_hist", "key-hist", 100).await;
    account(&ledger, "acct_other", "key-other", 50).await;
    let server = app(ledger.clone()).await;
    for _ in 0..2 {
        assert_eq!(
            send(&http1(), get_req(&server.url("/v1/echo"), Some("key-hist")))
                .await
                .status,
            200
        );
    }
    support::rig::wait_until("both commits land", || async {
        ledger.balance(&acct).await.unwrap().committed == 6
    })
    .await;

    let mine = send(
        &http1(),
        get_req(&server.url("/v1/credits/history"), Some("key-hist")),
    )
    .await;
    assert_eq!(mine.status, 200, "{mine:?}");
    let body = mine.json();
    assert_eq!(body["account"], "acct_hist");
    let expected = [
        ("commit", 3),
        ("reserve", 3),
        ("commit", 3),
        ("reserve", 3),
        ("top_up", 100),
    ]
    .map(|(k, n)| (k.to_owned(), n))
    .to_vec();
    assert_eq!(kinds(&body), expected);
    assert_eq!(body["entries"][0]["available"], 94);
    assert_eq!(body["entries"][0]["committed"], 6);
    assert_eq!(body["entries"][1]["route"], "/v1/echo");
    assert!(body["next"].is_null());

    // The admin's view, two at a time.
    let mut seen = Vec::new();
    let mut url = server.url("/admin/accounts/acct_hist/history?limit=2");
    loop {
        let req = http::Request::get(&url)
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(http_body_util::Full::default())
            .unwrap();
        let page = send(&http1(), req).await;
        assert_eq!(page.status, 200, "{page:?}");
        let body = page.json();
        seen.extend(kinds(&body));
        match body["next"].as_str() {
            Some(next) => {
                url = server.url(&format!(
                    "/admin/accounts/acct_hist/history?limit=2&cursor={next}"
                ))
            }
            None => break,
        }
    }
    assert_eq!(seen, expected);

    let bad = send(
        &http1(),
        get_req(&server.url("/v1/credits/history?limit=0"), Some("key-hist")),
    )
    .await;
    assert_eq!(bad.status, 400);
    // No parameter names an account: the caller's key does.
    let named = send(
        &http1(),
        get_req(
            &server.url("/v1/credits/history?account=acct_hist"),
            Some("key-other"),
        ),
    )
    .await;
    assert_eq!(named.status, 400);
    let other = send(
        &http1(),
        get_req(&server.url("/v1/credits/history"), Some("key-other")),
    )
    .await;
    let body = other.json();
    assert_eq!(body["account"], "acct_other");
    assert_eq!(kinds(&body), vec![("top_up".to_owned(), 50)]);
    let unknown = send(
        &http1(),
        get_req(&server.url("/v1/credits/history"), Some("key-nobody")),
    )
    .await;
    assert_eq!(unknown.status, 401);
}

on_every_ledger!(history_answers_every_move);
