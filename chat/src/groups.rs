//! Group management: roles and their rights, settings, ownership, invite
//! links, join requests and public groups. Every change is an entry in
//! the group's log (through [`Chat::record_change`]), so devices see who
//! did what, in order with the messages. Invite links are directory
//! records: they are secrets, not something every member is shown.
//!
//! Rights (docs/PROTOCOL.md has the table): members post (unless the group
//! is announce-only) and leave; admins also add and remove members,
//! change settings, promote members, and manage invites and join
//! requests; the owner also removes and demotes admins and hands
//! ownership on.

use crate::directory::{Conversation, Directory, Member};
use crate::error::ChatError;
use crate::proto::{self, response::Result as R};
use crate::records::{Action, ConvKind, DirRecord, GroupChange, GroupSettings, Role, StoredKind};
use crate::requests::Done;
use crate::Chat;

/// Longest group name and description, in bytes.
pub(crate) const MAX_NAME: usize = 128;
const MAX_DESCRIPTION: usize = 1024;
/// Most public groups one search page returns.
const MAX_SEARCH_PAGE: usize = 200;

/// `user`'s membership of group `conv`, which must be open.
pub(crate) fn member_of_group<'a>(
    d: &'a Directory,
    conv: &str,
    user: &str,
) -> Result<(&'a Conversation, Member), ChatError> {
    let (c, m) = Chat::member_of(d, conv, user)?;
    if c.kind == ConvKind::Direct {
        return Err(ChatError::NotAllowed(
            "a direct conversation's members are fixed".into(),
        ));
    }
    Ok((c, m))
}

fn admin(m: &Member, what: &str) -> Result<(), ChatError> {
    if m.role >= Role::Admin {
        Ok(())
    } else {
        Err(ChatError::NotAllowed(format!("only admins may {what}")))
    }
}

fn role_of(r: i32) -> Result<Role, ChatError> {
    match proto::Role::try_from(r) {
        Ok(proto::Role::Member) => Ok(Role::Member),
        Ok(proto::Role::Admin) => Ok(Role::Admin),
        Ok(proto::Role::Owner) => Ok(Role::Owner),
        Err(_) => Err(ChatError::BadRequest(format!("no role {r}"))),
    }
}

pub(crate) fn role_to_proto(r: Role) -> proto::Role {
    match r {
        Role::Member => proto::Role::Member,
        Role::Admin => proto::Role::Admin,
        Role::Owner => proto::Role::Owner,
    }
}

pub(crate) fn settings_to_proto(s: &GroupSettings) -> proto::GroupSettings {
    proto::GroupSettings {
        name: s.name.clone(),
        description: s.description.clone(),
        announce_only: s.announce_only,
        public: s.public,
        approval_required: s.approval_required,
        max_members: s.max_members,
    }
}

impl Chat {
    /// The most members `c` may have: its own limit if lower than the
    /// server's.
    pub(crate) fn member_limit(&self, c: &Conversation) -> usize {
        let server = self.config.max_group_members;
        match c.max_members as usize {
            0 => server,
            own => own.min(server),
        }
    }

    fn room_for(&self, c: &Conversation, more: usize) -> Result<(), ChatError> {
        let max = self.member_limit(c);
        if c.members.len() + more > max {
            return Err(ChatError::LimitReached(format!(
                "this group has at most {max} members"
            )));
        }
        Ok(())
    }

    /// Admins add a user.
    pub(crate) fn add_member(
        &self,
        user: &str,
        device: &str,
        a: proto::AddMember,
    ) -> Result<Done, ChatError> {
        let mut d = self.dir.lock();
        let (c, m) = member_of_group(&d, &a.conversation, user)?;
        if c.members.contains_key(&a.user) {
            return self.info_done(&d, &a.conversation, user, Vec::new());
        }
        admin(&m, "add members")?;
        self.room_for(c, 1)?;
        if !d.users.contains_key(&a.user) {
            return Err(ChatError::UnknownUser(a.user));
        }
        self.change(
            &mut d,
            &a.conversation,
            (user, device),
            Action::Added,
            vec![a.user],
            String::new(),
        )?;
        let woken = members(&d, &a.conversation);
        self.info_done(&d, &a.conversation, user, woken)
    }

    /// `user` removes `who` (itself: leaves). Admins remove members; the
    /// owner removes anyone. An owner who leaves hands the group to its
    /// successor, and the entry after the departure says so.
    pub(crate) fn remove_member(
        &self,
        user: &str,
        device: &str,
        conv: &str,
        who: &str,
    ) -> Result<Done, ChatError> {
        let mut d = self.dir.lock();
        let (c, m) = member_of_group(&d, conv, user)?;
        let Some(target) = c.members.get(who).copied() else {
            return Err(ChatError::NotMember);
        };
        if who != user {
            admin(&m, "remove members")?;
            if target.role >= Role::Admin && m.role != Role::Owner {
                return Err(ChatError::NotAllowed(
                    "only the owner may remove an admin".into(),
                ));
            }
        }
        let woken: Vec<String> = c.members.keys().cloned().collect();
        let action = if who == user {
            Action::Left
        } else {
            Action::Removed
        };
        self.change(
            &mut d,
            conv,
            (user, device),
            action,
            vec![who.to_owned()],
            String::new(),
        )?;
        if target.role == Role::Owner {
            // Applied already by the rule; the entry tells the devices.
            if let Some(next) = d.conversations[conv].owner().map(str::to_owned) {
                let kind = StoredKind::Group(GroupChange::Role {
                    user: next,
                    role: Role::Owner,
                });
                self.record_change(&mut d, conv, (user, device), kind)?;
            }
        }
        if who == user {
            let mut done = Done::ok();
            done.woken = woken;
            Ok(done)
        } else {
            self.info_done(&d, conv, user, woken)
        }
    }

    /// Admins change the settings that are set.
    pub(crate) fn update_group(
        &self,
        user: &str,
        device: &str,
        u: proto::UpdateGroup,
    ) -> Result<Done, ChatError> {
        let s = u.settings.unwrap_or_default();
        let settings = GroupSettings {
            name: s.name,
            description: s.description,
            announce_only: s.announce_only,
            public: s.public,
            approval_required: s.approval_required,
            max_members: s.max_members,
        };
        if settings == GroupSettings::default() {
            return Err(ChatError::BadRequest("no setting to change".into()));
        }
        if settings.name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
            return Err(ChatError::BadRequest(format!(
                "a name has at most {MAX_NAME} bytes"
            )));
        }
        if settings
            .description
            .as_ref()
            .is_some_and(|n| n.len() > MAX_DESCRIPTION)
        {
            return Err(ChatError::BadRequest(format!(
                "a description has at most {MAX_DESCRIPTION} bytes"
            )));
        }
        let mut d = self.dir.lock();
        let (c, m) = member_of_group(&d, &u.conversation, user)?;
        admin(&m, "change the group's settings")?;
        if let Some(max) = settings.max_members {
            let server = self.config.max_group_members;
            if max as usize > server {
                return Err(ChatError::LimitReached(format!(
                    "the server allows at most {server} members"
                )));
            }
            if max > 0 && (max as usize) < c.members.len() {
                return Err(ChatError::BadRequest(format!(
                    "the group has {} members already",
                    c.members.len()
                )));
            }
        }
        let kind = StoredKind::Group(GroupChange::Settings(settings));
        self.record_change(&mut d, &u.conversation, (user, device), kind)?;
        let woken = members(&d, &u.conversation);
        self.info_done(&d, &u.conversation, user, woken)
    }

    /// Gives `s.user` the role `s.role`, if `user` may.
    pub(crate) fn set_role(
        &self,
        user: &str,
        device: &str,
        s: proto::SetRole,
    ) -> Result<Done, ChatError> {
        let role = role_of(s.role)?;
        let mut d = self.dir.lock();
        let (c, m) = member_of_group(&d, &s.conversation, user)?;
        let Some(target) = c.members.get(&s.user).copied() else {
            return Err(ChatError::NotMember);
        };
        if target.role == role {
            return self.info_done(&d, &s.conversation, user, Vec::new());
        }
        // A group always has its owner: the owner's role changes only by
        // handing ownership on.
        if target.role == Role::Owner {
            return Err(ChatError::NotAllowed(
                "the owner hands ownership on instead".into(),
            ));
        }
        match role {
            Role::Owner if m.role != Role::Owner => {
                return Err(ChatError::NotAllowed(
                    "only the owner may hand ownership on".into(),
                ))
            }
            Role::Admin => admin(&m, "make admins")?,
            // Demoting an admin: the owner, or the admin itself.
            Role::Member if m.role != Role::Owner && s.user != user => {
                return Err(ChatError::NotAllowed(
                    "only the owner may demote an admin".into(),
                ))
            }
            _ => {}
        }
        let kind = StoredKind::Group(GroupChange::Role { user: s.user, role });
        self.record_change(&mut d, &s.conversation, (user, device), kind)?;
        let woken = members(&d, &s.conversation);
        self.info_done(&d, &s.conversation, user, woken)
    }

    /// Admins: a new invite link.
    pub(crate) fn create_invite(
        &self,
        user: &str,
        c: proto::CreateInvite,
        now: u64,
    ) -> Result<Done, ChatError> {
        let mut raw = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| ChatError::Unavailable("no randomness".into()))?;
        let token = format!("inv_{}", crate::directory::hex(&raw));
        let mut d = self.dir.lock();
        let (_, m) = member_of_group(&d, &c.conversation, user)?;
        admin(&m, "create invite links")?;
        let rec = DirRecord::Invite {
            conversation: c.conversation.clone(),
            token: token.clone(),
            by: user.to_owned(),
            expires_at: if c.ttl_secs > 0 {
                now.saturating_add(c.ttl_secs)
            } else {
                0
            },
            max_uses: c.max_uses,
        };
        self.dir_append(std::slice::from_ref(&rec))?;
        d.apply(&rec);
        let invite = invite_to_proto(&token, &d.invites[&token]);
        Ok(Done::answer(R::Invite(invite)))
    }

    /// Admins: the group's invite links.
    pub(crate) fn list_invites(&self, user: &str, conv: &str) -> Result<Done, ChatError> {
        let d = self.dir.lock();
        let (_, m) = member_of_group(&d, conv, user)?;
        admin(&m, "list invite links")?;
        let mut invites: Vec<proto::Invite> = d
            .invites
            .iter()
            .filter(|(_, i)| i.conversation == conv)
            .map(|(t, i)| invite_to_proto(t, i))
            .collect();
        invites.sort_by(|a, b| a.token.cmp(&b.token));
        Ok(Done::answer(R::Invites(proto::Invites { invites })))
    }

    /// Admins: revokes a link.
    pub(crate) fn revoke_invite(
        &self,
        user: &str,
        r: proto::RevokeInvite,
    ) -> Result<Done, ChatError> {
        let mut d = self.dir.lock();
        let (_, m) = member_of_group(&d, &r.conversation, user)?;
        admin(&m, "revoke invite links")?;
        if d.invites.get(&r.token).map(|i| i.conversation.as_str()) != Some(&r.conversation) {
            return Err(ChatError::InviteInvalid("no such invite link".into()));
        }
        let rec = DirRecord::InviteRevoked { token: r.token };
        self.dir_append(std::slice::from_ref(&rec))?;
        d.apply(&rec);
        Ok(Done::ok())
    }

    /// Joins by an invite link, or a public group; or asks to, if the
    /// group requires approval.
    pub(crate) fn join_group(
        &self,
        user: &str,
        device: &str,
        j: proto::JoinGroup,
        now: u64,
    ) -> Result<Done, ChatError> {
        let mut d = self.dir.lock();
        let (conv, invite) = if !j.invite.is_empty() {
            let Some(i) = d.invites.get(&j.invite) else {
                return Err(ChatError::InviteInvalid("no such invite link".into()));
            };
            if !i.usable(now) {
                return Err(ChatError::InviteInvalid(
                    "the invite link is revoked, expired or used up".into(),
                ));
            }
            (i.conversation.clone(), Some(j.invite))
        } else if !j.conversation.is_empty() {
            (j.conversation, None)
        } else {
            return Err(ChatError::BadRequest(
                "neither invite nor conversation".into(),
            ));
        };
        let Some(c) = d.conversations.get(&conv).filter(|c| !c.closed) else {
            return Err(ChatError::UnknownConversation);
        };
        if c.kind != ConvKind::Group {
            return Err(ChatError::NotAllowed("not a group".into()));
        }
        if c.members.contains_key(user) {
            return self.info_done(&d, &conv, user, Vec::new());
        }
        if invite.is_none() && !c.public {
            return Err(ChatError::NotAllowed(
                "not a public group: join with an invite link".into(),
            ));
        }
        if c.approval_required && c.join_requests.contains(user) {
            return Ok(Done::answer(R::JoinPending(proto::JoinPending {
                conversation: conv,
            })));
        }
        self.room_for(c, 1)?;
        let approval = c.approval_required;
        if let Some(token) = invite {
            let rec = DirRecord::InviteUsed { token };
            self.dir_append(std::slice::from_ref(&rec))?;
            d.apply(&rec);
        }
        if approval {
            let kind = StoredKind::Group(GroupChange::JoinRequested {
                user: user.to_owned(),
            });
            self.record_change(&mut d, &conv, (user, device), kind)?;
            let mut done = Done::answer(R::JoinPending(proto::JoinPending {
                conversation: conv.clone(),
            }));
            done.woken = members(&d, &conv);
            return Ok(done);
        }
        self.change(
            &mut d,
            &conv,
            (user, device),
            Action::Joined,
            vec![user.to_owned()],
            String::new(),
        )?;
        let woken = members(&d, &conv);
        self.info_done(&d, &conv, user, woken)
    }

    /// Admins: who waits to join.
    pub(crate) fn list_join_requests(&self, user: &str, conv: &str) -> Result<Done, ChatError> {
        let d = self.dir.lock();
        let (c, m) = member_of_group(&d, conv, user)?;
        admin(&m, "see join requests")?;
        let users = c.join_requests.iter().cloned().collect();
        Ok(Done::answer(R::JoinRequests(proto::JoinRequests { users })))
    }

    /// Admins: lets a user in, or turns it down (it gets that entry).
    pub(crate) fn answer_join_request(
        &self,
        user: &str,
        device: &str,
        a: proto::AnswerJoinRequest,
    ) -> Result<Done, ChatError> {
        let mut d = self.dir.lock();
        let (c, m) = member_of_group(&d, &a.conversation, user)?;
        admin(&m, "answer join requests")?;
        if !c.join_requests.contains(&a.user) {
            return Err(ChatError::BadRequest(format!(
                "{:?} has not asked to join",
                a.user
            )));
        }
        let mut woken = Vec::new();
        if a.approve {
            self.room_for(c, 1)?;
            self.change(
                &mut d,
                &a.conversation,
                (user, device),
                Action::Joined,
                vec![a.user],
                String::new(),
            )?;
        } else {
            // The one turned down gets the entry too.
            woken.push(a.user.clone());
            let kind = StoredKind::Group(GroupChange::JoinRejected { user: a.user });
            self.record_change(&mut d, &a.conversation, (user, device), kind)?;
        }
        woken.extend(members(&d, &a.conversation));
        self.info_done(&d, &a.conversation, user, woken)
    }

    /// Public groups whose name starts with `prefix`, case-insensitive,
    /// ordered by name.
    pub(crate) fn search_groups(&self, s: proto::SearchGroups) -> Result<Done, ChatError> {
        let prefix = s.prefix.to_lowercase();
        let limit = match s.limit as usize {
            0 => 20,
            n => n.min(MAX_SEARCH_PAGE),
        };
        let d = self.dir.lock();
        let mut found: Vec<(String, &String, &Conversation)> = d
            .conversations
            .iter()
            .filter(|(_, c)| c.kind == ConvKind::Group && c.public && !c.closed)
            .map(|(id, c)| (c.name.to_lowercase(), id, c))
            .filter(|(name, _, _)| name.starts_with(&prefix))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
        let offset = s.offset as usize;
        let groups: Vec<proto::PublicGroup> = found
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(_, id, c)| proto::PublicGroup {
                id: (*id).clone(),
                name: c.name.clone(),
                description: c.description.clone(),
                members: c.members.len() as u32,
                approval_required: c.approval_required,
            })
            .collect();
        let more = found.len() > offset + groups.len();
        Ok(Done::answer(R::Groups(proto::GroupsFound { groups, more })))
    }
}

/// A group change as an entry shows it.
pub(crate) fn change_to_proto(g: GroupChange) -> proto::entry::Kind {
    use proto::group_change::Change;
    let change = match g {
        GroupChange::Settings(s) => Change::Settings(settings_to_proto(&s)),
        GroupChange::Role { user, role } => Change::Role(proto::RoleChange {
            user,
            role: role_to_proto(role) as i32,
        }),
        GroupChange::JoinRequested { user } => Change::JoinRequested(user),
        GroupChange::JoinRejected { user } => Change::JoinRejected(user),
    };
    proto::entry::Kind::Group(proto::GroupChange {
        change: Some(change),
    })
}

fn members(d: &Directory, conv: &str) -> Vec<String> {
    d.conversations
        .get(conv)
        .map(|c| c.members.keys().cloned().collect())
        .unwrap_or_default()
}

fn invite_to_proto(token: &str, i: &crate::directory::Invite) -> proto::Invite {
    proto::Invite {
        token: token.to_owned(),
        conversation: i.conversation.clone(),
        created_by: i.by.clone(),
        expires_at: i.expires_at,
        max_uses: i.max_uses,
        uses: i.uses,
        revoked: i.revoked,
    }
}
