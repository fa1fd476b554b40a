//! The device's local store (one redb file, every write fsynced before it
//! is relied on): the outbox of messages not yet acknowledged by the
//! server, each message's send state, and the entries received, by their
//! key (conversation, seq), so a repeat is discarded and history shows
//! offline.

use std::path::Path;

use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::proto;
use crate::{SdkError, SendState};

/// `order -> OutboxRecord`: sends in the order the app made them.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// `client_msg_id -> order`.
const OUTBOX_IDS: TableDefinition<&str, u64> = TableDefinition::new("outbox_ids");
/// `(conversation, seq) -> proto::Entry`.
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
/// Counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// One message the app sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutboxRecord {
    pub client_msg_id: String,
    /// The encoded `SendMessage`.
    pub send: Vec<u8>,
    pub state: SendState,
    /// Its conversation (known once sent, for a first direct message).
    pub conversation: String,
}

/// The local store.
pub(crate) struct Store {
    db: Database,
}

fn io<E: Into<redb::Error>>(e: E) -> SdkError {
    SdkError::Store(e.into().to_string())
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, SdkError> {
    postcard::to_stdvec(v).map_err(|e| SdkError::Store(e.to_string()))
}

fn dec<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, SdkError> {
    postcard::from_bytes(b).map_err(|e| SdkError::Store(e.to_string()))
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, SdkError> {
        std::fs::create_dir_all(dir).map_err(|e| SdkError::Store(e.to_string()))?;
        let db = Database::create(dir.join("courier-sdk.redb")).map_err(io)?;
        let tx = db.begin_write().map_err(io)?;
        tx.open_table(OUTBOX).map_err(io)?;
        tx.open_table(OUTBOX_IDS).map_err(io)?;
        tx.open_table(ENTRIES).map_err(io)?;
        tx.open_table(META).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(Store { db })
    }

    /// Puts `send` in the outbox as queued (durable when this returns).
    /// A client message id already there is left as it is.
    pub fn enqueue(&self, send: &proto::SendMessage) -> Result<(), SdkError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut ids = tx.open_table(OUTBOX_IDS).map_err(io)?;
            if ids.get(send.client_msg_id.as_str()).map_err(io)?.is_some() {
                return Ok(());
            }
            let mut meta = tx.open_table(META).map_err(io)?;
            let order = meta.get("next").map_err(io)?.map_or(1, |v| v.value());
            meta.insert("next", order + 1).map_err(io)?;
            ids.insert(send.client_msg_id.as_str(), order).map_err(io)?;
            let rec = OutboxRecord {
                client_msg_id: send.client_msg_id.clone(),
                send: send.encode_to_vec(),
                state: SendState::Queued,
                conversation: send.conversation.clone(),
            };
            tx.open_table(OUTBOX)
                .map_err(io)?
                .insert(order, enc(&rec)?.as_slice())
                .map_err(io)?;
        }
        tx.commit().map_err(io)
    }

    /// The queued sends, oldest first.
    pub fn queued(&self) -> Result<Vec<OutboxRecord>, SdkError> {
        let tx = self.db.begin_read().map_err(io)?;
        let t = tx.open_table(OUTBOX).map_err(io)?;
        let mut out = Vec::new();
        for kv in t.iter().map_err(io)? {
            let (_, v) = kv.map_err(io)?;
            let rec: OutboxRecord = dec(v.value())?;
            if rec.state == SendState::Queued {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn update(
        &self,
        client_msg_id: &str,
        f: impl FnOnce(&mut OutboxRecord) -> bool,
    ) -> Result<Option<OutboxRecord>, SdkError> {
        let tx = self.db.begin_write().map_err(io)?;
        let rec = {
            let ids = tx.open_table(OUTBOX_IDS).map_err(io)?;
            let Some(order) = ids.get(client_msg_id).map_err(io)?.map(|v| v.value()) else {
                return Ok(None);
            };
            let mut t = tx.open_table(OUTBOX).map_err(io)?;
            let Some(mut rec) = t
                .get(order)
                .map_err(io)?
                .map(|v| dec::<OutboxRecord>(v.value()))
                .transpose()?
            else {
                return Ok(None);
            };
            if !f(&mut rec) {
                return Ok(Some(rec));
            }
            t.insert(order, enc(&rec)?.as_slice()).map_err(io)?;
            rec
        };
        tx.commit().map_err(io)?;
        Ok(Some(rec))
    }

    /// Sets a message's state (durable). `None`: no such message.
    pub fn set_state(
        &self,
        client_msg_id: &str,
        state: SendState,
    ) -> Result<Option<OutboxRecord>, SdkError> {
        self.update(client_msg_id, |r| {
            if r.state == state {
                return false;
            }
            r.state = state;
            true
        })
    }

    /// The server took the message: its conversation and seq.
    pub fn set_sent(&self, client_msg_id: &str, conv: &str, seq: u64) -> Result<(), SdkError> {
        self.update(client_msg_id, |r| {
            r.state = SendState::Sent { seq };
            if !conv.is_empty() {
                r.conversation = conv.to_owned();
            }
            true
        })?;
        Ok(())
    }

    /// A message's state.
    pub fn state(&self, client_msg_id: &str) -> Result<Option<SendState>, SdkError> {
        let tx = self.db.begin_read().map_err(io)?;
        let ids = tx.open_table(OUTBOX_IDS).map_err(io)?;
        let Some(order) = ids.get(client_msg_id).map_err(io)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let t = tx.open_table(OUTBOX).map_err(io)?;
        let rec = t
            .get(order)
            .map_err(io)?
            .map(|v| dec::<OutboxRecord>(v.value()))
            .transpose()?;
        Ok(rec.map(|r| r.state))
    }

    /// Removes a queued or failed message from the outbox; false if it was
    /// sent already (or is unknown).
    pub fn cancel(&self, client_msg_id: &str) -> Result<bool, SdkError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut ids = tx.open_table(OUTBOX_IDS).map_err(io)?;
            let Some(order) = ids.get(client_msg_id).map_err(io)?.map(|v| v.value()) else {
                return Ok(false);
            };
            let mut t = tx.open_table(OUTBOX).map_err(io)?;
            let state = match t.get(order).map_err(io)? {
                Some(v) => dec::<OutboxRecord>(v.value())?.state,
                None => return Ok(false),
            };
            if !matches!(state, SendState::Queued | SendState::Failed { .. }) {
                return Ok(false);
            }
            t.remove(order).map_err(io)?;
            ids.remove(client_msg_id).map_err(io)?;
        }
        tx.commit().map_err(io)?;
        Ok(true)
    }

    /// Another member's receipt in `conv`: the app's sent messages up to
    /// `delivered` / `read` move on. Returns what changed.
    pub fn receipt(
        &self,
        conv: &str,
        delivered: u64,
        read: u64,
    ) -> Result<Vec<(String, SendState)>, SdkError> {
        let rank = |s: &SendState| match s {
            SendState::Read { .. } => 3,
            SendState::Delivered { .. } => 2,
            _ => 1,
        };
        let tx = self.db.begin_write().map_err(io)?;
        let mut changed = Vec::new();
        {
            let mut t = tx.open_table(OUTBOX).map_err(io)?;
            let mut updates = Vec::new();
            for kv in t.iter().map_err(io)? {
                let (k, v) = kv.map_err(io)?;
                let mut rec: OutboxRecord = dec(v.value())?;
                let seq = match rec.state {
                    SendState::Sent { seq } | SendState::Delivered { seq } => seq,
                    _ => continue,
                };
                if rec.conversation != conv {
                    continue;
                }
                let want = if seq <= read {
                    SendState::Read { seq }
                } else if seq <= delivered {
                    SendState::Delivered { seq }
                } else {
                    continue;
                };
                if rank(&want) > rank(&rec.state) {
                    rec.state = want.clone();
                    changed.push((rec.client_msg_id.clone(), want));
                    updates.push((k.value(), enc(&rec)?));
                }
            }
            for (k, v) in updates {
                t.insert(k, v.as_slice()).map_err(io)?;
            }
        }
        tx.commit().map_err(io)?;
        Ok(changed)
    }

    /// Stores a received entry; false if it was here already (a repeat).
    /// Deletes for everyone and expiries remove what they name.
    pub fn put_entry(&self, e: &proto::Entry) -> Result<bool, SdkError> {
        let tx = self.db.begin_write().map_err(io)?;
        let fresh = {
            let mut t = tx.open_table(ENTRIES).map_err(io)?;
            let key = (e.conversation.as_str(), e.seq);
            if t.get(key).map_err(io)?.is_some() {
                false
            } else {
                t.insert(key, e.encode_to_vec().as_slice()).map_err(io)?;
                if let Some(proto::entry::Kind::Delete(d)) = &e.kind {
                    if d.for_everyone {
                        t.remove((e.conversation.as_str(), d.seq)).map_err(io)?;
                    }
                }
                true
            }
        };
        tx.commit().map_err(io)?;
        Ok(fresh)
    }

    /// Removes entries (expired, or deleted by the server).
    pub fn remove(&self, conv: &str, seqs: &[u64]) -> Result<(), SdkError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut t = tx.open_table(ENTRIES).map_err(io)?;
            for s in seqs {
                t.remove((conv, *s)).map_err(io)?;
            }
        }
        tx.commit().map_err(io)
    }

    /// Up to `limit` stored entries of `conv` before `before` (0: the
    /// newest), oldest first.
    pub fn history(
        &self,
        conv: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<proto::Entry>, SdkError> {
        let tx = self.db.begin_read().map_err(io)?;
        let t = tx.open_table(ENTRIES).map_err(io)?;
        let end = if before == 0 { u64::MAX } else { before };
        let mut out = Vec::new();
        for kv in t
            .range((conv, 0)..(conv, end))
            .map_err(io)?
            .rev()
            .take(limit)
        {
            let (_, v) = kv.map_err(io)?;
            out.push(proto::Entry::decode(v.value()).map_err(|e| SdkError::Store(e.to_string()))?);
        }
        out.reverse();
        Ok(out)
    }
}
