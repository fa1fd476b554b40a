//! Shredding: what the store erased (a chat message deleted for everyone,
//! a disappearing message, records trimmed by retention) is unreadable at
//! once, but its bytes may stay in the file's free pages. Every
//! `shred_interval_secs`, if anything was erased since the last time, the
//! store is asked to make them unrecoverable ([`Store::shred`]; the
//! embedded store compacts its file, pausing store access meanwhile).

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::{Shredded, StoreError};
use crate::Broker;

/// Shreds every interval until the broker is gone.
pub(crate) fn spawn(broker: Weak<Broker>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is at once
        loop {
            tick.tick().await;
            let Some(b) = broker.upgrade() else { return };
            if b.closing() {
                return;
            }
            let _ = b.shred().await;
        }
    });
}

impl Broker {
    /// Shreds now (see the module above): `None` if nothing was erased
    /// since the last time.
    pub async fn shred(self: &Arc<Self>) -> Result<Option<Shredded>, StoreError> {
        let store = self.store.clone();
        let r = tokio::task::spawn_blocking(move || store.shred())
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("shred task: {e}"))));
        match &r {
            Ok(Some(s)) => {
                Metrics::inc(&self.metrics.shreds);
                Metrics::add(&self.metrics.shred_pause_ms, s.took.as_millis() as u64);
                tracing::info!(
                    took_ms = s.took.as_millis() as u64,
                    bytes_before = s.bytes_before,
                    bytes_after = s.bytes_after,
                    "erased records shredded from the store file"
                );
            }
            Ok(None) => {}
            Err(e) => self.store_error(e),
        }
        r
    }
}
