//! The storage seam: what the broker keeps on disk, as records, and the
//! trait a storage backend implements.
//!
//! Everything durable is one of four things: session records, messages
//! (stored once, however many sessions they are queued for), per-key ordered
//! logs with consumer cursors (a session's queue is one log), and retained
//! messages. Writes reach a backend as one ordered batch per commit
//! ([`Store::commit`]): the batch is applied atomically and is durable when
//! the call returns, so the broker's group commit sends acknowledgements only
//! after it. The embedded backend is [`crate::redb_store::RedbStore`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::router::SubOptions;

/// Identifies one ordered log (for now: one per persistent session).
pub type LogId = u64;

/// A storage failure. Every kind is fatal for the batch it happened in: no
/// acknowledgement that waited on that batch is sent.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the disk failed (including a failed fsync).
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// What is on disk is not what the store wrote.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// A record could not be encoded or decoded.
    #[error("record codec: {0}")]
    Codec(#[from] postcard::Error),
    /// The data directory cannot be used as it is; nothing was changed.
    #[error("data directory {path}: {problem}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong, and what to do about it.
        problem: String,
    },
    /// The backend cannot take the operation now (a networked backend's
    /// timeout or lost connection, an overloaded server) and applied none
    /// of it: the same operation may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// True if trying the same operation again may succeed
    /// ([`StoreError::Unavailable`]): the group commit retries such a
    /// commit for a while before failing the acknowledgements that wait
    /// on it. Every other error is fatal: after a failed write or fsync
    /// what it covered may be gone, so nothing is retried (DURABILITY.md).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A persistent session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Client identifier.
    pub client_id: String,
    /// Username of the connection that last attached (for authorizing
    /// deliveries while it is away).
    pub username: Option<String>,
    /// Log holding this session's queue.
    pub log: LogId,
    /// Session expiry interval in seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// Unix time of the last disconnect; `None` while connected (or after a
    /// crash, where the load time is used).
    pub disconnected_at: Option<u64>,
    /// Subscriptions: the raw filter (with any `$share/` prefix) and options.
    pub subscriptions: Vec<(String, SubOptions)>,
}

/// One entry in a session's queue log: a reference to a stored message and
/// how it is to be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// Stored message id.
    pub msg_id: u64,
    /// Delivery QoS (the lower of published and granted).
    pub qos: u8,
    /// RETAIN flag to deliver with.
    pub retain: bool,
    /// Matching subscription identifiers.
    pub sub_ids: Vec<u32>,

    /// QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    pub released: bool,
    /// The message itself, when it was queued for this session only (then
    /// `msg_id` is 0): one record instead of a shared body plus a reference.
    pub body: Option<Message>,
}

impl QueueRecord {
    /// A not-yet-sent entry referring to stored message `msg_id`.
    pub fn new(msg_id: u64, qos: u8) -> QueueRecord {
        QueueRecord {
            msg_id,
            qos,
            retain: false,
            sub_ids: Vec::new(),
            released: false,
            body: None,
        }
    }
}

/// Where a session's log stands: one small record, written at most once
/// per commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogMarks {
    /// Highest sequence number sent; entries at or below it go out again
    /// as duplicates after a restart.
    pub sent: u64,
    /// Every entry at or below it is finished.
    pub floor: u64,
    /// The highest sequence number appended (numbering goes on after it),
    /// kept here so that start-up reads no entries.
    pub tail: u64,
    /// Live entries when the queue last went to disk only, and the highest
    /// sequence number then: at most `counted + (tail - counted_at)` are
    /// live now (entries only leave while the session is away).
    pub counted: u64,
    /// See `counted`.
    pub counted_at: u64,
}

impl LogMarks {
    /// At most this many live entries: the tighter of the span above the
    /// floor and the count taken when the queue went to disk.
    pub fn live_at_most(&self) -> u64 {
        let span = self.tail.saturating_sub(self.floor);
        let counted = self.counted + self.tail.saturating_sub(self.counted_at);
        span.min(counted)
    }
}

/// A record of a named log ([`crate::logs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Its position: dense, from 1, never reused.
    pub seq: u64,
    /// The appender's id for it (idempotency key), if any.
    pub id: Option<String>,
    /// When the broker appended it (Unix milliseconds).
    pub time_ms: u64,
    /// The bytes.
    pub data: bytes::Bytes,
}

/// One write in a commit's batch.
#[derive(Debug, Clone)]
pub enum Write {
    /// Writes a session record (keyed by client id).
    PutSession(SessionRecord),
    /// Deletes a session record and its whole queue log, releasing the
    /// message bodies its live entries refer to.
    DeleteSession {
        /// The session's client id.
        client_id: String,
        /// Its queue log.
        log: LogId,
    },
    /// Stores a message body under an id, with the number of queue entries
    /// that refer to it.
    PutMessage(u64, Arc<Message>, u32),
    /// Changes a stored body's reference count; at zero the body goes.
    /// References are counted before the entries that hold them are
    /// written and released after those entries are removed, so a crash
    /// can leave a count too high (a body kept too long), never too low.
    MessageRefs(u64, i64),
    /// Appends entries (ascending, each above every earlier entry of the
    /// log and above its floor) to a log, as one batch.
    Append(LogId, Vec<(u64, QueueRecord)>),
    /// Replaces one entry of a log (its QoS 2 state).
    RewriteEntry(LogId, u64, QueueRecord),
    /// Removes one entry of a log (finished out of order, or unreadable).
    RemoveEntry(LogId, u64),
    /// Moves a log's marks (`None`: unchanged); frees what lies wholly at
    /// or below the floor.
    Marks {
        /// The log.
        log: LogId,
        /// Highest sequence number sent.
        sent: Option<u64>,
        /// Every entry at or below it is finished.
        floor: Option<u64>,
    },
    /// Records how many live entries a log held when its session's queue
    /// went to disk only, and its highest sequence number then.
    QueueCounted {
        /// The log.
        log: LogId,
        /// Live entries.
        count: u64,
        /// Highest sequence number given out.
        at: u64,
    },
    /// Records how far a named consumer has read in a log.
    SetCursor {
        /// The log.
        log: LogId,
        /// The consumer's name.
        consumer: String,
        /// Its position.
        seq: u64,
    },
    /// Sets or replaces the retained message of its topic.
    PutRetained(Arc<Message>),
    /// Clears the retained message of a topic.
    DeleteRetained(String),
    /// Appends records (numbered, ascending) to a named log.
    LogAppend {
        /// The log's name.
        log: String,
        /// The records.
        records: Vec<LogRecord>,
    },
    /// Removes the records of a named log up to a sequence number (its
    /// numbering goes on after them).
    LogTrim {
        /// The log's name.
        log: String,
        /// Last sequence number removed.
        upto: u64,
    },
    /// Erases one record of a named log: every read leaves it out from
    /// then on; its sequence number is not reused, and its id (if it has
    /// one) still names it, so a resend stays a repeat.
    LogErase {
        /// The log's name.
        log: String,
        /// The record's sequence number.
        seq: u64,
    },
    /// Sets a named log's cursor for a consumer.
    LogCursor {
        /// The log's name.
        log: String,
        /// The consumer's name.
        consumer: String,
        /// Its position.
        seq: u64,
    },
}

/// Everything the broker persists.
///
/// Writes come only through [`Store::commit`], from one thread at a time
/// (the group commit); reads may come from any thread and see committed
/// state.
pub trait Store: Send + Sync {
    /// Applies `writes` in order as one atomic batch and makes it durable
    /// (fsync or fdatasync, covering data and the metadata needed to find
    /// it after a reboot) before returning. After an error nothing of the
    /// batch may be assumed durable, and the backend may refuse every later
    /// commit, unless the error [`is_retryable`](StoreError::is_retryable)
    /// (nothing was applied; the same batch is offered again).
    fn commit(&self, writes: &mut dyn Iterator<Item = &Write>) -> StoreResult<()>;
    /// A fresh id, unique across restarts and never 0 (message ids, log
    /// ids). Handed out from memory; a commit makes every id it used safe
    /// from reuse.
    fn next_id(&self) -> u64;
    /// All session records.
    fn load_sessions(&self) -> StoreResult<Vec<SessionRecord>>;
    /// Hands each session record to `f` in turn, without holding them all
    /// (start-up with many sessions). The default reads them all first.
    fn visit_sessions(
        &self,
        f: &mut dyn FnMut(SessionRecord) -> StoreResult<()>,
    ) -> StoreResult<()> {
        for rec in self.load_sessions()? {
            f(rec)?;
        }
        Ok(())
    }
    /// `log`'s marks (zero if never set).
    fn marks(&self, log: LogId) -> StoreResult<LogMarks>;
    /// The live entries of `log` (above the floor, not removed), in order.
    fn entries(&self, log: LogId) -> StoreResult<Vec<(u64, QueueRecord)>>;
    /// How far `consumer` has read in `log` (0 if never set).
    fn cursor(&self, log: LogId, consumer: &str) -> StoreResult<u64>;
    /// Reads a message body.
    fn get_message(&self, id: u64) -> StoreResult<Option<Message>>;
    /// Ids of every stored message body.
    fn message_ids(&self) -> StoreResult<Vec<u64>>;
    /// All retained messages.
    fn load_retained(&self) -> StoreResult<Vec<Message>>;
    /// The last sequence number ever appended to named log `log` (0: none).
    fn log_last(&self, log: &str) -> StoreResult<u64>;
    /// Up to `limit` records of `log` with sequence number `from` or more,
    /// ascending.
    fn log_read(&self, log: &str, from: u64, limit: usize) -> StoreResult<Vec<LogRecord>>;
    /// Up to `limit` records of `log` below `before`, descending.
    fn log_read_back(&self, log: &str, before: u64, limit: usize) -> StoreResult<Vec<LogRecord>>;
    /// The sequence number of the record of `log` appended with `id`.
    fn log_seq_of(&self, log: &str, id: &str) -> StoreResult<Option<u64>>;
    /// The cursors of `log`, by consumer name.
    fn log_cursors(&self, log: &str) -> StoreResult<Vec<(String, u64)>>;

    /// Makes the bytes of records erased or trimmed so far unrecoverable
    /// from the store's files, if any were since the last time. The
    /// embedded store compacts its file, pausing every other store access
    /// meanwhile (docs/DURABILITY.md). `None`: nothing to do, or a backend
    /// that needs nothing done.
    fn shred(&self) -> StoreResult<Option<Shredded>> {
        Ok(None)
    }
}

/// What a [`Store::shred`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shredded {
    /// How long other store access was paused.
    pub took: std::time::Duration,
    /// The store file's size before and after.
    pub bytes_before: u64,
    /// The size after.
    pub bytes_after: u64,
}
