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

mod admin;
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
mod push;
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
    /// The push bridge, if `[chat.push]` names an app.
    push: OnceLock<push_bridge::bridge::Bridge>,
    /// Each device's acknowledged inbox position, as last saved (for the
    /// push bridge, before the commit makes it readable).
    push_acks: Mutex<FxHashMap<String, u64>>,
}

macro_rules! chat_counters {
    ($($(#[doc = $doc:literal])+ $name:ident),* $(,)?) => {
        /// Counters of what the chat layer did and refused.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $doc])+ pub $name: AtomicU64,)*
            /// Refusals by error code (the protocol's `ErrorCode` value).
            refused_by: [AtomicU64; 16],
            /// Rate-limit hits by action.
            limited_by: [AtomicU64; limits::ACTIONS],
        }

        impl Metrics {
            /// Name and value of every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }

            /// Name, description and value of every counter.
            fn described(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((
                    stringify!($name),
                    concat!($($doc),+).trim(),
                    self.$name.load(Ordering::Relaxed),
                ),)*]
            }
        }
    };
}

chat_counters! {
    /// Logins with a valid token.
    logins,
    /// Logins refused (bad, expired or mismatched tokens, revoked devices).
    logins_refused,
    /// Subscriptions and publishes refused by the chat namespace's rules.
    acl_refused,
    /// Messages stored.
    sends,
    /// Resends answered with the original's sequence number.
    send_repeats,
    /// Sends and requests refused (any reason).
    refused,
    /// Sends, requests and typing refused by a rate limit.
    rate_limited,
    /// Requests answered.
    requests,
    /// Inbox references written.
    inbox_refs,
    /// Inbox entries sent to devices.
    deliveries,
    /// Deliveries acknowledged by devices.
    delivery_acks,
    /// Receipt messages sent to devices.
    receipts,
    /// Presence update messages sent to devices.
    presence_updates,
    /// Typing indicators passed on.
    typing,
    /// Typing indicators dropped by the rate limit.
    typing_dropped,
    /// Push tokens dropped because the provider refused them.
    push_tokens_removed,
}

impl Metrics {
    fn inc(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a refusal, by its reason.
    fn refusal(&self, e: &ChatError) {
        self.inc(&self.refused, 1);
        if let Some(c) = self.refused_by.get(e.code() as usize) {
            self.inc(c, 1);
        }
    }

    /// Counts a rate-limit hit, by action.
    fn limit_hit(&self, a: limits::Action) {
        self.inc(&self.rate_limited, 1);
        self.inc(&self.limited_by[a as usize], 1);
    }

    /// Refusals by reason and rate-limit hits by action, labelled.
    fn encode_labelled(
        &self,
        enc: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::MetricType;
        let mut f = enc.encode_descriptor(
            "courier_chat_refusals",
            "Sends and requests refused, by the protocol's error code",
            None,
            MetricType::Counter,
        )?;
        for (code, c) in self.refused_by.iter().enumerate() {
            let Ok(code) = proto::ErrorCode::try_from(code as i32) else {
                continue;
            };
            let labels = [("reason", code.as_str_name().to_ascii_lowercase())];
            ConstCounter::new(c.load(Ordering::Relaxed)).encode(f.encode_family(&labels)?)?;
        }
        let mut f = enc.encode_descriptor(
            "courier_chat_rate_limit_hits",
            "Actions refused by a rate limit, by action",
            None,
            MetricType::Counter,
        )?;
        for a in limits::Action::ALL {
            let labels = [("action", a.name())];
            let v = self.limited_by[a as usize].load(Ordering::Relaxed);
            ConstCounter::new(v).encode(f.encode_family(&labels)?)?;
        }
        Ok(())
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
    /// The push bridge could not start (a key, a setting).
    #[error(transparent)]
    Push(#[from] push_bridge::PushError),
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
    let secret =
        match &config.tokens.secret_file {
            Some(p) => Some(courier::auth::load_or_create_secret(p).map_err(|source| {
                StartError::Secret {
                    path: p.clone(),
                    source,
                }
            })?),
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
        me.presence.restore(
            broker
                .logs()
                .cursors(records::LAST_SEEN)
                .map_err(ChatError::from)?,
        );
        broker
            .claim_namespace(topics::PREFIX, Arc::new(requests::Handler(me.clone())))
            .map_err(courier::server::ServerError::from)?;
        // What recovery completed must be committed before the push
        // bridge reads the inboxes.
        broker
            .durable()
            .await
            .map_err(|e| ChatError::Unavailable(e.to_string()))?;
        me.start_push()?;
        delivery::spawn(me.clone(), broker.feed(), rx);
        retention::spawn(me.clone());
        expiry::spawn(me.clone());
    }
    let mut admin = courier::admin::Extension::new();
    if enabled {
        admin = admin
            .routes(admin::routes(me.clone()))
            .collector(Box::new(admin::ChatMetrics(Arc::downgrade(&me))));
    }
    let server = Server::serve_with(broker, admin).await?;
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
            push: OnceLock::new(),
            push_acks: Mutex::default(),
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
