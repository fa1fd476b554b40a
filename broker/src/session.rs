//! A client session: what survives between connections (subscriptions,
//! queued and in-flight messages), as a state machine with no I/O.
//!
//! The connection shell feeds it acknowledgements and asks it for the next
//! message to send; the broker enqueues deliveries into it. Whether an entry
//! is also on disk is the caller's business: entries carry the store ids
//! needed to mirror each transition.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::message::Message;
use crate::router::SubOptions;
use crate::store::LogId;
use crate::tracker::Tracker;

/// The packet id a delivery is sent with, derived from its position in the
/// log: after a restart the same id is used again without having been
/// stored per message.
pub fn pkid_for(seq: u64) -> u16 {
    (seq % 65_535) as u16 + 1
}

/// A message queued for one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Position in the session's log (orders deliveries; keys the disk entry).
    pub seq: u64,
    /// Shared stored body id, or 0 (body inline in the entry, or not stored).
    pub msg_id: u64,
    /// The entry is in the store (the session is persistent, QoS > 0).
    pub stored: bool,
    /// The message.
    pub msg: Arc<Message>,
    /// Delivery QoS.
    pub qos: u8,
    /// RETAIN flag to deliver with.
    pub retain: bool,
    /// Matching subscription identifiers (5.0).
    pub sub_ids: Vec<u32>,
    /// Told how the delivery ended (in memory only; `None` after a restart).
    pub tracker: Option<Tracker>,
}

/// A QoS 1/2 message sent and not yet fully acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// The delivery.
    pub delivery: Delivery,
    /// Packet id it was sent with.
    pub pkid: u16,
    /// QoS 2: PUBREC received and PUBREL sent.
    pub released: bool,
}

/// What to send next.
#[derive(Debug)]
pub enum Next {
    /// Send this PUBLISH (pkid 0 for QoS 0).
    Publish {
        /// The delivery.
        delivery: Delivery,
        /// Packet id (0 for QoS 0).
        pkid: u16,
        /// Redelivery flag.
        dup: bool,
    },
    /// Re-send PUBREL for a QoS 2 message after reconnect.
    PubRel(u16),
    /// This queued message expired before it could be sent; drop it.
    Expired(Delivery),
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    /// `max_queued_messages` reached.
    #[error("queue full (messages)")]
    Messages,
    /// `max_queued_bytes` reached.
    #[error("queue full (bytes)")]
    Bytes,
}

/// Per-session limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Most queued (not yet sent) messages.
    pub max_messages: usize,
    /// Most queued payload bytes.
    pub max_bytes: u64,
}

/// A session's subscriptions by raw filter. A short list, not a map: a
/// device has a few, and most sessions are offline ones kept in memory.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions(Vec<(String, SubOptions)>);

impl Subscriptions {
    /// Adds or replaces; returns the options it had.
    pub fn insert(&mut self, filter: String, opts: SubOptions) -> Option<SubOptions> {
        match self.0.iter_mut().find(|(f, _)| *f == filter) {
            Some(e) => Some(std::mem::replace(&mut e.1, opts)),
            None => {
                self.0.push((filter, opts));
                None
            }
        }
    }

    /// Removes one; returns its options.
    pub fn remove(&mut self, filter: &str) -> Option<SubOptions> {
        let i = self.0.iter().position(|(f, _)| f == filter)?;
        Some(self.0.swap_remove(i).1)
    }

    /// True if `filter` is subscribed.
    pub fn contains_key(&self, filter: &str) -> bool {
        self.0.iter().any(|(f, _)| f == filter)
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each filter with its options.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &SubOptions)> {
        self.0.iter().map(|(f, o)| (f, o))
    }

    /// Takes them all.
    pub fn drain(&mut self) -> impl Iterator<Item = (String, SubOptions)> + '_ {
        self.0.drain(..)
    }
}

impl FromIterator<(String, SubOptions)> for Subscriptions {
    fn from_iter<I: IntoIterator<Item = (String, SubOptions)>>(iter: I) -> Self {
        let mut s = Subscriptions::default();
        for (f, o) in iter {
            s.insert(f, o);
        }
        s.0.shrink_to_fit();
        s
    }
}

/// The session state.
#[derive(Debug)]
pub struct Session {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Username of the connection that last attached.
    pub username: Option<Arc<str>>,
    /// Principal of the connection that last attached (not kept across a
    /// restart).
    pub principal: Option<Arc<crate::hooks::Principal>>,
    /// Log id of its queue on disk.
    pub log: LogId,
    /// Session expiry interval, seconds (0: ends with the connection).
    pub expiry_secs: u32,
    /// Subscriptions by raw filter.
    pub subscriptions: Subscriptions,
    /// A connection is attached.
    pub online: bool,
    /// Incremented at each attach; lets timers know if they are stale.
    pub generation: u64,
    /// A session record (and queue log) may be on disk: it must be deleted
    /// when the session ends, whatever its expiry is by then.
    pub recorded: bool,
    /// The session has ended; a late timer or a second end does nothing.
    pub ended: bool,
    /// Its pending expiry timer while detached.
    pub(crate) expiry_timer: Option<(u64, u64)>,
    /// Stored entries are on disk and not in memory (an offline session
    /// keeps its queue on disk only): they are read when it attaches.
    pub unloaded: bool,
    /// Entries on disk and not in memory, at most (after a restart, the
    /// span between the floor and the last entry).
    pub unloaded_len: usize,
    /// Attaches reading the queue from disk now; while any is, new entries
    /// are kept in memory too.
    pub loading: u32,
    /// While unloaded: no entry above this floor may be assumed finished.
    disk_floor: Option<u64>,
    /// Commits completed when an entry last went to disk only: until two
    /// more have, the store may not have it yet.
    pub disk_epoch: u64,
    /// Queued and in-flight deliveries; `None` while there are none.
    w: Option<Box<Window>>,
    next_seq: u64,
    limits: SessionLimits,
}

/// What a session holds while it has deliveries queued or in flight. Most
/// sessions (idle, or offline with their queue on disk) have none: kept
/// apart, they cost a pointer instead of a hundred bytes each.
#[derive(Debug, Default)]
struct Window {
    queue: VecDeque<Delivery>,
    queued_bytes: u64,
    // Keyed by packet id (a u16 the broker chose, or bounded by the receive
    // maximum): a fast fixed hash suits them and keeps the map small.
    inflight: FxHashMap<u16, Inflight>,
    /// Sequence numbers of stored deliveries in flight (for [`Session::floor`]).
    inflight_stored: BTreeSet<u64>,
    /// Incoming QoS 2 packet ids not yet released.
    incoming_qos2: FxHashSet<u16>,
}

impl Window {
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty() && self.incoming_qos2.is_empty()
    }
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>, log: LogId, expiry_secs: u32, limits: SessionLimits) -> Self {
        Session {
            client_id,
            username: None,
            principal: None,
            log,
            expiry_secs,
            subscriptions: Subscriptions::default(),
            online: false,
            generation: 0,
            recorded: false,
            ended: false,
            expiry_timer: None,
            unloaded: false,
            unloaded_len: 0,
            loading: 0,
            disk_floor: None,
            disk_epoch: 0,
            w: None,
            next_seq: 1,
            limits,
        }
    }

    /// True if the session outlives its connection, so its queue is on disk.
    pub fn persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    /// Reserves the next log position.
    pub fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// The highest sequence number given out so far.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Continues numbering after `seq` (a restored log's cursors), so no
    /// sequence number at or below it is given out again.
    pub fn resume_after(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Every stored delivery at or below this sequence number is finished:
    /// the log's floor. It never decreases.
    pub fn floor(&self) -> u64 {
        let floor = match self.w.as_deref() {
            None => self.next_seq - 1,
            Some(w) => {
                // Unstored (QoS 0) entries may sit ahead of stored ones; look
                // a little way, then settle for a lower, still correct floor.
                let queued = w
                    .queue
                    .iter()
                    .take(64)
                    .find(|d| d.stored)
                    .or(w.queue.front())
                    .map(|d| d.seq);
                let inflight = w.inflight_stored.first().copied();
                match (queued, inflight) {
                    (Some(a), Some(b)) => a.min(b) - 1,
                    (Some(a), None) | (None, Some(a)) => a - 1,
                    (None, None) => self.next_seq - 1,
                }
            }
        };
        match self.disk_floor {
            Some(d) if self.unloaded => floor.min(d),
            _ => floor,
        }
    }

    /// Releases the window once it holds nothing.
    fn settle(&mut self) {
        if self.w.as_ref().is_some_and(|w| w.is_empty()) {
            self.w = None;
        }
    }

    /// Keeps the queue on disk only (the session went offline, or was
    /// restored at start-up with `floor`): stored deliveries without a
    /// tracker leave memory. Returns how many left.
    pub fn unload(&mut self, floor: u64) -> usize {
        self.disk_floor = Some(self.disk_floor.map_or(floor, |d| d.min(floor)));
        self.unloaded = true;
        let Some(w) = self.w.as_mut() else {
            return 0;
        };
        let before = w.queue.len() + w.inflight.len();
        w.queue.retain(|d| !d.stored || d.tracker.is_some());
        w.inflight
            .retain(|_, i| !i.delivery.stored || i.delivery.tracker.is_some());
        let (inflight, queue) = (&w.inflight, &w.queue);
        w.inflight_stored.retain(|seq| {
            inflight.values().any(|i| i.delivery.seq == *seq) || queue.iter().any(|d| d.seq == *seq)
        });
        w.queued_bytes = w.queue.iter().map(|d| d.msg.cost()).sum();
        let left = before - w.queue.len() - w.inflight.len();
        w.queue.shrink_to_fit();
        w.inflight.shrink_to_fit();
        self.unloaded_len += left;
        self.settle();
        left
    }

    /// Puts the entries read from disk back (in any order, each with
    /// whether it had been sent and released), merged by sequence number
    /// with what memory holds; entries memory already has are skipped.
    pub fn reload(&mut self, loaded: Vec<(Delivery, bool, bool)>) {
        let mut all: Vec<(Delivery, bool, bool)> = Vec::with_capacity(loaded.len());
        match self.w.as_mut() {
            None => all.extend(loaded),
            Some(w) => {
                let in_memory: FxHashSet<u64> = w
                    .queue
                    .iter()
                    .map(|d| d.seq)
                    .chain(w.inflight.values().map(|i| i.delivery.seq))
                    .collect();
                all.extend(
                    loaded
                        .into_iter()
                        .filter(|(d, _, _)| !in_memory.contains(&d.seq)),
                );
                all.extend(w.queue.drain(..).map(|d| (d, false, false)));
                w.queued_bytes = 0;
            }
        }
        all.sort_by_key(|(d, _, _)| d.seq);
        for (d, sent, released) in all {
            self.restore(d, sent, released);
        }
        self.unloaded = false;
        self.unloaded_len = 0;
        self.disk_floor = None;
        self.settle();
    }

    /// Queued (unsent) message count.
    pub fn queued(&self) -> usize {
        self.w.as_ref().map_or(0, |w| w.queue.len())
    }

    /// In-flight message count.
    pub fn inflight_len(&self) -> usize {
        self.w.as_ref().map_or(0, |w| w.inflight.len())
    }

    /// Checks whether one more delivery of `cost` bytes fits.
    pub fn has_room(&self, cost: u64) -> Result<(), QueueFull> {
        if self.queued() + self.unloaded_len >= self.limits.max_messages {
            return Err(QueueFull::Messages);
        }
        let bytes = self.w.as_ref().map_or(0, |w| w.queued_bytes);
        if bytes + cost > self.limits.max_bytes {
            return Err(QueueFull::Bytes);
        }
        Ok(())
    }

    /// Appends a delivery (the caller checked [`Session::has_room`]).
    pub fn push(&mut self, d: Delivery) {
        let w = self.w.get_or_insert_with(Default::default);
        w.queued_bytes += d.msg.cost();
        w.queue.push_back(d);
    }

    /// Restores an entry loaded from disk, in sequence order. `sent`: it
    /// had been sent before the restart, so it goes out again as a
    /// duplicate with the same packet id.
    pub fn restore(&mut self, d: Delivery, sent: bool, released: bool) {
        self.next_seq = self.next_seq.max(d.seq + 1);
        let pkid = pkid_for(d.seq);
        let w = self.w.get_or_insert_with(Default::default);
        if !sent || w.inflight.contains_key(&pkid) {
            w.queued_bytes += d.msg.cost();
            w.queue.push_back(d);
        } else {
            if d.stored {
                w.inflight_stored.insert(d.seq);
            }
            w.inflight.insert(
                pkid,
                Inflight {
                    delivery: d,
                    pkid,
                    released,
                },
            );
        }
    }

    /// The next thing to send, if the in-flight window (`max_inflight`) has
    /// room. QoS 0 messages queued behind QoS 1/2 keep their order.
    pub fn next(&mut self, max_inflight: usize, now: u64) -> Option<Next> {
        let w = self.w.as_mut()?;
        let front = w.queue.front()?;
        if front.msg.expired(now) {
            let d = w.queue.pop_front()?;
            w.queued_bytes -= d.msg.cost();
            self.settle();
            return Some(Next::Expired(d));
        }
        if front.qos > 0 && w.inflight.len() >= max_inflight {
            return None;
        }
        let pkid = if front.qos > 0 {
            let p = pkid_for(front.seq);
            if w.inflight.contains_key(&p) {
                // Rare: 65,535 later messages went out while this id is
                // still unacknowledged. Wait for it.
                return None;
            }
            p
        } else {
            0
        };
        let d = w.queue.pop_front()?;
        w.queued_bytes -= d.msg.cost();
        if w.queue.is_empty() {
            // An idle session keeps no queue buffer.
            w.queue = VecDeque::new();
        }
        if pkid != 0 {
            if d.stored {
                w.inflight_stored.insert(d.seq);
            }
            w.inflight.insert(
                pkid,
                Inflight {
                    delivery: d.clone(),
                    pkid,
                    released: false,
                },
            );
        }
        self.settle();
        Some(Next::Publish {
            delivery: d,
            pkid,
            dup: false,
        })
    }

    /// Everything in flight, in log order, to re-send after a reconnect.
    pub fn resend(&self) -> Vec<Next> {
        let Some(w) = self.w.as_deref() else {
            return Vec::new();
        };
        let mut v: Vec<&Inflight> = w.inflight.values().collect();
        v.sort_by_key(|i| i.delivery.seq);
        v.into_iter()
            .map(|i| {
                if i.released {
                    Next::PubRel(i.pkid)
                } else {
                    Next::Publish {
                        delivery: i.delivery.clone(),
                        pkid: i.pkid,
                        dup: true,
                    }
                }
            })
            .collect()
    }

    fn inflight(&self, pkid: u16) -> Option<&Inflight> {
        self.w.as_ref()?.inflight.get(&pkid)
    }

    /// PUBACK for `pkid`: the delivery is complete. `None` if unknown.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Delivery> {
        match self.inflight(pkid) {
            Some(i) if i.delivery.qos == 1 => self.forget(pkid),
            _ => None,
        }
    }

    /// PUBREC for `pkid`: now waiting for PUBCOMP. Returns the delivery so
    /// the caller can record the state; `None` if unknown.
    pub fn on_pubrec(&mut self, pkid: u16) -> Option<Delivery> {
        let i = self.w.as_mut()?.inflight.get_mut(&pkid)?;
        if i.delivery.qos != 2 {
            return None;
        }
        i.released = true;
        Some(i.delivery.clone())
    }

    /// PUBCOMP for `pkid`: the QoS 2 delivery is complete.
    pub fn on_pubcomp(&mut self, pkid: u16) -> Option<Delivery> {
        match self.inflight(pkid) {
            Some(i) if i.released => self.forget(pkid),
            _ => None,
        }
    }

    /// Drops an in-flight entry without an acknowledgement (it could not be
    /// sent, e.g. too large for the client).
    pub fn forget(&mut self, pkid: u16) -> Option<Delivery> {
        let w = self.w.as_mut()?;
        let d = w.inflight.remove(&pkid)?.delivery;
        w.inflight_stored.remove(&d.seq);
        if w.inflight.is_empty() {
            // Nothing in flight: release the table (idle sessions are most
            // sessions).
            w.inflight = FxHashMap::default();
        }
        self.settle();
        Some(d)
    }

    /// An incoming QoS 2 PUBLISH: true if `pkid` is new (route it), false
    /// if it is a re-send of one not yet released (do not route again).
    pub fn incoming_qos2(&mut self, pkid: u16) -> bool {
        let w = self.w.get_or_insert_with(Default::default);
        w.incoming_qos2.insert(pkid)
    }

    /// Incoming PUBREL: forget `pkid`. True if it was known.
    pub fn incoming_release(&mut self, pkid: u16) -> bool {
        let known = self
            .w
            .as_mut()
            .is_some_and(|w| w.incoming_qos2.remove(&pkid));
        self.settle();
        known
    }

    /// Incoming QoS 2 messages waiting for PUBREL.
    pub fn incoming_pending(&self) -> usize {
        self.w.as_ref().map_or(0, |w| w.incoming_qos2.len())
    }

    /// Empties the session, returning every delivery it held (queued and in
    /// flight), so their stored messages can be released.
    pub fn drain(&mut self) -> Vec<Delivery> {
        let Some(mut w) = self.w.take() else {
            return Vec::new();
        };
        let mut out: Vec<Delivery> = w.queue.drain(..).collect();
        out.extend(w.inflight.drain().map(|(_, i)| i.delivery));
        out
    }

    /// The session's log was deleted (it stopped being persistent): its
    /// deliveries are no longer on disk (the store released the bodies
    /// they referred to).
    pub fn unstore(&mut self) {
        let Some(w) = self.w.as_mut() else { return };
        w.inflight_stored.clear();
        let queued = w.queue.iter_mut();
        let inflight = w.inflight.values_mut().map(|i| &mut i.delivery);
        for d in queued.chain(inflight) {
            d.stored = false;
            d.msg_id = 0;
        }
    }

    /// Drops undeliverable QoS 0 entries when the connection goes away;
    /// they are never queued for an offline session. Returns the dropped
    /// ones that carry a tracker.
    pub fn drop_qos0(&mut self) -> Vec<Delivery> {
        let mut tracked = Vec::new();
        let Some(w) = self.w.as_mut() else {
            return tracked;
        };
        let before = w.queue.len();
        w.queue.retain_mut(|d| {
            if d.qos > 0 {
                return true;
            }
            if d.tracker.is_some() {
                tracked.push(d.clone());
            }
            false
        });
        if w.queue.len() != before {
            w.queued_bytes = w.queue.iter().map(|d| d.msg.cost()).sum();
        }
        self.settle();
        tracked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(n: u8) -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from(vec![n; 10]),
            qos: 1,
            retain: false,
            expires_at: None,
            props: None,
        })
    }

    fn session() -> Session {
        Session::new(
            "c".into(),
            1,
            60,
            SessionLimits {
                max_messages: 3,
                max_bytes: 1000,
            },
        )
    }

    fn delivery(s: &mut Session, qos: u8, n: u8) -> Delivery {
        Delivery {
            seq: s.take_seq(),
            msg_id: 0,
            stored: false,
            msg: msg(n),
            qos,
            retain: false,
            sub_ids: vec![],
            tracker: None,
        }
    }

    fn pkid(n: Option<Next>) -> u16 {
        match n {
            Some(Next::Publish { pkid, .. }) => pkid,
            other => panic!("{other:?}"),
        }
    }

    fn stored(mut d: Delivery) -> Delivery {
        d.stored = true;
        d
    }

    #[test]
    fn an_unloaded_queue_leaves_memory_and_comes_back_in_order() {
        let mut s = session();
        s.limits.max_messages = 10;
        let a = stored(delivery(&mut s, 1, 1));
        let b = stored(delivery(&mut s, 1, 2));
        let c = delivery(&mut s, 1, 3); // not stored (memory only)
        let mut d = stored(delivery(&mut s, 1, 4));
        d.tracker = Some(crate::tracker::Tracker::new(|_| {}));
        for x in [&a, &b, &c, &d] {
            s.push(x.clone());
        }
        // `a` is in flight when the connection goes.
        assert_eq!(pkid(s.next(10, 0)), pkid_for(a.seq));
        let floor = s.floor();
        assert_eq!(floor, 0);
        assert_eq!(s.unload(floor), 2, "a and b leave; c and d stay");
        assert_eq!(s.queued(), 2);
        assert_eq!(s.inflight_len(), 0);
        // Nothing above the disk's floor counts as finished meanwhile.
        assert_eq!(s.floor(), 0);
        // Queued on disk only while unloaded: counted against the limit.
        s.unloaded_len += 7;
        assert_eq!(s.has_room(1), Err(QueueFull::Messages));
        // Read back: a was sent (it goes again, DUP), b was not; d is on
        // disk too but memory has it.
        let e = stored(delivery(&mut s, 1, 5));
        s.reload(vec![
            (e.clone(), false, false),
            (a.clone(), true, false),
            (b.clone(), false, false),
            (d.clone(), false, false),
        ]);
        assert!(!s.unloaded);
        let resent: Vec<u16> = s.resend().into_iter().map(|n| pkid(Some(n))).collect();
        assert_eq!(resent, vec![pkid_for(a.seq)]);
        let order: Vec<u64> = std::iter::from_fn(|| match s.next(10, 0) {
            Some(Next::Publish { delivery, .. }) => Some(delivery.seq),
            _ => None,
        })
        .collect();
        assert_eq!(order, vec![b.seq, c.seq, d.seq, e.seq]);
    }

    #[test]
    fn window_and_out_of_order_acks() {
        let mut s = session();
        for i in 0..3 {
            let d = delivery(&mut s, 1, i);
            s.push(d);
        }
        let a = pkid(s.next(2, 0));
        let b = pkid(s.next(2, 0));
        assert!(s.next(2, 0).is_none(), "window of 2 is full");
        assert!(s.on_puback(b).is_some());
        assert!(s.on_puback(b).is_none(), "second ack is ignored");
        let c = pkid(s.next(2, 0));
        assert!(s.on_puback(a).is_some());
        assert!(s.on_puback(c).is_some());
        assert_eq!(s.inflight_len(), 0);
    }

    #[test]
    fn limits_are_enforced() {
        let mut s = session();
        for i in 0..3 {
            assert!(s.has_room(20).is_ok());
            let d = delivery(&mut s, 1, i);
            s.push(d);
        }
        assert_eq!(s.has_room(20), Err(QueueFull::Messages));
        let mut s = session();
        assert_eq!(s.has_room(2000), Err(QueueFull::Bytes));
        let _ = s.take_seq();
    }

    #[test]
    fn resend_sets_dup_in_order_and_qos2_flow() {
        let mut s = session();
        let d1 = delivery(&mut s, 2, 1);
        let d2 = delivery(&mut s, 1, 2);
        s.push(d1);
        s.push(d2);
        let p1 = pkid(s.next(10, 0));
        let p2 = pkid(s.next(10, 0));
        let r = s.resend();
        assert!(matches!(r[0], Next::Publish { dup: true, pkid, .. } if pkid == p1));
        assert!(matches!(r[1], Next::Publish { dup: true, pkid, .. } if pkid == p2));
        assert!(
            s.on_puback(p1).is_none(),
            "QoS 2 is not completed by PUBACK"
        );
        assert!(
            s.on_pubcomp(p1).is_none(),
            "PUBCOMP before PUBREC is ignored"
        );
        assert!(s.on_pubrec(p1).is_some());
        assert!(matches!(s.resend()[0], Next::PubRel(p) if p == p1));
        assert!(s.on_pubcomp(p1).is_some());
    }

    #[test]
    fn packet_ids_follow_the_log_and_never_collide() {
        let mut s = session();
        let first = delivery(&mut s, 1, 1);
        let mut later = delivery(&mut s, 1, 2);
        later.seq = first.seq + 65_535; // same derived packet id
        s.push(first.clone());
        s.push(later);
        assert_eq!(pkid(s.next(10, 0)), pkid_for(first.seq));
        assert!(
            s.next(10, 0).is_none(),
            "waits while its packet id is in use"
        );
        assert!(s.on_puback(pkid_for(first.seq)).is_some());
        assert_eq!(pkid(s.next(10, 0)), pkid_for(first.seq));
    }

    #[test]
    fn floor_follows_the_lowest_unfinished_stored_entry() {
        let mut s = session();
        assert_eq!(s.floor(), 0);
        let mut ds = Vec::new();
        for i in 0..3 {
            let mut d = delivery(&mut s, 1, i);
            d.stored = true;
            ds.push(d.clone());
            s.push(d);
        }
        assert_eq!(s.floor(), 0, "nothing finished");
        let a = pkid(s.next(10, 0));
        let b = pkid(s.next(10, 0));
        assert_eq!(s.floor(), 0, "sent is not finished");
        assert!(s.on_puback(b).is_some());
        assert_eq!(s.floor(), 0, "out of order: 1 still open");
        assert!(s.on_puback(a).is_some());
        assert_eq!(s.floor(), 2, "1 and 2 done, 3 queued");
        let c = pkid(s.next(10, 0));
        assert!(s.on_puback(c).is_some());
        assert_eq!(s.floor(), 3, "empty: everything taken so far");
        s.resume_after(10);
        assert_eq!(s.floor(), 10);
        assert_eq!(s.take_seq(), 11);
    }

    #[test]
    fn expired_messages_are_not_sent() {
        let mut s = session();
        let mut d = delivery(&mut s, 1, 1);
        let mut m = (*d.msg).clone();
        m.expires_at = Some(100);
        d.msg = Arc::new(m);
        s.push(d);
        assert!(matches!(s.next(10, 100), Some(Next::Expired(_))));
        assert!(s.next(10, 100).is_none());
    }

    #[test]
    fn incoming_qos2_dedup() {
        let mut s = session();
        assert!(s.incoming_qos2(5));
        assert!(!s.incoming_qos2(5));
        assert!(s.incoming_release(5));
        assert!(!s.incoming_release(5));
    }
}
