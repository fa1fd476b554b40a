//! The broker's shared state and the operations connections perform on it.
//! This file holds the state, opening, shutdown, events and the claimed
//! namespaces; `session_handle` the shared session, `restore` start-up,
//! `lifecycle` attach / detach / expiry / wills, and `routing` publishes,
//! direct deliveries, subscriptions and a delivery's end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, oneshot, watch, Notify};

use crate::acl::Acl;
use crate::auth::{AuthError, PasswordFile};
use crate::commit::{GroupCommit, SyncFailed};
use crate::config::{Config, Durability};
use crate::config_hooks::ConfigHooks;
use crate::feed::Feed;
use crate::hooks::{ClientInfo, Event, Hooks, SubscribeDecision};
use crate::keepalive::{Watchable, Watchdog};
use crate::logs::Logs;
use crate::message::{unix_now, Message};
use crate::metrics::Metrics;
use crate::namespace::{Namespace, NamespaceError, Namespaces, Reach};
use crate::redb_store::RedbStore;
use crate::router::{Matched, Router, SubOptions};
use crate::session::{Delivery, Session, SessionLimits};
use crate::store::{QueueRecord, SessionRecord, Store, StoreError, Write};
use crate::timers::{self, TimerKey, Timers};
use crate::topic::{self, TopicLimits};
use crate::tracker::{DropReason, Outcome, Tracker};

mod lifecycle;
mod restore;
mod routing;
mod session_handle;

pub use lifecycle::Attached;
pub use routing::{Delivered, Routed};
use session_handle::PendingWill;
pub(crate) use session_handle::{Kick, EXPIRED_CREDENTIAL, EXPIRED_REVOKED};
pub use session_handle::{SessionHandle, SessionRef};

/// A failure starting or running the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The password file could not be used.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A sync failed, so acknowledgements cannot be given.
    #[error(transparent)]
    Sync(#[from] SyncFailed),
    /// The flusher thread could not be started.
    #[error("starting the commit thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A session, for operators ([`Broker::sessions_info`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    /// Its client id.
    pub client_id: String,
    /// The username of the connection that last attached.
    pub username: Option<String>,
    /// A connection is attached.
    pub online: bool,
    /// Its session expiry interval (seconds; 0: ends with the connection).
    pub expiry_secs: u32,
    /// Number of subscriptions.
    pub subscriptions: usize,
    /// Deliveries waiting (in memory or on disk; at most, for a queue on
    /// disk since a restart).
    pub queued: usize,
    /// Deliveries sent and not yet acknowledged.
    pub inflight: usize,
}

/// The broker.
pub struct Broker {
    pub(crate) config: Config,
    pub(crate) store: Arc<dyn Store>,
    commit: Arc<GroupCommit>,
    router: RwLock<Router<SessionRef>>,
    sessions: Mutex<HashMap<Arc<str>, SessionRef>>,
    retained: RwLock<HashMap<String, Arc<Message>>>,
    pub(crate) hooks: Arc<dyn Hooks>,
    events: broadcast::Sender<Event>,
    /// Counters.
    pub metrics: Metrics,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Set once at shutdown; connections check it when woken.
    closing: AtomicBool,
    /// Keep-alive enforcement for all connections.
    pub(crate) watchdog: Watchdog<SessionHandle>,
    /// Named logs for in-process code.
    logs: Logs,
    /// Lossless lifecycle feeds of in-process listeners.
    feeds: Mutex<Vec<std::sync::Weak<Feed>>>,
    has_feeds: AtomicBool,
    /// Session expiry and will delay for all sessions (on the watchdog's
    /// clock).
    timers: Timers<SessionHandle>,
    /// Sessions that went offline, with their generation and the commits
    /// completed then: their queues leave memory once two more commits
    /// have stored everything journaled for them ([`Broker::sweep_unloads`]).
    unloads: Mutex<std::collections::VecDeque<(std::sync::Weak<SessionHandle>, u64, u64)>>,
    pub(crate) connections: AtomicUsize,
    /// Topic prefixes owned by in-process handlers.
    namespaces: RwLock<Namespaces>,
    has_namespaces: AtomicBool,
}

impl Broker {
    /// Opens the store in `config.data_dir`, restores sessions and retained
    /// messages, and uses hooks built from the configuration.
    pub fn open(config: Config) -> Result<Arc<Broker>, BrokerError> {
        let hooks = Self::config_hooks(&config)?;
        Self::open_with_hooks(config, hooks)
    }

    /// The hooks the configuration describes: password file and ACL.
    pub fn config_hooks(config: &Config) -> Result<Arc<dyn Hooks>, BrokerError> {
        let passwords = match &config.auth.password_file {
            Some(p) => Some(PasswordFile::load(p)?),
            None => None,
        };
        Ok(Arc::new(
            ConfigHooks::new(
                config.auth.allow_anonymous,
                passwords,
                Acl::new(&config.acl),
            )
            .with_sys_users(config.sys.users.clone()),
        ))
    }

    /// Like [`Broker::open`] with the embedder's hooks.
    pub fn open_with_hooks(
        config: Config,
        hooks: Arc<dyn Hooks>,
    ) -> Result<Arc<Broker>, BrokerError> {
        let store: Arc<dyn Store> = RedbStore::open(&config.data_dir)?;
        Self::open_with(config, hooks, store)
    }

    /// Opens a broker on the embedder's hooks and store, and restores what
    /// the store holds.
    pub fn open_with(
        config: Config,
        hooks: Arc<dyn Hooks>,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Broker>, BrokerError> {
        let delay = Duration::from_micros(config.commit_delay_us);
        let retry_for = Duration::from_secs(config.commit_retry_secs);
        let commit = GroupCommit::start_with(store.clone(), delay, retry_for)?;
        let logs = Logs::new(store.clone(), commit.clone());
        let (events, _) = broadcast::channel(4096);
        let (shutdown, _) = watch::channel(false);
        let broker = Arc::new(Broker {
            config,
            store,
            commit,
            router: RwLock::default(),
            sessions: Mutex::default(),
            retained: RwLock::default(),
            hooks,
            events,
            metrics: Metrics::default(),
            shutdown,
            closing: AtomicBool::new(false),
            watchdog: Watchdog::default(),
            logs,
            feeds: Mutex::default(),
            has_feeds: AtomicBool::new(false),
            timers: Timers::default(),
            unloads: Mutex::default(),
            connections: AtomicUsize::new(0),
            namespaces: RwLock::default(),
            has_namespaces: AtomicBool::new(false),
        });
        broker.restore()?;
        let b = Arc::downgrade(&broker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(b) = b.upgrade() else { return };
                b.watchdog.tick();
                b.fire_timers(b.watchdog.now_ms());
                b.sweep_unloads();
            }
        });
        if broker.config.sys.interval_secs > 0 {
            crate::sys::spawn(Arc::downgrade(&broker));
        }
        // After the restore: a shred waits for every open read, and the
        // restore's reads nest.
        if broker.config.shred_interval_secs > 0 {
            let every = Duration::from_secs(broker.config.shred_interval_secs);
            crate::shred::spawn(Arc::downgrade(&broker), every);
        }
        if broker.config.durability == Durability::Periodic {
            let b = Arc::downgrade(&broker);
            let every = Duration::from_millis(broker.config.flush_interval_ms);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let Some(b) = b.upgrade() else { return };
                    let _ = b.commit.durable().await;
                }
            });
        }
        Ok(broker)
    }

    fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_messages: self.config.limits.max_queued_messages,
            max_bytes: self.config.limits.max_queued_bytes,
        }
    }

    /// Topic limits from the configuration.
    pub fn topic_limits(&self) -> TopicLimits {
        TopicLimits {
            max_len: self.config.limits.max_topic_length,
            max_levels: self.config.limits.max_topic_levels,
        }
    }

    /// Hands the topics at and below `prefix` to `handler`: clients'
    /// publishes there go to it instead of being routed, and it decides
    /// subscriptions there (see [`Namespace`]). Claim before clients
    /// connect ([`ServerBuilder::namespace`](crate::server::ServerBuilder::namespace)
    /// does): what was routed or subscribed before is not revisited.
    pub fn claim_namespace(
        &self,
        prefix: &str,
        handler: Arc<dyn Namespace>,
    ) -> Result<(), NamespaceError> {
        self.namespaces.write().claim(prefix, handler)?;
        self.has_namespaces.store(true, Ordering::Release);
        Ok(())
    }

    /// The handler that owns `topic`, if a namespace does.
    pub(crate) fn namespace_of(&self, topic: &str) -> Option<Arc<dyn Namespace>> {
        if !self.has_namespaces.load(Ordering::Acquire) {
            return None;
        }
        self.namespaces.read().owner(topic).cloned()
    }

    /// May `client` subscribe to `filter`? A namespace decides the filters
    /// inside it; a broad filter that reaches into one is at most granted
    /// filtered, so the namespace decides each message it would get there.
    pub(crate) fn authorize_subscribe(
        &self,
        client: &ClientInfo,
        filter: &str,
    ) -> SubscribeDecision {
        let reach = if self.has_namespaces.load(Ordering::Acquire) {
            self.namespaces.read().reach(filter)
        } else {
            Reach::Outside
        };
        match reach {
            Reach::Within(ns) => ns.authorize_subscribe(client, filter),
            Reach::Outside => self.hooks.authorize_subscribe(client, filter),
            Reach::Across => match self.hooks.authorize_subscribe(client, filter) {
                SubscribeDecision::Deny => SubscribeDecision::Deny,
                _ => SubscribeDecision::Filter,
            },
        }
    }

    /// Subscribes to broker events. Slow receivers miss events (lagged)
    /// rather than slow the broker down; [`Broker::feed`] loses nothing.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// A feed of every client's latest lifecycle state, for a listener that
    /// must not miss a change however slow it is (it keeps one entry per
    /// changed client, not one per event). Dropping it unregisters it.
    pub fn feed(&self) -> Arc<Feed> {
        let f = Arc::new(Feed::default());
        let mut feeds = self.feeds.lock();
        feeds.retain(|w| w.strong_count() > 0);
        feeds.push(Arc::downgrade(&f));
        self.has_feeds.store(true, Ordering::Release);
        f
    }

    /// Closes the connection attached to `client_id`'s session, if any
    /// (5.0: DISCONNECT 0x87 "access revoked"), as for an expired
    /// credential: for a revoked device or a disabled user. Returns whether
    /// a connection was attached.
    pub fn disconnect(&self, client_id: &str) -> bool {
        let Some(h) = self.sessions.lock().get(client_id).cloned() else {
            return false;
        };
        let generation = {
            let s = h.state.lock();
            if !s.online {
                return false;
            }
            s.generation
        };
        h.expire(generation, EXPIRED_REVOKED);
        h.notify.notify_one();
        true
    }

    /// True while a connection is attached to `client_id`'s session.
    pub fn is_connected(&self, client_id: &str) -> bool {
        let h = self.sessions.lock().get(client_id).cloned();
        h.is_some_and(|h| h.state.lock().online)
    }

    pub(crate) fn emit(&self, e: Event) {
        if self.has_feeds.load(Ordering::Acquire) {
            for f in self.feeds.lock().iter().filter_map(|w| w.upgrade()) {
                match &e {
                    Event::Connected { client, .. } => f.update(client, |u| {
                        u.client = client.clone();
                        u.online = true;
                        u.cause = None;
                        u.queued_offline = 0;
                    }),
                    Event::Disconnected { client, cause, .. } => f.update(client, |u| {
                        u.online = false;
                        u.cause = Some(*cause);
                    }),
                    Event::QueuedOffline {
                        client_id, queued, ..
                    } => {
                        let client = ClientInfo {
                            client_id: client_id.clone(),
                            username: None,
                            principal: None,
                        };
                        f.update(&client, |u| u.queued_offline = *queued);
                    }
                }
            }
        }
        let _ = self.events.send(e);
    }

    /// Waits until everything written so far is durable.
    pub async fn durable(&self) -> Result<(), SyncFailed> {
        self.commit.durable().await
    }

    /// True when acknowledgements must wait for a sync.
    pub(crate) fn sync_acks(&self) -> bool {
        self.config.durability == Durability::Fsync
    }

    /// Number of fsyncs performed so far.
    pub fn syncs(&self) -> u64 {
        self.commit.syncs()
    }

    /// Store writes applied, and cancelled because the delivery was
    /// acknowledged before its commit.
    pub fn write_counts(&self) -> (u64, u64) {
        self.commit.write_counts()
    }

    /// Named, ordered logs on the broker's store (conversation histories,
    /// inboxes), for in-process code.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// Session expiries and delayed wills pending (at most one of each per
    /// session).
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// Number of sessions (online and offline).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Every session as an operator sees it, by client id.
    pub fn sessions_info(&self) -> Vec<SessionInfo> {
        let handles: Vec<SessionRef> = self.sessions.lock().values().cloned().collect();
        let mut v: Vec<SessionInfo> = handles
            .iter()
            .map(|h| {
                let s = h.state.lock();
                SessionInfo {
                    client_id: h.client_id.to_string(),
                    username: s.username.as_deref().map(str::to_owned),
                    online: s.online,
                    expiry_secs: s.expiry_secs,
                    subscriptions: s.subscriptions.len(),
                    queued: s.queued() + if s.unloaded { s.unloaded_len } else { 0 },
                    inflight: s.inflight_len(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// The store's commit latencies (seconds), for `/metrics`.
    pub fn commit_latency(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.commit.latency().clone()
    }

    /// Asks every connection to close and stops accepting; returns once the
    /// store is flushed.
    pub async fn shutdown(&self) -> Result<(), SyncFailed> {
        self.closing.store(true, Ordering::Release);
        let _ = self.shutdown.send(true);
        // Connections wait on their session's notification rather than on a
        // shutdown future of their own (less memory per idle connection);
        // a stored permit means none can miss it.
        for h in self.sessions.lock().values() {
            h.notify.notify_one();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.connections.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = self.commit.durable().await;
        let (applied, cancelled) = self.commit.write_counts();
        let commit_ms = self.commit.commit_ms();
        let syncs = self.commit.syncs();
        tracing::info!(
            syncs,
            applied,
            cancelled,
            commit_ms,
            "store writes since start"
        );
        self.commit.close().await;
        r
    }

    /// True once [`Broker::shutdown`] has begun.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// A receiver that turns true when the broker shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn store_error(&self, e: &StoreError) {
        Metrics::inc(&self.metrics.store_errors);
        tracing::error!(error = %e, "store write failed");
    }

    /// Counts a new connection against `max_connections`; false if full.
    pub(crate) fn try_admit(&self) -> bool {
        let max = self.config.limits.max_connections;
        let mut cur = self.connections.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return false;
            }
            match self.connections.compare_exchange(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    Metrics::inc(&self.metrics.connections_current);
                    return true;
                }
                Err(c) => cur = c,
            }
        }
    }

    /// Releases a connection slot.
    pub(crate) fn release_slot(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        self.metrics
            .connections_current
            .fetch_sub(1, Ordering::Relaxed);
    }
}
