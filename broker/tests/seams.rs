//! The broker's seams used the way an embedder (the messaging layer) will.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use courier::redb_store::RedbStore;
use courier::store::Store;

#[tokio::test]
async fn an_injected_store_receives_the_brokers_writes() {
    use common::v4::*;
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("mine")).unwrap();
    let mut cfg = courier::Config {
        // Not used: the store is given.
        data_dir: dir.path().join("unused"),
        ..courier::Config::default()
    };
    cfg.listeners = vec![listener(courier::config::ListenerKind::Tcp)];
    let server = courier::Server::builder(cfg)
        .store(store.clone() as Arc<dyn Store>)
        .start()
        .await
        .unwrap();
    let port = server
        .addr(courier::config::ListenerKind::Tcp)
        .unwrap()
        .port();
    let (c, mut el) = client(opts("pub", port));
    c.publish("config/theme", QoS::AtLeastOnce, true, "dark")
        .await
        .unwrap();
    puback(&mut el).await;
    // Acknowledged, so committed to the store the embedder passed in.
    let retained = store.load_retained().unwrap();
    assert_eq!(retained.len(), 1);
    assert_eq!(retained[0].payload, Bytes::from("dark"));
    assert!(
        !dir.path().join("unused").exists(),
        "no second store opened"
    );
}

/// An authenticator like the messaging layer's: the password is an access
/// token `user:device:seconds-left`, and the principal it proves decides
/// what the connection may do later.
struct TokenHooks;

impl courier::Hooks for TokenHooks {
    fn authenticate<'a>(
        &'a self,
        req: courier::hooks::AuthRequest<'a>,
    ) -> courier::hooks::HookFuture<'a, courier::hooks::AuthDecision> {
        courier::hooks::ready(self.decide(req.username, req.password))
    }

    fn authorize_publish(&self, client: &courier::ClientInfo, topic: &str) -> bool {
        // The principal, not the client id or username, decides.
        let Some(p) = &client.principal else {
            return false;
        };
        topic.starts_with(&format!("users/{}/", p.user))
    }

    fn authorize_subscribe(
        &self,
        _: &courier::ClientInfo,
        _: &str,
    ) -> courier::hooks::SubscribeDecision {
        courier::hooks::SubscribeDecision::Allow
    }
}

impl TokenHooks {
    fn decide(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> courier::hooks::AuthDecision {
        use courier::hooks::{AuthDecision, Principal};
        let token = String::from_utf8_lossy(password.unwrap_or_default()).into_owned();
        let parts: Vec<&str> = token.split(':').collect();
        let [user, device, ttl] = parts[..] else {
            return AuthDecision::BadCredentials;
        };
        // A token for another user than the connection claims is refused
        // (an empty username: the token says who).
        if username
            .filter(|u| !u.is_empty())
            .is_some_and(|u| u != user)
        {
            return AuthDecision::BadCredentials;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        AuthDecision::AllowAs(Arc::new(Principal {
            user: user.into(),
            device: Some(device.into()),
            expires_at: Some(now + ttl.parse::<u64>().unwrap_or(0)),
            claims: vec![],
        }))
    }
}

async fn token_broker() -> courier::Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = courier::Config {
        data_dir: dir.keep().join("data"),
        ..courier::Config::default()
    };
    cfg.listeners = vec![listener(courier::config::ListenerKind::Tcp)];
    courier::Server::builder(cfg)
        .hooks(Arc::new(TokenHooks))
        .start()
        .await
        .unwrap()
}

fn connect_with(id: &str, user: Option<&str>, token: &str) -> rumqttc::v5::mqttbytes::v5::Packet {
    use rumqttc::v5::mqttbytes::v5::{Login, Packet};
    let Packet::Connect(c, w, _) = connect5(id, true, None) else {
        unreachable!()
    };
    Packet::Connect(c, w, Some(Login::new(user.unwrap_or(""), token)))
}

async fn connack_code(
    addr: std::net::SocketAddr,
    connect: rumqttc::v5::mqttbytes::v5::Packet,
) -> (Raw, rumqttc::v5::mqttbytes::v5::ConnectReturnCode) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let mut r = Raw::connect(addr, true).await;
    r.send(connect).await;
    match r.next().await {
        RawEvent::Packet(Packet::ConnAck(a)) => (r, a.code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn the_principal_from_the_authenticator_decides_later_hooks() {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, Publish};
    use rumqttc::v5::mqttbytes::QoS;
    let server = token_broker().await;
    let addr = server.addr(courier::config::ListenerKind::Tcp).unwrap();
    let (mut alice, code) = connack_code(addr, connect_with("a1", None, "alice:phone:3600")).await;
    assert_eq!(code, ConnectReturnCode::Success);
    for (pkid, topic, want) in [
        (1, "users/alice/outbox", PubAckReason::Success),
        (2, "users/bob/outbox", PubAckReason::NotAuthorized),
    ] {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, "hi", None);
        p.pkid = pkid;
        alice.send(Packet::Publish(p)).await;
        match alice.next().await {
            RawEvent::Packet(Packet::PubAck(a)) => assert_eq!(a.reason, want, "{topic}"),
            other => panic!("{other:?}"),
        }
    }
    // Claiming to be alice with bob's token is refused.
    let (_r, code) = connack_code(addr, connect_with("b1", Some("alice"), "bob:phone:3600")).await;
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    // An expired token is refused.
    let (_r, code) = connack_code(addr, connect_with("a2", None, "alice:tablet:0")).await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn a_connection_whose_credential_expires_is_disconnected_with_0x87() {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode, Packet};
    let server = token_broker().await;
    let addr = server.addr(courier::config::ListenerKind::Tcp).unwrap();
    let (mut r, code) = connack_code(addr, connect_with("a1", None, "alice:phone:1")).await;
    assert_eq!(code, ConnectReturnCode::Success);
    let d = tokio::time::timeout(3 * WAIT, async {
        loop {
            match r.next().await {
                RawEvent::Packet(Packet::Disconnect(d)) => return d,
                RawEvent::Closed => panic!("closed without DISCONNECT"),
                _ => {}
            }
        }
    })
    .await
    .expect("disconnected once the token expired");
    assert_eq!(d.reason_code, DisconnectReasonCode::NotAuthorized);
    let why = d.properties.and_then(|p| p.reason_string);
    assert_eq!(why.as_deref(), Some("credential expired"));
}

#[tokio::test]
async fn a_slow_listener_loses_no_clients_state() {
    use courier::feed::DisconnectCause;
    let b = TestBroker::start().await;
    let feed = b.server.broker.feed();
    let mut lossy = b.server.broker.events();
    // 50 devices connect and leave 50 times each while nobody reads:
    // 5,000 events, more than the broadcast keeps.
    for round in 0..50 {
        let mut tasks = Vec::new();
        for d in 0..50 {
            let addr = b.addr();
            tasks.push(tokio::spawn(async move {
                let id = format!("dev{d}");
                let mut r = Raw::connected5(addr, connect5(&id, true, None)).await;
                r.send(rumqttc::v5::mqttbytes::v5::Packet::Disconnect(
                    rumqttc::v5::mqttbytes::v5::Disconnect::new(
                        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NormalDisconnection,
                    ),
                ))
                .await;
                assert!(r.until_closed().await.is_none());
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let _ = round;
    }
    // The connections' ends are reported as their tasks finish.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 50
        || seen
            .values()
            .any(|u: &courier::feed::ClientUpdate| u.online)
    {
        let u = tokio::time::timeout_at(deadline, feed.next())
            .await
            .expect("every device's latest state");
        seen.insert(u.client.client_id.to_string(), u);
    }
    for u in seen.values() {
        assert_eq!(u.cause, Some(DisconnectCause::ClientDisconnected));
    }
    assert_eq!(feed.pending(), 0);
    // The broadcast receiver, by contrast, fell behind.
    assert!(matches!(
        lossy.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
    ));
}

// ---- namespace handler, delivery callbacks, in-process link, async auth --

use courier::namespace::{AckCode, Inbound, Namespace, Reply};
use rumqttc::v5::mqttbytes::v5::{
    Packet as P, PubAck as P5Ack, PubAckReason, Publish as P5Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS as Q5;

/// A handler shaped like the messaging layer's send path: a publish to
/// `chat/send` is appended to a conversation log (idempotent on the
/// client's message id, a user property), acknowledged once durable with
/// its sequence number, and answered on the request's response topic.
/// Each client may subscribe to its own response topic only.
struct ConversationLog {
    /// Publishes to `chat/hold` wait here until the test releases them.
    held: parking_lot::Mutex<Vec<Inbound>>,
}

impl Namespace for ConversationLog {
    fn publish(&self, broker: &Arc<courier::Broker>, p: Inbound) {
        use courier::logs::NewRecord;
        match p.message.topic.as_str() {
            "chat/send" => {
                let broker = broker.clone();
                tokio::spawn(async move {
                    let props = p.message.props.as_deref();
                    let cmid = props
                        .and_then(|pr| pr.user_properties.iter().find(|(k, _)| k == "cmid"))
                        .map(|(_, v)| format!("{}:{v}", p.client.client_id));
                    let rec = NewRecord {
                        id: cmid,
                        data: p.message.payload.clone(),
                    };
                    let appended = match broker.logs().append("conv/1", vec![rec], None) {
                        Ok(a) => a,
                        Err(e) => {
                            return p
                                .ack
                                .answer(Reply::refuse(AckCode::UnspecifiedError, e.to_string()))
                        }
                    };
                    if appended.durable().await.is_err() {
                        return p
                            .ack
                            .answer(Reply::refuse(AckCode::UnspecifiedError, "not stored"));
                    }
                    let seq = appended.seqs[0];
                    p.respond(&broker, Bytes::from(format!("stored {seq}")))
                        .unwrap();
                    p.ack
                        .answer(Reply::success().with_property("seq", seq.to_string()));
                });
            }
            "chat/hold" => self.held.lock().push(p),
            "chat/busy" => p
                .ack
                .answer(Reply::refuse(AckCode::QuotaExceeded, "slow down")),
            // Dropped unanswered: the client still gets an answer (0x80).
            _ => drop(p),
        }
    }

    fn authorize_subscribe(
        &self,
        client: &courier::ClientInfo,
        filter: &str,
    ) -> courier::hooks::SubscribeDecision {
        use courier::hooks::SubscribeDecision;
        if filter == format!("chat/res/{}", client.client_id) {
            SubscribeDecision::Allow
        } else {
            SubscribeDecision::Deny
        }
    }

    fn authorize_read(&self, client: &courier::ClientInfo, topic: &str) -> bool {
        topic == format!("chat/res/{}", client.client_id)
    }
}

async fn namespace_broker() -> (courier::Server, Arc<ConversationLog>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_in(dir.path());
    let handler = Arc::new(ConversationLog {
        held: parking_lot::Mutex::new(Vec::new()),
    });
    let server = courier::Server::builder(cfg)
        .namespace("chat", handler.clone())
        .start()
        .await
        .unwrap();
    (server, handler, dir)
}

fn publish5(topic: &str, pkid: u16, payload: &str, props: Option<PublishProperties>) -> P {
    let mut p = P5Publish::new(topic, Q5::AtLeastOnce, payload.to_owned(), props);
    p.pkid = pkid;
    P::Publish(p)
}

async fn next_puback(r: &mut Raw) -> P5Ack {
    loop {
        match r.next().await {
            RawEvent::Packet(P::PubAck(a)) => return a,
            RawEvent::Packet(_) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_namespace_handler_stores_answers_and_responds() {
    let (server, _h, _dir) = namespace_broker().await;
    let addr = server.addr(courier::config::ListenerKind::Tcp).unwrap();
    let mut alice = Raw::connected5(addr, connect5("alice", true, None)).await;
    // Its own response topic is granted; another client's is not.
    alice.subscribe5("chat/res/alice", Q5::AtLeastOnce).await;
    use rumqttc::v5::mqttbytes::v5::{Filter, Subscribe};
    alice
        .send(P::Subscribe(Subscribe::new(
            Filter::new("chat/res/bob", Q5::AtLeastOnce),
            None,
        )))
        .await;
    match alice.next().await {
        RawEvent::Packet(P::SubAck(s)) => assert_eq!(
            s.return_codes,
            vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::NotAuthorized]
        ),
        other => panic!("{other:?}"),
    }
    let request = |cmid: &str| PublishProperties {
        response_topic: Some("chat/res/alice".into()),
        correlation_data: Some(Bytes::from(format!("req-{cmid}"))),
        user_properties: vec![("cmid".into(), cmid.into())],
        ..PublishProperties::default()
    };
    // Two sends, then the first again (a resend after a lost PUBACK).
    let mut seqs = Vec::new();
    for (pkid, cmid) in [(1, "m1"), (2, "m2"), (3, "m1")] {
        alice
            .send(publish5("chat/send", pkid, cmid, Some(request(cmid))))
            .await;
        let mut ack = None;
        let mut response = None;
        while ack.is_none() || response.is_none() {
            match alice.next().await {
                RawEvent::Packet(P::PubAck(a)) => ack = Some(a),
                RawEvent::Packet(P::Publish(p)) => {
                    let props = p.properties.clone().unwrap_or_default();
                    response = Some((p.payload.clone(), props.correlation_data));
                    let mut a = P5Ack::new(p.pkid, None);
                    a.reason = PubAckReason::Success;
                    alice.send(P::PubAck(a)).await;
                }
                other => panic!("{other:?}"),
            }
        }
        let ack = ack.unwrap();
        assert_eq!(ack.pkid, pkid);
        assert_eq!(ack.reason, PubAckReason::Success);
        let seq = ack
            .properties
            .unwrap()
            .user_properties
            .into_iter()
            .find(|(k, _)| k == "seq")
            .map(|(_, v)| v.parse::<u64>().unwrap())
            .expect("seq user property");
        let (payload, corr) = response.unwrap();
        assert_eq!(payload, Bytes::from(format!("stored {seq}")));
        assert_eq!(corr, Some(Bytes::from(format!("req-{cmid}"))));
        seqs.push(seq);
    }
    assert_eq!(seqs, vec![1, 2, 1], "the resend has the original's number");
    // Acknowledged means stored: the log's committed records are there.
    let recs = server.broker.logs().read("conv/1", 1, 10).unwrap();
    let bodies: Vec<Bytes> = recs.into_iter().map(|r| r.data).collect();
    assert_eq!(bodies, vec![Bytes::from("m1"), Bytes::from("m2")]);
}

#[tokio::test]
async fn namespace_answers_keep_publish_order_and_refusals_have_reasons() {
    let (server, handler, _dir) = namespace_broker().await;
    let addr = server.addr(courier::config::ListenerKind::Tcp).unwrap();
    let mut r = Raw::connected5(addr, connect5("c", true, None)).await;
    // 1 waits for the handler; 2 is a plain topic, 3 is refused, 4 dropped.
    r.send(publish5("chat/hold", 1, "x", None)).await;
    r.send(publish5("plain/topic", 2, "x", None)).await;
    r.send(publish5("chat/busy", 3, "x", None)).await;
    r.send(publish5("chat/unknown", 4, "x", None)).await;
    // Nothing may overtake the unanswered first one.
    let wait = tokio::time::timeout(std::time::Duration::from_millis(300), r.next()).await;
    assert!(wait.is_err(), "an acknowledgement overtook: {wait:?}");
    let held = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(p) = handler.held.lock().pop() {
                return p;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    held.ack
        .answer(Reply::refuse(AckCode::NotAuthorized, "not a member"));
    let mut got = Vec::new();
    for _ in 0..4 {
        let a = next_puback(&mut r).await;
        let why = a.properties.and_then(|p| p.reason_string);
        got.push((a.pkid, a.reason, why));
    }
    assert_eq!(
        got,
        vec![
            (1, PubAckReason::NotAuthorized, Some("not a member".into())),
            (2, PubAckReason::Success, None),
            (3, PubAckReason::QuotaExceeded, Some("slow down".into())),
            (
                4,
                PubAckReason::UnspecifiedError,
                Some("the server did not handle this publish".into())
            ),
        ]
    );
    let m = &server.broker.metrics;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(m.namespace_publishes.load(Relaxed), 3);
    assert_eq!(m.namespace_refused.load(Relaxed), 3);
}

#[tokio::test]
async fn a_namespace_is_never_routed_and_broad_subscriptions_are_filtered_in_it() {
    let (server, _h, _dir) = namespace_broker().await;
    let addr = server.addr(courier::config::ListenerKind::Tcp).unwrap();
    let mut spy = Raw::connected5(addr, connect5("spy", true, None)).await;
    // Granted (the ordinary hooks allow it), but filtered inside `chat`.
    spy.subscribe5("#", Q5::AtLeastOnce).await;
    spy.subscribe5("+/send", Q5::AtLeastOnce).await;
    let mut alice = Raw::connected5(addr, connect5("alice", true, None)).await;
    alice.subscribe5("chat/res/alice", Q5::AtLeastOnce).await;
    let props = PublishProperties {
        response_topic: Some("chat/res/alice".into()),
        ..PublishProperties::default()
    };
    alice
        .send(publish5("chat/send", 1, "secret", Some(props)))
        .await;
    // alice gets her response and her PUBACK...
    let mut seen = 0;
    while seen < 2 {
        match alice.next().await {
            RawEvent::Packet(P::PubAck(_)) => seen += 1,
            RawEvent::Packet(P::Publish(p)) => {
                assert_eq!(p.topic, Bytes::from("chat/res/alice"));
                seen += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // ...and then a plain message: the spy's first delivery must be it.
    alice.send(publish5("news/today", 2, "public", None)).await;
    next_puback(&mut alice).await;
    match spy.next().await {
        RawEvent::Packet(P::Publish(p)) => {
            assert_eq!(p.topic, Bytes::from("news/today"));
            assert_eq!(p.payload, Bytes::from("public"));
        }
        other => panic!("{other:?}"),
    }
    let filtered = server
        .broker
        .metrics
        .acl_filtered
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(filtered >= 1, "the response was withheld from `#`");
}

#[tokio::test]
async fn a_tracker_hears_each_session_acknowledge_only_once_it_has() {
    use courier::tracker::{DropReason, Outcome, Tracker};
    let b = TestBroker::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tracker = Tracker::new(move |r| {
        let _ = tx.send((r.client_id.to_string(), r.outcome));
    });
    let mut persist = props5();
    persist.session_expiry_interval = Some(3600);
    let mut phone = Raw::connected5(b.addr(), connect5("phone", true, Some(persist))).await;
    let mut tablet = Raw::connected5(b.addr(), connect5("tablet", true, None)).await;
    phone.subscribe5("inbox/alice", Q5::AtLeastOnce).await;
    tablet.subscribe5("inbox/alice", Q5::AtLeastOnce).await;
    let msg = courier::Message {
        topic: "inbox/alice".into(),
        payload: Bytes::from("hi"),
        qos: 1,
        retain: false,
        expires_at: None,
        props: None,
    };
    let routed = b
        .server
        .broker
        .publish_tracked(None, msg.clone(), &tracker)
        .unwrap();
    assert_eq!(routed.matched, 2);
    // Both have the message, neither has acknowledged: nothing reported.
    let p = match phone.next().await {
        RawEvent::Packet(P::Publish(p)) => p,
        other => panic!("{other:?}"),
    };
    match tablet.next().await {
        RawEvent::Packet(P::Publish(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(rx.try_recv().is_err(), "reported before any PUBACK");
    phone.send(P::PubAck(P5Ack::new(p.pkid, None))).await;
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r, ("phone".to_string(), Outcome::Acknowledged));
    // The tablet (session expiry 0) leaves without acknowledging: its
    // delivery is dropped with the session.
    drop(tablet);
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r,
        (
            "tablet".to_string(),
            Outcome::Dropped(DropReason::SessionEnded)
        )
    );
    // A direct delivery to a session, whatever it subscribes to (the
    // inbox path), kept in memory only.
    let direct = courier::Message {
        topic: "direct/for/phone".into(),
        ..msg
    };
    let d = b
        .server
        .broker
        .deliver("phone", direct, false, Some(&tracker))
        .unwrap();
    assert_eq!(
        d,
        courier::broker::Delivered::Queued {
            online: true,
            stored: false
        }
    );
    let p = match phone.next().await {
        RawEvent::Packet(P::Publish(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(p.topic, Bytes::from("direct/for/phone"));
    assert!(rx.try_recv().is_err());
    phone.send(P::PubAck(P5Ack::new(p.pkid, None))).await;
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r, ("phone".to_string(), Outcome::Acknowledged));
    let nobody = courier::Message {
        topic: "x".into(),
        payload: Bytes::new(),
        qos: 1,
        retain: false,
        expires_at: None,
        props: None,
    };
    let none = b.server.broker.deliver("nobody", nobody, false, None);
    assert_eq!(none.unwrap(), courier::broker::Delivered::NoSession);
}

fn message(topic: &str, payload: &str) -> courier::Message {
    courier::Message {
        topic: topic.into(),
        payload: Bytes::from(payload.to_owned()),
        qos: 1,
        retain: false,
        expires_at: None,
        props: None,
    }
}

#[tokio::test]
async fn an_in_process_link_subscribes_publishes_receives_and_resumes() {
    use courier::link::LinkOptions;
    let b = TestBroker::start().await;
    let broker = b.server.broker.clone();
    let persistent = LinkOptions {
        session_expiry_secs: 3600,
        ..LinkOptions::default()
    };
    let mut link = broker.link("bridge", persistent.clone()).await.unwrap();
    link.subscribe("sensors/#", 1).unwrap();
    // A socket client publishes; the link receives without a socket.
    let mut dev = Raw::connected5(b.addr(), connect5("dev", true, None)).await;
    dev.subscribe5("commands/dev", Q5::AtLeastOnce).await;
    dev.send(publish5("sensors/t1", 1, "21.5", None)).await;
    next_puback(&mut dev).await;
    let d = tokio::time::timeout(WAIT, link.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.message.topic, "sensors/t1");
    assert_eq!(d.message.payload, Bytes::from("21.5"));
    assert_eq!((d.qos, d.dup), (1, false));
    link.ack(&d);
    // The link publishes; the socket client receives.
    let routed = link.publish(message("commands/dev", "reboot")).unwrap();
    assert_eq!(routed.matched, 1);
    match dev.next().await {
        RawEvent::Packet(P::Publish(p)) => assert_eq!(p.payload, Bytes::from("reboot")),
        other => panic!("{other:?}"),
    }
    // Received and not acknowledged: delivered again (dup) to the next link
    // of the session; queued while it was away: delivered once.
    dev.send(publish5("sensors/t2", 2, "unacked", None)).await;
    next_puback(&mut dev).await;
    let d = tokio::time::timeout(WAIT, link.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.message.payload, Bytes::from("unacked"));
    drop(link);
    dev.send(publish5("sensors/t3", 3, "while away", None))
        .await;
    next_puback(&mut dev).await;
    let resumed = LinkOptions {
        clean_start: false,
        ..persistent
    };
    let mut link = broker.link("bridge", resumed).await.unwrap();
    let a = tokio::time::timeout(WAIT, link.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.message.payload.clone(), a.dup),
        (Bytes::from("unacked"), true)
    );
    let c = tokio::time::timeout(WAIT, link.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.message.payload.clone(), c.dup),
        (Bytes::from("while away"), false)
    );
    link.ack(&a);
    link.ack(&c);
    assert!(link.try_recv().unwrap().is_none());
    // A socket client with the link's client id takes the session over.
    let _taker = Raw::connected5(b.addr(), connect5("bridge", false, None)).await;
    let end = tokio::time::timeout(WAIT, link.recv()).await.unwrap();
    assert!(end.is_none(), "the link is closed by the takeover");
}

/// An authenticator that waits (as a database lookup would) until the test
/// lets it answer.
struct GatedHooks {
    gate: tokio::sync::Semaphore,
}

impl courier::Hooks for GatedHooks {
    fn authenticate<'a>(
        &'a self,
        req: courier::hooks::AuthRequest<'a>,
    ) -> courier::hooks::HookFuture<'a, courier::hooks::AuthDecision> {
        Box::pin(async move {
            if req.client_id == "slow" {
                let _permit = self.gate.acquire().await;
            }
            courier::hooks::AuthDecision::Allow
        })
    }
    fn authorize_publish(&self, _: &courier::ClientInfo, _: &str) -> bool {
        true
    }
    fn authorize_subscribe(
        &self,
        _: &courier::ClientInfo,
        _: &str,
    ) -> courier::hooks::SubscribeDecision {
        courier::hooks::SubscribeDecision::Allow
    }
}

/// On the test's single-threaded runtime a blocking authenticator would
/// stall every connection; an awaiting one stalls only its own.
#[tokio::test]
async fn an_asynchronous_authenticator_blocks_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_in(dir.path());
    let hooks = Arc::new(GatedHooks {
        gate: tokio::sync::Semaphore::new(0),
    });
    let server = courier::Server::builder(cfg)
        .hooks(hooks.clone())
        .start()
        .await
        .unwrap();
    let addr = server.addr(courier::config::ListenerKind::Tcp).unwrap();
    let mut slow = Raw::connect(addr, true).await;
    slow.send(connect5("slow", true, None)).await;
    // Meanwhile another client connects, subscribes and gets a message.
    let mut fast = Raw::connected5(addr, connect5("fast", true, None)).await;
    fast.subscribe5("t", Q5::AtLeastOnce).await;
    fast.send(publish5("t", 1, "through", None)).await;
    let mut got = false;
    while !got {
        match fast.next().await {
            RawEvent::Packet(P::Publish(p)) => got = p.payload == "through",
            RawEvent::Packet(_) => {}
            other => panic!("{other:?}"),
        }
    }
    hooks.gate.add_permits(1);
    match slow.next().await {
        RawEvent::Packet(P::ConnAck(a)) => assert_eq!(
            a.code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
        ),
        other => panic!("{other:?}"),
    }
}

/// A QoS 2 publish into a namespace whose connection ends before the
/// handler answered is not acknowledged unseen when the client resends it:
/// the resend goes to the handler again.
#[tokio::test]
async fn an_unanswered_qos2_publish_is_handed_over_again_after_a_reconnect() {
    let (server, handler, _dir) = namespace_broker().await;
    let addr = server.addr(courier::config::ListenerKind::Tcp).unwrap();
    let mut props = props5();
    props.session_expiry_interval = Some(3600);
    let qos2 = |dup: bool| {
        let mut p = P5Publish::new("chat/hold", Q5::ExactlyOnce, "once", None);
        p.pkid = 7;
        p.dup = dup;
        P::Publish(p)
    };
    let held = |n: usize| {
        let handler = handler.clone();
        async move {
            tokio::time::timeout(WAIT, async {
                while handler.held.lock().len() < n {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("handed to the handler");
        }
    };
    let mut first = Raw::connected5(addr, connect5("q2", false, Some(props.clone()))).await;
    first.send(qos2(false)).await;
    held(1).await;
    drop(first);
    let mut again = Raw::connected5(addr, connect5("q2", false, Some(props))).await;
    again.send(qos2(true)).await;
    held(2).await;
    let pending: Vec<Inbound> = std::mem::take(&mut *handler.held.lock());
    for p in pending {
        p.ack.accept();
    }
    match again.next().await {
        RawEvent::Packet(P::PubRec(r)) => assert_eq!(r.pkid, 7),
        other => panic!("expected PUBREC, got {other:?}"),
    }
}
