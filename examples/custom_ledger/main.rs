//! A ledger of your own: [`TinyLedger`](ledger::TinyLedger), written from scratch on the
//! public API (the three ledger traits, their request structs, the outcome constructors,
//! and the `ledger::validate` and `ledger::runway` helpers), and
//! [`RecordingLedger`](recording::RecordingLedger), a decorator that records every
//! operation asked of any ledger. Both pass the conformance suite of the `conformance`
//! feature: `tests/conformance_example.rs` runs it on them.
//!
//! ```text
//! cargo run --example custom_ledger
//! ```
//!
//! Bills three calls through a `CreditLayer` on `RecordingLedger<TinyLedger>`, then prints
//! the balance, the usage and what the layer asked of the ledger. Last, it calls the ledger
//! directly to show the credit events it detects (`balance.low`, `balance.depleted`):
//! `TinyLedger` keeps no outbox (it does not implement `EventOutbox`, so a `Dispatcher`
//! cannot deliver for it), it returns them in `Settlement::events` and
//! `Insufficient::events` for the caller to deliver.

mod ledger;
mod recording;

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, ServiceExt};
use tower_credits::events::CreditEvent;
use tower_credits::ledger::HoldId;
use tower_credits::ledger::{Configure, Reserve, ReserveOutcome};
use tower_credits::pricing::Pricing;
use tower_credits::TopUp;
use tower_credits::{AccountId, AccountSettings, ApiKeyHash, CreditLayer};
use tower_credits::{Ledger, LedgerAdmin, LedgerReports};

use ledger::TinyLedger;
use recording::RecordingLedger;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ledger = RecordingLedger::new(TinyLedger::new());
    let account = AccountId::new("acct_tiny")?;
    ledger
        .configure(Configure::new(
            &account,
            AccountSettings::new().low_balance_threshold(5),
        ))
        .await?;
    ledger.top_up(TopUp::new(&account, 10, "payment-1")).await?;
    ledger
        .register_api_key(&ApiKeyHash::of("tiny-key"), &account)
        .await?;

    let layer = CreditLayer::new(ledger.clone()).pricing(Pricing::new().route("GET /v1/echo", 4));
    let service = layer.layer(tower::service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new("echo".to_owned()))
    }));

    for call in 1..=3 {
        let request = Request::get("/v1/echo")
            .header("authorization", "Bearer tiny-key")
            .body(String::new())?;
        let response = service.clone().oneshot(request).await?;
        let header = |name: &str| {
            let value = response.headers().get(name);
            value
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        println!(
            "call {call}: {} cost {} remaining {} warning {}",
            response.status(),
            header("credits-cost"),
            header("credits-remaining"),
            header("credits-warning"),
        );
    }
    // Every settle is done before the books are read.
    layer.shutdown(Duration::from_secs(5)).await;

    let balance = ledger.balance(&account).await?;
    println!(
        "balance: available {} committed {} of {} topped up",
        balance.available, balance.committed, balance.topped_up
    );
    for (route, usage) in &ledger.usage(&account).await?.by_route {
        println!(
            "usage: {route}: {} credits over {} calls",
            usage.credits, usage.calls
        );
    }
    println!("what the layer asked of the ledger:");
    for op in ledger.log() {
        println!("  {op}");
    }

    // The second call crossed the threshold and the third was refused: the layer logged
    // those events, but has no outbox to deliver them from. Called directly, the ledger
    // hands them over. A top-up re-arms both (2 + 10 = 12 credits).
    ledger.top_up(TopUp::new(&account, 10, "payment-2")).await?;
    let hold = HoldId::generate();
    ledger
        .reserve(Reserve::new(account.clone(), hold.clone(), 8))
        .await?;
    let settlement = ledger.commit(&account, &hold, 8).await?; // 4: below 5
    settlement.events.iter().for_each(print_event);
    let refused = ledger
        .reserve(Reserve::new(account.clone(), HoldId::generate(), 5))
        .await?;
    if let ReserveOutcome::Insufficient(refusal) = refused {
        refusal.events.iter().for_each(print_event);
    }
    Ok(())
}

/// Prints `event` as a receiver would get it.
fn print_event(event: &CreditEvent) {
    println!("event: {}", String::from_utf8_lossy(&event.to_json()));
}
