//! The per-connection protocol core: a state machine with no I/O and the
//! time passed in. Packets in ([`Protocol::handle_input`]), deliveries
//! pulled from the session ([`Protocol::poll_deliveries`]), bytes out
//! ([`Protocol::poll_transmit`]); acknowledgements that depend on writes
//! are held until the shell reports the disk has them
//! ([`Protocol::durable_done`]).

use super::*;

/// The time, as the protocol core sees it: handed in by its driver, never
/// read from a clock inside.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Seconds since the Unix epoch (message and credential expiry).
    pub unix_secs: u64,
    /// The keep-alive watchdog's tick, in milliseconds.
    pub tick_ms: u64,
}

impl Now {
    /// The broker's clocks now (what the async shell passes).
    pub fn of(broker: &Broker) -> Now {
        Now {
            unix_secs: unix_now(),
            tick_ms: broker.watchdog.now_ms(),
        }
    }
}

/// Why the connection must end now, found by [`Protocol::poll_leave`].
pub enum Leave {
    /// Close with this reason.
    Close(Close),
    /// Another connection takes the session over; it waits for the reply.
    TakenOver(Kick),
}

/// Why and how a connection ends.
#[derive(Debug)]
pub struct Close {
    pub(super) reason: DisconnectReasonCode,
    /// The client sent DISCONNECT.
    pub(super) graceful: bool,
    /// Send the will (abnormal end, or DISCONNECT 0x04).
    pub(super) will: bool,
    /// Send a DISCONNECT packet (5.0) before closing.
    pub(super) notify: bool,
    /// Reason string for the DISCONNECT; a default per code if `None`.
    pub(super) why: Option<String>,
}

impl Close {
    /// The reason code (sent in a 5.0 DISCONNECT if the client is told).
    pub fn reason(&self) -> DisconnectReasonCode {
        self.reason
    }

    pub(super) fn error(reason: DisconnectReasonCode) -> Close {
        Close {
            reason,
            graceful: false,
            will: true,
            notify: true,
            why: None,
        }
    }

    /// The session went to another connection. An abnormal end for this
    /// one: its will goes (immediately, or cancelled by the resume if it
    /// has a delay).
    pub(super) fn taken_over() -> Close {
        Close {
            reason: DisconnectReasonCode::SessionTakenOver,
            graceful: false,
            will: true,
            notify: false,
            why: None,
        }
    }

    /// The peer went away (or the driver gave up on it): no DISCONNECT.
    pub fn dropped() -> Close {
        Close {
            reason: DisconnectReasonCode::UnspecifiedError,
            graceful: false,
            will: true,
            notify: false,
            why: None,
        }
    }
}

/// A 5.0 DISCONNECT carrying a reason string.
pub(super) fn disconnect_packet(reason: DisconnectReasonCode, why: Option<String>) -> Packet {
    let text = why.unwrap_or_else(|| disconnect_text(reason).to_owned());
    Packet::Disconnect(Disconnect {
        reason_code: reason,
        properties: Some(DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(text),
            user_properties: Vec::new(),
            server_reference: None,
        }),
    })
}

fn disconnect_text(reason: DisconnectReasonCode) -> &'static str {
    use DisconnectReasonCode as D;
    match reason {
        D::SessionTakenOver => "another connection took over this client id",
        D::ServerShuttingDown => "server shutting down",
        D::KeepAliveTimeout => "nothing received within 1.5 x keep alive",
        D::PacketTooLarge => "packet exceeds the maximum packet size",
        D::ReceiveMaximumExceeded => "more unacknowledged QoS 1/2 publishes than receive maximum",
        D::TopicAliasInvalid => "topic alias out of range",
        D::TopicNameInvalid => "invalid topic name",
        D::MalformedPacket => "malformed packet",
        D::ProtocolError => "protocol error",
        _ => "error",
    }
}

/// One connection's MQTT protocol state machine: what does not survive the
/// connection. It does no I/O and reads no clock: bytes and the time are
/// handed in ([`Protocol::receive`], [`Protocol::handle_input`]), and what
/// it has to send is taken out ([`Protocol::poll_transmit`]); whether it
/// must wait for the disk first is asked ([`Protocol::needs_durable`]).
/// The async shell in `connection` drives it over a [`super::Transport`];
/// the tests drive it directly.
pub struct Protocol {
    pub(super) broker: Arc<Broker>,
    pub(super) version: Version,
    pub(super) client: ClientInfo,
    pub(super) session: SessionRef,
    /// The session's queue log (fixed for the session's life).
    pub(super) log: u64,
    pub(super) generation: u64,
    pub(super) inbuf: BytesMut,
    pub(super) out: BytesMut,
    /// Acks that go out after the next durable sync.
    pub(super) held: BytesMut,
    /// Writes were made that `held` acks depend on.
    pub(super) must_sync: bool,
    /// Retained deliveries to queue once their SUBACK is out.
    pub(super) deferred: Vec<(Vec<Arc<Message>>, u8, Option<u32>)>,
    /// The client has a keep-alive (enforced by the broker's watchdog).
    pub(super) keep_alive: bool,
    /// This connection's entry in the keep-alive wheel (0: none).
    pub(super) watch_id: u64,
    pub(super) max_inflight_out: usize,
    pub(super) client_max_packet: usize,
    /// 5.0 topic aliases, allocated on first use.
    pub(super) aliases: Option<Box<Aliases>>,
    /// The client accepts reason strings on acknowledgements (5.0).
    pub(super) problem_info: bool,
    pub(super) alias_out_max: u16,
    pub(super) will: Option<Box<(Message, u32)>>,
    /// Incoming QoS 1 publishes acknowledged in `held` (receive maximum).
    pub(super) unacked_in: usize,
    /// Acknowledgements waiting for a namespace handler's answer, and the
    /// ones behind them (allocated while any is outstanding).
    pub(super) acks: Option<Box<AckQueue>>,
    /// Subscribers whose backlog this connection's publishes filled; input
    /// is paused until they drain (bounded).
    pub(super) throttle: Vec<SessionRef>,
    pub(super) peer: SocketAddr,
}

pub(super) fn v5(version: Version) -> bool {
    version == Version::V5
}

impl Protocol {
    pub(super) fn send(&mut self, p: &Packet) {
        if let Err(e) = codec::encode(self.version, p, &mut self.out) {
            tracing::error!(error = %e, "encode failed");
        }
    }

    /// Queues an ack: held until the next sync if writes are pending.
    pub(super) fn ack(&mut self, p: &Packet) {
        let target = if self.must_sync {
            &mut self.held
        } else {
            &mut self.out
        };
        if let Err(e) = codec::encode(self.version, p, target) {
            tracing::error!(error = %e, "encode failed");
        }
    }

    /// Appends received bytes and handles every whole packet in them.
    pub fn receive(&mut self, data: &[u8], now: Now) -> Result<(), Close> {
        self.inbuf.extend_from_slice(data);
        self.received(now)
    }

    /// Bytes were appended to [`Protocol::input`]: the client is alive
    /// (keep-alive), and every whole packet is handled.
    pub(super) fn received(&mut self, now: Now) -> Result<(), Close> {
        if self.keep_alive {
            self.session.seen_ms.store(now.tick_ms, Ordering::Release);
        }
        self.handle_input(now)
    }

    /// Whether anything received must make the connection end: shutdown,
    /// a takeover, keep-alive expiry, an expired or revoked credential.
    pub fn poll_leave(&mut self) -> Option<Leave> {
        // Shutdown wakes every session's `notify`.
        if self.broker.closing() {
            return Some(Leave::Close(Close {
                will: false,
                ..Close::error(DisconnectReasonCode::ServerShuttingDown)
            }));
        }
        if let Some(reply) = self.session.take_kick() {
            return Some(Leave::TakenOver(reply));
        }
        if self.session.expired_generation.load(Ordering::Acquire) != self.generation {
            return None;
        }
        let cause = self.session.expired_cause.load(Ordering::Acquire);
        if cause == EXPIRED_CREDENTIAL || cause == EXPIRED_REVOKED {
            let why = if cause == EXPIRED_CREDENTIAL {
                "credential expired"
            } else {
                "access revoked"
            };
            tracing::info!(client_id = %self.client.client_id, "{why}");
            return Some(Leave::Close(Close {
                why: Some(why.into()),
                ..Close::error(DisconnectReasonCode::NotAuthorized)
            }));
        }
        Metrics::inc(&self.broker.metrics.keepalive_timeouts);
        tracing::info!(client_id = %self.client.client_id, "keep-alive timeout");
        Some(Leave::Close(Close::error(
            DisconnectReasonCode::KeepAliveTimeout,
        )))
    }

    /// True while acknowledgements wait for writes to become durable: the
    /// driver awaits [`Broker::durable`] and reports it with
    /// [`Protocol::durable_done`] before it transmits.
    pub fn needs_durable(&self) -> bool {
        self.must_sync
    }

    /// The writes that held acknowledgements depend on are durable (or
    /// failed: the connection closes, its acknowledgements never sent).
    pub fn durable_done(&mut self, r: Result<(), SyncFailed>, now: Now) -> Result<(), Close> {
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot acknowledge: sync failed");
            return Err(Close::error(DisconnectReasonCode::UnspecifiedError));
        }
        self.must_sync = false;
        self.unacked_in = 0;
        let held = std::mem::take(&mut self.held);
        self.out.extend_from_slice(&held);
        for (msgs, granted, id) in std::mem::take(&mut self.deferred) {
            self.broker
                .deliver_retained(&self.session, msgs, granted, id);
        }
        // A takeover found here is acted on by the next `poll_leave`.
        let _ = self.poll_deliveries(now);
        Ok(())
    }

    /// The bytes to write now, if any. While [`Protocol::needs_durable`],
    /// only what does not depend on the disk: deliveries and unheld
    /// replies, never an acknowledgement waiting for a sync.
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        if !self.must_sync {
            self.unacked_in = 0;
            self.release_answers();
        }
        // The buffer itself goes: a connection that may now sit idle holds
        // no output buffer (one per write batch is allocated, not one per
        // message; measured no slower than reusing it).
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    /// The session was taken over, or the connection ends: handler answers
    /// still awaited are given up, and a 5.0 client is told why (the
    /// bytes of its DISCONNECT, if it gets one).
    pub fn closing_packet(
        &mut self,
        reason: DisconnectReasonCode,
        why: Option<String>,
    ) -> Option<BytesMut> {
        self.forget_unanswered();
        if !v5(self.version) {
            return None;
        }
        let mut out = BytesMut::new();
        let _ = codec::encode(self.version, &disconnect_packet(reason, why), &mut out);
        Some(out)
    }

    /// The connection has ended (`close` says how; see
    /// [`Close::taken_over`]): the will is scheduled if it goes, the session detached,
    /// the event emitted. Once only.
    pub fn end(&mut self, close: &Close) {
        if self.generation == 0 {
            return;
        }
        let will = self.will.take().map(|w| *w);
        if let (true, Some((msg, delay))) = (close.will, will) {
            self.broker.schedule_will(
                &self.session,
                self.generation,
                self.client.clone(),
                msg,
                delay,
            );
        }
        self.broker.watchdog.unwatch(self.watch_id);
        self.broker.detach(&self.session, self.generation);
        tracing::debug!(client_id = %self.client.client_id, reason = ?close.reason, graceful = close.graceful, "disconnected");
        let cause = match close.reason {
            _ if close.graceful => DisconnectCause::ClientDisconnected,
            DisconnectReasonCode::KeepAliveTimeout => DisconnectCause::KeepAliveTimeout,
            DisconnectReasonCode::SessionTakenOver => DisconnectCause::TakenOver,
            DisconnectReasonCode::ServerShuttingDown => DisconnectCause::ServerShutdown,
            _ if !close.notify => DisconnectCause::Dropped,
            _ => DisconnectCause::Closed,
        };
        self.broker.emit(Event::Disconnected {
            client: self.client.clone(),
            graceful: close.graceful,
            cause,
        });
        self.generation = 0;
    }

    /// Whether [`Protocol::end`] has run.
    pub fn ended(&self) -> bool {
        self.generation == 0
    }

    /// The protocol version the client connected with.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Moves deliveries from the session into the output buffer. Returns
    /// true if it stopped early with more to send, `None` if another
    /// connection has taken the session over.
    pub fn poll_deliveries(&mut self, now: Now) -> Option<bool> {
        const BATCH: usize = 64 * 1024;
        let now = now.unix_secs;
        let low = self.broker.config.limits.throttle_backlog / 2;
        let more = loop {
            if self.out.len() >= BATCH {
                break true;
            }
            let next = {
                let mut s = self.session.state.lock();
                // Another connection has the session now (a takeover that
                // timed out on this one): this one must not drain it.
                if s.generation != self.generation {
                    return None;
                }
                s.next(self.max_inflight_out, now)
            };
            let Some(n) = next else { break false };
            self.emit_next(n, now);
        };
        if self
            .session
            .throttling
            .load(std::sync::atomic::Ordering::Acquire)
        {
            let queued = self.session.state.lock().queued();
            self.session.maybe_drained(queued, low);
        }
        Some(more)
    }

    pub(super) fn emit_next(&mut self, n: Next, now: u64) {
        let log = self.log;
        match n {
            Next::Expired(d) => {
                Metrics::inc(&self.broker.metrics.dropped_expired);
                let expired = Outcome::Dropped(DropReason::Expired);
                self.broker.finish(&self.session, log, expired, |_| Some(d));
            }
            Next::PubRel(pkid) => self.send(&Packet::PubRel(PubRel::new(pkid, None))),
            Next::Publish {
                delivery,
                pkid,
                dup,
            } => {
                let Some(p) = self.publish_packet(&delivery, pkid, dup, now) else {
                    // Too large for this client: counted, and completed so it
                    // does not block the window (MQTT 5 3.1.2.25).
                    Metrics::inc(&self.broker.metrics.dropped_too_large);
                    tracing::warn!(client_id = %self.client.client_id, topic = %delivery.msg.topic, "message exceeds client's maximum packet size; dropped");
                    let too_large = Outcome::Dropped(DropReason::TooLarge);
                    self.broker.finish(&self.session, log, too_large, |s| {
                        if pkid != 0 {
                            s.forget(pkid);
                        }
                        Some(delivery)
                    });
                    return;
                };
                if pkid != 0 && !dup {
                    self.broker.mark_sent(log, &delivery);
                }
                if pkid == 0 {
                    if let Some(t) = &delivery.tracker {
                        t.report(&self.client.client_id, Outcome::Sent);
                    }
                }
                Metrics::inc(&self.broker.metrics.publish_sent);
                self.send(&Packet::Publish(p));
            }
        }
    }

    fn publish_packet(&mut self, d: &Delivery, pkid: u16, dup: bool, now: u64) -> Option<Publish> {
        let m = &d.msg;
        let mut props = None;
        if v5(self.version) {
            let mp = m.props.as_deref().cloned().unwrap_or_default();
            let p = PublishProperties {
                payload_format_indicator: mp.payload_format,
                message_expiry_interval: m.expires_at.map(|t| t.saturating_sub(now).max(1) as u32),
                topic_alias: None,
                response_topic: mp.response_topic,
                correlation_data: mp.correlation_data,
                user_properties: mp.user_properties,
                subscription_identifiers: d.sub_ids.iter().map(|&i| i as usize).collect(),
                content_type: mp.content_type,
            };
            if p != PublishProperties::default() {
                props = Some(p);
            }
        }
        let mut p = Publish {
            dup,
            qos: qos_of(d.qos),
            retain: d.retain,
            topic: Bytes::copy_from_slice(m.topic.as_bytes()),
            pkid,
            payload: m.payload.clone(),
            properties: props,
        };
        if codec::encoded_size(self.version, &Packet::Publish(p.clone())) > self.client_max_packet {
            return None;
        }
        // Outgoing topic aliases save the topic's bytes on every repeat.
        if self.alias_out_max > 0 {
            let max = self.alias_out_max;
            let out = &mut self.aliases.get_or_insert_with(Default::default).outgoing;
            let (a, known) = out.alias(&m.topic, max);
            if a > 0 {
                if known {
                    p.topic = Bytes::new();
                }
                p.properties
                    .get_or_insert_with(PublishProperties::default)
                    .topic_alias = Some(a);
            }
        }
        Some(p)
    }

    pub fn handle_input(&mut self, now: Now) -> Result<(), Close> {
        let max = self.broker.config.limits.max_packet_size as usize;
        loop {
            // A congested subscriber pauses us mid-batch: the rest of the
            // input waits in `inbuf` until it drains.
            if !self.throttle.is_empty() {
                return Ok(());
            }
            match codec::decode(self.version, &mut self.inbuf, max) {
                Ok(Some(p)) => self.handle(p, now)?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    Metrics::inc(&self.broker.metrics.protocol_errors);
                    tracing::info!(client_id = %self.client.client_id, peer = %self.peer, error = %e, "closing on bad packet");
                    let reason = match e {
                        codec::DecodeError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
                        _ => DisconnectReasonCode::MalformedPacket,
                    };
                    return Err(Close::error(reason));
                }
            }
        }
    }

    pub(super) fn protocol_error(&self, reason: DisconnectReasonCode, why: &str) -> Close {
        Metrics::inc(&self.broker.metrics.protocol_errors);
        tracing::info!(client_id = %self.client.client_id, peer = %self.peer, ?reason, "{why}");
        Close {
            why: Some(why.to_owned()),
            ..Close::error(reason)
        }
    }

    fn handle(&mut self, p: Packet, now: Now) -> Result<(), Close> {
        match p {
            Packet::Publish(p) => self.on_publish(p, now.unix_secs),
            Packet::PubAck(a) => {
                self.broker
                    .acknowledged(&self.session, self.log, |s| s.on_puback(a.pkid));
                Ok(())
            }
            Packet::PubRec(r) => {
                let rec = self.session.state.lock().on_pubrec(r.pkid);
                if let Some(d) = &rec {
                    self.broker.mark_released(self.log, d);
                }
                let reason = if rec.is_some() {
                    PubRelReason::Success
                } else {
                    PubRelReason::PacketIdentifierNotFound
                };
                let mut rel = PubRel::new(r.pkid, None);
                rel.reason = reason;
                self.send(&Packet::PubRel(rel));
                Ok(())
            }
            Packet::PubComp(c) => {
                self.broker
                    .acknowledged(&self.session, self.log, |s| s.on_pubcomp(c.pkid));
                Ok(())
            }
            Packet::PubRel(r) => {
                let known = self.session.state.lock().incoming_release(r.pkid);
                let mut comp = PubComp::new(r.pkid, None);
                if !known {
                    comp.reason = PubCompReason::PacketIdentifierNotFound;
                }
                self.ack(&Packet::PubComp(comp));
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                let mut reasons = Vec::with_capacity(u.filters.len());
                for f in &u.filters {
                    let existed = self.broker.unsubscribe(&self.session, f);
                    reasons.push(if existed {
                        UnsubAckReason::Success
                    } else {
                        UnsubAckReason::NoSubscriptionExisted
                    });
                }
                if self.session.state.lock().persistent() && self.broker.sync_acks() {
                    self.must_sync = true;
                }
                self.ack(&Packet::UnsubAck(UnsubAck {
                    pkid: u.pkid,
                    reasons,
                    properties: None,
                }));
                Ok(())
            }
            Packet::PingReq(_) => {
                self.send(&Packet::PingResp(PingResp));
                Ok(())
            }
            Packet::Disconnect(d) => {
                let new_expiry = d
                    .properties
                    .as_ref()
                    .and_then(|p| p.session_expiry_interval);
                if let Some(e) = new_expiry {
                    let mut s = self.session.state.lock();
                    if s.expiry_secs == 0 && e > 0 {
                        drop(s);
                        return Err(self.protocol_error(
                            DisconnectReasonCode::ProtocolError,
                            "session expiry raised from 0 at DISCONNECT",
                        ));
                    }
                    s.expiry_secs = e;
                }
                Err(Close {
                    reason: DisconnectReasonCode::NormalDisconnection,
                    graceful: true,
                    will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
                    notify: false,
                    why: None,
                })
            }
            Packet::Connect(..) => {
                Err(self.protocol_error(DisconnectReasonCode::ProtocolError, "second CONNECT"))
            }
            Packet::Auth(_) => {
                Err(self
                    .protocol_error(DisconnectReasonCode::ProtocolError, "AUTH is not supported"))
            }
            _ => Err(self.protocol_error(
                DisconnectReasonCode::ProtocolError,
                "server-only packet from client",
            )),
        }
    }
}

pub(super) fn boxed_props(p: MessageProps) -> Option<Box<MessageProps>> {
    (p != MessageProps::default()).then(|| Box::new(p))
}

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}
