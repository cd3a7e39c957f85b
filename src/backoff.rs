//! The one backoff of every retry loop (settles, renewals, unanswered reserves): doubling
//! delays, capped.

use std::time::Duration;

/// Doubling delays from `first`, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The delay to wait now; the one after is twice as long, up to the cap.
    pub(crate) fn delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// The delay [`delay`](Self::delay) would answer next, without taking it.
    pub(crate) fn peek(&self) -> Duration {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(25), Duration::from_millis(120));
        let delays: Vec<_> = (0..5).map(|_| b.delay().as_millis()).collect();
        assert_eq!(delays, [25, 50, 100, 120, 120]);
    }
}
