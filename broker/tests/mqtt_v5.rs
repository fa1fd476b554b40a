//! MQTT 5.0 behaviour, driven by rumqttc v5 and raw sockets.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::v5::*;
use common::*;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Filter, PubAck, RetainForwardRule, SubscribeProperties,
};

async fn pump(el: EventLoop) {
    let mut el = el;
    while el.poll().await.is_ok() {}
}

#[tokio::test]
async fn assigned_client_id_and_connack_properties() {
    let b = TestBroker::start().await;
    let (_c, mut el) = client(opts("", b.port()));
    let ack = connack(&mut el).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let p = ack.properties.expect("5.0 CONNACK has properties");
    let id = p.assigned_client_identifier.expect("assigned id");
    assert!(id.starts_with("courier-"));
    assert_eq!(p.receive_max, Some(100));
    assert_eq!(p.shared_subscription_available, Some(1));
    assert_eq!(p.max_packet_size, Some(1024 * 1024));
}

#[tokio::test]
async fn properties_pass_through() {
    let b = TestBroker::start().await;
    let (sub, mut sel) = client(opts("sub", b.port()));
    connack(&mut sel).await;
    sub.subscribe("req/+", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sel).await;
    let (publ, pel) = client(opts("pub", b.port()));
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(300),
        content_type: Some("application/json".into()),
        response_topic: Some("resp/pub".into()),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        ..Default::default()
    };
    publ.publish_with_properties("req/1", QoS::AtLeastOnce, false, "{}", props)
        .await
        .unwrap();
    tokio::spawn(pump(pel));
    let p = publish(&mut sel).await;
    let got = p.properties.expect("properties forwarded");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(got.response_topic.as_deref(), Some("resp/pub"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(
        got.user_properties,
        vec![
            ("k".to_string(), "v".to_string()),
            ("k".to_string(), "w".to_string())
        ]
    );
    let left = got.message_expiry_interval.expect("expiry forwarded");
    assert!((290..=300).contains(&left), "remaining expiry {left}");
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_with_all_ids() {
    let b = TestBroker::start().await;
    let (sub, mut sel) = client(opts("sub", b.port()));
    connack(&mut sel).await;
    let sp = |id| SubscribeProperties {
        id: Some(id),
        user_properties: vec![],
    };
    sub.subscribe_with_properties("a/+", QoS::AtLeastOnce, sp(1))
        .await
        .unwrap();
    sub.subscribe_with_properties("a/#", QoS::ExactlyOnce, sp(2))
        .await
        .unwrap();
    suback(&mut sel).await;
    suback(&mut sel).await;
    let (publ, pel) = client(opts("pub", b.port()));
    publ.publish("a/b", QoS::ExactlyOnce, false, "one")
        .await
        .unwrap();
    publ.publish("a/b/c", QoS::AtLeastOnce, false, "marker")
        .await
        .unwrap();
    tokio::spawn(pump(pel));
    let p = publish(&mut sel).await;
    assert_eq!(p.qos, QoS::ExactlyOnce, "highest granted QoS");
    let mut ids = p.properties.unwrap().subscription_identifiers;
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    let m = publish(&mut sel).await;
    assert_eq!(m.payload, Bytes::from("marker"), "no second copy of 'one'");
}

#[tokio::test]
async fn no_local_retain_as_published_and_retain_handling() {
    let b = TestBroker::start().await;
    let (publ, mut pel) = client(opts("pub", b.port()));
    connack(&mut pel).await;
    publ.publish("r/x", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    until(&mut pel, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;

    let (sub, mut sel) = client(opts("sub", b.port()));
    connack(&mut sel).await;
    let mut never = Filter::new("r/#", QoS::AtLeastOnce);
    never.retain_forward_rule = RetainForwardRule::Never;
    never.preserve_retain = true;
    sub.subscribe_many(vec![never]).await.unwrap();
    let mut nolocal = Filter::new("own/#", QoS::AtLeastOnce);
    nolocal.nolocal = true;
    sub.subscribe_many(vec![nolocal]).await.unwrap();
    suback(&mut sel).await;
    suback(&mut sel).await;

    sub.publish("own/echo", QoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    publ.publish("own/echo", QoS::AtLeastOnce, false, "theirs")
        .await
        .unwrap();
    publ.publish("r/x", QoS::AtLeastOnce, true, "live")
        .await
        .unwrap();
    tokio::spawn(pump(pel));
    let first = publish(&mut sel).await;
    assert_eq!(
        first.payload,
        Bytes::from("theirs"),
        "no-local hides own publish; handling=2 skips retained"
    );
    let second = publish(&mut sel).await;
    assert_eq!(second.payload, Bytes::from("live"));
    assert!(second.retain, "retain-as-published keeps the flag");

    // Without retain-as-published the flag is cleared on live forwarding.
    let (sub2, mut sel2) = client(opts("sub2", b.port()));
    connack(&mut sel2).await;
    sub2.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let on_sub = publish(&mut sel2).await;
    assert!(on_sub.retain, "retained message on subscribe has RETAIN");
    let (p3, pel3) = client(opts("pub3", b.port()));
    p3.publish("r/x", QoS::AtLeastOnce, true, "again")
        .await
        .unwrap();
    tokio::spawn(pump(pel3));
    let live = publish(&mut sel2).await;
    assert_eq!(live.payload, Bytes::from("again"));
    assert!(!live.retain);
}

#[tokio::test]
async fn shared_subscription_splits_messages() {
    let b = TestBroker::start().await;
    let mut subs = Vec::new();
    for id in ["w1", "w2"] {
        let (c, mut el) = client(opts(id, b.port()));
        connack(&mut el).await;
        c.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce)
            .await
            .unwrap();
        suback(&mut el).await;
        subs.push((c, el));
    }
    let (publ, pel) = client(opts("pub", b.port()));
    for i in 0..10u8 {
        publ.publish("jobs/x", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    tokio::spawn(pump(pel));
    let (_c2, el2) = subs.pop().unwrap();
    let (_c1, el1) = subs.pop().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (n, mut el) in [(1, el1), (2, el2)] {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    let _ = tx.send((n, p.payload[0]));
                }
            }
        });
    }
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let mut payloads: Vec<u8> = seen.iter().map(|s| s.1).collect();
    payloads.sort();
    assert_eq!(
        payloads,
        (0..10).collect::<Vec<_>>(),
        "each message exactly once"
    );
    let to1 = seen.iter().filter(|s| s.0 == 1).count();
    assert_eq!(to1, 5, "round-robin between two members");
}

#[tokio::test]
async fn receive_maximum_exceeded_disconnects_0x93() {
    let b = TestBroker::with(|c| c.limits.max_inflight = 5).await;
    let mut r = Raw::connected5(b.addr(), connect5("greedy", true, None)).await;
    let mut burst = bytes::BytesMut::new();
    for i in 1..=10u16 {
        let mut p = Publish::new("t", QoS::AtLeastOnce, "x", None);
        p.pkid = i;
        Packet::Publish(p).write(&mut burst, None).unwrap();
    }
    r.send_bytes(&burst).await;
    assert_eq!(
        r.until_closed().await,
        Some(DisconnectReasonCode::ReceiveMaximumExceeded)
    );
}

#[tokio::test]
async fn topic_aliases_both_ways() {
    let b = TestBroker::start().await;
    // Subscriber accepts 5 aliases from the broker.
    let mut s = Raw::connect(b.addr(), true).await;
    let mut p = props5();
    p.topic_alias_max = Some(5);
    s.send(connect5("aliased-sub", true, Some(p))).await;
    assert!(matches!(
        s.next().await,
        RawEvent::Packet(Packet::ConnAck(_))
    ));
    s.subscribe5("long/topic/name", QoS::AtMostOnce).await;

    // Publisher uses alias 1: once with the topic, then with an empty topic.
    let mut pb = Raw::connected5(b.addr(), connect5("aliased-pub", true, None)).await;
    for (topic, body) in [("long/topic/name", "a"), ("", "b")] {
        let props = PublishProperties {
            topic_alias: Some(1),
            ..Default::default()
        };
        pb.send(Packet::Publish(Publish::new(
            topic,
            QoS::AtMostOnce,
            body,
            Some(props),
        )))
        .await;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        match s.next().await {
            RawEvent::Packet(Packet::Publish(p)) => got.push(p),
            other => panic!("{other:?}"),
        }
    }
    let alias = |p: &Publish| p.properties.as_ref().and_then(|x| x.topic_alias);
    assert_eq!(got[0].topic, Bytes::from("long/topic/name"));
    assert_eq!(alias(&got[0]), Some(1));
    assert!(
        got[1].topic.is_empty(),
        "second delivery sends only the alias"
    );
    assert_eq!(alias(&got[1]), Some(1));
    assert_eq!(got[1].payload, Bytes::from("b"));

    // An alias beyond the announced maximum is a protocol violation.
    let props = PublishProperties {
        topic_alias: Some(1000),
        ..Default::default()
    };
    pb.send(Packet::Publish(Publish::new(
        "x",
        QoS::AtMostOnce,
        "c",
        Some(props),
    )))
    .await;
    assert_eq!(
        pb.until_closed().await,
        Some(DisconnectReasonCode::TopicAliasInvalid)
    );
}

#[tokio::test]
async fn a_client_that_keeps_publishing_past_receive_maximum_reads_the_reason() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBroker::with(|c| c.limits.max_inflight = 5).await;
    let mut sock = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    let mut out = bytes::BytesMut::new();
    connect5("firehose", true, None)
        .write(&mut out, None)
        .unwrap();
    sock.write_all(&out).await.unwrap();
    // A client that keeps publishing, and reads only once its writes fail.
    let mut got = bytes::BytesMut::new();
    let mut pkid = 0u16;
    let mut tmp = [0u8; 4096];
    for _ in 0..2_000 {
        let mut chunk = bytes::BytesMut::new();
        for _ in 0..20 {
            pkid = pkid % 60_000 + 1;
            let mut p = Publish::new("t", QoS::AtLeastOnce, vec![0u8; 100], None);
            p.pkid = pkid;
            Packet::Publish(p).write(&mut chunk, None).unwrap();
        }
        if sock.write_all(&chunk).await.is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let read = tokio::time::timeout(WAIT, async {
        loop {
            match sock.read(&mut tmp).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&tmp[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("closed within the deadline");
    let mut reason = None;
    while let Ok(p) = Packet::read(&mut got, None) {
        if let Packet::Disconnect(d) = p {
            reason = Some(d.reason_code);
        }
    }
    assert_eq!(
        reason,
        Some(DisconnectReasonCode::ReceiveMaximumExceeded),
        "the DISCONNECT reached the client (its read ended with {read:?})"
    );
}

#[tokio::test]
async fn outgoing_aliases_are_bounded_and_reassigned_least_recently_used() {
    // The client would take 10 aliases; the broker uses at most 2.
    let b = TestBroker::with(|c| c.limits.topic_alias_out_max = 2).await;
    let mut s = Raw::connect(b.addr(), true).await;
    let mut p = props5();
    p.topic_alias_max = Some(10);
    s.send(connect5("lru-sub", true, Some(p))).await;
    assert!(matches!(
        s.next().await,
        RawEvent::Packet(Packet::ConnAck(_))
    ));
    s.subscribe5("t/#", QoS::AtMostOnce).await;
    let mut pb = Raw::connected5(b.addr(), connect5("lru-pub", true, None)).await;
    let topics = ["t/a", "t/b", "t/a", "t/c", "t/b", "t/c", "t/a"];
    for t in topics {
        pb.send(Packet::Publish(Publish::new(t, QoS::AtMostOnce, t, None)))
            .await;
    }
    // The client's side of the protocol: an alias with a topic binds it,
    // an alias alone is looked up.
    let mut table = std::collections::HashMap::new();
    let mut sent = Vec::new();
    for want in topics {
        let p = match s.next().await {
            RawEvent::Packet(Packet::Publish(p)) => p,
            other => panic!("{other:?}"),
        };
        let a = p.properties.as_ref().and_then(|x| x.topic_alias).unwrap();
        assert!((1..=2).contains(&a), "alias {a} within the broker's bound");
        let topic = if p.topic.is_empty() {
            table.get(&a).cloned().expect("a bound alias")
        } else {
            table.insert(a, p.topic.clone());
            p.topic.clone()
        };
        assert_eq!(topic, Bytes::from(want));
        assert_eq!(p.payload, Bytes::from(want));
        sent.push((a, !p.topic.is_empty()));
    }
    // a=1, b=2, a known, c replaces b (least recently used), b replaces
    // a, c known, a replaces c.
    assert_eq!(
        sent,
        [
            (1, true),
            (2, true),
            (1, false),
            (2, true),
            (1, true),
            (2, false),
            (1, true)
        ]
    );
}

#[tokio::test]
async fn client_maximum_packet_size_is_respected() {
    let b = TestBroker::start().await;
    let mut o = opts("small", b.port());
    o.set_max_packet_size(Some(200));
    let (sub, mut sel) = client(o);
    connack(&mut sel).await;
    sub.subscribe("big/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sel).await;
    let (publ, pel) = client(opts("pub", b.port()));
    publ.publish("big/1", QoS::AtLeastOnce, false, vec![0u8; 1000])
        .await
        .unwrap();
    publ.publish("big/2", QoS::AtLeastOnce, false, "fits")
        .await
        .unwrap();
    tokio::spawn(pump(pel));
    let p = publish(&mut sel).await;
    assert_eq!(
        p.payload,
        Bytes::from("fits"),
        "oversized delivery skipped, not sent"
    );
    let dropped = b
        .server
        .broker
        .metrics
        .dropped_too_large
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 1);
}

#[tokio::test]
async fn session_expiry_and_message_expiry() {
    let b = TestBroker::start().await;
    // A session with expiry 1 s is gone 1 s after its connection.
    let mut o = opts("brief", b.port());
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(1));
    {
        let (c, mut el) = client(o.clone());
        connack(&mut el).await;
        c.subscribe("x", QoS::AtLeastOnce).await.unwrap();
        suback(&mut el).await;
        c.disconnect().await.unwrap();
        let _ = tokio::time::timeout(WAIT, async { while el.poll().await.is_ok() {} }).await;
    }
    tokio::time::timeout(WAIT, async {
        while b.server.broker.session_count() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("session expired");
    let (_c, mut el) = client(o);
    assert!(!connack(&mut el).await.session_present);

    // A queued message whose expiry passes while the session is offline
    // is not delivered.
    let mut o = opts("offline", b.port());
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
    {
        let (c, mut el) = client(o.clone());
        connack(&mut el).await;
        c.subscribe("news", QoS::AtLeastOnce).await.unwrap();
        suback(&mut el).await;
        c.disconnect().await.unwrap();
        let _ = tokio::time::timeout(WAIT, async { while el.poll().await.is_ok() {} }).await;
    }
    let (publ, mut pel) = client(opts("pub", b.port()));
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publ.publish_with_properties("news", QoS::AtLeastOnce, false, "stale", short)
        .await
        .unwrap();
    until(&mut pel, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    // Message expiry is measured in whole seconds: wait past it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    publ.publish("news", QoS::AtLeastOnce, false, "fresh")
        .await
        .unwrap();
    until(&mut pel, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    let (_c, mut el) = client(o);
    assert!(connack(&mut el).await.session_present);
    let p = publish(&mut el).await;
    assert_eq!(p.payload, Bytes::from("fresh"));
}

#[tokio::test]
async fn will_delay_and_cancel_on_reconnect() {
    let b = TestBroker::start().await;
    let (w, mut wel) = client(opts("watch", b.port()));
    connack(&mut wel).await;
    w.subscribe("lwt/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut wel).await;

    let connect_with_will =
        |id: &str, delay: u32| connect5_with_will(id, false, 60, &format!("lwt/{id}"), delay);
    // "back" drops, then resumes within its 2 s will delay: no will.
    let back = Raw::connected5(b.addr(), connect_with_will("back", 2)).await;
    drop(back);
    // Held open to the end: the session stays resumed.
    let _back = Raw::connected5(b.addr(), connect5("back", false, None)).await;
    // "gone" drops and stays away: its will comes after the delay.
    let gone = Raw::connected5(b.addr(), connect_with_will("gone", 1)).await;
    let t0 = std::time::Instant::now();
    drop(gone);
    let p = publish(&mut wel).await;
    assert_eq!(
        p.topic,
        Bytes::from("lwt/gone"),
        "the resumed session's will never fires"
    );
    assert!(t0.elapsed() >= Duration::from_millis(900));
    let late = tokio::time::timeout(Duration::from_millis(1500), publish(&mut wel)).await;
    assert!(late.is_err(), "no will for 'back' after its delay either");
}

#[tokio::test]
async fn takeover_sends_disconnect_0x8e() {
    let b = TestBroker::start().await;
    let mut first = Raw::connected5(b.addr(), connect5("dup-id", true, None)).await;
    let (_c, mut el) = client(opts("dup-id", b.port()));
    connack(&mut el).await;
    assert_eq!(
        first.until_closed().await,
        Some(DisconnectReasonCode::SessionTakenOver)
    );
}

#[tokio::test]
async fn puback_reason_codes_for_refused_publishes() {
    let b = TestBroker::with(|c| {
        c.acl.rules = vec![courier::config::AclRule {
            permission: courier::config::Permission::Deny,
            action: courier::config::AclAction::Publish,
            topic: "locked/#".into(),
            username: None,
        }];
    })
    .await;
    let mut r = Raw::connected5(b.addr(), connect5("pubber", true, None)).await;
    let mut p = Publish::new("locked/a", QoS::AtLeastOnce, "x", None);
    p.pkid = 7;
    r.send(Packet::Publish(p)).await;
    let bad_utf8 = PublishProperties {
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    let mut p = Publish::new("open/a", QoS::AtLeastOnce, vec![0xff, 0xfe], Some(bad_utf8));
    p.pkid = 8;
    r.send(Packet::Publish(p)).await;
    let mut reasons = Vec::new();
    for _ in 0..2 {
        match r.next().await {
            RawEvent::Packet(Packet::PubAck(PubAck {
                pkid,
                reason,
                properties,
            })) => {
                let text = properties.and_then(|p| p.reason_string);
                assert!(
                    text.is_some_and(|t| !t.is_empty()),
                    "refusal carries a reason string"
                );
                reasons.push((pkid, reason))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        reasons,
        vec![
            (7, PubAckReason::NotAuthorized),
            (8, PubAckReason::PayloadFormatInvalid)
        ]
    );
}

#[tokio::test]
async fn qos2_exactly_once_flow() {
    let b = TestBroker::start().await;
    let (sub, mut sel) = client(opts("sub", b.port()));
    connack(&mut sel).await;
    sub.subscribe("q2", QoS::ExactlyOnce).await.unwrap();
    suback(&mut sel).await;
    let mut r = Raw::connected5(b.addr(), connect5("q2pub", true, None)).await;
    let mut p = Publish::new("q2", QoS::ExactlyOnce, "once", None);
    p.pkid = 3;
    r.send(Packet::Publish(p.clone())).await;
    assert!(matches!(
        r.next().await,
        RawEvent::Packet(Packet::PubRec(_))
    ));
    // A re-send before PUBREL must not be routed twice.
    p.dup = true;
    r.send(Packet::Publish(p)).await;
    assert!(matches!(
        r.next().await,
        RawEvent::Packet(Packet::PubRec(_))
    ));
    r.send(Packet::PubRel(rumqttc::v5::mqttbytes::v5::PubRel::new(
        3, None,
    )))
    .await;
    assert!(matches!(
        r.next().await,
        RawEvent::Packet(Packet::PubComp(_))
    ));
    r.send(Packet::Publish(Publish::new(
        "q2",
        QoS::AtMostOnce,
        "marker",
        None,
    )))
    .await;
    let a = publish(&mut sel).await;
    assert_eq!(a.payload, Bytes::from("once"));
    let m = publish(&mut sel).await;
    assert_eq!(
        m.payload,
        Bytes::from("marker"),
        "exactly one copy of the QoS 2 message"
    );
}
