//! Message kinds: what a send may be (content with a reply, mentions and
//! an attachment; a reaction; an edit; a delete), the checks each passes
//! before it becomes an entry, and how an entry is shown to one viewer
//! (bodies deleted for everyone, mentions of the viewer, reactions).
//!
//! Each message has an index: the cursors of a log that has no records,
//! `x/<conversation>/<seq>`. A reaction is one per `<emoji>\0<user>`
//! holding the reaction entry's seq (0: taken back), so a message's summary
//! is one range read; an edit is one named `\0e<seq>`, so a delete for
//! everyone finds the edits to erase with the message.

use std::collections::{BTreeMap, HashMap, VecDeque};

use courier::store::LogRecord;
use parking_lot::Mutex;

use crate::directory::{Conversation, Member};
use crate::error::ChatError;
use crate::proto::{self, send_message::Kind};
use crate::records::{
    self, conversation_log, Action, Role, StoredAttachment, StoredEntry, StoredKind, StoredMessage,
};
use crate::Chat;

/// Longest attachment or thumbnail id, and reaction emoji, in bytes.
const MAX_ATTACHMENT_ID: usize = 128;
const MAX_EMOJI: usize = 32;
const MAX_MENTIONS: usize = 50;

/// The log whose cursors index the reactions on entry `seq` of `conv`.
fn reaction_log(conv: &str, seq: u64) -> String {
    format!("x/{conv}/{seq}")
}

/// What was written about messages lately, committed or not: the store's
/// reads see only committed records and cursors, and a send may refer to
/// one that is not yet (a reply to, a reaction on, an edit or a delete of a
/// message still in the commit window). Updated under the directory lock
/// with each entry's effects; bounded (the oldest go first, long committed
/// by then).
#[derive(Default)]
pub(crate) struct Recent(Mutex<RecentState>);

#[derive(Default)]
struct RecentState {
    facts: HashMap<(String, u64), Facts>,
    order: VecDeque<(String, u64)>,
}

/// What is known lately of one message.
#[derive(Default)]
struct Facts {
    /// A message: its sender and when it was stored (Unix ms).
    message: Option<(String, u64)>,
    edits: Vec<u64>,
    /// `<emoji>\0<user>` -> the reaction entry's seq (0: taken back).
    reactions: HashMap<String, u64>,
    erased: bool,
}

/// Messages whose recent facts are kept.
const RECENT: usize = 65_536;

impl Recent {
    fn with(&self, conv: &str, seq: u64, f: impl FnOnce(&mut Facts)) {
        let mut st = self.0.lock();
        let key = (conv.to_owned(), seq);
        if !st.facts.contains_key(&key) {
            if st.order.len() >= RECENT {
                if let Some(old) = st.order.pop_front() {
                    st.facts.remove(&old);
                }
            }
            st.order.push_back(key.clone());
        }
        f(st.facts.entry(key).or_default());
    }

    fn read<T>(&self, conv: &str, seq: u64, f: impl FnOnce(&Facts) -> T) -> Option<T> {
        let st = self.0.lock();
        st.facts.get(&(conv.to_owned(), seq)).map(f)
    }
}

/// The message a send refers to.
struct Target {
    sender: String,
    time_ms: u64,
}

/// A send, checked: the entry to append and what it does besides.
pub(crate) struct Checked {
    pub kind: StoredKind,
    /// Only the sender's own devices get it (a delete for me).
    pub own_only: bool,
    /// Nothing to store: already so (a repeated reaction); the seq of the
    /// entry that made it so (0: none).
    pub already: Option<u64>,
    /// Entries to erase with it (a delete for everyone: the message and
    /// its edits).
    pub erase: Vec<u64>,
}

/// Whether the sender may still delete a message for everyone.
pub(crate) fn within_window(sent_ms: u64, now_ms: u64, window_secs: u64) -> bool {
    now_ms.saturating_sub(sent_ms) <= window_secs.saturating_mul(1000)
}

impl Chat {
    /// Checks a send of `kind` to `c` by `user` (a member, `m`) and turns
    /// it into the entry to store. Called under the directory lock.
    pub(crate) fn check_send(
        &self,
        c: &Conversation,
        conv: &str,
        user: &str,
        m: Member,
        kind: Kind,
        now_ms: u64,
    ) -> Result<Checked, ChatError> {
        let stored = |kind| Checked {
            kind,
            own_only: false,
            already: None,
            erase: Vec::new(),
        };
        match kind {
            Kind::Content(content) => {
                if c.announce_only && m.role < Role::Admin {
                    return Err(ChatError::NotAllowed(
                        "only admins post in this group".into(),
                    ));
                }
                let reply_to = content.reply_to;
                if reply_to > 0 {
                    self.target(conv, m, reply_to)?;
                }
                let mut msg = self.check_content(c, content, reply_to)?;
                if c.disappear_secs > 0 {
                    msg.expires_at_ms = now_ms.saturating_add(c.disappear_secs * 1000);
                }
                Ok(stored(StoredKind::Message(msg)))
            }
            Kind::Reaction(r) => {
                if r.emoji.is_empty()
                    || r.emoji.len() > MAX_EMOJI
                    || r.emoji.chars().any(char::is_control)
                {
                    return Err(ChatError::BadRequest(format!(
                        "an emoji has 1 to {MAX_EMOJI} bytes, no control characters"
                    )));
                }
                self.target(conv, m, r.seq)?;
                let mine = format!("{}\0{user}", r.emoji);
                let recent = self
                    .recent
                    .read(conv, r.seq, |f| f.reactions.get(&mine).copied())
                    .flatten();
                let now = match recent {
                    Some(v) => v,
                    None => self
                        .broker()?
                        .logs()
                        .cursors(&reaction_log(conv, r.seq))?
                        .into_iter()
                        .find(|(k, _)| *k == mine)
                        .map_or(0, |(_, v)| v),
                };
                if (now > 0) != r.remove {
                    return Ok(Checked {
                        already: Some(now),
                        ..stored(StoredKind::Message(StoredMessage::default()))
                    });
                }
                Ok(stored(StoredKind::Reaction {
                    target: r.seq,
                    emoji: r.emoji,
                    remove: r.remove,
                }))
            }
            Kind::Edit(e) => {
                let content = e
                    .content
                    .ok_or_else(|| ChatError::BadRequest("an edit without content".into()))?;
                let t = self.target(conv, m, e.seq)?;
                if t.sender != user {
                    return Err(ChatError::NotAllowed(
                        "only the sender edits a message".into(),
                    ));
                }
                let new = self.check_content(c, content, 0)?;
                Ok(stored(StoredKind::Edit {
                    target: e.seq,
                    message: new,
                }))
            }
            Kind::Delete(del) => {
                let t = self.target(conv, m, del.seq)?;
                let mut erase = Vec::new();
                if del.for_everyone {
                    let admin = m.role >= Role::Admin;
                    if t.sender != user && !admin {
                        return Err(ChatError::NotAllowed(
                            "only the sender or an admin deletes a message for everyone".into(),
                        ));
                    }
                    let window = self.config.delete_window_secs;
                    if !within_window(t.time_ms, now_ms, window) {
                        return Err(ChatError::NotAllowed(format!(
                            "messages are deleted for everyone within {window} s of sending"
                        )));
                    }
                    erase = self.edits_of(conv, del.seq)?;
                    erase.push(del.seq);
                }
                Ok(Checked {
                    kind: StoredKind::Delete {
                        target: del.seq,
                        for_everyone: del.for_everyone,
                    },
                    own_only: !del.for_everyone,
                    already: None,
                    erase,
                })
            }
        }
    }

    /// The size, mention and attachment checks of a message's content.
    fn check_content(
        &self,
        c: &Conversation,
        content: proto::Content,
        reply_to: u64,
    ) -> Result<StoredMessage, ChatError> {
        let size = content.body.len() + content.r#type.len();
        if size > self.config.max_content_bytes {
            return Err(ChatError::TooLarge {
                size,
                max: self.config.max_content_bytes,
            });
        }
        if content.mentions.len() > MAX_MENTIONS {
            return Err(ChatError::BadRequest(format!(
                "at most {MAX_MENTIONS} mentions"
            )));
        }
        if let Some(u) = content
            .mentions
            .iter()
            .find(|u| !c.members.contains_key(*u))
        {
            return Err(ChatError::BadRequest(format!(
                "mentions {u:?}, who is not a member"
            )));
        }
        let attachment = match content.attachment {
            None => None,
            Some(a) => Some(Box::new(self.check_attachment(a)?)),
        };
        let mut mentions = content.mentions;
        mentions.sort();
        mentions.dedup();
        Ok(StoredMessage {
            ty: content.r#type,
            body: content.body,
            reply_to,
            mentions,
            attachment,
            expires_at_ms: 0,
        })
    }

    fn check_attachment(&self, a: proto::Attachment) -> Result<StoredAttachment, ChatError> {
        let bad = |why: &str| Err(ChatError::BadRequest(format!("attachment: {why}")));
        if a.id.is_empty() || a.id.len() > MAX_ATTACHMENT_ID {
            return bad("an id has 1 to 128 bytes");
        }
        if a.thumbnail_id.len() > MAX_ATTACHMENT_ID {
            return bad("a thumbnail id has at most 128 bytes");
        }
        let mime_ok = a.mime_type.len() <= 127
            && a.mime_type.split_once('/').is_some_and(|(t, s)| {
                let token = |x: &str| {
                    !x.is_empty()
                        && x.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                token(t) && token(s)
            });
        if !mime_ok {
            return bad("mime_type is not type/subtype");
        }
        let max = self.config.max_attachment_bytes;
        if a.size == 0 || a.size > max {
            return bad(&format!("size must be 1 to {max} bytes"));
        }
        if a.sha256.len() != 32 {
            return bad("sha256 must be 32 bytes");
        }
        Ok(StoredAttachment {
            id: a.id,
            mime_type: a.mime_type,
            size: a.size,
            sha256: a.sha256,
            thumbnail_id: a.thumbnail_id,
        })
    }

    /// The message entry `seq` of `conv` that a send refers to, visible to
    /// a member `m` (recent writes first, then the store).
    fn target(&self, conv: &str, m: Member, seq: u64) -> Result<Target, ChatError> {
        if seq < m.since {
            return Err(ChatError::UnknownMessage);
        }
        let recent = self
            .recent
            .read(conv, seq, |f| (f.erased, f.message.clone()));
        match recent {
            Some((true, _)) => return Err(ChatError::UnknownMessage),
            Some((false, Some((sender, time_ms)))) => return Ok(Target { sender, time_ms }),
            _ => {}
        }
        let broker = self.broker()?;
        let r = broker
            .logs()
            .read(&conversation_log(conv), seq, 1)?
            .into_iter()
            .find(|r| r.seq == seq)
            .ok_or(ChatError::UnknownMessage)?;
        let e = records::decode::<StoredEntry>(&r.data).ok_or(ChatError::UnknownMessage)?;
        match e.kind {
            StoredKind::Content { .. } | StoredKind::Message(_) => Ok(Target {
                sender: e.sender,
                time_ms: r.time_ms,
            }),
            _ => Err(ChatError::UnknownMessage),
        }
    }

    /// What an entry does besides being stored, journaled with it (and
    /// done again by recovery if a crash cut it off; all idempotent): a
    /// message's facts and expiry, a reaction or an edit in the message's
    /// index, and the entries a delete for everyone erases.
    pub(crate) fn effects(&self, conv: &str, seq: u64, entry: &StoredEntry, erase: &[u64]) {
        let Ok(broker) = self.broker() else { return };
        let logs = broker.logs();
        let now = courier::message::unix_now_ms();
        match &entry.kind {
            StoredKind::Message(m) => {
                let sender = entry.sender.clone();
                self.recent
                    .with(conv, seq, |f| f.message = Some((sender, now)));
                if m.expires_at_ms > 0 {
                    if let Err(e) = self.add_timer(conv, seq, m.expires_at_ms) {
                        tracing::error!(conversation = conv, seq, "chat: no expiry recorded: {e}");
                    }
                }
            }
            StoredKind::Reaction {
                target,
                emoji,
                remove,
            } => {
                let key = format!("{emoji}\0{}", entry.sender);
                let value = if *remove { 0 } else { seq };
                logs.set_cursor(&reaction_log(conv, *target), &key, value);
                self.recent.with(conv, *target, |f| {
                    f.reactions.insert(key, value);
                });
            }
            StoredKind::Edit { target, .. } => {
                logs.set_cursor(&reaction_log(conv, *target), &format!("\0e{seq}"), seq);
                self.recent.with(conv, *target, |f| f.edits.push(seq));
            }
            _ => {}
        }
        for s in erase {
            self.erase(logs, conv, *s);
        }
    }

    /// Erases entry `seq` of `conv`: reads leave it out from now on (the
    /// store's at its next commit, the overlay at once).
    pub(crate) fn erase(&self, logs: &courier::logs::Logs, conv: &str, seq: u64) {
        logs.erase(&conversation_log(conv), seq);
        self.recent.with(conv, seq, |f| f.erased = true);
    }

    /// What a stored delete for everyone erases: the message and its edits
    /// (for recovery, which does its effects again).
    pub(crate) fn erase_list(&self, conv: &str, kind: &StoredKind) -> Result<Vec<u64>, ChatError> {
        match kind {
            StoredKind::Delete {
                target,
                for_everyone: true,
            } => {
                let mut v = self.edits_of(conv, *target)?;
                v.push(*target);
                Ok(v)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The edits of message `seq` of `conv` (their seqs), committed or
    /// recent.
    pub(crate) fn edits_of(&self, conv: &str, seq: u64) -> Result<Vec<u64>, ChatError> {
        let broker = self.broker()?;
        let mut v: Vec<u64> = broker
            .logs()
            .cursors(&reaction_log(conv, seq))?
            .into_iter()
            .filter(|(name, edit)| name.starts_with("\0e") && *edit > 0)
            .map(|(_, edit)| edit)
            .collect();
        if let Some(recent) = self.recent.read(conv, seq, |f| f.edits.clone()) {
            v.extend(recent);
        }
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    /// The reactions on entry `seq` of `conv`, by emoji.
    pub(crate) fn reactions(
        &self,
        conv: &str,
        seq: u64,
    ) -> Result<Vec<proto::ReactionCount>, ChatError> {
        let broker = self.broker()?;
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, v) in broker.logs().cursors(&reaction_log(conv, seq))? {
            if v == 0 {
                continue;
            }
            if let Some((emoji, user)) = key.split_once('\0').filter(|(e, _)| !e.is_empty()) {
                by.entry(emoji.to_owned())
                    .or_default()
                    .push(user.to_owned());
            }
        }
        Ok(by
            .into_iter()
            .map(|(emoji, users)| proto::ReactionCount {
                emoji,
                count: users.len() as u32,
                users,
            })
            .collect())
    }

    /// Entry `r` of `conv` as `viewer` is shown it: the sender's client
    /// message id only to the sender; another member's delete-for-me as an
    /// entry without a kind.
    pub(crate) fn show(
        &self,
        conv: &str,
        r: &LogRecord,
        viewer: Option<&str>,
    ) -> Option<proto::Entry> {
        let e = records::decode::<StoredEntry>(&r.data)?;
        let own = viewer == Some(e.sender.as_str());
        let mut mentions_me = false;
        let mut expires_at_ms = 0;
        let kind = match e.kind {
            StoredKind::Content { ty, body } => Some(proto::entry::Kind::Content(
                content_to_proto(StoredMessage {
                    ty,
                    body,
                    ..StoredMessage::default()
                }),
            )),
            StoredKind::Message(m) => {
                mentions_me = viewer.is_some_and(|v| m.mentions.iter().any(|x| x == v));
                expires_at_ms = m.expires_at_ms;
                Some(proto::entry::Kind::Content(content_to_proto(m)))
            }
            StoredKind::Edit { target, message } => {
                mentions_me = viewer.is_some_and(|v| message.mentions.iter().any(|x| x == v));
                Some(proto::entry::Kind::Edit(proto::Edit {
                    seq: target,
                    content: Some(content_to_proto(message)),
                }))
            }
            StoredKind::Reaction {
                target,
                emoji,
                remove,
            } => Some(proto::entry::Kind::Reaction(proto::Reaction {
                seq: target,
                emoji,
                remove,
            })),
            StoredKind::Delete {
                target,
                for_everyone,
            } => {
                if !for_everyone && !own {
                    // Another member's own affair: the seq stays dense.
                    return Some(proto::Entry {
                        conversation: conv.to_owned(),
                        seq: r.seq,
                        time_ms: r.time_ms,
                        ..proto::Entry::default()
                    });
                }
                Some(proto::entry::Kind::Delete(proto::Delete {
                    seq: target,
                    for_everyone,
                }))
            }
            StoredKind::Membership {
                action,
                users,
                name,
            } => Some(proto::entry::Kind::Membership(proto::Membership {
                action: match action {
                    Action::Created => proto::membership::Action::Created,
                    Action::Added => proto::membership::Action::Added,
                    Action::Removed => proto::membership::Action::Removed,
                    Action::Left => proto::membership::Action::Left,
                    Action::Joined => proto::membership::Action::Joined,
                } as i32,
                users,
                name,
            })),
            StoredKind::Group(g) => Some(crate::groups::change_to_proto(g)),
            StoredKind::Disappearing { ttl_secs } => {
                Some(proto::entry::Kind::Disappearing(ttl_secs))
            }
            StoredKind::MissedCall { call_id, video } => {
                Some(proto::entry::Kind::Call(proto::CallRecord {
                    call_id,
                    video,
                    missed: true,
                }))
            }
        };
        let sender_blocked = viewer.is_some_and(|v| self.blocks.has(v, &e.sender));
        Some(proto::Entry {
            conversation: conv.to_owned(),
            seq: r.seq,
            sender_blocked,
            client_msg_id: if own { e.client_msg_id } else { String::new() },
            sender: e.sender,
            sender_device: e.device,
            time_ms: r.time_ms,
            kind,
            mentions_me,
            expires_at_ms,
            reactions: Vec::new(),
        })
    }
}

/// A stored message's content as the protocol carries it.
fn content_to_proto(m: StoredMessage) -> proto::Content {
    proto::Content {
        r#type: m.ty,
        body: m.body,
        reply_to: m.reply_to,
        mentions: m.mentions,
        attachment: m.attachment.map(|a| {
            let a = *a;
            proto::Attachment {
                id: a.id,
                mime_type: a.mime_type,
                size: a.size,
                sha256: a.sha256,
                thumbnail_id: a.thumbnail_id,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delete_window_is_measured_from_the_time_handed_in() {
        let sent = 1_000_000;
        assert!(within_window(sent, sent + 3_600_000, 3600));
        assert!(!within_window(sent, sent + 3_600_001, 3600));
        // A clock that went back never closes the window.
        assert!(within_window(sent, sent - 5, 0));
    }
}
