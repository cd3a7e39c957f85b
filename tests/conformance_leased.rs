//! The ledger conformance suite through the lease wrapper ([`Leased`]) over the in-memory
//! ledger, with a board and the default settings: traffic that never makes an account busy
//! must see the wrapped ledger's answers unchanged (the lease path has its own tests in
//! `tests/leases.rs`).

use tower_credits::clock::ManualClock;
use tower_credits::conformance::Harness;
use tower_credits::ledger::Leased;
use tower_credits::MemoryLedger;

/// Every call makes a new ledger, wrapped, on a new manual clock.
struct LeasedHarness;

impl Harness for LeasedHarness {
    type L = Leased<MemoryLedger>;

    async fn ledger(&self) -> (Leased<MemoryLedger>, ManualClock) {
        let clock = ManualClock::new();
        let ledger = MemoryLedger::builder().clock(clock.clone()).build();
        let leased = Leased::new(ledger.clone())
            .board(ledger.lease_board())
            .clock(clock.clone());
        (leased, clock)
    }
}

tower_credits::conformance_suite!(LeasedHarness);
