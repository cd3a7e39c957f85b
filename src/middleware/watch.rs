//! What a request (or its body) and the keeper share about one hold: the lifetime cap,
//! the stall clock, and the cut the keeper makes.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::task::Waker;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

/// Why the keeper cut a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// It ran past the layer's hold lifetime cap.
    Lifetime,
    /// Its body's reader left a frame unread for the stall timeout.
    Stalled,
}

const RUNNING: u8 = 0;
const STREAMING: u8 = 1;
const NOT_CUT: u8 = 0;
const CUT_LIFETIME: u8 = 1;
const CUT_STALLED: u8 = 2;
/// `delivered_ms` while the body waits on the handler: no stall clock runs.
const WAITING: u64 = u64::MAX;

/// What a request (or its body) and the keeper share about one hold.
#[derive(Debug)]
pub(crate) struct HoldWatch {
    origin: Instant,
    /// The lifetime cap: the hold is cut here, whatever its state.
    pub(super) cap_at: Instant,
    /// [`RUNNING`] before the head, [`STREAMING`] once the body settles at its end.
    phase: AtomicU8,
    /// When the body last handed a frame to the server (ms since `origin`), or
    /// [`WAITING`] while it waits on the handler.
    delivered_ms: AtomicU64,
    cut: AtomicU8,
    /// The request's or body's task, woken when the hold is cut.
    waker: AtomicWaker,
    /// Signalled when the holder is gone (settled, dropped), so the keeper lets go at once.
    pub(super) gone: tokio::sync::Notify,
}

impl HoldWatch {
    pub(crate) fn new(cap_at: Instant) -> Self {
        Self {
            origin: Instant::now(),
            cap_at,
            phase: AtomicU8::new(RUNNING),
            delivered_ms: AtomicU64::new(WAITING),
            cut: AtomicU8::new(NOT_CUT),
            waker: AtomicWaker::new(),
            gone: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The holder ended or was dropped: the keeper stops watching.
    pub(crate) fn gone(&self) {
        // A stored permit if the keeper is not waiting yet.
        self.gone.notify_one();
    }

    /// The head left; the body streams and settles at its end. The head counts as a frame
    /// handed over: a reader that never reads the body is a stalled reader.
    pub(crate) fn streaming(&self) {
        self.delivered();
        self.phase.store(STREAMING, Ordering::Release);
    }

    /// The body handed a frame to the server: the stall clock runs until its next poll.
    pub(crate) fn delivered(&self) {
        self.delivered_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The body waits on the handler: the reader is not the one holding things up.
    pub(crate) fn waiting(&self, waker: &Waker) {
        self.waker.register(waker);
        self.delivered_ms.store(WAITING, Ordering::Relaxed);
    }

    /// Registers the task to wake when the hold is cut.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Whether, and why, the keeper cut this hold (it is settled).
    pub(crate) fn cut(&self) -> Option<Cut> {
        match self.cut.load(Ordering::Acquire) {
            CUT_LIFETIME => Some(Cut::Lifetime),
            CUT_STALLED => Some(Cut::Stalled),
            _ => None,
        }
    }

    pub(super) fn is_streaming(&self) -> bool {
        self.phase.load(Ordering::Acquire) == STREAMING
    }

    /// When the reader counts as stalled if nothing changes; while the body waits on the
    /// handler, a time to look again.
    pub(super) fn stall_at(&self, timeout: Duration, now: Instant) -> Option<Instant> {
        if !self.is_streaming() {
            return None;
        }
        match self.delivered_ms.load(Ordering::Relaxed) {
            WAITING => Some(now + timeout),
            ms => Some(self.origin + Duration::from_millis(ms) + timeout),
        }
    }

    pub(super) fn stalled(&self, timeout: Duration, now: Instant) -> bool {
        self.is_streaming()
            && match self.delivered_ms.load(Ordering::Relaxed) {
                WAITING => false,
                ms => now >= self.origin + Duration::from_millis(ms) + timeout,
            }
    }

    pub(super) fn mark_cut(&self, cut: Cut) {
        let code = match cut {
            Cut::Lifetime => CUT_LIFETIME,
            Cut::Stalled => CUT_STALLED,
        };
        self.cut.store(code, Ordering::Release);
        self.waker.wake();
    }
}

/// A [`ResponseBody`](crate::ResponseBody) that settles at its end left a frame unread for the layer's
/// [`stall_timeout`](crate::CreditLayer::stall_timeout): its hold was committed at what the
/// `Charge` said so far, and the body ends with this error. A body waiting on the handler
/// (nothing to send yet) is never stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reader stopped reading; the response was cut short and billed for what was sent")]
#[non_exhaustive]
pub struct ReaderStalled;

/// A [`ResponseBody`](crate::ResponseBody) that settles at its end was still streaming at the layer's
/// [`max_hold_lifetime`](crate::CreditLayer::max_hold_lifetime): its hold was committed at
/// what the `Charge` said so far, and the body ends with this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the response ran past the hold lifetime cap; it was cut short and billed for what was sent"
)]
#[non_exhaustive]
pub struct HoldLifetimeExceeded;
