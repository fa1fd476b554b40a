//! A session as the registry, the router and its connection share it: the
//! state machine behind a lock, and the flags and wake-up a connection
//! waits on.

use super::*;

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
    /// [`EXPIRED_CREDENTIAL`] or [`EXPIRED_REVOKED`] (written before it).
    pub(crate) expired_cause: AtomicU8,
    /// A takeover waiting for the attached connection to leave; signalled
    /// through `notify`, so a connection needs no channel of its own.
    pub(super) kick: Mutex<Option<Kick>>,
    pub(super) kicking: AtomicBool,
    pub(super) will: Mutex<Option<Box<PendingWill>>>,
}

/// The attached connection went silent past its keep-alive.
pub(crate) const EXPIRED_KEEPALIVE: u8 = 0;
/// The attached connection's credential expired.
pub(crate) const EXPIRED_CREDENTIAL: u8 = 1;
/// The embedder closed the connection ([`Broker::disconnect`]).
pub(crate) const EXPIRED_REVOKED: u8 = 2;

impl SessionHandle {
    /// Ends the connection of `generation` for `cause`; it sees the flag
    /// when woken.
    pub(crate) fn expire(&self, generation: u64, cause: u8) {
        self.expired_cause.store(cause, Ordering::Release);
        self.expired_generation.store(generation, Ordering::Release);
    }
}

impl Watchable for SessionHandle {
    fn attached(&self, generation: u64) -> bool {
        let s = self.state.lock();
        s.online && s.generation == generation
    }

    fn seen_ms(&self) -> &AtomicU64 {
        &self.seen_ms
    }

    fn time_out(&self, generation: u64) {
        self.expire(generation, EXPIRED_KEEPALIVE);
        self.notify.notify_one();
    }
}

/// Shared reference to a session.
pub type SessionRef = Arc<SessionHandle>;

pub(super) struct PendingWill {
    pub(super) generation: u64,
    pub(super) client: ClientInfo,
    pub(super) msg: Message,
    pub(super) timer: TimerKey,
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
