//! The app's handle: configuration, sending, requests, events.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{self, Command};
use crate::proto::{self, request::Op};
use crate::store::Store;
use crate::{Event, SdkError, SendState};

/// An access token and when it expires (Unix seconds), if known: the SDK
/// reconnects with a fresh one shortly before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The JWT (or the device's refresh token, for a refresh connection).
    pub value: String,
    /// Its `exp`.
    pub expires_at: Option<u64>,
}

/// Gives the SDK a fresh access token (from the app's backend, or from the
/// broker with a refresh token), before each connection.
pub type TokenProvider =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Token, String>> + Send>> + Send + Sync>;

/// How to connect.
#[derive(Clone)]
pub struct ClientConfig {
    /// The broker's MQTT address: `host:port` (TCP) or `tls://host:port`.
    pub server: String,
    /// A CA (PEM) to trust for TLS besides the public roots.
    pub tls_ca: Option<PathBuf>,
    /// The user id.
    pub user: String,
    /// This device's id (unique among the user's devices).
    pub device: String,
    /// Where the local store lives.
    pub data_dir: PathBuf,
    /// Access tokens.
    pub tokens: TokenProvider,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// The first reconnect delay; doubled each failure, with jitter.
    pub backoff_min: Duration,
    /// The longest reconnect delay.
    pub backoff_max: Duration,
    /// How long a request waits for its answer.
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// A configuration with the usual timings.
    pub fn new<F, Fut>(
        server: &str,
        user: &str,
        device: &str,
        data_dir: impl Into<PathBuf>,
        tokens: F,
    ) -> ClientConfig
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Token, String>> + Send + 'static,
    {
        ClientConfig {
            server: server.to_owned(),
            tls_ca: None,
            user: user.to_owned(),
            device: device.to_owned(),
            data_dir: data_dir.into(),
            tokens: Arc::new(move || Box::pin(tokens())),
            keep_alive: Duration::from_secs(30),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// Whom a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// The direct conversation with this user (created by the first
    /// message).
    User(String),
    /// A conversation by id.
    Conversation(String),
}

/// A connected (or connecting) device.
pub struct Client {
    store: Arc<Store>,
    cmd: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    counter: AtomicU64,
    request_timeout: Duration,
}

impl Client {
    /// Opens the local store and starts connecting in the background;
    /// [`Event::Connected`] says when it is.
    pub fn connect(config: ClientConfig) -> Result<Client, SdkError> {
        let store = Arc::new(Store::open(&config.data_dir)?);
        let (tx, events) = mpsc::unbounded_channel();
        let (cmd, rx) = mpsc::unbounded_channel();
        let request_timeout = config.request_timeout;
        tokio::spawn(connection::run(config, store.clone(), tx, rx));
        Ok(Client {
            store,
            cmd,
            events,
            counter: AtomicU64::new(0),
            request_timeout,
        })
    }

    /// The next event; `None` once the client is closed.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    fn new_id(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{now:x}-{:x}", self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// Queues a send (durably) and returns its client message id.
    pub fn send(&self, to: To, kind: proto::send_message::Kind) -> Result<String, SdkError> {
        let client_msg_id = self.new_id();
        let mut m = proto::SendMessage {
            client_msg_id: client_msg_id.clone(),
            kind: Some(kind),
            ..Default::default()
        };
        match to {
            To::User(u) => m.to_user = u,
            To::Conversation(c) => m.conversation = c,
        }
        self.store.enqueue(&m)?;
        let _ = self.cmd.send(Command::Drain);
        Ok(client_msg_id)
    }

    /// Queues a text message.
    pub fn send_text(&self, to: To, text: &str) -> Result<String, SdkError> {
        self.send(
            to,
            proto::send_message::Kind::Content(proto::Content {
                r#type: "text".into(),
                body: text.as_bytes().to_vec(),
                ..Default::default()
            }),
        )
    }

    /// A message's state (`None`: unknown id).
    pub fn state(&self, client_msg_id: &str) -> Result<Option<SendState>, SdkError> {
        self.store.state(client_msg_id)
    }

    /// Queues a failed message again.
    pub fn retry(&self, client_msg_id: &str) -> Result<bool, SdkError> {
        match self.store.state(client_msg_id)? {
            Some(SendState::Failed { .. }) => {
                self.store.set_state(client_msg_id, SendState::Queued)?;
                let _ = self.cmd.send(Command::Drain);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Takes a queued or failed message out of the outbox; false if it was
    /// sent already.
    pub fn cancel(&self, client_msg_id: &str) -> Result<bool, SdkError> {
        self.store.cancel(client_msg_id)
    }

    /// Sends a request and waits for its answer (once connected).
    pub async fn request(&self, op: Op) -> Result<Option<proto::response::Result>, SdkError> {
        let (reply, rx) = oneshot::channel();
        let req = proto::Request { op: Some(op) }.encode_to_vec();
        self.cmd
            .send(Command::Request {
                payload: req,
                reply,
            })
            .map_err(|_| SdkError::Closed)?;
        let resp = tokio::time::timeout(self.request_timeout, rx)
            .await
            .map_err(|_| SdkError::Timeout(self.request_timeout))?
            .map_err(|_| SdkError::Closed)??;
        if let Some(e) = resp.error {
            let code = proto::ErrorCode::try_from(e.code)
                .map(|c| c.as_str_name().to_owned())
                .unwrap_or_else(|_| e.code.to_string());
            return Err(SdkError::Server {
                code,
                message: e.message,
            });
        }
        Ok(resp.result)
    }

    /// Creates a group with these members; its id.
    pub async fn create_group(&self, name: &str, members: &[&str]) -> Result<String, SdkError> {
        let r = self
            .request(Op::CreateGroup(proto::CreateGroup {
                name: name.into(),
                members: members.iter().map(|m| m.to_string()).collect(),
            }))
            .await?;
        match r {
            Some(proto::response::Result::Conversation(c)) => c
                .conversation
                .map(|c| c.id)
                .ok_or_else(|| SdkError::Invalid("no conversation in the answer".into())),
            other => Err(SdkError::Invalid(format!("unexpected answer {other:?}"))),
        }
    }

    /// The user's conversations, most recent first (the snapshot).
    pub async fn conversations(
        &self,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<proto::Conversation>, SdkError> {
        match self
            .request(Op::ListConversations(proto::ListConversations {
                offset,
                limit,
            }))
            .await?
        {
            Some(proto::response::Result::Conversations(c)) => Ok(c.conversations),
            other => Err(SdkError::Invalid(format!("unexpected answer {other:?}"))),
        }
    }

    /// A page of a conversation's history from the server, oldest first:
    /// entries after `after` (or, with `after` 0, before `before`; 0: the
    /// newest).
    pub async fn history(
        &self,
        conversation: &str,
        before: u64,
        after: u64,
        limit: u32,
    ) -> Result<Vec<proto::Entry>, SdkError> {
        match self
            .request(Op::History(proto::History {
                conversation: conversation.into(),
                before,
                after,
                limit,
            }))
            .await?
        {
            Some(proto::response::Result::Entries(e)) => Ok(e.entries),
            other => Err(SdkError::Invalid(format!("unexpected answer {other:?}"))),
        }
    }

    /// What the local store holds of a conversation (offline), oldest
    /// first: up to `limit` entries before `before` (0: the newest).
    pub fn local_history(
        &self,
        conversation: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<proto::Entry>, SdkError> {
        self.store.history(conversation, before, limit)
    }

    /// Marks a conversation read up to `seq`.
    pub async fn mark_read(&self, conversation: &str, seq: u64) -> Result<(), SdkError> {
        self.request(Op::MarkRead(proto::MarkRead {
            conversation: conversation.into(),
            seq,
        }))
        .await
        .map(|_| ())
    }

    /// Registers this device's push token (docs/PUSH.md).
    pub async fn register_push(&self, r: proto::RegisterPush) -> Result<(), SdkError> {
        self.request(Op::RegisterPush(r)).await.map(|_| ())
    }

    /// Watches these users' presence: their state now, then
    /// [`Event::Presence`] as it changes.
    pub async fn watch_presence(&self, users: &[&str]) -> Result<Vec<proto::Presence>, SdkError> {
        match self
            .request(Op::WatchPresence(proto::WatchPresence {
                users: users.iter().map(|u| u.to_string()).collect(),
            }))
            .await?
        {
            Some(proto::response::Result::Presences(p)) => Ok(p.presences),
            other => Err(SdkError::Invalid(format!("unexpected answer {other:?}"))),
        }
    }

    /// Says the user types (or stopped) in a conversation; ephemeral, sent
    /// only while connected.
    pub fn typing(&self, conversation: &str, typing: bool) -> Result<(), SdkError> {
        let payload = proto::Typing {
            conversation: conversation.into(),
            typing,
            user: String::new(),
        }
        .encode_to_vec();
        self.cmd
            .send(Command::Typing { payload })
            .map_err(|_| SdkError::Closed)
    }

    /// Sends a call signal (ring, answer, ICE, hang up; docs/PROTOCOL.md,
    /// "Calls"); ephemeral, sent only while connected.
    pub fn call_signal(&self, signal: proto::CallSignal) -> Result<(), SdkError> {
        self.cmd
            .send(Command::Call {
                payload: signal.encode_to_vec(),
            })
            .map_err(|_| SdkError::Closed)
    }

    /// Closes the connection (DISCONNECT) and stops reconnecting. What is
    /// queued stays in the outbox for the next start.
    pub async fn close(self) {
        let (done, rx) = oneshot::channel();
        if self.cmd.send(Command::Close { done }).is_ok() {
            let _ = rx.await;
        }
    }
}
