//! The embedded store, on redb: one file, copy-on-write B-trees, and a
//! commit that is one fdatasync.
//!
//! Each commit of the broker is one redb write transaction with durability
//! `Immediate`: the batch is applied atomically and redb fdatasyncs the file
//! before `commit` returns, covering the data and the file's growth. redb
//! never creates files after the first start, so the data directory is
//! fsynced once, when the store is created ([`crate::data_dir`]).
//!
//! After an unclean stop redb repairs the file on open (it falls back to
//! the last commit whose checksum is valid and rebuilds its free-space map).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::data_dir;
use crate::message::Message;
pub use crate::staging::StagingLimits;
use crate::staging::{Staged, StagedRef, Staging};
use crate::store::{
    LogId, LogMarks, LogRecord, QueueRecord, SessionRecord, Shredded, Store, StoreError,
    StoreResult, Write,
};

/// The data directory's format marker for this layout.
/// Version 2 counts each shared message body's references (`MSG_REFS`),
/// so start-up need not read every queue entry; a version 1 directory is
/// refused. Version 3 stages named-log appends (`NSTAGE`) and keeps named
/// logs in batches; a version 2 directory is upgraded at open.
const FORMAT: &str = "courier-store/redb/3";
/// The previous format, upgraded in place.
const FORMAT_2: &str = "courier-store/redb/2";
/// The database file inside the data directory.
const DB_FILE: &str = "courier.redb";
/// redb's page cache. Reads are session records and marks at start-up and
/// a queue when its session attaches; commits write through. 8 MiB kept
/// persistent-pairs throughput level with 32 MiB (benches/RESULTS.md) and
/// is fixed memory, whatever the number of sessions.
const CACHE_BYTES: usize = 8 << 20;

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// `message id -> queue entries that refer to it`.
const MSG_REFS: TableDefinition<u64, u32> = TableDefinition::new("message_refs");
/// `(log, seq, kind)`: everything at or below a floor is one range.
const LOGS: TableDefinition<(u64, u64, u8), &[u8]> = TableDefinition::new("logs");
/// `log -> (sent, floor, tail, counted, counted_at)`.
const MARKS: TableDefinition<u64, Marks> = TableDefinition::new("marks");
type Marks = (u64, u64, u64, u64, u64);
const CURSORS: TableDefinition<(u64, &str), u64> = TableDefinition::new("cursors");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Named logs, in batches: `(log, last seq of the batch) -> [(seq, id,
/// time_ms, data)]`, ascending, at most `BATCH_RECORDS` each. A log's
/// batches never overlap.
const NLOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("nlogs");
/// Most records in one `NLOGS` batch (a read of one record decodes its
/// batch).
const BATCH_RECORDS: usize = 64;
/// `(log, id) -> seq`, for idempotent appends.
const NIDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("nlog_ids");
/// `(log, consumer) -> seq`.
const NCURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("nlog_cursors");
/// `log -> last seq ever moved into NLOGS` (numbering goes on after a
/// trim; staged records may be newer).
const NHEADS: TableDefinition<&str, u64> = TableDefinition::new("nlog_heads");
/// Named-log appends in commit order, before they move into `NLOGS`
/// ([`crate::staging`]): `key -> (log, seq, id, time_ms, data)`.
const NSTAGE: TableDefinition<u64, &[u8]> = TableDefinition::new("nlog_staging");

/// `META` key: every id handed out before the last commit is below it.
const IDS_BELOW: &str = "ids_below";

/// What a `LOGS` key holds.
const BATCH: u8 = 0;
/// A replacement for one entry.
const REWRITE: u8 = 1;
/// One entry finished out of order.
const REMOVED: u8 = 2;

/// The embedded store.
pub struct RedbStore {
    /// Every transaction runs under the read lock; shredding (a
    /// compaction, which wants no transaction open) takes the write lock.
    db: RwLock<Database>,
    /// Records erased or trimmed since the last shred: their bytes may
    /// still be in free pages of the file.
    dirty: AtomicU64,
    /// The next id to hand out.
    next_id: AtomicU64,
    /// `IDS_BELOW` as last committed.
    ids_committed: AtomicU64,
    /// A commit failed: the file's state is unknown until a restart
    /// repairs it, so nothing more is committed.
    failed: AtomicBool,
    /// `NSTAGE` as committed, in memory.
    staging: Staging,
    /// The database file.
    file: std::path::PathBuf,
}

fn io<E: Into<redb::Error>>(e: E) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(s) => StoreError::Corrupt(s),
        redb::Error::Io(e) => StoreError::Io(e.to_string()),
        other => StoreError::Io(other.to_string()),
    }
}

impl RedbStore {
    /// Opens the store in `dir`, creating it (durably) on first start.
    /// Refuses a directory that holds anything else, or a store of another
    /// format, with [`StoreError::DataDir`].
    pub fn open(dir: &Path) -> StoreResult<Arc<RedbStore>> {
        Self::open_with(dir, StagingLimits::default())
    }

    /// [`RedbStore::open`] with these limits for staged named-log appends.
    pub fn open_with(dir: &Path, limits: StagingLimits) -> StoreResult<Arc<RedbStore>> {
        let refuse = |problem: String| StoreError::DataDir {
            path: dir.to_owned(),
            problem,
        };
        data_dir::create(dir).map_err(|e| refuse(format!("cannot create it: {e}")))?;
        let file = dir.join(DB_FILE);
        let db = match data_dir::format(dir).map_err(|e| refuse(format!("cannot read it: {e}")))? {
            Some(f) if f == FORMAT || f == FORMAT_2 => {
                if !file.exists() {
                    return Err(refuse(format!(
                        "its FORMAT marker says {FORMAT} but {DB_FILE} is missing; \
                         restore it from a backup, or move the directory away to start empty"
                    )));
                }
                let db = Self::builder()
                    .open(&file)
                    .map_err(|e| refuse(format!("cannot open {DB_FILE}: {e}")))?;
                if f == FORMAT_2 {
                    Self::upgrade_from_2(dir, &db)
                        .map_err(|e| refuse(format!("cannot upgrade it from {FORMAT_2}: {e}")))?;
                }
                db
            }
            Some(f) => {
                return Err(refuse(format!(
                    "it holds a store of format {f:?}; this Courier reads {FORMAT:?}"
                )))
            }
            None => Self::init(dir, &file).map_err(|e| match e {
                StoreError::DataDir { .. } => e,
                other => refuse(format!("cannot initialise a store: {other}")),
            })?,
        };
        let below = {
            let r = db.begin_read().map_err(io)?;
            let meta = r.open_table(META).map_err(io)?;
            let v = meta.get(IDS_BELOW).map_err(io)?.map(|g| g.value());
            v.unwrap_or(1).max(1)
        };
        let staging = Staging::new(limits);
        staging.load(Self::staged(&db)?);
        Ok(Arc::new(RedbStore {
            db: RwLock::new(db),
            dirty: AtomicU64::new(0),
            file,
            next_id: AtomicU64::new(below),
            ids_committed: AtomicU64::new(below),
            failed: AtomicBool::new(false),
            staging,
        }))
    }

    /// Version 2 had no staging table and one `NLOGS` row per record: the
    /// table is added, and each row becomes a batch of one under the same
    /// key, in one transaction.
    fn upgrade_from_2(dir: &Path, db: &Database) -> StoreResult<()> {
        let tx = db.begin_write().map_err(io)?;
        tx.open_table(NSTAGE).map_err(io)?;
        {
            let mut t = tx.open_table(NLOGS).map_err(io)?;
            let mut after: Option<(String, u64)> = None;
            loop {
                let mut page = Vec::new();
                let range = match &after {
                    Some((log, seq)) => t.range((log.as_str(), *seq + 1)..),
                    None => t.range::<(&str, u64)>(..),
                };
                for kv in range.map_err(io)?.take(4096) {
                    let (k, v) = kv.map_err(io)?;
                    let (log, seq) = k.value();
                    let (id, time_ms, data): (Option<String>, u64, bytes::Bytes) =
                        postcard::from_bytes(v.value())?;
                    let r = LogRecord {
                        seq,
                        id,
                        time_ms,
                        data,
                    };
                    page.push((log.to_owned(), seq, encode_batch(&[&r])?));
                }
                let Some(last) = page.last() else { break };
                after = Some((last.0.clone(), last.1));
                for (log, seq, v) in &page {
                    t.insert((log.as_str(), *seq), v.as_slice()).map_err(io)?;
                }
            }
        }
        tx.commit().map_err(io)?;
        data_dir::set_format(dir, FORMAT).map_err(|e| StoreError::Io(e.to_string()))?;
        tracing::info!(path = %dir.display(), "store upgraded from {FORMAT_2} to {FORMAT}");
        Ok(())
    }

    /// The staging table's records, in key order.
    fn staged(db: &Database) -> StoreResult<Vec<Staged>> {
        let r = db.begin_read().map_err(io)?;
        let t = r.open_table(NSTAGE).map_err(io)?;
        let mut logs: std::collections::HashMap<String, Arc<str>> = Default::default();
        let mut out = Vec::new();
        for kv in t.iter().map_err(io)? {
            let (k, v) = kv.map_err(io)?;
            let (log, seq, id, time_ms, data): (String, u64, Option<String>, u64, bytes::Bytes) =
                postcard::from_bytes(v.value())?;
            let name = logs
                .entry(log)
                .or_insert_with_key(|l| Arc::from(l.as_str()))
                .clone();
            out.push((
                k.value(),
                name,
                LogRecord {
                    seq,
                    id,
                    time_ms,
                    data,
                },
            ));
        }
        Ok(out)
    }

    fn builder() -> redb::Builder {
        let mut b = Database::builder();
        b.set_cache_size(CACHE_BYTES);
        b
    }

    /// First start: the database with its tables, then the directory entry,
    /// then the marker. A directory without the marker has never been
    /// served from (the broker listens only after this), so an interrupted
    /// first start is started over.
    fn init(dir: &Path, file: &Path) -> StoreResult<Database> {
        let others = data_dir::foreign_entries(dir, &[DB_FILE])
            .map_err(|e| StoreError::Io(e.to_string()))?;
        if !others.is_empty() {
            let sled = others.iter().any(|n| n == "conf") && others.iter().any(|n| n == "db");
            let hint = if sled {
                "; it looks like the sled store of an earlier Courier, which this version \
                 cannot read: move it away to start empty"
            } else {
                "; a Courier data directory holds only Courier's files: choose an empty one"
            };
            return Err(StoreError::DataDir {
                path: dir.to_owned(),
                problem: format!("no FORMAT marker, and it holds {}{hint}", others.join(", ")),
            });
        }
        if file.exists() {
            tracing::warn!(path = %file.display(), "an interrupted first start left a store; starting it over");
            std::fs::remove_file(file).map_err(|e| StoreError::Io(e.to_string()))?;
        }
        let db = Self::builder().create(file).map_err(io)?;
        let tx = db.begin_write().map_err(io)?;
        {
            tx.open_table(SESSIONS).map_err(io)?;
            tx.open_table(MESSAGES).map_err(io)?;
            tx.open_table(MSG_REFS).map_err(io)?;
            tx.open_table(LOGS).map_err(io)?;
            tx.open_table(MARKS).map_err(io)?;
            tx.open_table(CURSORS).map_err(io)?;
            tx.open_table(RETAINED).map_err(io)?;
            tx.open_table(NLOGS).map_err(io)?;
            tx.open_table(NIDS).map_err(io)?;
            tx.open_table(NCURSORS).map_err(io)?;
            tx.open_table(NHEADS).map_err(io)?;
            tx.open_table(NSTAGE).map_err(io)?;
            tx.open_table(META)
                .map_err(io)?
                .insert(IDS_BELOW, 1)
                .map_err(io)?;
        }
        tx.commit().map_err(io)?;
        data_dir::sync(dir).map_err(|e| StoreError::Io(e.to_string()))?;
        data_dir::set_format(dir, FORMAT).map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(db)
    }

    fn read_tx(&self) -> StoreResult<Reader<'_>> {
        let db = self.db.read();
        let tx = db.begin_read().map_err(io)?;
        Ok(Reader { tx, _db: db })
    }

    fn apply(&self, writes: &mut dyn Iterator<Item = &Write>) -> StoreResult<()> {
        let db = self.db.read();
        let tx = db.begin_write().map_err(io)?;
        let mut step = self.staging.step();
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(io)?;
            let mut messages = tx.open_table(MESSAGES).map_err(io)?;
            let mut refs = tx.open_table(MSG_REFS).map_err(io)?;
            let mut logs = tx.open_table(LOGS).map_err(io)?;
            let mut marks = tx.open_table(MARKS).map_err(io)?;
            let mut cursors = tx.open_table(CURSORS).map_err(io)?;
            let mut retained = tx.open_table(RETAINED).map_err(io)?;
            let mut nlogs = tx.open_table(NLOGS).map_err(io)?;
            let mut nids = tx.open_table(NIDS).map_err(io)?;
            let mut ncursors = tx.open_table(NCURSORS).map_err(io)?;
            let mut nheads = tx.open_table(NHEADS).map_err(io)?;
            let mut stage = tx.open_table(NSTAGE).map_err(io)?;
            let mut named = Named {
                logs: &mut nlogs,
                ids: &mut nids,
                heads: &mut nheads,
                stage: &mut stage,
            };
            for w in writes {
                match w {
                    Write::PutSession(rec) => {
                        let v = postcard::to_stdvec(rec)?;
                        sessions
                            .insert(rec.client_id.as_str(), v.as_slice())
                            .map_err(io)?;
                    }
                    Write::DeleteSession { client_id, log } => {
                        let log = *log;
                        // Only the record of that session: a newer session of
                        // the same client (another log) keeps its record.
                        let current = match sessions.get(client_id.as_str()).map_err(io)? {
                            Some(v) => Some(postcard::from_bytes::<SessionRecord>(v.value())?.log),
                            None => None,
                        };
                        if current == Some(log) {
                            sessions.remove(client_id.as_str()).map_err(io)?;
                        }
                        // The bodies its live entries refer to lose a reference
                        // each (those at or below the floor, and those removed,
                        // were released when they were finished).
                        let floor = get_marks(&marks, log)?.1;
                        let shared = live_entries(&logs, log, floor)?
                            .into_iter()
                            .map(|(_, q)| q.msg_id)
                            .filter(|&id| id != 0);
                        for id in shared.collect::<Vec<_>>() {
                            change_refs(&mut messages, &mut refs, id, -1)?;
                        }
                        logs.retain_in((log, 0, BATCH)..=(log, u64::MAX, REMOVED), |_, _| false)
                            .map_err(io)?;
                        cursors
                            .retain_in((log, "")..(log.saturating_add(1), ""), |_, _| false)
                            .map_err(io)?;
                        marks.remove(log).map_err(io)?;
                    }
                    Write::PutMessage(id, m, n) => {
                        let (id, n) = (*id, *n);
                        let v = postcard::to_stdvec(&**m)?;
                        messages.insert(id, v.as_slice()).map_err(io)?;
                        refs.insert(id, n).map_err(io)?;
                    }
                    Write::MessageRefs(id, delta) => {
                        change_refs(&mut messages, &mut refs, *id, *delta)?;
                    }
                    Write::Append(log, entries) => {
                        let log = *log;
                        // Keyed by the highest sequence number: the batch is
                        // freed only once the floor has passed all of it.
                        if let Some(last) = entries.iter().map(|e| e.0).max() {
                            let v = postcard::to_stdvec(&entries)?;
                            logs.insert((log, last, BATCH), v.as_slice()).map_err(io)?;
                            let mut m = get_marks(&marks, log)?;
                            m.2 = m.2.max(last);
                            marks.insert(log, m).map_err(io)?;
                        }
                    }
                    Write::RewriteEntry(log, seq, rec) => {
                        let (log, seq) = (*log, *seq);
                        let v = postcard::to_stdvec(&rec)?;
                        logs.insert((log, seq, REWRITE), v.as_slice()).map_err(io)?;
                    }
                    Write::RemoveEntry(log, seq) => {
                        let (log, seq) = (*log, *seq);
                        logs.insert((log, seq, REMOVED), [].as_slice())
                            .map_err(io)?;
                    }
                    Write::Marks { log, sent, floor } => {
                        let (log, sent, floor) = (*log, *sent, *floor);
                        let old = get_marks(&marks, log)?;
                        // Marks only move up (a late, lower floor is ignored).
                        let new = (
                            sent.map_or(old.0, |s| s.max(old.0)),
                            floor.map_or(old.1, |f| f.max(old.1)),
                            old.2,
                            old.3,
                            old.4,
                        );
                        marks.insert(log, new).map_err(io)?;
                        if let Some(floor) = floor {
                            logs.retain_in((log, 0, BATCH)..=(log, floor, REMOVED), |_, _| false)
                                .map_err(io)?;
                        }
                    }
                    Write::QueueCounted { log, count, at } => {
                        let mut m = get_marks(&marks, *log)?;
                        (m.3, m.4) = (*count, *at);
                        marks.insert(*log, m).map_err(io)?;
                    }
                    Write::SetCursor { log, consumer, seq } => {
                        cursors
                            .insert((*log, consumer.as_str()), *seq)
                            .map_err(io)?;
                    }
                    Write::PutRetained(m) => {
                        let v = postcard::to_stdvec(&**m)?;
                        retained
                            .insert(m.topic.as_str(), v.as_slice())
                            .map_err(io)?;
                    }
                    Write::DeleteRetained(topic) => {
                        retained.remove(topic.as_str()).map_err(io)?;
                    }
                    Write::LogAppend { log, records } => {
                        let name: Arc<str> = Arc::from(log.as_str());
                        for r in records {
                            let key = step.key();
                            let v = postcard::to_stdvec(&(log, r.seq, &r.id, r.time_ms, &r.data))?;
                            named.stage.insert(key, v.as_slice()).map_err(io)?;
                            step.stage(key, name.clone(), r.clone());
                        }
                    }
                    Write::LogTrim { log, upto } => {
                        self.dirty.fetch_add(1, Ordering::Relaxed);
                        let upto = *upto;
                        // Its staged records join the log first, so the
                        // trim sees all of it.
                        self.staging
                            .move_log(log, &mut step, |all| named.move_in(all, false))?;
                        named.trim(log, upto)?;
                    }
                    Write::LogErase { log, seq } => {
                        self.dirty.fetch_add(1, Ordering::Relaxed);
                        // As for a trim: the record is in its log first.
                        self.staging
                            .move_log(log, &mut step, |all| named.move_in(all, false))?;
                        named.erase(log, *seq)?;
                    }
                    Write::LogCursor { log, consumer, seq } => {
                        ncursors
                            .insert((log.as_str(), consumer.as_str()), *seq)
                            .map_err(io)?;
                    }
                }
            }
            // Enough staged: the oldest move into their logs, many records
            // per page.
            let n = self.staging.to_move(&step);
            if n > 0 {
                self.staging
                    .move_oldest(n, &mut step, |oldest| named.move_in(oldest, true))?;
            }
            // Every id used by a write above was handed out before it was
            // journaled, so it is below the counter read now.
            let below = self.next_id.load(Ordering::Acquire);
            if below != self.ids_committed.load(Ordering::Relaxed) {
                tx.open_table(META)
                    .map_err(io)?
                    .insert(IDS_BELOW, below)
                    .map_err(io)?;
                self.ids_committed.store(below, Ordering::Relaxed);
            }
        }
        tx.commit().map_err(io)?;
        self.staging.apply(step);
        Ok(())
    }
}

/// The named-log tables of a write transaction.
struct Named<'a, 't> {
    logs: &'a mut redb::Table<'t, (&'static str, u64), &'static [u8]>,
    ids: &'a mut redb::Table<'t, (&'static str, &'static str), u64>,
    heads: &'a mut redb::Table<'t, &'static str, u64>,
    stage: &'a mut redb::Table<'t, u64, &'static [u8]>,
}

impl Named<'_, '_> {
    /// Moves staged records into their logs. `prefix`: they are the oldest
    /// staged (every key up to the last is theirs or gone already), so the
    /// staging table loses one range.
    fn move_in(&mut self, records: &[StagedRef<'_>], prefix: bool) -> StoreResult<()> {
        let mut sorted: Vec<&StagedRef<'_>> = records.iter().collect();
        sorted.sort_by(|a, b| (&**a.1, a.2.seq).cmp(&(&**b.1, b.2.seq)));
        // One batch per run of a log's records (at most BATCH_RECORDS).
        for run in sorted.chunk_by(|a, b| a.1 == b.1) {
            let log: &str = run[0].1;
            for batch in run.chunks(BATCH_RECORDS) {
                let recs: Vec<&LogRecord> = batch.iter().map(|s| s.2).collect();
                let last = recs.last().map_or(0, |r| r.seq);
                self.logs
                    .insert((log, last), encode_batch(&recs)?.as_slice())
                    .map_err(io)?;
                for r in &recs {
                    if let Some(id) = &r.id {
                        self.ids.insert((log, id.as_str()), r.seq).map_err(io)?;
                    }
                }
            }
            if let Some(last) = run.last() {
                self.heads.insert(log, last.2.seq).map_err(io)?;
            }
        }
        match records.iter().map(|r| r.0).max() {
            Some(last) if prefix => {
                self.stage.retain_in(..=last, |_, _| false).map_err(io)?;
            }
            _ => {
                for r in records {
                    self.stage.remove(r.0).map_err(io)?;
                }
            }
        }
        Ok(())
    }

    /// Removes `log`'s records up to `upto`, and their ids.
    fn trim(&mut self, log: &str, upto: u64) -> StoreResult<()> {
        let mut ids = Vec::new();
        for kv in self.logs.range((log, 0)..=(log, upto)).map_err(io)? {
            let (_, v) = kv.map_err(io)?;
            ids.extend(decode_batch(v.value())?.into_iter().filter_map(|r| r.id));
        }
        self.logs
            .retain_in((log, 0)..=(log, upto), |_, _| false)
            .map_err(io)?;
        // The batch that reaches past `upto` keeps only what lies above.
        if let Some((last, recs)) = self.batch_holding(log, upto + 1)? {
            if recs.first().is_some_and(|r| r.seq <= upto) {
                let (gone, kept): (Vec<LogRecord>, Vec<LogRecord>) =
                    recs.into_iter().partition(|r| r.seq <= upto);
                ids.extend(gone.into_iter().filter_map(|r| r.id));
                let kept: Vec<&LogRecord> = kept.iter().collect();
                self.logs
                    .insert((log, last), encode_batch(&kept)?.as_slice())
                    .map_err(io)?;
            }
        }
        for id in &ids {
            self.ids.remove((log, id.as_str())).map_err(io)?;
        }
        Ok(())
    }

    /// The first batch of `log` whose last record is at or after `seq`
    /// (the one that holds `seq`, if any does): its key and records.
    fn batch_holding(&self, log: &str, seq: u64) -> StoreResult<Option<(u64, Vec<LogRecord>)>> {
        match self
            .logs
            .range((log, seq)..=(log, u64::MAX))
            .map_err(io)?
            .next()
        {
            Some(kv) => {
                let (k, v) = kv.map_err(io)?;
                Ok(Some((k.value().1, decode_batch(v.value())?)))
            }
            None => Ok(None),
        }
    }

    /// Takes record `seq` out of the batch that holds it (a batch's key is
    /// its last record's seq, so a batch losing its last is keyed anew).
    fn erase(&mut self, log: &str, seq: u64) -> StoreResult<()> {
        let Some((key, recs)) = self.batch_holding(log, seq)? else {
            return Ok(());
        };
        if !recs.iter().any(|r| r.seq == seq) {
            return Ok(()); // trimmed or erased already
        }
        let kept: Vec<&LogRecord> = recs.iter().filter(|r| r.seq != seq).collect();
        self.logs.remove((log, key)).map_err(io)?;
        if let Some(last) = kept.last() {
            self.logs
                .insert((log, last.seq), encode_batch(&kept)?.as_slice())
                .map_err(io)?;
        }
        Ok(())
    }
}

/// A read transaction, with the lock that keeps a shred from starting
/// while it is open (`tx` is dropped first: fields drop in order).
struct Reader<'a> {
    tx: redb::ReadTransaction,
    _db: RwLockReadGuard<'a, Database>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = redb::ReadTransaction;

    fn deref(&self) -> &redb::ReadTransaction {
        &self.tx
    }
}

/// An `NLOGS` batch's bytes.
fn encode_batch(records: &[&LogRecord]) -> StoreResult<Vec<u8>> {
    let rows: Vec<(u64, &Option<String>, u64, &bytes::Bytes)> = records
        .iter()
        .map(|r| (r.seq, &r.id, r.time_ms, &r.data))
        .collect();
    Ok(postcard::to_stdvec(&rows)?)
}

/// The records of an `NLOGS` batch, ascending.
fn decode_batch(v: &[u8]) -> StoreResult<Vec<LogRecord>> {
    let rows: Vec<(u64, Option<String>, u64, bytes::Bytes)> = postcard::from_bytes(v)?;
    Ok(rows
        .into_iter()
        .map(|(seq, id, time_ms, data)| LogRecord {
            seq,
            id,
            time_ms,
            data,
        })
        .collect())
}

/// The live entries of `log` above `floor` (rewrites applied, removed
/// ones left out), in order, from a table of a read or a write transaction.
fn live_entries(
    t: &impl ReadableTable<(u64, u64, u8), &'static [u8]>,
    log: LogId,
    floor: u64,
) -> StoreResult<Vec<(u64, QueueRecord)>> {
    let mut live = std::collections::BTreeMap::new();
    let mut rewrites = Vec::new();
    let mut removed = Vec::new();
    for kv in t
        .range((log, 0, BATCH)..=(log, u64::MAX, REMOVED))
        .map_err(io)?
    {
        let (k, v) = kv.map_err(io)?;
        let (_, seq, kind) = k.value();
        match kind {
            BATCH => {
                let batch: Vec<(u64, QueueRecord)> = postcard::from_bytes(v.value())?;
                live.extend(batch.into_iter().filter(|(s, _)| *s > floor));
            }
            REWRITE => rewrites.push((seq, postcard::from_bytes::<QueueRecord>(v.value())?)),
            REMOVED => removed.push(seq),
            _ => return Err(StoreError::Corrupt(format!("log {log}: entry kind {kind}"))),
        }
    }
    for (seq, rec) in rewrites {
        if let Some(e) = live.get_mut(&seq) {
            *e = rec;
        }
    }
    for seq in removed {
        live.remove(&seq);
    }
    Ok(live.into_iter().collect())
}

/// A log's `(sent, floor, tail)`, zero if never set.
fn get_marks(t: &impl ReadableTable<u64, Marks>, log: LogId) -> StoreResult<Marks> {
    Ok(t.get(log)
        .map_err(io)?
        .map(|g| g.value())
        .unwrap_or_default())
}

/// Adds `delta` to message `id`'s reference count; at zero (or below) the
/// body and its count go.
fn change_refs(
    messages: &mut redb::Table<u64, &[u8]>,
    refs: &mut redb::Table<u64, u32>,
    id: u64,
    delta: i64,
) -> StoreResult<()> {
    let Some(n) = refs.get(id).map_err(io)?.map(|g| g.value()) else {
        // Already gone (released twice would be a bug; a body never
        // written because all its entries were cancelled is normal).
        return Ok(());
    };
    let n = n as i64 + delta;
    if n <= 0 {
        refs.remove(id).map_err(io)?;
        messages.remove(id).map_err(io)?;
    } else {
        refs.insert(id, n.min(u32::MAX as i64) as u32).map_err(io)?;
    }
    Ok(())
}

impl Store for RedbStore {
    /// Compacts the file (redb's `compact`, which moves every live page
    /// down over the free ones and truncates the rest): afterwards, no
    /// byte of an erased record is left in it (tested).
    fn shred(&self) -> StoreResult<Option<Shredded>> {
        let mut db = self.db.write();
        if self.dirty.swap(0, Ordering::AcqRel) == 0 {
            return Ok(None);
        }
        let size = || std::fs::metadata(&self.file).map_or(0, |m| m.len());
        let bytes_before = size();
        let started = std::time::Instant::now();
        // Each pass moves what it can; a few are enough.
        for _ in 0..8 {
            if !db.compact().map_err(io)? {
                break;
            }
        }
        Ok(Some(Shredded {
            took: started.elapsed(),
            bytes_before,
            bytes_after: size(),
        }))
    }

    fn commit(&self, writes: &mut dyn Iterator<Item = &Write>) -> StoreResult<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Io(
                "an earlier commit failed; restart the broker to recover the store".into(),
            ));
        }
        let r = self.apply(writes);
        if r.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        r
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::AcqRel)
    }

    fn load_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(SESSIONS).map_err(io)?;
        let mut out = Vec::new();
        for kv in t.iter().map_err(io)? {
            let (_, v) = kv.map_err(io)?;
            out.push(postcard::from_bytes(v.value())?);
        }
        Ok(out)
    }

    fn visit_sessions(
        &self,
        f: &mut dyn FnMut(SessionRecord) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let tx = self.read_tx()?;
        let t = tx.open_table(SESSIONS).map_err(io)?;
        for kv in t.iter().map_err(io)? {
            let (_, v) = kv.map_err(io)?;
            f(postcard::from_bytes(v.value())?)?;
        }
        Ok(())
    }

    fn marks(&self, log: LogId) -> StoreResult<LogMarks> {
        let tx = self.read_tx()?;
        let t = tx.open_table(MARKS).map_err(io)?;
        let (sent, floor, tail, counted, counted_at) = get_marks(&t, log)?;
        Ok(LogMarks {
            sent,
            floor,
            tail,
            counted,
            counted_at,
        })
    }

    fn entries(&self, log: LogId) -> StoreResult<Vec<(u64, QueueRecord)>> {
        let floor = self.marks(log)?.floor;
        let tx = self.read_tx()?;
        let t = tx.open_table(LOGS).map_err(io)?;
        live_entries(&t, log, floor)
    }

    fn cursor(&self, log: LogId, consumer: &str) -> StoreResult<u64> {
        let tx = self.read_tx()?;
        let t = tx.open_table(CURSORS).map_err(io)?;
        Ok(t.get((log, consumer))
            .map_err(io)?
            .map(|g| g.value())
            .unwrap_or(0))
    }

    fn get_message(&self, id: u64) -> StoreResult<Option<Message>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(MESSAGES).map_err(io)?;
        match t.get(id).map_err(io)? {
            Some(v) => Ok(Some(postcard::from_bytes(v.value())?)),
            None => Ok(None),
        }
    }

    fn message_ids(&self) -> StoreResult<Vec<u64>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(MESSAGES).map_err(io)?;
        let mut out = Vec::new();
        for kv in t.iter().map_err(io)? {
            out.push(kv.map_err(io)?.0.value());
        }
        Ok(out)
    }

    fn log_last(&self, log: &str) -> StoreResult<u64> {
        // Staged records are newer than the table's.
        if let Some(last) = self.staging.last(log) {
            return Ok(last);
        }
        // A move since the staging was read shows in the table.
        let tx = self.read_tx()?;
        let t = tx.open_table(NHEADS).map_err(io)?;
        Ok(t.get(log).map_err(io)?.map(|g| g.value()).unwrap_or(0))
    }

    fn log_read(&self, log: &str, from: u64, limit: usize) -> StoreResult<Vec<LogRecord>> {
        let (staged, first) = self.staging.read(log, from, limit);
        if first.is_some_and(|f| f <= from) {
            return Ok(staged); // nothing from `from` on is in the table
        }
        let tx = self.read_tx()?;
        let t = tx.open_table(NLOGS).map_err(io)?;
        let mut out = Vec::new();
        // Batches are keyed by their last record: the first one found may
        // start before `from`.
        'batches: for kv in t.range((log, from)..=(log, u64::MAX)).map_err(io)? {
            if out.len() >= limit {
                break;
            }
            let (_, v) = kv.map_err(io)?;
            for r in decode_batch(v.value())? {
                if r.seq >= from {
                    out.push(r);
                    if out.len() >= limit {
                        break 'batches;
                    }
                }
            }
        }
        // What moved in since the staging was read is in both.
        let after = out.last().map_or(0, |r| r.seq);
        let room = limit - out.len();
        out.extend(staged.into_iter().filter(|r| r.seq > after).take(room));
        Ok(out)
    }

    fn log_read_back(&self, log: &str, before: u64, limit: usize) -> StoreResult<Vec<LogRecord>> {
        let (mut out, first) = self.staging.read_back(log, before, limit);
        if out.len() >= limit {
            return Ok(out);
        }
        // The table holds only what is older than the staged records.
        let below = first.map_or(before, |f| f.min(before));
        let tx = self.read_tx()?;
        let t = tx.open_table(NLOGS).map_err(io)?;
        // The batch holding `below - 1` may end at or after `below`; then
        // the batches wholly below, newest first.
        let reaching = t.range((log, below)..=(log, u64::MAX)).map_err(io)?.next();
        let older = t.range((log, 0)..(log, below)).map_err(io)?.rev();
        for kv in reaching.into_iter().chain(older) {
            let (_, v) = kv.map_err(io)?;
            for r in decode_batch(v.value())?.into_iter().rev() {
                if out.len() >= limit {
                    return Ok(out);
                }
                if r.seq < below {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    fn log_seq_of(&self, log: &str, id: &str) -> StoreResult<Option<u64>> {
        if let Some(seq) = self.staging.seq_of(log, id) {
            return Ok(Some(seq));
        }
        let tx = self.read_tx()?;
        let t = tx.open_table(NIDS).map_err(io)?;
        Ok(t.get((log, id)).map_err(io)?.map(|g| g.value()))
    }

    fn log_cursors(&self, log: &str) -> StoreResult<Vec<(String, u64)>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(NCURSORS).map_err(io)?;
        let mut out = Vec::new();
        for kv in t.range((log, "")..).map_err(io)? {
            let (k, v) = kv.map_err(io)?;
            let (l, consumer) = k.value();
            if l != log {
                break;
            }
            out.push((consumer.to_owned(), v.value()));
        }
        Ok(out)
    }

    fn load_retained(&self) -> StoreResult<Vec<Message>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(RETAINED).map_err(io)?;
        let mut out = Vec::new();
        for kv in t.iter().map_err(io)? {
            let (_, v) = kv.map_err(io)?;
            out.push(postcard::from_bytes(v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(msg_id: u64) -> QueueRecord {
        QueueRecord::new(msg_id, 1)
    }

    fn seqs(s: &RedbStore, log: LogId) -> Vec<u64> {
        s.entries(log).unwrap().iter().map(|e| e.0).collect()
    }

    fn commit(s: &RedbStore, writes: Vec<Write>) {
        s.commit(&mut writes.iter()).unwrap();
    }

    fn marks(log: LogId, sent: Option<u64>, floor: Option<u64>) -> Write {
        Write::Marks { log, sent, floor }
    }

    #[test]
    fn batches_floor_and_removals_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let s = RedbStore::open(&data).unwrap();
            commit(
                &s,
                vec![
                    Write::Append(7, vec![(1, rec(10)), (2, rec(20)), (3, rec(30))]),
                    Write::Append(7, vec![(4, rec(40)), (6, rec(60))]),
                    Write::Append(8, vec![(1, rec(99))]),
                    // Out of order: 4 is finished while 1 is not.
                    Write::RemoveEntry(7, 4),
                    Write::RewriteEntry(
                        7,
                        6,
                        QueueRecord {
                            released: true,
                            ..rec(60)
                        },
                    ),
                    marks(7, Some(4), Some(2)),
                    Write::SetCursor {
                        log: 7,
                        consumer: "phone".into(),
                        seq: 1,
                    },
                ],
            );
        }
        let s = RedbStore::open(&data).unwrap();
        assert_eq!(seqs(&s, 7), vec![3, 6]);
        let e = s.entries(7).unwrap();
        assert_eq!(e[0].1.msg_id, 30);
        assert!(e[1].1.released, "rewrite replaces the batched entry");
        assert_eq!(s.cursor(7, "phone").unwrap(), 1);
        assert_eq!(s.cursor(7, "tablet").unwrap(), 0);
        assert_eq!(
            s.marks(7).unwrap(),
            LogMarks {
                sent: 4,
                floor: 2,
                tail: 6,
                ..LogMarks::default()
            }
        );

        // The floor passing a batch frees it, with removals and rewrites.
        commit(&s, vec![marks(7, None, Some(6))]);
        assert_eq!(s.marks(7).unwrap().sent, 4, "unchanged when not given");
        assert!(seqs(&s, 7).is_empty());
        commit(&s, vec![Write::Append(7, vec![(7, rec(70))])]);
        assert_eq!(seqs(&s, 7), vec![7]);

        commit(
            &s,
            vec![Write::DeleteSession {
                client_id: "x".into(),
                log: 7,
            }],
        );
        assert!(seqs(&s, 7).is_empty());
        assert_eq!(s.marks(7).unwrap(), LogMarks::default());
        assert_eq!(s.cursor(7, "phone").unwrap(), 0);
        assert_eq!(seqs(&s, 8), vec![1]);
    }

    #[test]
    fn deleting_an_old_session_leaves_a_newer_record_of_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let rec = |log| SessionRecord {
            client_id: "phone".into(),
            username: None,
            log,
            expiry_secs: 3600,
            disconnected_at: None,
            subscriptions: vec![],
        };
        commit(&s, vec![Write::PutSession(rec(2))]);
        commit(
            &s,
            vec![Write::DeleteSession {
                client_id: "phone".into(),
                log: 1,
            }],
        );
        assert_eq!(s.load_sessions().unwrap(), vec![rec(2)]);
        commit(
            &s,
            vec![Write::DeleteSession {
                client_id: "phone".into(),
                log: 2,
            }],
        );
        assert!(s.load_sessions().unwrap().is_empty());
    }

    #[test]
    fn ids_are_nonzero_and_never_reused_after_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let used = {
            let s = RedbStore::open(&data).unwrap();
            let a = s.next_id();
            let b = s.next_id();
            assert!(a > 0 && b > a);
            commit(&s, vec![]);
            b
        };
        let s = RedbStore::open(&data).unwrap();
        assert!(s.next_id() > used);
    }

    #[test]
    fn a_foreign_or_newer_directory_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let sled = dir.path().join("sled");
        std::fs::create_dir(&sled).unwrap();
        std::fs::write(sled.join("conf"), b"segment_size: 524288").unwrap();
        std::fs::write(sled.join("db"), b"x").unwrap();
        let e = RedbStore::open(&sled).err().expect("refused").to_string();
        assert!(e.contains("sled store of an earlier Courier"), "{e}");
        assert!(!sled.join(DB_FILE).exists(), "nothing created");

        let newer = dir.path().join("newer");
        std::fs::create_dir(&newer).unwrap();
        std::fs::write(newer.join("FORMAT"), b"courier-store/redb/9\n").unwrap();
        let e = RedbStore::open(&newer).err().expect("refused").to_string();
        assert!(e.contains("courier-store/redb/9"), "{e}");

        let gone = dir.path().join("gone");
        drop(RedbStore::open(&gone).unwrap());
        std::fs::remove_file(gone.join(DB_FILE)).unwrap();
        let e = RedbStore::open(&gone).err().expect("refused").to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn an_interrupted_first_start_is_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        // A half-written database file and no marker.
        std::fs::write(data.join(DB_FILE), [0u8; 100]).unwrap();
        let s = RedbStore::open(&data).unwrap();
        assert!(s.load_sessions().unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(data.join("FORMAT")).unwrap().trim(),
            FORMAT
        );
    }

    /// Enough appends to many logs that staged records move into their
    /// logs, with trims in between: every read, both ways, sees each log
    /// whole and in order, before and after a reopen.
    #[test]
    fn named_logs_read_the_same_across_staging_moves_trims_and_reopen() {
        named_logs_across_moves(StagingLimits::default());
        // Tiny limits: a move every few commits, trims cutting batches.
        named_logs_across_moves(StagingLimits {
            records: 64,
            bytes: 1 << 16,
        });
    }

    fn named_logs_across_moves(limits: StagingLimits) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let logs = ["c/a", "i/bob", "i/carol", "c/b"];
        let mut last = [0u64; 4];
        let mut trimmed = [0u64; 4];
        let check = |s: &RedbStore, last: &[u64; 4], trimmed: &[u64; 4]| {
            for (i, log) in logs.iter().enumerate() {
                let want: Vec<u64> = (trimmed[i] + 1..=last[i]).collect();
                let mut got = Vec::new();
                let mut from = 0;
                loop {
                    let page = s.log_read(log, from, 97).unwrap();
                    let Some(l) = page.last() else { break };
                    from = l.seq + 1;
                    got.extend(page.iter().map(|r| r.seq));
                }
                assert_eq!(got, want, "{log} forward");
                let mut back = Vec::new();
                let mut before = u64::MAX;
                loop {
                    let page = s.log_read_back(log, before, 89).unwrap();
                    let Some(l) = page.last() else { break };
                    before = l.seq;
                    back.extend(page.iter().map(|r| r.seq));
                }
                back.reverse();
                assert_eq!(back, want, "{log} backward");
                assert_eq!(s.log_last(log).unwrap(), last[i], "{log} last");
                if last[i] > trimmed[i] {
                    let seq = last[i];
                    assert_eq!(
                        s.log_seq_of(log, &format!("{log}#{seq}")).unwrap(),
                        Some(seq)
                    );
                    let seq = trimmed[i] + 1;
                    assert_eq!(
                        s.log_seq_of(log, &format!("{log}#{seq}")).unwrap(),
                        Some(seq)
                    );
                }
                if trimmed[i] > 0 {
                    let seq = trimmed[i];
                    assert_eq!(s.log_seq_of(log, &format!("{log}#{seq}")).unwrap(), None);
                }
            }
        };
        let mut s = RedbStore::open_with(&data, limits).unwrap();
        for round in 0..30u64 {
            let mut writes = Vec::new();
            for n in 0..700u64 {
                let i = ((n * 7 + round) % 4) as usize;
                last[i] += 1;
                let seq = last[i];
                writes.push(Write::LogAppend {
                    log: logs[i].to_owned(),
                    records: vec![LogRecord {
                        seq,
                        id: Some(format!("{}#{seq}", logs[i])),
                        time_ms: round,
                        data: bytes::Bytes::from(vec![round as u8; 40]),
                    }],
                });
            }
            if round % 7 == 3 {
                let i = (round % 4) as usize;
                trimmed[i] = last[i] - 50;
                writes.push(Write::LogTrim {
                    log: logs[i].to_owned(),
                    upto: trimmed[i],
                });
            }
            commit(&s, writes);
            check(&s, &last, &trimmed);
            if round % 10 == 9 {
                drop(s);
                s = RedbStore::open_with(&data, limits).unwrap();
                check(&s, &last, &trimmed);
            }
        }
        let staged = RedbStore::staged(&s.db.read()).unwrap().len();
        assert!(
            staged > 0 && staged <= 8192 + 700,
            "moves happened: {staged} staged"
        );
    }

    #[test]
    fn a_version_2_directory_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let s = RedbStore::open(&data).unwrap();
            let tx = s.db.read().begin_write().unwrap();
            tx.open_table(NLOGS)
                .unwrap()
                .insert(
                    ("c/x", 1),
                    postcard::to_stdvec(&(None::<String>, 5u64, bytes::Bytes::from_static(b"hi")))
                        .unwrap()
                        .as_slice(),
                )
                .unwrap();
            tx.open_table(NHEADS).unwrap().insert("c/x", 1).unwrap();
            tx.delete_table(NSTAGE).unwrap();
            tx.commit().unwrap();
        }
        data_dir::set_format(&data, FORMAT_2).unwrap();
        let s = RedbStore::open(&data).unwrap();
        assert_eq!(
            std::fs::read_to_string(data.join("FORMAT")).unwrap().trim(),
            FORMAT
        );
        assert_eq!(s.log_last("c/x").unwrap(), 1);
        assert_eq!(&s.log_read("c/x", 0, 10).unwrap()[0].data[..], b"hi");
    }

    #[test]
    fn a_second_broker_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RedbStore::open(dir.path()).unwrap();
        let e = RedbStore::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("cannot open"), "{e}");
    }

    /// How often `marker` occurs in the store's file.
    fn in_file(data: &Path, marker: &[u8]) -> usize {
        let bytes = std::fs::read(data.join(DB_FILE)).unwrap();
        bytes.windows(marker.len()).filter(|w| *w == marker).count()
    }

    #[test]
    fn a_shred_leaves_no_byte_of_an_erased_record_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let s = RedbStore::open_with(
            &data,
            StagingLimits {
                records: 512,
                bytes: 1 << 20,
            },
        )
        .unwrap();
        assert_eq!(s.shred().unwrap(), None, "nothing erased yet");
        // 4,000 records in 40 commits (some moved out of staging, some
        // not); every fourth is erased.
        let mut seq = 0;
        for round in 0..40 {
            let recs = (0..100)
                .map(|i| {
                    seq += 1;
                    let tag = if seq % 4 == 1 { "GONE" } else { "KEPT" };
                    LogRecord {
                        seq,
                        id: None,
                        time_ms: 1,
                        data: format!("{tag}:{round}:{i}:{}", "x".repeat(200)).into(),
                    }
                })
                .collect();
            commit(
                &s,
                vec![Write::LogAppend {
                    log: "c/a".into(),
                    records: recs,
                }],
            );
        }
        let erase = (1..=seq)
            .filter(|s| s % 4 == 1)
            .map(|seq| Write::LogErase {
                log: "c/a".into(),
                seq,
            })
            .collect();
        commit(&s, erase);
        for _ in 0..3 {
            commit(&s, vec![]);
        }
        // Unreadable, but (without a shred) still in free pages.
        assert_eq!(s.log_read("c/a", 0, 10_000).unwrap().len(), 3000);
        assert!(in_file(&data, b"GONE:") > 0, "the case a shred is for");

        let done = s.shred().unwrap().expect("something to shred");
        assert_eq!(in_file(&data, b"GONE:"), 0);
        assert!(done.bytes_after <= done.bytes_before);
        // What was kept reads the same, also after a reopen.
        let check = |s: &RedbStore| {
            let all = s.log_read("c/a", 0, 10_000).unwrap();
            assert_eq!(all.len(), 3000);
            assert!(all
                .iter()
                .all(|r| r.seq % 4 != 1 && r.data.starts_with(b"KEPT:")));
        };
        check(&s);
        assert_eq!(s.shred().unwrap(), None, "nothing erased since");
        commit(
            &s,
            vec![Write::LogAppend {
                log: "c/a".into(),
                records: vec![LogRecord {
                    seq: seq + 1,
                    id: None,
                    time_ms: 1,
                    data: bytes::Bytes::from_static(b"after"),
                }],
            }],
        );
        drop(s);
        let s = RedbStore::open(&data).unwrap();
        assert_eq!(s.log_last("c/a").unwrap(), seq + 1);
        let all = s.log_read("c/a", 0, 10_000).unwrap();
        assert_eq!(all.len(), 3001);
    }
}
