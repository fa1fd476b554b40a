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

/// Cursor name under which a session's log records the highest sequence
/// number sent; entries at or below it are resent as duplicates after a
/// restart.
pub const SENT_CURSOR: &str = "sent";

/// Durable, ordered per-key logs with consumer cursors.
pub trait LogStore: Send + Sync {
    /// Writes entry `seq` of `log` (insert or overwrite).
    fn put_entry(&self, log: LogId, seq: u64, rec: &QueueRecord) -> StoreResult<()>;
    /// Removes entry `seq` of `log` (acknowledged, expired or dropped).
    fn remove_entry(&self, log: LogId, seq: u64) -> StoreResult<()>;
    /// Up to `limit` entries with sequence number greater than `after`, in order.
    fn read_after(
        &self,
        log: LogId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, QueueRecord)>>;
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
    cursors: sled::Tree,
    retained: sled::Tree,
}

fn log_key(log: LogId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&log.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
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
            cursors: db.open_tree("cursors")?,
            retained: db.open_tree("retained")?,
            db,
        })
    }
}

impl LogStore for SledStore {
    fn put_entry(&self, log: LogId, seq: u64, rec: &QueueRecord) -> StoreResult<()> {
        self.logs
            .insert(log_key(log, seq), postcard::to_stdvec(rec)?)?;
        Ok(())
    }

    fn remove_entry(&self, log: LogId, seq: u64) -> StoreResult<()> {
        self.logs.remove(log_key(log, seq))?;
        Ok(())
    }

    fn read_after(
        &self,
        log: LogId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, QueueRecord)>> {
        let start = log_key(log, after.saturating_add(1));
        let end = log_key(log, u64::MAX);
        let mut out = Vec::new();
        for kv in self.logs.range(start..=end).take(limit) {
            let (k, v) = kv?;
            let seq = be_u64(&k[8..], "logs")?;
            out.push((seq, postcard::from_bytes(&v)?));
        }
        Ok(out)
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
        Ok(())
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

    #[test]
    fn logs_are_ordered_per_key_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            for seq in [3u64, 1, 2] {
                s.put_entry(7, seq, &rec(seq * 10)).unwrap();
            }
            s.put_entry(8, 1, &rec(99)).unwrap();
            s.remove_entry(7, 2).unwrap();
            s.set_cursor(7, "phone", 1).unwrap();
            s.sync().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let got: Vec<u64> = s
            .read_after(7, 0, 10)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(got, vec![1, 3]);
        assert_eq!(s.read_after(7, 1, 10).unwrap()[0].1.msg_id, 30);
        assert_eq!(s.cursor(7, "phone").unwrap(), 1);
        assert_eq!(s.cursor(7, "tablet").unwrap(), 0);
        s.drop_log(7).unwrap();
        assert!(s.read_after(7, 0, 10).unwrap().is_empty());
        assert_eq!(s.read_after(8, 0, 10).unwrap().len(), 1);
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
