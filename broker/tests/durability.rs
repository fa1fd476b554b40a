//! Acknowledged means durable: the `courier` binary is killed with SIGKILL
//! and restarted on the same data directory.

mod common;

use bytes::Bytes;
use common::*;
use rumqttc::mqttbytes::v4 as raw4;

#[tokio::test]
async fn queued_messages_survive_kill9() {
    use common::v4::*;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&data_dir(&dir));
    subscribe_and_leave(&opts("phone", broker.port), "chat/phone").await;
    const N: u32 = 500;
    let (publ, mut pel) = client(opts("sender", broker.port));
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publ.publish(
                "chat/phone",
                QoS::AtLeastOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
        }
        publ
    });
    for _ in 0..N {
        puback(&mut pel).await;
    }
    let _publ = sender.await.unwrap();
    // Every message above was acknowledged; now the broker dies hard.
    broker.kill9();

    let broker = BrokerProcess::start(&data_dir(&dir));
    let mut phone = opts("phone", broker.port);
    phone.set_clean_session(false);
    let (_c, mut el) = client(phone);
    assert!(connack(&mut el).await.session_present, "session restored");
    for i in 0..N {
        let p = publish(&mut el).await;
        assert_eq!(p.payload.as_ref(), &i.to_be_bytes(), "message {i} in order");
    }
}

#[tokio::test]
async fn retained_message_survives_kill9() {
    use common::v4::*;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&data_dir(&dir));
    let (publ, mut pel) = client(opts("pub", broker.port));
    connack(&mut pel).await;
    publ.publish("config/theme", QoS::AtLeastOnce, true, "dark")
        .await
        .unwrap();
    puback(&mut pel).await;
    broker.kill9();

    let broker = BrokerProcess::start(&data_dir(&dir));
    let (sub, mut sel) = client(opts("sub", broker.port));
    connack(&mut sel).await;
    sub.subscribe("config/#", QoS::AtLeastOnce).await.unwrap();
    let p = publish(&mut sel).await;
    assert_eq!(p.payload, Bytes::from("dark"));
    assert!(p.retain);
}

/// A raw 3.1.1 client with a persistent session `id` (clean session 0).
async fn raw_resume(port: u16, id: &str) -> (Raw, raw4::ConnAck) {
    let mut c = raw4::Connect::new(id);
    c.clean_session = false;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut r = Raw::connect(addr, false).await;
    r.send4(raw4::Packet::Connect(c)).await;
    match r.next().await {
        RawEvent::V4(raw4::Packet::ConnAck(a)) => (r, a),
        other => panic!("{other:?}"),
    }
}

/// Connects `id` persistently and subscribes to `topic` at `qos`.
async fn raw_subscriber(port: u16, id: &str, topic: &str, qos: rumqttc::mqttbytes::QoS) -> Raw {
    let (mut r, _) = raw_resume(port, id).await;
    r.send4(raw4::Packet::Subscribe(raw4::Subscribe::new(topic, qos)))
        .await;
    assert!(matches!(
        r.next().await,
        RawEvent::V4(raw4::Packet::SubAck(_))
    ));
    r
}

#[tokio::test]
async fn inflight_message_is_redelivered_with_dup_after_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&data_dir(&dir));
    let mut r = raw_subscriber(
        broker.port,
        "worker",
        "task",
        rumqttc::mqttbytes::QoS::AtLeastOnce,
    )
    .await;

    publish_durably(broker.port, &["do it"]).await;
    let first = raw_publish(&mut r).await;
    // That the message was sent (the session's "sent" mark) is recorded
    // without a sync of its own; the next durable write covers it.
    publish_durably(broker.port, &[]).await;
    broker.kill9();

    let broker = BrokerProcess::start(&data_dir(&dir));
    let (mut r, ack) = raw_resume(broker.port, "worker").await;
    assert!(ack.session_present);
    let p = raw_publish(&mut r).await;
    assert!(p.dup);
    assert_eq!(p.pkid, first.pkid);
    assert_eq!(p.payload, Bytes::from("do it"));
}

#[tokio::test]
async fn sigterm_closes_clients_and_exits_cleanly() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&data_dir(&dir));
    let mut r = Raw::connect(
        std::net::SocketAddr::from(([127, 0, 0, 1], broker.port)),
        true,
    )
    .await;
    r.send(connect5("bye", true, None)).await;
    assert!(matches!(
        r.next().await,
        RawEvent::Packet(Packet::ConnAck(_))
    ));
    let status = tokio::task::spawn_blocking(move || broker.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        r.until_closed().await,
        Some(DisconnectReasonCode::ServerShuttingDown)
    );
}

#[tokio::test]
async fn qos2_release_state_survives_kill9() {
    use common::v4::*;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&data_dir(&dir));
    let mut r = raw_subscriber(
        broker.port,
        "q2-worker",
        "q2",
        rumqttc::mqttbytes::QoS::ExactlyOnce,
    )
    .await;

    let (publ, mut pel) = client(opts("q2-boss", broker.port));
    publ.publish("q2", QoS::ExactlyOnce, false, "once")
        .await
        .unwrap();
    until(&mut pel, |p| matches!(p, Packet::PubComp(_)).then_some(())).await;
    let pkid = raw_publish(&mut r).await.pkid;
    // PUBREC: the broker answers PUBREL; the client never sends PUBCOMP.
    r.send4(raw4::Packet::PubRec(raw4::PubRec::new(pkid))).await;
    assert!(matches!(r.next().await, RawEvent::V4(raw4::Packet::PubRel(p)) if p.pkid == pkid));
    // A durable write after it makes sure the release state is on disk.
    publish_durably(broker.port, &[]).await;
    broker.kill9();

    let broker = BrokerProcess::start(&data_dir(&dir));
    let (mut r, _) = raw_resume(broker.port, "q2-worker").await;
    // The flow resumes at PUBREL, not with a second copy of the message.
    assert!(matches!(r.next().await, RawEvent::V4(raw4::Packet::PubRel(p)) if p.pkid == pkid));
    r.send4(raw4::Packet::PubComp(raw4::PubComp::new(pkid)))
        .await;
}

/// Reads a PUBLISH, panicking on anything else.
async fn raw_publish(r: &mut Raw) -> raw4::Publish {
    match r.next().await {
        RawEvent::V4(raw4::Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Waits until everything the raw client sent before has been handled
/// (packets are handled in order).
async fn raw_ping(r: &mut Raw) {
    r.send4(raw4::Packet::PingReq).await;
    match r.next().await {
        RawEvent::V4(raw4::Packet::PingResp) => {}
        other => panic!("expected PINGRESP, got {other:?}"),
    }
}

/// Publishes `payloads` at QoS 1, each acknowledged, then a retained
/// message whose acknowledgement means every earlier write is on disk.
async fn publish_durably(port: u16, payloads: &[&'static str]) {
    use common::v4::*;
    let (publ, mut pel) = client(opts("boss", port));
    for p in payloads {
        publ.publish("task", QoS::AtLeastOnce, false, *p)
            .await
            .unwrap();
        puback(&mut pel).await;
    }
    publ.publish("flush", QoS::AtLeastOnce, true, "x")
        .await
        .unwrap();
    puback(&mut pel).await;
}

#[tokio::test]
async fn acknowledgements_in_any_order_hold_across_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&data_dir(&dir));
    let q1 = rumqttc::mqttbytes::QoS::AtLeastOnce;
    let mut r = raw_subscriber(broker.port, "worker", "task", q1).await;
    publish_durably(broker.port, &["one", "two", "three"]).await;
    let got = [
        raw_publish(&mut r).await,
        raw_publish(&mut r).await,
        raw_publish(&mut r).await,
    ];
    // Only the middle one is acknowledged.
    r.send4(raw4::Packet::PubAck(raw4::PubAck::new(got[1].pkid)))
        .await;
    raw_ping(&mut r).await;
    publish_durably(broker.port, &[]).await;
    broker.kill9();

    // "one" and "three" come back as duplicates; "two" does not.
    let broker = BrokerProcess::start(&data_dir(&dir));
    let (mut r, ack) = raw_resume(broker.port, "worker").await;
    assert!(ack.session_present);
    for want in ["one", "three"] {
        let p = raw_publish(&mut r).await;
        assert!(p.dup);
        assert_eq!(p.payload, Bytes::from(want));
        r.send4(raw4::Packet::PubAck(raw4::PubAck::new(p.pkid)))
            .await;
    }
    raw_ping(&mut r).await;
    drop(r);
    publish_durably(broker.port, &[]).await;
    broker.kill9();

    // The queue is now empty on disk. A message queued after this restart
    // must not reuse a position the log already finished, or the next
    // restart would skip it.
    let broker = BrokerProcess::start(&data_dir(&dir));
    publish_durably(broker.port, &["four"]).await;
    broker.kill9();

    let broker = BrokerProcess::start(&data_dir(&dir));
    let (mut r, _) = raw_resume(broker.port, "worker").await;
    let p = raw_publish(&mut r).await;
    assert_eq!(p.payload, Bytes::from("four"));
    assert!(!p.dup);
    r.send4(raw4::Packet::PubAck(raw4::PubAck::new(p.pkid)))
        .await;
    raw_ping(&mut r).await;
}

/// Runs `courier` on `data_dir` expecting it to refuse to start; returns
/// what it printed on stderr.
fn refused(data_dir: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_courier-mqtt"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run courier");
    assert!(!out.status.success(), "courier must refuse {data_dir:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_data_directory_courier_cannot_read_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    // The sled store of an earlier Courier.
    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("conf"), b"segment_size: 524288\n").unwrap();
    std::fs::write(old.join("db"), [0u8; 64]).unwrap();
    let err = refused(&old);
    assert!(err.contains("sled store of an earlier Courier"), "{err}");
    let mut names: Vec<_> = std::fs::read_dir(&old)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["conf", "db"], "nothing created or removed");
    // A format from the future.
    let newer = dir.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    std::fs::write(newer.join("FORMAT"), b"courier-store/redb/99\n").unwrap();
    assert!(refused(&newer).contains("courier-store/redb/99"));
    // Not a directory at all.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(refused(&file).contains("data directory"));
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = BrokerProcess::start(&data_dir(&dir));
    let err = refused(&data_dir(&dir));
    assert!(err.contains("cannot open"), "{err}");
}
