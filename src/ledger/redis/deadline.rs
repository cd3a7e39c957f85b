//! The call deadline: a Redis call answered within the ledger's call timeout, or
//! [`LedgerError::Timeout`].
//!
//! A future of its own rather than `tokio::time::timeout` wrapped in an `async` block: the
//! block kept the call it captured and the call it awaited apart, doubling every layer's
//! size (an account call's future was 3.5 KB, copied whole each time it moved), while
//! `tokio::time::timeout` called outright starts its timer when the call is made. Here the
//! timer starts at the first poll, as it did inside the block:
//!
//! * a call made and polled later (a top-up's script, after its claim) gets the whole
//!   timeout from when it starts;
//! * a call made outside a runtime does not panic until it is polled (the layer's settle of
//!   a body dropped on a plain thread makes its call first, then catches a panic of the
//!   first poll: see `middleware::settle`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use redis::RedisError;

use super::conn::ledger_error;
use crate::ledger::LedgerError;

pin_project! {
    /// `call`, answered within `timeout` of its first poll (see the module docs).
    pub(super) struct Deadline<F> {
        #[pin]
        call: F,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        timeout: Duration,
    }
}

impl<F> Deadline<F> {
    pub(super) fn new(call: F, timeout: Duration) -> Self {
        Self {
            call,
            timer: None,
            timeout,
        }
    }
}

impl<F, T> Future for Deadline<F>
where
    F: Future<Output = Result<T, RedisError>>,
{
    type Output = Result<T, LedgerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep(*this.timeout)));
        }
        // The call first, as `tokio::time::timeout` does: an answer that is ready wins
        // over a timer that has run out meanwhile.
        if let Poll::Ready(answer) = this.call.poll(cx) {
            return Poll::Ready(answer.map_err(|err| ledger_error(err, *this.timeout)));
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(LedgerError::Timeout(*this.timeout))),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_made_outside_a_runtime_does_not_start_its_timer() {
        // Made on a plain thread: no timer (which would panic without a runtime) until
        // it is polled.
        let made = std::thread::spawn(|| {
            let call = Deadline::new(async { Ok::<u8, RedisError>(1) }, Duration::from_millis(10));
            drop(call);
        })
        .join();
        assert!(made.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_runs_from_the_first_poll() {
        let timeout = Duration::from_millis(100);
        let slow = Deadline::new(
            async {
                tokio::time::sleep(Duration::from_millis(60)).await;
                Ok::<u8, RedisError>(7)
            },
            timeout,
        );
        // Made, then left unpolled past its timeout: still the whole timeout once polled.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(slow.await.unwrap(), 7);

        let stuck = Deadline::new(std::future::pending::<Result<u8, RedisError>>(), timeout);
        let started = tokio::time::Instant::now();
        assert!(matches!(stuck.await, Err(LedgerError::Timeout(t)) if t == timeout));
        assert_eq!(started.elapsed(), timeout);
    }
}
