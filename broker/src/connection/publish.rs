//! A client's PUBLISH: topic aliases, limits, authorization, then routing
//! through the broker or a hand-off to the namespace that owns the topic,
//! and the acknowledgement in PUBLISH order.

use super::*;

impl Protocol {
    pub(super) fn on_publish(&mut self, p: Publish, now: u64) -> Result<(), Close> {
        Metrics::inc(&self.broker.metrics.publish_received);
        let v5 = v5(self.version);
        let props = p.properties.unwrap_or_default();
        // Topic, resolving 5.0 topic aliases.
        let Ok(mut topic) = String::from_utf8(p.topic.to_vec()) else {
            return Err(
                self.protocol_error(DisconnectReasonCode::MalformedPacket, "topic is not UTF-8")
            );
        };
        if let Some(alias) = props.topic_alias {
            if alias == 0 || alias > self.broker.config.limits.topic_alias_max {
                return Err(self.protocol_error(
                    DisconnectReasonCode::TopicAliasInvalid,
                    "topic alias out of range",
                ));
            }
            let incoming = &mut self.aliases.get_or_insert_with(Default::default).incoming;
            if topic.is_empty() {
                match incoming.get(&alias) {
                    Some(t) => topic = t.clone(),
                    None => {
                        return Err(self.protocol_error(
                            DisconnectReasonCode::ProtocolError,
                            "unknown topic alias",
                        ))
                    }
                }
            } else {
                incoming.insert(alias, topic.clone());
            }
        }
        if let Err(e) = topic::validate_name(&topic, self.broker.topic_limits()) {
            return Err(self.protocol_error(
                DisconnectReasonCode::TopicNameInvalid,
                &format!("invalid PUBLISH topic: {e}"),
            ));
        }
        let qos = p.qos as u8;
        // Receive maximum: unacknowledged QoS 1/2 publishes from this client.
        if qos > 0 {
            let answers = self.acks.as_ref().map_or(0, |a| a.qos1_pending());
            let pending = self.unacked_in + answers + self.session.state.lock().incoming_pending();
            if v5 && pending >= self.broker.config.limits.max_inflight as usize {
                return Err(self.protocol_error(
                    DisconnectReasonCode::ReceiveMaximumExceeded,
                    "receive maximum exceeded",
                ));
            }
        }
        if qos == 2 && !self.session.state.lock().incoming_qos2(p.pkid) {
            // Re-sent before PUBREL: acknowledge again, do not route again;
            // after the writes of the first one are durable (it may have come
            // on a connection that left before its PUBREC).
            if self.broker.sync_acks() {
                self.must_sync = true;
            }
            self.ack_publish(Packet::PubRec(PubRec::new(p.pkid, None)), false);
            return Ok(());
        }
        let problem_info = self.problem_info;
        let reply = |reason: PubAckReason| -> Option<Packet> {
            let text = match reason {
                PubAckReason::NotAuthorized => Some("not authorized to publish to this topic"),
                PubAckReason::PayloadFormatInvalid => Some("payload is not valid UTF-8"),
                _ => None,
            };
            let text = text.filter(|_| problem_info).map(str::to_owned);
            match qos {
                1 => Some(Packet::PubAck(PubAck {
                    pkid: p.pkid,
                    reason,
                    properties: text.map(|t| PubAckProperties {
                        reason_string: Some(t),
                        user_properties: Vec::new(),
                    }),
                })),
                2 => {
                    let r = match reason {
                        PubAckReason::Success => PubRecReason::Success,
                        PubAckReason::NotAuthorized => PubRecReason::NotAuthorized,
                        PubAckReason::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
                        _ => PubRecReason::UnspecifiedError,
                    };
                    Some(Packet::PubRec(PubRec {
                        pkid: p.pkid,
                        reason: r,
                        properties: text.map(|t| PubRecProperties {
                            reason_string: Some(t),
                            user_properties: Vec::new(),
                        }),
                    }))
                }
                _ => None,
            }
        };
        let namespace = self.broker.namespace_of(&topic);
        if namespace.is_none() && !self.broker.hooks.authorize_publish(&self.client, &topic) {
            Metrics::inc(&self.broker.metrics.acl_denied);
            tracing::info!(client_id = %self.client.client_id, %topic, "publish denied by ACL");
            if qos == 2 {
                // A refused QoS 2 flow ends at PUBREC (5.0 4.3.3).
                self.session.state.lock().incoming_release(p.pkid);
            }
            // 3.1.1 has no way to say no: acknowledge and drop.
            let reason = if v5 {
                PubAckReason::NotAuthorized
            } else {
                PubAckReason::Success
            };
            if let Some(r) = reply(reason) {
                self.ack_publish(r, false);
            }
            return Ok(());
        }
        if v5
            && props.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            if qos == 2 {
                self.session.state.lock().incoming_release(p.pkid);
            }
            if let Some(r) = reply(PubAckReason::PayloadFormatInvalid) {
                self.ack_publish(r, false);
            }
            return Ok(());
        }
        let msg = Message {
            topic,
            payload: p.payload,
            qos,
            retain: p.retain,
            expires_at: props.message_expiry_interval.map(|e| now + e as u64),
            props: boxed_props(MessageProps {
                payload_format: props.payload_format_indicator,
                content_type: props.content_type,
                response_topic: props.response_topic,
                correlation_data: props.correlation_data,
                user_properties: props.user_properties,
            }),
        };
        if let Some(ns) = namespace {
            self.hand_to_namespace(ns, p.pkid, msg);
            return Ok(());
        }
        match self.broker.publish(Some(&self.client.client_id), msg) {
            Ok(routed) => {
                if routed.wrote && qos > 0 && self.broker.sync_acks() {
                    self.must_sync = true;
                }
                for h in routed.congested {
                    // Our own backlog never throttles us (we drain it ourselves).
                    if !Arc::ptr_eq(&h, &self.session)
                        && !self.throttle.iter().any(|t| Arc::ptr_eq(t, &h))
                    {
                        self.throttle.push(h);
                    }
                }
            }
            Err(e) => {
                Metrics::inc(&self.broker.metrics.store_errors);
                tracing::error!(error = %e, "store write failed; publish not acknowledged");
                return Err(Close::error(DisconnectReasonCode::UnspecifiedError));
            }
        }
        if let Some(r) = reply(PubAckReason::Success) {
            self.ack_publish(r, qos == 1);
        }
        Ok(())
    }

    /// Hands a publish to the namespace that owns its topic; its answer
    /// is released in order by [`Protocol::release_answers`].
    fn hand_to_namespace(&mut self, ns: Arc<dyn Namespace>, pkid: u16, msg: Message) {
        Metrics::inc(&self.broker.metrics.namespace_publishes);
        let ack = if msg.qos == 0 {
            Ack::none()
        } else {
            let slot = Arc::new(AckSlot::default());
            self.acks
                .get_or_insert_with(Default::default)
                .wait_for(slot.clone(), pkid, msg.qos);
            Ack::new(slot, Arc::downgrade(&self.session))
        };
        let publish = Inbound {
            client: self.client.clone(),
            message: msg,
            ack,
        };
        ns.publish(&self.broker, publish);
    }

    /// The connection ends: QoS 2 publishes whose handler has not answered
    /// are forgotten by the session, so their resend (DUP) goes to the
    /// handler again instead of being acknowledged unseen.
    pub(super) fn forget_unanswered(&mut self) {
        let Some(q) = self.acks.as_ref() else { return };
        let ids: Vec<u16> = q.unanswered_qos2().collect();
        if ids.is_empty() {
            return;
        }
        let mut s = self.session.state.lock();
        for id in ids {
            s.incoming_release(id);
        }
    }

    /// Queues a publish's acknowledgement: behind answers still awaited
    /// from a namespace handler if any, else as [`Protocol::ack`] does.
    fn ack_publish(&mut self, p: Packet, qos1: bool) {
        match self.acks.as_mut() {
            Some(q) => q.push(p, qos1),
            None => {
                self.unacked_in += usize::from(qos1);
                self.ack(&p);
            }
        }
    }

    /// Moves the acknowledgements whose turn has come (answered by their
    /// handler, or made by the broker behind them) to the output. Runs
    /// after the durable wait, which covers the writes of every broker-made
    /// one queued before it.
    pub(super) fn release_answers(&mut self) {
        let Some(q) = self.acks.as_mut() else { return };
        let mut out = Vec::new();
        while let Some(r) = q.pop() {
            out.push(r);
        }
        if q.is_empty() {
            self.acks = None;
        }
        for r in out {
            match r {
                Released::Packet(p) => self.send(&p),
                Released::Answer { pkid, qos, reply } => self.send_answer(pkid, qos, reply),
            }
        }
    }

    /// A handler's answer as a PUBACK or PUBREC (3.1.1: a plain PUBACK /
    /// PUBREC; a refusal is dropped silently, as the ACL does).
    fn send_answer(&mut self, pkid: u16, qos: u8, reply: Reply) {
        let ok = matches!(
            reply.code,
            AckCode::Success | AckCode::NoMatchingSubscribers
        );
        if !ok {
            Metrics::inc(&self.broker.metrics.namespace_refused);
            if qos == 2 {
                // A refused QoS 2 flow ends at PUBREC (5.0 4.3.3).
                self.session.state.lock().incoming_release(pkid);
            }
        }
        let (reason, user_properties) = if self.problem_info {
            (reply.reason, reply.user_properties)
        } else {
            (None, Vec::new())
        };
        let has_props = reason.is_some() || !user_properties.is_empty();
        let packet = if qos == 1 {
            let code = match reply.code {
                AckCode::Success => PubAckReason::Success,
                AckCode::NoMatchingSubscribers => PubAckReason::NoMatchingSubscribers,
                AckCode::UnspecifiedError => PubAckReason::UnspecifiedError,
                AckCode::ImplementationSpecificError => PubAckReason::ImplementationSpecificError,
                AckCode::NotAuthorized => PubAckReason::NotAuthorized,
                AckCode::TopicNameInvalid => PubAckReason::TopicNameInvalid,
                AckCode::QuotaExceeded => PubAckReason::QuotaExceeded,
                AckCode::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
            };
            Packet::PubAck(PubAck {
                pkid,
                reason: code,
                properties: has_props.then_some(PubAckProperties {
                    reason_string: reason,
                    user_properties,
                }),
            })
        } else {
            let code = match reply.code {
                AckCode::Success => PubRecReason::Success,
                AckCode::NoMatchingSubscribers => PubRecReason::NoMatchingSubscribers,
                AckCode::UnspecifiedError => PubRecReason::UnspecifiedError,
                AckCode::ImplementationSpecificError => PubRecReason::ImplementationSpecificError,
                AckCode::NotAuthorized => PubRecReason::NotAuthorized,
                AckCode::TopicNameInvalid => PubRecReason::TopicNameInvalid,
                AckCode::QuotaExceeded => PubRecReason::QuotaExceeded,
                AckCode::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
            };
            Packet::PubRec(PubRec {
                pkid,
                reason: code,
                properties: has_props.then_some(PubRecProperties {
                    reason_string: reason,
                    user_properties,
                }),
            })
        };
        self.send(&packet);
    }
}
