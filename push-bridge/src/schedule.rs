//! When to push: a state machine with no I/O, the time passed in (Unix
//! ms), so every rule is tested without waiting.
//!
//! A push is keyed by device and collapse key (the conversation). The
//! first message for a key is due `due_ms` after it arrived (unless the
//! application then says it was acknowledged); once a push for the key is
//! delivered, further messages within `window_ms` wait for the window's
//! end and go as one update. A failed send is tried again after a delay
//! that doubles, with jitter, never sooner than the provider's
//! Retry-After, at most `max_tries` times.

use std::collections::{BTreeSet, HashMap};

use crate::{Outcome, PushConfig};

/// Device and collapse key.
pub type Key = (String, String);

#[derive(Debug, Default)]
struct Slot {
    /// The newest entry waiting (0: none).
    newest: u64,
    /// When to send (an entry in `timers`).
    due_at: Option<u64>,
    /// Being sent now.
    in_flight: bool,
    /// Failed tries of the push being sent.
    tries: u32,
    /// When a push for this key was last delivered.
    last_sent_ms: Option<u64>,
}

/// A push to send now: for `key`, covering entries up to `upto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// Device and collapse key.
    pub key: Key,
    /// The newest entry it covers.
    pub upto: u64,
    /// 1 for the first try.
    pub attempt: u32,
}

/// What [`Schedule::done`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered (and an update may follow at the window's end).
    Delivered,
    /// Tried again at this time.
    Retry(u64),
    /// Given up: too many tries, or a failure no try mends.
    GivenUp,
    /// Dropped: the token is invalid.
    Invalid,
}

/// The pending pushes.
#[derive(Debug)]
pub struct Schedule {
    due_ms: u64,
    window_ms: u64,
    max_tries: u32,
    retry_base_ms: u64,
    retry_max_ms: u64,
    slots: HashMap<Key, Slot>,
    timers: BTreeSet<(u64, Key)>,
}

impl Schedule {
    /// An empty schedule with `config`'s timing.
    pub fn new(config: &PushConfig) -> Schedule {
        Schedule {
            due_ms: config.due_ms,
            window_ms: config.window_ms,
            max_tries: config.max_tries.max(1),
            retry_base_ms: config.retry_base_ms,
            retry_max_ms: config.retry_max_ms,
            slots: HashMap::new(),
            timers: BTreeSet::new(),
        }
    }

    fn set_due(&mut self, key: &Key, at: Option<u64>) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if let Some(old) = slot.due_at.take() {
            self.timers.remove(&(old, key.clone()));
        }
        if let Some(at) = at {
            slot.due_at = Some(at);
            self.timers.insert((at, key.clone()));
        }
    }

    /// Entry `seq` for `key` arrived at `now`. True if it joins a push
    /// already waiting or an open window (it is coalesced).
    pub fn message(&mut self, key: Key, seq: u64, now: u64) -> bool {
        let slot = self.slots.entry(key.clone()).or_default();
        let coalesced = slot.newest > 0 || slot.in_flight;
        let was_empty = slot.newest == 0;
        slot.newest = slot.newest.max(seq);
        if slot.in_flight {
            return true;
        }
        if let Some(at) = slot.due_at {
            // Only the window's timer was set: the device still gets its
            // due time to acknowledge.
            if was_empty {
                let at = at.max(now + self.due_ms);
                self.set_due(&key, Some(at));
            }
            return true;
        }
        let window_end = slot.last_sent_ms.map_or(0, |t| t + self.window_ms);
        let in_window = window_end > now;
        let at = (now + self.due_ms).max(window_end);
        self.set_due(&key, Some(at));
        coalesced || in_window
    }

    /// Nothing up to `upto` needs a push for `key` any more (read or
    /// acknowledged elsewhere); `u64::MAX`: nothing at all.
    pub fn cancel(&mut self, key: &Key, upto: u64) {
        let Some(slot) = self.slots.get(key) else {
            return;
        };
        if slot.newest <= upto && !slot.in_flight {
            self.set_due(key, None);
            self.slots.remove(key);
        }
    }

    /// The pushes due at `now`, marked in flight.
    pub fn poll(&mut self, now: u64) -> Vec<Fire> {
        let mut out = Vec::new();
        while let Some((at, key)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, key.clone()));
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            slot.due_at = None;
            if slot.newest == 0 {
                // Only a window was open: it closed with nothing new.
                self.slots.remove(&key);
                continue;
            }
            slot.in_flight = true;
            out.push(Fire {
                key,
                upto: slot.newest,
                attempt: slot.tries + 1,
            });
        }
        out
    }

    /// A fired push for `key` covering `upto` ended with `outcome` at
    /// `now`; `jitter` in [0, 1) spreads retries. `None` for the outcome:
    /// the application had nothing to send any more.
    pub fn done(
        &mut self,
        key: &Key,
        upto: u64,
        outcome: Option<&Outcome>,
        now: u64,
        jitter: f64,
    ) -> Next {
        let Some(slot) = self.slots.get_mut(key) else {
            return Next::GivenUp;
        };
        slot.in_flight = false;
        let retry_after = match outcome {
            None => {
                self.drop_key(key, upto);
                return Next::GivenUp;
            }
            Some(Outcome::Delivered) => {
                slot.tries = 0;
                slot.last_sent_ms = Some(now);
                if slot.newest > upto {
                    // An update at the window's end.
                    let at = now + self.window_ms;
                    self.set_due(key, Some(at));
                } else {
                    slot.newest = 0;
                    // Kept (no entry) until the window closes.
                    let at = now + self.window_ms;
                    self.set_due(key, Some(at));
                }
                return Next::Delivered;
            }
            Some(Outcome::InvalidToken { .. }) => {
                // What came meanwhile is asked about again (the application
                // may have kept the token: an old 410).
                self.drop_key(key, upto);
                return Next::Invalid;
            }
            Some(Outcome::Fatal { .. }) => {
                self.drop_key(key, upto);
                return Next::GivenUp;
            }
            Some(Outcome::RateLimited { retry_after_ms }) => *retry_after_ms,
            Some(Outcome::Retryable { retry_after_ms, .. }) => *retry_after_ms,
        };
        slot.tries += 1;
        if slot.tries >= self.max_tries {
            self.drop_key(key, upto);
            return Next::GivenUp;
        }
        let exp = self
            .retry_base_ms
            .saturating_mul(1 << (slot.tries - 1).min(20))
            .min(self.retry_max_ms);
        // Half to all of the exponential delay ("equal jitter").
        let backoff = exp / 2 + (exp as f64 / 2.0 * jitter.clamp(0.0, 1.0)) as u64;
        let at = now + backoff.max(retry_after.unwrap_or(0));
        self.set_due(key, Some(at));
        Next::Retry(at)
    }

    /// Forgets `key` up to `upto`; a newer entry that came meanwhile still
    /// gets its push.
    fn drop_key(&mut self, key: &Key, upto: u64) {
        let newer = self.slots.get(key).is_some_and(|s| s.newest > upto);
        if newer {
            if let Some(s) = self.slots.get_mut(key) {
                s.tries = 0;
            }
            self.set_due(key, Some(0));
        } else {
            self.set_due(key, None);
            self.slots.remove(key);
        }
    }

    /// When the next push is due.
    pub fn next_due(&self) -> Option<u64> {
        self.timers.first().map(|t| t.0)
    }

    /// Keys with a push waiting or in flight.
    pub fn pending(&self) -> usize {
        self.slots
            .values()
            .filter(|s| s.newest > 0 || s.in_flight)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule::new(&PushConfig {
            due_ms: 3000,
            window_ms: 10_000,
            max_tries: 3,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
            ..PushConfig::default()
        })
    }

    fn key(c: &str) -> Key {
        ("bob:phone".into(), c.into())
    }

    #[test]
    fn the_first_message_is_due_after_the_delay_and_the_rest_coalesce_into_one_update() {
        let mut s = schedule();
        assert!(!s.message(key("a"), 1, 0));
        assert!(s.poll(2999).is_empty());
        assert!(s.message(key("a"), 2, 1000), "joins the waiting push");
        let f = s.poll(3000);
        assert_eq!(
            f,
            [Fire {
                key: key("a"),
                upto: 2,
                attempt: 1
            }]
        );
        assert_eq!(
            s.done(&key("a"), 2, Some(&Outcome::Delivered), 3100, 0.0),
            Next::Delivered
        );
        // Three more within the window: one update at its end.
        for (i, t) in [(3, 4000), (4, 5000), (5, 9000)] {
            assert!(s.message(key("a"), i, t));
        }
        assert!(s.poll(13_099).is_empty());
        assert_eq!(
            s.poll(13_100),
            [Fire {
                key: key("a"),
                upto: 5,
                attempt: 1
            }]
        );
        s.done(&key("a"), 5, Some(&Outcome::Delivered), 13_200, 0.0);
        // Quiet through the window: it closes with nothing sent.
        assert!(s.poll(23_200).is_empty());
        assert_eq!(s.pending(), 0);
        // Later, a new message is again due after the delay only.
        assert!(!s.message(key("a"), 6, 30_000));
        assert_eq!(s.next_due(), Some(33_000));
        // Another conversation is its own push.
        assert!(!s.message(key("b"), 7, 30_000));
        assert_eq!(s.poll(33_000).len(), 2);
    }

    #[test]
    fn a_cancel_drops_what_was_read_but_not_what_came_after() {
        let mut s = schedule();
        s.message(key("a"), 1, 0);
        s.cancel(&key("a"), 1);
        assert!(s.poll(10_000).is_empty());
        s.message(key("a"), 2, 0);
        s.message(key("a"), 3, 0);
        s.cancel(&key("a"), 2);
        assert_eq!(s.poll(3000)[0].upto, 3, "entry 3 was not read");
    }

    #[test]
    fn retries_back_off_with_jitter_honour_retry_after_and_stop() {
        let mut s = schedule();
        s.message(key("a"), 1, 0);
        s.poll(3000);
        let busy = Outcome::Retryable {
            reason: "503".into(),
            retry_after_ms: None,
        };
        // 1 s doubled each try; jitter takes it between half and all.
        assert_eq!(
            s.done(&key("a"), 1, Some(&busy), 3000, 0.0),
            Next::Retry(3500)
        );
        assert_eq!(s.poll(3500)[0].attempt, 2);
        let limited = Outcome::RateLimited {
            retry_after_ms: Some(7000),
        };
        assert_eq!(
            s.done(&key("a"), 1, Some(&limited), 3500, 0.99),
            Next::Retry(10_500)
        );
        assert_eq!(s.poll(10_500)[0].attempt, 3);
        assert_eq!(
            s.done(&key("a"), 1, Some(&busy), 10_500, 0.5),
            Next::GivenUp
        );
        assert_eq!(s.pending(), 0);
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn an_invalid_token_or_nothing_to_send_drops_the_push() {
        let mut s = schedule();
        s.message(key("a"), 1, 0);
        s.poll(3000);
        let gone = Outcome::InvalidToken {
            reason: "Unregistered".into(),
            since_ms: None,
        };
        assert_eq!(s.done(&key("a"), 1, Some(&gone), 3000, 0.0), Next::Invalid);
        s.message(key("b"), 1, 0);
        s.poll(3000);
        // A message that came while it was in flight still goes.
        s.message(key("b"), 2, 3001);
        assert_eq!(s.done(&key("b"), 1, None, 3002, 0.0), Next::GivenUp);
        assert_eq!(s.poll(3002)[0].upto, 2);
    }

    #[test]
    fn a_message_just_before_a_window_closes_still_gets_its_due_time() {
        let mut s = schedule();
        s.message(key("a"), 1, 0);
        s.poll(3000);
        s.done(&key("a"), 1, Some(&Outcome::Delivered), 3000, 0.0);
        // The window closes at 13,000; this one came at 12,900.
        s.message(key("a"), 2, 12_900);
        assert!(s.poll(13_000).is_empty(), "not at the window's end");
        assert_eq!(s.poll(15_900)[0].upto, 2);
    }
}
