//! Group commit with a write journal: many writers, one batch, one fsync.
//!
//! Every runtime write to the store is appended to an ordered in-memory
//! journal. The flusher task takes the journal, applies it to the store in
//! order, and syncs; writers waiting for durability take a ticket after
//! writing and are released when a sync that started after their ticket has
//! finished. So under load one fsync covers the writes of many publishes
//! from many connections.
//!
//! A queue entry or message body that is removed before it was applied is
//! cancelled in the journal: a delivery acknowledged before the next commit
//! never touches the disk. The guarantee is unchanged: when a waiter is
//! released, each of its writes is on disk or was superseded by a later
//! one (such as the delivery's acknowledgement).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::message::Message;
use crate::store::{LogId, QueueRecord, SessionRecord, Store, StoreError};

/// The sync failed; nothing written since the last good sync may be
/// acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store sync failed: {0}")]
pub struct SyncFailed(pub String);

/// One journaled write.
enum Op {
    PutSession(SessionRecord),
    DeleteSession(String, LogId),
    PutMessage(u64, Arc<Message>),
    DeleteMessage(u64),
    PutEntry(LogId, u64, QueueRecord),
    RemoveEntry(LogId, u64),
    PutRetained(Arc<Message>),
    SetCursor(LogId, u64),
    DeleteRetained(String),
    /// Cancelled before it was applied.
    Cancelled,
}

/// Where a not-yet-applied queue entry sits in the journal.
struct EntrySlot {
    index: usize,
    /// Created in this batch, so not on disk: cancelling needs no removal.
    fresh: bool,
}

#[derive(Default)]
struct Journal {
    ops: Vec<Op>,
    entries: HashMap<(LogId, u64), EntrySlot>,
    messages: HashMap<u64, usize>,
    cursors: HashMap<LogId, usize>,
}

impl Journal {
    fn push(&mut self, op: Op) -> usize {
        self.ops.push(op);
        self.ops.len() - 1
    }
}

/// Coordinates store writes and durable acknowledgements.
pub struct GroupCommit {
    journal: Mutex<Journal>,
    requested: AtomicU64,
    wake: Notify,
    done: watch::Sender<(u64, Option<SyncFailed>)>,
    syncs: AtomicU64,
    applied: AtomicU64,
    cancelled: AtomicU64,
    apply_ns: AtomicU64,
    sync_ns: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
}

impl GroupCommit {
    /// Starts the flusher task for `store`. Must be called inside a runtime.
    pub fn start(store: Arc<dyn Store>) -> Arc<GroupCommit> {
        let (done, _) = watch::channel((0, None));
        let gc = Arc::new(GroupCommit {
            journal: Mutex::default(),
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            done,
            syncs: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            apply_ns: AtomicU64::new(0),
            sync_ns: AtomicU64::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let me = gc.clone();
        tokio::spawn(async move { me.run(store).await });
        gc
    }

    async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            self.wake.notified().await;
            // Every ticket taken so far is covered: its writes are in the
            // journal taken below, or in one applied earlier.
            let upto = self.requested.load(Ordering::Acquire);
            let ops = {
                let mut j = self.journal.lock();
                j.entries.clear();
                j.messages.clear();
                j.cursors.clear();
                std::mem::take(&mut j.ops)
            };
            let s = store.clone();
            let me = self.clone();
            let res = tokio::task::spawn_blocking(move || {
                let t0 = std::time::Instant::now();
                me.apply(&*s, ops);
                let t1 = std::time::Instant::now();
                let r = s.sync();
                me.apply_ns
                    .fetch_add((t1 - t0).as_nanos() as u64, Ordering::Relaxed);
                me.sync_ns
                    .fetch_add(t1.elapsed().as_nanos() as u64, Ordering::Relaxed);
                r
            })
            .await;
            self.syncs.fetch_add(1, Ordering::Relaxed);
            let err = match res {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(SyncFailed(e.to_string())),
                Err(e) => Some(SyncFailed(e.to_string())),
            };
            if let Some(e) = &err {
                tracing::error!(error = %e, "store sync failed");
            }
            self.done.send_replace((upto, err));
            // Closed and nothing left: release the store (and its file lock).
            let idle = self.journal.lock().ops.is_empty();
            if Arc::strong_count(&self) == 1 || (idle && self.closed.load(Ordering::Acquire)) {
                return;
            }
        }
    }

    /// Applies journaled writes in order. A failed write is logged; the
    /// sync that follows reports the store's state.
    fn apply(&self, store: &dyn Store, ops: Vec<Op>) {
        for op in ops {
            let r: Result<(), StoreError> = match op {
                Op::PutSession(rec) => store.put_session(&rec),
                Op::DeleteSession(cid, log) => store.delete_session(&cid, log),
                Op::PutMessage(id, m) => store.put_message(id, &m),
                Op::DeleteMessage(id) => store.delete_message(id),
                Op::PutEntry(log, seq, rec) => store.put_entry(log, seq, &rec),
                Op::RemoveEntry(log, seq) => store.remove_entry(log, seq),
                Op::PutRetained(m) => store.put_retained(&m),
                Op::DeleteRetained(t) => store.delete_retained(&t),
                Op::SetCursor(log, seq) => store.set_cursor(log, crate::store::SENT_CURSOR, seq),
                Op::Cancelled => {
                    self.cancelled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            self.applied.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = r {
                tracing::error!(error = %e, "store write failed");
            }
        }
    }

    /// Journals a session record.
    pub fn put_session(&self, rec: SessionRecord) {
        self.journal.lock().push(Op::PutSession(rec));
    }

    /// Journals the deletion of a session and its whole queue log.
    pub fn delete_session(&self, client_id: &str, log: LogId) {
        self.journal
            .lock()
            .push(Op::DeleteSession(client_id.to_owned(), log));
    }

    /// Journals a message body (written once, however many queues hold it).
    pub fn put_message(&self, id: u64, msg: Arc<Message>) {
        let mut j = self.journal.lock();
        let i = j.push(Op::PutMessage(id, msg));
        j.messages.insert(id, i);
    }

    /// Journals the deletion of a message body; cancels it if still pending.
    pub fn delete_message(&self, id: u64) {
        let mut j = self.journal.lock();
        match j.messages.remove(&id) {
            Some(i) => j.ops[i] = Op::Cancelled,
            None => {
                j.push(Op::DeleteMessage(id));
            }
        }
    }

    /// Journals a new queue entry.
    pub fn add_entry(&self, log: LogId, seq: u64, rec: QueueRecord) {
        let mut j = self.journal.lock();
        let index = j.push(Op::PutEntry(log, seq, rec));
        j.entries
            .insert((log, seq), EntrySlot { index, fresh: true });
    }

    /// Journals a change to a queue entry (packet id, QoS 2 state).
    pub fn update_entry(&self, log: LogId, seq: u64, rec: QueueRecord) {
        let mut j = self.journal.lock();
        if let Some(slot) = j.entries.get(&(log, seq)) {
            let i = slot.index;
            j.ops[i] = Op::PutEntry(log, seq, rec);
            return;
        }
        let index = j.push(Op::PutEntry(log, seq, rec));
        j.entries.insert(
            (log, seq),
            EntrySlot {
                index,
                fresh: false,
            },
        );
    }

    /// Journals the removal of a queue entry; an entry not yet applied is
    /// cancelled instead.
    pub fn remove_entry(&self, log: LogId, seq: u64) {
        let mut j = self.journal.lock();
        match j.entries.remove(&(log, seq)) {
            Some(EntrySlot { index, fresh: true }) => j.ops[index] = Op::Cancelled,
            Some(EntrySlot {
                index,
                fresh: false,
            }) => {
                j.ops[index] = Op::Cancelled;
                j.push(Op::RemoveEntry(log, seq));
            }
            None => {
                j.push(Op::RemoveEntry(log, seq));
            }
        }
    }

    /// Journals that `log` has been sent up to `seq`; one write per log per
    /// commit however many deliveries move it.
    pub fn set_sent(&self, log: LogId, seq: u64) {
        let mut j = self.journal.lock();
        if let Some(&i) = j.cursors.get(&log) {
            if let Op::SetCursor(_, s) = &mut j.ops[i] {
                *s = (*s).max(seq);
                return;
            }
        }
        let i = j.push(Op::SetCursor(log, seq));
        j.cursors.insert(log, i);
    }

    /// Journals a retained message.
    pub fn put_retained(&self, msg: Arc<Message>) {
        self.journal.lock().push(Op::PutRetained(msg));
    }

    /// Journals clearing a retained message.
    pub fn delete_retained(&self, topic: &str) {
        self.journal
            .lock()
            .push(Op::DeleteRetained(topic.to_owned()));
    }

    /// Waits until every write journaled before this call is durable.
    pub async fn durable(&self) -> Result<(), SyncFailed> {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut rx = self.done.subscribe();
        self.wake.notify_one();
        let r = rx
            .wait_for(|(upto, _)| *upto >= ticket)
            .await
            .map_err(|_| SyncFailed("flusher stopped".into()))?;
        match &r.1 {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }

    /// Stops the flusher after a final commit, so the store is released.
    /// Writes journaled afterwards are not applied.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Number of syncs performed.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Time spent applying journaled writes and in syncs, in milliseconds.
    pub fn times_ms(&self) -> (u64, u64) {
        (
            self.apply_ns.load(Ordering::Relaxed) / 1_000_000,
            self.sync_ns.load(Ordering::Relaxed) / 1_000_000,
        )
    }

    /// Journaled writes applied to the store, and cancelled before they were.
    pub fn write_counts(&self) -> (u64, u64) {
        (
            self.applied.load(Ordering::Relaxed),
            self.cancelled.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LogStore, SledStore};

    fn rec(msg_id: u64) -> QueueRecord {
        QueueRecord::new(msg_id, 1)
    }

    fn msg() -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: 1,
            retain: false,
            expires_at: None,
            props: None,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiters_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let gc = GroupCommit::start(store);
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move { gc.durable().await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // Coalescing: far fewer syncs than waiters.
        assert!(gc.syncs() < 200, "syncs = {}", gc.syncs());
    }

    #[tokio::test]
    async fn acknowledged_before_commit_never_reaches_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let gc = GroupCommit::start(store.clone());
        gc.put_message(1, msg());
        gc.add_entry(9, 1, rec(1));
        gc.update_entry(
            9,
            1,
            QueueRecord {
                released: true,
                ..rec(1)
            },
        );
        gc.remove_entry(9, 1);
        gc.delete_message(1);
        // A second entry stays pending until the commit, then is on disk.
        gc.put_message(2, msg());
        gc.add_entry(9, 2, rec(2));
        gc.durable().await.unwrap();
        assert!(store.get_message(1).unwrap().is_none());
        assert!(store.get_message(2).unwrap().is_some());
        let entries = store.read_after(9, 0, 10).unwrap();
        assert_eq!(entries.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2]);
        assert_eq!(gc.write_counts(), (2, 2), "(applied, cancelled)");
        // Removal after it was written is applied at the next commit.
        gc.update_entry(
            9,
            2,
            QueueRecord {
                released: true,
                ..rec(2)
            },
        );
        gc.remove_entry(9, 2);
        gc.delete_message(2);
        gc.durable().await.unwrap();
        assert!(store.read_after(9, 0, 10).unwrap().is_empty());
        assert!(store.get_message(2).unwrap().is_none());
    }

    #[tokio::test]
    async fn journal_keeps_order_across_session_delete_and_recreate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let gc = GroupCommit::start(store.clone());
        let session = |log| SessionRecord {
            client_id: "c".into(),
            log,
            expiry_secs: 60,
            disconnected_at: None,
            subscriptions: vec![],
        };
        gc.put_session(session(1));
        gc.add_entry(1, 1, rec(1));
        gc.delete_session("c", 1);
        gc.put_session(session(2));
        gc.durable().await.unwrap();
        let s = store.load_sessions().unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].log, 2);
        assert!(store.read_after(1, 0, 10).unwrap().is_empty());
    }
}
