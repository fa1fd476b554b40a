//! Presence and typing: ephemeral, never stored.
//!
//! A user is online while one of its devices is connected; when the last
//! leaves (cleanly, dropped, or timed out by keep-alive) it still shows
//! online for a grace period, so a phone switching networks does not flap.
//! The delivery task tells this module when devices come and go and calls
//! [`Presence::tick`] on its 50 ms flush with the time; what changed goes
//! to the devices watching, at most once per user per interval, only the
//! latest state. Who may see whom: users who share a conversation, neither
//! having blocked the other; last seen can be hidden.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use prost::Message as _;

use crate::directory::Directory;
use crate::error::ChatError;
use crate::proto::{self, response::Result as R};
use crate::records::DirRecord;
use crate::requests::Done;
use crate::{delivery, Chat};

/// Most users one device may watch.
pub(crate) const MAX_WATCHED: usize = 256;

#[derive(Default)]
struct UserState {
    /// Devices connected now.
    devices: usize,
    /// Shown as online (stays so through the grace period).
    online: bool,
    /// When the last device left (Unix ms).
    left_ms: u64,
    /// When it goes offline if no device comes back.
    offline_at: Option<u64>,
    /// When an update about it last went out.
    sent_ms: u64,
    /// Changed since then.
    dirty: bool,
}

#[derive(Default)]
struct State {
    users: HashMap<String, UserState>,
    /// Watched user -> the devices (client ids) watching it.
    watchers: HashMap<String, HashSet<Arc<str>>>,
    /// Device -> (its user, whom it watches with what it was last told).
    watching: HashMap<Arc<str>, (String, HashMap<String, proto::Presence>)>,
}

/// When each device last passed on a typing indicator in a conversation
/// (Unix ms), and whether it was a start.
#[derive(Default)]
pub(crate) struct TypingLimit(Mutex<HashMap<(String, String), (u64, bool)>>);

impl TypingLimit {
    /// Whether an indicator of (device, conversation) `key` goes through at
    /// `now`: at most one per interval, and a stop right after a start.
    fn pass(&self, key: (String, String), typing: bool, now: u64, interval: u64) -> bool {
        let mut seen = self.0.lock();
        let pass = match seen.get(&key) {
            None => true,
            Some(&(at, was)) => now.saturating_sub(at) >= interval || (was && !typing),
        };
        if pass {
            if seen.len() > 100_000 {
                seen.retain(|_, (at, _)| now.saturating_sub(*at) < interval);
            }
            seen.insert(key, (now, typing));
        }
        pass
    }
}

/// Everyone's presence, and who watches whom.
#[derive(Default)]
pub(crate) struct Presence(Mutex<State>);

impl Presence {
    /// Users shown as online now.
    pub(crate) fn online_count(&self) -> usize {
        self.0.lock().users.values().filter(|u| u.online).count()
    }
}

/// Whether `viewer` may see `user`'s presence.
fn visible(chat: &Chat, d: &Directory, viewer: &str, user: &str) -> bool {
    if viewer == user {
        return true;
    }
    if chat.blocks.either(viewer, user) {
        return false;
    }
    match (d.users.get(viewer), d.users.get(user)) {
        (Some(v), Some(u)) => v.conversations.iter().any(|c| u.conversations.contains(c)),
        _ => false,
    }
}

fn shown(d: &Directory, viewer: &str, user: &str, s: &UserState) -> proto::Presence {
    let hidden = viewer != user && d.users.get(user).is_some_and(|u| u.hide_last_seen);
    proto::Presence {
        user: user.to_owned(),
        online: s.online,
        last_seen_ms: if s.online || hidden { 0 } else { s.left_ms },
    }
}

impl Presence {
    /// A device of `user` connected.
    pub(crate) fn device_online(&self, user: &str) {
        let mut st = self.0.lock();
        let u = st.users.entry(user.to_owned()).or_default();
        u.devices += 1;
        u.offline_at = None;
        if !u.online {
            u.online = true;
            u.dirty = true;
        }
    }

    /// Last seen times read back at start-up (the users are offline).
    pub(crate) fn restore(&self, seen: Vec<(String, u64)>) {
        let mut st = self.0.lock();
        for (user, left_ms) in seen {
            st.users.entry(user).or_default().left_ms = left_ms;
        }
    }

    /// A device of `user` (client id `client`) left at `now_ms`. True if
    /// it was the user's last: `now_ms` is its last seen.
    pub(crate) fn device_offline(
        &self,
        user: &str,
        client: &Arc<str>,
        now_ms: u64,
        grace: u64,
    ) -> bool {
        let mut st = self.0.lock();
        let mut last = false;
        if let Some(u) = st.users.get_mut(user) {
            u.devices = u.devices.saturating_sub(1);
            if u.devices == 0 {
                u.left_ms = now_ms;
                u.offline_at = Some(now_ms + grace);
                last = true;
            }
        }
        // What it watched goes with it.
        if let Some((_, users)) = st.watching.remove(client) {
            for w in users.into_keys() {
                if let Some(set) = st.watchers.get_mut(&w) {
                    set.remove(client);
                    if set.is_empty() {
                        st.watchers.remove(&w);
                    }
                }
            }
        }
        last
    }

    /// `client` (a device of `viewer`) now watches `users`: their current
    /// presence, for those it may see.
    pub(crate) fn watch(
        &self,
        chat: &Chat,
        d: &Directory,
        client: Arc<str>,
        viewer: &str,
        users: Vec<String>,
    ) -> Vec<proto::Presence> {
        let mut st = self.0.lock();
        if let Some((_, old)) = st.watching.remove(&client) {
            for w in old.into_keys() {
                if let Some(set) = st.watchers.get_mut(&w) {
                    set.remove(&client);
                }
            }
        }
        let mut now = Vec::new();
        let mut kept = HashMap::new();
        for u in users {
            if kept.contains_key(&u) || !visible(chat, d, viewer, &u) {
                continue;
            }
            let p = match st.users.get(&u) {
                Some(s) => shown(d, viewer, &u, s),
                None => proto::Presence {
                    user: u.clone(),
                    ..Default::default()
                },
            };
            now.push(p.clone());
            st.watchers
                .entry(u.clone())
                .or_default()
                .insert(client.clone());
            kept.insert(u, p);
        }
        if !kept.is_empty() {
            st.watching.insert(client, (viewer.to_owned(), kept));
        }
        now
    }

    /// Advances to `now_ms`: users past their grace period go offline, and
    /// what changed (and whose interval has passed) is returned per
    /// watching device.
    pub(crate) fn tick(
        &self,
        chat: &Chat,
        d: &Directory,
        now_ms: u64,
        interval: u64,
    ) -> HashMap<Arc<str>, Vec<proto::Presence>> {
        let mut st = self.0.lock();
        let mut due = Vec::new();
        for (name, u) in st.users.iter_mut() {
            if u.offline_at.is_some_and(|t| t <= now_ms) && u.devices == 0 {
                u.offline_at = None;
                u.online = false;
                u.dirty = true;
            }
            if u.dirty && now_ms.saturating_sub(u.sent_ms) >= interval {
                u.dirty = false;
                u.sent_ms = now_ms;
                due.push(name.clone());
            }
        }
        let mut out: HashMap<Arc<str>, Vec<proto::Presence>> = HashMap::new();
        let State {
            users,
            watchers,
            watching,
        } = &mut *st;
        for name in due {
            let (Some(clients), Some(u)) = (watchers.get(&name), users.get(&name)) else {
                continue;
            };
            for client in clients {
                let Some((viewer, told)) = watching.get_mut(client) else {
                    continue;
                };
                if !visible(chat, d, viewer, &name) {
                    continue;
                }
                // Only what differs from what this device was last told.
                let p = shown(d, viewer, &name, u);
                if told.get(&name) != Some(&p) {
                    told.insert(name.clone(), p.clone());
                    out.entry(client.clone()).or_default().push(p);
                }
            }
        }
        // Users nobody needs to know about any more are forgotten.
        st.users
            .retain(|_, u| u.devices > 0 || u.online || u.dirty || u.left_ms > 0);
        out
    }
}

impl Chat {
    /// A device watches the presence of `users`.
    pub(crate) fn watch_presence(
        &self,
        user: &str,
        device: &str,
        users: Vec<String>,
    ) -> Result<Done, ChatError> {
        if users.len() > MAX_WATCHED {
            return Err(ChatError::LimitReached(format!(
                "a device watches at most {MAX_WATCHED} users"
            )));
        }
        let client: Arc<str> = crate::topics::client_id(user, device).into();
        let d = self.dir.lock();
        let presences = self.presence.watch(self, &d, client, user, users);
        Ok(Done::answer(R::Presences(proto::Presences { presences })))
    }

    pub(crate) fn hide_last_seen(&self, user: &str, hidden: bool) -> Result<Done, ChatError> {
        let mut d = self.dir.lock();
        let rec = DirRecord::HideLastSeen {
            user: user.to_owned(),
            hidden,
        };
        self.dir_append(std::slice::from_ref(&rec))?;
        d.apply(&rec);
        Ok(Done::ok())
    }

    /// A typing indicator from `user`'s `device`: passed on to the other
    /// members unless the device sent one for this conversation less than
    /// the typing interval ago (then dropped, and counted).
    pub(crate) fn typing(&self, user: &str, device: &str, payload: &[u8]) -> Result<(), ChatError> {
        self.limited(crate::limits::Action::Typing, user, device)?;
        let t = proto::Typing::decode(payload)
            .map_err(|e| ChatError::BadRequest(format!("Typing: {e}")))?;
        Chat::member_of(&self.dir.lock(), &t.conversation, user)?;
        let now = courier::message::unix_now_ms();
        let key = (
            crate::topics::client_id(user, device),
            t.conversation.clone(),
        );
        if !self
            .typing
            .pass(key, t.typing, now, self.config.typing_interval_ms)
        {
            self.metrics.inc(&self.metrics.typing_dropped, 1);
            return Ok(());
        }
        self.metrics.inc(&self.metrics.typing, 1);
        let _ = self.events.send(delivery::Event::Typing(proto::Typing {
            conversation: t.conversation,
            typing: t.typing,
            user: user.to_owned(),
        }));
        Ok(())
    }
}
