//! The published conformance suite, run on the ledgers of `examples/custom_ledger/`: one
//! written from scratch on the public API, and a recording decorator (here around
//! [`MemoryLedger`]). The proof that a ledger outside the crate can keep the contract.

#[allow(dead_code)]
#[path = "../examples/custom_ledger/ledger.rs"]
mod ledger;
#[allow(dead_code)]
#[path = "../examples/custom_ledger/recording.rs"]
mod recording;

/// [`ledger::TinyLedger`], written from scratch.
mod tiny {
    use tower_credits::clock::ManualClock;
    use tower_credits::conformance::Harness;

    use crate::ledger::TinyLedger;

    struct TinyHarness;

    impl Harness for TinyHarness {
        type L = TinyLedger;

        async fn ledger(&self) -> (TinyLedger, ManualClock) {
            let clock = ManualClock::new();
            (TinyLedger::with_clock(clock.clone()), clock)
        }
    }

    tower_credits::conformance_suite!(TinyHarness);
}

/// [`recording::RecordingLedger`] around [`MemoryLedger`]: a decorator keeps the contract.
mod recorded {
    use tower_credits::clock::ManualClock;
    use tower_credits::conformance::Harness;
    use tower_credits::MemoryLedger;

    use crate::recording::RecordingLedger;

    struct RecordedHarness;

    impl Harness for RecordedHarness {
        type L = RecordingLedger<MemoryLedger>;

        async fn ledger(&self) -> (RecordingLedger<MemoryLedger>, ManualClock) {
            let clock = ManualClock::new();
            let memory = MemoryLedger::builder().clock(clock.clone()).build();
            (RecordingLedger::new(memory), clock)
        }
    }

    tower_credits::conformance_suite!(RecordedHarness);
}

/// The recording decorator records, in order, what it forwards.
#[tokio::test]
async fn the_recording_ledger_records_every_operation() {
    use recording::{Recorded, RecordingLedger};
    use tower_credits::ledger::{HoldId, Reserve};
    use tower_credits::{AccountId, Ledger, LedgerAdmin, LedgerReports, TopUp};

    let ledger = RecordingLedger::new(ledger::TinyLedger::new());
    let acct = AccountId::new("acct_log").unwrap();
    let hold = HoldId::new("h1").unwrap();
    ledger.top_up(TopUp::new(&acct, 10, "pay-1")).await.unwrap();
    ledger
        .reserve(Reserve::new(acct.clone(), hold.clone(), 4))
        .await
        .unwrap();
    let settled = ledger.commit(&acct, &hold, 3).await.unwrap();
    assert_eq!((settled.committed, settled.released), (3, 1));
    assert_eq!(ledger.balance(&acct).await.unwrap().available, 7);
    let log = ledger.log();
    assert!(
        matches!(
            log.as_slice(),
            [
                Recorded::TopUp(_),
                Recorded::Reserve(r),
                Recorded::Settle(s),
                Recorded::Balance(_),
            ] if r.amount() == 4 && s.actual() == Some(3)
        ),
        "{log:?}"
    );
}
