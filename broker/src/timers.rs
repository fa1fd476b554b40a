//! Session expiry, delayed wills and credential expiry, for every session,
//! in one ordered queue checked by the broker's once-a-second tick.
//!
//! A sleeping task per detached session costs a task and a timer, and one
//! was left behind at every disconnect; a phone that reconnects every few
//! minutes with a 7-day expiry left thousands. Here a session has at most
//! one pending expiry and one pending will: scheduling again, or attaching,
//! replaces it. Time is an input (milliseconds on the broker's clock), so
//! the queue is tested without waiting. A timer fires at the first tick at
//! or after its deadline, never before it.

use std::collections::BTreeMap;
use std::sync::Weak;

use parking_lot::Mutex;

/// Identifies a scheduled timer: its deadline and a unique number.
pub(crate) type TimerKey = (u64, u64);

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The detached session of this generation ends.
    Expiry,
    /// The delayed will of this generation is published.
    Will,
    /// The connection of this generation loses its credential.
    Credential,
}

/// A timer that came due, for a session of type `S` (the broker's
/// session handle; generic so that this queue knows nothing of it).
pub(crate) struct Due<S> {
    pub kind: Kind,
    pub session: Weak<S>,
    pub generation: u64,
}

struct Queue<S> {
    next: u64,
    timers: BTreeMap<TimerKey, Due<S>>,
}

/// The queue of pending timers.
pub(crate) struct Timers<S> {
    q: Mutex<Queue<S>>,
}

impl<S> Default for Timers<S> {
    fn default() -> Self {
        Timers {
            q: Mutex::new(Queue {
                next: 0,
                timers: BTreeMap::new(),
            }),
        }
    }
}

impl<S> Timers<S> {
    /// Schedules `kind` for `session` (at `generation`) at `deadline_ms`,
    /// replacing the timer `replacing` if given. Returns its key.
    pub fn schedule(
        &self,
        deadline_ms: u64,
        kind: Kind,
        session: Weak<S>,
        generation: u64,
        replacing: Option<TimerKey>,
    ) -> TimerKey {
        let mut q = self.q.lock();
        if let Some(k) = replacing {
            q.timers.remove(&k);
        }
        q.next += 1;
        let key = (deadline_ms, q.next);
        q.timers.insert(
            key,
            Due {
                kind,
                session,
                generation,
            },
        );
        key
    }

    /// Cancels a timer (it may have fired already).
    pub fn cancel(&self, key: TimerKey) {
        self.q.lock().timers.remove(&key);
    }

    /// Takes every timer due at `now_ms`, earliest first.
    pub fn due(&self, now_ms: u64) -> Vec<Due<S>> {
        let mut q = self.q.lock();
        let later = q.timers.split_off(&(now_ms.saturating_add(1), 0));
        std::mem::replace(&mut q.timers, later)
            .into_values()
            .collect()
    }

    /// Timers pending.
    pub fn len(&self) -> usize {
        self.q.lock().timers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(d: &[Due<()>]) -> Vec<(Kind, u64)> {
        d.iter().map(|d| (d.kind, d.generation)).collect()
    }

    #[test]
    fn fires_in_deadline_order_never_early() {
        let t = Timers::<()>::default();
        t.schedule(2_000, Kind::Will, Weak::new(), 2, None);
        t.schedule(1_000, Kind::Expiry, Weak::new(), 1, None);
        t.schedule(3_000, Kind::Expiry, Weak::new(), 3, None);
        assert!(t.due(999).is_empty());
        assert_eq!(kinds(&t.due(2_000)), [(Kind::Expiry, 1), (Kind::Will, 2)]);
        assert_eq!(t.len(), 1);
        assert_eq!(kinds(&t.due(u64::MAX)), [(Kind::Expiry, 3)]);
    }

    #[test]
    fn rescheduling_replaces_and_cancel_removes() {
        let t = Timers::<()>::default();
        let mut key = None;
        // A phone reconnecting again and again keeps one timer.
        for i in 0..1_000 {
            key = Some(t.schedule(10_000 + i, Kind::Expiry, Weak::new(), i, key));
        }
        assert_eq!(t.len(), 1);
        assert_eq!(kinds(&t.due(u64::MAX)), [(Kind::Expiry, 999)]);
        let k = t.schedule(5, Kind::Will, Weak::new(), 0, None);
        t.cancel(k);
        t.cancel(k);
        assert!(t.due(u64::MAX).is_empty());
    }
}
