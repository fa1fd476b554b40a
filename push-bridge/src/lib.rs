//! Courier's push bridge: wakes sleeping phones through APNs and FCM.
//!
//! - [`apns`] and [`fcm`]: thin clients for Apple's HTTP/2 provider API
//!   (ES256 provider tokens, reused for 50 minutes) and Firebase's HTTP v1
//!   API (OAuth2 tokens from a service account's RS256 assertion), each
//!   with a configurable base URL and trust roots, each send answered with
//!   a typed [`Outcome`].
//! - [`schedule`]: when to push, as a state machine with the time passed
//!   in: due after a delay unless acknowledged, one push per device and
//!   conversation per coalescing window, retries with backoff and jitter
//!   that honour Retry-After, cancellation.
//! - [`bridge`]: the async shell that drives the schedule and the clients
//!   for an application (the chat layer) through [`bridge::Source`].
//! - `fakes` (feature `fakes`): local APNs and FCM servers that enforce
//!   what the real services require (docs/PUSH.md), for tests and for
//!   trying the bridge without Apple or Google.
//!
//! Nothing readable goes into a push: no message text, no sender name.

#![warn(missing_docs)]

pub mod apns;
pub mod bridge;
pub mod config;
pub mod fcm;
mod https;
pub mod jwt;
pub mod schedule;

#[cfg(feature = "fakes")]
pub mod fakes;

pub use config::PushConfig;

/// Setting up a client failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A key could not be read or used.
    #[error("key: {0}")]
    Key(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    File {
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is unusable.
    #[error("push configuration: {0}")]
    Config(String),
}

/// Where a push goes: a device's token with a provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Target {
    /// Apple: the app's bundle id (the `apns-topic`), sandbox or
    /// production, and the device token (hex).
    Apns {
        /// The app's bundle id.
        topic: String,
        /// The sandbox (development builds) rather than production.
        sandbox: bool,
        /// The device token.
        token: String,
    },
    /// Firebase: the project and the registration token.
    Fcm {
        /// The Firebase project id.
        project: String,
        /// The registration token.
        token: String,
    },
}

impl Target {
    /// The device token.
    pub fn token(&self) -> &str {
        match self {
            Target::Apns { token, .. } | Target::Fcm { token, .. } => token,
        }
    }
}

/// What a push says. Ids only: the app fetches the content itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// New messages in a conversation: an alert with generic text (iOS,
    /// `mutable-content` so a notification service extension fetches and
    /// shows them), or a high-priority data message (Android). Repeats
    /// and updates carry the same collapse id.
    Message {
        /// The conversation's id (also the collapse id / key).
        conversation: String,
        /// The newest entry the push is for.
        seq: u64,
        /// The user's unread count.
        badge: u32,
        /// It mentions the user.
        mention: bool,
    },
    /// An incoming call: a VoIP push (iOS) or a high-priority data message
    /// (Android), at once.
    Call {
        /// The call's id.
        call_id: String,
        /// The conversation it rings in.
        conversation: String,
        /// Video, not only voice.
        video: bool,
    },
    /// A call that was ringing ended (answered elsewhere, missed, hung up).
    CallEnded {
        /// The call's id.
        call_id: String,
    },
}

/// How one send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted it.
    Delivered,
    /// The token is no good any more (delete it). For APNs 410, the time
    /// (Unix ms) since when Apple knows it is unregistered.
    InvalidToken {
        /// The provider's reason.
        reason: String,
        /// APNs 410's timestamp, if given.
        since_ms: Option<u64>,
    },
    /// Too many pushes: try again after `retry_after_ms`.
    RateLimited {
        /// When, if the provider said.
        retry_after_ms: Option<u64>,
    },
    /// A failure worth another try (a 5xx, a dropped connection).
    Retryable {
        /// Why.
        reason: String,
        /// When, if the provider said.
        retry_after_ms: Option<u64>,
    },
    /// A failure another try will not mend (bad credentials, a payload
    /// the provider refuses).
    Fatal {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::InvalidToken { .. } => "invalid_token",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Fatal { .. } => "fatal",
        }
    }
}

/// A `Retry-After` header (seconds; HTTP dates are not used by either
/// provider) in milliseconds.
pub(crate) fn retry_after(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.saturating_mul(1000))
}
