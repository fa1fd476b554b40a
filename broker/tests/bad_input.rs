//! Malformed and hostile input: each gets a clear answer (a reason code or
//! a close), never a panic or hang, and other clients carry on.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode as R, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;

/// Connects a raw 5.0 client and completes CONNECT.
async fn connected5(b: &TestBroker, id: &str) -> Raw {
    Raw::connected5(b.addr(), connect5(id, true, None)).await
}

/// Sends raw bytes after CONNECT; returns the DISCONNECT reason (if any)
/// once the broker has closed the connection.
async fn after_connect(b: &TestBroker, bytes: &[u8]) -> Option<R> {
    let mut r = connected5(b, "victim").await;
    r.send_bytes(bytes).await;
    r.until_closed().await
}

#[tokio::test]
async fn garbage_instead_of_connect_is_closed() {
    let b = TestBroker::start().await;
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 64][..],
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0x01][..],
    ] {
        let mut r = Raw::connect(b.addr(), true).await;
        r.send_bytes(junk).await;
        assert!(matches!(r.next().await, RawEvent::Closed), "{junk:?}");
    }
}

#[tokio::test]
async fn publish_before_connect_is_closed() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr(), true).await;
    r.send(Packet::Publish(Publish::new(
        "t",
        QoS::AtMostOnce,
        "x",
        None,
    )))
    .await;
    assert!(matches!(r.next().await, RawEvent::Closed));
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr(), false).await;
    // MQTT 3.1 ("MQIsdp", level 3).
    let mut pkt = vec![0x10, 0x00];
    let body: Vec<u8> = [
        &[0x00, 0x06][..],
        b"MQIsdp",
        &[0x03, 0x02, 0x00, 0x3c, 0x00, 0x01, b'x'],
    ]
    .concat();
    pkt[1] = body.len() as u8;
    pkt.extend(body);
    r.send_bytes(&pkt).await;
    match r.next().await {
        RawEvent::V4(rumqttc::mqttbytes::v4::Packet::ConnAck(a)) => {
            assert_eq!(
                a.code,
                rumqttc::mqttbytes::v4::ConnectReturnCode::RefusedProtocolVersion
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(r.next().await, RawEvent::Closed));
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let b = TestBroker::start().await;
    let mut r = connected5(&b, "twice").await;
    r.send(connect5("twice", true, None)).await;
    assert_eq!(r.until_closed().await, Some(R::ProtocolError));
}

#[tokio::test]
async fn wildcard_in_publish_topic_is_0x90() {
    let b = TestBroker::start().await;
    let mut bytes = bytes::BytesMut::new();
    Packet::Publish(Publish::new("a/+/b", QoS::AtMostOnce, "x", None))
        .write(&mut bytes, None)
        .unwrap();
    assert_eq!(after_connect(&b, &bytes).await, Some(R::TopicNameInvalid));
}

#[tokio::test]
async fn invalid_utf8_topic_is_malformed() {
    let b = TestBroker::start().await;
    let mut p = Publish::new("x", QoS::AtMostOnce, "x", None);
    p.topic = Bytes::from_static(&[0xc3, 0x28]);
    let mut bytes = bytes::BytesMut::new();
    Packet::Publish(p).write(&mut bytes, None).unwrap();
    assert_eq!(after_connect(&b, &bytes).await, Some(R::MalformedPacket));
}

#[tokio::test]
async fn oversized_packet_is_0x95_before_it_is_read() {
    let b = TestBroker::with(|c| c.limits.max_packet_size = 1024).await;
    // Only the header of a 10 MB PUBLISH is sent: the broker must not wait
    // for the body.
    assert_eq!(
        after_connect(&b, &[0x30, 0x80, 0xad, 0xe2, 0x04]).await,
        Some(R::PacketTooLarge)
    );
}

#[tokio::test]
async fn reserved_flags_and_bad_lengths_are_malformed() {
    let b = TestBroker::start().await;
    // SUBSCRIBE with flags 0000 (must be 0010).
    assert_eq!(
        after_connect(&b, &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01]).await,
        Some(R::MalformedPacket)
    );
    // PUBLISH with QoS 3.
    assert_eq!(
        after_connect(&b, &[0x36, 0x03, 0x00, 0x01, b'a']).await,
        Some(R::MalformedPacket)
    );
    // Remaining length with a fifth continuation byte.
    assert_eq!(
        after_connect(&b, &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]).await,
        Some(R::MalformedPacket)
    );
    // A string length that runs past the packet.
    assert_eq!(
        after_connect(&b, &[0x30, 0x03, 0x00, 0x09, b'a']).await,
        Some(R::MalformedPacket)
    );
}

#[tokio::test]
async fn silent_connection_is_closed_after_connect_timeout() {
    let b = TestBroker::with(|c| c.limits.connect_timeout_secs = 1).await;
    let mut r = Raw::connect(b.addr(), true).await;
    let t0 = std::time::Instant::now();
    assert!(matches!(r.next().await, RawEvent::Closed));
    assert!(t0.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn connection_limit_refuses_with_connack() {
    let b = TestBroker::with(|c| c.limits.max_connections = 2).await;
    let _a = connected5(&b, "a").await;
    let _b2 = connected5(&b, "b").await;
    let mut r = Raw::connect(b.addr(), true).await;
    r.send(connect5("c", true, None)).await;
    match r.next().await {
        RawEvent::Packet(Packet::ConnAck(a)) => {
            assert_eq!(
                a.code,
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::ServerBusy
            );
            let text = a.properties.and_then(|p| p.reason_string);
            assert_eq!(text.as_deref(), Some("server at its connection limit"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn out_of_file_descriptors_clients_wait_and_are_served_when_some_leave() {
    use rumqttc::mqttbytes::v4 as raw4;
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, mut log) = BrokerProcess::start_with_fd_limit(&data_dir(&dir), 40);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], broker.port));
    let mut served = Vec::new();
    // Connect until the broker reports that it cannot accept any more.
    let mut waiting = loop {
        assert!(served.len() < 40, "the limit was never reached");
        let mut r = Raw::connect(addr, false).await;
        let id = format!("c{}", served.len());
        r.send4(raw4::Packet::Connect(raw4::Connect::new(id))).await;
        let refused = tokio::select! {
            ev = r.next() => match ev {
                RawEvent::V4(raw4::Packet::ConnAck(_)) => false,
                other => panic!("{other:?}"),
            },
            _ = wait_for_line(&mut log, "accept failed") => true,
        };
        if refused {
            break r;
        }
        served.push(r);
    };
    // Two clients leave: the waiting one is served, and the broker is alive.
    served.truncate(served.len() - 2);
    match waiting.next().await {
        RawEvent::V4(raw4::Packet::ConnAck(a)) => {
            assert_eq!(a.code, raw4::ConnectReturnCode::Success)
        }
        other => panic!("{other:?}"),
    }
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "broker still running"
    );
}

/// Waits for a log line containing `needle`.
async fn wait_for_line(log: &mut tokio::sync::mpsc::UnboundedReceiver<String>, needle: &str) {
    while let Some(line) = log.recv().await {
        if line.contains(needle) {
            return;
        }
    }
    std::future::pending::<()>().await
}

#[tokio::test]
async fn healthy_client_survives_a_barrage() {
    use common::v4::*;
    let b = TestBroker::start().await;
    let (c, mut el) = client(opts("healthy", b.port()));
    connack(&mut el).await;
    c.subscribe("ok", QoS::AtLeastOnce).await.unwrap();
    suback(&mut el).await;

    let mut tasks = Vec::new();
    for i in 0..50u8 {
        let addr = b.addr();
        tasks.push(tokio::spawn(async move {
            let mut r = Raw::connect(addr, true).await;
            // A CONNECT-looking header followed by noise.
            let junk: Vec<u8> = (0..64)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
                .collect();
            r.send_bytes(&[0x10, 0x40]).await;
            r.send_bytes(&junk).await;
            r.until_closed().await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    c.publish("ok", QoS::AtLeastOnce, false, "still here")
        .await
        .unwrap();
    let p = publish(&mut el).await;
    assert_eq!(p.payload, Bytes::from("still here"));
    assert!(
        b.server
            .broker
            .metrics
            .connects_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 50
    );
}

#[tokio::test]
async fn disconnect_explains_itself() {
    let b = TestBroker::start().await;
    let mut r = connected5(&b, "explain").await;
    let mut bytes = bytes::BytesMut::new();
    Packet::Publish(Publish::new("a/#", QoS::AtMostOnce, "x", None))
        .write(&mut bytes, None)
        .unwrap();
    r.send_bytes(&bytes).await;
    match r.next().await {
        RawEvent::Packet(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, R::TopicNameInvalid);
            let text = d
                .properties
                .and_then(|p| p.reason_string)
                .unwrap_or_default();
            assert!(text.contains("invalid PUBLISH topic"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(r.next().await, RawEvent::Closed));
}
