//! Named, ordered, append-only logs for in-process code: a conversation's
//! history, a user's inbox. Shaped so that a NATS JetStream stream (one
//! subject per log) could implement the same contract: dense sequence
//! numbers per log, an optional expected-last-sequence check, idempotent
//! appends keyed by a caller's id (JetStream's `Nats-Msg-Id`), reads both
//! ways, named consumer cursors, retention, and durability reported per
//! append.
//!
//! Appends are numbered and checked here, against an in-memory head per
//! log that includes appends not yet committed, and go to the store
//! through the group commit like every other write. Reads see committed
//! records.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::commit::{GroupCommit, SyncFailed};
use crate::store::{LogRecord, Store, StoreError, Write};

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// The caller's id for it (a client message id): appending a record
    /// whose id the log already holds returns the original's sequence
    /// number and stores nothing.
    pub id: Option<String>,
    /// The record's bytes.
    pub data: Bytes,
}

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log's last sequence number is not the one the caller expected
    /// (someone else appended first).
    #[error("log {log}: expected last sequence {expected}, found {last}")]
    Conflict {
        /// The log.
        log: String,
        /// What the caller expected.
        expected: u64,
        /// What it is.
        last: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Logs::append`] did.
pub struct Appended {
    /// Each record's sequence number, in the order given; a duplicate (by
    /// id) has its original's.
    pub seqs: Vec<u64>,
    /// How many of them were duplicates.
    pub duplicates: usize,
    commit: Arc<GroupCommit>,
}

impl std::fmt::Debug for Appended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appended")
            .field("seqs", &self.seqs)
            .field("duplicates", &self.duplicates)
            .finish()
    }
}

impl Appended {
    /// Resolves once the append is durable (fsynced), or fails if the
    /// commit covering it failed.
    pub async fn durable(&self) -> Result<(), SyncFailed> {
        self.commit.durable().await
    }
}

/// What [`Logs::trim`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Every record each named cursor of the log has passed (nothing if the
    /// log has no cursor).
    ReadByAll,
    /// All but the newest `n` records.
    KeepLast(u64),
    /// Records appended before this Unix time in milliseconds.
    Before(u64),
}

/// A log's head as appends see it, uncommitted ones included.
struct Head {
    last: u64,
    /// Commits completed when it last changed: two commits later every
    /// append it holds is in the store, so it may be dropped.
    epoch: u64,
    /// The newest ids appended (committed or not), so a repeat is found
    /// before its original reaches the store.
    recent: HashMap<String, u64>,
    order: VecDeque<String>,
}

/// Heads kept in memory before the ones whose appends are all committed
/// are dropped (they are read again from the store when needed).
const MAX_HEADS: usize = 1 << 16;

/// Most ids one log's head remembers; older ones are looked up in the store
/// (committed by then: commits follow each other within milliseconds).
/// Small, because every active log (a conversation) keeps its head.
const RECENT_IDS: usize = 256;

/// The named logs of one broker.
pub struct Logs {
    store: Arc<dyn Store>,
    commit: Arc<GroupCommit>,
    heads: Mutex<HashMap<String, Head>>,
}

impl Logs {
    /// Named logs on `store`, written through `commit`.
    pub fn new(store: Arc<dyn Store>, commit: Arc<GroupCommit>) -> Logs {
        Logs {
            store,
            commit,
            heads: Mutex::default(),
        }
    }

    /// Appends `records` to `log` in order, numbered densely after its last
    /// record. With `expect_last`, refuses ([`LogError::Conflict`]) unless
    /// the log's last sequence number is that. The append is visible to
    /// later appends at once and to reads once committed; await
    /// [`Appended::durable`] before acknowledging it to anyone.
    pub fn append(
        &self,
        log: &str,
        records: Vec<NewRecord>,
        expect_last: Option<u64>,
    ) -> Result<Appended, LogError> {
        let time_ms = unix_ms();
        let mut heads = self.heads.lock();
        if heads.len() >= MAX_HEADS && !heads.contains_key(log) {
            let done = self.commit.syncs();
            heads.retain(|_, h| h.epoch + 2 > done);
        }
        let head = match heads.get_mut(log) {
            Some(h) => h,
            None => {
                let last = self.store.log_last(log)?;
                heads.entry(log.to_owned()).or_insert(Head {
                    last,
                    epoch: 0,
                    recent: HashMap::new(),
                    order: VecDeque::new(),
                })
            }
        };
        if let Some(expected) = expect_last {
            if expected != head.last {
                return Err(LogError::Conflict {
                    log: log.to_owned(),
                    expected,
                    last: head.last,
                });
            }
        }
        let mut seqs = Vec::with_capacity(records.len());
        let mut fresh = Vec::with_capacity(records.len());
        let mut duplicates = 0;
        for r in records {
            if let Some(id) = &r.id {
                let known = match head.recent.get(id) {
                    Some(&s) => Some(s),
                    None => self.store.log_seq_of(log, id)?,
                };
                if let Some(s) = known {
                    seqs.push(s);
                    duplicates += 1;
                    continue;
                }
            }
            head.last += 1;
            let seq = head.last;
            if let Some(id) = &r.id {
                if head.order.len() >= RECENT_IDS {
                    if let Some(old) = head.order.pop_front() {
                        head.recent.remove(&old);
                    }
                }
                head.recent.insert(id.clone(), seq);
                head.order.push_back(id.clone());
            }
            seqs.push(seq);
            fresh.push(LogRecord {
                seq,
                id: r.id,
                time_ms,
                data: r.data,
            });
        }
        if !fresh.is_empty() {
            // Journaled under the heads lock: the journal holds each log's
            // appends in sequence order.
            self.commit.write(Write::LogAppend {
                log: log.to_owned(),
                records: fresh,
            });
            // Read after journaling: the commit in progress took this
            // append or the next one will, so two more completed commits
            // have stored it.
            head.epoch = self.commit.syncs();
        }
        Ok(Appended {
            seqs,
            duplicates,
            commit: self.commit.clone(),
        })
    }

    /// The sequence number of the record appended with `id` (committed or
    /// not), if there is one.
    pub fn seq_of(&self, log: &str, id: &str) -> Result<Option<u64>, StoreError> {
        if let Some(&s) = self.heads.lock().get(log).and_then(|h| h.recent.get(id)) {
            return Ok(Some(s));
        }
        self.store.log_seq_of(log, id)
    }

    /// The last sequence number appended to `log` (0 if none).
    pub fn last(&self, log: &str) -> Result<u64, StoreError> {
        if let Some(h) = self.heads.lock().get(log) {
            return Ok(h.last);
        }
        self.store.log_last(log)
    }

    /// The last sequence number of `log` that is committed (what reads
    /// see; [`Logs::last`] includes appends not committed yet).
    pub fn last_committed(&self, log: &str) -> Result<u64, StoreError> {
        self.store.log_last(log)
    }

    /// Up to `limit` committed records of `log` from `from` on, oldest
    /// first.
    pub fn read(&self, log: &str, from: u64, limit: usize) -> Result<Vec<LogRecord>, StoreError> {
        self.store.log_read(log, from, limit)
    }

    /// Up to `limit` committed records of `log` before `before`, newest
    /// first (history paging).
    pub fn read_back(
        &self,
        log: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, StoreError> {
        self.store.log_read_back(log, before, limit)
    }

    /// Records that `consumer` has read `log` up to `seq` (durable with the
    /// next commit).
    pub fn set_cursor(&self, log: &str, consumer: &str, seq: u64) {
        self.commit.write(Write::LogCursor {
            log: log.to_owned(),
            consumer: consumer.to_owned(),
            seq,
        });
    }

    /// The committed cursors of `log`, by consumer name.
    pub fn cursors(&self, log: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.store.log_cursors(log)
    }

    /// Erases record `seq` of `log` at the next commit: reads leave it out
    /// from then on. Its sequence number is never reused, and its id still
    /// makes a resend a repeat. (Where the bytes are once erased is the
    /// backend's affair: docs/DURABILITY.md.)
    pub fn erase(&self, log: &str, seq: u64) {
        self.commit.write(Write::LogErase {
            log: log.to_owned(),
            seq,
        });
    }

    /// Removes the records of `log` that `retention` lets go, at the next
    /// commit. Sequence numbers are never reused. Returns the highest
    /// sequence number removed (0: none).
    pub fn trim(&self, log: &str, retention: Retention) -> Result<u64, StoreError> {
        let upto = match retention {
            Retention::ReadByAll => self
                .store
                .log_cursors(log)?
                .iter()
                .map(|c| c.1)
                .min()
                .unwrap_or(0),
            Retention::KeepLast(n) => self.last(log)?.saturating_sub(n),
            Retention::Before(t) => {
                let mut upto = 0;
                let mut from = 0;
                'scan: loop {
                    let page = self.store.log_read(log, from, 256)?;
                    if page.is_empty() {
                        break;
                    }
                    for r in &page {
                        if r.time_ms >= t {
                            break 'scan;
                        }
                        upto = r.seq;
                        from = r.seq + 1;
                    }
                }
                upto
            }
        };
        if upto > 0 {
            let mut heads = self.heads.lock();
            // A trimmed record's id is forgotten, here as in the store.
            if let Some(h) = heads.get_mut(log) {
                h.recent.retain(|_, seq| *seq > upto);
                let recent = &h.recent;
                h.order.retain(|id| recent.contains_key(id));
            }
            self.commit.write(Write::LogTrim {
                log: log.to_owned(),
                upto,
            });
        }
        Ok(upto)
    }
}

fn unix_ms() -> u64 {
    crate::message::unix_now_ms()
}
