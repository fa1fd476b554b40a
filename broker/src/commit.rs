//! Group commit with a write journal: many writers, one batch, one fsync.
//!
//! Every runtime write to the store is appended to an ordered in-memory
//! journal. The flusher, a thread of its own (it blocks on the disk), takes
//! the journal, applies it to the store in order, and syncs; writers waiting
//! for durability take a ticket after writing and are released when a sync
//! that started after their ticket has finished. So under load one fsync covers the writes of many publishes
//! from many connections.
//!
//! A session's new queue entries in one commit go to the store as one
//! batch, and finishing entries in order only moves the log's floor, so a
//! commit costs a few writes per active session rather than two per
//! delivery. A queue entry or message body that is removed before it was
//! applied is cancelled in the journal: a delivery acknowledged before the
//! next commit never touches the disk. The guarantee is unchanged: when a
//! waiter is released, each of its writes is on disk or was superseded by a
//! later one (such as the delivery's acknowledgement).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use rustc_hash::FxHashMap as HashMap;
use tokio::sync::watch;

use crate::message::Message;
use crate::store::{LogId, QueueRecord, SessionRecord, Store, Write};

/// The sync failed; nothing written since the last good sync may be
/// acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store sync failed: {0}")]
pub struct SyncFailed(pub String);

/// Writes not yet applied, with indexes into them for coalescing.
#[derive(Default)]
struct Journal {
    /// Writes in order; `None` where one was cancelled before it was
    /// applied.
    ops: Vec<Option<Write>>,
    /// Each log's `Write::Append` in this commit.
    appends: HashMap<LogId, usize>,
    /// Rewrites of entries written in an earlier commit.
    rewrites: HashMap<(LogId, u64), usize>,
    messages: HashMap<u64, usize>,
    /// Each log's `Write::Marks` in this commit.
    marks: HashMap<LogId, usize>,
}

impl Journal {
    fn push(&mut self, op: Write) -> usize {
        self.ops.push(Some(op));
        self.ops.len() - 1
    }

    /// The not-yet-applied entry `seq` of `log`, if it is new in this commit.
    fn fresh_entry(
        &mut self,
        log: LogId,
        seq: u64,
    ) -> Option<(&mut Vec<(u64, QueueRecord)>, usize)> {
        let i = *self.appends.get(&log)?;
        let Some(Write::Append(_, entries)) = &mut self.ops[i] else {
            return None;
        };
        let k = entries.binary_search_by_key(&seq, |e| e.0).ok()?;
        Some((entries, k))
    }

    /// Coalesces a marks change into this commit's `Write::Marks` for `log`.
    fn mark(&mut self, log: LogId, sent: Option<u64>, floor: Option<u64>) {
        if let Some(&i) = self.marks.get(&log) {
            if let Some(Write::Marks {
                sent: s, floor: f, ..
            }) = &mut self.ops[i]
            {
                *s = (*s).max(sent);
                *f = (*f).max(floor);
                return;
            }
        }
        let i = self.push(Write::Marks { log, sent, floor });
        self.marks.insert(log, i);
    }
}

/// Journaled writes that start a commit without a waiter.
const MAX_JOURNAL: usize = 1 << 16;

/// The locked journal; on release, starts a commit if it has grown large.
struct Journaling<'a> {
    gc: &'a GroupCommit,
    j: parking_lot::MutexGuard<'a, Journal>,
}

impl std::ops::Deref for Journaling<'_> {
    type Target = Journal;
    fn deref(&self) -> &Journal {
        &self.j
    }
}

impl std::ops::DerefMut for Journaling<'_> {
    fn deref_mut(&mut self) -> &mut Journal {
        &mut self.j
    }
}

impl Drop for Journaling<'_> {
    fn drop(&mut self) {
        if self.j.ops.len() == MAX_JOURNAL {
            self.gc.requested.fetch_add(1, Ordering::AcqRel);
            self.gc.kick();
        }
    }
}

/// Coordinates store writes and durable acknowledgements.
pub struct GroupCommit {
    journal: Mutex<Journal>,
    /// Tickets taken so far.
    requested: AtomicU64,
    /// The flusher sleeps on `wake` while `idle` is true.
    idle: Mutex<bool>,
    wake: Condvar,
    done: watch::Sender<(u64, Option<SyncFailed>)>,
    syncs: AtomicU64,
    applied: AtomicU64,
    cancelled: AtomicU64,
    sync_ns: AtomicU64,
    /// How long each commit took (applying the batch and its fsync).
    latency: prometheus_client::metrics::histogram::Histogram,
    closed: AtomicBool,
    /// The flusher has ended.
    stopped: AtomicBool,
    /// The first failed commit; every later one fails with it.
    failed: Mutex<Option<SyncFailed>>,
    /// The flusher thread, joined at close.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Pause before a commit that follows straight on another.
    delay: std::time::Duration,
    /// How long a commit the store refuses as unavailable (retryable) is
    /// tried again before it fails.
    retry_for: std::time::Duration,
    retries: AtomicU64,
}

/// How long a commit is retried while the store says it is unavailable.
pub const DEFAULT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

impl GroupCommit {
    /// Starts the flusher thread for `store`. Under continuous load each
    /// commit first waits `delay`, so that one fsync covers more writers
    /// (fewer syncs, wake-ups and per-session writes per message); after an
    /// idle moment a commit starts at once.
    pub fn start(
        store: Arc<dyn Store>,
        delay: std::time::Duration,
    ) -> std::io::Result<Arc<GroupCommit>> {
        Self::start_with(store, delay, DEFAULT_RETRY_FOR)
    }

    /// Like [`GroupCommit::start`], retrying a commit the store refuses as
    /// unavailable for up to `retry_for` before failing its waiters.
    pub fn start_with(
        store: Arc<dyn Store>,
        delay: std::time::Duration,
        retry_for: std::time::Duration,
    ) -> std::io::Result<Arc<GroupCommit>> {
        let (done, _) = watch::channel((0, None));
        let gc = Arc::new(GroupCommit {
            journal: Mutex::default(),
            requested: AtomicU64::new(0),
            idle: Mutex::new(false),
            wake: Condvar::new(),
            done,
            syncs: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            sync_ns: AtomicU64::new(0),
            // 50 µs to 1.6 s.
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 16),
            ),
            closed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            failed: Mutex::new(None),
            thread: Mutex::new(None),
            delay,
            retry_for,
            retries: AtomicU64::new(0),
        });
        let me = gc.clone();
        let t = std::thread::Builder::new()
            .name("courier-commit".into())
            .spawn(move || me.run(&*store))?;
        *gc.thread.lock() = Some(t);
        Ok(gc)
    }

    fn run(self: Arc<Self>, store: &dyn Store) {
        let mut covered = 0;
        loop {
            let mut waited = false;
            {
                let mut idle = self.idle.lock();
                while self.requested.load(Ordering::Acquire) == covered
                    && !self.closed.load(Ordering::Acquire)
                {
                    waited = true;
                    *idle = true;
                    let timeout = self
                        .wake
                        .wait_for(&mut idle, std::time::Duration::from_millis(500));
                    // Everyone else has dropped it: nothing can ask again.
                    if timeout.timed_out() && Arc::strong_count(&self) == 1 {
                        self.stop();
                        return;
                    }
                }
                *idle = false;
            }
            // Writers kept coming during the last commit: the load is
            // continuous, and a short pause lets this commit take more.
            if !waited && !self.delay.is_zero() && !self.closed.load(Ordering::Acquire) {
                std::thread::sleep(self.delay);
            }
            // Every ticket taken so far is covered: its writes are in the
            // journal taken below, or in one applied earlier.
            let upto = self.requested.load(Ordering::Acquire);
            let ops = {
                let mut j = self.journal.lock();
                j.appends.clear();
                j.rewrites.clear();
                j.messages.clear();
                j.marks.clear();
                std::mem::take(&mut j.ops)
            };
            let t0 = std::time::Instant::now();
            let err = self.commit(store, ops);
            let took = t0.elapsed();
            self.sync_ns
                .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            self.latency.observe(took.as_secs_f64());
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.done.send_replace((upto, err));
            covered = upto;
            // Closed and nothing left: release the store (and its file lock).
            let drained = self.journal.lock().ops.is_empty();
            if drained && self.closed.load(Ordering::Acquire) {
                self.stop();
                return;
            }
        }
    }

    /// Commits journaled writes as one durable batch. After a failure
    /// nothing more is committed: what the failed sync covered may be gone
    /// from the disk (a retried fsync can succeed without writing it), so
    /// every later waiter gets the same error until a restart.
    fn commit(&self, store: &dyn Store, ops: Vec<Option<Write>>) -> Option<SyncFailed> {
        let mut failed = self.failed.lock();
        if let Some(e) = &*failed {
            return Some(e.clone());
        }
        let (mut applied, mut cancelled) = (0, 0);
        for op in &ops {
            match op {
                None => cancelled += 1,
                // Every entry of it was finished before the commit.
                Some(Write::Append(_, e)) if e.is_empty() => {}
                Some(_) => applied += 1,
            }
        }
        self.applied.fetch_add(applied, Ordering::Relaxed);
        self.cancelled.fetch_add(cancelled, Ordering::Relaxed);
        // A backend that is unavailable for now applied nothing: the same
        // batch is offered again, with backoff, for up to `retry_for`; the
        // waiters wait meanwhile. Any other error is final.
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(10);
        let e = loop {
            let mut writes = ops.iter().flatten();
            match store.commit(&mut writes) {
                Ok(()) => return None,
                Err(e)
                    if e.is_retryable()
                        && started.elapsed() + pause <= self.retry_for
                        && !self.closed.load(Ordering::Acquire) =>
                {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "store unavailable; retrying the commit");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                Err(e) => break e,
            }
        };
        tracing::error!(error = %e, "store commit failed; acknowledgements that need the store fail until a restart");
        let e = SyncFailed(e.to_string());
        *failed = Some(e.clone());
        Some(e)
    }

    /// The flusher ends: a waiter from now on is answered at once.
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.done
            .send_replace((u64::MAX, Some(SyncFailed("the store is closed".into()))));
    }

    /// The journal, for adding writes. A journal that grows past
    /// [`MAX_JOURNAL`] writes starts a commit by itself, so it stays bounded
    /// when nobody waits for durability (`periodic` mode).
    fn journal(&self) -> Journaling<'_> {
        Journaling {
            gc: self,
            j: self.journal.lock(),
        }
    }

    /// Journals a session record.
    pub fn put_session(&self, rec: SessionRecord) {
        self.journal().push(Write::PutSession(rec));
    }

    /// Journals the deletion of a session and its whole queue log.
    pub fn delete_session(&self, client_id: &str, log: LogId) {
        let mut j = self.journal();
        j.push(Write::DeleteSession {
            client_id: client_id.to_owned(),
            log,
        });
        // Nothing journaled for the log from now on may coalesce into a
        // write that comes before its deletion.
        j.appends.remove(&log);
        j.marks.remove(&log);
        j.rewrites.retain(|(l, _), _| *l != log);
    }

    /// Journals a message body (written once, however many queues hold it)
    /// with one reference: the router's own while it queues the message.
    /// Each queue entry holding it adds one with [`GroupCommit::ref_message`]
    /// before the entry is journaled; the router drops its own with
    /// [`GroupCommit::unref_message`] when it is done, so the count cannot
    /// reach zero while entries are still being queued.
    pub fn put_message(&self, id: u64, msg: Arc<Message>) {
        let mut j = self.journal();
        let i = j.push(Write::PutMessage(id, msg, 1));
        j.messages.insert(id, i);
    }

    /// Journals one more reference to message `id`.
    pub fn ref_message(&self, id: u64) {
        self.change_refs(id, 1);
    }

    /// Journals one reference less to message `id`, after the entry that
    /// held it was journaled as finished; a body whose last reference goes
    /// before it was written is never written.
    pub fn unref_message(&self, id: u64) {
        self.change_refs(id, -1);
    }

    fn change_refs(&self, id: u64, delta: i64) {
        let mut j = self.journal();
        if let Some(&i) = j.messages.get(&id) {
            match &mut j.ops[i] {
                Some(Write::PutMessage(_, _, n)) => {
                    let left = *n as i64 + delta;
                    if left > 0 {
                        *n = left as u32;
                    } else {
                        j.ops[i] = None;
                        j.messages.remove(&id);
                    }
                    return;
                }
                Some(Write::MessageRefs(_, d)) => {
                    *d += delta;
                    return;
                }
                _ => {}
            }
        }
        let i = j.push(Write::MessageRefs(id, delta));
        j.messages.insert(id, i);
    }

    /// Journals a new queue entry; `seq` is above every earlier entry of
    /// `log`.
    pub fn add_entry(&self, log: LogId, seq: u64, rec: QueueRecord) {
        let mut j = self.journal();
        if let Some(&i) = j.appends.get(&log) {
            if let Some(Write::Append(_, entries)) = &mut j.ops[i] {
                // Callers hold the session lock while numbering and journaling.
                debug_assert!(entries.last().is_none_or(|e| e.0 < seq));
                entries.push((seq, rec));
                return;
            }
        }
        let i = j.push(Write::Append(log, vec![(seq, rec)]));
        j.appends.insert(log, i);
    }

    /// Journals a change to a queue entry (QoS 2 state).
    pub fn rewrite_entry(&self, log: LogId, seq: u64, rec: QueueRecord) {
        let mut j = self.journal();
        if let Some((entries, k)) = j.fresh_entry(log, seq) {
            entries[k].1 = rec;
            return;
        }
        if let Some(&i) = j.rewrites.get(&(log, seq)) {
            j.ops[i] = Some(Write::RewriteEntry(log, seq, rec));
            return;
        }
        let i = j.push(Write::RewriteEntry(log, seq, rec));
        j.rewrites.insert((log, seq), i);
    }

    /// Journals that entry `seq` of `log` is finished, and that every entry
    /// at or below `floor` is. An entry not yet applied is cancelled; one
    /// already on disk costs nothing more when the floor covers it.
    pub fn finish_entry(&self, log: LogId, seq: u64, floor: u64) {
        let mut j = self.journal();
        j.mark(log, None, Some(floor).filter(|&f| f > 0));
        if let Some((entries, k)) = j.fresh_entry(log, seq) {
            entries.remove(k);
            self.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(i) = j.rewrites.remove(&(log, seq)) {
            j.ops[i] = None;
        }
        if seq > floor {
            j.push(Write::RemoveEntry(log, seq));
        }
    }

    /// Journals how many live entries `log` holds as its session's queue
    /// goes to disk only, and its highest sequence number `at`.
    pub fn set_queue_count(&self, log: LogId, count: u64, at: u64) {
        self.journal().push(Write::QueueCounted { log, count, at });
    }

    /// Journals that `log` has been sent up to `seq`; one write per log per
    /// commit however many deliveries move it.
    pub fn set_sent(&self, log: LogId, seq: u64) {
        self.journal().mark(log, Some(seq), None);
    }

    /// Journals a write of another layer (named logs).
    pub(crate) fn write(&self, w: Write) {
        self.journal().push(w);
    }

    /// Journals a retained message.
    pub fn put_retained(&self, msg: Arc<Message>) {
        self.journal().push(Write::PutRetained(msg));
    }

    /// Journals clearing a retained message.
    pub fn delete_retained(&self, topic: &str) {
        self.journal
            .lock()
            .push(Write::DeleteRetained(topic.to_owned()));
    }

    /// Waits until every write journaled before this call is durable.
    pub async fn durable(&self) -> Result<(), SyncFailed> {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        // Subscribed before checking `stopped`: the flusher's last answer
        // (sent after it sets `stopped`) is then seen either way.
        let mut rx = self.done.subscribe();
        if self.stopped.load(Ordering::Acquire) {
            return Err(SyncFailed("the store is closed".into()));
        }
        self.kick();
        let r = rx
            .wait_for(|(upto, _)| *upto >= ticket)
            .await
            .map_err(|_| SyncFailed("flusher stopped".into()))?;
        match &r.1 {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }

    /// Stops the flusher after a final commit and waits for its thread to
    /// end. Writes journaled afterwards are not applied; a waiter from then
    /// on gets an error at once.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.kick();
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Wakes the flusher if it sleeps. Taking `idle` orders this with its
    /// check of `requested`, so a wake-up is never lost.
    fn kick(&self) {
        if *self.idle.lock() {
            self.wake.notify_one();
        }
    }

    /// True when every write journaled so far is in the store: the journal
    /// is empty and the flusher is asleep (not in a commit). Readers that
    /// need the store to reflect the journal skip waiting then.
    pub fn settled(&self) -> bool {
        // The journal first, then the flusher, each lock on its own (the
        // journal's guard takes `idle` when it kicks): an empty journal
        // and then an idle flusher mean that whatever was taken from the
        // journal before has been committed.
        let empty = self.journal.lock().ops.is_empty();
        empty && *self.idle.lock() && self.failed.lock().is_none()
    }

    /// Commits tried again because the store was unavailable.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Number of syncs performed.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Time spent in commits (applying the batch and its fsync), in
    /// milliseconds.
    pub fn commit_ms(&self) -> u64 {
        self.sync_ns.load(Ordering::Relaxed) / 1_000_000
    }

    /// The histogram of commit latencies, in seconds.
    pub fn latency(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.latency
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
    use crate::redb_store::RedbStore;

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
        let store: Arc<dyn Store> = RedbStore::open(dir.path()).unwrap();
        let gc = GroupCommit::start(store, Default::default()).unwrap();
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
    async fn a_large_journal_commits_without_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = RedbStore::open(dir.path()).unwrap();
        let gc = GroupCommit::start(store, Default::default()).unwrap();
        for i in 0..MAX_JOURNAL as u64 {
            gc.set_sent(i, 1);
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while gc.syncs() == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a commit started by the journal's size");
        assert!(gc.journal.lock().ops.len() < MAX_JOURNAL);
    }

    #[tokio::test]
    async fn every_waiter_gets_an_answer_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = RedbStore::open(dir.path()).unwrap();
        let gc = GroupCommit::start(store, Default::default()).unwrap();
        gc.put_retained(msg());
        gc.durable().await.unwrap();
        // A waiter racing the close is answered either way.
        let racing = {
            let gc = gc.clone();
            tokio::spawn(async move { gc.durable().await })
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), gc.close())
            .await
            .expect("the flusher's thread ends after close");
        assert!(gc.stopped.load(Ordering::Acquire));
        tokio::time::timeout(std::time::Duration::from_secs(10), racing)
            .await
            .expect("answered")
            .unwrap()
            .ok();
        let late = tokio::time::timeout(std::time::Duration::from_secs(1), gc.durable())
            .await
            .expect("answered at once");
        assert!(late.is_err());
    }

    fn seqs(store: &RedbStore, log: LogId) -> Vec<u64> {
        store.entries(log).unwrap().iter().map(|e| e.0).collect()
    }

    fn released(msg_id: u64) -> QueueRecord {
        QueueRecord {
            released: true,
            ..rec(msg_id)
        }
    }

    #[tokio::test]
    async fn acknowledged_before_commit_never_reaches_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let gc = GroupCommit::start(store.clone(), Default::default()).unwrap();
        // Message 1 is queued for one session and acknowledged at once.
        gc.put_message(1, msg());
        gc.ref_message(1);
        gc.add_entry(9, 1, rec(1));
        gc.unref_message(1); // the router is done with it
        gc.rewrite_entry(9, 1, released(1));
        gc.finish_entry(9, 1, 1);
        gc.unref_message(1);
        // Message 2, queued for two sessions, stays pending until the
        // commit, then is on disk.
        gc.put_message(2, msg());
        gc.ref_message(2);
        gc.add_entry(9, 2, rec(2));
        gc.ref_message(2);
        gc.add_entry(10, 1, rec(2));
        gc.unref_message(2);
        gc.durable().await.unwrap();
        assert!(store.get_message(1).unwrap().is_none());
        assert!(store.get_message(2).unwrap().is_some());
        assert_eq!(seqs(&store, 9), vec![2]);
        // Written: message 2, two batches, the floor. Cancelled: message 1
        // and entry 1.
        assert_eq!(gc.write_counts(), (4, 2), "(applied, cancelled)");
        // Finished after it was written: released at the next commit, and
        // the body goes with its last reference.
        gc.rewrite_entry(9, 2, released(2));
        gc.finish_entry(9, 2, 2);
        gc.unref_message(2);
        gc.durable().await.unwrap();
        assert!(seqs(&store, 9).is_empty());
        assert!(store.get_message(2).unwrap().is_some(), "log 10 holds it");
        gc.finish_entry(10, 1, 1);
        gc.unref_message(2);
        gc.durable().await.unwrap();
        assert!(store.get_message(2).unwrap().is_none());
    }

    /// A store that answers "unavailable" (retryable, nothing applied) to
    /// its first `fail` commits, then commits for real.
    struct Flaky {
        inner: Arc<RedbStore>,
        fail: AtomicU64,
    }

    impl Store for Flaky {
        fn commit(&self, w: &mut dyn Iterator<Item = &Write>) -> crate::store::StoreResult<()> {
            let left = self.fail.load(Ordering::SeqCst);
            if left > 0 {
                self.fail.store(left - 1, Ordering::SeqCst);
                return Err(crate::store::StoreError::Unavailable("server busy".into()));
            }
            self.inner.commit(w)
        }
        fn next_id(&self) -> u64 {
            self.inner.next_id()
        }
        fn load_sessions(&self) -> crate::store::StoreResult<Vec<SessionRecord>> {
            self.inner.load_sessions()
        }
        fn marks(&self, log: LogId) -> crate::store::StoreResult<crate::store::LogMarks> {
            self.inner.marks(log)
        }
        fn entries(&self, log: LogId) -> crate::store::StoreResult<Vec<(u64, QueueRecord)>> {
            self.inner.entries(log)
        }
        fn cursor(&self, log: LogId, consumer: &str) -> crate::store::StoreResult<u64> {
            self.inner.cursor(log, consumer)
        }
        fn get_message(&self, id: u64) -> crate::store::StoreResult<Option<Message>> {
            self.inner.get_message(id)
        }
        fn message_ids(&self) -> crate::store::StoreResult<Vec<u64>> {
            self.inner.message_ids()
        }
        fn load_retained(&self) -> crate::store::StoreResult<Vec<Message>> {
            self.inner.load_retained()
        }
        fn log_last(&self, log: &str) -> crate::store::StoreResult<u64> {
            self.inner.log_last(log)
        }
        fn log_read(
            &self,
            log: &str,
            from: u64,
            limit: usize,
        ) -> crate::store::StoreResult<Vec<crate::store::LogRecord>> {
            self.inner.log_read(log, from, limit)
        }
        fn log_read_back(
            &self,
            log: &str,
            before: u64,
            limit: usize,
        ) -> crate::store::StoreResult<Vec<crate::store::LogRecord>> {
            self.inner.log_read_back(log, before, limit)
        }
        fn log_seq_of(&self, log: &str, id: &str) -> crate::store::StoreResult<Option<u64>> {
            self.inner.log_seq_of(log, id)
        }
        fn log_cursors(&self, log: &str) -> crate::store::StoreResult<Vec<(String, u64)>> {
            self.inner.log_cursors(log)
        }
    }

    #[tokio::test]
    async fn an_unavailable_store_is_retried_and_then_fails_the_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let inner = RedbStore::open(dir.path()).unwrap();
        let flaky = Arc::new(Flaky {
            inner: inner.clone(),
            fail: AtomicU64::new(3),
        });
        let second = std::time::Duration::from_secs(1);
        let gc = GroupCommit::start_with(flaky.clone(), Default::default(), 10 * second).unwrap();
        // Three refusals, then it commits: the waiter is answered Ok and the
        // write is there.
        gc.put_retained(msg());
        gc.durable().await.unwrap();
        assert_eq!(gc.retries(), 3);
        assert_eq!(inner.load_retained().unwrap().len(), 1);
        // Unavailable for longer than the retry window: the waiter fails,
        // and so does every later one.
        flaky.fail.store(u64::MAX, Ordering::SeqCst);
        let short =
            GroupCommit::start_with(flaky.clone(), Default::default(), second / 10).unwrap();
        short.delete_retained("t");
        assert!(short.durable().await.is_err());
        flaky.fail.store(0, Ordering::SeqCst);
        short.delete_retained("t");
        assert!(short.durable().await.is_err(), "no quiet recovery");
        assert_eq!(inner.load_retained().unwrap().len(), 1, "nothing applied");
    }

    #[tokio::test]
    async fn deleting_a_session_releases_the_bodies_its_entries_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let gc = GroupCommit::start(store.clone(), Default::default()).unwrap();
        gc.put_message(5, msg());
        for log in [1, 2] {
            gc.ref_message(5);
            gc.add_entry(log, 1, rec(5));
        }
        gc.unref_message(5);
        gc.durable().await.unwrap();
        // One holder's session ends with its entry unread: one reference left.
        gc.delete_session("a", 1);
        gc.durable().await.unwrap();
        assert!(store.get_message(5).unwrap().is_some());
        gc.delete_session("b", 2);
        gc.durable().await.unwrap();
        assert!(store.get_message(5).unwrap().is_none());
        assert!(store.message_ids().unwrap().is_empty());
    }

    #[tokio::test]
    async fn one_batch_per_log_per_commit_and_out_of_order_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let gc = GroupCommit::start(store.clone(), Default::default()).unwrap();
        for seq in 1..=100 {
            gc.add_entry(3, seq, rec(seq));
        }
        gc.set_sent(3, 40);
        gc.durable().await.unwrap();
        assert_eq!(gc.write_counts().0, 2, "one batch and one cursor");
        assert_eq!(seqs(&store, 3).len(), 100);
        // In order up to 50 (the floor moves), then 70 out of order; a
        // QoS 2 state change to 80.
        for seq in 1..=50 {
            gc.finish_entry(3, seq, seq);
        }
        gc.finish_entry(3, 70, 50);
        gc.rewrite_entry(3, 80, released(80));
        gc.durable().await.unwrap();
        let left = store.entries(3).unwrap();
        assert_eq!(left.len(), 49);
        assert_eq!(left[0].0, 51);
        assert!(!left.iter().any(|e| e.0 == 70));
        assert!(left.iter().find(|e| e.0 == 80).unwrap().1.released);
        // The floor passes everything: the batch and its marks are freed.
        gc.finish_entry(3, 100, 100);
        gc.durable().await.unwrap();
        assert!(seqs(&store, 3).is_empty());
        assert_eq!(store.marks(3).unwrap().sent, 40);
    }

    #[tokio::test]
    async fn journal_keeps_order_across_session_delete_and_recreate() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let gc = GroupCommit::start(store.clone(), Default::default()).unwrap();
        let session = |log| SessionRecord {
            client_id: "c".into(),
            username: None,
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
        assert!(seqs(&store, 1).is_empty());
    }
}
