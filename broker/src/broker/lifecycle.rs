//! A session's life: attach (with takeover), detach, expiry, delayed
//! wills, credential expiry, and its end.

use super::*;

/// A newly attached session, as returned by [`Broker::attach`].
pub struct Attached {
    /// The session.
    pub session: SessionRef,
    /// An earlier session was resumed.
    pub session_present: bool,
    /// This attachment's generation.
    pub generation: u64,
}

impl Broker {
    fn session_record(&self, s: &Session, disconnected_at: Option<u64>) -> SessionRecord {
        let mut subscriptions: Vec<(String, SubOptions)> = s
            .subscriptions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        SessionRecord {
            client_id: s.client_id.to_string(),
            username: s.username.as_deref().map(str::to_owned),
            log: s.log,
            expiry_secs: s.expiry_secs,
            disconnected_at,
            subscriptions,
        }
    }

    /// Journals a persistent session's record.
    pub(crate) fn save_session(&self, s: &Session, disconnected_at: Option<u64>) {
        if !s.persistent() {
            return;
        }
        self.commit
            .put_session(self.session_record(s, disconnected_at));
    }

    /// Attaches a connection to the session of `client_id`, taking it over
    /// from another connection if needed. `clean_start` discards any earlier
    /// session.
    pub async fn attach(
        self: &Arc<Self>,
        client: &ClientInfo,
        clean_start: bool,
        expiry_secs: u32,
    ) -> Result<Attached, BrokerError> {
        let client_id = &client.client_id;
        // Take over: ask the attached connection to leave and wait for it.
        let existing = self.sessions.lock().get(&**client_id).cloned();
        if let Some(h) = existing.as_ref().filter(|h| h.state.lock().online) {
            let (tx, rx) = oneshot::channel();
            *h.kick.lock() = Some(tx);
            h.kicking.store(true, Ordering::Release);
            h.notify.notify_one();
            // Answered (or dropped) once the old connection has detached.
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
            // Not left for this connection to find after a timeout.
            h.kicking.store(false, Ordering::Release);
            h.kick.lock().take();
        }
        let (handle, present) = {
            let mut registry = self.sessions.lock();
            let existing = registry.get(&**client_id).cloned();
            match existing {
                Some(h) if !clean_start => (h, true),
                other => {
                    if let Some(old) = other {
                        drop(registry);
                        // The old session ends here: a delayed will it had goes now.
                        self.destroy(&old, true);
                        registry = self.sessions.lock();
                    }
                    let log = self.store.next_id();
                    // Shared with the connection's ClientInfo: one copy of the id.
                    let cid = client_id.clone();
                    let h = SessionHandle::new(Session::new(
                        cid.clone(),
                        log,
                        expiry_secs,
                        self.session_limits(),
                    ));
                    registry.insert(cid, h.clone());
                    (h, false)
                }
            }
        };
        // Reconnecting cancels a pending (delayed) will and the expiry.
        if let Some(w) = handle.will.lock().take() {
            self.timers.cancel(w.timer);
        }
        let generation = {
            let mut s = handle.state.lock();
            if let Some(k) = s.expiry_timer.take() {
                self.timers.cancel(k);
            }
            s.online = true;
            s.generation += 1;
            s.username = client.username.clone();
            s.principal = client.principal.clone();
            let was_persistent = s.persistent();
            s.expiry_secs = expiry_secs;
            if s.persistent() {
                self.save_session(&s, None);
                s.recorded = true;
            }
            (s.generation, was_persistent && !s.persistent())
        };
        let (generation, leaves_disk) = generation;
        // After the generation moved on, so a late detach of an older
        // connection cannot unload what is read here.
        if let Err(e) = self.load_queue(&handle, generation).await {
            self.detach(&handle, generation);
            return Err(e);
        }
        if leaves_disk {
            // Resumed with expiry 0: it ends with this connection, and its
            // queue (in memory now) leaves the disk.
            let mut s = handle.state.lock();
            if s.generation != generation {
                return Err(superseded());
            }
            self.commit.delete_session(&s.client_id, s.log);
            s.recorded = false;
            s.unstore();
        }
        Ok(Attached {
            session: handle,
            session_present: present,
            generation,
        })
    }

    /// Reads an unloaded session's queue from disk into memory: first
    /// waits for the commit that makes every entry journaled so far
    /// readable, then reads off the connection's thread. Entries queued
    /// meanwhile are kept in memory as well, and merged by sequence number.
    async fn load_queue(&self, handle: &SessionRef, generation: u64) -> Result<(), BrokerError> {
        let (log, disk_epoch) = {
            let mut s = handle.state.lock();
            if !s.unloaded {
                return Ok(());
            }
            if s.unloaded_len == 0 {
                // Nothing went to disk only since it was unloaded.
                s.reload(Vec::new());
                return Ok(());
            }
            s.loading += 1;
            (s.log, s.disk_epoch)
        };
        let read = self.read_queue(log, disk_epoch).await;
        let mut s = handle.state.lock();
        s.loading -= 1;
        let loaded = read?;
        // Another connection took the session over while this one read (its
        // takeover wait ran out): what was read may be stale by now.
        if s.generation != generation {
            return Err(superseded());
        }
        if s.unloaded {
            s.reload(loaded);
        }
        Ok(())
    }

    /// A session's live entries as deliveries, each with whether it was
    /// sent and released before; entries whose body is missing are
    /// dropped (and removed).
    async fn read_queue(
        &self,
        log: u64,
        disk_epoch: u64,
    ) -> Result<Vec<(Delivery, bool, bool)>, BrokerError> {
        // Entries it was given while its queue was on disk may still be in
        // the journal: then the store is read after the next commit.
        if self.commit.syncs() < disk_epoch + 2 && !self.commit.settled() {
            self.commit.durable().await?;
        }
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let marks = store.marks(log)?;
            let mut bodies: HashMap<u64, Arc<Message>> = HashMap::new();
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for (seq, mut q) in store.entries(log)? {
                let msg = match (q.body.take(), bodies.get(&q.msg_id)) {
                    (Some(body), _) => Arc::new(body),
                    (None, Some(m)) => m.clone(),
                    (None, None) => match store.get_message(q.msg_id)? {
                        Some(m) => {
                            let m = Arc::new(m);
                            bodies.insert(q.msg_id, m.clone());
                            m
                        }
                        None => {
                            missing.push(seq);
                            continue;
                        }
                    },
                };
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
                out.push((d, seq <= marks.sent || q.released, q.released));
            }
            Ok((out, missing))
        })
        .await
        .map_err(|e| StoreError::Io(format!("reading a queue: {e}")))?;
        let (out, missing) = read?;
        for seq in missing {
            tracing::warn!(log, seq, "queue entry without message; dropped");
            self.commit.write(Write::RemoveEntry(log, seq));
        }
        Ok(out)
    }

    /// Detaches a connection from its session. Ends the session if its
    /// expiry is 0, otherwise starts its expiry timer.
    /// A session taken over is attached again at once, so the sweep finds
    /// a newer generation and leaves its queue in memory.
    pub(crate) fn detach(self: &Arc<Self>, handle: &SessionRef, generation: u64) {
        let (expiry, current, dropped) = {
            let mut s = handle.state.lock();
            if s.generation != generation {
                return;
            }
            s.online = false;
            let dropped = s.drop_qos0();
            (s.expiry_secs, s.generation, dropped)
        };
        for d in dropped {
            if let Some(t) = &d.tracker {
                t.report(&handle.client_id, Outcome::Dropped(DropReason::Offline));
            }
        }
        handle.throttling.store(false, Ordering::Release);
        handle.drained.notify_waiters();
        // A takeover waiting for this connection may go ahead.
        handle.kicking.store(false, Ordering::Release);
        handle.kick.lock().take();
        if expiry == 0 {
            self.destroy(handle, true);
        } else {
            self.save_session(&handle.state.lock(), Some(unix_now()));
            self.schedule_expiry(handle, current, expiry, 0);
            // Its queue leaves memory once it is all on disk.
            let epoch = self.commit.syncs();
            self.unloads
                .lock()
                .push_back((Arc::downgrade(handle), current, epoch));
        }
    }

    /// Moves the queues of sessions that stayed offline to disk only, once
    /// everything journaled for them before they went is committed (two
    /// commits completed since: the one under way then may not have taken
    /// it). Runs on the broker's one-second tick, so a phone that drops and
    /// reconnects within a second or so finds its queue still in memory.
    pub(crate) fn sweep_unloads(&self) {
        let done = self.commit.syncs();
        loop {
            let due = {
                let mut q = self.unloads.lock();
                match q.front() {
                    Some(&(_, _, epoch)) if epoch + 2 <= done => q.pop_front(),
                    _ => None,
                }
            };
            let Some((session, generation, _)) = due else {
                // Sessions still waiting need commits to pass: an idle
                // broker makes one (at most one a second, from this tick).
                if !self.unloads.lock().is_empty() {
                    let commit = self.commit.clone();
                    tokio::spawn(async move {
                        let _ = commit.durable().await;
                    });
                }
                return;
            };
            let Some(h) = session.upgrade() else { continue };
            let mut s = h.state.lock();
            let idle = !s.online && !s.ended && s.generation == generation;
            if idle && s.persistent() && s.loading == 0 && !s.unloaded {
                let floor = s.floor();
                s.disk_epoch = done;
                if s.unload(floor) > 0 {
                    Metrics::inc(&self.metrics.queues_unloaded);
                }
                // What is live now, for counting the queue after a restart.
                self.commit
                    .set_queue_count(s.log, s.unloaded_len as u64, s.last_seq());
            }
        }
    }

    pub(super) fn schedule_expiry(
        self: &Arc<Self>,
        handle: &SessionRef,
        generation: u64,
        expiry: u32,
        elapsed: u64,
    ) {
        if expiry == u32::MAX {
            return;
        }
        let wait_ms = (expiry as u64).saturating_sub(elapsed).saturating_mul(1000);
        let deadline = self.watchdog.now_ms().saturating_add(wait_ms);
        let mut s = handle.state.lock();
        let old = s.expiry_timer.take();
        s.expiry_timer = Some(self.timers.schedule(
            deadline,
            timers::Kind::Expiry,
            Arc::downgrade(handle),
            generation,
            old,
        ));
    }

    /// Closes the connection of `generation` on `handle` once its
    /// credential expires at `expires_at` (Unix seconds).
    pub(crate) fn expire_credential(
        self: &Arc<Self>,
        handle: &SessionRef,
        generation: u64,
        expires_at: u64,
    ) {
        let wait_ms = expires_at.saturating_sub(unix_now()).saturating_mul(1000);
        let deadline = self.watchdog.now_ms().saturating_add(wait_ms);
        self.timers.schedule(
            deadline,
            timers::Kind::Credential,
            Arc::downgrade(handle),
            generation,
            None,
        );
    }

    /// Runs the session expiries and delayed wills due at `now_ms` (the
    /// watchdog's clock), in deadline order.
    pub(crate) fn fire_timers(self: &Arc<Self>, now_ms: u64) {
        for due in self.timers.due(now_ms) {
            let Some(h) = due.session.upgrade() else {
                continue;
            };
            match due.kind {
                timers::Kind::Expiry => {
                    let expired = {
                        let mut s = h.state.lock();
                        let live = !s.online && !s.ended && s.generation == due.generation;
                        if live {
                            s.expiry_timer = None;
                        }
                        live
                    };
                    // Only the session the registry holds: an older one of
                    // the same client ended when it was replaced.
                    let current = self
                        .sessions
                        .lock()
                        .get(&h.client_id)
                        .is_some_and(|r| Arc::ptr_eq(r, &h));
                    if expired && current {
                        tracing::debug!(client_id = %h.client_id, "session expired");
                        Metrics::inc(&self.metrics.sessions_expired);
                        self.destroy(&h, true);
                    }
                }
                timers::Kind::Credential => {
                    let online = {
                        let s = h.state.lock();
                        s.online && s.generation == due.generation
                    };
                    if online {
                        h.expire(due.generation, EXPIRED_CREDENTIAL);
                        h.notify.notify_one();
                    }
                }
                timers::Kind::Will => {
                    let w = {
                        let mut slot = h.will.lock();
                        match slot.as_ref() {
                            Some(w) if w.generation == due.generation => slot.take(),
                            _ => None,
                        }
                    };
                    if let Some(w) = w {
                        self.publish_will(&w.client, w.msg);
                    }
                }
            }
        }
    }

    /// Ends a session: unsubscribes it, releases its queued messages,
    /// deletes it from the store, and sends a pending will.
    pub(crate) fn destroy(self: &Arc<Self>, handle: &SessionRef, send_will: bool) {
        {
            let mut reg = self.sessions.lock();
            if reg
                .get(&handle.client_id)
                .is_some_and(|h| Arc::ptr_eq(h, handle))
            {
                reg.remove(&handle.client_id);
            }
        }
        let (subs, deliveries) = {
            let mut s = handle.state.lock();
            if s.ended {
                return;
            }
            s.ended = true;
            if let Some(k) = s.expiry_timer.take() {
                self.timers.cancel(k);
            }
            let subs: Vec<String> = s.subscriptions.drain().map(|(k, _)| k).collect();
            // Not `persistent()`: a DISCONNECT may have set the expiry to 0
            // after the record was written.
            let recorded = std::mem::take(&mut s.recorded);
            let unloaded = std::mem::take(&mut s.unloaded);
            let deliveries = s.drain();
            // The log is dropped whole (the store releases the bodies its
            // entries refer to), journaled under the lock: a delivery
            // finished later sees `ended` and journals nothing.
            if recorded || unloaded || deliveries.iter().any(|d| d.stored) {
                self.commit.delete_session(&handle.client_id, s.log);
            }
            (subs, deliveries)
        };
        {
            let mut router = self.router.write();
            for raw in &subs {
                if let Ok(p) = topic::parse_filter(raw, self.topic_limits()) {
                    router.remove(&handle.client_id, p.group, p.filter);
                }
            }
        }
        for d in &deliveries {
            if let Some(t) = &d.tracker {
                t.report(
                    &handle.client_id,
                    Outcome::Dropped(DropReason::SessionEnded),
                );
            }
        }
        let will = handle.will.lock().take();
        if let Some(w) = will {
            self.timers.cancel(w.timer);
            if send_will {
                self.publish_will(&w.client, w.msg);
            }
        }
    }

    /// Sets the will to send after `delay` seconds unless the session is
    /// resumed first, or at once if the session ends sooner.
    pub(crate) fn schedule_will(
        self: &Arc<Self>,
        handle: &SessionRef,
        generation: u64,
        client: ClientInfo,
        msg: Message,
        delay: u32,
    ) {
        if delay == 0 {
            self.publish_will(&client, msg);
            return;
        }
        let deadline = self.watchdog.now_ms().saturating_add(delay as u64 * 1000);
        let mut slot = handle.will.lock();
        let old = slot.take().map(|w| w.timer);
        let timer = self.timers.schedule(
            deadline,
            timers::Kind::Will,
            Arc::downgrade(handle),
            generation,
            old,
        );
        *slot = Some(Box::new(PendingWill {
            generation,
            client,
            msg,
            timer,
        }));
    }

    fn publish_will(self: &Arc<Self>, client: &ClientInfo, msg: Message) {
        // A namespace's topics are written only through its handler, which
        // a will (sent when nobody can answer it) cannot go through.
        let in_namespace = self.namespace_of(&msg.topic).is_some();
        if in_namespace || !self.hooks.authorize_publish(client, &msg.topic) {
            Metrics::inc(&self.metrics.acl_denied);
            tracing::warn!(client_id = %client.client_id, topic = %msg.topic, "will denied by ACL");
            return;
        }
        tracing::debug!(client_id = %client.client_id, topic = %msg.topic, "publishing will");
        if let Err(e) = self.publish(Some(&client.client_id), msg) {
            self.store_error(&e);
        }
    }
}

/// An attach that another connection's attach overtook.
fn superseded() -> BrokerError {
    BrokerError::Store(StoreError::Unavailable(
        "another connection took the session over while it was being read".into(),
    ))
}
