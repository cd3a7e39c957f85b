//! [`StreamLimit`]: what a stream does when its metered cost reaches its hold.

use crate::ledger::MAX_AMOUNT;

/// What the [`CreditLayer`](crate::CreditLayer) does when a stream's metered cost reaches
/// its hold: end it, or grow the hold while the account affords it. Set per layer
/// ([`CreditLayer::stream_limit`](crate::CreditLayer::stream_limit)) and per route
/// ([`Pricing::stream_limit`](crate::pricing::Pricing::stream_limit)).
///
/// It applies to responses settled at the end of their body: a deferred
/// [`Charge`](crate::Charge) ([`Charge::defer`](crate::Charge::defer)), or a gRPC response.
/// Either way, no frame produced after a refused [`Charge::add`](crate::Charge::add) is
/// delivered, and the stream ends cleanly, saying why (`credits-stop: hold-exhausted`, the
/// SSE `credits` event's `"stop"`, gRPC `RESOURCE_EXHAUSTED`).
///
/// ```
/// use tower_credits::{pricing::Pricing, CreditLayer, MemoryLedger, StreamLimit};
///
/// let pricing = Pricing::new()
///     .route("GET /v1/stream", 20)
///     .stream_limit(StreamLimit::grow(20)) // this route grows 20 at a time
///     .route("POST /v1/generate", 50); // the layer's default: end at the hold
/// let layer = CreditLayer::new(MemoryLedger::new())
///     .pricing(pricing)
///     .stream_limit(StreamLimit::End);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamLimit {
    /// End the stream at its hold (the default): the frame that went past it is not
    /// delivered.
    #[default]
    End,
    /// Grow the hold by `step` credits, while the account affords it, whenever less of it
    /// is left than the costliest frame so far (at least 1 credit), before the handler
    /// produces its next frame: one ledger call per growth, none for a stream that stays
    /// within its first hold. The last growth takes what the account has left; after that
    /// the stream ends as with [`End`](StreamLimit::End). A stream whose frames grow
    /// costlier than any before (a frame of 10 after frames of 1) may find the hold short
    /// and end there: meter such work with [`Charge::grow`](crate::Charge::grow) first.
    ///
    /// The layer grows as it polls the body, so a handler that meters each frame as it
    /// produces it (a `Stream` body) is covered; a handler that produces frames from
    /// another task, ahead of the reader, calls [`Charge::grow`](crate::Charge::grow)
    /// itself.
    Grow {
        /// Credits added by each growth.
        step: u64,
    },
}

impl StreamLimit {
    /// [`StreamLimit::Grow`] by `step` credits.
    ///
    /// # Panics
    ///
    /// When `step` is 0 or above [`MAX_AMOUNT`].
    pub fn grow(step: u64) -> Self {
        assert!(
            (1..=MAX_AMOUNT).contains(&step),
            "StreamLimit::grow({step}): the step must be 1 ..= MAX_AMOUNT"
        );
        StreamLimit::Grow { step }
    }

    /// The step, for a stream that grows.
    pub(crate) fn step(self) -> Option<u64> {
        match self {
            StreamLimit::Grow { step } if step > 0 => Some(step),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_positive_step_grows() {
        assert_eq!(StreamLimit::default().step(), None);
        assert_eq!(StreamLimit::grow(20).step(), Some(20));
        // A `Grow { step: 0 }` built by hand grows nothing rather than looping.
        assert_eq!(StreamLimit::Grow { step: 0 }.step(), None);
    }

    #[test]
    #[should_panic(expected = "the step must be")]
    fn a_zero_step_is_refused() {
        let _ = StreamLimit::grow(0);
    }
}
