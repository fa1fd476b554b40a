//! Acknowledged means on disk, for real: the `courier` binary runs with its
//! data directory on forgetfs, a file system that keeps everything not yet
//! fsynced in memory. The broker is killed, then the file system forgets
//! what was not durable, as a power cut would, and the broker starts again.
//!
//! These tests need `/dev/fuse` and root; they fail (never skip) without.

mod common;

use bytes::Bytes;
use common::*;
use forgetfs::Mount;

/// A forgetful mount in a directory of the test's own; the broker's data
/// directory is inside it.
struct Disk {
    mount: Mount,
    _dir: tempfile::TempDir,
}

impl Disk {
    fn new() -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let mount = Mount::new(dir.path()).expect("mount forgetfs (needs /dev/fuse and root)");
        Disk { mount, _dir: dir }
    }

    fn data(&self) -> std::path::PathBuf {
        self.mount.path().join("data")
    }

    /// Kills the broker hard, then cuts the power.
    fn crash(&mut self, broker: BrokerProcess) {
        broker.kill9();
        self.mount.power_cut().expect("power cut");
    }
}

fn big_opts(id: &str, port: u16) -> rumqttc::MqttOptions {
    let mut o = v4::opts(id, port);
    o.set_max_packet_size(2 << 20, 2 << 20);
    o
}

/// Resumes `id`'s persistent session and returns its first `n` payloads.
async fn resume_and_read(port: u16, id: &str, n: usize) -> Vec<Bytes> {
    use common::v4::*;
    let mut o = big_opts(id, port);
    o.set_clean_session(false);
    let (_c, mut el) = client(o);
    assert!(connack(&mut el).await.session_present, "session survived");
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(publish(&mut el).await.payload);
    }
    got
}

/// The phone's resumed session holds messages 0..n (as big-endian u32
/// payloads), in order.
async fn expect_in_order(port: u16, n: u32) {
    let got = resume_and_read(port, "phone", n as usize).await;
    for (i, p) in got.iter().enumerate() {
        assert_eq!(
            p.as_ref(),
            &(i as u32).to_be_bytes(),
            "message {i} in order"
        );
    }
}

/// Sets the retained message of `config/theme`, acknowledged.
async fn set_theme(port: u16, theme: &'static str) {
    use common::v4::*;
    let (publ, mut pel) = client(opts("pub", port));
    publ.publish("config/theme", QoS::AtLeastOnce, true, theme)
        .await
        .unwrap();
    puback(&mut pel).await;
}

/// The retained message of `config/theme`, as a new subscriber gets it.
async fn theme(port: u16) -> Bytes {
    use common::v4::*;
    let (sub, mut sel) = client(opts("sub", port));
    connack(&mut sel).await;
    sub.subscribe("config/#", QoS::AtLeastOnce).await.unwrap();
    let p = publish(&mut sel).await;
    assert!(p.retain);
    p.payload
}

/// A 5.0 QoS 1 PUBLISH with packet id `pkid`.
fn publish5(topic: &str, payload: &'static str, pkid: u16) -> rumqttc::v5::mqttbytes::v5::Packet {
    use rumqttc::v5::mqttbytes::{v5, QoS};
    let mut p = v5::Publish::new(topic, QoS::AtLeastOnce, payload, None);
    p.pkid = pkid;
    v5::Packet::Publish(p)
}

#[tokio::test]
async fn acknowledged_messages_and_the_session_survive_a_power_cut() {
    use common::v4::*;
    let mut disk = Disk::new();
    let broker = BrokerProcess::start(&disk.data());
    subscribe_and_leave(&opts("phone", broker.port), "chat/phone").await;
    const N: u32 = 200;
    let (publ, mut pel) = client(opts("sender", broker.port));
    for i in 0..N {
        publ.publish(
            "chat/phone",
            QoS::AtLeastOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
        .await
        .unwrap();
        puback(&mut pel).await;
    }
    disk.crash(broker);

    let broker = BrokerProcess::start(&disk.data());
    expect_in_order(broker.port, N).await;
}

#[tokio::test]
async fn every_acknowledged_message_survives_a_power_cut_mid_burst() {
    use common::v4::*;
    let mut disk = Disk::new();
    let broker = BrokerProcess::start(&disk.data());
    subscribe_and_leave(&opts("phone", broker.port), "chat/phone").await;
    // A publisher that never waits: the cut comes while messages are in
    // flight, some written and not yet synced.
    let mut o = opts("sender", broker.port);
    o.set_inflight(100);
    let (publ, mut pel) = client(o);
    tokio::spawn(async move {
        for i in 0..5_000u32 {
            if publ
                .publish(
                    "chat/phone",
                    QoS::AtLeastOnce,
                    false,
                    i.to_be_bytes().to_vec(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // PUBACKs come in order: after k of them, messages 0..k are acknowledged.
    let mut acked = 0u32;
    while acked < 700 {
        puback(&mut pel).await;
        acked += 1;
    }
    disk.crash(broker);

    let broker = BrokerProcess::start(&disk.data());
    expect_in_order(broker.port, acked).await;
}

#[tokio::test]
async fn a_retained_message_survives_a_power_cut() {
    let mut disk = Disk::new();
    let broker = BrokerProcess::start(&disk.data());
    set_theme(broker.port, "dark").await;
    disk.crash(broker);

    let broker = BrokerProcess::start(&disk.data());
    assert_eq!(theme(broker.port).await, Bytes::from("dark"));
}

#[tokio::test]
async fn a_large_message_survives_a_power_cut() {
    use common::v4::*;
    let mut disk = Disk::new();
    let broker = BrokerProcess::start(&disk.data());
    subscribe_and_leave(&big_opts("phone", broker.port), "media/phone").await;
    // Far above sled's blob threshold (a quarter of its 512 KiB segment).
    let photo: Vec<u8> = (0..900_000u32).map(|i| (i % 251) as u8).collect();
    let (publ, mut pel) = client(big_opts("sender", broker.port));
    publ.publish("media/phone", QoS::AtLeastOnce, false, photo.clone())
        .await
        .unwrap();
    puback(&mut pel).await;
    disk.crash(broker);

    let broker = BrokerProcess::start(&disk.data());
    let got = resume_and_read(broker.port, "phone", 1).await;
    assert!(
        got[0].as_ref() == photo.as_slice(),
        "the whole body, intact"
    );
}

#[tokio::test]
async fn a_power_cut_right_after_the_first_start_leaves_a_working_store() {
    let mut disk = Disk::new();
    let broker = BrokerProcess::start(&disk.data());
    disk.crash(broker);

    // The broker starts on a valid store (empty: nothing was acknowledged)
    // and keeps what it acknowledges from then on.
    let broker = BrokerProcess::start(&disk.data());
    set_theme(broker.port, "light").await;
    disk.crash(broker);
    let broker = BrokerProcess::start(&disk.data());
    assert_eq!(theme(broker.port).await, Bytes::from("light"));
}

/// How the broker answered a QoS 1 PUBLISH.
#[derive(Debug, PartialEq)]
enum Answer {
    Acked(rumqttc::v5::mqttbytes::v5::PubAckReason),
    Disconnected(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode),
    Closed,
}

async fn answer(r: &mut Raw) -> Answer {
    use rumqttc::v5::mqttbytes::v5::Packet as P;
    tokio::time::timeout(WAIT, async {
        loop {
            match r.next().await {
                RawEvent::Packet(P::PubAck(a)) => return Answer::Acked(a.reason),
                RawEvent::Packet(P::Disconnect(d)) => return Answer::Disconnected(d.reason_code),
                RawEvent::Closed => return Answer::Closed,
                _ => {}
            }
        }
    })
    .await
    .expect("an answer within the deadline")
}

#[tokio::test]
async fn a_failed_fsync_fails_the_acknowledgements_that_waited_on_it() {
    failed_sync_fails_acknowledgements(libc::EIO).await;
}

#[tokio::test]
async fn a_full_disk_fails_the_acknowledgements_that_waited_on_it() {
    failed_sync_fails_acknowledgements(libc::ENOSPC).await;
}

/// Every fsync fails with `errno` for a while.
async fn failed_sync_fails_acknowledgements(errno: i32) {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, PubAckReason};
    let disk = Disk::new();
    let broker = BrokerProcess::start(&disk.data());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], broker.port));
    v4::subscribe_and_leave(&v4::opts("phone", broker.port), "chat/phone").await;

    disk.mount.fail_syncs(Some(errno));
    // 5.0: a reason code (the connection ends with DISCONNECT 0x80), never
    // a successful PUBACK.
    let mut r5 = Raw::connected5(addr, connect5("sender5", true, None)).await;
    r5.send(publish5("chat/phone", "lost?", 1)).await;
    assert_eq!(
        answer(&mut r5).await,
        Answer::Disconnected(DisconnectReasonCode::UnspecifiedError)
    );
    // 3.1.1 has no reason codes: the connection is closed, no PUBACK.
    let (c4, mut el4) = v4::client(v4::opts("sender4", broker.port));
    v4::connack(&mut el4).await;
    c4.publish("chat/phone", rumqttc::QoS::AtLeastOnce, false, "lost too")
        .await
        .unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match el4.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return false,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
    })
    .await
    .expect("an answer within the deadline");
    assert!(closed, "3.1.1: closed without a PUBACK");

    // The disk works again, but what the failed sync held may be gone
    // (forgetfs drops those pages, as Linux does): the broker must not
    // quietly retry and then acknowledge.
    disk.mount.fail_syncs(None);
    let mut r5 = Raw::connected5(addr, connect5("sender5b", true, None)).await;
    r5.send(publish5("chat/phone", "after", 1)).await;
    assert_ne!(answer(&mut r5).await, Answer::Acked(PubAckReason::Success));
    broker.kill9();
}

#[tokio::test]
async fn a_takeover_does_not_wait_behind_a_slow_disk() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P};
    use rumqttc::v5::mqttbytes::QoS;
    let disk = Disk::new();
    let broker = BrokerProcess::start(&disk.data());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], broker.port));
    let mut props = props5();
    props.session_expiry_interval = Some(3600);
    let mut a = Raw::connected5(addr, connect5("device", false, Some(props.clone()))).await;
    a.subscribe5("device/in", QoS::AtLeastOnce).await;
    // Its own QoS 1 publish to its persistent session: the PUBACK waits for
    // an fsync that now takes longer than the broker's 5 s takeover wait.
    disk.mount.slow_syncs(std::time::Duration::from_secs(8));
    a.send(publish5("device/in", "queued", 1)).await;
    // The same device connects again (a phone switching networks).
    let started = std::time::Instant::now();
    let mut b = Raw::connect(addr, true).await;
    b.send(connect5("device", false, Some(props))).await;
    let present = tokio::time::timeout(std::time::Duration::from_secs(4), b.next())
        .await
        .expect("the takeover completes without waiting out the slow fsync");
    match present {
        RawEvent::Packet(P::ConnAck(c)) => assert!(c.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert_eq!(
        a.until_closed().await,
        Some(DisconnectReasonCode::SessionTakenOver)
    );
    disk.mount.slow_syncs(std::time::Duration::ZERO);
}
