//! Hook points and events for in-process code (the messaging layer, the push
//! bridge): decide on authentication and authorization, and learn when
//! clients connect, drop, and have messages queued while offline.

use std::sync::Arc;

/// Who a connected client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Client identifier (assigned by the broker if the client sent none).
    pub client_id: Arc<str>,
    /// Username from CONNECT, if any.
    pub username: Option<Arc<str>>,
    /// Who the authenticator said the client is, if it said
    /// ([`AuthDecision::AllowAs`]). Never taken from what the client sent.
    pub principal: Option<Arc<Principal>>,
}

/// An authenticated identity: what a credential (an access token) proved.
/// It travels with the connection to every later hook and to in-process
/// handlers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user: String,
    /// The user's device, if the credential names one.
    pub device: Option<String>,
    /// When the credential stops being valid (Unix seconds). The broker
    /// closes the connection then (5.0: DISCONNECT 0x87 "credential
    /// expired"); a CONNECT with an expired one is refused.
    pub expires_at: Option<u64>,
    /// Further claims the authenticator chose to keep, as name and value.
    pub claims: Vec<(String, String)>,
}

/// Outcome of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the client in.
    Allow,
    /// Let the client in as this principal.
    AllowAs(Arc<Principal>),
    /// Unknown user or wrong password (CONNACK 0x86 / 0x04).
    BadCredentials,
    /// Not allowed to connect (CONNACK 0x87 / 0x05).
    NotAuthorized,
}

/// What a SUBSCRIBE to one filter gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeDecision {
    /// Granted: every topic the filter matches may be read.
    Allow,
    /// Refused (SUBACK 0x80 / 0x87): no topic it matches may be read.
    Deny,
    /// Granted, but some topics it matches may not be read: each message
    /// is checked with [`Hooks::authorize_read`] before it is delivered
    /// (retained messages included).
    Filter,
}

/// Decisions the broker asks of its embedder. Called on connection tasks;
/// `authenticate` runs on a blocking thread, so it may be slow.
pub trait Hooks: Send + Sync + 'static {
    /// Decides whether a CONNECT is accepted.
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> AuthDecision;
    /// True if `authenticate` may block (slow hashing, I/O): it then runs on
    /// a blocking thread. The default is the safe choice.
    fn blocking_auth(&self) -> bool {
        true
    }
    /// May `client` publish to `topic`?
    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> bool;
    /// May `client` subscribe to `filter`?
    fn authorize_subscribe(&self, client: &ClientInfo, filter: &str) -> SubscribeDecision;
    /// May `client` receive a message on `topic` through a subscription
    /// granted with [`SubscribeDecision::Filter`]?
    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> bool {
        let _ = (client, topic);
        true
    }
}

/// Something that happened, for subscribers of [`crate::Broker::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client completed CONNECT.
    Connected {
        /// The client.
        client: ClientInfo,
        /// An earlier session was resumed.
        session_present: bool,
    },
    /// A client's connection ended.
    Disconnected {
        /// The client.
        client: ClientInfo,
        /// It sent DISCONNECT (false: dropped, timed out, taken over, refused).
        graceful: bool,
        /// Why it ended.
        cause: crate::feed::DisconnectCause,
    },
    /// A message was queued for a session with no connection attached.
    QueuedOffline {
        /// Client id of the session.
        client_id: Arc<str>,
        /// Topic of the message.
        topic: String,
        /// Messages now queued for it.
        queued: usize,
    },
}
