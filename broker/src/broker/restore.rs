//! Start-up: retained messages and persistent sessions with their queues
//! loaded from the store; messages no queue refers to deleted.

use super::*;

impl Broker {
    /// Loads retained messages and persistent sessions with their queues;
    /// deletes stored messages no queue refers to any more.
    pub(super) fn restore(self: &Arc<Self>) -> Result<(), BrokerError> {
        {
            let mut retained = self.retained.write();
            for m in self.store.load_retained()? {
                retained.insert(m.topic.clone(), Arc::new(m));
            }
        }
        let now = unix_now();
        let mut refs: HashMap<u64, u32> = HashMap::new();
        let mut bodies: HashMap<u64, Arc<Message>> = HashMap::new();
        let limits = self.session_limits();
        let records = self.store.load_sessions()?;
        let count = records.len();
        let mut cleanup = Vec::new();
        for rec in records {
            let cid: Arc<str> = rec.client_id.as_str().into();
            let mut s = Session::new(cid.clone(), rec.log, rec.expiry_secs, limits);
            s.recorded = true;
            s.username = rec.username.as_deref().map(Arc::from);
            s.subscriptions = rec.subscriptions.iter().cloned().collect();
            let marks = self.store.marks(rec.log)?;
            let sent = marks.sent;
            s.resume_after(marks.sent.max(marks.floor));
            for (seq, mut q) in self.store.entries(rec.log)? {
                let inline = q.body.take();
                let msg = match (inline, bodies.get(&q.msg_id)) {
                    (Some(body), _) => Arc::new(body),
                    (None, Some(m)) => m.clone(),
                    (None, None) => match self.store.get_message(q.msg_id)? {
                        Some(m) => {
                            let m = Arc::new(m);
                            bodies.insert(q.msg_id, m.clone());
                            m
                        }
                        None => {
                            tracing::warn!(client_id = %cid, seq, "queue entry without message; dropped");
                            cleanup.push(Write::RemoveEntry(rec.log, seq));
                            continue;
                        }
                    },
                };
                if q.msg_id != 0 {
                    *refs.entry(q.msg_id).or_default() += 1;
                }
                let d = Delivery {
                    seq,
                    msg_id: q.msg_id,
                    stored: true,
                    msg,
                    qos: q.qos,
                    retain: q.retain,
                    sub_ids: q.sub_ids,
                    tracker: None,
                };
                let released = q.released;
                s.restore(d, seq <= sent || released, released);
            }
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
        }
        for id in self.store.message_ids()? {
            if !refs.contains_key(&id) {
                cleanup.push(Write::DeleteMessage(id));
            }
        }
        let queued: u32 = refs.values().sum();
        *self.refs.lock() = refs;
        self.store.commit(&mut cleanup.into_iter())?;
        tracing::info!(
            sessions = count,
            queued,
            retained = self.retained.read().len(),
            "store restored"
        );
        Ok(())
    }
}
