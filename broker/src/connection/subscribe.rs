//! SUBSCRIBE: validation, authorization (the hooks, or the namespace that
//! owns the filter), limits, and retained messages after the SUBACK.

use super::*;

impl Protocol {
    pub(super) fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let sub_id = s.properties.as_ref().and_then(|p| p.id);
        if sub_id == Some(0) {
            return Err(self.protocol_error(
                DisconnectReasonCode::ProtocolError,
                "subscription identifier 0",
            ));
        }
        let sub_id = sub_id.map(|i| i as u32);
        let limits = self.broker.topic_limits();
        let max_subs = self.broker.config.limits.max_subscriptions;
        let mut codes = Vec::with_capacity(s.filters.len());
        for f in &s.filters {
            let parsed = match topic::parse_filter(&f.path, limits) {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(client_id = %self.client.client_id, filter = %f.path, error = %e, "invalid filter");
                    codes.push(SubscribeReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            if parsed.group.is_some() && f.nolocal {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            }
            let decision = self.broker.authorize_subscribe(&self.client, parsed.filter);
            if decision == SubscribeDecision::Deny {
                Metrics::inc(&self.broker.metrics.acl_denied);
                tracing::info!(client_id = %self.client.client_id, filter = %f.path, "subscribe denied by ACL");
                codes.push(SubscribeReasonCode::NotAuthorized);
                continue;
            }
            let (count, exists) = {
                let st = self.session.state.lock();
                (
                    st.subscriptions.len(),
                    st.subscriptions.contains_key(&f.path),
                )
            };
            if !exists && count >= max_subs {
                tracing::warn!(client_id = %self.client.client_id, "max_subscriptions reached");
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            let granted = f.qos as u8;
            let opts = SubOptions {
                qos: granted,
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                id: sub_id,
                filtered: decision == SubscribeDecision::Filter,
            };
            let rh = match f.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => 0,
                RetainForwardRule::OnNewSubscribe => 1,
                RetainForwardRule::Never => 2,
            };
            let retained = self.broker.subscribe(
                &self.session,
                &f.path,
                parsed.group,
                parsed.filter,
                opts,
                rh,
            );
            if !retained.is_empty() {
                self.deferred.push((retained, granted, sub_id));
            }
            codes.push(SubscribeReasonCode::Success(f.qos));
        }
        if self.session.state.lock().persistent() && self.broker.sync_acks() {
            self.must_sync = true;
        }
        // One reason string naming each refused filter (5.0).
        let refused: Vec<String> = s
            .filters
            .iter()
            .zip(&codes)
            .filter_map(|(f, c)| {
                let why = match c {
                    SubscribeReasonCode::Success(_) => return None,
                    SubscribeReasonCode::NotAuthorized => "not authorized",
                    SubscribeReasonCode::QuotaExceeded => "too many subscriptions",
                    _ => "invalid filter",
                };
                Some(format!("{}: {why}", f.path))
            })
            .collect();
        let properties = (self.problem_info && !refused.is_empty()).then(|| SubAckProperties {
            reason_string: Some(refused.join("; ")),
            user_properties: Vec::new(),
        });
        self.ack(&Packet::SubAck(SubAck {
            pkid: s.pkid,
            return_codes: codes,
            properties,
        }));
        if !self.must_sync {
            for (msgs, granted, id) in std::mem::take(&mut self.deferred) {
                // After the SUBACK in `out`, so retained messages follow it.
                self.broker
                    .deliver_retained(&self.session, msgs, granted, id);
            }
        }
        Ok(())
    }
}
