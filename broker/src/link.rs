//! An in-process link: a session that in-process code drives directly,
//! without a socket or the codec (like rumqttd's local link). It
//! subscribes, publishes and receives like a client, with the same queue,
//! in-flight window, persistence and takeover rules; what it receives it
//! acknowledges with [`Link::ack`]. It is trusted code: the hooks and
//! namespaces do not authorize it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::broker::{Broker, BrokerError, Routed, SessionRef};
use crate::hooks::{ClientInfo, Principal};
use crate::message::{unix_now, Message};
use crate::router::SubOptions;
use crate::session::Next;
use crate::store::StoreError;
use crate::topic;
use crate::tracker::{DropReason, Outcome};

/// How a link attaches.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Discard an earlier session of the same client id.
    pub clean_start: bool,
    /// Session expiry in seconds: 0 ends the session with the link; more
    /// keeps its subscriptions and queue (on disk) while it is away.
    pub session_expiry_secs: u32,
    /// Most deliveries received and not yet acknowledged.
    pub max_inflight: usize,
    /// Who the link acts as, for hooks that look at the principal.
    pub principal: Option<Arc<Principal>>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            clean_start: true,
            session_expiry_secs: 0,
            max_inflight: 1024,
            principal: None,
        }
    }
}

/// Why a link call failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The filter is not a valid topic filter.
    #[error("invalid topic filter {filter:?}: {why}")]
    InvalidFilter {
        /// The filter.
        filter: String,
        /// What is wrong with it.
        why: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A message the link received. Acknowledge it with [`Link::ack`] once it
/// is safely handled; until then it counts against the in-flight window,
/// and if the link goes away it is delivered again (`dup`) to the next
/// link of a persistent session.
#[derive(Debug, Clone)]
pub struct LinkDelivery {
    /// The message (the topic it was published to, the payload, its 5.0
    /// properties).
    pub message: Arc<Message>,
    /// QoS it was delivered with.
    pub qos: u8,
    /// RETAIN flag it was delivered with.
    pub retain: bool,
    /// Delivered before, to an earlier link of this session.
    pub dup: bool,
    /// Identifies it for [`Link::ack`] (0 for QoS 0, which needs none).
    pub id: u16,
}

/// An attached in-process session. Dropping it detaches it.
pub struct Link {
    broker: Arc<Broker>,
    session: SessionRef,
    client: ClientInfo,
    generation: u64,
    log: u64,
    max_inflight: usize,
    resend: VecDeque<Next>,
}

impl Broker {
    /// Attaches an in-process link as client `client_id`, taking the
    /// session over from any connection that has it.
    pub async fn link(
        self: &Arc<Self>,
        client_id: &str,
        opts: LinkOptions,
    ) -> Result<Link, BrokerError> {
        let client = ClientInfo {
            client_id: client_id.into(),
            username: None,
            principal: opts.principal,
        };
        let attached = self
            .attach(&client, opts.clean_start, opts.session_expiry_secs)
            .await?;
        let (log, resend) = {
            let s = attached.session.state.lock();
            (s.log, s.resend().into())
        };
        Ok(Link {
            broker: self.clone(),
            session: attached.session,
            client,
            generation: attached.generation,
            log,
            max_inflight: opts.max_inflight.max(1),
            resend,
        })
    }
}

impl Link {
    /// The link's client id.
    pub fn client_id(&self) -> &str {
        &self.client.client_id
    }

    /// Subscribes to `filter` at `qos` (at most 1: a link acknowledges
    /// once). Retained messages that match are queued for it.
    pub fn subscribe(&self, filter: &str, qos: u8) -> Result<(), LinkError> {
        let parsed = topic::parse_filter(filter, self.broker.topic_limits()).map_err(|e| {
            LinkError::InvalidFilter {
                filter: filter.to_owned(),
                why: e.to_string(),
            }
        })?;
        let qos = qos.min(1);
        let opts = SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
            filtered: false,
        };
        let retained =
            self.broker
                .subscribe(&self.session, filter, parsed.group, parsed.filter, opts, 0);
        self.broker
            .deliver_retained(&self.session, retained, qos, None);
        Ok(())
    }

    /// Removes a subscription; true if it existed.
    pub fn unsubscribe(&self, filter: &str) -> bool {
        self.broker.unsubscribe(&self.session, filter)
    }

    /// Publishes as this client (a no-local subscription of its own does
    /// not get it back). Await [`Broker::durable`] before counting on it
    /// being on disk if [`Routed::wrote`].
    pub fn publish(&self, msg: Message) -> Result<Routed, StoreError> {
        self.broker.publish(Some(&self.client.client_id), msg)
    }

    /// The next delivery, waiting for one; `None` once the link is closed
    /// (another connection took the session over, or the broker is
    /// shutting down).
    pub async fn recv(&mut self) -> Option<LinkDelivery> {
        loop {
            // Registered before looking, so a delivery queued in between
            // still wakes us.
            let session = self.session.clone();
            let notified = session.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_recv() {
                Ok(Some(d)) => return Some(d),
                Ok(None) => notified.await,
                Err(Closed) => return None,
            }
        }
    }

    /// The next delivery if one is ready. `Err` once the link is closed.
    pub fn try_recv(&mut self) -> Result<Option<LinkDelivery>, Closed> {
        if self.broker.closing() {
            return Err(Closed);
        }
        if let Some(kick) = self.session.take_kick() {
            self.leave();
            let _ = kick.send(());
            return Err(Closed);
        }
        loop {
            let next = match self.resend.pop_front() {
                Some(n) => Some(n),
                None => {
                    let mut s = self.session.state.lock();
                    if s.generation != self.generation {
                        return Err(Closed);
                    }
                    s.next(self.max_inflight, unix_now())
                }
            };
            let Some(next) = next else {
                return Ok(None);
            };
            match next {
                Next::Expired(d) => {
                    let expired = Outcome::Dropped(DropReason::Expired);
                    self.broker
                        .finish(&self.session, self.log, expired, |_| Some(d));
                }
                // A QoS 2 delivery of an earlier client that got as far as
                // PUBREC: the link finishes it.
                Next::PubRel(id) => self.finish(id, true),
                Next::Publish {
                    delivery,
                    pkid,
                    dup,
                } => {
                    if pkid != 0 && !dup {
                        self.broker.mark_sent(self.log, &delivery);
                    }
                    if pkid == 0 {
                        if let Some(t) = &delivery.tracker {
                            t.report(&self.client.client_id, Outcome::Sent);
                        }
                    }
                    self.drained();
                    return Ok(Some(LinkDelivery {
                        message: delivery.msg.clone(),
                        qos: delivery.qos,
                        retain: delivery.retain,
                        dup,
                        id: pkid,
                    }));
                }
            }
        }
    }

    /// Acknowledges a delivery: it leaves the session (and the disk), and
    /// the tracker of whoever caused it hears so. Unknown ids are ignored.
    pub fn ack(&self, d: &LinkDelivery) {
        if d.id != 0 {
            self.finish(d.id, d.qos == 2);
        }
    }

    fn finish(&self, id: u16, qos2: bool) {
        self.broker.acknowledged(&self.session, self.log, |s| {
            if qos2 {
                s.on_pubrec(id);
                s.on_pubcomp(id)
            } else {
                s.on_puback(id)
            }
        });
    }

    /// Wakes publishers throttled by this session's backlog.
    fn drained(&self) {
        if self.session.throttling.load(Ordering::Acquire) {
            let low = self.broker.config.limits.throttle_backlog / 2;
            let queued = self.session.state.lock().queued();
            self.session.maybe_drained(queued, low);
        }
    }

    fn leave(&mut self) {
        if self.generation != 0 {
            self.broker.detach(&self.session, self.generation);
            self.generation = 0;
        }
    }
}

/// The link was closed: taken over, or the broker is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("link closed")]
pub struct Closed;

impl Drop for Link {
    fn drop(&mut self) {
        self.leave();
    }
}
