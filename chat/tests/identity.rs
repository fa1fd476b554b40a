//! Logins with access tokens, and the chat namespace's access rules.

mod common;

use base64::Engine as _;
use common::*;
use courier_chat::proto::{self, request::Op};
use courier_chat::{KeyAlgorithm, KeyConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message as _;
use ring::signature::KeyPair as _;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, PubAckReason, SubscribeReasonCode,
};

fn now() -> u64 {
    courier::message::unix_now()
}

fn claims(sub: &str, dev: &str, exp: u64, aud: Option<&str>) -> courier_chat::Claims {
    courier_chat::Claims {
        sub: sub.into(),
        dev: dev.into(),
        exp,
        iat: now(),
        aud: aud.map(Into::into),
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[tokio::test]
async fn tokens_must_be_valid_current_and_for_this_user_and_device() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::with(dir.path(), |_, chat| {
        chat.tokens.audience = Some("chat.test".into());
        // The slowing down is tested on its own; here it would only wait.
        chat.max_login_delay_ms = 0;
    })
    .await;
    let addr = s.addr();
    let good = s.token("alice", "phone");
    assert_eq!(
        try_connect(addr, "alice:phone", "", &good).await,
        ConnectReturnCode::Success
    );
    assert_eq!(
        try_connect(addr, "alice:phone", "alice", &good).await,
        ConnectReturnCode::Success
    );

    let refused = ConnectReturnCode::BadUserNamePassword;
    // Someone else's token, or another device's.
    assert_eq!(try_connect(addr, "bob:phone", "", &good).await, refused);
    assert_eq!(try_connect(addr, "alice:laptop", "", &good).await, refused);
    assert_eq!(
        try_connect(addr, "alice:phone", "bob", &good).await,
        refused
    );
    // Expired.
    let expired = s
        .running
        .chat
        .tokens()
        .mint("alice", "phone", now() - 7200, 3600)
        .unwrap();
    assert_eq!(
        try_connect(addr, "alice:phone", "", &expired).await,
        refused
    );
    // Tampered: alice's claims with another signature byte.
    let mut t = good.clone().into_bytes();
    let last = t.len() - 2;
    t[last] = if t[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        try_connect(addr, "alice:phone", "", std::str::from_utf8(&t).unwrap()).await,
        refused
    );
    // Wrong audience, and none.
    let secret = std::fs::read(dir.path().join("chat-secret")).unwrap();
    let key = EncodingKey::from_secret(&secret).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("courier".into());
    let wrong = jsonwebtoken::encode(
        &h,
        &claims("alice", "phone", now() + 60, Some("elsewhere")),
        &key,
    )
    .unwrap();
    assert_eq!(try_connect(addr, "alice:phone", "", &wrong).await, refused);
    let none = jsonwebtoken::encode(&h, &claims("alice", "phone", now() + 60, None), &key).unwrap();
    assert_eq!(try_connect(addr, "alice:phone", "", &none).await, refused);
    // "none" algorithm and garbage.
    assert_eq!(
        try_connect(addr, "alice:phone", "", "eyJhbGciOiJub25lIn0.e30.").await,
        refused
    );
    assert_eq!(try_connect(addr, "alice:phone", "", "").await, refused);
    // Not a chat client id at all.
    assert_eq!(
        try_connect(addr, "alice:ph/one", "", &good).await,
        ConnectReturnCode::NotAuthorized
    );
    assert_eq!(s.metric("logins"), 2);
    assert_eq!(s.metric("logins_refused"), 10);
    s.stop().await;
}

#[tokio::test]
async fn an_apps_own_issuer_signs_with_es256_or_eddsa_keys_chosen_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let rng = ring::rand::SystemRandom::new();
    let es = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let es_pub = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        es.as_ref(),
        &rng,
    )
    .unwrap()
    .public_key()
    .as_ref()
    .to_vec();
    let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed_pub = ring::signature::Ed25519KeyPair::from_pkcs8(ed.as_ref())
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    // SubjectPublicKeyInfo: the fixed algorithm prefix, then the key.
    let mut spki_es = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    spki_es.extend_from_slice(&es_pub);
    let mut spki_ed = hex("302a300506032b6570032100");
    spki_ed.extend_from_slice(&ed_pub);
    std::fs::write(dir.path().join("es.pem"), pem("PUBLIC KEY", &spki_es)).unwrap();
    std::fs::write(dir.path().join("ed.pem"), pem("PUBLIC KEY", &spki_ed)).unwrap();
    let d = dir.path().to_owned();
    let s = ChatServer::with(dir.path(), move |_, chat| {
        chat.tokens.secret_file = None;
        chat.tokens.keys = vec![
            KeyConfig {
                kid: "es-2026".into(),
                alg: KeyAlgorithm::ES256,
                secret: None,
                public_key_file: Some(d.join("es.pem")),
            },
            KeyConfig {
                kid: "ed-2026".into(),
                alg: KeyAlgorithm::EdDSA,
                secret: None,
                public_key_file: Some(d.join("ed.pem")),
            },
        ];
    })
    .await;
    let sign = |alg: Algorithm, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims("alice", "phone", now() + 60, None), key).unwrap()
    };
    let es_key = EncodingKey::from_ec_der(es.as_ref());
    let ed_key = EncodingKey::from_ed_der(ed.as_ref());
    let addr = s.addr();
    let ok = ConnectReturnCode::Success;
    let refused = ConnectReturnCode::BadUserNamePassword;
    assert_eq!(
        try_connect(
            addr,
            "alice:phone",
            "",
            &sign(Algorithm::ES256, "es-2026", &es_key)
        )
        .await,
        ok
    );
    assert_eq!(
        try_connect(
            addr,
            "alice:phone",
            "",
            &sign(Algorithm::EdDSA, "ed-2026", &ed_key)
        )
        .await,
        ok
    );
    // A key under the other's id, an unknown id: refused.
    assert_eq!(
        try_connect(
            addr,
            "alice:phone",
            "",
            &sign(Algorithm::EdDSA, "es-2026", &ed_key)
        )
        .await,
        refused
    );
    assert_eq!(
        try_connect(
            addr,
            "alice:phone",
            "",
            &sign(Algorithm::ES256, "es-2027", &es_key)
        )
        .await,
        refused
    );
    // The broker has no secret of its own here: it mints nothing.
    assert!(s
        .running
        .chat
        .tokens()
        .mint("alice", "phone", now(), 60)
        .is_err());
    s.stop().await;
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_device_reads_only_its_inbox_and_writes_only_where_it_may() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let denied = SubscribeReasonCode::NotAuthorized;
    for f in [
        "#",
        "+/x",
        "c/#",
        "c/in/bob/phone",
        "c/in/alice/+",
        "$SYS/#",
        "c/s",
        "news",
    ] {
        assert_eq!(alice.subscribe(f).await, denied, "{f}");
    }
    let before = s.metric("acl_refused");
    for t in ["news", "c/in/bob/phone", "c/other"] {
        let a = alice.publish(t, b"x".to_vec(), None).await;
        assert!(
            matches!(
                a.reason,
                PubAckReason::NotAuthorized | PubAckReason::TopicNameInvalid
            ),
            "{t}: {:?}",
            a.reason
        );
    }
    assert_eq!(
        alice
            .publish("c/in/bob/phone", b"x".to_vec(), None)
            .await
            .reason,
        PubAckReason::NotAuthorized
    );
    assert!(s.metric("acl_refused") >= before + 4);

    // A group alice is not in: she can neither read it nor write to it.
    let g = bob.create_group("private", &["carol"]).await;
    let err = alice
        .send_text(To::Conversation(&g), "1", "hello?")
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.error.as_deref()),
        (PubAckReason::NotAuthorized, Some("NOT_MEMBER"))
    );
    let (reason, r) = alice
        .request(Op::History(proto::History {
            conversation: g.clone(),
            before: 0,
            after: 0,
            limit: 5,
        }))
        .await;
    assert_eq!(reason, PubAckReason::NotAuthorized);
    assert_eq!(r.error.unwrap().code, proto::ErrorCode::NotMember as i32);
    let err = alice
        .send_text(To::Conversation("nope"), "2", "x")
        .await
        .unwrap_err();
    assert_eq!(err.error.as_deref(), Some("UNKNOWN_CONVERSATION"));
    let err = alice
        .send_text(To::User("nobody"), "3", "x")
        .await
        .unwrap_err();
    assert_eq!(err.error.as_deref(), Some("UNKNOWN_USER"));
    let err = alice.send_raw(b"\xff\xff\xff".to_vec()).await.unwrap_err();
    assert_eq!(
        (err.reason, err.error.as_deref()),
        (PubAckReason::PayloadFormatInvalid, Some("BAD_REQUEST"))
    );
    let big = "x".repeat(64 * 1024 + 1);
    let err = alice
        .send_text(To::User("bob"), "4", &big)
        .await
        .unwrap_err();
    assert_eq!(err.error.as_deref(), Some("TOO_LARGE"));

    // A forged sender: extra fields in the payload change nothing; the
    // server stamps who sent it.
    let mut m = proto::SendMessage {
        to_user: "carol".into(),
        client_msg_id: "5".into(),
        kind: Some(proto::send_message::Kind::Content(proto::Content {
            r#type: String::new(),
            body: b"from bob, honest".to_vec(),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec();
    // Field 15 (unknown to SendMessage), string "bob"; and Entry's sender
    // field number (3) is SendMessage's client_msg_id, so it cannot be set.
    m.extend_from_slice(&[0x7a, 3, b'b', b'o', b'b']);
    alice.send_raw(m).await.unwrap();
    // The group's creation, the direct conversation's, then the message.
    let got = carol.entries(3).await;
    let e = got.iter().find(|e| is_message(e)).unwrap();
    assert_eq!(
        (e.sender.as_str(), e.sender_device.as_str()),
        ("alice", "phone")
    );
    s.stop().await;
}

#[tokio::test]
async fn a_revoked_device_is_disconnected_at_once_and_refused_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut phone = Phone::connect(&s, "alice", "phone").await;
    let mut old = Phone::connect(&s, "alice", "old-tablet").await;
    match phone.ok(Op::ListDevices(proto::ListDevices {})).await {
        Some(proto::response::Result::Devices(d)) => {
            let ids: Vec<(&str, bool, bool)> = d
                .devices
                .iter()
                .map(|d| (d.id.as_str(), d.revoked, d.online))
                .collect();
            assert_eq!(ids, [("old-tablet", false, true), ("phone", false, true)]);
        }
        other => panic!("{other:?}"),
    }
    phone
        .ok(Op::RevokeDevice(proto::RevokeDevice {
            device: "old-tablet".into(),
        }))
        .await;
    assert_eq!(
        old.until_closed().await,
        Some(DisconnectReasonCode::NotAuthorized)
    );
    let token = s.token("alice", "old-tablet");
    assert_eq!(
        try_connect(s.addr(), "alice:old-tablet", "", &token).await,
        ConnectReturnCode::NotAuthorized
    );
    // Still revoked after a restart.
    s.stop().await;
    let s = ChatServer::start(dir.path()).await;
    let token = s.token("alice", "old-tablet");
    assert_eq!(
        try_connect(s.addr(), "alice:old-tablet", "", &token).await,
        ConnectReturnCode::NotAuthorized
    );
    s.stop().await;
}

#[tokio::test]
async fn a_connection_whose_token_expires_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    // Expires in 2 s (the broker's clock is the wall clock here).
    let short = s
        .running
        .chat
        .tokens()
        .mint("alice", "phone", now(), 2)
        .unwrap();
    let mut phone = Phone::connect_with(s.addr(), "alice", "phone", &short).await;
    assert_eq!(
        phone.until_closed().await,
        Some(DisconnectReasonCode::NotAuthorized)
    );
    s.stop().await;
}

/// What an iOS notification service extension does: it connects beside
/// the app's session with the device's access token, fetches what is
/// waiting, and leaves the device's cursor (and session) alone.
#[tokio::test]
async fn a_peek_connection_fetches_without_taking_over_or_moving_the_cursor() {
    use proto::response::Result as R;
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    Phone::connect(&s, "bob", "phone").await.leave().await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    for i in 0..3 {
        alice
            .send_text(To::User("bob"), &format!("m{i}"), &format!("hello {i}"))
            .await
            .unwrap();
    }
    let token = s.token("bob", "phone");
    let mut nse = Phone::connect_peek(s.addr(), "bob", "phone", &token).await;
    let fetch = |limit| Op::Fetch(proto::Fetch { limit });
    for _ in 0..2 {
        match nse.ok(fetch(0)).await {
            Some(R::Fetched(f)) => {
                let texts: Vec<String> = f
                    .entries
                    .iter()
                    .filter(|e| is_message(e))
                    .map(text)
                    .collect();
                assert_eq!(texts, ["hello 0", "hello 1", "hello 2"]);
                assert_eq!((f.lost, f.more), (0, false));
            }
            other => panic!("{other:?}"),
        }
    }
    match nse.ok(fetch(2)).await {
        Some(R::Fetched(f)) => assert!(f.entries.len() == 2 && f.more),
        other => panic!("{other:?}"),
    }
    // It may fetch, and nothing else.
    assert!(nse.send_text(To::User("alice"), "x", "no").await.is_err());
    let (reason, r) = nse.request(Op::ListDevices(proto::ListDevices {})).await;
    assert_eq!(reason, PubAckReason::NotAuthorized, "{:?}", r.error);

    // The phone connects beside it and gets all three: the cursor did not
    // move. Neither connection takes the other's place.
    let mut phone = Phone::connect(&s, "bob", "phone").await;
    let texts: Vec<String> = phone
        .entries(4)
        .await
        .iter()
        .filter(|e| is_message(e))
        .map(text)
        .collect();
    assert_eq!(texts, ["hello 0", "hello 1", "hello 2"]);
    alice
        .send_text(To::User("bob"), "m3", "hello 3")
        .await
        .unwrap();
    assert_eq!(text(&phone.entry().await), "hello 3");
    // The feed is ordered: the peek connection's arrival was handled
    // before the phone's, so a delivery to it would precede this answer.
    assert!(matches!(nse.ok(fetch(1)).await, Some(R::Fetched(_))));
    assert!(
        nse.pending_entries().is_empty(),
        "a peek connection is fed nothing"
    );

    // Only for a known device, with that device's access token.
    assert_eq!(
        try_connect(s.addr(), "bob:laptop:peek", "", &s.token("bob", "laptop")).await,
        ConnectReturnCode::NotAuthorized
    );
    assert_eq!(
        try_connect(s.addr(), "bob:phone:peek", "", &s.token("bob", "tablet")).await,
        ConnectReturnCode::BadUserNamePassword
    );
    s.stop().await;
}
