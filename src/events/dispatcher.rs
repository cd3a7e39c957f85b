//! The dispatcher: delivers events to every sink, retries, acknowledges, dead-letters,
//! and claims what other replicas left behind.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::RetryPolicy;
use crate::ledger::{CreditEvent, EventOutbox, DEFAULT_EVENT_LEASE};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Most events one scan claims.
const CLAIM_BATCH: usize = 64;

/// One place events go.
trait Sink: Send + Sync {
    fn name(&self) -> String;
    fn send(&self, event: &CreditEvent, body: Bytes) -> BoxFuture<Result<(), String>>;
}

struct Callback<F>(F);

impl<F, Fut> Sink for Callback<F>
where
    F: Fn(CreditEvent) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn name(&self) -> String {
        "callback".to_owned()
    }

    fn send(&self, event: &CreditEvent, _body: Bytes) -> BoxFuture<Result<(), String>> {
        let fut = (self.0)(event.clone());
        Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
    }
}

#[cfg(feature = "webhook")]
impl Sink for super::Webhook {
    fn name(&self) -> String {
        // Logged and kept in dead letters: never the URL's user info, query or fragment.
        format!("webhook {}", self.redacted_url())
    }

    fn send(&self, event: &CreditEvent, body: Bytes) -> BoxFuture<Result<(), String>> {
        let hook = self.clone();
        let id = event.id.clone();
        Box::pin(async move { hook.send(&id, body).await.map_err(|e| e.to_string()) })
    }
}

/// Builds the event delivery of one replica; [`spawn`](Dispatcher::spawn) starts it.
///
/// See the [module docs](super) for an example.
pub struct Dispatcher {
    outbox: Arc<dyn EventOutbox>,
    sinks: Vec<Arc<dyn Sink>>,
    retry: RetryPolicy,
    lease: Duration,
    scan_every: Duration,
    send_timeout: Duration,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("replica", &self.outbox.replica())
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("retry", &self.retry)
            .field("lease", &self.lease)
            .field("scan_every", &self.scan_every)
            .field("send_timeout", &self.send_timeout)
            .finish()
    }
}

impl Dispatcher {
    /// Delivers the events of `outbox` (a ledger: [`MemoryLedger`](crate::MemoryLedger),
    /// or `RedisLedger`, one per replica).
    pub fn new(outbox: impl EventOutbox) -> Self {
        Self {
            outbox: Arc::new(outbox),
            sinks: Vec::new(),
            retry: RetryPolicy::default(),
            lease: DEFAULT_EVENT_LEASE,
            scan_every: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
        }
    }

    /// Calls `callback` with each event (on the replica that claimed it); an `Err` is a
    /// failed delivery, retried.
    pub fn on_event<F, Fut>(mut self, callback: F) -> Self
    where
        F: Fn(CreditEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.sinks.push(Arc::new(Callback(callback)));
        self
    }

    /// Posts each event to `webhook`, signed in the Standard Webhooks form: `webhook-id`
    /// is the event's [`id`](CreditEvent::id) (the same on every retry, so receivers
    /// deduplicate by it), `webhook-timestamp` the attempt's time and `webhook-signature`
    /// one `v1,` signature per secret (see [`signature`](super::signature)).
    #[cfg(feature = "webhook")]
    #[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
    pub fn webhook(mut self, webhook: super::Webhook) -> Self {
        self.sinks.push(Arc::new(webhook));
        self
    }

    /// How failed deliveries are retried (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How long a claim keeps an event from other replicas (default 30 s); renewed while
    /// its delivery is retried. Shorter: a dead replica's events go out sooner, but a slow
    /// receiver may see a duplicate.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often the outbox is asked for events whose lease lapsed (default 5 s). On Redis
    /// a claim reads the events due-index, never the keyspace: an idle claim is one command
    /// (see the `# Background work` docs of `ledger::redis`).
    pub fn scan_every(mut self, interval: Duration) -> Self {
        self.scan_every = interval;
        self
    }

    /// The longest one attempt of one sink may take (default 10 s; a webhook also has
    /// its own [timeout](super::Webhook::timeout)): a callback that hangs is a failed
    /// attempt, retried, not an event stuck forever.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Starts delivering on the current tokio runtime: what was detected here at once
    /// (through the returned [`Events`]), what other replicas left behind every
    /// [`scan_every`](Self::scan_every). The task ends once every clone of the returned
    /// handle is dropped and its deliveries are done: keep it (give it to
    /// [`CreditLayer::events`](crate::CreditLayer::events), or hold it) for as long as the
    /// replica runs.
    ///
    /// A dispatcher without a sink ([`on_event`](Self::on_event) or
    /// [`webhook`](Self::webhook)) delivers nothing and claims nothing: the events stay in
    /// the outbox for a dispatcher that can deliver them.
    #[must_use = "the dispatcher stops when its `Events` handle is dropped"]
    pub fn spawn(self) -> Events {
        if self.sinks.is_empty() {
            tracing::warn!(
                "an event dispatcher without a callback or webhook: events stay in the outbox"
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(EventStats::default());
        let worker = Worker {
            outbox: self.outbox,
            sinks: self.sinks.into(),
            retry: self.retry,
            lease: self.lease,
            send_timeout: self.send_timeout,
            stats: stats.clone(),
        };
        // `interval` refuses a zero period.
        tokio::spawn(worker.run(rx, self.scan_every.max(Duration::from_millis(1))));
        Events { tx, stats }
    }
}

/// Counts of a [`Dispatcher`]'s work.
#[derive(Debug, Default)]
pub struct EventStats {
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    dead_lettered: AtomicU64,
    claimed: AtomicU64,
    lost_leases: AtomicU64,
    last_latency_ms: AtomicU64,
    max_latency_ms: AtomicU64,
}

impl EventStats {
    /// Events delivered to every sink and acknowledged.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    /// Attempts that failed (each retried, or dead-lettered after the last).
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }
    /// Events whose retries ran out: kept as dead letters in the ledger.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
    /// Events claimed from the outbox by a scan (left behind by a replica, or not handed
    /// to [`Events::deliver`]).
    pub fn claimed(&self) -> u64 {
        self.claimed.load(Ordering::Relaxed)
    }
    /// Deliveries abandoned because another replica took the lease.
    pub fn lost_leases(&self) -> u64 {
        self.lost_leases.load(Ordering::Relaxed)
    }
    /// From detection to acknowledgement, for the last event delivered (ms).
    pub fn last_latency_ms(&self) -> u64 {
        self.last_latency_ms.load(Ordering::Relaxed)
    }
    /// The longest such time so far (ms).
    pub fn max_latency_ms(&self) -> u64 {
        self.max_latency_ms.load(Ordering::Relaxed)
    }
}

/// The handle of a running [`Dispatcher`]: give it to
/// [`CreditLayer::events`](crate::CreditLayer::events) so what a request detects is
/// delivered at once. Cloning is cheap.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<CreditEvent>,
    stats: Arc<EventStats>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Events {
    /// Delivers events a ledger operation just detected (from
    /// [`Settlement::events`](crate::ledger::Settlement::events) or
    /// [`Insufficient::events`](crate::ledger::Insufficient::events)), off the caller's task.
    pub fn deliver(&self, events: impl IntoIterator<Item = CreditEvent>) {
        for event in events {
            // A stopped dispatcher leaves the event in the outbox: another claims it.
            let _ = self.tx.send(event);
        }
    }

    /// What the dispatcher has done so far.
    pub fn stats(&self) -> &EventStats {
        &self.stats
    }
}

/// The deliveries running: each a task of its own, so a sink that panics ends its task,
/// not the dispatcher, and a slow scan never holds a delivery up.
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<()>,
    by_task: HashMap<tokio::task::Id, String>,
    /// Event ids being delivered here: a scan must not start a second delivery of one.
    ids: HashSet<String>,
}

impl InFlight {
    /// Starts delivering `event` unless it is already on its way; whether it started.
    fn start(&mut self, event: CreditEvent, worker: &Arc<Worker>) -> bool {
        if !self.ids.insert(event.id.clone()) {
            return false;
        }
        let id = event.id.clone();
        let task = self.tasks.spawn(worker.clone().deliver(event));
        self.by_task.insert(task.id(), id);
        true
    }

    /// A delivery task ended (or panicked).
    fn finished(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let task = match done {
            Ok((task, ())) => task,
            Err(error) => {
                // The event stays in the outbox, leased: once the lease lapses a scan (here
                // or on another replica) delivers it again.
                tracing::error!(%error, "an event delivery panicked; it is retried once its lease lapses");
                error.id()
            }
        };
        if let Some(id) = self.by_task.remove(&task) {
            self.ids.remove(&id);
        }
    }
}

struct Worker {
    outbox: Arc<dyn EventOutbox>,
    sinks: Arc<[Arc<dyn Sink>]>,
    retry: RetryPolicy,
    lease: Duration,
    send_timeout: Duration,
    stats: Arc<EventStats>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<CreditEvent>, scan_every: Duration) {
        let this = Arc::new(self);
        let mut ticker = tokio::time::interval(scan_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_flight = InFlight::default();
        let mut open = true;
        loop {
            tokio::select! {
                event = rx.recv(), if open => match event {
                    Some(_) if this.sinks.is_empty() => {}
                    Some(event) => {
                        in_flight.start(event, &this);
                    }
                    None => open = false,
                },
                _ = ticker.tick(), if open && !this.sinks.is_empty() => {
                    // Deliveries that ended since: their events may be claimable again
                    // (a requeued dead letter) and must not be taken for in flight.
                    while let Some(done) = in_flight.tasks.try_join_next_with_id() {
                        in_flight.finished(done);
                    }
                    match this.outbox.claim(this.lease, CLAIM_BATCH).await {
                        Ok(events) => {
                            for event in events {
                                if in_flight.start(event, &this) {
                                    this.stats.claimed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Err(error) => tracing::warn!(%error, "claiming events from the outbox failed; retried at the next scan"),
                    }
                }
                Some(done) = in_flight.tasks.join_next_with_id(), if !in_flight.tasks.is_empty() => {
                    in_flight.finished(done);
                }
                else => return,
            }
        }
    }

    /// Delivers one event to every sink, retrying the ones that failed.
    async fn deliver(self: Arc<Self>, event: CreditEvent) {
        let body = event.to_json();
        let mut waiting: Vec<Arc<dyn Sink>> = self.sinks.to_vec();
        let mut last_error = String::new();
        for attempt in 0..self.retry.attempts() {
            // Ours for the whole attempt (every sink may take its timeout), or not ours at
            // all: acknowledged meanwhile (a copy from the channel after a scan delivered
            // it), or taken over by another replica after a lapse. A ledger that cannot
            // say gets the attempt anyway: at least once.
            let budget = self
                .send_timeout
                .saturating_mul(waiting.len() as u32)
                .saturating_add(self.lease);
            if let Ok(false) = self.outbox.renew(&event, budget).await {
                self.stats.lost_leases.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(event = %event.id, "event acknowledged or taken over elsewhere; not sent again");
                return;
            }
            let mut failed = Vec::new();
            for sink in waiting {
                let attempt_result =
                    match tokio::time::timeout(self.send_timeout, sink.send(&event, body.clone()))
                        .await
                    {
                        Ok(result) => result,
                        Err(_) => Err(format!("no answer within {:?}", self.send_timeout)),
                    };
                #[cfg(feature = "metrics")]
                crate::metrics::webhook_delivery(match attempt_result {
                    Ok(()) => crate::metrics::Delivery::Delivered,
                    Err(_) => crate::metrics::Delivery::Failed,
                });
                match attempt_result {
                    Ok(()) => {}
                    Err(error) => {
                        self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(event = %event.id, kind = %event.kind, sink = %sink.name(), attempt, %error, "event delivery failed");
                        last_error = format!("{}: {error}", sink.name());
                        failed.push(sink);
                    }
                }
            }
            waiting = failed;
            if waiting.is_empty() {
                self.acknowledge(&event).await;
                return;
            }
            if attempt + 1 == self.retry.attempts() {
                break;
            }
            // Keep the event ours across the wait: another replica must not start over.
            let ceiling = self.retry.ceiling(attempt);
            match self
                .outbox
                .renew(&event, ceiling.saturating_add(self.lease))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    self.stats.lost_leases.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event = %event.id, "another replica took this event over");
                    return;
                }
                Err(error) => {
                    tracing::warn!(event = %event.id, %error, "renewing an event's lease failed")
                }
            }
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::webhook_delivery(crate::metrics::Delivery::DeadLettered);
        tracing::error!(event = %event.id, kind = %event.kind, account = %event.account, reason = %last_error, "event delivery gave up; kept as a dead letter");
        for _ in 0..3 {
            match self.outbox.dead_letter(&event, &last_error).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(event = %event.id, %error, "keeping a dead letter failed")
                }
            }
        }
    }

    async fn acknowledge(&self, event: &CreditEvent) {
        let latency = event.age().as_millis() as u64;
        self.stats.last_latency_ms.store(latency, Ordering::Relaxed);
        self.stats
            .max_latency_ms
            .fetch_max(latency, Ordering::Relaxed);
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        // An ack that never lands only costs a duplicate, once the lease lapses.
        for _ in 0..3 {
            match self.outbox.ack(event).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(event = %event.id, %error, "acknowledging a delivered event failed")
                }
            }
        }
    }
}
