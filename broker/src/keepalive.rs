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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::broker::{SessionHandle, SessionRef};

/// One watched connection: its session and attachment generation.
#[derive(Clone)]
struct Watched {
    session: Weak<SessionHandle>,
    generation: u64,
    limit_ms: u64,
}

#[derive(Default)]
struct Wheel {
    next_id: u64,
    watched: FxHashMap<u64, Watched>,
    /// Watch ids by the second after their deadline.
    slots: BTreeMap<u64, Vec<u64>>,
}

impl Wheel {
    fn schedule(&mut self, id: u64, deadline_ms: u64) {
        // The slot after the deadline's second: never checked early.
        self.slots
            .entry(deadline_ms / 1000 + 1)
            .or_default()
            .push(id);
    }
}

/// The wheel of watched connections.
pub struct Watchdog {
    start: Instant,
    wheel: Mutex<Wheel>,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            start: Instant::now(),
            wheel: Mutex::default(),
        }
    }
}

impl Watchdog {
    /// Milliseconds since the watchdog started (the clock of `seen_ms`).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Starts watching `session`'s connection of `generation`, which must
    /// hear from its client at least every `limit`. Returns the id to
    /// [`Watchdog::unwatch`] it with.
    pub fn watch(&self, session: &SessionRef, generation: u64, limit: Duration) -> u64 {
        let now = self.now_ms();
        session.seen_ms.store(now, Ordering::Release);
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
        let due: Vec<(u64, Watched)> = {
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
            {
                let s = h.state.lock();
                if !s.online || s.generation != w.generation {
                    expired.push(id); // that connection is gone
                    continue;
                }
            }
            let seen = h.seen_ms.load(Ordering::Acquire);
            if now.saturating_sub(seen) > w.limit_ms {
                h.expire(w.generation, crate::broker::EXPIRED_KEEPALIVE);
                h.notify.notify_one();
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
    pub fn len(&self) -> usize {
        self.wheel.lock().watched.len()
    }

    /// True if no connection is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Session, SessionLimits};

    fn handle() -> SessionRef {
        let limits = SessionLimits {
            max_messages: 10,
            max_bytes: 1000,
        };
        let h = SessionHandle::new(Session::new("c".into(), 1, 0, limits));
        // Attached once: generation 1.
        {
            let mut s = h.state.lock();
            s.online = true;
            s.generation = 1;
        }
        h
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
            h.seen_ms.store(0, Ordering::Release);
        }
        assert_eq!(dog.check(1_500), 0, "nothing is due before its slot");
        busy.seen_ms.store(2_500, Ordering::Release);
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
