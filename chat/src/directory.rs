//! Who exists and who is in what: users, their devices, conversations and
//! their members with each member's watermarks. Held in memory, rebuilt
//! at start-up from the `dir` log and the conversations' cursors; every
//! change is written to the log before it is applied here.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::records::{Action, ConvKind, DirRecord, StoredEntry, StoredKind};

/// A device of a user.
#[derive(Debug, Clone, Default)]
pub(crate) struct Device {
    pub revoked: bool,
    /// SHA-256 of its refresh token, if it has one.
    pub refresh: Option<Vec<u8>>,
}

/// A user.
#[derive(Debug, Default)]
pub(crate) struct User {
    /// Devices by id.
    pub devices: BTreeMap<String, Device>,
    /// Disabled by an administrator: no device may log in.
    pub disabled: bool,
    /// Conversations the user is a member of.
    pub conversations: HashSet<String>,
}

/// A member of a conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Member {
    /// The entry that made it a member: it sees the log from here on.
    pub since: u64,
    /// Highest entry acknowledged by one of its devices.
    pub delivered: u64,
    /// Its read watermark.
    pub read: u64,
}

/// A conversation.
#[derive(Debug)]
pub(crate) struct Conversation {
    pub kind: ConvKind,
    pub name: String,
    pub members: BTreeMap<String, Member>,
    /// Last sequence number in its log.
    pub last_seq: u64,
    /// When its last entry was appended (Unix ms), for ordering by recency.
    pub last_ms: u64,
}

impl Conversation {
    fn new(kind: ConvKind) -> Conversation {
        Conversation {
            kind,
            name: String::new(),
            members: BTreeMap::new(),
            last_seq: 0,
            last_ms: 0,
        }
    }
}

/// Users and conversations.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    pub users: HashMap<String, User>,
    pub conversations: HashMap<String, Conversation>,
}

impl Directory {
    /// Applies one record of the `dir` log.
    pub fn apply(&mut self, rec: &DirRecord) {
        match rec {
            DirRecord::User { user } => {
                self.users.entry(user.clone()).or_default();
            }
            DirRecord::Device { user, device } => {
                self.users
                    .entry(user.clone())
                    .or_default()
                    .devices
                    .entry(device.clone())
                    .or_default();
            }
            DirRecord::DeviceRevoked { user, device } => {
                let d = self.device_mut(user, device);
                d.revoked = true;
                d.refresh = None;
            }
            DirRecord::RefreshToken { user, device, hash } => {
                self.device_mut(user, device).refresh = Some(hash.clone());
            }
            DirRecord::UserDisabled { user, disabled } => {
                self.users.entry(user.clone()).or_default().disabled = *disabled;
            }
            DirRecord::Conversation { id, kind } => {
                self.conversations
                    .entry(id.clone())
                    .or_insert_with(|| Conversation::new(*kind));
            }
            DirRecord::Change {
                conversation,
                seq,
                entry,
            } => self.apply_change(conversation, *seq, entry),
        }
    }

    /// Applies the membership change that entry `seq` of `conv` carries.
    pub fn apply_change(&mut self, conv: &str, seq: u64, entry: &StoredEntry) {
        let StoredKind::Membership {
            action,
            users,
            name,
        } = &entry.kind
        else {
            return;
        };
        let Some(c) = self.conversations.get_mut(conv) else {
            return;
        };
        c.last_seq = c.last_seq.max(seq);
        match action {
            Action::Created | Action::Added => {
                if *action == Action::Created {
                    c.name = name.clone();
                }
                for u in users {
                    c.members.entry(u.clone()).or_insert(Member {
                        since: seq,
                        ..Member::default()
                    });
                    self.users
                        .entry(u.clone())
                        .or_default()
                        .conversations
                        .insert(conv.to_owned());
                }
            }
            Action::Removed | Action::Left => {
                for u in users {
                    c.members.remove(u);
                    if let Some(user) = self.users.get_mut(u) {
                        user.conversations.remove(conv);
                    }
                }
            }
        }
    }

    fn device_mut(&mut self, user: &str, device: &str) -> &mut Device {
        self.users
            .entry(user.to_owned())
            .or_default()
            .devices
            .entry(device.to_owned())
            .or_default()
    }

    /// `user`'s `device`, if known.
    pub fn device(&self, user: &str, device: &str) -> Option<&Device> {
        self.users.get(user)?.devices.get(device)
    }
}

/// The id of the direct conversation of two users: the same whichever
/// of them writes first.
pub(crate) fn direct_id(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut input = Vec::with_capacity(lo.len() + hi.len() + 1);
    input.extend_from_slice(lo.as_bytes());
    input.push(0);
    input.extend_from_slice(hi.as_bytes());
    let d = ring::digest::digest(&ring::digest::SHA256, &input);
    format!("d{}", hex(&d.as_ref()[..8]))
}

/// A fresh group id.
pub(crate) fn group_id() -> String {
    let mut raw = [0u8; 8];
    // The system's randomness failing leaves zeros; a collision is then
    // refused as a conflict by the conversation's log, never merged.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw);
    format!("g{}", hex(&raw))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(action: Action, users: &[&str]) -> StoredEntry {
        StoredEntry {
            sender: "alice".into(),
            device: "phone".into(),
            client_msg_id: String::new(),
            kind: StoredKind::Membership {
                action,
                users: users.iter().map(|u| u.to_string()).collect(),
                name: "team".into(),
            },
        }
    }

    #[test]
    fn direct_ids_do_not_depend_on_who_writes_first() {
        assert_eq!(direct_id("alice", "bob"), direct_id("bob", "alice"));
        assert_ne!(direct_id("alice", "bob"), direct_id("alice", "bo"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(direct_id("ab", "c"), direct_id("a", "bc"));
    }

    #[test]
    fn replayed_changes_give_members_with_the_entry_they_joined_at() {
        let mut d = Directory::default();
        d.apply(&DirRecord::Conversation {
            id: "g1".into(),
            kind: ConvKind::Group,
        });
        d.apply_change("g1", 1, &change(Action::Created, &["alice", "bob"]));
        d.apply_change("g1", 5, &change(Action::Added, &["carol"]));
        d.apply_change("g1", 7, &change(Action::Removed, &["bob"]));
        let c = &d.conversations["g1"];
        assert_eq!(c.name, "team");
        assert_eq!(c.last_seq, 7);
        assert_eq!(c.members.keys().collect::<Vec<_>>(), ["alice", "carol"]);
        assert_eq!(c.members["carol"].since, 5);
        assert!(d.users["bob"].conversations.is_empty());
        assert!(d.users["carol"].conversations.contains("g1"));
    }
}
