//! The ledger conformance suite, run against [`MemoryLedger`].

use tower_credits::clock::ManualClock;
use tower_credits::conformance::Harness;
use tower_credits::MemoryLedger;

/// Every call makes a new ledger on a new manual clock.
struct MemoryHarness;

impl Harness for MemoryHarness {
    type L = MemoryLedger;

    async fn ledger(&self) -> (MemoryLedger, ManualClock) {
        let clock = ManualClock::new();
        let ledger = MemoryLedger::builder().clock(clock.clone()).build();
        (ledger, clock)
    }
}

tower_credits::conformance_suite!(MemoryHarness);
tower_credits::conformance_outbox_suite!(MemoryHarness);
