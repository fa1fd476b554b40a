//! Storage traits and their sled implementation.
//!
//! Everything durable is one of four things: session records, messages
//! (stored once, however many sessions they are queued for), per-key ordered
//! logs with consumer cursors (a session's queue is one log), and retained
//! messages. Writes are visible at once and become durable at the next
//! [`Store::sync`]; the broker's group commit calls it and sends
//! acknowledgements only after it returns.

use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::router::SubOptions;

/// Identifies one ordered log (for now: one per persistent session).
pub type LogId = u64;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be encoded or decoded.
    #[error("record codec: {0}")]
    Codec(#[from] postcard::Error),
    /// A key in the store has the wrong shape.
    #[error("corrupt key in tree {0}")]
    CorruptKey(&'static str),
}

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A persistent session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Client identifier.
    pub client_id: String,
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
}

/// Durable, ordered per-key logs with consumer cursors.
///
/// Entries are appended in batches (a batch is stored as one record, so one
/// commit costs one write per log, not one per entry). Finishing entries in
/// order only moves the log's floor; an entry finished out of order above
/// the floor leaves a small tombstone until the floor passes it.
pub trait LogStore: Send + Sync {
    /// Appends `entries` (ascending, each above every earlier entry and above
    /// the floor) to `log`.
    fn append(&self, log: LogId, entries: &[(u64, QueueRecord)]) -> StoreResult<()>;
    /// Replaces entry `seq` of `log` (its QoS 2 state).
    fn rewrite_entry(&self, log: LogId, seq: u64, rec: &QueueRecord) -> StoreResult<()>;
    /// Removes entry `seq` of `log` (finished out of order, or unreadable).
    fn remove_entry(&self, log: LogId, seq: u64) -> StoreResult<()>;
    /// Moves `log`'s marks: sent up to `sent`, finished up to `floor`
    /// (`None`: unchanged). Frees what lies wholly at or below the floor.
    fn advance(&self, log: LogId, sent: Option<u64>, floor: Option<u64>) -> StoreResult<()>;
    /// `log`'s marks (zero if never set).
    fn marks(&self, log: LogId) -> StoreResult<LogMarks>;
    /// The live entries of `log` (above the floor, not removed), in order.
    fn entries(&self, log: LogId) -> StoreResult<Vec<(u64, QueueRecord)>>;
    /// Removes a whole log and its cursors.
    fn drop_log(&self, log: LogId) -> StoreResult<()>;
    /// Records how far `consumer` has read in `log`.
    fn set_cursor(&self, log: LogId, consumer: &str, seq: u64) -> StoreResult<()>;
    /// How far `consumer` has read in `log` (0 if never set).
    fn cursor(&self, log: LogId, consumer: &str) -> StoreResult<u64>;
}

/// Everything the broker persists.
pub trait Store: LogStore {
    /// Writes a session record.
    fn put_session(&self, rec: &SessionRecord) -> StoreResult<()>;
    /// Deletes a session record and its queue log.
    fn delete_session(&self, client_id: &str, log: LogId) -> StoreResult<()>;
    /// All session records.
    fn load_sessions(&self) -> StoreResult<Vec<SessionRecord>>;
    /// A fresh id, unique across restarts (message ids, log ids).
    fn next_id(&self) -> StoreResult<u64>;
    /// Stores a message body under `id`.
    fn put_message(&self, id: u64, msg: &Message) -> StoreResult<()>;
    /// Reads a message body.
    fn get_message(&self, id: u64) -> StoreResult<Option<Message>>;
    /// Deletes a message body once no queue refers to it.
    fn delete_message(&self, id: u64) -> StoreResult<()>;
    /// Ids of every stored message body.
    fn message_ids(&self) -> StoreResult<Vec<u64>>;
    /// Sets or replaces the retained message of its topic.
    fn put_retained(&self, msg: &Message) -> StoreResult<()>;
    /// Clears the retained message of `topic`.
    fn delete_retained(&self, topic: &str) -> StoreResult<()>;
    /// All retained messages.
    fn load_retained(&self) -> StoreResult<Vec<Message>>;
    /// Makes every earlier write durable (fsync). Blocking.
    fn sync(&self) -> StoreResult<()>;
}

/// The embedded store, on sled.
pub struct SledStore {
    db: sled::Db,
    sessions: sled::Tree,
    messages: sled::Tree,
    logs: sled::Tree,
    marks: sled::Tree,
    cursors: sled::Tree,
    retained: sled::Tree,
}

/// What a key in the `logs` tree holds. Keys are `log ++ seq ++ kind`, so
/// everything at or below a floor is one contiguous range.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// A batch of entries; `seq` is the last entry's.
    Batch = 0,
    /// A replacement for entry `seq`.
    Rewrite = 1,
    /// Entry `seq` is finished.
    Removed = 2,
}

fn log_key(log: LogId, seq: u64, kind: Kind) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&log.to_be_bytes());
    k[8..16].copy_from_slice(&seq.to_be_bytes());
    k[16] = kind as u8;
    k
}

fn be_u64(bytes: &[u8], tree: &'static str) -> StoreResult<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::CorruptKey(tree))?;
    Ok(u64::from_be_bytes(arr))
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &std::path::Path) -> StoreResult<SledStore> {
        // sled's own background flush is off: durability is driven by the
        // broker's group commit, or its periodic flusher.
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        Ok(SledStore {
            sessions: db.open_tree("sessions")?,
            messages: db.open_tree("messages")?,
            logs: db.open_tree("logs")?,
            marks: db.open_tree("marks")?,
            cursors: db.open_tree("cursors")?,
            retained: db.open_tree("retained")?,
            db,
        })
    }
}

impl LogStore for SledStore {
    fn append(&self, log: LogId, entries: &[(u64, QueueRecord)]) -> StoreResult<()> {
        // Keyed by the highest sequence number: the batch is freed only once
        // the floor has passed all of it.
        let Some(last) = entries.iter().map(|e| e.0).max() else {
            return Ok(());
        };
        self.logs.insert(
            log_key(log, last, Kind::Batch),
            postcard::to_stdvec(entries)?,
        )?;
        Ok(())
    }

    fn rewrite_entry(&self, log: LogId, seq: u64, rec: &QueueRecord) -> StoreResult<()> {
        self.logs
            .insert(log_key(log, seq, Kind::Rewrite), postcard::to_stdvec(rec)?)?;
        Ok(())
    }

    fn remove_entry(&self, log: LogId, seq: u64) -> StoreResult<()> {
        self.logs.insert(log_key(log, seq, Kind::Removed), &[])?;
        Ok(())
    }

    fn advance(&self, log: LogId, sent: Option<u64>, floor: Option<u64>) -> StoreResult<()> {
        // Under load both move in every commit; otherwise read the other.
        let old = match (sent, floor) {
            (Some(_), Some(_)) => LogMarks::default(),
            _ => self.marks(log)?,
        };
        let new = LogMarks {
            sent: sent.unwrap_or(old.sent),
            floor: floor.unwrap_or(old.floor),
        };
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&new.sent.to_be_bytes());
        v[8..].copy_from_slice(&new.floor.to_be_bytes());
        self.marks.insert(log.to_be_bytes(), &v)?;
        let Some(floor) = floor else {
            return Ok(());
        };
        let range = log_key(log, 0, Kind::Batch)..=log_key(log, floor, Kind::Removed);
        // Collected first, then removed one by one: sled's `apply_batch`
        // takes a write lock that waits for every operation in flight,
        // which measured far slower here.
        let keys: Vec<_> = self.logs.range(range).keys().collect::<Result<_, _>>()?;
        for k in keys {
            self.logs.remove(k)?;
        }
        Ok(())
    }

    fn entries(&self, log: LogId) -> StoreResult<Vec<(u64, QueueRecord)>> {
        let floor = self.marks(log)?.floor;
        let mut live = std::collections::BTreeMap::new();
        let mut rewrites = Vec::new();
        let mut removed = Vec::new();
        for kv in self.logs.scan_prefix(log.to_be_bytes()) {
            let (k, v) = kv?;
            if k.len() != 17 {
                return Err(StoreError::CorruptKey("logs"));
            }
            let seq = be_u64(&k[8..16], "logs")?;
            match k[16] {
                0 => {
                    let batch: Vec<(u64, QueueRecord)> = postcard::from_bytes(&v)?;
                    live.extend(batch.into_iter().filter(|(s, _)| *s > floor));
                }
                1 => rewrites.push((seq, postcard::from_bytes::<QueueRecord>(&v)?)),
                2 => removed.push(seq),
                _ => return Err(StoreError::CorruptKey("logs")),
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

    fn drop_log(&self, log: LogId) -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        for k in self.logs.scan_prefix(log.to_be_bytes()).keys() {
            batch.remove(k?);
        }
        self.logs.apply_batch(batch)?;
        let mut batch = sled::Batch::default();
        for k in self.cursors.scan_prefix(log.to_be_bytes()).keys() {
            batch.remove(k?);
        }
        self.cursors.apply_batch(batch)?;
        self.marks.remove(log.to_be_bytes())?;
        Ok(())
    }

    fn marks(&self, log: LogId) -> StoreResult<LogMarks> {
        let Some(v) = self.marks.get(log.to_be_bytes())? else {
            return Ok(LogMarks::default());
        };
        if v.len() != 16 {
            return Err(StoreError::CorruptKey("marks"));
        }
        Ok(LogMarks {
            sent: be_u64(&v[..8], "marks")?,
            floor: be_u64(&v[8..], "marks")?,
        })
    }

    fn set_cursor(&self, log: LogId, consumer: &str, seq: u64) -> StoreResult<()> {
        let mut k = log.to_be_bytes().to_vec();
        k.extend_from_slice(consumer.as_bytes());
        self.cursors.insert(k, &seq.to_be_bytes())?;
        Ok(())
    }

    fn cursor(&self, log: LogId, consumer: &str) -> StoreResult<u64> {
        let mut k = log.to_be_bytes().to_vec();
        k.extend_from_slice(consumer.as_bytes());
        match self.cursors.get(k)? {
            Some(v) => be_u64(&v, "cursors"),
            None => Ok(0),
        }
    }
}

impl Store for SledStore {
    fn put_session(&self, rec: &SessionRecord) -> StoreResult<()> {
        self.sessions
            .insert(rec.client_id.as_bytes(), postcard::to_stdvec(rec)?)?;
        Ok(())
    }

    fn delete_session(&self, client_id: &str, log: LogId) -> StoreResult<()> {
        self.sessions.remove(client_id.as_bytes())?;
        self.drop_log(log)
    }

    fn load_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        self.sessions
            .iter()
            .values()
            .map(|v| Ok(postcard::from_bytes(&v?)?))
            .collect()
    }

    fn next_id(&self) -> StoreResult<u64> {
        // generate_id never returns 0 after +1; 0 means "not stored".
        Ok(self.db.generate_id()? + 1)
    }

    fn put_message(&self, id: u64, msg: &Message) -> StoreResult<()> {
        self.messages
            .insert(id.to_be_bytes(), postcard::to_stdvec(msg)?)?;
        Ok(())
    }

    fn get_message(&self, id: u64) -> StoreResult<Option<Message>> {
        match self.messages.get(id.to_be_bytes())? {
            Some(v) => Ok(Some(postcard::from_bytes(&v)?)),
            None => Ok(None),
        }
    }

    fn delete_message(&self, id: u64) -> StoreResult<()> {
        self.messages.remove(id.to_be_bytes())?;
        Ok(())
    }

    fn message_ids(&self) -> StoreResult<Vec<u64>> {
        self.messages
            .iter()
            .keys()
            .map(|k| be_u64(&k?, "messages"))
            .collect()
    }

    fn put_retained(&self, msg: &Message) -> StoreResult<()> {
        self.retained
            .insert(msg.topic.as_bytes(), postcard::to_stdvec(msg)?)?;
        Ok(())
    }

    fn delete_retained(&self, topic: &str) -> StoreResult<()> {
        self.retained.remove(topic.as_bytes())?;
        Ok(())
    }

    fn load_retained(&self) -> StoreResult<Vec<Message>> {
        self.retained
            .iter()
            .values()
            .map(|v| Ok(postcard::from_bytes(&v?)?))
            .collect()
    }

    fn sync(&self) -> StoreResult<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(msg_id: u64) -> QueueRecord {
        QueueRecord::new(msg_id, 1)
    }

    fn seqs(s: &SledStore, log: LogId) -> Vec<u64> {
        s.entries(log).unwrap().iter().map(|e| e.0).collect()
    }

    #[test]
    fn batches_floor_and_removals_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.append(7, &[(1, rec(10)), (2, rec(20)), (3, rec(30))])
                .unwrap();
            s.append(7, &[(4, rec(40)), (6, rec(60))]).unwrap();
            s.append(8, &[(1, rec(99))]).unwrap();
            // Out of order: 4 is finished while 1 is not.
            s.remove_entry(7, 4).unwrap();
            s.rewrite_entry(
                7,
                6,
                &QueueRecord {
                    released: true,
                    ..rec(60)
                },
            )
            .unwrap();
            s.advance(7, Some(4), Some(2)).unwrap();
            s.set_cursor(7, "phone", 1).unwrap();
            s.sync().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(seqs(&s, 7), vec![3, 6]);
        let e = s.entries(7).unwrap();
        assert_eq!(e[0].1.msg_id, 30);
        assert!(e[1].1.released, "rewrite replaces the batched entry");
        assert_eq!(s.cursor(7, "phone").unwrap(), 1);
        assert_eq!(s.cursor(7, "tablet").unwrap(), 0);
        assert_eq!(s.marks(7).unwrap(), LogMarks { sent: 4, floor: 2 });

        // The floor passing a batch frees it, with removals and rewrites.
        s.advance(7, None, Some(6)).unwrap();
        assert_eq!(s.marks(7).unwrap().sent, 4, "unchanged when not given");
        assert!(seqs(&s, 7).is_empty());
        assert_eq!(s.logs.scan_prefix(7u64.to_be_bytes()).count(), 0);
        s.append(7, &[(7, rec(70))]).unwrap();
        assert_eq!(seqs(&s, 7), vec![7]);

        s.drop_log(7).unwrap();
        assert!(seqs(&s, 7).is_empty());
        assert_eq!(s.marks(7).unwrap(), LogMarks::default());
        assert_eq!(seqs(&s, 8), vec![1]);
    }

    #[test]
    fn ids_are_unique_and_nonzero() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let a = s.next_id().unwrap();
        let b = s.next_id().unwrap();
        assert!(a > 0 && b > a);
    }
}
