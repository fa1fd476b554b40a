//! What the chat layer keeps in the broker's logs (postcard-encoded):
//!
//! - `c/<conversation>`: the conversation's entries, densely numbered.
//!   Its cursors are the per-member watermarks (`d:<user>` delivered,
//!   `r:<user>` read) and `fanout`, how far its entries are in every
//!   member's inbox.
//! - `i/<user>`: the user's inbox, one small reference per entry; each
//!   device's position in it is a cursor named after the device.
//! - `dir`: users, devices, conversations and membership changes, replayed
//!   at start-up.
//! - `timers`: pending expiries of disappearing messages.
//! - `seen`: no records; its cursors are the users' last seen times (Unix
//!   ms), one per user.

use serde::{Deserialize, Serialize};

/// The log of a conversation.
pub(crate) fn conversation_log(id: &str) -> String {
    format!("c/{id}")
}

/// The inbox log of a user.
pub(crate) fn inbox_log(user: &str) -> String {
    format!("i/{user}")
}

/// The directory log.
pub(crate) const DIRECTORY: &str = "dir";

/// The log of pending expiries of disappearing messages (one record per
/// message, erased when it fires).
pub(crate) const TIMERS: &str = "timers";

/// A pending expiry: entry `seq` of `conversation` goes at `due_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Timer {
    pub due_ms: u64,
    pub conversation: String,
    pub seq: u64,
}

/// The log whose cursors are the users' last seen times.
pub(crate) const LAST_SEEN: &str = "seen";

/// Cursor of a conversation log: how far its entries are fanned out.
pub(crate) const FANOUT: &str = "fanout";

/// One entry of a conversation's log (its time is the log record's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredEntry {
    pub sender: String,
    pub device: String,
    pub client_msg_id: String,
    pub kind: StoredKind,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StoredKind {
    Content {
        ty: String,
        body: Vec<u8>,
    },
    Membership {
        action: Action,
        users: Vec<String>,
        name: String,
    },
    /// A group's settings or a member's role changed, or someone asked to
    /// join (appended after the first two: postcard numbers variants).
    Group(GroupChange),
    /// A message, with what the server reads of it (new sends; `Content`
    /// is how older ones were stored).
    Message(StoredMessage),
    /// An emoji added to (or taken from) message `target`.
    Reaction {
        target: u64,
        emoji: String,
        remove: bool,
    },
    /// New content for message `target`.
    Edit {
        target: u64,
        message: StoredMessage,
    },
    /// Message `target` deleted, for everyone or for the sender's user.
    Delete {
        target: u64,
        for_everyone: bool,
    },
    /// Messages sent from here on disappear after `ttl_secs` (0: off).
    Disappearing {
        ttl_secs: u64,
    },
    /// A call nobody answered.
    MissedCall {
        call_id: String,
        video: bool,
    },
}

/// A message's content: `ty` and `body` opaque, the rest checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredMessage {
    pub ty: String,
    pub body: Vec<u8>,
    /// The entry it answers (0: none).
    pub reply_to: u64,
    /// Members mentioned, sorted.
    pub mentions: Vec<String>,
    pub attachment: Option<Box<StoredAttachment>>,
    /// When it disappears (Unix ms; 0: never).
    pub expires_at_ms: u64,
}

/// A file sent by reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredAttachment {
    pub id: String,
    pub mime_type: String,
    pub size: u64,
    pub sha256: Vec<u8>,
    pub thumbnail_id: String,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum Role {
    #[default]
    Member,
    Admin,
    Owner,
}

/// A change to a group other than who is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum GroupChange {
    /// The settings that are `Some` changed.
    Settings(GroupSettings),
    /// `user` now has `role`; `Owner` moves ownership to it, and the
    /// previous owner becomes an admin.
    Role { user: String, role: Role },
    /// `user` asked to join a group that requires approval.
    JoinRequested { user: String },
    /// An admin turned `user`'s request down.
    JoinRejected { user: String },
}

/// Group settings; in a change, `None` means unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupSettings {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Only admins (and the owner) post.
    pub announce_only: Option<bool>,
    /// Found by search, joined without an invite.
    pub public: Option<bool>,
    /// Joining (by invite or as a public group) waits for an admin.
    pub approval_required: Option<bool>,
    /// A member limit below the server's (0: the server's).
    pub max_members: Option<u32>,
}

/// A membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Action {
    Created,
    Added,
    Removed,
    Left,
    /// Joined by an invite link or as a public group (or approved).
    Joined,
}

/// An inbox entry: which conversation entry, and the device that sent it
/// when it is this user's own (that device is not sent its own message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InboxRef {
    pub conversation: String,
    pub seq: u64,
    pub from_device: Option<String>,
}

/// Whether a conversation is a direct one or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ConvKind {
    Direct,
    Group,
}

/// A directory record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DirRecord {
    /// A user first seen (first valid login).
    User { user: String },
    /// A device first seen.
    Device { user: String, device: String },
    /// A device revoked by its user.
    DeviceRevoked { user: String, device: String },
    /// A device's refresh token, as its SHA-256 (the token itself is
    /// never stored); replaces the one before.
    RefreshToken {
        user: String,
        device: String,
        hash: Vec<u8>,
    },
    /// A user disabled (`true`) or enabled again by an administrator.
    UserDisabled { user: String, disabled: bool },
    /// A conversation created (its members come with its first change).
    Conversation { id: String, kind: ConvKind },
    /// A membership change, written before the conversation entry `seq`
    /// that carries it, so recovery can complete a change whose entry did
    /// not reach the disk.
    Change {
        conversation: String,
        seq: u64,
        entry: StoredEntry,
    },
    /// An invite link to a group (the token is the link's secret; admins
    /// may list it again). `expires_at` in Unix seconds, 0: never;
    /// `max_uses` 0: unlimited.
    Invite {
        conversation: String,
        token: String,
        by: String,
        expires_at: u64,
        max_uses: u32,
    },
    /// An invite link was used once.
    InviteUsed { token: String },
    /// An invite link was revoked.
    InviteRevoked { token: String },
    /// `user` muted `conversation` until `until` (Unix seconds; 0: not).
    Muted {
        user: String,
        conversation: String,
        until: u64,
    },
    /// `user` turned its read receipts on or off.
    ReadReceipts { user: String, enabled: bool },
    /// `user` hid (or showed again) its last seen.
    HideLastSeen { user: String, hidden: bool },
    /// `user` blocked (or unblocked) `other`.
    Blocked {
        user: String,
        other: String,
        blocked: bool,
    },
    /// A device's refresh token revoked by an administrator (its access
    /// tokens stay valid until they expire).
    RefreshRevoked { user: String, device: String },
    /// A device's push token (replaces the one before).
    PushToken {
        user: String,
        device: String,
        target: push_bridge::Target,
        registered_ms: u64,
    },
    /// A device's push token dropped: by the device (`None`), or because
    /// the provider refused it (its reason).
    PushTokenDropped {
        user: String,
        device: String,
        reason: Option<String>,
    },
}

pub(crate) fn encode<T: Serialize>(v: &T) -> bytes::Bytes {
    // Serializing these plain structs into a Vec cannot fail.
    bytes::Bytes::from(postcard::to_stdvec(v).unwrap_or_default())
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Option<T> {
    postcard::from_bytes(b).ok()
}
