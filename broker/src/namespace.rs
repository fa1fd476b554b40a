//! Namespace handlers: in-process code that owns a topic prefix (the
//! messaging layer owns its chat topics). A client's PUBLISH inside the
//! prefix is not routed by the broker but handed to the handler, which
//! answers it when it is done (so "acknowledged" can mean "stored in the
//! conversation log") with a reason code of its choosing, and may publish,
//! deliver to any session, or respond to the request meanwhile.
//! Subscriptions inside the prefix are the handler's to grant; a broad one
//! that reaches into it (`#`, `+/...`) is granted by the ordinary hooks but
//! filtered, so the handler decides every message it would see there.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::broker::{Broker, Routed, SessionHandle};
use crate::hooks::{ClientInfo, SubscribeDecision};
use crate::message::{Message, MessageProps};
use crate::store::StoreError;

/// In-process code that owns a topic namespace; see
/// [`ServerBuilder::namespace`](crate::server::ServerBuilder::namespace).
pub trait Namespace: Send + Sync + 'static {
    /// A client published to a topic inside the namespace. Answer through
    /// [`Inbound::ack`] once done; until then the client's acknowledgement
    /// (PUBACK / PUBREC) waits, and acknowledgements after it wait behind
    /// it, in order. Called on the publisher's connection task: start slow
    /// work on a task of your own and answer from there.
    ///
    /// If the connection ends first the answer goes nowhere and the client
    /// sends the PUBLISH again (DUP) when it resumes its session, so a
    /// handler must recognise a repeat (a client message id).
    fn publish(&self, broker: &Arc<Broker>, publish: Inbound);

    /// May `client` subscribe to `filter`, which lies wholly inside the
    /// namespace? Refused unless the handler says otherwise.
    fn authorize_subscribe(&self, client: &ClientInfo, filter: &str) -> SubscribeDecision {
        let _ = (client, filter);
        SubscribeDecision::Deny
    }

    /// May `client` receive a message on `topic` (inside the namespace)
    /// through a subscription that was granted filtered: a broad one from
    /// outside, or one the handler granted with
    /// [`SubscribeDecision::Filter`]? No unless the handler says so.
    fn authorize_read(&self, client: &ClientInfo, topic: &str) -> bool {
        let _ = (client, topic);
        false
    }
}

/// A client's PUBLISH into a namespace.
#[derive(Debug)]
pub struct Inbound {
    /// Who sent it (the principal its credential proved, if any).
    pub client: ClientInfo,
    /// The message, with its 5.0 properties (response topic, correlation
    /// data, user properties).
    pub message: Message,
    /// The answer the client is waiting for.
    pub ack: Ack,
}

impl Inbound {
    /// Publishes `payload` to the request's response topic (MQTT 5
    /// request/response) with its correlation data, at the request's QoS;
    /// `Ok(None)` if it named no response topic. Routed like any publish,
    /// so the requester must be subscribed to its response topic.
    pub fn respond(
        &self,
        broker: &Broker,
        payload: bytes::Bytes,
    ) -> Result<Option<Routed>, StoreError> {
        let props = self.message.props.as_deref();
        let Some(topic) = props.and_then(|p| p.response_topic.clone()) else {
            return Ok(None);
        };
        let correlation_data = props.and_then(|p| p.correlation_data.clone());
        let msg = Message {
            topic,
            payload,
            qos: self.message.qos.min(1),
            retain: false,
            expires_at: None,
            props: Some(Box::new(MessageProps {
                correlation_data,
                ..MessageProps::default()
            })),
        };
        broker.publish(None, msg).map(Some)
    }
}

/// The reason code of an answer (PUBACK, or PUBREC for QoS 2). 3.1.1 has
/// none: a refused publish from a 3.1.1 client is acknowledged and dropped,
/// as the ACL does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// 0x00: accepted.
    Success,
    /// 0x10: accepted, nobody is subscribed.
    NoMatchingSubscribers,
    /// 0x80: refused, no better reason.
    UnspecifiedError,
    /// 0x83: valid, but the handler will not accept it.
    ImplementationSpecificError,
    /// 0x87: not allowed.
    NotAuthorized,
    /// 0x90: the topic is not one the handler knows.
    TopicNameInvalid,
    /// 0x97: a quota or rate limit was exceeded.
    QuotaExceeded,
    /// 0x99: the payload does not decode.
    PayloadFormatInvalid,
}

/// A handler's answer to an [`Inbound`] publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reason code.
    pub code: AckCode,
    /// A reason string (5.0, sent only if the client did not turn problem
    /// information off).
    pub reason: Option<String>,
    /// User properties (5.0, likewise), e.g. the sequence number a message
    /// was stored under.
    pub user_properties: Vec<(String, String)>,
}

impl Reply {
    /// Accepted.
    pub fn success() -> Reply {
        Reply {
            code: AckCode::Success,
            reason: None,
            user_properties: Vec::new(),
        }
    }

    /// Refused with `code` and a reason string.
    pub fn refuse(code: AckCode, reason: impl Into<String>) -> Reply {
        Reply {
            code,
            reason: Some(reason.into()),
            user_properties: Vec::new(),
        }
    }

    /// Adds a user property.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        self.user_properties.push((name.into(), value.into()));
        self
    }
}

/// Where a handler's answer waits for the connection to send it.
#[derive(Debug, Default)]
pub(crate) struct AckSlot {
    reply: Mutex<Option<Reply>>,
}

impl AckSlot {
    /// The answer, once given.
    pub(crate) fn take(&self) -> Option<Reply> {
        self.reply.lock().take()
    }

    /// Not answered yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.reply.lock().is_none()
    }
}

/// The answer a client waits for. Answer it once with [`Ack::answer`] (or
/// [`Ack::accept`]); dropping it unanswered refuses the publish (0x80), so
/// a handler bug never leaves a client waiting for ever.
#[derive(Debug)]
pub struct Ack {
    inner: Option<(Arc<AckSlot>, Weak<SessionHandle>)>,
}

impl Ack {
    pub(crate) fn new(slot: Arc<AckSlot>, session: Weak<SessionHandle>) -> Ack {
        Ack {
            inner: Some((slot, session)),
        }
    }

    /// A QoS 0 publish: nothing is waiting for an answer.
    pub(crate) fn none() -> Ack {
        Ack { inner: None }
    }

    /// False for a QoS 0 publish, which has no acknowledgement.
    pub fn expected(&self) -> bool {
        self.inner.is_some()
    }

    /// Accepts the publish.
    pub fn accept(self) {
        self.answer(Reply::success());
    }

    /// Answers the publish; the client's connection sends it in order.
    pub fn answer(mut self, reply: Reply) {
        self.give(reply);
    }

    fn give(&mut self, reply: Reply) {
        let Some((slot, session)) = self.inner.take() else {
            return;
        };
        *slot.reply.lock() = Some(reply);
        if let Some(s) = session.upgrade() {
            // The connection sees answered slots when woken.
            s.notify.notify_one();
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if self.inner.is_some() {
            tracing::warn!("namespace handler dropped a publish unanswered; refusing it");
            self.give(Reply::refuse(
                AckCode::UnspecifiedError,
                "the server did not handle this publish",
            ));
        }
    }
}

/// Why a namespace could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The prefix is empty, has a wildcard, or is not a valid topic name.
    #[error("namespace prefix {0:?} is not a valid topic name")]
    Invalid(String),
    /// It overlaps a namespace claimed before.
    #[error("namespace prefix {new:?} overlaps {old:?}")]
    Overlaps {
        /// The prefix asked for.
        new: String,
        /// The one already claimed.
        old: String,
    },
}

/// The claimed namespaces of one broker.
#[derive(Default)]
pub(crate) struct Namespaces {
    claimed: Vec<(String, Arc<dyn Namespace>)>,
}

/// Where a subscription filter stands against the claimed namespaces.
pub(crate) enum Reach {
    /// It matches no topic inside any namespace.
    Outside,
    /// Every topic it matches is inside this namespace.
    Within(Arc<dyn Namespace>),
    /// It matches topics inside a namespace and outside.
    Across,
}

impl Namespaces {
    pub(crate) fn claim(
        &mut self,
        prefix: &str,
        handler: Arc<dyn Namespace>,
    ) -> Result<(), NamespaceError> {
        let valid = !prefix.is_empty()
            && !prefix.contains(['+', '#', '\0'])
            && !prefix.starts_with('/')
            && !prefix.ends_with('/');
        if !valid {
            return Err(NamespaceError::Invalid(prefix.to_owned()));
        }
        if let Some((old, _)) = self
            .claimed
            .iter()
            .find(|(old, _)| inside(old, prefix) || inside(prefix, old))
        {
            return Err(NamespaceError::Overlaps {
                new: prefix.to_owned(),
                old: old.clone(),
            });
        }
        self.claimed.push((prefix.to_owned(), handler));
        Ok(())
    }

    /// The handler owning `topic`, if any.
    pub(crate) fn owner(&self, topic: &str) -> Option<&Arc<dyn Namespace>> {
        self.claimed
            .iter()
            .find(|(p, _)| inside(topic, p))
            .map(|(_, h)| h)
    }

    /// Where `filter` (without a shared-subscription group) stands.
    pub(crate) fn reach(&self, filter: &str) -> Reach {
        let mut reach = Reach::Outside;
        for (prefix, handler) in &self.claimed {
            if inside(filter, prefix) {
                // Literal down to the prefix: wildcards below it stay inside.
                return Reach::Within(handler.clone());
            }
            if may_enter(filter, prefix) {
                reach = Reach::Across;
            }
        }
        reach
    }
}

/// True if `topic` (or a filter, read literally) is `prefix` or below it.
fn inside(topic: &str, prefix: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// True if `filter` can match some topic at or below `prefix`.
fn may_enter(filter: &str, prefix: &str) -> bool {
    let mut f = filter.split('/');
    for (i, p) in prefix.split('/').enumerate() {
        match f.next() {
            None => return false,
            Some("#") => return !(i == 0 && p.starts_with('$')),
            Some("+") if i == 0 && p.starts_with('$') => return false,
            Some("+") => {}
            Some(l) if l == p => {}
            Some(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Namespace for Nothing {
        fn publish(&self, _: &Arc<Broker>, _: Inbound) {}
    }

    fn claimed(prefixes: &[&str]) -> Namespaces {
        let mut n = Namespaces::default();
        for p in prefixes {
            n.claim(p, Arc::new(Nothing)).unwrap();
        }
        n
    }

    #[test]
    fn owns_the_prefix_and_what_is_below_it_only() {
        let n = claimed(&["chat", "$app/v1"]);
        assert!(n.owner("chat").is_some());
        assert!(n.owner("chat/u/alice").is_some());
        assert!(n.owner("chatter").is_none());
        assert!(n.owner("x/chat").is_none());
        assert!(n.owner("$app/v1/x").is_some());
        assert!(n.owner("$app/v2").is_none());
    }

    #[test]
    fn filters_are_within_across_or_outside() {
        let n = claimed(&["chat", "$app/v1"]);
        let within = |f| matches!(n.reach(f), Reach::Within(_));
        let across = |f| matches!(n.reach(f), Reach::Across);
        let outside = |f| matches!(n.reach(f), Reach::Outside);
        assert!(within("chat/u/alice/#"));
        assert!(within("chat/+/x"));
        assert!(within("chat"));
        assert!(across("#"));
        assert!(across("+/u/#"));
        assert!(across("+"));
        assert!(across("+/+/+/x"));
        assert!(outside("news/#"));
        assert!(outside("chatter/#"));
        // Leading wildcards never match `$` topics.
        assert!(!matches!(n.reach("#"), Reach::Within(_)));
        assert!(within("$app/v1/#"));
        assert!(across("$app/+/x"));
        let only_dollar = claimed(&["$app"]);
        assert!(matches!(only_dollar.reach("#"), Reach::Outside));
        assert!(matches!(only_dollar.reach("+/x"), Reach::Outside));
    }

    #[test]
    fn overlapping_or_invalid_claims_are_refused() {
        let mut n = claimed(&["chat"]);
        assert!(n.claim("chat/u", Arc::new(Nothing)).is_err());
        assert!(n.claim("chat", Arc::new(Nothing)).is_err());
        assert!(n.claim("c", Arc::new(Nothing)).is_ok());
        for bad in ["", "a/+", "a/#", "/a", "a/"] {
            assert!(n.claim(bad, Arc::new(Nothing)).is_err(), "{bad}");
        }
    }
}
