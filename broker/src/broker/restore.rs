//! Start-up: retained messages and persistent sessions (records,
//! subscriptions, where each queue's numbering stands, from its marks). Queues stay on disk
//! until their session attaches, so start-up time and memory do not grow
//! with what is queued.

use super::*;

impl Broker {
    /// Loads retained messages and persistent sessions, without their
    /// queued entries.
    pub(super) fn restore(self: &Arc<Self>) -> Result<(), BrokerError> {
        {
            let mut retained = self.retained.write();
            for m in self.store.load_retained()? {
                retained.insert(m.topic.clone(), Arc::new(m));
            }
        }
        let now = unix_now();
        let limits = self.session_limits();
        let (mut count, mut queued) = (0, 0);
        self.store.visit_sessions(&mut |rec| {
            count += 1;
            let cid: Arc<str> = rec.client_id.as_str().into();
            let mut s = Session::new(cid.clone(), rec.log, rec.expiry_secs, limits);
            s.recorded = true;
            s.username = rec.username.as_deref().map(Arc::from);
            s.subscriptions = rec.subscriptions.iter().cloned().collect();
            let marks = self.store.marks(rec.log)?;
            s.resume_after(marks.sent.max(marks.floor).max(marks.tail));
            s.unload(marks.floor);
            s.unloaded_len = marks.live_at_most() as usize;
            queued += s.unloaded_len;
            let handle = SessionHandle::new(s);
            {
                let mut router = self.router.write();
                for (raw, opts) in &rec.subscriptions {
                    if let Ok(p) = topic::parse_filter(raw, self.topic_limits()) {
                        router.insert(&cid, p.group, p.filter, handle.clone(), *opts);
                    }
                }
            }
            self.sessions.lock().insert(cid, handle.clone());
            // A record without a disconnect time was live at a crash.
            let since = rec.disconnected_at.unwrap_or(now);
            self.schedule_expiry(&handle, 0, rec.expiry_secs, now.saturating_sub(since));
            Ok(())
        })?;
        tracing::info!(
            sessions = count,
            queued_at_most = queued,
            retained = self.retained.read().len(),
            "store restored"
        );
        Ok(())
    }
}
