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
        let mut registry = self.sessions.lock();
        let existing = registry.get(&**client_id).cloned();
        let (handle, present) = match existing {
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
        };
        drop(registry);
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
            } else if was_persistent {
                // Resumed with expiry 0: it ends with this connection, and
                // its queue leaves the disk now.
                self.commit.delete_session(&s.client_id, s.log);
                s.recorded = false;
                for id in s.unstore() {
                    self.unref(id);
                }
            }
            s.generation
        };
        Ok(Attached {
            session: handle,
            session_present: present,
            generation,
        })
    }

    /// Detaches a connection from its session. Ends the session if its
    /// expiry is 0, otherwise starts its expiry timer.
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
        let (subs, deliveries, log, recorded) = {
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
            (subs, s.drain(), s.log, recorded)
        };
        {
            let mut router = self.router.write();
            for raw in &subs {
                if let Ok(p) = topic::parse_filter(raw, self.topic_limits()) {
                    router.remove(&handle.client_id, p.group, p.filter);
                }
            }
        }
        // Only deliveries still on disk hold a reference: a session resumed
        // with expiry 0 released the others when its log left the disk.
        let mut stored = false;
        for d in &deliveries {
            if let Some(t) = &d.tracker {
                t.report(
                    &handle.client_id,
                    Outcome::Dropped(DropReason::SessionEnded),
                );
            }
            if d.stored {
                stored = true;
                self.unref(d.msg_id);
            }
        }
        // The log is dropped whole, so entries need no separate removal.
        if recorded || stored {
            self.commit.delete_session(&handle.client_id, log);
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
