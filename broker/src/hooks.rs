//! Hook points and events for in-process code (the messaging layer, the push
//! bridge): decide on authentication and authorization, and learn when
//! clients connect, drop, and have messages queued while offline.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
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

/// A hook's answer that may take time (a token check against a database
/// or a cache): the connection's task awaits it without blocking a thread
/// or holding a lock.
pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An answer that is ready at once, for hooks that decide in memory.
pub fn ready<'a, T: Send + 'a>(value: T) -> HookFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

/// What a CONNECT presents for authentication.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// Client identifier (assigned by the broker if the client sent none).
    pub client_id: &'a str,
    /// Username from CONNECT.
    pub username: Option<&'a str>,
    /// Password from CONNECT (an access token, for the messaging layer).
    pub password: Option<&'a [u8]>,
    /// The client's address, for slowing down repeated failures.
    pub peer: SocketAddr,
}

/// Decisions the broker asks of its embedder. Called on connection tasks;
/// `authenticate` is asynchronous, so it may consult a database or run slow
/// hashing on a blocking thread (the configured password file does).
pub trait Hooks: Send + Sync + 'static {
    /// Decides whether a CONNECT is accepted.
    fn authenticate<'a>(&'a self, req: AuthRequest<'a>) -> HookFuture<'a, AuthDecision>;
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
        cause: DisconnectCause,
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

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The client sent DISCONNECT.
    ClientDisconnected,
    /// The connection closed or failed without DISCONNECT.
    Dropped,
    /// The client went silent past its keep-alive.
    KeepAliveTimeout,
    /// Another connection took the session over.
    TakenOver,
    /// The broker is shutting down.
    ServerShutdown,
    /// The broker closed it: a protocol violation, a limit, or an expired
    /// credential.
    Closed,
}
