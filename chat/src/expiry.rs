//! Disappearing messages: one timer for all of them.
//!
//! A message sent while its conversation has a time-to-live carries its
//! expiry (`Entry.expires_at_ms`), and a record in the `timers` log says
//! when which entry goes. Pending timers are held in memory, ordered by
//! due time, and rebuilt from that log at start. One task sleeps until the
//! earliest is due, then [`Chat::expire`] erases each due message with its
//! edits, erases its timer record, waits for the commit, and tells the
//! members' online devices. Time is an input to `expire`, so tests move it
//! forward instead of waiting; a crash before the commit leaves the timer
//! record, and the message goes right after the restart.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use courier::logs::NewRecord;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::ChatError;
use crate::records::{self, conversation_log, Timer, TIMERS};
use crate::{delivery, Chat};

/// Longest time-to-live a conversation may set, seconds (a year).
pub(crate) const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// Pending expiries: (due, conversation, seq, the timer record's seq).
#[derive(Default)]
pub(crate) struct Timers {
    due: Mutex<BTreeSet<(u64, String, u64, u64)>>,
    /// Wakes the timer task when an earlier expiry arrives.
    wake: Notify,
}

impl Timers {
    fn add(&self, t: Timer, record: u64) {
        let mut due = self.due.lock();
        let earliest = due.first().map(|f| f.0);
        due.insert((t.due_ms, t.conversation, t.seq, record));
        if earliest.is_none_or(|e| t.due_ms < e) {
            self.wake.notify_one();
        }
    }

    /// Expiries pending.
    pub(crate) fn len(&self) -> usize {
        self.due.lock().len()
    }

    fn next_due(&self) -> Option<u64> {
        self.due.lock().first().map(|f| f.0)
    }

    /// Takes every expiry due at `now_ms`.
    fn take_due(&self, now_ms: u64) -> Vec<(u64, String, u64, u64)> {
        let mut due = self.due.lock();
        let later = due.split_off(&(now_ms + 1, String::new(), 0, 0));
        std::mem::replace(&mut *due, later).into_iter().collect()
    }
}

impl Chat {
    /// Records that entry `seq` of `conv` expires at `due_ms` (in the same
    /// commit as the entry).
    pub(crate) fn add_timer(&self, conv: &str, seq: u64, due_ms: u64) -> Result<(), ChatError> {
        let t = Timer {
            due_ms,
            conversation: conv.to_owned(),
            seq,
        };
        let a = self.broker()?.logs().append(
            TIMERS,
            vec![NewRecord {
                id: None,
                data: records::encode(&t),
            }],
            None,
        )?;
        if let Some(record) = a.seqs.first() {
            self.timers.add(t, *record);
        }
        Ok(())
    }

    /// Any member sets the time-to-live of messages sent from now on.
    pub(crate) fn set_disappearing(
        &self,
        user: &str,
        device: &str,
        s: crate::proto::SetDisappearing,
    ) -> Result<crate::requests::Done, ChatError> {
        if s.ttl_secs > MAX_TTL_SECS {
            return Err(ChatError::BadRequest(format!(
                "a time-to-live is at most {MAX_TTL_SECS} s"
            )));
        }
        let mut d = self.dir.lock();
        let (c, _) = Chat::member_of(&d, &s.conversation, user)?;
        if c.kind == crate::records::ConvKind::Direct
            && c.members
                .keys()
                .any(|o| o != user && self.blocks.either(user, o))
        {
            return Err(ChatError::Blocked);
        }
        if c.disappear_secs == s.ttl_secs {
            return self.info_done(&d, &s.conversation, user, Vec::new());
        }
        let kind = records::StoredKind::Disappearing {
            ttl_secs: s.ttl_secs,
        };
        self.record_change(&mut d, &s.conversation, (user, device), kind)?;
        let woken = d.conversations[&s.conversation]
            .members
            .keys()
            .cloned()
            .collect();
        self.info_done(&d, &s.conversation, user, woken)
    }

    /// Reads the pending expiries back at start.
    pub(crate) fn recover_timers(&self) -> Result<(), ChatError> {
        let broker = self.broker()?;
        let logs = broker.logs();
        let mut from = 1;
        loop {
            let page = logs.read(TIMERS, from, 1024)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for r in &page {
                match records::decode::<Timer>(&r.data) {
                    Some(t) => self.timers.add(t, r.seq),
                    None => tracing::error!(seq = r.seq, "chat: unreadable timer skipped"),
                }
            }
        }
        Ok(())
    }

    /// Erases every disappearing message due at `now_ms` (Unix ms), with
    /// its edits, and waits until that is durable; tells the members'
    /// online devices. Returns how many went.
    pub async fn expire(&self, now_ms: u64) -> Result<usize, ChatError> {
        let due = self.timers.take_due(now_ms);
        if due.is_empty() {
            return Ok(0);
        }
        match self.erase_due(&due).await {
            Ok(gone) => {
                for (conversation, seqs) in gone {
                    let _ = self.events.send(delivery::Event::Expired {
                        conversation,
                        seqs,
                        to: None,
                    });
                }
                Ok(due.len())
            }
            Err(e) => {
                // Not erased for sure: they stay due, for the next pass.
                for (due_ms, conversation, seq, record) in due {
                    let t = Timer {
                        due_ms,
                        conversation,
                        seq,
                    };
                    self.timers.add(t, record);
                }
                Err(e)
            }
        }
    }

    /// Erases the `due` messages, their edits and their timer records, and
    /// waits until that is durable; what went, by conversation.
    async fn erase_due(
        &self,
        due: &[(u64, String, u64, u64)],
    ) -> Result<std::collections::BTreeMap<String, Vec<u64>>, ChatError> {
        let broker = self.broker()?;
        let logs = broker.logs();
        let mut gone: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for (_, conv, seq, record) in due {
            let log = conversation_log(conv);
            for edit in self.edits_of(conv, *seq)? {
                logs.erase(&log, edit);
            }
            logs.erase(&log, *seq);
            logs.erase(TIMERS, *record);
            gone.entry(conv.clone()).or_default().push(*seq);
        }
        broker
            .durable()
            .await
            .map_err(|e| ChatError::Unavailable(e.to_string()))?;
        Ok(gone)
    }
}

/// The wall clock, Unix milliseconds (expiries are due to the ms).
fn now_ms() -> u64 {
    courier::message::unix_now_ms()
}

/// Runs the timer until the broker shuts down.
pub(crate) fn spawn(chat: Arc<Chat>) {
    let Ok(broker) = chat.broker() else { return };
    let mut stop = broker.shutdown_signal();
    drop(broker);
    tokio::spawn(async move {
        loop {
            let now = now_ms();
            let wait = match chat.timers.next_due() {
                Some(due) if due <= now => Duration::ZERO,
                Some(due) => Duration::from_millis(due - now),
                // Nothing pending: until something is added.
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = chat.timers.wake.notified() => continue,
                _ = stop.changed() => return,
            }
            if let Err(e) = chat.expire(now_ms()).await {
                tracing::warn!("chat: expiring messages: {e}");
                // The store is failing: try again later, not in a loop.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
}
