//! A stream that grows its hold ([`StreamLimit::Grow`](crate::StreamLimit::Grow)): when to
//! grow, and the growth under way, which the body waits on before it lets the handler
//! produce its next frame.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use sync_wrapper::SyncFuture;

use super::guard::HoldCtx;
use crate::{Charge, GrowError};

/// A growth asked of the ledger: the hold before and after. A ledger's future is only
/// `Send`; the wrapper keeps the body `Sync` (it is only ever polled through `&mut`).
type Growing = SyncFuture<Pin<Box<dyn Future<Output = Result<(u64, u64), GrowError>> + Send>>>;

/// The growing side of one streamed body.
#[derive(Default)]
pub(crate) struct StreamGrowth {
    /// The growth under way, if any.
    growing: Option<Growing>,
    /// No more growth: the account could not afford a whole step, or the ledger failed.
    grown_out: bool,
    /// What the handler had metered when its last frame came.
    metered: u64,
    /// The most one frame has cost so far.
    frame_cost: u64,
}

/// Whether a stream grows now (pure): when it may (`step`), and less of the hold is left
/// than the costliest frame so far (at least 1 credit). A stream that stays within its
/// hold never grows.
pub(crate) fn grows_now(step: Option<u64>, remaining_hold: u64, frame_cost: u64) -> bool {
    step.is_some() && remaining_hold < frame_cost.max(1)
}

impl StreamGrowth {
    /// A frame came from the handler: notes what it cost.
    pub(crate) fn frame(&mut self, charge: &Charge) {
        let metered = charge.actual().unwrap_or(0);
        self.frame_cost = self.frame_cost.max(metered.saturating_sub(self.metered));
        self.metered = metered;
    }

    /// Grows the hold by a step when [`grows_now`] says so; `Pending` while the ledger
    /// answers. A growth that got less than a step (the account's last credits) or none at
    /// all ends the growing; the stream then ends at its hold as usual.
    pub(crate) fn poll(&mut self, hold: &HoldCtx, cx: &mut Context<'_>) -> Poll<()> {
        let step = hold.stream_limit.step();
        let growing = match (&mut self.growing, step) {
            (Some(growing), _) => growing,
            (None, Some(step))
                if !self.grown_out
                    && grows_now(Some(step), hold.charge.remaining_hold(), self.frame_cost) =>
            {
                let charge = hold.charge.clone();
                self.growing.insert(SyncFuture::new(Box::pin(async move {
                    let before = charge.reserved();
                    let after = charge.raise(step, true).await?;
                    Ok((before, after))
                })))
            }
            (None, _) => return Poll::Ready(()),
        };
        let Poll::Ready(grown) = Pin::new(growing).poll(cx) else {
            return Poll::Pending;
        };
        self.growing = None;
        match grown {
            Ok((before, after)) => self.grown_out = after - before < step.unwrap_or(0),
            Err(error) => {
                tracing::debug!(
                    account = %hold.charge.account(),
                    hold = %hold.charge.hold_id(),
                    %error,
                    "the stream's hold did not grow; it ends at its hold"
                );
                self.grown_out = true;
            }
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::grows_now;

    /// A body that may wait on a ledger call (a growing hold) stays `Send` and `Sync`, as
    /// servers and boxed bodies expect of it.
    #[test]
    fn the_response_body_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<crate::ResponseBody<String>>();
    }

    #[test]
    fn a_stream_grows_only_when_its_next_frame_may_not_fit() {
        // (step, remaining hold, costliest frame so far) → grows?
        let table = [
            (None, 0, 5, false),      // StreamLimit::End never grows
            (Some(20), 19, 1, false), // within the hold: no ledger call
            (Some(20), 0, 1, true),   // spent: grow before the next frame
            (Some(20), 0, 0, true),   // no frame yet, nothing left
            (Some(20), 4, 5, true),   // the next frame may cost 5
            (Some(20), 5, 5, false),  // it fits
            (Some(1), 0, 30, true),   // a small step still grows
        ];
        for (step, remaining, frame, expected) in table {
            assert_eq!(
                grows_now(step, remaining, frame),
                expected,
                "step {step:?}, remaining {remaining}, frame {frame}"
            );
        }
    }
}
