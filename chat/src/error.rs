//! The typed errors of the chat protocol, and how each one is answered on
//! the wire (docs/PROTOCOL.md lists them).

use courier::namespace::{AckCode, Reply};

use crate::proto;

/// Why a send or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The payload does not decode, or a field is missing or invalid.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The user is not a member of the conversation.
    #[error("not a member of this conversation")]
    NotMember,
    /// No such conversation.
    #[error("unknown conversation")]
    UnknownConversation,
    /// No such user.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The content is larger than the limit.
    #[error("content of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not something this user may do.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// A limit was reached.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// One of a direct conversation's users has blocked the other.
    #[error("blocked")]
    Blocked,
    /// The message referred to is not one this user can see here.
    #[error("no such message in this conversation")]
    UnknownMessage,
    /// The invite link is unknown, revoked, expired or used up.
    #[error("invite link not valid: {0}")]
    InviteInvalid(String),
    /// Over a rate limit: retry in `retry_ms`.
    #[error("rate limit for {what}: retry in {retry_ms} ms")]
    RateLimited {
        /// The kind of action.
        what: &'static str,
        /// When one would be accepted again.
        retry_ms: u64,
    },
    /// The store failed; retrying later with the same id is safe.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl ChatError {
    /// The protocol's code for it.
    pub fn code(&self) -> proto::ErrorCode {
        use proto::ErrorCode as C;
        match self {
            ChatError::BadRequest(_) => C::BadRequest,
            ChatError::NotMember => C::NotMember,
            ChatError::UnknownConversation => C::UnknownConversation,
            ChatError::UnknownUser(_) => C::UnknownUser,
            ChatError::TooLarge { .. } => C::TooLarge,
            ChatError::NotAllowed(_) => C::NotAllowed,
            ChatError::LimitReached(_) | ChatError::RateLimited { .. } => C::LimitReached,
            ChatError::Unavailable(_) => C::Unavailable,
            ChatError::InviteInvalid(_) => C::InviteInvalid,
            ChatError::UnknownMessage => C::UnknownMessage,
            ChatError::Blocked => C::Blocked,
        }
    }

    /// The PUBACK that refuses it: reason code, reason string, and user
    /// property `e` with the code's name.
    pub fn reply(&self) -> Reply {
        let ack = match self {
            ChatError::BadRequest(_) => AckCode::PayloadFormatInvalid,
            ChatError::NotMember
            | ChatError::NotAllowed(_)
            | ChatError::InviteInvalid(_)
            | ChatError::Blocked => AckCode::NotAuthorized,
            ChatError::LimitReached(_) | ChatError::RateLimited { .. } => AckCode::QuotaExceeded,
            ChatError::Unavailable(_) => AckCode::UnspecifiedError,
            ChatError::UnknownConversation
            | ChatError::UnknownMessage
            | ChatError::UnknownUser(_)
            | ChatError::TooLarge { .. } => AckCode::ImplementationSpecificError,
        };
        let reply =
            Reply::refuse(ack, self.to_string()).with_property("e", self.code().as_str_name());
        match self {
            // When to try again, in milliseconds.
            ChatError::RateLimited { retry_ms, .. } => {
                reply.with_property("r", retry_ms.to_string())
            }
            _ => reply,
        }
    }

    /// The error as a `Response` carries it.
    pub fn to_proto(&self) -> proto::Error {
        proto::Error {
            code: self.code() as i32,
            message: self.to_string(),
        }
    }
}

impl From<courier::store::StoreError> for ChatError {
    fn from(e: courier::store::StoreError) -> Self {
        ChatError::Unavailable(e.to_string())
    }
}

impl From<courier::logs::LogError> for ChatError {
    fn from(e: courier::logs::LogError) -> Self {
        ChatError::Unavailable(e.to_string())
    }
}
