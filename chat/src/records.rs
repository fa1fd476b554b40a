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
}

/// A membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Action {
    Created,
    Added,
    Removed,
    Left,
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
}

pub(crate) fn encode<T: Serialize>(v: &T) -> bytes::Bytes {
    // Serializing these plain structs into a Vec cannot fail.
    bytes::Bytes::from(postcard::to_stdvec(v).unwrap_or_default())
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Option<T> {
    postcard::from_bytes(b).ok()
}
