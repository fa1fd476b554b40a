//! Delivery callbacks: in-process code that causes a delivery (a tracked
//! publish, a direct delivery, a response) hears how it ended for each
//! session: acknowledged by the receiving client, or dropped and why.
//! The messaging layer turns this into delivered receipts and per-device
//! cursors.
//!
//! Trackers live in memory with the delivery: a delivery restored from
//! disk after a restart has none, so durable consumers keep their own
//! cursors and use reports to advance them, never as the only record.

use std::sync::Arc;

/// How one delivery to one session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client acknowledged it (PUBACK for QoS 1, PUBCOMP for QoS 2, or
    /// an in-process link's ack).
    Acknowledged,
    /// A QoS 0 delivery was written to the connection; there is no
    /// acknowledgement to wait for.
    Sent,
    /// It will never be acknowledged.
    Dropped(DropReason),
}

/// Why a delivery was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session's queue was at `max_queued_messages` or `max_queued_bytes`.
    QueueFull,
    /// A QoS 0 delivery for a session with no connection.
    Offline,
    /// The message expired before it could be sent.
    Expired,
    /// Larger than the client's maximum packet size.
    TooLarge,
    /// The session ended (expired, replaced by a clean start, or ended
    /// with its connection) with the delivery still in it.
    SessionEnded,
}

/// One delivery's end, as a [`Tracker`] is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The session (client id) it was for.
    pub client_id: Arc<str>,
    /// How it ended.
    pub outcome: Outcome,
}

type Callback = Box<dyn Fn(DeliveryReport) + Send + Sync>;

/// A callback told once per session how a delivery ended. It is called on
/// a connection's task, with no broker lock held: it must be quick and not
/// block (send to a channel, bump a counter).
///
/// ```
/// use courier::tracker::{Outcome, Tracker};
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let t = Tracker::new(move |r| {
///     if r.outcome == Outcome::Acknowledged {
///         let _ = tx.send(r.client_id);
///     }
/// });
/// # drop(t);
/// # assert!(rx.try_recv().is_err());
/// ```
#[derive(Clone)]
pub struct Tracker(Arc<Callback>);

impl Tracker {
    /// A tracker that calls `f` with each delivery's end.
    pub fn new(f: impl Fn(DeliveryReport) + Send + Sync + 'static) -> Tracker {
        Tracker(Arc::new(Box::new(f)))
    }

    pub(crate) fn report(&self, client_id: &Arc<str>, outcome: Outcome) {
        (self.0)(DeliveryReport {
            client_id: client_id.clone(),
            outcome,
        })
    }
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracker")
    }
}
