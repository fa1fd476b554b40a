//! The chat namespace's handler: a device's sends (`c/s`) and requests
//! (`c/r`). Each is checked and written under the directory lock, then
//! answered, PUBACK and response alike, once the commit covering it is
//! durable.

use std::sync::Arc;

use bytes::Bytes;
use courier::hooks::{ClientInfo, SubscribeDecision};
use courier::message::{Message, MessageProps};
use courier::namespace::{AckCode, Inbound, Namespace, Reply};
use courier::Broker;
use prost::Message as _;

use crate::directory::direct_id;
use crate::error::ChatError;
use crate::groups::role_to_proto;
use crate::identity::{device_of, scope_of, Scope};
use crate::limits::Action;
use crate::proto::{self, request::Op};
use crate::records::{self, conversation_log, ConvKind, Role, StoredEntry};
use crate::{delivery, inbox, topics, Chat};

/// Longest client message id.
const MAX_CLIENT_MSG_ID: usize = 64;
/// Most entries one history page returns.
const MAX_PAGE: usize = 200;
/// Entries a history page returns if the request names no limit.
const DEFAULT_PAGE: usize = 50;

fn group_full(max: usize) -> ChatError {
    ChatError::LimitReached(format!("a group has at most {max} members"))
}

/// `user`'s devices as the protocol lists them.
fn devices_of(broker: &Broker, user: &str, u: &crate::directory::User) -> Vec<proto::Device> {
    u.devices
        .iter()
        .map(|(id, dev)| proto::Device {
            id: id.clone(),
            revoked: dev.revoked,
            online: broker.is_connected(&topics::client_id(user, id)),
        })
        .collect()
}

/// The chat namespace's [`Namespace`] handler.
pub(crate) struct Handler(pub Arc<Chat>);

impl Namespace for Handler {
    fn publish(&self, _broker: &Arc<Broker>, p: Inbound) {
        let chat = &self.0;
        let topic = p.message.topic.as_str();
        let device = device_of(&p.client).map(|(u, d)| (u.to_owned(), d.to_owned()));
        if let (Some((u, d)), topics::TYPING | topics::CALL) = (&device, topic) {
            // Ephemeral: answered at once, nothing to make durable.
            let r = if scope_of(&p.client) != Scope::Device {
                Err(ChatError::NotAllowed("only a device types or calls".into()))
            } else if topic == topics::TYPING {
                chat.typing(u, d, &p.message.payload)
            } else {
                chat.limited(Action::Request, u, d)
                    .and_then(|()| chat.call_signal(u, d, &p.message.payload))
            };
            match r {
                Ok(()) => p.ack.accept(),
                Err(e) => {
                    chat.metrics.refusal(&e);
                    p.ack.answer(e.reply())
                }
            }
            return;
        }
        let sent = match (&device, topic) {
            (Some((u, d)), topics::SEND) if scope_of(&p.client) == Scope::Device => {
                Some(chat.send(u, d, &p.message.payload))
            }
            (Some((u, d)), topics::REQUEST) => {
                Some(chat.request(u, d, scope_of(&p.client), &p.message.payload))
            }
            (Some(_), topics::SEND) => Some(Err(ChatError::NotAllowed(
                "a refresh-token or peek connection may not send messages".into(),
            ))),
            _ => None,
        };
        let (Some(outcome), Some((user, device))) = (sent, device.clone()) else {
            chat.metrics.inc(&chat.metrics.acl_refused, 1);
            tracing::info!(client_id = %p.client.client_id, topic, "chat: publish to a topic this client may not write");
            // Another device's inbox is not allowed; anything else is not
            // a topic of the protocol.
            let code = if device.is_none() || topic.starts_with("c/in/") {
                AckCode::NotAuthorized
            } else {
                AckCode::TopicNameInvalid
            };
            p.ack.answer(Reply::refuse(
                code,
                "not a topic this client may publish to",
            ));
            return;
        };
        let chat = chat.clone();
        tokio::spawn(async move {
            let (mut reply, response, woken) = match outcome {
                Ok(done) => (done.reply, done.response, done.woken),
                Err(e) => {
                    chat.metrics.refusal(&e);
                    tracing::debug!(user, device, "chat: refused: {e}");
                    (e.reply(), Some(error_response(&e)), Vec::new())
                }
            };
            // What was written must be durable before anyone hears of it.
            let durable = match chat.broker() {
                Ok(b) => b.durable().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = durable {
                let e = ChatError::Unavailable(e.to_string());
                reply = e.reply();
                let _ = chat.respond(&p, &user, &device, error_response(&e));
                p.ack.answer(reply);
                return;
            }
            if let Some(r) = response {
                let _ = chat.respond(&p, &user, &device, r);
            }
            p.ack.answer(reply);
            if !woken.is_empty() {
                let _ = chat.events.send(delivery::Event::InboxGrew(woken));
            }
        });
    }

    fn authorize_subscribe(&self, client: &ClientInfo, filter: &str) -> SubscribeDecision {
        match device_of(client) {
            Some((u, d)) if filter == topics::inbox(u, d) => SubscribeDecision::Allow,
            _ => {
                self.0.metrics.inc(&self.0.metrics.acl_refused, 1);
                tracing::info!(client_id = %client.client_id, filter, "chat: subscription refused");
                SubscribeDecision::Deny
            }
        }
    }

    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> bool {
        device_of(client).is_some_and(|(u, d)| topic == topics::inbox(u, d))
    }
}

fn error_response(e: &ChatError) -> proto::Response {
    proto::Response {
        error: Some(e.to_proto()),
        result: None,
    }
}

/// What a send or request did.
pub(crate) struct Done {
    reply: Reply,
    response: Option<proto::Response>,
    /// Users whose inboxes grew.
    pub(crate) woken: Vec<String>,
}

impl Done {
    /// Accepted, with an empty response.
    pub(crate) fn ok() -> Done {
        Done {
            reply: Reply::success(),
            response: Some(proto::Response::default()),
            woken: Vec::new(),
        }
    }

    pub(crate) fn answer(result: proto::response::Result) -> Done {
        Done {
            reply: Reply::success(),
            response: Some(proto::Response {
                error: None,
                result: Some(result),
            }),
            woken: Vec::new(),
        }
    }
}

impl Chat {
    fn send(&self, user: &str, device: &str, payload: &[u8]) -> Result<Done, ChatError> {
        self.limited(Action::Send, user, device)?;
        let s = proto::SendMessage::decode(payload)
            .map_err(|e| ChatError::BadRequest(format!("SendMessage: {e}")))?;
        let kind = s
            .kind
            .ok_or_else(|| ChatError::BadRequest("nothing to send".into()))?;
        if s.client_msg_id.is_empty() || s.client_msg_id.len() > MAX_CLIENT_MSG_ID {
            return Err(ChatError::BadRequest(format!(
                "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID} bytes"
            )));
        }
        let now_ms = courier::message::unix_now_ms();
        let mut d = self.dir.lock();
        let conv = if !s.conversation.is_empty() {
            s.conversation.clone()
        } else if !s.to_user.is_empty() {
            if s.to_user == user {
                return Err(ChatError::BadRequest("to_user is the sender".into()));
            }
            if !d.users.contains_key(&s.to_user) {
                return Err(ChatError::UnknownUser(s.to_user));
            }
            if !matches!(kind, proto::send_message::Kind::Content(_)) {
                return Err(ChatError::BadRequest(
                    "a new conversation starts with content".into(),
                ));
            }
            if self.blocks.either(user, &s.to_user) {
                return Err(ChatError::Blocked);
            }
            let id = direct_id(user, &s.to_user);
            if !d.conversations.contains_key(&id) {
                // Under the lock: one direct conversation per pair, even
                // when both write first at once.
                let members = vec![user.to_owned(), s.to_user.clone()];
                self.create(
                    &mut d,
                    &id,
                    ConvKind::Direct,
                    (user, device),
                    members,
                    String::new(),
                )?;
            }
            id
        } else {
            return Err(ChatError::BadRequest(
                "neither conversation nor to_user".into(),
            ));
        };
        let (c, m) = Chat::member_of(&d, &conv, user)?;
        // Scoped to the device: another device's id never collides.
        let id = format!("{}/{}", topics::client_id(user, device), s.client_msg_id);
        // Blocked: nothing new in a direct conversation, but a user may
        // still delete its own messages there.
        let blocked = c.kind == ConvKind::Direct
            && !matches!(kind, proto::send_message::Kind::Delete(_))
            && c.members
                .keys()
                .any(|o| o != user && self.blocks.either(user, o));
        let checked = if blocked {
            Err(ChatError::Blocked)
        } else {
            self.check_send(c, &conv, user, m, kind, now_ms)
        };
        let answered = |seq: u64, conv: String| {
            let mut reply = Reply::success().with_property("seq", seq.to_string());
            if s.conversation.is_empty() {
                reply = reply.with_property("c", conv);
            }
            Done {
                reply,
                response: None,
                woken: Vec::new(),
            }
        };
        let crate::messages::Checked {
            kind,
            own_only,
            erase,
            ..
        } = match checked {
            Ok(c) if c.already.is_none() => c,
            // Refused, or nothing to store: a resend is answered as its
            // original was, whatever changed since (a delete whose target
            // is gone, a window closed, a block). The id is looked up
            // only here, off the common path (the append checks it too).
            other => {
                let logs = self.broker()?;
                let original = logs.logs().seq_of(&conversation_log(&conv), &id)?;
                drop(d);
                return match (original, other) {
                    (Some(seq), _) => {
                        self.metrics.inc(&self.metrics.send_repeats, 1);
                        Ok(answered(seq, conv))
                    }
                    (None, Ok(c)) => Ok(answered(c.already.unwrap_or(0), conv)),
                    (None, Err(e)) => Err(e),
                };
            }
        };
        let recipients: Vec<String> = if own_only {
            vec![user.to_owned()]
        } else {
            c.members.keys().cloned().collect()
        };
        let entry = StoredEntry {
            sender: user.to_owned(),
            device: device.to_owned(),
            client_msg_id: s.client_msg_id.clone(),
            kind,
        };
        let (seq, repeat) =
            self.append_entry(&mut d, &conv, &entry, Some(id), &recipients, &erase)?;
        drop(d);
        if repeat {
            self.metrics.inc(&self.metrics.send_repeats, 1);
        } else {
            self.metrics.inc(&self.metrics.sends, 1);
        }
        let mut reply = Reply::success().with_property("seq", seq.to_string());
        if s.conversation.is_empty() {
            reply = reply.with_property("c", conv);
        }
        Ok(Done {
            reply,
            response: None,
            woken: if repeat { Vec::new() } else { recipients },
        })
    }

    fn request(
        &self,
        user: &str,
        device: &str,
        scope: Scope,
        payload: &[u8],
    ) -> Result<Done, ChatError> {
        let r = proto::Request::decode(payload)
            .map_err(|e| ChatError::BadRequest(format!("Request: {e}")))?;
        let op =
            r.op.ok_or_else(|| ChatError::BadRequest("no operation".into()))?;
        self.metrics.inc(&self.metrics.requests, 1);
        let action = match &op {
            Op::CreateGroup(_) => Action::CreateGroup,
            Op::CreateInvite(_) | Op::JoinGroup(_) => Action::Invite,
            Op::WatchPresence(_) => Action::Presence,
            _ => Action::Request,
        };
        self.limited(action, user, device)?;
        use proto::response::Result as R;
        if scope == Scope::Refresh && !matches!(op, Op::RefreshAccessToken(_)) {
            return Err(ChatError::NotAllowed(
                "a refresh-token connection may only ask for an access token".into(),
            ));
        }
        if scope == Scope::Peek && !matches!(op, Op::Fetch(_)) {
            return Err(ChatError::NotAllowed(
                "a peek connection may only fetch".into(),
            ));
        }
        match op {
            Op::Fetch(f) => {
                let limit = match f.limit as usize {
                    0 => DEFAULT_PAGE,
                    n => n.min(MAX_PAGE),
                };
                Ok(Done::answer(R::Fetched(self.fetch(user, device, limit)?)))
            }
            Op::RefreshAccessToken(_) => {
                let now = courier::message::unix_now();
                let ttl = self.config.tokens.mint_ttl_secs;
                let access_token = self.tokens.mint(user, device, now, ttl).map_err(|e| {
                    ChatError::NotAllowed(format!("the broker mints no tokens: {e}"))
                })?;
                Ok(Done::answer(R::Token(proto::Token {
                    access_token,
                    expires_at: now + ttl,
                    refresh_token: String::new(),
                })))
            }
            Op::IssueRefreshToken(_) => {
                let mut raw = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
                    .map_err(|_| ChatError::Unavailable("no randomness".into()))?;
                let token = format!("{}{}", topics::REFRESH_PREFIX, crate::directory::hex(&raw));
                let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
                let rec = records::DirRecord::RefreshToken {
                    user: user.to_owned(),
                    device: device.to_owned(),
                    hash: hash.as_ref().to_vec(),
                };
                let mut d = self.dir.lock();
                self.dir_append(std::slice::from_ref(&rec))?;
                d.apply(&rec);
                Ok(Done::answer(R::Token(proto::Token {
                    access_token: String::new(),
                    expires_at: 0,
                    refresh_token: token,
                })))
            }
            Op::CreateGroup(g) => {
                if g.name.len() > crate::groups::MAX_NAME {
                    return Err(ChatError::BadRequest(format!(
                        "a name has at most {} bytes",
                        crate::groups::MAX_NAME
                    )));
                }
                let mut members = vec![user.to_owned()];
                for m in g.members {
                    if !members.contains(&m) {
                        members.push(m);
                    }
                }
                if members.len() > self.config.max_group_members {
                    return Err(group_full(self.config.max_group_members));
                }
                let mut d = self.dir.lock();
                if let Some(m) = members.iter().find(|m| !d.users.contains_key(*m)) {
                    return Err(ChatError::UnknownUser(m.clone()));
                }
                let id = crate::directory::group_id();
                self.create(
                    &mut d,
                    &id,
                    ConvKind::Group,
                    (user, device),
                    members.clone(),
                    g.name,
                )?;
                let info = self.summary(&d, &id, user)?;
                let mut done = Done::answer(R::Conversation(proto::ConversationInfo {
                    conversation: Some(info),
                }));
                done.woken = members;
                Ok(done)
            }
            Op::AddMember(a) => self.add_member(user, device, a),
            Op::RemoveMember(rm) => self.remove_member(user, device, &rm.conversation, &rm.user),
            Op::Leave(l) => self.remove_member(user, device, &l.conversation, user),
            Op::UpdateGroup(u) => self.update_group(user, device, u),
            Op::SetRole(r) => self.set_role(user, device, r),
            Op::CreateInvite(c) => self.create_invite(user, c, courier::message::unix_now()),
            Op::ListInvites(l) => self.list_invites(user, &l.conversation),
            Op::RevokeInvite(r) => self.revoke_invite(user, r),
            Op::JoinGroup(j) => self.join_group(user, device, j, courier::message::unix_now()),
            Op::ListJoinRequests(l) => self.list_join_requests(user, &l.conversation),
            Op::AnswerJoinRequest(a) => self.answer_join_request(user, device, a),
            Op::SearchGroups(q) => self.search_groups(q),
            Op::Mute(m) => self.mute(user, m),
            Op::SetReadReceipts(r) => self.set_read_receipts(user, r.enabled),
            Op::Block(b) => self.block(user, b),
            Op::ListBlocked(_) => Ok(self.list_blocked(user)),
            Op::SetDisappearing(s) => self.set_disappearing(user, device, s),
            Op::WatchPresence(w) => self.watch_presence(user, device, w.users),
            Op::HideLastSeen(h) => self.hide_last_seen(user, h.hidden),
            Op::History(h) => {
                let d = self.dir.lock();
                let (c, m) = Chat::member_of(&d, &h.conversation, user)?;
                let last = c.last_seq;
                drop(d);
                let limit = match h.limit as usize {
                    0 => DEFAULT_PAGE,
                    n => n.min(MAX_PAGE),
                };
                let log = conversation_log(&h.conversation);
                let broker = self.broker()?;
                let logs = broker.logs();
                let recs = if h.before > 0 {
                    let mut v = logs.read_back(&log, h.before.min(last + 1), limit)?;
                    v.retain(|r| r.seq >= m.since);
                    v
                } else {
                    let mut v = logs.read(
                        &log,
                        h.after.max(m.since.saturating_sub(1)).saturating_add(1),
                        limit,
                    )?;
                    v.retain(|r| r.seq <= last);
                    v
                };
                let mut entries: Vec<proto::Entry> = recs
                    .iter()
                    .filter_map(|r| self.show(&h.conversation, r, Some(user)))
                    .collect();
                for e in &mut entries {
                    if matches!(e.kind, Some(proto::entry::Kind::Content(_))) {
                        e.reactions = self.reactions(&h.conversation, e.seq)?;
                    }
                }
                let first_kept = logs.read(&log, 0, 1)?.first().map_or(0, |r| r.seq);
                Ok(Done::answer(R::Entries(proto::Entries {
                    entries,
                    first_kept,
                })))
            }
            Op::RegisterPush(r) => self.register_push(user, device, r),
            Op::UnregisterPush(_) => self.unregister_push(user, device),
            Op::MarkRead(mr) => {
                let mut d = self.dir.lock();
                let (c, _) = Chat::member_of(&d, &mr.conversation, user)?;
                let upto = mr.seq.min(c.last_seq);
                let receipts_off = d.users.get(user).is_some_and(|u| u.read_receipts_off);
                let c = d
                    .conversations
                    .get_mut(&mr.conversation)
                    .ok_or(ChatError::UnknownConversation)?;
                if let Some(m) = c.members.get_mut(user) {
                    if upto > m.read {
                        m.read = upto;
                        // Read implies delivered, unless that would show
                        // others (by delivered moving) when it reads.
                        if !receipts_off {
                            m.delivered = m.delivered.max(upto);
                        }
                        drop(d);
                        let _ = self.events.send(delivery::Event::Watermark {
                            conversation: mr.conversation,
                            user: user.to_owned(),
                            device: device.to_owned(),
                        });
                    }
                }
                Ok(Done::ok())
            }
            Op::ListConversations(l) => {
                let d = self.dir.lock();
                let mut mine: Vec<(&String, u64)> = d
                    .users
                    .get(user)
                    .map(|u| {
                        u.conversations
                            .iter()
                            .filter_map(|c| d.conversations.get(c).map(|x| (c, x.last_ms)))
                            .collect()
                    })
                    .unwrap_or_default();
                // Most recent first; ties in a fixed order, so pages agree.
                mine.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                let limit = match l.limit as usize {
                    0 => 20,
                    n => n.min(MAX_PAGE),
                };
                let offset = l.offset as usize;
                let page: Vec<String> = mine
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|c| c.0.clone())
                    .collect();
                let more = mine.len() > offset + page.len();
                let mut conversations = Vec::with_capacity(page.len());
                for id in &page {
                    conversations.push(self.summary(&d, id, user)?);
                }
                Ok(Done::answer(R::Conversations(proto::Conversations {
                    conversations,
                    more,
                })))
            }
            Op::ListDevices(_) => {
                let broker = self.broker()?;
                let d = self.dir.lock();
                let devices = d
                    .users
                    .get(user)
                    .map(|u| devices_of(&broker, user, u))
                    .unwrap_or_default();
                Ok(Done::answer(R::Devices(proto::Devices { devices })))
            }
            Op::RevokeDevice(rd) => {
                let d = self.dir.lock();
                if d.device(user, &rd.device).is_none() {
                    return Err(ChatError::BadRequest(format!("no device {:?}", rd.device)));
                }
                drop(d);
                self.revoke(user, &rd.device, device)?;
                Ok(Done::ok())
            }
            Op::MessageReceipts(q) => {
                let d = self.dir.lock();
                let (c, _) = Chat::member_of(&d, &q.conversation, user)?;
                if q.seq == 0 || q.seq > c.last_seq {
                    return Err(ChatError::BadRequest("no such entry".into()));
                }
                let mut res = proto::MessageReceiptsResult::default();
                for (u, m) in &c.members {
                    if m.since > q.seq {
                        continue;
                    }
                    res.members += 1;
                    if m.delivered >= q.seq {
                        res.delivered.push(u.clone());
                    }
                    if m.read >= q.seq && crate::controls::read_visible(self, &d, u, user) {
                        res.read.push(u.clone());
                    }
                }
                Ok(Done::answer(R::Receipts(res)))
            }
        }
    }

    /// Revokes `user`'s `device` (its tokens, refresh token included, are
    /// refused from now on) and disconnects it.
    pub(crate) fn revoke(&self, user: &str, device: &str, by: &str) -> Result<(), ChatError> {
        let rec = records::DirRecord::DeviceRevoked {
            user: user.to_owned(),
            device: device.to_owned(),
        };
        {
            let mut d = self.dir.lock();
            self.dir_append(std::slice::from_ref(&rec))?;
            d.apply(&rec);
        }
        self.broker()?.disconnect(&topics::client_id(user, device));
        tracing::info!(user, device, by, "chat: device revoked");
        Ok(())
    }

    pub(crate) fn info_done(
        &self,
        d: &crate::directory::Directory,
        conv: &str,
        user: &str,
        woken: Vec<String>,
    ) -> Result<Done, ChatError> {
        let info = self.summary(d, conv, user)?;
        let mut done = Done::answer(proto::response::Result::Conversation(
            proto::ConversationInfo {
                conversation: Some(info),
            },
        ));
        done.woken = woken;
        Ok(done)
    }

    /// A conversation as `user` sees it.
    fn summary(
        &self,
        d: &crate::directory::Directory,
        id: &str,
        user: &str,
    ) -> Result<proto::Conversation, ChatError> {
        let (c, m) = Chat::member_of(d, id, user)?;
        // The newest entry this user is shown something of (another
        // member's delete-for-me shows nothing).
        let last = self
            .broker()?
            .logs()
            .read_back(&conversation_log(id), c.last_seq + 1, 8)?
            .iter()
            .filter(|r| r.seq >= m.since)
            .filter_map(|r| self.show(id, r, Some(user)))
            .find(|e| e.kind.is_some());
        Ok(proto::Conversation {
            id: id.to_owned(),
            kind: match c.kind {
                ConvKind::Direct => proto::conversation::Kind::Direct as i32,
                ConvKind::Group => proto::conversation::Kind::Group as i32,
            },
            name: c.name.clone(),
            members: c.members.keys().cloned().collect(),
            last_seq: c.last_seq,
            read: m.read,
            unread: c
                .last_seq
                .saturating_sub(m.read.max(m.since.saturating_sub(1))),
            last,
            visible_from: m.since,
            description: c.description.clone(),
            role: role_to_proto(m.role) as i32,
            announce_only: c.announce_only,
            public: c.public,
            approval_required: c.approval_required,
            max_members: c.max_members,
            owner: c.owner().unwrap_or_default().to_owned(),
            admins: c
                .members
                .iter()
                .filter(|(_, m)| m.role == Role::Admin)
                .map(|(u, _)| u.clone())
                .collect(),
            disappearing_secs: c.disappear_secs,
            muted_until: d
                .users
                .get(user)
                .and_then(|u| u.muted.get(id))
                .copied()
                .unwrap_or(0),
        })
    }

    /// Sends `response` to the requesting device, with the request's
    /// correlation data.
    fn respond(
        &self,
        p: &Inbound,
        user: &str,
        device: &str,
        response: proto::Response,
    ) -> Result<(), courier::store::StoreError> {
        let props = p.message.props.as_deref();
        if props.and_then(|x| x.response_topic.as_ref()).is_none() {
            return Ok(());
        }
        let down = proto::Down {
            kind: Some(proto::down::Kind::Response(response)),
        };
        // A device's answers come on its inbox, whatever it named.
        let topic = topics::inbox(user, device);
        let msg = Message {
            topic,
            payload: Bytes::from(down.encode_to_vec()),
            qos: 1,
            retain: false,
            expires_at: None,
            props: Some(Box::new(MessageProps {
                correlation_data: props.and_then(|x| x.correlation_data.clone()),
                ..MessageProps::default()
            })),
        };
        match self.broker() {
            Ok(b) => b.deliver(&p.client.client_id, msg, false, None).map(|_| ()),
            Err(_) => Ok(()),
        }
    }
}

impl Chat {
    /// Counts an action against its rate limits, or refuses it (counted).
    pub(crate) fn limited(&self, a: Action, user: &str, device: &str) -> Result<(), ChatError> {
        self.limits
            .check(a, user, device)
            .inspect_err(|_| self.metrics.limit_hit(a))
    }

    /// Up to `limit` inbox entries of `user`'s `device` after its saved
    /// cursor, which stays where it is: what a peek connection is shown.
    fn fetch(&self, user: &str, device: &str, limit: usize) -> Result<proto::Fetched, ChatError> {
        let broker = self.broker()?;
        let logs = broker.logs();
        let cursor = inbox::saved_cursor(logs, user, device)?;
        let page = inbox::read(self, logs, user, device, cursor + 1, limit)?;
        let more = page.items.len() == limit;
        let entries = page
            .items
            .into_iter()
            .filter_map(|item| match item {
                inbox::Item::Entry(_, _, e) => Some(*e),
                inbox::Item::Skip(_) => None,
            })
            .collect();
        Ok(proto::Fetched {
            entries,
            lost: page.lost,
            more,
        })
    }
}
