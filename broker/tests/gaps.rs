//! Behaviour that is easy to get subtly wrong: flow control towards the
//! client, server keep alive, embedder hooks, stored-once messages, and a
//! will sent when the session ends before the will delay.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use courier::config::Config;
use courier::hooks::{AuthDecision, AuthRequest, ClientInfo, HookFuture, Hooks, SubscribeDecision};
use courier::redb_store::RedbStore;
use courier::store::Store;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, Publish};
use rumqttc::v5::mqttbytes::QoS;

#[tokio::test]
async fn client_receive_maximum_limits_unacknowledged_deliveries() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr(), true).await;
    let mut p = props5();
    p.receive_maximum = Some(2);
    r.send(connect5("narrow", true, Some(p))).await;
    assert!(matches!(
        r.next().await,
        RawEvent::Packet(Packet::ConnAck(_))
    ));
    r.subscribe5("flow", QoS::AtLeastOnce).await;

    let mut pb = Raw::connected5(b.addr(), connect5("flood", true, None)).await;
    for i in 1..=5u16 {
        let mut m = Publish::new("flow", QoS::AtLeastOnce, vec![i as u8], None);
        m.pkid = i;
        pb.send(Packet::Publish(m)).await;
    }
    for _ in 1..=5 {
        assert!(matches!(
            pb.next().await,
            RawEvent::Packet(Packet::PubAck(_))
        ));
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        match r.next().await {
            RawEvent::Packet(Packet::Publish(p)) => got.push(p),
            other => panic!("{other:?}"),
        }
    }
    // Nothing more until one is acknowledged: a third would exceed 2.
    let early = tokio::time::timeout(Duration::from_millis(300), r.next()).await;
    assert!(
        early.is_err(),
        "third delivery before an acknowledgement: {early:?}"
    );
    r.send(Packet::PubAck(PubAck::new(got[0].pkid, None))).await;
    match r.next().await {
        RawEvent::Packet(Packet::Publish(p)) => assert_eq!(p.payload, Bytes::from(vec![3u8])),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_keep_alive_is_announced_and_applied() {
    let b = TestBroker::with(|c| c.limits.max_keep_alive_secs = 1).await;
    let mut r = Raw::connect(b.addr(), true).await;
    let mut c = connect5("lazy", true, None);
    if let Packet::Connect(ref mut c, _, _) = c {
        c.keep_alive = 0; // "no keep alive", replaced by the server's
    }
    r.send(c).await;
    match r.next().await {
        RawEvent::Packet(Packet::ConnAck(a)) => {
            assert_eq!(a.properties.and_then(|p| p.server_keep_alive), Some(1))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r.until_closed().await,
        Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::KeepAliveTimeout)
    );
}

/// Embedder hooks: refuse one user, and publishing under `admin/`.
struct TestHooks;

impl Hooks for TestHooks {
    fn authenticate<'a>(&'a self, req: AuthRequest<'a>) -> HookFuture<'a, AuthDecision> {
        courier::hooks::ready(match req.username {
            Some("mallory") => AuthDecision::NotAuthorized,
            _ => AuthDecision::Allow,
        })
    }
    fn authorize_publish(&self, _: &ClientInfo, topic: &str) -> bool {
        !topic.starts_with("admin/")
    }
    fn authorize_subscribe(&self, _: &ClientInfo, _: &str) -> SubscribeDecision {
        SubscribeDecision::Allow
    }
}

#[tokio::test]
async fn embedder_hooks_decide() {
    use common::v5::*;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    cfg.listeners = vec![listener(courier::config::ListenerKind::Tcp)];
    let server = courier::Server::start_with_hooks(cfg, Arc::new(TestHooks))
        .await
        .unwrap();
    let port = server
        .addr(courier::config::ListenerKind::Tcp)
        .unwrap()
        .port();

    let mut o = opts("m", port);
    o.set_credentials("mallory", "x");
    let (_c, mut el) = client(o);
    match el.poll().await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        other => panic!("{other:?}"),
    }
    let mut r = Raw::connect(
        server.addr(courier::config::ListenerKind::Tcp).unwrap(),
        true,
    )
    .await;
    r.send(connect5("alice", true, None)).await;
    assert!(matches!(
        r.next().await,
        RawEvent::Packet(Packet::ConnAck(_))
    ));
    let mut p = Publish::new("admin/reboot", QoS::AtLeastOnce, "now", None);
    p.pkid = 1;
    r.send(Packet::Publish(p)).await;
    match r.next().await {
        RawEvent::Packet(Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::NotAuthorized),
        other => panic!("{other:?}"),
    }
}

/// Opens the store once the stopped broker's last task has let go of it.
async fn open_when_released(data: &std::path::Path) -> std::sync::Arc<RedbStore> {
    tokio::time::timeout(WAIT, async {
        loop {
            match RedbStore::open(data) {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("store released after shutdown")
}

/// "phone" and "tablet" subscribe to one topic and leave; one QoS 1
/// message is published to it (one body, two queue entries); the broker
/// on `data` is shut down.
async fn one_message_for_two_offline_sessions(data: &std::path::Path) {
    use common::v4::*;
    let mut server = start_on(data).await;
    let port = tcp_port(&server);
    for id in ["phone", "tablet"] {
        subscribe_and_leave(&opts(id, port), "family/chat").await;
    }
    let (publ, mut pel) = client(opts("pub", port));
    publ.publish("family/chat", QoS::AtLeastOnce, false, "dinner?")
        .await
        .unwrap();
    puback(&mut pel).await;
    drop(publ);
    server.shutdown().await.unwrap();
}

/// Every session ends unread or is read, across restarts in between, and
/// the one body they shared is kept exactly as long as one of them needs
/// it: the store counts its references, so a session that ends while its
/// queue is on disk (never loaded since the restart) releases its share.
#[tokio::test]
async fn a_shared_body_outlives_a_session_that_ends_without_loading_its_queue() {
    use common::v4::*;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    one_message_for_two_offline_sessions(&data).await;
    // After a restart the tablet starts clean: its old session, whose queue
    // was never read back, ends.
    let mut server = start_on(&data).await;
    let port = tcp_port(&server);
    let (_t, mut tel) = client(opts("tablet", port));
    assert!(!connack(&mut tel).await.session_present);
    drop(_t);
    server.shutdown().await.unwrap();
    drop(server);
    {
        let store = open_when_released(&data).await;
        assert_eq!(store.message_ids().unwrap().len(), 1, "the phone needs it");
    }
    let mut server = start_on(&data).await;
    let port = tcp_port(&server);
    let mut o = opts("phone", port);
    o.set_clean_session(false);
    let (c, mut el) = client(o);
    assert_eq!(publish(&mut el).await.payload, Bytes::from("dinner?"));
    c.subscribe("sync/marker", QoS::AtMostOnce).await.unwrap();
    suback(&mut el).await;
    server.shutdown().await.unwrap();
    drop(server);
    let store = open_when_released(&data).await;
    assert!(
        store.message_ids().unwrap().is_empty(),
        "released by the last reader"
    );
}

/// The payloads of the next `n` publishes, and then none for a while.
async fn exactly(el: &mut common::v4::EventLoop, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        let p = common::v4::publish(el).await;
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    let more = common::v4::publishes_within(el, Duration::from_millis(300)).await;
    assert!(more.is_empty(), "more than {n} arrived");
    got
}

/// A store that counts how many queues are read from it.
struct Counting {
    inner: Arc<RedbStore>,
    queue_reads: std::sync::atomic::AtomicUsize,
}

impl Store for Counting {
    fn commit(
        &self,
        w: &mut dyn Iterator<Item = &courier::store::Write>,
    ) -> courier::store::StoreResult<()> {
        self.inner.commit(w)
    }
    fn next_id(&self) -> u64 {
        self.inner.next_id()
    }
    fn load_sessions(&self) -> courier::store::StoreResult<Vec<courier::store::SessionRecord>> {
        self.inner.load_sessions()
    }
    fn visit_sessions(
        &self,
        f: &mut dyn FnMut(courier::store::SessionRecord) -> courier::store::StoreResult<()>,
    ) -> courier::store::StoreResult<()> {
        self.inner.visit_sessions(f)
    }
    fn marks(&self, log: u64) -> courier::store::StoreResult<courier::store::LogMarks> {
        self.inner.marks(log)
    }
    fn entries(
        &self,
        log: u64,
    ) -> courier::store::StoreResult<Vec<(u64, courier::store::QueueRecord)>> {
        self.queue_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.entries(log)
    }
    fn cursor(&self, log: u64, consumer: &str) -> courier::store::StoreResult<u64> {
        self.inner.cursor(log, consumer)
    }
    fn get_message(&self, id: u64) -> courier::store::StoreResult<Option<courier::Message>> {
        self.inner.get_message(id)
    }
    fn message_ids(&self) -> courier::store::StoreResult<Vec<u64>> {
        self.inner.message_ids()
    }
    fn load_retained(&self) -> courier::store::StoreResult<Vec<courier::Message>> {
        self.inner.load_retained()
    }
    fn log_last(&self, log: &str) -> courier::store::StoreResult<u64> {
        self.inner.log_last(log)
    }
    fn log_read(
        &self,
        log: &str,
        from: u64,
        limit: usize,
    ) -> courier::store::StoreResult<Vec<courier::store::LogRecord>> {
        self.inner.log_read(log, from, limit)
    }
    fn log_read_back(
        &self,
        log: &str,
        before: u64,
        limit: usize,
    ) -> courier::store::StoreResult<Vec<courier::store::LogRecord>> {
        self.inner.log_read_back(log, before, limit)
    }
    fn log_seq_of(&self, log: &str, id: &str) -> courier::store::StoreResult<Option<u64>> {
        self.inner.log_seq_of(log, id)
    }
    fn log_cursors(&self, log: &str) -> courier::store::StoreResult<Vec<(String, u64)>> {
        self.inner.log_cursors(log)
    }
}

/// Offline sessions keep their queues on disk: start-up reads none, a
/// session reads its own when it attaches, and one that went offline while
/// the broker ran has left memory (it is read back too). The queue limit
/// counts what is on disk.
#[tokio::test]
async fn queues_stay_on_disk_until_their_session_attaches() {
    use common::v4::*;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = |store: Arc<Counting>| {
        let mut cfg = Config {
            data_dir: dir.path().join("unused"),
            ..Config::default()
        };
        cfg.limits.max_queued_messages = 3;
        cfg.listeners = vec![listener(courier::config::ListenerKind::Tcp)];
        async move {
            courier::Server::builder(cfg)
                .store(store as Arc<dyn Store>)
                .start()
                .await
                .unwrap()
        }
    };
    let counting = |inner| {
        Arc::new(Counting {
            inner,
            queue_reads: Default::default(),
        })
    };
    let reads = |s: &Counting| s.queue_reads.load(std::sync::atomic::Ordering::SeqCst);
    let store = counting(RedbStore::open(&data).unwrap());
    let mut server = start(store.clone()).await;
    let port = tcp_port(&server);
    for id in ["a", "b", "c"] {
        subscribe_and_leave(&opts(id, port), &format!("q/{id}")).await;
    }
    let (publ, mut pel) = client(opts("pub", port));
    for id in ["a", "b", "c"] {
        for n in 0..5 {
            publ.publish(format!("q/{id}"), QoS::AtLeastOnce, false, format!("{n}"))
                .await
                .unwrap();
            puback(&mut pel).await;
        }
    }
    // Offline while the broker ran: once their queues are on disk (the
    // broker's one-second sweep, after two commits), `a` reads its own back.
    let unloaded = || {
        server
            .broker
            .metrics
            .queues_unloaded
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    tokio::time::timeout(WAIT, async {
        while unloaded() < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the offline queues left memory");
    let mut o = opts("a", port);
    o.set_clean_session(false);
    let (_a, mut ael) = client(o);
    assert_eq!(
        exactly(&mut ael, 3).await,
        ["0", "1", "2"],
        "the limit (3) held"
    );
    assert_eq!(reads(&store), 1);
    drop(_a);
    drop(publ);
    server.shutdown().await.unwrap();
    drop(server);
    drop(store);
    // Restarted: no queue is read at start-up.
    let store = counting(open_when_released(&data).await);
    let mut server = start(store.clone()).await;
    let port = tcp_port(&server);
    assert_eq!(reads(&store), 0, "start-up reads no queue");
    assert_eq!(server.broker.session_count(), 3);
    // The limit counts what waits on disk: nothing more is queued for `b`.
    let (publ, mut pel) = client(opts("pub", port));
    publ.publish("q/b", QoS::AtLeastOnce, false, "late")
        .await
        .unwrap();
    puback(&mut pel).await;
    let mut o = opts("b", port);
    o.set_clean_session(false);
    let (_b, mut bel) = client(o);
    assert_eq!(exactly(&mut bel, 3).await, ["0", "1", "2"]);
    assert_eq!(reads(&store), 1, "only b's queue was read");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn message_is_stored_once_and_deleted_when_no_session_needs_it() {
    use common::v4::*;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    one_message_for_two_offline_sessions(&data).await;
    let logs = {
        let store = open_when_released(&data).await;
        assert_eq!(
            store.message_ids().unwrap().len(),
            1,
            "one body for two queues"
        );
        let sessions = store.load_sessions().unwrap();
        assert_eq!(sessions.len(), 2);
        for s in &sessions {
            assert_eq!(store.entries(s.log).unwrap().len(), 1);
        }
        sessions.iter().map(|s| s.log).collect::<Vec<_>>()
    };

    // Both devices come back and acknowledge: the body is no longer needed.
    let mut server = start_on(&data).await;
    let port = tcp_port(&server);
    for id in ["phone", "tablet"] {
        let mut o = opts(id, port);
        o.set_clean_session(false);
        let (c, mut el) = client(o);
        let p = publish(&mut el).await;
        assert_eq!(p.payload, Bytes::from("dinner?"));
        // Packets are handled in order: a SUBACK means our PUBACK was too.
        c.subscribe("sync/marker", QoS::AtMostOnce).await.unwrap();
        suback(&mut el).await;
    }
    server.shutdown().await.unwrap();
    drop(server);
    let store = open_when_released(&data).await;
    assert!(
        store.message_ids().unwrap().is_empty(),
        "body deleted after the last ack"
    );
    for log in logs {
        assert!(store.entries(log).unwrap().is_empty());
    }
}

#[tokio::test]
async fn will_is_sent_when_session_ends_before_will_delay() {
    use common::v5::*;
    let b = TestBroker::start().await;
    let (w, mut wel) = client(opts("watch", b.port()));
    connack(&mut wel).await;
    w.subscribe("lwt/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut wel).await;
    // Will delay 60 s, session expiry 1 s: the session ends first.
    let r = Raw::connected5(
        b.addr(),
        connect5_with_will("short", true, 1, "lwt/short", 60),
    )
    .await;
    let t0 = std::time::Instant::now();
    drop(r);
    let p = publish(&mut wel).await;
    assert_eq!(p.topic, Bytes::from("lwt/short"));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "at session end, not after 60 s"
    );
}

#[tokio::test]
async fn clean_start_reconnect_ends_the_old_session_and_sends_its_will() {
    use common::v5::*;
    let b = TestBroker::start().await;
    let (w, mut wel) = client(opts("watch", b.port()));
    connack(&mut wel).await;
    w.subscribe("lwt/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut wel).await;
    let r = Raw::connected5(
        b.addr(),
        connect5_with_will("phone", true, 600, "lwt/phone", 300),
    )
    .await;
    drop(r); // the will waits up to 300 s for the session to resume
    let mut again = Raw::connect(b.addr(), true).await;
    again.send(connect5("phone", true, None)).await; // clean start: old session ends
    assert!(matches!(
        again.next().await,
        RawEvent::Packet(Packet::ConnAck(_))
    ));
    let p = publish(&mut wel).await;
    assert_eq!(p.topic, Bytes::from("lwt/phone"));
}

#[tokio::test]
async fn resuming_with_session_expiry_zero_takes_the_queue_off_disk() {
    use courier::store::LogMarks;
    let mut b = TestBroker::start().await;
    let persistent = |id: &str, expiry: u32| {
        let mut p = props5();
        p.session_expiry_interval = Some(expiry);
        connect5(id, false, Some(p))
    };
    // Two persistent subscribers, so the message body is shared.
    for id in ["phone", "laptop"] {
        let mut r = Raw::connected5(b.addr(), persistent(id, 3600)).await;
        r.subscribe5("inbox", QoS::AtLeastOnce).await;
    }
    let mut pb = Raw::connected5(b.addr(), connect5("sender", true, None)).await;
    let mut m = Publish::new("inbox", QoS::AtLeastOnce, "hi", None);
    m.pkid = 1;
    pb.send(Packet::Publish(m)).await;
    assert!(matches!(
        pb.next().await,
        RawEvent::Packet(Packet::PubAck(_))
    ));

    // The phone resumes with session expiry 0: its session (and log) now
    // ends with this connection, but the queued message still arrives.
    let mut phone = Raw::connected5(b.addr(), persistent("phone", 0)).await;
    let p = match phone.next().await {
        RawEvent::Packet(Packet::Publish(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(p.payload, Bytes::from("hi"));
    phone.send(Packet::PubAck(PubAck::new(p.pkid, None))).await;
    phone
        .send(Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq))
        .await;
    assert!(matches!(
        phone.next().await,
        RawEvent::Packet(Packet::PingResp(_))
    ));
    drop(phone);
    b.server.shutdown().await.unwrap();
    let TestBroker { server, dir } = b;
    drop(server);

    let store = open_when_released(&dir.path().join("data")).await;
    let sessions = store.load_sessions().unwrap();
    assert_eq!(sessions.len(), 1, "only the laptop's session is left");
    let live = sessions[0].log;
    assert_eq!(store.entries(live).unwrap().len(), 1);
    assert_eq!(
        store.message_ids().unwrap().len(),
        1,
        "body kept for the laptop"
    );
    // No cursor was written for the phone's deleted log after it went.
    for log in (1..=100).filter(|&l| l != live) {
        assert_eq!(store.marks(log).unwrap(), LogMarks::default(), "log {log}");
    }
}

/// After a restart an offline session's queue is counted by what was live
/// when it went to disk, not by the span between its floor and its last
/// entry: one unacknowledged message ahead of acknowledged ones does not
/// make a queue of three look full.
#[tokio::test]
async fn an_offline_queue_is_counted_by_its_live_entries_after_a_restart() {
    use rumqttc::v5::mqttbytes::v5::PubAck as Ack5;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut cfg = config_in(dir.path());
        cfg.limits.max_queued_messages = 3;
        async move { courier::Server::start(cfg).await.unwrap() }
    };
    let publish_three = |addr, first: u16| async move {
        let mut p = Raw::connected5(addr, connect5("pub", true, None)).await;
        for n in 0..3u16 {
            let mut m = Publish::new("s/t", QoS::AtLeastOnce, format!("m{}", first + n), None);
            m.pkid = n + 1;
            p.send(Packet::Publish(m)).await;
            loop {
                if let RawEvent::Packet(Packet::PubAck(_)) = p.next().await {
                    break;
                }
            }
        }
    };
    let mut props = props5();
    props.session_expiry_interval = Some(3600);
    let mut server = start().await;
    let addr = server.addr(courier::config::ListenerKind::Tcp).unwrap();
    let mut s = Raw::connected5(addr, connect5("stuck", false, Some(props.clone()))).await;
    s.subscribe5("s/t", QoS::AtLeastOnce).await;
    publish_three(addr, 1).await;
    let mut pkids = Vec::new();
    while pkids.len() < 3 {
        if let RawEvent::Packet(Packet::Publish(p)) = s.next().await {
            pkids.push(p.pkid);
        }
    }
    // The second and third are acknowledged; the first stays in flight.
    for &pkid in &pkids[1..] {
        s.send(Packet::PubAck(Ack5::new(pkid, None))).await;
    }
    s.subscribe5("sync/marker", QoS::AtMostOnce).await;
    drop(s);
    tokio::time::timeout(WAIT, async {
        let m = &server.broker.metrics;
        while m.queues_unloaded.load(std::sync::atomic::Ordering::Relaxed) < 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("its queue went to disk");
    server.shutdown().await.unwrap();
    drop(server);
    let server = loop {
        // The previous broker's last tasks may still hold the store.
        match courier::Server::start({
            let mut cfg = config_in(dir.path());
            cfg.limits.max_queued_messages = 3;
            cfg
        })
        .await
        {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let addr = server.addr(courier::config::ListenerKind::Tcp).unwrap();
    // One live entry: two more fit (the span, 3, would have refused both).
    publish_three(addr, 4).await;
    let mut s = Raw::connected5(addr, connect5("stuck", false, Some(props))).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        if let RawEvent::Packet(Packet::Publish(p)) = s.next().await {
            got.push(p.payload.clone());
        }
    }
    assert_eq!(
        got,
        vec![Bytes::from("m1"), Bytes::from("m4"), Bytes::from("m5")]
    );
}
