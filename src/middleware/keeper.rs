//! The hold keeper: one worker per layer that owns every piece of billing work a request
//! leaves behind, so nothing on the request path spawns a task.
//!
//! Modelled on tower's `buffer` worker: requests (and the drop guards that settle for
//! them) send jobs down an unbounded channel — a guard dropped during unwinding cannot
//! wait — and one task, started on first use, drives them all:
//!
//! * **settles** the ledger did not answer on their first poll: the request's task sent
//!   the command (so a caller's next request sees it settled) and the keeper waits for the
//!   reply, retrying with backoff while the hold lives (settles are idempotent by hold id);
//! * **one watch per hold** that outlives its first renewal, or whose body settles at its
//!   end: it renews the hold every third of its TTL (retried until it would expire), runs
//!   the lifetime cap on its own timer, and keeps the stall clock. Past the cap, or once a
//!   frame handed to the server has been left unread for the stall timeout (a stalled
//!   reader), the watch cuts the hold: it settles it through the same code as every other
//!   end ([`settle_hold`]), at what its `Charge` says so far, and wakes the request or body,
//!   which then ends. A body waiting on the handler (a server with nothing to send yet) is
//!   never a stalled reader.
//!
//! [`CreditLayer::shutdown`](crate::CreditLayer::shutdown) closes the channel and joins
//! the worker. A settle arriving after that is polled once in place; if the ledger has
//! not answered, it is left to expire (its credits go back) and counted in
//! `stats().credits_lost`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::guard::{settle_hold, HoldCtx};
use super::settle::{settle_call, settled, Settler, Ticket};
use super::settlement::End;
pub(crate) use super::watch::{Cut, HoldWatch};
use crate::backoff::Backoff;
use crate::events::Events;
use crate::ledger::{Extend, Extended, Ledger, LedgerError, SettleDecision, Settlement};
use crate::outage::{Breaker, Stats};

/// The backoff of settles and renewals the ledger did not answer.
const RETRY: Backoff = Backoff::new(Duration::from_millis(25), Duration::from_secs(2));

/// Work handed to the keeper.
pub(crate) enum Job<L: Ledger> {
    /// Finish a settle: its first try is pending, or found the ledger unavailable.
    Settle {
        hold: HoldCtx,
        decision: SettleDecision,
        first: FirstTry<L>,
        ticket: Ticket,
    },
    /// Wait for a keyed request's response to be stored (sent once; a failure leaves its
    /// record unavailable for replays).
    Store(L::Future<bool>),
    /// Watch a hold until it is settled: renewals, the lifetime cap, the stall clock.
    Watch {
        hold: HoldCtx,
        watch: Arc<HoldWatch>,
        settler: Arc<dyn Settler>,
        expires: Instant,
    },
}

/// The first try of a settle, made in the request's task.
pub(crate) enum FirstTry<L: Ledger> {
    /// Sent; the reply is still to come.
    Pending(L::Future<Settlement>),
    /// The ledger could not be reached.
    Unavailable(LedgerError),
}

/// What the worker needs, cloned out of the layer's configuration when it starts.
pub(crate) struct WorkerCtx<L> {
    pub(crate) ledger: L,
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) events: Option<Events>,
    pub(crate) hold_ttl: Duration,
    pub(crate) stall_timeout: Duration,
}

/// One layer's keeper: the channel to its worker, started on first use.
pub(crate) struct Keeper<L: Ledger> {
    tx: OnceLock<mpsc::UnboundedSender<Job<L>>>,
    /// Set by `shutdown`: no job is taken any more.
    closed: AtomicBool,
    close: watch::Sender<bool>,
    /// Jobs sent and not yet taken by the worker.
    queued: Arc<AtomicUsize>,
    /// Jobs the worker is driving.
    running: Arc<AtomicUsize>,
    stopped: watch::Sender<bool>,
}

impl<L: Ledger> Default for Keeper<L> {
    fn default() -> Self {
        Self {
            tx: OnceLock::new(),
            closed: AtomicBool::new(false),
            close: watch::Sender::new(false),
            queued: Arc::default(),
            running: Arc::default(),
            stopped: watch::Sender::new(false),
        }
    }
}

impl<L: Ledger> Keeper<L> {
    /// Hands `job` to the worker, starting it on first use. Gives the job back when the
    /// keeper is closed or there is no runtime to run it on.
    // The job comes back whole (it is large) only on that cold path, to be settled in
    // place: boxing every job to shrink it would cost an allocation on the hot path.
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(
        &self,
        job: Job<L>,
        ctx: impl FnOnce() -> WorkerCtx<L>,
    ) -> Result<(), Job<L>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(job);
        }
        let tx = match self.tx.get() {
            Some(tx) => tx,
            None => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return Err(job);
                };
                self.tx.get_or_init(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let worker = Worker {
                        ctx: Arc::new(ctx()),
                        queued: self.queued.clone(),
                        running: self.running.clone(),
                        close: self.close.subscribe(),
                        stopped: self.stopped.clone(),
                    };
                    runtime.spawn(worker.run(rx));
                    tx
                })
            }
        };
        self.queued.fetch_add(1, Ordering::AcqRel);
        tx.send(job).map_err(|mpsc::error::SendError(job)| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            job
        })
    }

    /// Jobs waiting in the channel, and jobs the worker is driving.
    pub(crate) fn load(&self) -> (usize, usize) {
        (
            self.queued.load(Ordering::Acquire),
            self.running.load(Ordering::Acquire),
        )
    }

    /// Stops taking jobs, lets the worker finish the settles it has (watched bodies stop
    /// being renewed), and waits at most `timeout` for it; `true` if it finished.
    pub(crate) async fn shutdown(&self, timeout: Duration) -> bool {
        self.closed.store(true, Ordering::Release);
        self.close.send_replace(true);
        if self.tx.get().is_none() {
            return true;
        }
        let mut stopped = self.stopped.subscribe();
        let joined = tokio::time::timeout(timeout, stopped.wait_for(|stopped| *stopped)).await;
        joined.is_ok()
    }
}

type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Worker<L> {
    ctx: Arc<WorkerCtx<L>>,
    queued: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    close: watch::Receiver<bool>,
    stopped: watch::Sender<bool>,
}

impl<L: Ledger> Worker<L> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job<L>>) {
        let mut work: FuturesUnordered<Work> = FuturesUnordered::new();
        let mut taking = true;
        loop {
            tokio::select! {
                job = rx.recv(), if taking => match job {
                    Some(job) => {
                        self.queued.fetch_sub(1, Ordering::AcqRel);
                        self.running.fetch_add(1, Ordering::AcqRel);
                        work.push(self.start(job));
                    }
                    None => taking = false,
                },
                Some(()) = work.next(), if !work.is_empty() => {
                    self.running.fetch_sub(1, Ordering::AcqRel);
                }
                // Shutdown: refuse new jobs, but take the ones already queued.
                Ok(()) = self.close.changed(), if taking && !rx.is_closed() => rx.close(),
            }
            if !taking && work.is_empty() {
                break;
            }
        }
        self.stopped.send_replace(true);
    }

    fn start(&self, job: Job<L>) -> Work {
        let ctx = self.ctx.clone();
        match job {
            Job::Settle {
                hold,
                decision,
                first,
                ticket,
            } => Box::pin(async move {
                let first = match first {
                    FirstTry::Pending(fut) => fut.await,
                    FirstTry::Unavailable(error) => Err(error),
                };
                finish_settle(&ctx, &hold, decision, first).await;
                drop(ticket);
            }),
            Job::Store(call) => Box::pin(async move {
                if let Err(error) = call.await {
                    tracing::warn!(%error, "a response kept for idempotent replays was not stored; its retries get replay-unavailable");
                }
            }),
            Job::Watch {
                hold,
                watch,
                settler,
                expires,
            } => {
                let close = self.close.clone();
                Box::pin(async move {
                    keep(&ctx, &hold, &watch, &*settler, expires, close).await;
                })
            }
        }
    }
}

/// Waits out a settle: retried with backoff while the hold lives. A try that timed out
/// may still be queued on the server and commit while the hold lives, so the last try goes
/// out at the deadline, when nothing can commit the hold any more; its answer, if any, is
/// the truth.
async fn finish_settle<L: Ledger>(
    ctx: &WorkerCtx<L>,
    hold: &HoldCtx,
    decision: SettleDecision,
    mut answer: Result<Settlement, LedgerError>,
) {
    let deadline = Instant::now() + ctx.hold_ttl;
    let mut backoff = RETRY;
    loop {
        match answer {
            Err(error) if error.is_unavailable() => {
                ctx.breaker.record(false);
                let now = Instant::now();
                if now >= deadline {
                    return settled(&ctx.stats, ctx.events.as_ref(), hold, decision, Err(error));
                }
                tokio::time::sleep(backoff.delay().min(deadline - now)).await;
                Stats::add(&ctx.stats.settle_retries, 1);
                answer = settle_call(&ctx.ledger, hold, decision).await;
            }
            answer => {
                if answer.is_ok() {
                    ctx.breaker.record(true);
                }
                return settled(&ctx.stats, ctx.events.as_ref(), hold, decision, answer);
            }
        }
    }
}

/// Renews a hold, retrying until `expires` (when the ledger gives its credits back
/// anyway). Returns the new expiry, or `None` when the hold is gone.
async fn renew<L: Ledger>(ctx: &WorkerCtx<L>, hold: &HoldCtx, expires: Instant) -> Option<Instant> {
    let charge = &hold.charge;
    let mut backoff = RETRY;
    loop {
        let asked = Instant::now();
        let extend = Extend::new(charge.account(), charge.hold_id(), ctx.hold_ttl);
        match ctx.ledger.extend(extend).await {
            Ok(Extended::Until(_)) => {
                ctx.breaker.record(true);
                return Some(asked + ctx.hold_ttl);
            }
            Ok(_) => return None,
            Err(error) if error.is_unavailable() && Instant::now() + backoff.peek() < expires => {
                ctx.breaker.record(false);
                tracing::debug!(hold = %charge.hold_id(), %error, "renewal failed; retrying");
                tokio::time::sleep(backoff.delay()).await;
            }
            Err(error) => {
                tracing::warn!(hold = %charge.hold_id(), %error, "could not renew hold; it expires and its credits go back");
                return None;
            }
        }
    }
}

/// Watches one hold until it is settled: renewed every third of its TTL, cut at the
/// lifetime cap, or once its reader stalls.
async fn keep<L: Ledger>(
    ctx: &WorkerCtx<L>,
    hold: &HoldCtx,
    watch: &HoldWatch,
    settler: &dyn Settler,
    mut expires: Instant,
    mut close: watch::Receiver<bool>,
) {
    let every = ctx.hold_ttl / 3;
    loop {
        let renew_at = expires - (ctx.hold_ttl - every);
        let now = Instant::now();
        let mut wake = renew_at.min(watch.cap_at);
        if let Some(stall_at) = watch.stall_at(ctx.stall_timeout, now) {
            wake = wake.min(stall_at);
        }
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            // The holder settled (or will, when dropped): nothing left to keep.
            () = watch.gone.notified() => return,
            // Shutdown: stop renewing; the hold still settles when its holder ends.
            _ = close.wait_for(|closed| *closed) => return,
        }
        if hold.charge.is_closed() {
            return; // Settled by its holder.
        }
        let now = Instant::now();
        let cut = if now >= watch.cap_at {
            Some(Cut::Lifetime)
        } else if watch.stalled(ctx.stall_timeout, now) {
            Some(Cut::Stalled)
        } else {
            None
        };
        if let Some(cut) = cut {
            return cut_hold(hold, watch, settler, cut);
        }
        if now >= renew_at {
            match renew(ctx, hold, expires).await {
                Some(until) => expires = until,
                None => return,
            }
        }
    }
}

/// Settles a hold the keeper cut, like any other early end (the `Charge` so far), and
/// wakes its holder, which then ends: the request answers `504`, the body ends with an
/// error.
fn cut_hold(hold: &HoldCtx, watch: &HoldWatch, settler: &dyn Settler, cut: Cut) {
    let end = if watch.is_streaming() {
        End::Early
    } else {
        End::BeforeHead
    };
    if settle_hold(settler, hold, end).is_some() {
        match cut {
            Cut::Lifetime => {
                tracing::warn!(hold = %hold.charge.hold_id(), "hold ran past its lifetime cap; cut and settled at what its charge says so far")
            }
            Cut::Stalled => {
                tracing::info!(hold = %hold.charge.hold_id(), "reader stalled; committed what the charge says so far")
            }
        }
        watch.mark_cut(cut);
    }
}
