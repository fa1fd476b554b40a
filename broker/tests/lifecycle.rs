//! Session lifecycle paths where the durability promise could break: each
//! test restarts the broker and checks what the disk kept.

mod common;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::v5::{
    Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, PubAck, Publish,
};
use rumqttc::v5::mqttbytes::QoS;

/// A 5.0 CONNECT for a session that lasts `expiry` seconds.
fn persistent(id: &str, clean: bool, expiry: u32) -> Packet {
    let mut p = props5();
    p.session_expiry_interval = Some(expiry);
    connect5(id, clean, Some(p))
}

fn addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Publishes `payload` to `topic` at QoS 1 and waits for a successful PUBACK.
async fn publish_acked(port: u16, topic: &str, payload: &'static str) {
    let mut r = Raw::connected5(addr(port), connect5("sender", true, None)).await;
    let mut p = Publish::new(topic, QoS::AtLeastOnce, payload, None);
    p.pkid = 1;
    r.send(Packet::Publish(p)).await;
    match r.next().await {
        RawEvent::Packet(Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

use rumqttc::v5::mqttbytes::v5::PubAckReason;

async fn next_publish(r: &mut Raw) -> Publish {
    tokio::time::timeout(WAIT, async {
        loop {
            match r.next().await {
                RawEvent::Packet(Packet::Publish(p)) => return p,
                RawEvent::Closed => panic!("closed before a PUBLISH"),
                _ => {}
            }
        }
    })
    .await
    .expect("a PUBLISH within the deadline")
}

fn session_present(r: &RawEvent) -> bool {
    match r {
        RawEvent::Packet(Packet::ConnAck(a)) => a.session_present,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_shared_message_survives_another_session_resumed_with_expiry_zero() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&data_dir(&dir));
    // Two persistent sessions, so the message body is stored once and
    // referred to by both queues.
    for id in ["phone", "laptop"] {
        let mut r = Raw::connected5(addr(broker.port), persistent(id, true, 3600)).await;
        r.subscribe5("inbox", QoS::AtLeastOnce).await;
    }
    publish_acked(broker.port, "inbox", "hi").await;
    // The phone resumes with session expiry 0 (its queue leaves the disk),
    // receives the message and goes away without acknowledging it.
    let mut phone = Raw::connected5(addr(broker.port), persistent("phone", false, 0)).await;
    assert_eq!(next_publish(&mut phone).await.payload, Bytes::from("hi"));
    drop(phone);
    // A graceful stop: the phone's session has ended before the last commit.
    assert!(broker.terminate().success());

    let broker = BrokerProcess::start(&data_dir(&dir));
    let mut laptop = Raw::connect(addr(broker.port), true).await;
    laptop.send(persistent("laptop", false, 3600)).await;
    assert!(session_present(&laptop.next().await));
    let p = next_publish(&mut laptop).await;
    assert_eq!(
        p.payload,
        Bytes::from("hi"),
        "the laptop's copy kept its body"
    );
    laptop.send(Packet::PubAck(PubAck::new(p.pkid, None))).await;
}

#[tokio::test]
async fn a_disconnect_that_sets_expiry_zero_ends_the_session_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&data_dir(&dir));
    let mut r = Raw::connected5(addr(broker.port), persistent("phone", true, u32::MAX)).await;
    r.subscribe5("inbox", QoS::AtLeastOnce).await;
    r.send(Packet::Disconnect(Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: Some(DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: None,
            user_properties: vec![],
            server_reference: None,
        }),
    }))
    .await;
    assert!(matches!(r.next().await, RawEvent::Closed));
    assert!(broker.terminate().success());

    let broker = BrokerProcess::start(&data_dir(&dir));
    let mut r = Raw::connect(addr(broker.port), true).await;
    r.send(persistent("phone", false, 60)).await;
    assert!(
        !session_present(&r.next().await),
        "the session ended at DISCONNECT; no ghost record is left"
    );
}

/// Connects `id` with `connect`, optionally subscribes, and leaves with a
/// normal DISCONNECT, waiting until the broker has closed the connection.
async fn visit(port: u16, connect: Packet, filter: Option<&str>) {
    let mut r = Raw::connected5(addr(port), connect).await;
    if let Some(f) = filter {
        r.subscribe5(f, QoS::AtLeastOnce).await;
    }
    r.send(Packet::Disconnect(Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: None,
    }))
    .await;
    assert!(
        r.until_closed().await.is_none(),
        "closed without a DISCONNECT"
    );
}

/// Waits until `f` holds, polling (the broker's timers tick once a second).
async fn eventually(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(3 * WAIT, async {
        while !f() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within the deadline"));
}

#[tokio::test]
async fn a_stale_expiry_timer_leaves_the_newer_session_on_disk_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start_on(&data).await;
    let port = tcp_port(&server);
    // The phone's first session expires in 1 s ...
    visit(port, persistent("phone", true, 1), Some("old")).await;
    // ... a probe's session too, a little later ...
    visit(port, persistent("probe", true, 1), None).await;
    // ... and within that second the phone starts a new session for an hour.
    visit(port, persistent("phone", true, 3600), Some("new")).await;
    // Timers run in deadline order: once the probe has expired, whatever
    // the phone's first timer was going to do is done.
    let b = server.broker.clone();
    eventually("the probe expired", || {
        b.metrics
            .sessions_expired
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    publish_acked(port, "new", "kept").await;
    server.shutdown().await.unwrap();
    drop((server, b));

    let server = start_on(&data).await;
    let mut r = Raw::connect(addr(tcp_port(&server)), true).await;
    r.send(persistent("phone", false, 3600)).await;
    assert!(session_present(&r.next().await), "the hour-long session");
    assert_eq!(next_publish(&mut r).await.payload, Bytes::from("kept"));
}

#[tokio::test]
async fn a_phone_that_reconnects_again_and_again_leaves_one_timer() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_on(&dir.path().join("data")).await;
    let port = tcp_port(&server);
    let week = 7 * 24 * 3600;
    for _ in 0..50 {
        visit(port, persistent("phone", false, week), None).await;
    }
    let b = server.broker.clone();
    eventually("one expiry timer", || b.pending_timers() == 1).await;
    assert_eq!(b.session_count(), 1);
}
