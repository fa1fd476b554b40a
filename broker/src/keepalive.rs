//! Keep-alive enforcement for every connection by one task.
//!
//! A timer per connection costs over a hundred bytes in each connection's
//! future; idle connections are most of a mobile broker's memory. Instead a
//! connection records when it last heard from its client (one atomic store
//! per read) and sits in a coarse timer wheel of one-second slots. Once a
//! second the due slots are checked: a connection heard from since moves to
//! the slot of its new deadline, a silent one is marked expired and woken.
//! A timeout is noticed within about a second of the 1.5 x keep-alive
//! limit, never before it. A connection that ends leaves the wheel at once
//! (its slot keeps only an 8-byte id until that slot comes due).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

/// What the watchdog needs of a watched session (the broker's session
/// handle; a trait so that this module knows nothing of the broker).
pub(crate) trait Watchable: Send + Sync {
    /// The connection of `generation` is the one attached now.
    fn attached(&self, generation: u64) -> bool;
    /// When its connection last heard from the client (watchdog clock).
    fn seen_ms(&self) -> &AtomicU64;
    /// Its connection of `generation` went silent: mark it and wake it.
    fn time_out(&self, generation: u64);
}

/// One watched connection: its session and attachment generation.
struct Watched<S> {
    session: Weak<S>,
    generation: u64,
    limit_ms: u64,
}

impl<S> Clone for Watched<S> {
    fn clone(&self) -> Self {
        Watched {
            session: self.session.clone(),
            generation: self.generation,
            limit_ms: self.limit_ms,
        }
    }
}

struct Wheel<S> {
    next_id: u64,
    watched: FxHashMap<u64, Watched<S>>,
    /// Watch ids by the second after their deadline.
    slots: BTreeMap<u64, Vec<u64>>,
}

impl<S> Wheel<S> {
    fn schedule(&mut self, id: u64, deadline_ms: u64) {
        // The slot after the deadline's second: never checked early.
        self.slots
            .entry(deadline_ms / 1000 + 1)
            .or_default()
            .push(id);
    }
}

/// The wheel of watched connections.
pub struct Watchdog<S> {
    start: Instant,
    wheel: Mutex<Wheel<S>>,
}

impl<S> Default for Watchdog<S> {
    fn default() -> Self {
        Watchdog {
            start: Instant::now(),
            wheel: Mutex::new(Wheel {
                next_id: 0,
                watched: FxHashMap::default(),
                slots: BTreeMap::new(),
            }),
        }
    }
}

impl<S: Watchable> Watchdog<S> {
    /// Milliseconds since the watchdog started (the clock of `seen_ms`).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Starts watching `session`'s connection of `generation`, which must
    /// hear from its client at least every `limit`. Returns the id to
    /// [`Watchdog::unwatch`] it with.
    pub fn watch(&self, session: &Arc<S>, generation: u64, limit: Duration) -> u64 {
        let now = self.now_ms();
        session.seen_ms().store(now, Ordering::Release);
        let limit_ms = limit.as_millis() as u64;
        let mut w = self.wheel.lock();
        w.next_id += 1;
        let id = w.next_id;
        w.watched.insert(
            id,
            Watched {
                session: Arc::downgrade(session),
                generation,
                limit_ms,
            },
        );
        w.schedule(id, now + limit_ms);
        id
    }

    /// Stops watching (the connection ended).
    pub fn unwatch(&self, id: u64) {
        self.wheel.lock().watched.remove(&id);
    }

    /// Checks every slot that is due; returns how many connections expired.
    pub fn tick(&self) -> usize {
        self.check(self.now_ms())
    }

    fn check(&self, now: u64) -> usize {
        // Collect under the lock, look at sessions without it.
        let due: Vec<(u64, Watched<S>)> = {
            let mut w = self.wheel.lock();
            let later = w.slots.split_off(&(now / 1000 + 1));
            let ids = std::mem::replace(&mut w.slots, later);
            ids.into_values()
                .flatten()
                .filter_map(|id| Some((id, w.watched.get(&id)?.clone())))
                .collect()
        };
        let mut expired = Vec::new();
        let mut again = Vec::new();
        let mut timed_out = 0;
        for (id, w) in due {
            let Some(h) = w.session.upgrade() else {
                expired.push(id);
                continue;
            };
            if !h.attached(w.generation) {
                expired.push(id); // that connection is gone
                continue;
            }
            let seen = h.seen_ms().load(Ordering::Acquire);
            if now.saturating_sub(seen) > w.limit_ms {
                h.time_out(w.generation);
                expired.push(id);
                timed_out += 1;
            } else {
                again.push((id, seen + w.limit_ms));
            }
        }
        let mut w = self.wheel.lock();
        for id in expired {
            w.watched.remove(&id);
        }
        for (id, deadline) in again {
            if w.watched.contains_key(&id) {
                w.schedule(id, deadline);
            }
        }
        timed_out
    }

    /// Connections being watched.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.wheel.lock().watched.len()
    }

    /// True if no connection is watched.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session attached at generation 1.
    #[derive(Default)]
    struct Fake {
        seen_ms: AtomicU64,
        expired_generation: AtomicU64,
    }

    impl Watchable for Fake {
        fn attached(&self, generation: u64) -> bool {
            generation == 1
        }
        fn seen_ms(&self) -> &AtomicU64 {
            &self.seen_ms
        }
        fn time_out(&self, generation: u64) {
            self.expired_generation.store(generation, Ordering::Release);
        }
    }

    fn handle() -> Arc<Fake> {
        Arc::default()
    }

    #[test]
    fn silent_connections_expire_and_active_ones_move_on() {
        let dog = Watchdog::default();
        let (quiet, busy, stale) = (handle(), handle(), handle());
        let second = Duration::from_secs(1);
        dog.watch(&quiet, 1, second);
        dog.watch(&busy, 1, second);
        dog.watch(&stale, 7, second); // a generation that is no longer attached
        for h in [&quiet, &busy, &stale] {
            h.seen_ms().store(0, Ordering::Release);
        }
        assert_eq!(dog.check(1_500), 0, "nothing is due before its slot");
        busy.seen_ms().store(2_500, Ordering::Release);
        assert_eq!(dog.check(2_600), 1, "quiet times out");
        assert_eq!(quiet.expired_generation.load(Ordering::Acquire), 1);
        assert_eq!(busy.expired_generation.load(Ordering::Acquire), 0);
        assert_eq!(stale.expired_generation.load(Ordering::Acquire), 0);
        assert_eq!(dog.len(), 1, "busy is watched again, the others are gone");
        // Busy's new deadline is 3.5 s: checked in the slot after it.
        assert_eq!(dog.check(3_900), 0);
        assert_eq!(dog.check(4_000), 1);
        assert_eq!(busy.expired_generation.load(Ordering::Acquire), 1);
        assert!(dog.is_empty());
    }

    #[test]
    fn an_ended_connection_leaves_at_once() {
        let dog = Watchdog::default();
        let h = handle();
        let id = dog.watch(&h, 1, Duration::from_secs(60));
        assert_eq!(Arc::weak_count(&h), 1, "the wheel's reference");
        dog.unwatch(id);
        assert!(dog.is_empty());
        // Nothing left that would keep the session's memory after it ends.
        assert_eq!(Arc::weak_count(&h), 0);
        assert_eq!(dog.check(120_000), 0);
        assert!(dog.is_empty());
    }
}
