//! MQTT 3.1.1 behaviour, driven by rumqttc and raw sockets.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::v4::*;
use common::*;
use courier::Event as BrokerEvent;
use rumqttc::mqttbytes::v4 as raw4;

#[tokio::test]
async fn qos_levels_and_downgrade() {
    let b = TestBroker::start().await;
    let (sub, mut sel) = client(opts("sub", b.port()));
    connack(&mut sel).await;
    sub.subscribe("t/hi", QoS::ExactlyOnce).await.unwrap();
    sub.subscribe("t/lo", QoS::AtMostOnce).await.unwrap();
    suback(&mut sel).await;
    suback(&mut sel).await;

    let (publ, mut pel) = client(opts("pub", b.port()));
    connack(&mut pel).await;
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publ.publish("t/hi", q, false, vec![q as u8]).await.unwrap();
    }
    publ.publish("t/lo", QoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    tokio::spawn(async move { while pel.poll().await.is_ok() {} });

    let mut got = Vec::new();
    for _ in 0..4 {
        let p = publish(&mut sel).await;
        got.push((p.topic.clone(), p.qos));
    }
    got.sort_by_key(|g| (g.0.clone(), g.1 as u8));
    assert_eq!(
        got,
        vec![
            ("t/hi".into(), QoS::AtMostOnce),
            ("t/hi".into(), QoS::AtLeastOnce),
            ("t/hi".into(), QoS::ExactlyOnce),
            // Delivered at the lower of published (2) and granted (0).
            ("t/lo".into(), QoS::AtMostOnce),
        ]
    );
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let b = TestBroker::start().await;
    let (sub, mut sel) = client(opts("sub", b.port()));
    connack(&mut sel).await;
    sub.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sel).await;
    let (publ, mut pel) = client(opts("pub", b.port()));
    publ.publish("$SYS/x", QoS::AtLeastOnce, false, "hidden")
        .await
        .unwrap();
    publ.publish("a/b/c", QoS::AtLeastOnce, false, "seen")
        .await
        .unwrap();
    tokio::spawn(async move { while pel.poll().await.is_ok() {} });
    let p = publish(&mut sel).await;
    // `#` does not match `$SYS/x`, so the first delivery is the second publish.
    assert_eq!(p.topic, "a/b/c");
}

#[tokio::test]
async fn retained_is_stored_sent_and_cleared() {
    let b = TestBroker::start().await;
    let (publ, mut pel) = client(opts("pub", b.port()));
    connack(&mut pel).await;
    publ.publish("status/door", QoS::AtLeastOnce, true, "open")
        .await
        .unwrap();
    puback(&mut pel).await;

    let (sub, mut sel) = client(opts("sub", b.port()));
    connack(&mut sel).await;
    sub.subscribe("status/+", QoS::AtLeastOnce).await.unwrap();
    let p = publish(&mut sel).await;
    assert_eq!(p.payload, Bytes::from("open"));
    assert!(p.retain);

    publ.publish("status/door", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    puback(&mut pel).await;
    let live = publish(&mut sel).await;
    assert_eq!(live.payload.len(), 0, "clearing publish is forwarded");

    let (sub2, mut sel2) = client(opts("sub2", b.port()));
    connack(&mut sel2).await;
    sub2.subscribe("status/+", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sel2).await;
    publ.publish("status/marker", QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    puback(&mut pel).await;
    let p = publish(&mut sel2).await;
    assert_eq!(p.topic, "status/marker", "cleared retained message is gone");
}

#[tokio::test]
async fn persistent_session_queues_while_offline() {
    let b = TestBroker::start().await;
    let mut o = opts("phone", b.port());
    o.set_clean_session(false);
    {
        let (sub, mut sel) = client(o.clone());
        let ack = connack(&mut sel).await;
        assert!(!ack.session_present);
        sub.subscribe("inbox/phone", QoS::AtLeastOnce)
            .await
            .unwrap();
        suback(&mut sel).await;
        sub.disconnect().await.unwrap();
        let _ = publishes_within(&mut sel, Duration::from_millis(50)).await;
    }
    let (publ, mut pel) = client(opts("pub", b.port()));
    connack(&mut pel).await;
    for i in 0..50u32 {
        publ.publish(
            "inbox/phone",
            QoS::AtLeastOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
        .await
        .unwrap();
    }
    for _ in 0..50 {
        puback(&mut pel).await;
    }
    let (_sub, mut sel) = client(o);
    let ack = connack(&mut sel).await;
    assert!(ack.session_present);
    for i in 0..50u32 {
        let p = publish(&mut sel).await;
        assert_eq!(p.payload.as_ref(), &i.to_be_bytes(), "in order, none lost");
    }
}

#[tokio::test]
async fn takeover_closes_the_old_connection() {
    let b = TestBroker::start().await;
    let mut events = b.server.broker.events();
    let (_a, mut ael) = client(opts("same", b.port()));
    connack(&mut ael).await;
    let (_b2, mut bel) = client(opts("same", b.port()));
    connack(&mut bel).await;
    // The first connection is closed by the broker.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if ael.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "old connection closed");
    let ev = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(BrokerEvent::Disconnected {
                client, graceful, ..
            }) = events.recv().await
            {
                return (client.client_id, graceful);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!((&*ev.0, ev.1), ("same", false));
}

fn raw_connect(id: &str, clean: bool, will: Option<raw4::LastWill>) -> raw4::Packet {
    let mut c = raw4::Connect::new(id);
    c.clean_session = clean;
    c.keep_alive = 30;
    c.last_will = will;
    raw4::Packet::Connect(c)
}

async fn raw_connack(r: &mut Raw) -> raw4::ConnAck {
    match r.next().await {
        RawEvent::V4(raw4::Packet::ConnAck(c)) => c,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn will_on_abrupt_close_not_after_disconnect() {
    let b = TestBroker::start().await;
    let (sub, mut sel) = client(opts("watcher", b.port()));
    connack(&mut sel).await;
    sub.subscribe("presence/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sel).await;

    let will = |id: &str| raw4::LastWill {
        topic: format!("presence/{id}"),
        message: Bytes::from("gone"),
        qos: rumqttc::mqttbytes::QoS::AtLeastOnce,
        retain: false,
    };
    // Graceful: DISCONNECT first, so no will.
    let mut polite = Raw::connect(b.addr(), false).await;
    polite
        .send4(raw_connect("polite", true, Some(will("polite"))))
        .await;
    raw_connack(&mut polite).await;
    polite.send4(raw4::Packet::Disconnect).await;
    assert!(matches!(polite.next().await, RawEvent::Closed));
    // Abrupt: the socket just goes away.
    let mut rude = Raw::connect(b.addr(), false).await;
    rude.send4(raw_connect("rude", true, Some(will("rude"))))
        .await;
    raw_connack(&mut rude).await;
    drop(rude);

    let p = publish(&mut sel).await;
    assert_eq!(p.topic, "presence/rude", "only the abrupt client's will");
    assert_eq!(p.payload, Bytes::from("gone"));
}

#[tokio::test]
async fn unacked_delivery_is_resent_with_dup() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr(), false).await;
    r.send4(raw_connect("slow", false, None)).await;
    raw_connack(&mut r).await;
    r.send4(raw4::Packet::Subscribe(raw4::Subscribe::new(
        "jobs",
        rumqttc::mqttbytes::QoS::AtLeastOnce,
    )))
    .await;
    assert!(matches!(
        r.next().await,
        RawEvent::V4(raw4::Packet::SubAck(_))
    ));

    let (publ, mut pel) = client(opts("pub", b.port()));
    publ.publish("jobs", QoS::AtLeastOnce, false, "job-1")
        .await
        .unwrap();
    puback(&mut pel).await;
    let first = match r.next().await {
        RawEvent::V4(raw4::Packet::Publish(p)) => p,
        other => panic!("{other:?}"),
    };
    assert!(!first.dup);
    drop(r); // never acknowledged

    let mut r = Raw::connect(b.addr(), false).await;
    r.send4(raw_connect("slow", false, None)).await;
    let ack = raw_connack(&mut r).await;
    assert!(ack.session_present);
    match r.next().await {
        RawEvent::V4(raw4::Packet::Publish(p)) => {
            assert!(p.dup, "redelivery carries DUP");
            assert_eq!(p.pkid, first.pkid);
            assert_eq!(p.payload, Bytes::from("job-1"));
            r.send4(raw4::Packet::PubAck(raw4::PubAck::new(p.pkid)))
                .await;
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn empty_client_id_rules() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr(), false).await;
    r.send4(raw_connect("", false, None)).await;
    let ack = raw_connack(&mut r).await;
    assert_eq!(ack.code, raw4::ConnectReturnCode::BadClientId);

    let mut r = Raw::connect(b.addr(), false).await;
    r.send4(raw_connect("", true, None)).await;
    let ack = raw_connack(&mut r).await;
    assert_eq!(ack.code, raw4::ConnectReturnCode::Success);
}

#[tokio::test]
async fn keep_alive_zero_is_accepted_and_timeout_enforced() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr(), false).await;
    let mut c = raw4::Connect::new("nokeepalive");
    c.keep_alive = 0;
    r.send4(raw4::Packet::Connect(c)).await;
    assert_eq!(
        raw_connack(&mut r).await.code,
        raw4::ConnectReturnCode::Success
    );

    let mut r = Raw::connect(b.addr(), false).await;
    let mut c = raw4::Connect::new("sleepy");
    c.keep_alive = 1;
    r.send4(raw4::Packet::Connect(c)).await;
    raw_connack(&mut r).await;
    let start = std::time::Instant::now();
    assert!(matches!(r.next().await, RawEvent::Closed));
    // 1.5 x keep-alive; generous upper bound for a loaded CI machine.
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_pings_in_time_stays_connected() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr(), false).await;
    let mut c = raw4::Connect::new("pinger");
    c.keep_alive = 1;
    r.send4(raw4::Packet::Connect(c)).await;
    raw_connack(&mut r).await;
    // Four seconds of pings every half second: well past 1.5 x keep-alive,
    // so a broker that ignored the pings would have closed the connection.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        r.send4(raw4::Packet::PingReq).await;
        assert!(matches!(
            r.next().await,
            RawEvent::V4(raw4::Packet::PingResp)
        ));
    }
}

#[tokio::test]
async fn events_report_connect_drop_and_offline_queueing() {
    let b = TestBroker::start().await;
    let mut events = b.server.broker.events();
    let mut o = opts("dev1", b.port());
    o.set_clean_session(false);
    o.set_credentials("alice", "pw");
    let (sub, mut sel) = client(o);
    connack(&mut sel).await;
    sub.subscribe("u/alice", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sel).await;
    drop(sub);
    drop(sel); // drops the socket without DISCONNECT

    let (publ, mut pel) = client(opts("pub", b.port()));
    let mut saw = (false, false, false);
    let wait = tokio::time::timeout(WAIT, async {
        let mut published = false;
        loop {
            match events.recv().await.unwrap() {
                BrokerEvent::Connected { client, .. } if &*client.client_id == "dev1" => {
                    assert_eq!(client.username.as_deref(), Some("alice"));
                    saw.0 = true;
                }
                BrokerEvent::Disconnected {
                    client, graceful, ..
                } if &*client.client_id == "dev1" => {
                    assert!(!graceful);
                    saw.1 = true;
                    if !published {
                        published = true;
                        publ.publish("u/alice", QoS::AtLeastOnce, false, "hi")
                            .await
                            .unwrap();
                        puback(&mut pel).await;
                    }
                }
                BrokerEvent::QueuedOffline {
                    client_id, queued, ..
                } if &*client_id == "dev1" => {
                    assert_eq!(queued, 1);
                    saw.2 = true;
                    return;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(wait.is_ok(), "events seen: {saw:?}");
}

/// A publisher faster than its subscriber is slowed down instead of the
/// subscriber's queue overflowing (which would drop messages).
async fn burst_into_small_queue(throttle_backlog: usize) -> (u64, u64) {
    let b = TestBroker::with(|c| {
        c.limits.max_queued_messages = 50;
        c.limits.throttle_backlog = throttle_backlog;
    })
    .await;
    let (sub, mut sel) = client(opts("slow", b.port()));
    connack(&mut sel).await;
    sub.subscribe("burst", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sel).await;
    const N: u64 = 3000;
    let mut o = opts("fast", b.port());
    o.set_inflight(100);
    let (publ, mut pel) = client(o);
    tokio::spawn(async move {
        for i in 0..N {
            publ.publish("burst", QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
    });
    tokio::spawn(async move { while pel.poll().await.is_ok() {} });
    let mut got = 0u64;
    let dropped = || {
        b.server
            .broker
            .metrics
            .dropped_queue_full
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let _ = tokio::time::timeout(WAIT, async {
        while got + dropped() < N {
            match sel.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => got += 1,
                Ok(_) => {}
                Err(e) => panic!("subscriber connection failed: {e}"),
            }
        }
    })
    .await;
    (got, dropped())
}

#[tokio::test]
async fn fast_publisher_is_throttled_not_dropped() {
    let (got, dropped) = burst_into_small_queue(16).await;
    assert_eq!((got, dropped), (3000, 0));
}
