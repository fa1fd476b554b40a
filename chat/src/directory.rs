//! Who exists and who is in what: users, their devices, conversations and
//! their members with each member's watermarks. Held in memory, rebuilt
//! at start-up from the `dir` log and the conversations' cursors; every
//! change is written to the log before it is applied here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::records::{
    Action, ConvKind, DirRecord, GroupChange, GroupSettings, Role, StoredEntry, StoredKind,
};

/// A device of a user.
#[derive(Debug, Clone, Default)]
pub(crate) struct Device {
    pub revoked: bool,
    /// SHA-256 of its refresh token, if it has one.
    pub refresh: Option<Vec<u8>>,
    /// Its push token.
    pub push: Option<crate::push::PushReg>,
    /// Why the server dropped its push token (told on its next connect).
    pub push_dropped: Option<String>,
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
    /// Muted conversations, until when (Unix seconds).
    pub muted: HashMap<String, u64>,
    /// Its read watermarks are not shown to others, nor others' to it.
    pub read_receipts_off: bool,
    /// Its last seen is shown to no one else.
    pub hide_last_seen: bool,
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
    /// Its role (groups).
    pub role: Role,
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
    /// Group settings (all set; `name` is above).
    pub description: String,
    pub announce_only: bool,
    pub public: bool,
    pub approval_required: bool,
    /// The group's own member limit (0: the server's).
    pub max_members: u32,
    /// Users waiting for an admin to let them in.
    pub join_requests: BTreeSet<String>,
    /// The last member left: nothing more happens in it.
    pub closed: bool,
    /// Messages sent now disappear this long after (0: never).
    pub disappear_secs: u64,
}

impl Conversation {
    fn new(kind: ConvKind) -> Conversation {
        Conversation {
            kind,
            name: String::new(),
            members: BTreeMap::new(),
            last_seq: 0,
            last_ms: 0,
            description: String::new(),
            announce_only: false,
            public: false,
            approval_required: false,
            max_members: 0,
            join_requests: BTreeSet::new(),
            closed: false,
            disappear_secs: 0,
        }
    }

    /// The owner, if it has one (groups do while they have members).
    pub fn owner(&self) -> Option<&str> {
        self.members
            .iter()
            .find(|(_, m)| m.role == Role::Owner)
            .map(|(u, _)| u.as_str())
    }

    /// Who inherits the group when its owner leaves: the longest-standing
    /// admin, else the longest-standing member (ties: by user id).
    pub fn successor(&self) -> Option<&str> {
        let best = |role: Role| {
            self.members
                .iter()
                .filter(|(_, m)| m.role == role)
                .min_by_key(|(u, m)| (m.since, u.as_str()))
                .map(|(u, _)| u.as_str())
        };
        best(Role::Admin).or_else(|| best(Role::Member))
    }

    fn apply_settings(&mut self, s: &GroupSettings) {
        if let Some(v) = &s.name {
            self.name = v.clone();
        }
        if let Some(v) = &s.description {
            self.description = v.clone();
        }
        if let Some(v) = s.announce_only {
            self.announce_only = v;
        }
        if let Some(v) = s.public {
            self.public = v;
        }
        if let Some(v) = s.approval_required {
            self.approval_required = v;
        }
        if let Some(v) = s.max_members {
            self.max_members = v;
        }
    }
}

/// An invite link to a group.
#[derive(Debug, Clone)]
pub(crate) struct Invite {
    pub conversation: String,
    pub by: String,
    /// Unix seconds; 0: never.
    pub expires_at: u64,
    /// 0: unlimited.
    pub max_uses: u32,
    pub uses: u32,
    pub revoked: bool,
}

impl Invite {
    /// Whether it still lets someone in at `now` (Unix seconds).
    pub fn usable(&self, now: u64) -> bool {
        !self.revoked
            && (self.expires_at == 0 || now < self.expires_at)
            && (self.max_uses == 0 || self.uses < self.max_uses)
    }
}

/// Users and conversations.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    pub users: HashMap<String, User>,
    pub conversations: HashMap<String, Conversation>,
    /// Invite links by token.
    pub invites: HashMap<String, Invite>,
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
                d.push = None;
            }
            DirRecord::RefreshToken { user, device, hash } => {
                self.device_mut(user, device).refresh = Some(hash.clone());
            }
            DirRecord::RefreshRevoked { user, device } => {
                self.device_mut(user, device).refresh = None;
            }
            DirRecord::PushToken {
                user,
                device,
                target,
                registered_ms,
            } => {
                let d = self.device_mut(user, device);
                d.push = Some(crate::push::PushReg {
                    target: target.clone(),
                    registered_ms: *registered_ms,
                });
                d.push_dropped = None;
            }
            DirRecord::PushTokenDropped {
                user,
                device,
                reason,
            } => {
                let d = self.device_mut(user, device);
                d.push = None;
                d.push_dropped = reason.clone();
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
            DirRecord::Invite {
                conversation,
                token,
                by,
                expires_at,
                max_uses,
            } => {
                self.invites.insert(
                    token.clone(),
                    Invite {
                        conversation: conversation.clone(),
                        by: by.clone(),
                        expires_at: *expires_at,
                        max_uses: *max_uses,
                        uses: 0,
                        revoked: false,
                    },
                );
            }
            DirRecord::InviteUsed { token } => {
                if let Some(i) = self.invites.get_mut(token) {
                    i.uses = i.uses.saturating_add(1);
                }
            }
            DirRecord::InviteRevoked { token } => {
                if let Some(i) = self.invites.get_mut(token) {
                    i.revoked = true;
                }
            }
            // Kept outside the directory (read without its lock).
            DirRecord::Blocked { .. } => {}
            DirRecord::Muted {
                user,
                conversation,
                until,
            } => {
                let u = self.users.entry(user.clone()).or_default();
                if *until == 0 {
                    u.muted.remove(conversation);
                } else {
                    u.muted.insert(conversation.clone(), *until);
                }
            }
            DirRecord::HideLastSeen { user, hidden } => {
                self.users.entry(user.clone()).or_default().hide_last_seen = *hidden;
            }
            DirRecord::ReadReceipts { user, enabled } => {
                self.users
                    .entry(user.clone())
                    .or_default()
                    .read_receipts_off = !enabled;
            }
        }
    }

    /// Applies the change (membership, settings, roles) that entry `seq`
    /// of `conv` carries; other entries only move `last_seq`.
    pub fn apply_change(&mut self, conv: &str, seq: u64, entry: &StoredEntry) {
        let Some(c) = self.conversations.get_mut(conv) else {
            return;
        };
        c.last_seq = c.last_seq.max(seq);
        match &entry.kind {
            StoredKind::Content { .. }
            | StoredKind::Message(_)
            | StoredKind::Reaction { .. }
            | StoredKind::Edit { .. }
            | StoredKind::Delete { .. }
            | StoredKind::MissedCall { .. } => {}
            StoredKind::Disappearing { ttl_secs } => c.disappear_secs = *ttl_secs,
            StoredKind::Group(g) => match g {
                GroupChange::Settings(s) => c.apply_settings(s),
                GroupChange::Role { user, role } => {
                    if *role == Role::Owner {
                        for m in c.members.values_mut().filter(|m| m.role == Role::Owner) {
                            m.role = Role::Admin;
                        }
                    }
                    if let Some(m) = c.members.get_mut(user) {
                        m.role = *role;
                    }
                }
                GroupChange::JoinRequested { user } => {
                    c.join_requests.insert(user.clone());
                }
                GroupChange::JoinRejected { user } => {
                    c.join_requests.remove(user);
                }
            },
            StoredKind::Membership {
                action,
                users,
                name,
            } => match action {
                Action::Created | Action::Added | Action::Joined => {
                    if *action == Action::Created {
                        c.name = name.clone();
                    }
                    for u in users {
                        c.join_requests.remove(u);
                        // The creator of a group owns it.
                        let role = if *action == Action::Created
                            && c.kind == ConvKind::Group
                            && *u == entry.sender
                        {
                            Role::Owner
                        } else {
                            Role::Member
                        };
                        c.members.entry(u.clone()).or_insert(Member {
                            since: seq,
                            role,
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
                    let mut owner_left = false;
                    for u in users {
                        if let Some(m) = c.members.remove(u) {
                            owner_left |= m.role == Role::Owner;
                        }
                        if let Some(user) = self.users.get_mut(u) {
                            user.conversations.remove(conv);
                        }
                    }
                    // Ownership passes by the rule at once (the entry that
                    // follows says so to devices).
                    if owner_left {
                        if let Some(next) = c.successor().map(str::to_owned) {
                            if let Some(m) = c.members.get_mut(&next) {
                                m.role = Role::Owner;
                            }
                        }
                    }
                    if c.kind == ConvKind::Group && c.members.is_empty() {
                        c.closed = true;
                    }
                }
            },
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
