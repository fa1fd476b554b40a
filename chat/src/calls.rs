//! Call signaling: ringing a user's devices, relaying WebRTC offers,
//! answers and ICE candidates between the two devices of a call, and
//! recording a missed call. Nothing here is stored except that record; no
//! media passes through the server.
//!
//! A call is a small state in memory: ringing (since when, the caller's
//! device), then connected (the callee's device that answered). The
//! delivery task's 50 ms flush calls [`Calls::due`] with the time, which
//! ends the calls that rang too long.

use std::collections::HashMap;

use bytes::Bytes;
use courier::message::Message;
use parking_lot::Mutex;
use prost::Message as _;

use crate::error::ChatError;
use crate::proto::{self, call_signal::Signal, stop::Reason};
use crate::records::{ConvKind, StoredEntry, StoredKind};
use crate::{topics, Chat};

/// Longest call id, bytes.
const MAX_CALL_ID: usize = 64;

struct Call {
    conversation: String,
    video: bool,
    caller: (String, String),
    callee: String,
    /// When it started ringing (Unix ms).
    since_ms: u64,
    /// The callee's device that answered.
    answered: Option<String>,
}

/// The calls in progress, by id.
#[derive(Default)]
pub(crate) struct Calls(Mutex<HashMap<String, Call>>);

impl Calls {
    /// The calls that rang longer than `timeout` at `now_ms`, taken out.
    fn due(&self, now_ms: u64, timeout: u64) -> Vec<(String, Call)> {
        let mut calls = self.0.lock();
        let ids: Vec<String> = calls
            .iter()
            .filter(|(_, c)| c.answered.is_none() && now_ms.saturating_sub(c.since_ms) >= timeout)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| calls.remove(&id).map(|c| (id, c)))
            .collect()
    }
}

impl Chat {
    /// A signal from `user`'s `device`.
    pub(crate) fn call_signal(
        &self,
        user: &str,
        device: &str,
        payload: &[u8],
    ) -> Result<(), ChatError> {
        let s = proto::CallSignal::decode(payload)
            .map_err(|e| ChatError::BadRequest(format!("CallSignal: {e}")))?;
        if s.call_id.is_empty() || s.call_id.len() > MAX_CALL_ID {
            return Err(ChatError::BadRequest(format!(
                "call_id must be 1 to {MAX_CALL_ID} bytes"
            )));
        }
        let signal = s
            .signal
            .ok_or_else(|| ChatError::BadRequest("no signal".into()))?;
        let relay = |signal: Signal| proto::CallSignal {
            call_id: s.call_id.clone(),
            from_user: user.to_owned(),
            from_device: device.to_owned(),
            conversation: String::new(),
            signal: Some(signal),
        };
        if let Signal::Ring(ring) = signal {
            let callee = {
                let d = self.dir.lock();
                let (c, _) = Chat::member_of(&d, &s.conversation, user)?;
                if c.kind != ConvKind::Direct {
                    return Err(ChatError::NotAllowed(
                        "calls ring in direct conversations".into(),
                    ));
                }
                let Some(other) = c.members.keys().find(|u| *u != user).cloned() else {
                    return Err(ChatError::UnknownConversation);
                };
                if self.blocks.either(user, &other) {
                    return Err(ChatError::Blocked);
                }
                other
            };
            let video = ring.video;
            {
                let mut calls = self.calls.0.lock();
                if calls.contains_key(&s.call_id) {
                    return Err(ChatError::BadRequest("that call id is in use".into()));
                }
                calls.insert(
                    s.call_id.clone(),
                    Call {
                        conversation: s.conversation.clone(),
                        video,
                        caller: (user.to_owned(), device.to_owned()),
                        callee: callee.clone(),
                        since_ms: courier::message::unix_now_ms(),
                        answered: None,
                    },
                );
            }
            let mut out = relay(Signal::Ring(ring));
            out.conversation = s.conversation.clone();
            self.to_devices_of(&callee, None, &out);
            self.push_ring(&callee, &s.call_id, &s.conversation, video);
            return Ok(());
        }
        // Every other signal belongs to a call this device is in.
        let mut calls = self.calls.0.lock();
        let Some(call) = calls.get_mut(&s.call_id) else {
            return Err(ChatError::BadRequest("no such call".into()));
        };
        let is_caller = call.caller.0 == user && call.caller.1 == device;
        let is_callee = call.callee == user;
        if !is_caller && !is_callee {
            return Err(ChatError::NotAllowed("not in this call".into()));
        }
        if is_callee && call.answered.as_deref().is_some_and(|d| d != device) {
            return Err(ChatError::NotAllowed("answered on another device".into()));
        }
        let caller = call.caller.clone();
        let callee = call.callee.clone();
        let peer = if is_caller {
            call.answered.clone().map(|d| (callee.clone(), d))
        } else {
            Some(caller.clone())
        };
        match signal {
            Signal::Answer(sdp) if is_callee && call.answered.is_none() => {
                // This device takes the call; the others stop ringing.
                call.answered = Some(device.to_owned());
                drop(calls);
                self.to_device(&caller.0, &caller.1, &relay(Signal::Answer(sdp)));
                self.to_devices_of(&callee, Some(device), &relay(stop(Reason::Answered)));
                self.push_ring_ended(&s.call_id);
            }
            Signal::Decline(_) if is_callee && call.answered.is_none() => {
                calls.remove(&s.call_id);
                drop(calls);
                self.to_device(&caller.0, &caller.1, &relay(stop(Reason::Declined)));
                self.to_devices_of(&callee, Some(device), &relay(stop(Reason::Declined)));
                self.push_ring_ended(&s.call_id);
            }
            Signal::Hangup(_) => {
                let ringing = call.answered.is_none();
                calls.remove(&s.call_id);
                drop(calls);
                if ringing {
                    self.push_ring_ended(&s.call_id);
                }
                match peer {
                    Some((u, d)) => self.to_device(&u, &d, &relay(stop(Reason::HungUp))),
                    // The caller gave up before an answer: stop the ringing.
                    None if ringing => {
                        self.to_devices_of(&callee, None, &relay(stop(Reason::HungUp)))
                    }
                    None => {}
                }
            }
            Signal::Offer(_) | Signal::Answer(_) | Signal::Ice(_) => {
                drop(calls);
                let Some((u, d)) = peer else {
                    return Err(ChatError::BadRequest("the call is not answered yet".into()));
                };
                self.to_device(&u, &d, &relay(signal));
            }
            Signal::Ring(_) | Signal::Stop(_) | Signal::Decline(_) => {
                return Err(ChatError::BadRequest("not a signal to send now".into()));
            }
        }
        Ok(())
    }

    /// Ends the calls that rang too long at `now_ms`: their ringing stops,
    /// the caller is told, and the missed call is an entry of the
    /// conversation. Returns the users whose inboxes grew.
    pub(crate) fn ring_timeouts(&self, now_ms: u64) -> Vec<String> {
        let due = self.calls.due(now_ms, self.config.ring_timeout_ms);
        let mut woken = Vec::new();
        for (id, call) in due {
            let relay = proto::CallSignal {
                call_id: id.clone(),
                signal: Some(stop(Reason::Missed)),
                ..Default::default()
            };
            self.to_device(&call.caller.0, &call.caller.1, &relay);
            self.to_devices_of(&call.callee, None, &relay);
            self.push_ring_ended(&id);
            let mut d = self.dir.lock();
            let recipients: Vec<String> = match d.conversations.get(&call.conversation) {
                Some(c) => c.members.keys().cloned().collect(),
                None => continue,
            };
            let entry = StoredEntry {
                sender: call.caller.0.clone(),
                device: call.caller.1.clone(),
                client_msg_id: String::new(),
                kind: StoredKind::MissedCall {
                    call_id: id,
                    video: call.video,
                },
            };
            match self.append_entry(&mut d, &call.conversation, &entry, None, &recipients, &[]) {
                Ok(_) => woken.extend(recipients),
                Err(e) => tracing::warn!("chat: recording a missed call: {e}"),
            }
        }
        woken
    }

    /// Sends `s` to every connected device of `user` but `except`.
    fn to_devices_of(&self, user: &str, except: Option<&str>, s: &proto::CallSignal) {
        let devices: Vec<String> = {
            let d = self.dir.lock();
            d.users
                .get(user)
                .map(|u| {
                    u.devices
                        .iter()
                        .filter(|(_, dev)| !dev.revoked)
                        .map(|(id, _)| id.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        for dev in devices.iter().filter(|d| Some(d.as_str()) != except) {
            self.to_device(user, dev, s);
        }
    }

    /// Sends `s` to `user`'s `device` if it is connected (at QoS 1, kept
    /// in memory only).
    fn to_device(&self, user: &str, device: &str, s: &proto::CallSignal) {
        self.send_down(user, device, proto::down::Kind::Call(s.clone()));
    }

    /// Sends `kind` to `user`'s `device` if it is connected (not stored).
    pub(crate) fn send_down(&self, user: &str, device: &str, kind: proto::down::Kind) {
        let Ok(broker) = self.broker() else { return };
        let id = topics::client_id(user, device);
        if !broker.is_connected(&id) {
            return;
        }
        let down = proto::Down { kind: Some(kind) };
        let msg = Message {
            topic: topics::inbox(user, device),
            payload: Bytes::from(down.encode_to_vec()),
            qos: 1,
            retain: false,
            expires_at: None,
            props: None,
        };
        let _ = broker.deliver(&id, msg, false, None);
    }
}

fn stop(reason: Reason) -> Signal {
    Signal::Stop(proto::Stop {
        reason: reason as i32,
    })
}
