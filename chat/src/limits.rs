//! Rate limits per device and per user, for each kind of action: sends,
//! group creation, invites (and joins), presence watches, typing, and every
//! other request. A GCRA limiter (governor) per kind and level, keyed by
//! device or user; what exceeds one is refused with `LIMIT_REACHED` (PUBACK
//! 0x97 and a retry-after), logged and counted.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;

use crate::error::ChatError;

/// A sustained rate and a burst; `per_sec` 0: no limit.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Actions per second, sustained.
    pub per_sec: u32,
    /// Actions allowed at once after a quiet time.
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate {
        per_sec: 0,
        burst: 0,
    };

    const fn new(per_sec: u32, burst: u32) -> Rate {
        Rate { per_sec, burst }
    }
}

/// The limits of one kind of action: per device and per user.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ActionLimit {
    /// Each device's.
    pub device: Rate,
    /// Each user's, all its devices together.
    pub user: Rate,
}

impl ActionLimit {
    /// No limit at either level.
    pub const UNLIMITED: ActionLimit = ActionLimit {
        device: Rate::UNLIMITED,
        user: Rate::UNLIMITED,
    };
}

/// `[chat.rate_limits]` (docs/CONFIGURATION.md).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Off: nothing is limited (for load tests).
    pub enabled: bool,
    /// Messages, reactions, edits and deletes (`c/s`).
    pub send: ActionLimit,
    /// `CreateGroup`.
    pub create_group: ActionLimit,
    /// `CreateInvite` and `JoinGroup`.
    pub invite: ActionLimit,
    /// `WatchPresence`.
    pub presence: ActionLimit,
    /// Typing indicators (`c/t`; dropped when over).
    pub typing: ActionLimit,
    /// Every other request (`c/r`).
    pub request: ActionLimit,
}

impl RateLimitConfig {
    /// Nothing limited (for load tests).
    pub const UNLIMITED: RateLimitConfig = RateLimitConfig {
        enabled: false,
        send: ActionLimit::UNLIMITED,
        create_group: ActionLimit::UNLIMITED,
        invite: ActionLimit::UNLIMITED,
        presence: ActionLimit::UNLIMITED,
        typing: ActionLimit::UNLIMITED,
        request: ActionLimit::UNLIMITED,
    };
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let both = |d: (u32, u32), u: (u32, u32)| ActionLimit {
            device: Rate::new(d.0, d.1),
            user: Rate::new(u.0, u.1),
        };
        RateLimitConfig {
            enabled: true,
            send: both((20, 50), (40, 100)),
            create_group: both((1, 10), (1, 10)),
            invite: both((2, 20), (2, 20)),
            presence: both((2, 10), (4, 20)),
            typing: both((5, 10), (10, 20)),
            request: both((50, 100), (100, 200)),
        }
    }
}

/// What is being done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Send,
    CreateGroup,
    Invite,
    Presence,
    Typing,
    Request,
}

/// How many kinds of action there are.
pub(crate) const ACTIONS: usize = 6;

impl Action {
    /// Every action, for the metrics.
    pub(crate) const ALL: [Action; ACTIONS] = [
        Action::Send,
        Action::CreateGroup,
        Action::Invite,
        Action::Presence,
        Action::Typing,
        Action::Request,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::CreateGroup => "create_group",
            Action::Invite => "invite",
            Action::Presence => "presence",
            Action::Typing => "typing",
            Action::Request => "request",
        }
    }
}

type Keyed = DefaultKeyedRateLimiter<String>;

fn limiter(r: Rate) -> Option<Keyed> {
    let per_sec = NonZeroU32::new(r.per_sec)?;
    let burst = NonZeroU32::new(r.burst.max(1)).unwrap_or(per_sec);
    Some(Keyed::keyed(Quota::per_second(per_sec).allow_burst(burst)))
}

struct Level {
    device: Option<Keyed>,
    user: Option<Keyed>,
}

/// The limiters.
pub(crate) struct Limits {
    levels: [Level; 6],
    clock: DefaultClock,
    /// When a refusal was last logged at info (Unix ms): at most one a
    /// second, so a flood does not flood the log too.
    logged: AtomicU64,
}

impl Limits {
    pub(crate) fn new(c: &RateLimitConfig) -> Limits {
        let on = c.enabled;
        let level = |a: &ActionLimit| Level {
            device: limiter(a.device).filter(|_| on),
            user: limiter(a.user).filter(|_| on),
        };
        Limits {
            levels: [
                level(&c.send),
                level(&c.create_group),
                level(&c.invite),
                level(&c.presence),
                level(&c.typing),
                level(&c.request),
            ],
            clock: DefaultClock::default(),
            logged: AtomicU64::new(0),
        }
    }

    /// Counts one `action` of `user`'s `device`, or refuses it.
    pub(crate) fn check(&self, action: Action, user: &str, device: &str) -> Result<(), ChatError> {
        let l = &self.levels[action as usize];
        let over = |k: &Option<Keyed>, key: String| match k {
            Some(k) => k
                .check_key(&key)
                .err()
                .map(|n| n.wait_time_from(self.clock.now())),
            None => None,
        };
        let wait = over(&l.device, crate::topics::client_id(user, device))
            .or_else(|| over(&l.user, user.to_owned()));
        let Some(wait) = wait else {
            return Ok(());
        };
        let now = courier::message::unix_now_ms();
        let last = self.logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(user, device, action = action.name(), "chat: rate limited");
        }
        Err(ChatError::RateLimited {
            what: action.name(),
            retry_ms: wait.as_millis().max(1) as u64,
        })
    }

    /// Forgets the devices and users that are back to a full burst.
    pub(crate) fn shrink(&self) {
        for l in &self.levels {
            for k in [&l.device, &l.user].into_iter().flatten() {
                k.retain_recent();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_device_and_per_user() {
        let c = RateLimitConfig {
            enabled: true,
            send: ActionLimit {
                device: Rate::new(1, 3),
                user: Rate::new(1, 4),
            },
            ..RateLimitConfig::UNLIMITED
        };
        let l = Limits::new(&c);
        for _ in 0..3 {
            l.check(Action::Send, "alice", "phone").unwrap();
        }
        // The device's burst is spent; its retry is about a second away.
        match l.check(Action::Send, "alice", "phone") {
            Err(ChatError::RateLimited { what, retry_ms }) => {
                assert_eq!(what, "send");
                assert!((1..=1000).contains(&retry_ms), "{retry_ms}");
            }
            other => panic!("{other:?}"),
        }
        // Another device of alice has its own, but the user's is shared:
        // one more (4 in all), then no.
        l.check(Action::Send, "alice", "laptop").unwrap();
        assert!(l.check(Action::Send, "alice", "laptop").is_err());
        // Another user, and another action, are not affected.
        l.check(Action::Send, "bob", "phone").unwrap();
        l.check(Action::Request, "alice", "phone").unwrap();
    }
}
