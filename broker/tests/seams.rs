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
    fn authenticate(
        &self,
        _client_id: &str,
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

    fn blocking_auth(&self) -> bool {
        false
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
