//! Keep-alive enforcement for every connection by one task.
//!
//! A timer per connection costs over a hundred bytes in each connection's
//! future; idle connections are most of a mobile broker's memory. Instead a
//! connection records when it last heard from its client (one atomic store
//! per read) and sits in a coarse timer wheel of one-second slots. Once a
//! second the due slot is checked: a connection heard from since is moved
//! to the slot of its new deadline, a silent one is marked expired and
//! woken. A timeout is noticed within about a second of the 1.5 x
//! keep-alive limit, never before it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::broker::{SessionHandle, SessionRef};

/// One watched connection: its session and attachment generation.
struct Watched {
    session: Weak<SessionHandle>,
    generation: u64,
    limit_ms: u64,
}

/// The wheel: watched connections by the second their deadline falls in.
pub struct Watchdog {
    start: Instant,
    slots: Mutex<BTreeMap<u64, Vec<Watched>>>,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            start: Instant::now(),
            slots: Mutex::default(),
        }
    }
}

impl Watchdog {
    /// Milliseconds since the watchdog started (the clock of `seen_ms`).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Starts watching `session`'s connection of `generation`, which must
    /// hear from its client at least every `limit`.
    pub fn watch(&self, session: &SessionRef, generation: u64, limit: Duration) {
        let now = self.now_ms();
        session.seen_ms.store(now, Ordering::Release);
        let limit_ms = limit.as_millis() as u64;
        self.insert(
            now + limit_ms,
            Watched {
                session: Arc::downgrade(session),
                generation,
                limit_ms,
            },
        );
    }

    fn insert(&self, deadline_ms: u64, w: Watched) {
        // The slot after the deadline's second: never checked early.
        let slot = deadline_ms / 1000 + 1;
        self.slots.lock().entry(slot).or_default().push(w);
    }

    /// Checks every slot that is due; returns how many connections expired.
    pub fn tick(&self) -> usize {
        self.check(self.now_ms())
    }

    fn check(&self, now: u64) -> usize {
        let due: Vec<Watched> = {
            let mut slots = self.slots.lock();
            let later = slots.split_off(&(now / 1000 + 1));
            std::mem::replace(&mut *slots, later)
                .into_values()
                .flatten()
                .collect()
        };
        let mut expired = 0;
        for w in due {
            let Some(h) = w.session.upgrade() else {
                continue;
            };
            {
                let s = h.state.lock();
                if !s.online || s.generation != w.generation {
                    continue; // that connection is gone
                }
            }
            let seen = h.seen_ms.load(Ordering::Acquire);
            if now.saturating_sub(seen) > w.limit_ms {
                h.expired_generation.store(w.generation, Ordering::Release);
                h.notify.notify_one();
                expired += 1;
            } else {
                self.insert(seen + w.limit_ms, w);
            }
        }
        expired
    }

    /// Connections being watched.
    pub fn len(&self) -> usize {
        self.slots.lock().values().map(Vec::len).sum()
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
        assert_eq!(dog.check(2_600), 1);
        assert_eq!(quiet.expired_generation.load(Ordering::Acquire), 1);
        assert_eq!(busy.expired_generation.load(Ordering::Acquire), 0);
        assert_eq!(dog.len(), 1, "busy is watched again, stale is dropped");
        // Busy's new deadline is 3.5 s: checked in the slot after it.
        assert_eq!(dog.check(3_900), 0);
        assert_eq!(dog.check(4_000), 1);
        assert_eq!(busy.expired_generation.load(Ordering::Acquire), 1);
    }
}
