//! Authentication, authorization and the TLS / WebSocket listeners.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use courier::config::{AclAction, AclRule, ListenerKind, Permission};

fn add_user(file: &std::path::Path, user: &str, password: &str) {
    // What `courier passwd` does (its command line is tested in courier-chat).
    let mut pf = courier::auth::PasswordFile::load(file).unwrap();
    pf.set(user, password.as_bytes(), 1000).unwrap();
    pf.save(file).unwrap();
}

#[tokio::test]
async fn password_file_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    add_user(&pw, "alice", "wonderland");
    add_user(&pw, "bob", "builder");
    let text = std::fs::read_to_string(&pw).unwrap();
    assert!(text.contains("alice:pbkdf2-sha256$1000$") && !text.contains("wonderland"));

    let b = TestBroker::with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = Some(pw.clone());
    })
    .await;
    {
        use common::v5::*;
        let code = |user: Option<(&str, &str)>| {
            let mut o = opts("c5", b.port());
            if let Some((u, p)) = user {
                o.set_credentials(u, p);
            }
            async move {
                let (_c, mut el) = client(o);
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => a.code,
                    Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
                    other => panic!("{other:?}"),
                }
            }
        };
        assert_eq!(
            code(Some(("alice", "wonderland"))).await,
            ConnectReturnCode::Success
        );
        assert_eq!(
            code(Some(("alice", "nope"))).await,
            ConnectReturnCode::BadUserNamePassword
        );
        assert_eq!(
            code(Some(("mallory", "x"))).await,
            ConnectReturnCode::BadUserNamePassword
        );
        assert_eq!(code(None).await, ConnectReturnCode::NotAuthorized);
    }
    {
        use common::v4::*;
        let code = |user: Option<(&str, &str)>| {
            let mut o = opts("c4", b.port());
            if let Some((u, p)) = user {
                o.set_credentials(u, p);
            }
            async move {
                let (_c, mut el) = client(o);
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => a.code,
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code,
                    other => panic!("{other:?}"),
                }
            }
        };
        assert_eq!(
            code(Some(("bob", "builder"))).await,
            rumqttc::ConnectReturnCode::Success
        );
        assert_eq!(
            code(Some(("bob", "x"))).await,
            rumqttc::ConnectReturnCode::BadUserNamePassword
        );
        assert_eq!(code(None).await, rumqttc::ConnectReturnCode::NotAuthorized);
    }
}

fn rule(permission: Permission, action: AclAction, topic: &str) -> AclRule {
    AclRule {
        permission,
        action,
        topic: topic.into(),
        username: None,
    }
}

async fn acl_broker() -> TestBroker {
    TestBroker::with(|c| {
        c.acl.default = Permission::Deny;
        c.acl.rules = vec![
            rule(Permission::Allow, AclAction::All, "users/%u/#"),
            rule(Permission::Allow, AclAction::Publish, "users/+/inbox"),
        ];
    })
    .await
}

#[tokio::test]
async fn acl_denials_v4() {
    use common::v4::*;
    let b = acl_broker().await;
    let mut o = opts("bob-phone", b.port());
    o.set_credentials("bob", "");
    let (bob, mut bel) = client(o);
    connack(&mut bel).await;
    bob.subscribe("users/bob/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut bel).await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    bob.subscribe("users/alice/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        suback(&mut bel).await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );

    let mut o = opts("alice-phone", b.port());
    o.set_credentials("alice", "");
    let (alice, mut ael) = client(o);
    connack(&mut ael).await;
    // Denied for alice: 3.1.1 cannot say so, so it is acknowledged and dropped.
    alice
        .publish("users/bob/private", QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    puback(&mut ael).await;
    alice
        .publish("users/bob/inbox", QoS::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    puback(&mut ael).await;
    let p = publish(&mut bel).await;
    assert_eq!(p.topic, "users/bob/inbox");
    assert_eq!(p.payload, Bytes::from("yes"));
    assert!(
        b.server
            .broker
            .metrics
            .acl_denied
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
}

#[tokio::test]
async fn acl_denied_subscribe_v5_is_0x87() {
    use common::v5::*;
    let b = acl_broker().await;
    let mut o = opts("carol-phone", b.port());
    o.set_credentials("carol", "");
    let (c, mut el) = client(o);
    connack(&mut el).await;
    c.subscribe_many(vec![
        rumqttc::v5::mqttbytes::v5::Filter::new("users/carol/+", QoS::AtLeastOnce),
        // Wholly inside what carol may not read.
        rumqttc::v5::mqttbytes::v5::Filter::new("users/dave/#", QoS::AtLeastOnce),
    ])
    .await
    .unwrap();
    let ack = suback(&mut el).await;
    assert_eq!(
        ack.return_codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::NotAuthorized
        ]
    );
    let text = ack.properties.and_then(|p| p.reason_string);
    assert_eq!(text.as_deref(), Some("users/dave/#: not authorized"));
}

#[tokio::test]
async fn a_broad_subscription_is_granted_and_filtered_at_delivery() {
    use common::v4::*;
    let b = acl_broker().await;
    let port = b.port();
    let with_user = |id: &str, user: &str| {
        let mut o = opts(id, port);
        o.set_credentials(user, "");
        o
    };
    // Dave's retained message, which carol must not see.
    let (dave, mut del) = client(with_user("dave-phone", "dave"));
    dave.publish("users/dave/status", QoS::AtLeastOnce, true, "away")
        .await
        .unwrap();
    puback(&mut del).await;
    // Carol's own retained message.
    let (carol_pub, mut cpl) = client(with_user("carol-laptop", "carol"));
    carol_pub
        .publish("users/carol/status", QoS::AtLeastOnce, true, "here")
        .await
        .unwrap();
    puback(&mut cpl).await;

    // "#" touches topics carol may not read, so it is granted and filtered.
    let (carol, mut cel) = client(with_user("carol-phone", "carol"));
    connack(&mut cel).await;
    carol.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback(&mut cel).await.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let p = publish(&mut cel).await;
    assert_eq!(p.topic, "users/carol/status", "only her retained message");
    // Live traffic: dave's inbox message (anyone may publish there) is not
    // delivered to carol; the one to her inbox is.
    for (to, body) in [
        ("users/dave/inbox", "for dave"),
        ("users/carol/inbox", "for carol"),
    ] {
        dave.publish(to, QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
        puback(&mut del).await;
    }
    let p = publish(&mut cel).await;
    assert_eq!(p.topic, "users/carol/inbox");
    assert_eq!(p.payload, Bytes::from("for carol"));
    assert!(
        b.server
            .broker
            .metrics
            .acl_filtered
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "the retained and the live message were withheld"
    );
}

/// A test CA and a server certificate for `localhost`, written to `dir`.
fn test_pki(
    dir: &std::path::Path,
) -> (
    rustls::pki_types::CertificateDer<'static>,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca.der().clone(), cert_path, key_path)
}

fn client_tls(ca: rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(cfg)
}

#[tokio::test]
async fn tls_websocket_and_secure_websocket() {
    use common::v4::*;
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    let b = TestBroker::with(|c| {
        for kind in [ListenerKind::Tls, ListenerKind::Ws, ListenerKind::Wss] {
            let mut l = listener(kind);
            if matches!(kind, ListenerKind::Tls | ListenerKind::Wss) {
                l.cert = Some(cert.clone());
                l.key = Some(key.clone());
            }
            c.listeners.push(l);
        }
    })
    .await;
    let port = |k| b.server.addr(k).unwrap().port();
    let tls = rumqttc::TlsConfiguration::Rustls(client_tls(ca));

    // Subscriber over TLS.
    let mut o = MqttOptions::new("tls-sub", "localhost", port(ListenerKind::Tls));
    o.set_transport(rumqttc::Transport::tls_with_config(tls.clone()));
    let (sub, mut sel) = client(o);
    connack(&mut sel).await;
    sub.subscribe("x/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sel).await;

    // Publishers over WebSocket and secure WebSocket (subprotocol "mqtt").
    let ws_url = format!("ws://127.0.0.1:{}/mqtt", port(ListenerKind::Ws));
    let mut o = MqttOptions::new("ws-pub", ws_url, port(ListenerKind::Ws));
    o.set_transport(rumqttc::Transport::Ws);
    let (wsp, mut wsel) = client(o);
    connack(&mut wsel).await;
    wsp.publish("x/ws", QoS::AtLeastOnce, false, "over ws")
        .await
        .unwrap();
    puback(&mut wsel).await;

    let wss_url = format!("wss://localhost:{}/mqtt", port(ListenerKind::Wss));
    let mut o = MqttOptions::new("wss-pub", wss_url, port(ListenerKind::Wss));
    o.set_transport(rumqttc::Transport::wss_with_config(tls));
    let (wssp, mut wssel) = client(o);
    connack(&mut wssel).await;
    wssp.publish("x/wss", QoS::AtLeastOnce, false, "over wss")
        .await
        .unwrap();
    puback(&mut wssel).await;

    let a = publish(&mut sel).await;
    let c = publish(&mut sel).await;
    assert_eq!(
        (a.topic.as_str(), a.payload.as_ref()),
        ("x/ws", &b"over ws"[..])
    );
    assert_eq!(
        (c.topic.as_str(), c.payload.as_ref()),
        ("x/wss", &b"over wss"[..])
    );
}

#[tokio::test]
async fn plain_client_on_tls_port_is_dropped() {
    let pki = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = test_pki(pki.path());
    let b = TestBroker::with(|c| {
        let mut l = listener(ListenerKind::Tls);
        l.cert = Some(cert);
        l.key = Some(key);
        c.listeners = vec![l];
    })
    .await;
    use tokio::io::AsyncReadExt;
    let mut r = Raw::connect(b.server.addr(ListenerKind::Tls).unwrap(), false).await;
    r.send4(rumqttc::mqttbytes::v4::Packet::Connect(
        rumqttc::mqttbytes::v4::Connect::new("x"),
    ))
    .await;
    // The broker answers with a TLS alert at most, then closes; never a CONNACK.
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, r.sock.read_to_end(&mut got))
        .await
        .unwrap()
        .ok();
    assert!(got.first() != Some(&0x20), "no MQTT CONNACK on a TLS port");
    assert_eq!(got.first(), Some(&0x15), "TLS alert record");
}
