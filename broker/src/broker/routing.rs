//! Routing and queueing: a publish to every matching session, a direct
//! delivery to one, retained messages, subscriptions, and a delivery's
//! end (acknowledged, expired, dropped) with its store writes and its
//! tracker's report.

use super::*;

/// What [`Broker::deliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Queued for the session.
    Queued {
        /// A connection (or link) is attached, and was woken.
        online: bool,
        /// It was written to the session's queue on disk.
        stored: bool,
    },
    /// No session has that client id.
    NoSession,
    /// Not queued (the tracker was told too).
    Dropped(DropReason),
}

/// Result of routing one publish.
#[derive(Default)]
pub struct Routed {
    /// Sessions the message was delivered or queued to.
    pub matched: usize,
    /// Something was written that must be durable before acknowledging.
    pub wrote: bool,
    /// Online sessions whose backlog reached `throttle_backlog`.
    pub congested: Vec<SessionRef>,
}

/// Outcome of queueing one delivery.
enum Queued {
    Yes,
    /// Queued, and the (online) session's backlog is at the throttle limit.
    Congested,
    Dropped(DropReason),
}

/// What a delivery carries beyond the message: who hears how it ends, and
/// whether it may be written to a persistent session's queue.
#[derive(Clone, Copy)]
pub(super) struct Extra<'a> {
    pub(super) tracker: Option<&'a Tracker>,
    pub(super) store: bool,
}

impl Broker {
    /// Routes a message to every matching session and updates the retained
    /// store. Writes to the store as needed; the caller makes them durable
    /// (see [`Routed::wrote`]) before acknowledging.
    pub fn publish(&self, origin: Option<&str>, msg: Message) -> Result<Routed, StoreError> {
        self.route(origin, msg, None)
    }

    /// Like [`Broker::publish`], and `tracker` is told how each session's
    /// delivery ends (acknowledged by the client, or dropped and why).
    pub fn publish_tracked(
        &self,
        origin: Option<&str>,
        msg: Message,
        tracker: &Tracker,
    ) -> Result<Routed, StoreError> {
        self.route(origin, msg, Some(tracker))
    }

    /// Queues `msg` for the session of `client_id` directly, whatever it
    /// subscribes to (the messaging layer's inbox deliveries, responses to
    /// requests). Delivered at `msg.qos`, with `msg.topic`; with `store`, a
    /// persistent session writes it to its queue on disk (await
    /// [`Broker::durable`] before counting on that), otherwise it is kept
    /// in memory only, for a caller that keeps its own durable record.
    pub fn deliver(
        &self,
        client_id: &str,
        msg: Message,
        store: bool,
        tracker: Option<&Tracker>,
    ) -> Result<Delivered, StoreError> {
        let Some(handle) = self.sessions.lock().get(client_id).cloned() else {
            return Ok(Delivered::NoSession);
        };
        let msg = Arc::new(msg);
        let (mut id, mut stored) = (0, false);
        let extra = Extra { tracker, store };
        let qos = msg.qos;
        let queued = self.enqueue(
            &handle,
            &msg,
            &mut id,
            true,
            qos,
            false,
            Vec::new(),
            &mut stored,
            extra,
        )?;
        Ok(match queued {
            Queued::Dropped(why) => Delivered::Dropped(why),
            Queued::Yes | Queued::Congested => Delivered::Queued {
                online: handle.state.lock().online,
                stored,
            },
        })
    }

    fn route(
        &self,
        origin: Option<&str>,
        msg: Message,
        tracker: Option<&Tracker>,
    ) -> Result<Routed, StoreError> {
        let mut routed = Routed::default();
        if msg.retain {
            if msg.payload.is_empty() {
                self.retained.write().remove(&msg.topic);
                self.commit.delete_retained(&msg.topic);
            } else {
                let m = Arc::new(msg.clone());
                self.commit.put_retained(m.clone());
                self.retained.write().insert(msg.topic.clone(), m);
            }
            routed.wrote = true;
        }
        let mut matched: Vec<Matched<SessionRef>> = Vec::new();
        self.router
            .read()
            .matches(&msg.topic, |h| h.state.lock().online, &mut matched);
        if matched.is_empty() {
            return Ok(routed);
        }
        // One delivery per session: highest QoS, all subscription ids.
        matched.sort_by(|a, b| a.client_id.cmp(&b.client_id));

        let msg = Arc::new(msg);
        // A body queued for one persistent session only is stored inside
        // its queue entry (1:1 chat, an offline device): fewer writes.
        let mut msg_id = 0u64;
        let inline = msg.qos > 0 && {
            let mut persistent = 0;
            let mut last: Option<&str> = None;
            for m in &matched {
                if last != Some(&*m.client_id)
                    && m.opts.qos > 0
                    && m.session.state.lock().persistent()
                {
                    persistent += 1;
                    if persistent > 1 {
                        break; // shared body; no need to look further
                    }
                }
                last = Some(&m.client_id);
            }
            persistent == 1
        };
        let mut i = 0;
        while i < matched.len() {
            let mut j = i + 1;
            while j < matched.len() && matched[j].client_id == matched[i].client_id {
                j += 1;
            }
            let group = &matched[i..j];
            i = j;
            let own = origin.is_some_and(|o| o == &*group[0].client_id);
            let mut qos = None;
            let mut rap = false;
            let mut sub_ids = Vec::new();
            for m in group {
                if own && m.opts.no_local {
                    continue;
                }
                if m.opts.filtered && !self.may_read(&m.session, &msg.topic) {
                    Metrics::inc(&self.metrics.acl_filtered);
                    continue;
                }
                qos = Some(qos.unwrap_or(0).max(m.opts.qos));
                rap |= m.opts.retain_as_published;
                sub_ids.extend(m.opts.id);
            }
            let Some(sub_qos) = qos else { continue };
            let qos = sub_qos.min(msg.qos);
            let handle = &group[0].session;
            let mut stored = false;
            let queued = self.enqueue(
                handle,
                &msg,
                &mut msg_id,
                inline,
                qos,
                msg.retain && rap,
                sub_ids,
                &mut stored,
                Extra {
                    tracker,
                    store: true,
                },
            );
            let queued = match queued {
                Ok(q) => q,
                Err(e) => {
                    self.unref(msg_id);
                    return Err(e);
                }
            };
            routed.wrote |= stored;
            match queued {
                Queued::Dropped(_) => {}
                Queued::Yes => routed.matched += 1,
                Queued::Congested => {
                    routed.matched += 1;
                    routed.congested.push(handle.clone());
                }
            }
        }
        // The router's own reference to a shared body (see
        // `GroupCommit::put_message`).
        self.unref(msg_id);
        Ok(routed)
    }

    /// Queues one delivery for a session; `wrote` says if it was journaled.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        handle: &SessionRef,
        msg: &Arc<Message>,
        msg_id: &mut u64,
        inline: bool,
        qos: u8,
        retain: bool,
        sub_ids: Vec<u32>,
        wrote: &mut bool,
        extra: Extra<'_>,
    ) -> Result<Queued, StoreError> {
        let mut s = handle.state.lock();
        if s.ended {
            // Ended while this publish was being routed to it.
            drop(s);
            return Ok(self.refused(handle, extra.tracker, DropReason::SessionEnded));
        }
        if !s.online && qos == 0 {
            drop(s);
            Metrics::inc(&self.metrics.dropped_offline_qos0);
            return Ok(self.refused(handle, extra.tracker, DropReason::Offline));
        }
        if let Err(full) = s.has_room(msg.cost()) {
            drop(s);
            Metrics::inc(&self.metrics.dropped_queue_full);
            tracing::warn!(client_id = %handle.client_id, topic = %msg.topic, reason = %full, "delivery dropped");
            return Ok(self.refused(handle, extra.tracker, DropReason::QueueFull));
        }
        let seq = s.take_seq();
        let stored = extra.store && s.persistent() && qos > 0;
        *wrote = stored;
        let mut entry_msg_id = 0;
        if stored {
            let body = if inline {
                Some((**msg).clone())
            } else {
                if *msg_id == 0 {
                    *msg_id = self.store.next_id();
                    self.commit.put_message(*msg_id, msg.clone());
                }
                // Counted before the entry that holds it is journaled.
                self.commit.ref_message(*msg_id);
                entry_msg_id = *msg_id;
                None
            };
            let rec = QueueRecord {
                msg_id: entry_msg_id,
                qos,
                retain,
                sub_ids: sub_ids.clone(),
                released: false,
                body,
            };
            self.commit.add_entry(s.log, seq, rec);
        }
        // An unloaded (offline) session's queue stays on disk; an entry
        // with a tracker stays in memory too, so the tracker hears of it.
        let disk_only = stored && s.unloaded && s.loading == 0 && extra.tracker.is_none();
        if disk_only {
            s.unloaded_len += 1;
            s.disk_epoch = self.commit.syncs();
        } else {
            s.push(Delivery {
                seq,
                msg_id: entry_msg_id,
                stored,
                msg: msg.clone(),
                qos,
                retain,
                sub_ids,
                tracker: extra.tracker.cloned(),
            });
        }
        let online = s.online;
        let queued = s.queued() + s.unloaded_len;
        drop(s);
        if online {
            handle.notify.notify_one();
            let limit = self.config.limits.throttle_backlog;
            if limit > 0 && queued >= limit {
                handle.throttling.store(true, Ordering::Release);
                return Ok(Queued::Congested);
            }
        } else {
            self.emit(Event::QueuedOffline {
                client_id: handle.client_id.clone(),
                topic: msg.topic.clone(),
                queued,
            });
        }
        Ok(Queued::Yes)
    }

    fn refused(&self, handle: &SessionRef, tracker: Option<&Tracker>, why: DropReason) -> Queued {
        if let Some(t) = tracker {
            t.report(&handle.client_id, Outcome::Dropped(why));
        }
        Queued::Dropped(why)
    }

    /// Drops one reference to a stored message (the store deletes it at
    /// zero). Journaled after whatever held the reference was finished.
    pub(super) fn unref(&self, msg_id: u64) {
        if msg_id != 0 {
            self.commit.unref_message(msg_id);
        }
    }

    /// A delivery is finished (acknowledged, expired or dropped): `take`
    /// removes it from the session (or hands over one already taken); its
    /// queue entry is journaled as finished and its shared body released,
    /// under the session's lock, so never after the session's log was
    /// deleted (which releases what the log still holds); then its tracker
    /// is told, with no lock held.
    pub(crate) fn finish(
        &self,
        session: &SessionRef,
        log: u64,
        outcome: Outcome,
        take: impl FnOnce(&mut Session) -> Option<Delivery>,
    ) {
        let d = {
            let mut s = session.state.lock();
            let Some(d) = take(&mut s) else { return };
            if d.stored && !s.ended {
                let floor = s.floor();
                self.commit.finish_entry(log, d.seq, floor);
                self.unref(d.msg_id);
            }
            d
        };
        if let Some(t) = &d.tracker {
            t.report(&session.client_id, outcome);
        }
    }

    /// The client (or link) acknowledged a delivery: `take` finds it in
    /// the session (`Session::on_puback`, `Session::on_pubcomp`).
    pub(crate) fn acknowledged(
        &self,
        session: &SessionRef,
        log: u64,
        take: impl FnOnce(&mut Session) -> Option<Delivery>,
    ) {
        self.finish(session, log, Outcome::Acknowledged, take);
    }

    /// Records that a delivery was sent, so it is resent as a duplicate
    /// (with the same packet id, derived from its sequence) after a restart.
    pub(crate) fn mark_sent(&self, log: u64, d: &Delivery) {
        if d.stored {
            self.commit.set_sent(log, d.seq);
        }
    }

    /// Records that a QoS 2 delivery got its PUBREC (PUBREL is resent after
    /// a restart, not the message).
    pub(crate) fn mark_released(&self, log: u64, d: &Delivery) {
        if !d.stored {
            return;
        }
        let rec = QueueRecord {
            msg_id: d.msg_id,
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.sub_ids.clone(),
            released: true,
            body: (d.msg_id == 0).then(|| (*d.msg).clone()),
        };
        self.commit.rewrite_entry(log, d.seq, rec);
    }

    /// Adds a subscription. Returns the retained messages it should receive.
    pub(crate) fn subscribe(
        &self,
        handle: &SessionRef,
        raw: &str,
        group: Option<&str>,
        filter: &str,
        opts: SubOptions,
        retain_handling: u8,
    ) -> Vec<Arc<Message>> {
        // Lock order: the router is never locked while a session is, because
        // routing locks sessions while holding the router.
        self.router
            .write()
            .insert(&handle.client_id, group, filter, handle.clone(), opts);
        let new = {
            let mut s = handle.state.lock();
            let new = s.subscriptions.insert(raw.to_owned(), opts).is_none();
            self.save_session(&s, None);
            new
        };
        // Shared subscriptions never get retained messages.
        let send = group.is_none() && (retain_handling == 0 || (retain_handling == 1 && new));
        if !send {
            return Vec::new();
        }
        let now = unix_now();
        let msgs: Vec<Arc<Message>> = self
            .retained
            .read()
            .values()
            .filter(|m| topic::matches(filter, &m.topic) && !m.expired(now))
            .cloned()
            .collect();
        if !opts.filtered {
            return msgs;
        }
        msgs.into_iter()
            .filter(|m| {
                let ok = self.may_read(handle, &m.topic);
                if !ok {
                    Metrics::inc(&self.metrics.acl_filtered);
                }
                ok
            })
            .collect()
    }

    /// May the owner of `session` read `topic` (a subscription granted
    /// with [`SubscribeDecision::Filter`](crate::hooks::SubscribeDecision))?
    fn may_read(&self, session: &SessionRef, topic: &str) -> bool {
        let client = {
            let s = session.state.lock();
            ClientInfo {
                client_id: session.client_id.clone(),
                username: s.username.clone(),
                principal: s.principal.clone(),
            }
        };
        match self.namespace_of(topic) {
            Some(ns) => ns.authorize_read(&client, topic),
            None => self.hooks.authorize_read(&client, topic),
        }
    }

    /// Removes a subscription. True if it existed.
    pub(crate) fn unsubscribe(&self, handle: &SessionRef, raw: &str) -> bool {
        {
            let mut s = handle.state.lock();
            if s.subscriptions.remove(raw).is_none() {
                return false;
            }
            self.save_session(&s, None);
        }
        if let Ok(p) = topic::parse_filter(raw, self.topic_limits()) {
            self.router
                .write()
                .remove(&handle.client_id, p.group, p.filter);
        }
        true
    }

    /// Queues retained messages for a new subscription (QoS capped at the
    /// granted QoS). Returns true if something was written to the store.
    pub(crate) fn deliver_retained(
        &self,
        handle: &SessionRef,
        msgs: Vec<Arc<Message>>,
        granted: u8,
        sub_id: Option<u32>,
    ) -> bool {
        let mut wrote = false;
        for m in msgs {
            let (mut id, mut stored) = (0, false);
            let qos = m.qos.min(granted);
            let ids = sub_id.into_iter().collect();
            let extra = Extra {
                tracker: None,
                store: true,
            };
            match self.enqueue(
                handle,
                &m,
                &mut id,
                true,
                qos,
                true,
                ids,
                &mut stored,
                extra,
            ) {
                Ok(_) => wrote |= stored,
                Err(e) => self.store_error(&e),
            }
        }
        wrote
    }
}
