//! Retention: inbox entries older than `inbox_retention_secs`, and
//! conversation entries past `history_retention_secs` or
//! `history_max_entries`, are removed by one periodic task. Time is an
//! input ([`Chat::trim`]), so tests move it forward instead of waiting.
//!
//! What devices see: a device whose cursor falls below what its inbox
//! keeps gets a `Gap` (delivery.rs); History returns `first_kept`; an
//! inbox entry whose conversation entry is gone is skipped.

use std::sync::Arc;
use std::time::Duration;

use courier::logs::Retention;

use crate::error::ChatError;
use crate::records::{conversation_log, inbox_log};
use crate::Chat;

/// What one pass of retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Inboxes that lost entries.
    pub inboxes: usize,
    /// Conversations that lost entries.
    pub conversations: usize,
}

impl Chat {
    /// Applies retention as of `now_ms` (Unix milliseconds).
    pub fn trim(&self, now_ms: u64) -> Result<Trimmed, ChatError> {
        let broker = self.broker()?;
        let logs = broker.logs();
        let (users, convs): (Vec<String>, Vec<String>) = {
            let d = self.dir.lock();
            (
                d.users.keys().cloned().collect(),
                d.conversations.keys().cloned().collect(),
            )
        };
        // Rate-limit state of devices that have been quiet goes.
        self.limits.shrink();
        let mut t = Trimmed::default();
        let c = &self.config;
        if c.inbox_retention_secs > 0 {
            let before = now_ms.saturating_sub(c.inbox_retention_secs.saturating_mul(1000));
            for u in &users {
                if logs.trim(&inbox_log(u), Retention::Before(before))? > 0 {
                    t.inboxes += 1;
                }
            }
        }
        for conv in &convs {
            let log = conversation_log(conv);
            let mut cut = 0;
            if c.history_retention_secs > 0 {
                let before = now_ms.saturating_sub(c.history_retention_secs.saturating_mul(1000));
                cut = cut.max(logs.trim(&log, Retention::Before(before))?);
            }
            if c.history_max_entries > 0 {
                cut = cut.max(logs.trim(&log, Retention::KeepLast(c.history_max_entries))?);
            }
            if cut > 0 {
                t.conversations += 1;
            }
        }
        Ok(t)
    }
}

/// Runs retention every `trim_interval_secs` until the broker shuts down.
pub(crate) fn spawn(chat: Arc<Chat>) {
    let Ok(broker) = chat.broker() else { return };
    let mut stop = broker.shutdown_signal();
    drop(broker);
    let every = Duration::from_secs(chat.config.trim_interval_secs.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let chat = chat.clone();
            // Reads the store: off the async threads.
            let r =
                tokio::task::spawn_blocking(move || chat.trim(courier::message::unix_now() * 1000))
                    .await;
            match r {
                Ok(Ok(t)) if t != Trimmed::default() => {
                    tracing::info!(
                        inboxes = t.inboxes,
                        conversations = t.conversations,
                        "chat: retention"
                    )
                }
                Ok(Err(e)) => tracing::warn!("chat: retention: {e}"),
                _ => {}
            }
        }
    });
}
