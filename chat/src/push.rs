//! The chat side of the push bridge (`courier-push-bridge`): devices
//! register push tokens (stored in the directory); each inbox entry that
//! may need a push is handed to the bridge, which asks back when it falls
//! due ([`Source::prepare`]): the answer is read from the durable inbox,
//! the device's saved cursor and the user's read watermark, so an entry
//! acknowledged in time, read on another device or muted gets no push, and nothing depends on an
//! event that a crash could lose: at start-up every device's
//! unacknowledged entries are handed over again (a repeat carries the same
//! collapse id, so the phone shows it once). Calls ring sleeping devices
//! with a VoIP push at once.

use std::sync::{Arc, Weak};

use push_bridge::bridge::{Bridge, Source};
use push_bridge::{Notification, Outcome, Target};

use crate::directory::Directory;
use crate::error::ChatError;
use crate::inbox::{self, Item};
use crate::proto;
use crate::records::{inbox_log, DirRecord};
use crate::requests::Done;
use crate::{topics, Chat};

/// Longest push token accepted.
const MAX_TOKEN: usize = 4096;
/// Most unacknowledged entries of a device handed over at start-up.
const RECOVER_LIMIT: usize = 1000;
/// Most entries looked at when a push falls due.
const LOOK_BACK: u64 = 200;

/// A device's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushReg {
    pub target: Target,
    /// When it was registered (Unix ms): an APNs 410 older than this does
    /// not remove it.
    pub registered_ms: u64,
}

/// What the bridge asks of the chat layer.
pub(crate) struct PushSource(pub Weak<Chat>);

impl Source for PushSource {
    fn prepare(&self, device: &str, collapse: &str, upto: u64) -> Option<(Target, Notification)> {
        self.0.upgrade()?.push_due(device, collapse, upto)
    }

    fn outcome(
        &self,
        device: &str,
        _collapse: &str,
        _upto: u64,
        target: &Target,
        outcome: &Outcome,
    ) {
        if let Some(chat) = self.0.upgrade() {
            chat.push_outcome(device, target, outcome);
        }
    }
}

/// Whether a shown entry is one that pushes: a message from someone else
/// that the user has not blocked.
fn pushes(user: &str, e: &proto::Entry) -> bool {
    matches!(e.kind, Some(proto::entry::Kind::Content(_))) && e.sender != user && !e.sender_blocked
}

impl Chat {
    fn bridge(&self) -> Option<&Bridge> {
        self.push.get()
    }

    /// Starts the bridge (if `[chat.push]` names an app) and hands it what
    /// was pending when the server stopped.
    pub(crate) fn start_push(self: &Arc<Self>) -> Result<(), push_bridge::PushError> {
        let source = Arc::new(PushSource(Arc::downgrade(self)));
        if let Some(b) = Bridge::start(&self.config.push, source)? {
            let _ = self.push.set(b);
            self.push_recover();
        }
        Ok(())
    }

    /// `RegisterPush` from `user`'s `device`.
    pub(crate) fn register_push(
        &self,
        user: &str,
        device: &str,
        r: proto::RegisterPush,
    ) -> Result<Done, ChatError> {
        if r.token.is_empty() || r.token.len() > MAX_TOKEN {
            return Err(ChatError::BadRequest(format!(
                "a push token is 1 to {MAX_TOKEN} bytes"
            )));
        }
        let apns = r.platform == proto::register_push::Platform::Apns as i32;
        let ok = if apns {
            // Apple's device tokens are hex; it goes into the request's path.
            r.token.len() <= 200
                && r.token.len().is_multiple_of(2)
                && r.token.bytes().all(|b| b.is_ascii_hexdigit())
        } else {
            r.token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
        };
        if !ok {
            return Err(ChatError::BadRequest(
                "not a push token (APNs: hex; FCM: letters, digits, - _ : .)".into(),
            ));
        }
        let target = match proto::register_push::Platform::try_from(r.platform) {
            Ok(proto::register_push::Platform::Apns) => Target::Apns {
                topic: r.app,
                sandbox: r.sandbox,
                token: r.token,
            },
            Ok(proto::register_push::Platform::Fcm) => Target::Fcm {
                project: r.app,
                token: r.token,
            },
            Err(_) => return Err(ChatError::BadRequest("unknown platform".into())),
        };
        let Some(bridge) = self.bridge() else {
            return Err(ChatError::BadRequest(
                "this server sends no pushes ([chat.push] names no app)".into(),
            ));
        };
        if !bridge.serves(&target) {
            return Err(ChatError::BadRequest(
                "this server is not configured for that app".into(),
            ));
        }
        let rec = DirRecord::PushToken {
            user: user.to_owned(),
            device: device.to_owned(),
            target,
            registered_ms: courier::message::unix_now_ms(),
        };
        let mut d = self.dir.lock();
        self.dir_append(std::slice::from_ref(&rec))?;
        d.apply(&rec);
        tracing::debug!(user, device, "chat: push token registered");
        Ok(Done::ok())
    }

    /// `UnregisterPush`.
    pub(crate) fn unregister_push(&self, user: &str, device: &str) -> Result<Done, ChatError> {
        let rec = DirRecord::PushTokenDropped {
            user: user.to_owned(),
            device: device.to_owned(),
            reason: None,
        };
        let mut d = self.dir.lock();
        self.dir_append(std::slice::from_ref(&rec))?;
        d.apply(&rec);
        Ok(Done::ok())
    }

    /// Entry `(conv, entry seq)` went into these users' inboxes at these
    /// positions: each of their devices with a push token may be due a
    /// push (the bridge asks [`Chat::push_due`] when).
    pub(crate) fn push_new(
        &self,
        d: &Directory,
        conv: &str,
        sender: &str,
        pushable: bool,
        refs: &[(String, u64)],
    ) {
        let Some(bridge) = self.bridge() else { return };
        if !pushable {
            return;
        }
        for (user, pos) in refs {
            if user == sender {
                continue; // the sender's own devices get none
            }
            let Some(u) = d.users.get(user) else { continue };
            for (dev, info) in &u.devices {
                if info.push.is_some() && !info.revoked {
                    bridge.message(&topics::client_id(user, dev), conv, *pos);
                }
            }
        }
    }

    /// `user`'s `device` acknowledged its inbox up to `cursor` (saved; on
    /// disk with the next commit). A push falling due before that commit
    /// must see it.
    pub(crate) fn push_acked(&self, user: &str, device: &str, cursor: u64) {
        if self.bridge().is_some() {
            self.push_acks
                .lock()
                .insert(topics::client_id(user, device), cursor);
        }
    }

    /// At start-up: every device's unacknowledged entries that push are
    /// handed over again.
    fn push_recover(&self) {
        let (Some(bridge), Ok(broker)) = (self.bridge(), self.broker()) else {
            return;
        };
        let logs = broker.logs();
        let devices: Vec<(String, String)> = {
            let d = self.dir.lock();
            d.users
                .iter()
                .flat_map(|(u, info)| {
                    info.devices
                        .iter()
                        .filter(|(_, x)| x.push.is_some() && !x.revoked)
                        .map(move |(dev, _)| (u.clone(), dev.clone()))
                })
                .collect()
        };
        let mut handed = 0;
        for (user, device) in devices {
            let Ok(cursor) = inbox::saved_cursor(logs, &user, &device) else {
                continue;
            };
            let Ok(last) = logs.last(&inbox_log(&user)) else {
                continue;
            };
            let from = (cursor + 1).max(last.saturating_sub(RECOVER_LIMIT as u64 - 1));
            let Ok(page) = inbox::read(self, logs, &user, &device, from, RECOVER_LIMIT) else {
                continue;
            };
            for item in page.items {
                if let Item::Entry(pos, conv, e) = item {
                    if pushes(&user, &e) {
                        bridge.message(&topics::client_id(&user, &device), &conv, pos);
                        handed += 1;
                    }
                }
            }
        }
        if handed > 0 {
            tracing::info!(
                entries = handed,
                "push: pending pushes handed to the bridge after the restart"
            );
        }
    }

    /// What to push now to `device_id` for `conv` up to inbox position
    /// `upto`; `None` if nothing.
    fn push_due(&self, device_id: &str, conv: &str, upto: u64) -> Option<(Target, Notification)> {
        let (user, device) = topics::parse_client_id(device_id)?;
        let broker = self.broker().ok()?;
        let logs = broker.logs();
        let (target, read, muted) = {
            let d = self.dir.lock();
            let u = d.users.get(user)?;
            let dev = u.devices.get(device)?;
            if u.disabled || dev.revoked {
                return None;
            }
            let target = dev.push.as_ref()?.target.clone();
            let read = d.conversations.get(conv)?.members.get(user)?.read;
            let now = courier::message::unix_now();
            let muted = u.muted.get(conv).is_some_and(|until| *until > now);
            (target, read, muted)
        };
        let saved = inbox::saved_cursor(logs, user, device).ok()?;
        let acked = self.push_acks.lock().get(device_id).copied().unwrap_or(0);
        let cursor = saved.max(acked);
        if cursor >= upto {
            return None; // acknowledged in time
        }
        let from = (cursor + 1).max(upto.saturating_sub(LOOK_BACK - 1));
        let page = inbox::read(self, logs, user, device, from, (upto + 1 - from) as usize).ok()?;
        let waiting: Vec<Box<proto::Entry>> = page
            .items
            .into_iter()
            .filter_map(|i| match i {
                Item::Entry(pos, c, e)
                    if pos <= upto && c == conv && e.seq > read && pushes(user, &e) =>
                {
                    Some(e)
                }
                _ => None,
            })
            .collect();
        let newest = waiting.last()?.seq;
        let mention = waiting.iter().any(|e| e.mentions_me);
        if muted && !mention {
            return None;
        }
        let badge = self.unread_count(user);
        Some((
            target,
            Notification::Message {
                conversation: conv.to_owned(),
                seq: newest,
                badge,
                mention,
            },
        ))
    }

    /// The user's unread entries over all its conversations (the badge).
    fn unread_count(&self, user: &str) -> u32 {
        let d = self.dir.lock();
        let Some(u) = d.users.get(user) else { return 0 };
        let n: u64 = u
            .conversations
            .iter()
            .filter_map(|c| {
                let conv = d.conversations.get(c)?;
                let m = conv.members.get(user)?;
                Some(
                    conv.last_seq
                        .saturating_sub(m.read.max(m.since.saturating_sub(1))),
                )
            })
            .sum();
        n.min(u32::MAX as u64) as u32
    }

    /// A push to `device_id` ended with `o`: an invalid token is dropped
    /// (an APNs 410 only if newer than the registration), and the device
    /// is told on its next connect.
    fn push_outcome(&self, device_id: &str, target: &Target, o: &Outcome) {
        let Outcome::InvalidToken { reason, since_ms } = o else {
            if !matches!(o, Outcome::Delivered) {
                tracing::warn!(device = device_id, "push not delivered: {o:?}");
            }
            return;
        };
        let Some((user, device)) = topics::parse_client_id(device_id) else {
            return;
        };
        let mut d = self.dir.lock();
        let Some(reg) = d.device(user, device).and_then(|x| x.push.clone()) else {
            return;
        };
        if reg.target != *target || since_ms.is_some_and(|t| t <= reg.registered_ms) {
            return; // registered again since
        }
        let rec = DirRecord::PushTokenDropped {
            user: user.to_owned(),
            device: device.to_owned(),
            reason: Some(reason.clone()),
        };
        if let Err(e) = self.dir_append(std::slice::from_ref(&rec)) {
            tracing::error!(device = device_id, "push: dropping a token: {e}");
            return;
        }
        d.apply(&rec);
        self.metrics.inc(&self.metrics.push_tokens_removed, 1);
        tracing::info!(device = device_id, reason, "push: token dropped");
    }

    /// `device` of `user` connected: told if its push token was dropped.
    pub(crate) fn push_connected(&self, user: &str, device: &str) {
        let reason = self
            .dir
            .lock()
            .device(user, device)
            .and_then(|d| d.push_dropped.clone());
        if let Some(reason) = reason {
            self.send_down(
                user,
                device,
                proto::down::Kind::PushTokenDropped(proto::PushTokenDropped { reason }),
            );
        }
    }

    /// A call rings `callee`: each of its devices that is not connected
    /// but has a push token gets a VoIP push at once.
    pub(crate) fn push_ring(&self, callee: &str, call_id: &str, conv: &str, video: bool) {
        let (Some(bridge), Ok(broker)) = (self.bridge(), self.broker()) else {
            return;
        };
        let targets: Vec<(String, Target)> = {
            let d = self.dir.lock();
            let Some(u) = d.users.get(callee) else { return };
            u.devices
                .iter()
                .filter(|(_, x)| !x.revoked)
                .filter_map(|(dev, x)| {
                    Some((
                        topics::client_id(callee, dev),
                        x.push.as_ref()?.target.clone(),
                    ))
                })
                .filter(|(id, _)| !broker.is_connected(id))
                .collect()
        };
        for (id, target) in targets {
            bridge.ring(&id, target, call_id, conv, video);
        }
    }

    /// The call stopped ringing.
    pub(crate) fn push_ring_ended(&self, call_id: &str) {
        if let Some(b) = self.bridge() {
            b.ring_ended(call_id);
        }
    }

    /// The bridge's counters, if it runs.
    pub(crate) fn push_metrics(&self) -> Option<&push_bridge::bridge::PushMetrics> {
        self.bridge().map(Bridge::metrics)
    }
}
