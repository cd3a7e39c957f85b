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
//! * **renewals** of holds whose handler is still running, retried until the hold would
//!   expire, so one failed extend never loses a hold;
//! * **watches** of bodies that settle at their end: renewed every third of the hold's TTL
//!   while the body makes progress; a body not polled for the stall timeout is committed
//!   at what its `Charge` says so far and ends with an error when next polled, so a reader
//!   that stops reading cannot pin a hold (and its account's credits) for ever.
//!
//! [`CreditLayer::shutdown`](crate::CreditLayer::shutdown) closes the channel and joins
//! the worker. A settle arriving after that is polled once in place; if the ledger has
//! not answered, it is left to expire (its credits go back) and counted in
//! `stats().credits_lost`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::guard::{decide, Decision, End, HoldCtx};
use super::settle::{settle_call, settled, Ticket};
use crate::events::Events;
use crate::ledger::{Extend, Extended, Ledger, LedgerError, Settlement};
use crate::outage::{Breaker, Stats};

/// First retry delay of a call the ledger did not answer; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(25);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Work handed to the keeper.
pub(crate) enum Job<L: Ledger> {
    /// Finish a settle: its first try is pending, or found the ledger unavailable.
    Settle {
        hold: HoldCtx,
        decision: Decision,
        first: FirstTry<L>,
        ticket: Ticket,
    },
    /// Renew a hold now, retrying until it would expire.
    Extend { hold: HoldCtx, expires: Instant },
    /// Keep a body's hold alive while the body makes progress; end it when it stalls.
    Watch {
        hold: HoldCtx,
        watch: Arc<BodyWatch>,
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

/// What a body and the keeper share about a body that settles at its end.
#[derive(Debug)]
pub(crate) struct BodyWatch {
    origin: Instant,
    /// When the body was last polled, in ms since `origin`.
    last_poll_ms: AtomicU64,
    /// Set by the keeper when the body stalled and was settled for it.
    stalled: AtomicBool,
    /// Signalled when the body is gone (ended or dropped), so the keeper lets go of it at
    /// once rather than at its next renewal.
    gone: tokio::sync::Notify,
}

impl BodyWatch {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_poll_ms: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            gone: tokio::sync::Notify::new(),
        }
    }

    /// The body ended or was dropped: the keeper stops watching it.
    pub(crate) fn gone(&self) {
        // A stored permit if the keeper is not waiting yet.
        self.gone.notify_one();
    }

    /// The body was polled: the reader is reading.
    pub(crate) fn polled(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_poll_ms.store(ms, Ordering::Relaxed);
    }

    fn last_poll(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_poll_ms.load(Ordering::Relaxed))
    }

    /// Whether the keeper ended this body because its reader stalled.
    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }
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
            Job::Extend { hold, expires } => Box::pin(async move {
                extend(&ctx, &hold, expires).await;
            }),
            Job::Watch {
                hold,
                watch,
                expires,
            } => {
                let close = self.close.clone();
                Box::pin(async move { keep(&ctx, hold, watch, expires, close).await })
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
    decision: Decision,
    mut answer: Result<Settlement, LedgerError>,
) {
    let deadline = Instant::now() + ctx.hold_ttl;
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        match answer {
            Err(error) if error.is_unavailable() => {
                ctx.breaker.record(false);
                let now = Instant::now();
                if now >= deadline {
                    return settled(&ctx.stats, ctx.events.as_ref(), hold, decision, Err(error));
                }
                tokio::time::sleep(delay.min(deadline - now)).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
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
async fn extend<L: Ledger>(
    ctx: &WorkerCtx<L>,
    hold: &HoldCtx,
    expires: Instant,
) -> Option<Instant> {
    let charge = &hold.charge;
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        let asked = Instant::now();
        match ctx
            .ledger
            .extend(Extend::new(
                charge.account(),
                charge.hold_id(),
                ctx.hold_ttl,
            ))
            .await
        {
            Ok(Extended::Until(_)) => {
                ctx.breaker.record(true);
                return Some(asked + ctx.hold_ttl);
            }
            Ok(_) => return None,
            Err(error) if error.is_unavailable() && Instant::now() + delay < expires => {
                ctx.breaker.record(false);
                tracing::debug!(hold = %charge.hold_id(), %error, "renewal failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            Err(error) => {
                tracing::warn!(hold = %charge.hold_id(), %error, "could not renew hold; it expires and its credits go back");
                return None;
            }
        }
    }
}

/// Keeps a streaming body's hold: renewed every third of its TTL while the body is being
/// read; committed at what the `Charge` says so far once the reader stalls.
async fn keep<L: Ledger>(
    ctx: &WorkerCtx<L>,
    hold: HoldCtx,
    watch: Arc<BodyWatch>,
    mut expires: Instant,
    mut close: watch::Receiver<bool>,
) {
    let every = ctx.hold_ttl / 3;
    loop {
        let renew_at = expires - (ctx.hold_ttl - every);
        let stall_at = watch.last_poll() + ctx.stall_timeout;
        tokio::select! {
            () = tokio::time::sleep_until(renew_at.min(stall_at)) => {}
            // The body settled (or will, when dropped): nothing left to keep.
            () = watch.gone.notified() => return,
            // Shutdown: stop renewing; the body still settles when it ends or is dropped.
            _ = close.wait_for(|closed| *closed) => return,
        }
        if hold.charge.is_closed() {
            return; // The body ended and settled.
        }
        let now = Instant::now();
        if now >= watch.last_poll() + ctx.stall_timeout {
            let Some(closed) = hold.charge.close() else {
                return;
            };
            watch.stalled.store(true, Ordering::Release);
            let decision = decide(End::Early, &closed);
            tracing::info!(hold = %hold.charge.hold_id(), "reader stalled; committed what the charge says so far");
            let first = settle_call(&ctx.ledger, &hold, decision).await;
            return finish_settle(ctx, &hold, decision, first).await;
        }
        if now >= renew_at {
            match extend(ctx, &hold, expires).await {
                Some(until) => expires = until,
                None => return,
            }
        }
    }
}

/// Starts watching a body: what the body keeps to record its progress.
pub(crate) fn watch() -> Arc<BodyWatch> {
    Arc::new(BodyWatch::new())
}
