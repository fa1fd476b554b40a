//! Conversation logs: where an entry gets its sequence number, and its
//! fan-out into the members' inboxes.
//!
//! Every write of one send or change (the directory record, the entry, one
//! inbox reference per member, the fan-out cursor) is journaled under the
//! directory lock, so they are one contiguous run in the broker's group
//! commit, and a crash keeps a prefix of the journal. Recovery therefore
//! finds at most one conversation whose last entry is not in every inbox
//! (the last one written), and completes it; a membership change whose
//! entry did not reach the disk is written again from its directory
//! record. Nothing is acknowledged before the commit covering all of it.

use std::collections::BTreeMap;

use courier::logs::NewRecord;
use courier::store::LogRecord;

use crate::directory::{Conversation, Directory, Member};
use crate::error::ChatError;
use crate::records::{
    self, conversation_log, inbox_log, Action, ConvKind, DirRecord, GroupChange, InboxRef,
    StoredEntry, StoredKind, DIRECTORY, FANOUT,
};
use crate::Chat;

/// Records read per page at start-up.
const PAGE: usize = 1024;

impl Chat {
    /// Appends `entry` to `conv` and fans it out to `recipients`' inboxes.
    /// With `id`, a repeat of an entry with that id stores nothing and
    /// returns the original's sequence number (`true`: it was a repeat).
    /// The entry's effects (an index, a timer, `erase`: what a delete for
    /// everyone erases) are journaled before the fan-out cursor moves past
    /// it: a crash that keeps the entry but not its effects leaves the
    /// cursor below it, and recovery does them.
    pub(crate) fn append_entry(
        &self,
        d: &mut Directory,
        conv: &str,
        entry: &StoredEntry,
        id: Option<String>,
        recipients: &[String],
        erase: &[u64],
    ) -> Result<(u64, bool), ChatError> {
        let c = d
            .conversations
            .get_mut(conv)
            .ok_or(ChatError::UnknownConversation)?;
        let broker = self.broker()?;
        let logs = broker.logs();
        let a = logs.append(
            &conversation_log(conv),
            vec![NewRecord {
                id,
                data: records::encode(entry),
            }],
            Some(c.last_seq),
        )?;
        let seq = a.seqs.first().copied().unwrap_or(0);
        if a.duplicates > 0 {
            return Ok((seq, true));
        }
        c.last_seq = seq;
        c.last_ms = courier::message::unix_now() * 1000;
        let refs = self.fan_out(conv, seq, entry, recipients)?;
        let pushable = matches!(
            entry.kind,
            StoredKind::Message(_) | StoredKind::Content { .. }
        );
        self.push_new(d, conv, &entry.sender, pushable, &refs);
        self.effects(conv, seq, entry, erase);
        logs.set_cursor(&conversation_log(conv), FANOUT, seq);
        Ok((seq, false))
    }

    fn fan_out(
        &self,
        conv: &str,
        seq: u64,
        entry: &StoredEntry,
        recipients: &[String],
    ) -> Result<Vec<(String, u64)>, ChatError> {
        let broker = self.broker()?;
        let logs = broker.logs();
        let mut refs = Vec::with_capacity(recipients.len());
        for u in recipients {
            let r = InboxRef {
                conversation: conv.to_owned(),
                seq,
                from_device: (*u == entry.sender).then(|| entry.device.clone()),
            };
            let a = logs.append(
                &inbox_log(u),
                vec![NewRecord {
                    id: None,
                    data: records::encode(&r),
                }],
                None,
            )?;
            if let Some(pos) = a.seqs.first() {
                refs.push((u.clone(), *pos));
            }
        }
        self.metrics
            .inc(&self.metrics.inbox_refs, recipients.len() as u64);
        Ok(refs)
    }

    /// Creates conversation `id` with `members`, its first entry saying so.
    pub(crate) fn create(
        &self,
        d: &mut Directory,
        id: &str,
        kind: ConvKind,
        actor: (&str, &str),
        members: Vec<String>,
        name: String,
    ) -> Result<u64, ChatError> {
        let rec = DirRecord::Conversation {
            id: id.to_owned(),
            kind,
        };
        self.dir_append(std::slice::from_ref(&rec))?;
        d.apply(&rec);
        self.change(d, id, actor, Action::Created, members, name)
    }

    /// Appends a membership change of `users` to `conv` (see
    /// [`Chat::record_change`]).
    pub(crate) fn change(
        &self,
        d: &mut Directory,
        conv: &str,
        actor: (&str, &str),
        action: Action,
        users: Vec<String>,
        name: String,
    ) -> Result<u64, ChatError> {
        let kind = StoredKind::Membership {
            action,
            users,
            name,
        };
        self.record_change(d, conv, actor, kind)
    }

    /// Appends a change to `conv` (membership, settings, a role): to the
    /// directory first, then as an entry that the members get, and those
    /// it concerns who are not members (added, removed, turned down).
    pub(crate) fn record_change(
        &self,
        d: &mut Directory,
        conv: &str,
        actor: (&str, &str),
        kind: StoredKind,
    ) -> Result<u64, ChatError> {
        let c = d
            .conversations
            .get(conv)
            .ok_or(ChatError::UnknownConversation)?;
        let seq = c.last_seq + 1;
        let mut recipients: Vec<String> = c.members.keys().cloned().collect();
        for u in concerns(&kind) {
            if !c.members.contains_key(u) && !recipients.contains(u) {
                recipients.push(u.clone());
            }
        }
        let entry = StoredEntry {
            sender: actor.0.to_owned(),
            device: actor.1.to_owned(),
            client_msg_id: String::new(),
            kind,
        };
        // Not applied yet: the entry is appended after the last one first.
        self.dir_append(&[DirRecord::Change {
            conversation: conv.to_owned(),
            seq,
            entry: entry.clone(),
        }])?;
        let (got, _) = self.append_entry(d, conv, &entry, None, &recipients, &[])?;
        d.apply_change(conv, got, &entry);
        Ok(got)
    }

    /// Rebuilds the directory from the store and completes what a crash
    /// interrupted. Called once, before clients connect.
    pub(crate) fn recover(&self) -> Result<(), ChatError> {
        let broker = self.broker()?;
        let logs = broker.logs();
        let mut d = self.dir.lock();
        // Membership changes per conversation, in order, to know who was a
        // member at any entry and to rewrite a change whose entry is lost.
        let mut changes: BTreeMap<String, Vec<(u64, StoredEntry)>> = BTreeMap::new();
        let mut from = 1;
        loop {
            let page = logs.read(DIRECTORY, from, PAGE)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for r in &page {
                let Some(rec) = records::decode::<DirRecord>(&r.data) else {
                    tracing::error!(seq = r.seq, "chat: unreadable directory record skipped");
                    continue;
                };
                match &rec {
                    DirRecord::Change {
                        conversation,
                        seq,
                        entry,
                    } => changes
                        .entry(conversation.clone())
                        .or_default()
                        .push((*seq, entry.clone())),
                    DirRecord::Blocked {
                        user,
                        other,
                        blocked,
                    } => self.blocks.apply(user, other, *blocked),
                    _ => {}
                }
                d.apply(&rec);
            }
        }
        let ids: Vec<String> = d.conversations.keys().cloned().collect();
        let mut repaired = 0;
        for id in ids {
            let log = conversation_log(&id);
            let last = logs.last(&log)?;
            let cursors = logs.cursors(&log)?;
            let fanout = cursors.iter().find(|(n, _)| n == FANOUT).map_or(0, |c| c.1);
            let mine = changes.remove(&id).unwrap_or_default();
            let c = d
                .conversations
                .get_mut(&id)
                .ok_or(ChatError::UnknownConversation)?;
            c.last_seq = last;
            for (name, seq) in &cursors {
                if let Some(user) = name.strip_prefix("d:") {
                    if let Some(m) = c.members.get_mut(user) {
                        m.delivered = *seq;
                    }
                } else if let Some(user) = name.strip_prefix("r:") {
                    if let Some(m) = c.members.get_mut(user) {
                        m.read = *seq;
                    }
                }
            }
            if let Some(r) = logs.read_back(&log, u64::MAX, 1)?.first() {
                c.last_ms = r.time_ms;
            }
            // The one interrupted entry, if this is its conversation.
            if fanout < last {
                let recs = logs.read(&log, fanout + 1, PAGE)?;
                for r in &recs {
                    self.complete_fan_out(&id, r, &mine)?;
                    repaired += 1;
                }
                logs.set_cursor(&log, FANOUT, last);
            }
            // A change whose entry never reached the disk.
            for (seq, entry) in mine.iter().filter(|(s, _)| *s > last) {
                let recipients = members_at(&mine, *seq, entry);
                let (got, _) = self.append_entry(&mut d, &id, entry, None, &recipients, &[])?;
                if got != *seq {
                    tracing::error!(conversation = %id, seq, got, "chat: change rewritten at another sequence number");
                }
                repaired += 1;
            }
        }
        if repaired > 0 {
            tracing::warn!(repaired, "chat: completed entries a crash interrupted");
        }
        Ok(())
    }

    /// Puts entry `r` of `conv` into the inboxes of the members it was for
    /// that do not have it yet (their inbox's newest reference is not it).
    fn complete_fan_out(
        &self,
        conv: &str,
        r: &LogRecord,
        changes: &[(u64, StoredEntry)],
    ) -> Result<(), ChatError> {
        let Some(entry) = records::decode::<StoredEntry>(&r.data) else {
            return Ok(());
        };
        let broker = self.broker()?;
        let logs = broker.logs();
        let mut missing = Vec::new();
        for u in members_at(changes, r.seq, &entry) {
            let newest = logs.read_back(&inbox_log(&u), u64::MAX, 1)?;
            let has = newest
                .first()
                .and_then(|n| records::decode::<InboxRef>(&n.data))
                .is_some_and(|n| n.conversation == conv && n.seq == r.seq);
            if !has {
                missing.push(u);
            }
        }
        self.fan_out(conv, r.seq, &entry, &missing)?; // pushes: the start-up scan
                                                      // Its effects may not have landed either; they are idempotent.
        let erase = self.erase_list(conv, &entry.kind)?;
        self.effects(conv, r.seq, &entry, &erase);
        Ok(())
    }

    /// Summary facts of a conversation for a user, from memory.
    pub(crate) fn member_of<'a>(
        d: &'a Directory,
        conv: &str,
        user: &str,
    ) -> Result<(&'a Conversation, Member), ChatError> {
        let c = d
            .conversations
            .get(conv)
            .ok_or(ChatError::UnknownConversation)?;
        let m = c.members.get(user).copied().ok_or(ChatError::NotMember)?;
        Ok((c, m))
    }
}

/// Who gets entry `seq`: the members after the changes up to it, plus
/// whoever the entry itself removes (they learn of it).
fn members_at(changes: &[(u64, StoredEntry)], seq: u64, entry: &StoredEntry) -> Vec<String> {
    let mut members: Vec<String> = Vec::new();
    for (s, e) in changes.iter().filter(|(s, _)| *s <= seq) {
        if let StoredKind::Membership { action, users, .. } = &e.kind {
            match action {
                Action::Created | Action::Added | Action::Joined => {
                    for u in users {
                        if !members.contains(u) {
                            members.push(u.clone());
                        }
                    }
                }
                Action::Removed | Action::Left if *s < seq => {
                    members.retain(|m| !users.contains(m));
                }
                _ => {}
            }
        }
    }
    for u in concerns(&entry.kind) {
        if !members.contains(u) {
            members.push(u.clone());
        }
    }
    members
}

/// The users a change concerns, who get its entry even if they are not
/// (or no longer) members.
fn concerns(kind: &StoredKind) -> &[String] {
    match kind {
        StoredKind::Membership { users, .. } => users,
        StoredKind::Group(GroupChange::JoinRejected { user }) => std::slice::from_ref(user),
        _ => &[],
    }
}
