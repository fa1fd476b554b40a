//! The broker's shared state and the operations connections perform on it:
//! attaching sessions, routing publishes, subscribing, and ending sessions.

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
use crate::hooks::{ClientInfo, Event, Hooks};
use crate::keepalive::Watchdog;
use crate::logs::Logs;
use crate::message::{unix_now, Message};
use crate::metrics::Metrics;
use crate::redb_store::RedbStore;
use crate::router::{Matched, Router, SubOptions};
use crate::session::{Delivery, Session, SessionLimits};
use crate::store::{QueueRecord, SessionRecord, Store, StoreError, Write};
use crate::timers::{self, TimerKey, Timers};
use crate::topic::{self, TopicLimits};

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

/// Asks an attached connection to leave; it answers on the enclosed sender
/// once it has detached.
pub(crate) type Kick = oneshot::Sender<()>;

/// A session shared between the registry, the router and its connection.
pub struct SessionHandle {
    /// Client id.
    pub client_id: Arc<str>,
    /// The state machine.
    pub state: Mutex<Session>,
    /// Wakes the attached connection when deliveries are queued.
    pub notify: Notify,
    /// Wakes publishers throttled by this session's backlog.
    pub drained: Notify,
    /// Some publisher may be waiting on `drained`.
    pub throttling: AtomicBool,
    /// When the attached connection last heard from its client
    /// ([`Watchdog`](crate::keepalive::Watchdog) clock).
    pub(crate) seen_ms: AtomicU64,
    /// The attachment generation whose keep-alive ran out.
    pub(crate) expired_generation: AtomicU64,
    /// Why `expired_generation` ended: [`EXPIRED_KEEPALIVE`] or
    /// [`EXPIRED_CREDENTIAL`] (written before it).
    pub(crate) expired_cause: AtomicU8,
    /// A takeover waiting for the attached connection to leave; signalled
    /// through `notify`, so a connection needs no channel of its own.
    kick: Mutex<Option<Kick>>,
    kicking: AtomicBool,
    will: Mutex<Option<Box<PendingWill>>>,
}

/// The attached connection went silent past its keep-alive.
pub(crate) const EXPIRED_KEEPALIVE: u8 = 0;
/// The attached connection's credential expired.
pub(crate) const EXPIRED_CREDENTIAL: u8 = 1;

impl SessionHandle {
    /// Ends the connection of `generation` for `cause`; it sees the flag
    /// when woken.
    pub(crate) fn expire(&self, generation: u64, cause: u8) {
        self.expired_cause.store(cause, Ordering::Release);
        self.expired_generation.store(generation, Ordering::Release);
    }
}

/// Shared reference to a session.
pub type SessionRef = Arc<SessionHandle>;

struct PendingWill {
    generation: u64,
    client: ClientInfo,
    msg: Message,
    timer: TimerKey,
}

/// A newly attached session, as returned by [`Broker::attach`].
pub struct Attached {
    /// The session.
    pub session: SessionRef,
    /// An earlier session was resumed.
    pub session_present: bool,
    /// This attachment's generation.
    pub generation: u64,
}

/// Result of routing one publish.
#[derive(Default)]
pub struct Routed {
    /// Sessions the message was delivered or queued to.
    pub matched: usize,
    /// Something was written that must be durable before acknowledging.
    pub wrote: bool,
    /// Online sessions whose backlog reached `throttle_backlog`.
    pub congested: Vec<SessionRef>,
}

impl SessionHandle {
    /// A handle for `session`, not attached.
    pub(crate) fn new(session: Session) -> SessionRef {
        Arc::new(SessionHandle {
            client_id: session.client_id.clone(),
            state: Mutex::new(session),
            notify: Notify::new(),
            drained: Notify::new(),
            throttling: AtomicBool::new(false),
            seen_ms: AtomicU64::new(0),
            expired_generation: AtomicU64::new(0),
            expired_cause: AtomicU8::new(EXPIRED_KEEPALIVE),
            kick: Mutex::new(None),
            kicking: AtomicBool::new(false),
            will: Mutex::new(None),
        })
    }

    /// A pending takeover request, if any: the attached connection must
    /// leave and then answer on it.
    pub(crate) fn take_kick(&self) -> Option<Kick> {
        if !self.kicking.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.kick.lock().take()
    }

    /// Called by the session's connection after sending: wakes throttled
    /// publishers once the backlog is at most `low`.
    pub(crate) fn maybe_drained(&self, queued: usize, low: usize) {
        if queued <= low && self.throttling.swap(false, Ordering::AcqRel) {
            self.drained.notify_waiters();
        }
    }

    /// True while this session is online with more than `low` unsent.
    pub(crate) fn backlogged(&self, low: usize) -> bool {
        let s = self.state.lock();
        s.online && s.queued() > low
    }
}

/// Outcome of queueing one delivery.
enum Queued {
    Yes,
    /// Queued, and the (online) session's backlog is at the throttle limit.
    Congested,
    Dropped,
}

/// The broker.
pub struct Broker {
    pub(crate) config: Config,
    store: Arc<dyn Store>,
    commit: Arc<GroupCommit>,
    router: RwLock<Router<SessionRef>>,
    sessions: Mutex<HashMap<Arc<str>, SessionRef>>,
    retained: RwLock<HashMap<String, Arc<Message>>>,
    refs: Mutex<HashMap<u64, u32>>,
    pub(crate) hooks: Arc<dyn Hooks>,
    events: broadcast::Sender<Event>,
    /// Counters.
    pub metrics: Metrics,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Set once at shutdown; connections check it when woken.
    closing: AtomicBool,
    /// Keep-alive enforcement for all connections.
    pub(crate) watchdog: Watchdog,
    /// Named logs for in-process code.
    logs: Logs,
    /// Lossless lifecycle feeds of in-process listeners.
    feeds: Mutex<Vec<std::sync::Weak<Feed>>>,
    has_feeds: AtomicBool,
    /// Session expiry and will delay for all sessions (on the watchdog's
    /// clock).
    timers: Timers,
    pub(crate) connections: AtomicUsize,
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
        Ok(Arc::new(ConfigHooks::new(
            config.auth.allow_anonymous,
            passwords,
            Acl::new(&config.acl),
        )))
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
        let commit = GroupCommit::start(store.clone(), delay)?;
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
            refs: Mutex::default(),
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
            connections: AtomicUsize::new(0),
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
            }
        });
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

    /// Loads retained messages and persistent sessions with their queues;
    /// deletes stored messages no queue refers to any more.
    fn restore(self: &Arc<Self>) -> Result<(), BrokerError> {
        {
            let mut retained = self.retained.write();
            for m in self.store.load_retained()? {
                retained.insert(m.topic.clone(), Arc::new(m));
            }
        }
        let now = unix_now();
        let mut refs: HashMap<u64, u32> = HashMap::new();
        let mut bodies: HashMap<u64, Arc<Message>> = HashMap::new();
        let limits = self.session_limits();
        let records = self.store.load_sessions()?;
        let count = records.len();
        let mut cleanup = Vec::new();
        for rec in records {
            let cid: Arc<str> = rec.client_id.as_str().into();
            let mut s = Session::new(cid.clone(), rec.log, rec.expiry_secs, limits);
            s.recorded = true;
            s.username = rec.username.as_deref().map(Arc::from);
            s.subscriptions = rec.subscriptions.iter().cloned().collect();
            let marks = self.store.marks(rec.log)?;
            let sent = marks.sent;
            s.resume_after(marks.sent.max(marks.floor));
            for (seq, mut q) in self.store.entries(rec.log)? {
                let inline = q.body.take();
                let msg = match (inline, bodies.get(&q.msg_id)) {
                    (Some(body), _) => Arc::new(body),
                    (None, Some(m)) => m.clone(),
                    (None, None) => match self.store.get_message(q.msg_id)? {
                        Some(m) => {
                            let m = Arc::new(m);
                            bodies.insert(q.msg_id, m.clone());
                            m
                        }
                        None => {
                            tracing::warn!(client_id = %cid, seq, "queue entry without message; dropped");
                            cleanup.push(Write::RemoveEntry(rec.log, seq));
                            continue;
                        }
                    },
                };
                if q.msg_id != 0 {
                    *refs.entry(q.msg_id).or_default() += 1;
                }
                let d = Delivery {
                    seq,
                    msg_id: q.msg_id,
                    stored: true,
                    msg,
                    qos: q.qos,
                    retain: q.retain,
                    sub_ids: q.sub_ids,
                };
                let released = q.released;
                s.restore(d, seq <= sent || released, released);
            }
            let handle = SessionHandle::new(s);
            {
                let mut router = self.router.write();
                for (raw, opts) in &rec.subscriptions {
                    if let Ok(p) = topic::parse_filter(raw, self.topic_limits()) {
                        router.insert(&cid, p.group, p.filter, handle.clone(), *opts);
                    }
                }
            }
            self.sessions.lock().insert(cid, handle.clone());
            // A record without a disconnect time was live at a crash.
            let since = rec.disconnected_at.unwrap_or(now);
            self.schedule_expiry(&handle, 0, rec.expiry_secs, now.saturating_sub(since));
        }
        for id in self.store.message_ids()? {
            if !refs.contains_key(&id) {
                cleanup.push(Write::DeleteMessage(id));
            }
        }
        let queued: u32 = refs.values().sum();
        *self.refs.lock() = refs;
        self.store.commit(&mut cleanup.into_iter())?;
        tracing::info!(
            sessions = count,
            queued,
            retained = self.retained.read().len(),
            "store restored"
        );
        Ok(())
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

    fn session_record(&self, s: &Session, disconnected_at: Option<u64>) -> SessionRecord {
        let mut subscriptions: Vec<(String, SubOptions)> = s
            .subscriptions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        SessionRecord {
            client_id: s.client_id.to_string(),
            username: s.username.as_deref().map(str::to_owned),
            log: s.log,
            expiry_secs: s.expiry_secs,
            disconnected_at,
            subscriptions,
        }
    }

    /// Journals a persistent session's record.
    pub(crate) fn save_session(&self, s: &Session, disconnected_at: Option<u64>) {
        if !s.persistent() {
            return;
        }
        self.commit
            .put_session(self.session_record(s, disconnected_at));
    }

    fn store_error(&self, e: &StoreError) {
        Metrics::inc(&self.metrics.store_errors);
        tracing::error!(error = %e, "store write failed");
    }

    /// Attaches a connection to the session of `client_id`, taking it over
    /// from another connection if needed. `clean_start` discards any earlier
    /// session.
    pub async fn attach(
        self: &Arc<Self>,
        client: &ClientInfo,
        clean_start: bool,
        expiry_secs: u32,
    ) -> Result<Attached, BrokerError> {
        let client_id = &client.client_id;
        // Take over: ask the attached connection to leave and wait for it.
        let existing = self.sessions.lock().get(&**client_id).cloned();
        if let Some(h) = existing.as_ref().filter(|h| h.state.lock().online) {
            let (tx, rx) = oneshot::channel();
            *h.kick.lock() = Some(tx);
            h.kicking.store(true, Ordering::Release);
            h.notify.notify_one();
            // Answered (or dropped) once the old connection has detached.
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
            // Not left for this connection to find after a timeout.
            h.kicking.store(false, Ordering::Release);
            h.kick.lock().take();
        }
        let mut registry = self.sessions.lock();
        let existing = registry.get(&**client_id).cloned();
        let (handle, present) = match existing {
            Some(h) if !clean_start => (h, true),
            other => {
                if let Some(old) = other {
                    drop(registry);
                    // The old session ends here: a delayed will it had goes now.
                    self.destroy(&old, true);
                    registry = self.sessions.lock();
                }
                let log = self.store.next_id();
                // Shared with the connection's ClientInfo: one copy of the id.
                let cid = client_id.clone();
                let h = SessionHandle::new(Session::new(
                    cid.clone(),
                    log,
                    expiry_secs,
                    self.session_limits(),
                ));
                registry.insert(cid, h.clone());
                (h, false)
            }
        };
        drop(registry);
        // Reconnecting cancels a pending (delayed) will and the expiry.
        if let Some(w) = handle.will.lock().take() {
            self.timers.cancel(w.timer);
        }
        let generation = {
            let mut s = handle.state.lock();
            if let Some(k) = s.expiry_timer.take() {
                self.timers.cancel(k);
            }
            s.online = true;
            s.generation += 1;
            s.username = client.username.clone();
            s.principal = client.principal.clone();
            let was_persistent = s.persistent();
            s.expiry_secs = expiry_secs;
            if s.persistent() {
                self.save_session(&s, None);
                s.recorded = true;
            } else if was_persistent {
                // Resumed with expiry 0: it ends with this connection, and
                // its queue leaves the disk now.
                self.commit.delete_session(&s.client_id, s.log);
                s.recorded = false;
                for id in s.unstore() {
                    self.unref(id);
                }
            }
            s.generation
        };
        Ok(Attached {
            session: handle,
            session_present: present,
            generation,
        })
    }

    /// Detaches a connection from its session. Ends the session if its
    /// expiry is 0, otherwise starts its expiry timer.
    pub(crate) fn detach(self: &Arc<Self>, handle: &SessionRef, generation: u64) {
        let (expiry, current) = {
            let mut s = handle.state.lock();
            if s.generation != generation {
                return;
            }
            s.online = false;
            s.drop_qos0();
            (s.expiry_secs, s.generation)
        };
        handle.throttling.store(false, Ordering::Release);
        handle.drained.notify_waiters();
        // A takeover waiting for this connection may go ahead.
        handle.kicking.store(false, Ordering::Release);
        handle.kick.lock().take();
        if expiry == 0 {
            self.destroy(handle, true);
        } else {
            self.save_session(&handle.state.lock(), Some(unix_now()));
            self.schedule_expiry(handle, current, expiry, 0);
        }
    }

    fn schedule_expiry(
        self: &Arc<Self>,
        handle: &SessionRef,
        generation: u64,
        expiry: u32,
        elapsed: u64,
    ) {
        if expiry == u32::MAX {
            return;
        }
        let wait_ms = (expiry as u64).saturating_sub(elapsed).saturating_mul(1000);
        let deadline = self.watchdog.now_ms().saturating_add(wait_ms);
        let mut s = handle.state.lock();
        let old = s.expiry_timer.take();
        s.expiry_timer = Some(self.timers.schedule(
            deadline,
            timers::Kind::Expiry,
            Arc::downgrade(handle),
            generation,
            old,
        ));
    }

    /// Closes the connection of `generation` on `handle` once its
    /// credential expires at `expires_at` (Unix seconds).
    pub(crate) fn expire_credential(
        self: &Arc<Self>,
        handle: &SessionRef,
        generation: u64,
        expires_at: u64,
    ) {
        let wait_ms = expires_at.saturating_sub(unix_now()).saturating_mul(1000);
        let deadline = self.watchdog.now_ms().saturating_add(wait_ms);
        self.timers.schedule(
            deadline,
            timers::Kind::Credential,
            Arc::downgrade(handle),
            generation,
            None,
        );
    }

    /// Runs the session expiries and delayed wills due at `now_ms` (the
    /// watchdog's clock), in deadline order.
    pub(crate) fn fire_timers(self: &Arc<Self>, now_ms: u64) {
        for due in self.timers.due(now_ms) {
            let Some(h) = due.session.upgrade() else {
                continue;
            };
            match due.kind {
                timers::Kind::Expiry => {
                    let expired = {
                        let mut s = h.state.lock();
                        let live = !s.online && !s.ended && s.generation == due.generation;
                        if live {
                            s.expiry_timer = None;
                        }
                        live
                    };
                    // Only the session the registry holds: an older one of
                    // the same client ended when it was replaced.
                    let current = self
                        .sessions
                        .lock()
                        .get(&h.client_id)
                        .is_some_and(|r| Arc::ptr_eq(r, &h));
                    if expired && current {
                        tracing::debug!(client_id = %h.client_id, "session expired");
                        Metrics::inc(&self.metrics.sessions_expired);
                        self.destroy(&h, true);
                    }
                }
                timers::Kind::Credential => {
                    let online = {
                        let s = h.state.lock();
                        s.online && s.generation == due.generation
                    };
                    if online {
                        h.expire(due.generation, EXPIRED_CREDENTIAL);
                        h.notify.notify_one();
                    }
                }
                timers::Kind::Will => {
                    let w = {
                        let mut slot = h.will.lock();
                        match slot.as_ref() {
                            Some(w) if w.generation == due.generation => slot.take(),
                            _ => None,
                        }
                    };
                    if let Some(w) = w {
                        self.publish_will(&w.client, w.msg);
                    }
                }
            }
        }
    }

    /// Ends a session: unsubscribes it, releases its queued messages,
    /// deletes it from the store, and sends a pending will.
    pub(crate) fn destroy(self: &Arc<Self>, handle: &SessionRef, send_will: bool) {
        {
            let mut reg = self.sessions.lock();
            if reg
                .get(&handle.client_id)
                .is_some_and(|h| Arc::ptr_eq(h, handle))
            {
                reg.remove(&handle.client_id);
            }
        }
        let (subs, deliveries, log, recorded) = {
            let mut s = handle.state.lock();
            if s.ended {
                return;
            }
            s.ended = true;
            if let Some(k) = s.expiry_timer.take() {
                self.timers.cancel(k);
            }
            let subs: Vec<String> = s.subscriptions.drain().map(|(k, _)| k).collect();
            // Not `persistent()`: a DISCONNECT may have set the expiry to 0
            // after the record was written.
            let recorded = std::mem::take(&mut s.recorded);
            (subs, s.drain(), s.log, recorded)
        };
        {
            let mut router = self.router.write();
            for raw in &subs {
                if let Ok(p) = topic::parse_filter(raw, self.topic_limits()) {
                    router.remove(&handle.client_id, p.group, p.filter);
                }
            }
        }
        // Only deliveries still on disk hold a reference: a session resumed
        // with expiry 0 released the others when its log left the disk.
        let mut stored = false;
        for d in deliveries.iter().filter(|d| d.stored) {
            stored = true;
            self.unref(d.msg_id);
        }
        // The log is dropped whole, so entries need no separate removal.
        if recorded || stored {
            self.commit.delete_session(&handle.client_id, log);
        }
        let will = handle.will.lock().take();
        if let Some(w) = will {
            self.timers.cancel(w.timer);
            if send_will {
                self.publish_will(&w.client, w.msg);
            }
        }
    }

    /// Sets the will to send after `delay` seconds unless the session is
    /// resumed first, or at once if the session ends sooner.
    pub(crate) fn schedule_will(
        self: &Arc<Self>,
        handle: &SessionRef,
        generation: u64,
        client: ClientInfo,
        msg: Message,
        delay: u32,
    ) {
        if delay == 0 {
            self.publish_will(&client, msg);
            return;
        }
        let deadline = self.watchdog.now_ms().saturating_add(delay as u64 * 1000);
        let mut slot = handle.will.lock();
        let old = slot.take().map(|w| w.timer);
        let timer = self.timers.schedule(
            deadline,
            timers::Kind::Will,
            Arc::downgrade(handle),
            generation,
            old,
        );
        *slot = Some(Box::new(PendingWill {
            generation,
            client,
            msg,
            timer,
        }));
    }

    fn publish_will(self: &Arc<Self>, client: &ClientInfo, msg: Message) {
        if !self.hooks.authorize_publish(client, &msg.topic) {
            Metrics::inc(&self.metrics.acl_denied);
            tracing::warn!(client_id = %client.client_id, topic = %msg.topic, "will denied by ACL");
            return;
        }
        tracing::debug!(client_id = %client.client_id, topic = %msg.topic, "publishing will");
        if let Err(e) = self.publish(Some(&client.client_id), msg) {
            self.store_error(&e);
        }
    }

    /// Routes a message to every matching session and updates the retained
    /// store. Writes to the store as needed; the caller makes them durable
    /// (see [`Routed::wrote`]) before acknowledging.
    pub fn publish(&self, origin: Option<&str>, msg: Message) -> Result<Routed, StoreError> {
        let mut routed = Routed::default();
        if msg.retain {
            if msg.payload.is_empty() {
                self.retained.write().remove(&msg.topic);
                self.commit.delete_retained(&msg.topic);
            } else {
                let m = Arc::new(msg.clone());
                self.commit.put_retained(m.clone());
                self.retained.write().insert(msg.topic.clone(), m);
            }
            routed.wrote = true;
        }
        let mut matched: Vec<Matched<SessionRef>> = Vec::new();
        self.router
            .read()
            .matches(&msg.topic, |h| h.state.lock().online, &mut matched);
        if matched.is_empty() {
            return Ok(routed);
        }
        // One delivery per session: highest QoS, all subscription ids.
        matched.sort_by(|a, b| a.client_id.cmp(&b.client_id));

        let msg = Arc::new(msg);
        // A body queued for one persistent session only is stored inside
        // its queue entry (1:1 chat, an offline device): fewer writes.
        let mut msg_id = 0u64;
        let inline = msg.qos > 0 && {
            let mut persistent = 0;
            let mut last: Option<&str> = None;
            for m in &matched {
                if last != Some(&*m.client_id)
                    && m.opts.qos > 0
                    && m.session.state.lock().persistent()
                {
                    persistent += 1;
                    if persistent > 1 {
                        break; // shared body; no need to look further
                    }
                }
                last = Some(&m.client_id);
            }
            persistent == 1
        };
        let mut i = 0;
        while i < matched.len() {
            let mut j = i + 1;
            while j < matched.len() && matched[j].client_id == matched[i].client_id {
                j += 1;
            }
            let group = &matched[i..j];
            i = j;
            let own = origin.is_some_and(|o| o == &*group[0].client_id);
            let mut qos = None;
            let mut rap = false;
            let mut sub_ids = Vec::new();
            for m in group {
                if own && m.opts.no_local {
                    continue;
                }
                if m.opts.filtered && !self.may_read(&m.session, &msg.topic) {
                    Metrics::inc(&self.metrics.acl_filtered);
                    continue;
                }
                qos = Some(qos.unwrap_or(0).max(m.opts.qos));
                rap |= m.opts.retain_as_published;
                sub_ids.extend(m.opts.id);
            }
            let Some(sub_qos) = qos else { continue };
            let qos = sub_qos.min(msg.qos);
            let handle = &group[0].session;
            let mut stored = false;
            let queued = self.enqueue(
                handle,
                &msg,
                &mut msg_id,
                inline,
                qos,
                msg.retain && rap,
                sub_ids,
                &mut stored,
            )?;
            routed.wrote |= stored;
            match queued {
                Queued::Dropped => {}
                Queued::Yes => routed.matched += 1,
                Queued::Congested => {
                    routed.matched += 1;
                    routed.congested.push(handle.clone());
                }
            }
        }
        Ok(routed)
    }

    /// Queues one delivery for a session; `wrote` says if it was journaled.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        handle: &SessionRef,
        msg: &Arc<Message>,
        msg_id: &mut u64,
        inline: bool,
        qos: u8,
        retain: bool,
        sub_ids: Vec<u32>,
        wrote: &mut bool,
    ) -> Result<Queued, StoreError> {
        let mut s = handle.state.lock();
        if !s.online && qos == 0 {
            Metrics::inc(&self.metrics.dropped_offline_qos0);
            return Ok(Queued::Dropped);
        }
        if let Err(full) = s.has_room(msg.cost()) {
            Metrics::inc(&self.metrics.dropped_queue_full);
            tracing::warn!(client_id = %s.client_id, topic = %msg.topic, reason = %full, "delivery dropped");
            return Ok(Queued::Dropped);
        }
        let seq = s.take_seq();
        let stored = s.persistent() && qos > 0;
        *wrote = stored;
        let mut entry_msg_id = 0;
        if stored {
            let body = if inline {
                Some((**msg).clone())
            } else {
                if *msg_id == 0 {
                    *msg_id = self.store.next_id();
                    self.commit.put_message(*msg_id, msg.clone());
                }
                *self.refs.lock().entry(*msg_id).or_default() += 1;
                entry_msg_id = *msg_id;
                None
            };
            let rec = QueueRecord {
                msg_id: entry_msg_id,
                qos,
                retain,
                sub_ids: sub_ids.clone(),
                released: false,
                body,
            };
            self.commit.add_entry(s.log, seq, rec);
        }
        s.push(Delivery {
            seq,
            msg_id: entry_msg_id,
            stored,
            msg: msg.clone(),
            qos,
            retain,
            sub_ids,
        });
        let online = s.online;
        let queued = s.queued();
        drop(s);
        if online {
            handle.notify.notify_one();
            let limit = self.config.limits.throttle_backlog;
            if limit > 0 && queued >= limit {
                handle.throttling.store(true, Ordering::Release);
                return Ok(Queued::Congested);
            }
        } else {
            self.emit(Event::QueuedOffline {
                client_id: handle.client_id.clone(),
                topic: msg.topic.clone(),
                queued,
            });
        }
        Ok(Queued::Yes)
    }

    /// Drops one reference to a stored message, deleting it at zero.
    fn unref(&self, msg_id: u64) {
        if msg_id == 0 {
            return;
        }
        let last = {
            let mut refs = self.refs.lock();
            match refs.get_mut(&msg_id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    refs.remove(&msg_id);
                    true
                }
                None => false,
            }
        };
        if last {
            self.commit.delete_message(msg_id);
        }
    }

    /// A delivery is finished (acknowledged, expired or dropped): removes
    /// its queue entry and releases its message. `floor` is the session's
    /// [`Session::floor`] taken after the delivery left it.
    pub(crate) fn complete(&self, log: u64, d: &Delivery, floor: u64) {
        if !d.stored {
            return;
        }
        self.commit.finish_entry(log, d.seq, floor);
        self.unref(d.msg_id);
    }

    /// Records that a delivery was sent, so it is resent as a duplicate
    /// (with the same packet id, derived from its sequence) after a restart.
    pub(crate) fn mark_sent(&self, log: u64, d: &Delivery) {
        if d.stored {
            self.commit.set_sent(log, d.seq);
        }
    }

    /// Records that a QoS 2 delivery got its PUBREC (PUBREL is resent after
    /// a restart, not the message).
    pub(crate) fn mark_released(&self, log: u64, d: &Delivery) {
        if !d.stored {
            return;
        }
        let rec = QueueRecord {
            msg_id: d.msg_id,
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.sub_ids.clone(),
            released: true,
            body: (d.msg_id == 0).then(|| (*d.msg).clone()),
        };
        self.commit.rewrite_entry(log, d.seq, rec);
    }

    /// Adds a subscription. Returns the retained messages it should receive.
    pub(crate) fn subscribe(
        &self,
        handle: &SessionRef,
        raw: &str,
        group: Option<&str>,
        filter: &str,
        opts: SubOptions,
        retain_handling: u8,
    ) -> Vec<Arc<Message>> {
        // Lock order: the router is never locked while a session is, because
        // routing locks sessions while holding the router.
        self.router
            .write()
            .insert(&handle.client_id, group, filter, handle.clone(), opts);
        let new = {
            let mut s = handle.state.lock();
            let new = s.subscriptions.insert(raw.to_owned(), opts).is_none();
            self.save_session(&s, None);
            new
        };
        // Shared subscriptions never get retained messages.
        let send = group.is_none() && (retain_handling == 0 || (retain_handling == 1 && new));
        if !send {
            return Vec::new();
        }
        let now = unix_now();
        let msgs: Vec<Arc<Message>> = self
            .retained
            .read()
            .values()
            .filter(|m| topic::matches(filter, &m.topic) && !m.expired(now))
            .cloned()
            .collect();
        if !opts.filtered {
            return msgs;
        }
        msgs.into_iter()
            .filter(|m| {
                let ok = self.may_read(handle, &m.topic);
                if !ok {
                    Metrics::inc(&self.metrics.acl_filtered);
                }
                ok
            })
            .collect()
    }

    /// May the owner of `session` read `topic` (a subscription granted
    /// with [`SubscribeDecision::Filter`](crate::hooks::SubscribeDecision))?
    fn may_read(&self, session: &SessionRef, topic: &str) -> bool {
        let client = {
            let s = session.state.lock();
            ClientInfo {
                client_id: session.client_id.clone(),
                username: s.username.clone(),
                principal: s.principal.clone(),
            }
        };
        self.hooks.authorize_read(&client, topic)
    }

    /// Removes a subscription. True if it existed.
    pub(crate) fn unsubscribe(&self, handle: &SessionRef, raw: &str) -> bool {
        {
            let mut s = handle.state.lock();
            if s.subscriptions.remove(raw).is_none() {
                return false;
            }
            self.save_session(&s, None);
        }
        if let Ok(p) = topic::parse_filter(raw, self.topic_limits()) {
            self.router
                .write()
                .remove(&handle.client_id, p.group, p.filter);
        }
        true
    }

    /// Queues retained messages for a new subscription (QoS capped at the
    /// granted QoS). Returns true if something was written to the store.
    pub(crate) fn deliver_retained(
        &self,
        handle: &SessionRef,
        msgs: Vec<Arc<Message>>,
        granted: u8,
        sub_id: Option<u32>,
    ) -> bool {
        let mut wrote = false;
        for m in msgs {
            let (mut id, mut stored) = (0, false);
            let qos = m.qos.min(granted);
            let ids = sub_id.into_iter().collect();
            match self.enqueue(handle, &m, &mut id, true, qos, true, ids, &mut stored) {
                Ok(_) => wrote |= stored,
                Err(e) => self.store_error(&e),
            }
        }
        wrote
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
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }

    /// Releases a connection slot.
    pub(crate) fn release_slot(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
