//! Per-user controls: muting a conversation, turning read receipts off,
//! blocking another user. Each is a directory record. Blocks are kept
//! outside the directory, so that showing an entry (on every read path)
//! takes no directory lock.

use std::collections::{HashMap, HashSet};

use parking_lot::RwLock;

use crate::directory::Directory;
use crate::error::ChatError;
use crate::proto::{self, response::Result as R};
use crate::records::DirRecord;
use crate::requests::Done;
use crate::Chat;

/// Who blocked whom.
#[derive(Default)]
pub(crate) struct Blocks(RwLock<HashMap<String, HashSet<String>>>);

impl Blocks {
    pub(crate) fn apply(&self, user: &str, other: &str, blocked: bool) {
        let mut b = self.0.write();
        if blocked {
            b.entry(user.to_owned())
                .or_default()
                .insert(other.to_owned());
        } else if let Some(set) = b.get_mut(user) {
            set.remove(other);
        }
    }

    /// `user` has blocked `other`.
    pub(crate) fn has(&self, user: &str, other: &str) -> bool {
        self.0.read().get(user).is_some_and(|s| s.contains(other))
    }

    /// One of the two has blocked the other.
    pub(crate) fn either(&self, a: &str, b: &str) -> bool {
        self.has(a, b) || self.has(b, a)
    }

    fn of(&self, user: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .0
            .read()
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Whether `viewer` may see `reader`'s read watermark: neither has read
/// receipts off, and neither has blocked the other.
pub(crate) fn read_visible(chat: &Chat, d: &Directory, reader: &str, viewer: &str) -> bool {
    if reader == viewer {
        return true;
    }
    let off = |u: &str| d.users.get(u).is_some_and(|x| x.read_receipts_off);
    !off(reader) && !off(viewer) && !chat.blocks.either(reader, viewer)
}

impl Chat {
    pub(crate) fn mute(&self, user: &str, m: proto::Mute) -> Result<Done, ChatError> {
        let mut d = self.dir.lock();
        Chat::member_of(&d, &m.conversation, user)?;
        let rec = DirRecord::Muted {
            user: user.to_owned(),
            conversation: m.conversation.clone(),
            until: m.until,
        };
        self.dir_append(std::slice::from_ref(&rec))?;
        d.apply(&rec);
        self.info_done(&d, &m.conversation, user, Vec::new())
    }

    pub(crate) fn set_read_receipts(&self, user: &str, enabled: bool) -> Result<Done, ChatError> {
        let mut d = self.dir.lock();
        let rec = DirRecord::ReadReceipts {
            user: user.to_owned(),
            enabled,
        };
        self.dir_append(std::slice::from_ref(&rec))?;
        d.apply(&rec);
        Ok(Done::ok())
    }

    pub(crate) fn block(&self, user: &str, b: proto::Block) -> Result<Done, ChatError> {
        if b.user == user {
            return Err(ChatError::BadRequest("a user cannot block itself".into()));
        }
        // Under the directory lock: a send checks blocks under it too.
        let d = self.dir.lock();
        if !d.users.contains_key(&b.user) {
            return Err(ChatError::UnknownUser(b.user));
        }
        let rec = DirRecord::Blocked {
            user: user.to_owned(),
            other: b.user.clone(),
            blocked: b.blocked,
        };
        self.dir_append(std::slice::from_ref(&rec))?;
        self.blocks.apply(user, &b.user, b.blocked);
        drop(d);
        Ok(Done::ok())
    }

    pub(crate) fn list_blocked(&self, user: &str) -> Done {
        let users = self
            .blocks
            .of(user)
            .into_iter()
            .map(|id| proto::UserInfo {
                id,
                ..Default::default()
            })
            .collect();
        Done::answer(R::Users(proto::Users { users }))
    }
}
