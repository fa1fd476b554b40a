//! Group commit: many writers, one fsync.
//!
//! A writer that needs its writes durable takes a ticket after writing and
//! waits until a sync that started after the ticket has finished. A single
//! flusher task runs syncs back to back while tickets are waiting, so under
//! load one fsync covers the writes of many publishes from many connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::store::Store;

/// The sync failed; nothing written since the last good sync may be
/// acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store sync failed: {0}")]
pub struct SyncFailed(pub String);

/// Coordinates durable acknowledgements across connections.
pub struct GroupCommit {
    requested: AtomicU64,
    wake: Notify,
    done: watch::Sender<(u64, Option<SyncFailed>)>,
    syncs: AtomicU64,
}

impl GroupCommit {
    /// Starts the flusher task for `store`. Must be called inside a runtime.
    pub fn start(store: Arc<dyn Store>) -> Arc<GroupCommit> {
        let (done, _) = watch::channel((0, None));
        let gc = Arc::new(GroupCommit {
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            done,
            syncs: AtomicU64::new(0),
        });
        let me = gc.clone();
        tokio::spawn(async move { me.run(store).await });
        gc
    }

    async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            self.wake.notified().await;
            // Every ticket taken so far is covered by the sync that starts now.
            let upto = self.requested.load(Ordering::Acquire);
            let s = store.clone();
            let res = tokio::task::spawn_blocking(move || s.sync()).await;
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
            if Arc::strong_count(&self) == 1 {
                return;
            }
        }
    }

    /// Waits until every write made before this call is durable.
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

    /// Number of syncs performed (for metrics and benchmarks).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

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
}
