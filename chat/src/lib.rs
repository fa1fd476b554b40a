//! Courier's chat layer: an application on the MQTT core that turns it
//! into a chat backend. It reaches the core only through its public seams:
//!
//! - [`identity`]: the core's `Hooks`; devices log in with a JWT access
//!   token, which names the principal (user and device).
//! - the namespace `c/`: sends and requests are handed to this crate, which
//!   answers each PUBACK once what it acknowledges is durable;
//! - the core's named logs: conversation logs, per-user inboxes and the
//!   directory, with cursors for devices and watermarks;
//! - `Broker::deliver` with a tracker: each device is fed from its inbox
//!   cursor, which advances when the device acknowledges.
//!
//! docs/PROTOCOL.md is the protocol app developers code against; the
//! schema is `proto/courier/chat/v1/chat.proto`.

#![warn(missing_docs)]

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use courier::config::Config;
use courier::redb_store::RedbStore;
use courier::{Broker, Server};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

mod calls;
mod config;
mod controls;
mod conversations;
mod delivery;
mod directory;
mod error;
mod expiry;
mod groups;
pub mod identity;
mod inbox;
mod limits;
mod messages;
mod presence;
mod records;
mod requests;
mod retention;
pub mod token;
pub mod topics;

pub use config::{ChatConfig, KeyAlgorithm, KeyConfig, TokenConfig};
pub use error::ChatError;
pub use limits::{ActionLimit, Rate, RateLimitConfig};
pub use retention::Trimmed;
pub use token::{Claims, TokenError, Tokens};

/// The chat protocol's messages, generated from the `.proto` schema.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/courier.chat.v1.rs"));
}

/// The chat layer of one broker.
pub struct Chat {
    config: ChatConfig,
    tokens: Tokens,
    /// Weak: the broker holds the chat layer (as its hooks and namespace
    /// handler), and must be able to close its store when it is dropped.
    broker: OnceLock<Weak<Broker>>,
    dir: Mutex<directory::Directory>,
    metrics: Metrics,
    events: mpsc::UnboundedSender<delivery::Event>,
    failures: Mutex<FxHashMap<IpAddr, identity::Failures>>,
    /// Who blocked whom.
    blocks: controls::Blocks,
    /// Pending expiries of disappearing messages.
    timers: expiry::Timers,
    /// Everyone's presence, and who watches whom.
    presence: presence::Presence,
    /// The typing indicators' rate limit.
    typing: presence::TypingLimit,
    /// What was written about messages lately, committed or not.
    recent: messages::Recent,
    /// Rate limits.
    limits: limits::Limits,
    /// Calls ringing or in progress.
    calls: calls::Calls,
}

/// Counters of what the chat layer did and refused.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Logins with a valid token.
    pub logins: AtomicU64,
    /// Logins refused (bad, expired or mismatched tokens, revoked devices).
    pub logins_refused: AtomicU64,
    /// Subscriptions and publishes refused by the chat namespace's rules.
    pub acl_refused: AtomicU64,
    /// Messages stored.
    pub sends: AtomicU64,
    /// Resends answered with the original's sequence number.
    pub send_repeats: AtomicU64,
    /// Sends and requests refused.
    pub refused: AtomicU64,
    /// Sends, requests and typing refused by a rate limit.
    pub rate_limited: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Inbox references written.
    pub inbox_refs: AtomicU64,
    /// Inbox entries sent to devices.
    pub deliveries: AtomicU64,
    /// Deliveries acknowledged by devices.
    pub delivery_acks: AtomicU64,
    /// Receipt messages sent to devices.
    pub receipts: AtomicU64,
    /// Presence update messages sent to devices.
    pub presence_updates: AtomicU64,
    /// Typing indicators passed on.
    pub typing: AtomicU64,
    /// Typing indicators dropped by the rate limit.
    pub typing_dropped: AtomicU64,
}

impl Metrics {
    fn inc(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Name and value of every counter.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("logins", v(&self.logins)),
            ("logins_refused", v(&self.logins_refused)),
            ("acl_refused", v(&self.acl_refused)),
            ("sends", v(&self.sends)),
            ("send_repeats", v(&self.send_repeats)),
            ("refused", v(&self.refused)),
            ("rate_limited", v(&self.rate_limited)),
            ("requests", v(&self.requests)),
            ("inbox_refs", v(&self.inbox_refs)),
            ("deliveries", v(&self.deliveries)),
            ("delivery_acks", v(&self.delivery_acks)),
            ("receipts", v(&self.receipts)),
            ("presence_updates", v(&self.presence_updates)),
            ("typing", v(&self.typing)),
            ("typing_dropped", v(&self.typing_dropped)),
        ]
    }
}

/// Starting the chat server failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The broker could not start.
    #[error(transparent)]
    Server(#[from] courier::server::ServerError),
    /// The broker could not open its store.
    #[error(transparent)]
    Broker(#[from] courier::broker::BrokerError),
    /// A token key or the signing secret is unusable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The signing secret could not be read or created.
    #[error("signing secret {path}: {source}")]
    Secret {
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The chat state could not be read back.
    #[error("chat state: {0}")]
    Recover(#[from] ChatError),
}

/// A running broker with its chat layer.
pub struct Running {
    /// The broker and its listeners.
    pub server: Server,
    /// The chat layer.
    pub chat: Arc<Chat>,
}

/// The token keys `config` names, with the broker's own signing secret
/// (read, or created on first use).
pub fn load_tokens(config: &ChatConfig) -> Result<Tokens, StartError> {
    let secret = match &config.tokens.secret_file {
        Some(p) => Some(
            token::load_or_create_secret(p).map_err(|source| StartError::Secret {
                path: p.clone(),
                source,
            })?,
        ),
        None => None,
    };
    Ok(Tokens::new(&config.tokens, secret.as_deref())?)
}

/// Opens the store, restores the broker and the chat state, and starts
/// the listeners. With `chat.enabled` false it is the plain MQTT broker.
pub async fn start(config: Config, chat: ChatConfig) -> Result<Running, StartError> {
    config
        .validate()
        .map_err(courier::server::ServerError::from)?;
    let tokens = load_tokens(&chat)?;
    let inner = Broker::config_hooks(&config)?;
    let store = RedbStore::open_with(&config.data_dir, config.staging_limits())
        .map_err(courier::broker::BrokerError::from)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let enabled = chat.enabled;
    let me = Arc::new(Chat::new(chat, tokens, tx));
    let hooks: Arc<dyn courier::Hooks> = if enabled {
        Arc::new(identity::ChatHooks::new(me.clone(), inner))
    } else {
        inner
    };
    let broker = Broker::open_with(config, hooks, store)?;
    let _ = me.broker.set(Arc::downgrade(&broker));
    if enabled {
        me.recover()?;
        me.recover_timers()?;
        broker
            .claim_namespace(topics::PREFIX, Arc::new(requests::Handler(me.clone())))
            .map_err(courier::server::ServerError::from)?;
        delivery::spawn(me.clone(), broker.feed(), rx);
        retention::spawn(me.clone());
        expiry::spawn(me.clone());
    }
    let server = Server::serve(broker).await?;
    Ok(Running { server, chat: me })
}

impl Chat {
    /// The chat layer's state, before it has a broker.
    fn new(
        config: ChatConfig,
        tokens: Tokens,
        events: mpsc::UnboundedSender<delivery::Event>,
    ) -> Chat {
        let limits = limits::Limits::new(&config.rate_limits);
        Chat {
            config,
            tokens,
            broker: OnceLock::new(),
            dir: Mutex::default(),
            metrics: Metrics::default(),
            events,
            failures: Mutex::default(),
            blocks: controls::Blocks::default(),
            timers: expiry::Timers::default(),
            presence: presence::Presence::default(),
            typing: presence::TypingLimit::default(),
            recent: messages::Recent::default(),
            limits,
            calls: calls::Calls::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests(config: ChatConfig) -> Chat {
        let tokens = Tokens::new(&config.tokens, Some(b"test")).unwrap();
        Chat::new(config, tokens, mpsc::unbounded_channel().0)
    }

    /// The broker, unless it is gone (shut down and dropped).
    fn broker(&self) -> Result<Arc<Broker>, ChatError> {
        self.broker
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| ChatError::Unavailable("the broker is shut down".into()))
    }

    /// Writes `recs` to the directory log (the caller applies them to the
    /// directory, under its lock, once written).
    fn dir_append(&self, recs: &[records::DirRecord]) -> Result<(), ChatError> {
        let new = recs
            .iter()
            .map(|r| courier::logs::NewRecord {
                id: None,
                data: records::encode(r),
            })
            .collect();
        self.broker()?
            .logs()
            .append(records::DIRECTORY, new, None)?;
        Ok(())
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The token keys (to mint tokens for tests and tools).
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }
}
