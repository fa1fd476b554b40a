//! The APNs and FCM clients against the local fakes, over real TLS: what
//! the fakes check passes, and each scripted failure comes back as the
//! right outcome.

use std::time::Duration;

use push_bridge::apns::ApnsClient;
use push_bridge::fakes::apns::FakeApns;
use push_bridge::fakes::fcm::FakeFcm;
use push_bridge::fakes::Script;
use push_bridge::fcm::FcmClient;
use push_bridge::{Notification, Outcome, Target};

const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn message(conv: &str, seq: u64) -> Notification {
    Notification::Message {
        conversation: conv.into(),
        seq,
        badge: 1,
        mention: false,
    }
}

fn apns(token: &str) -> Target {
    Target::Apns {
        topic: "com.example.chat".into(),
        sandbox: true,
        token: token.into(),
    }
}

#[tokio::test]
async fn apns_pushes_pass_the_fakes_checks_and_reuse_one_provider_token_and_connection() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApns::start(dir.path(), "com.example.chat", 0)
        .await
        .unwrap();
    let client = ApnsClient::new(&fake.app).unwrap();
    for i in 0..5 {
        assert_eq!(
            client.send(&apns(TOKEN), &message("d1", i)).await,
            Outcome::Delivered
        );
    }
    let call = Notification::Call {
        call_id: "k1".into(),
        conversation: "d1".into(),
        video: false,
    };
    assert_eq!(client.send(&apns(TOKEN), &call).await, Outcome::Delivered);
    let got = fake.received();
    assert_eq!(got.len(), 6);
    let auth: std::collections::HashSet<&str> = got
        .iter()
        .map(|r| r.headers["authorization"].as_str())
        .collect();
    assert_eq!(auth.len(), 1, "one provider token for all");
    assert_eq!(fake.connections(), 1, "one HTTP/2 connection");
    assert_eq!(got[0].headers["apns-collapse-id"], "d1");
    assert_eq!(got[0].headers["apns-push-type"], "alert");
    assert_eq!(got[5].headers["apns-topic"], "com.example.chat.voip");
    assert_eq!(got[5].headers["apns-push-type"], "voip");
}

#[tokio::test]
async fn apns_failures_come_back_typed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApns::start(dir.path(), "com.example.chat", 0)
        .await
        .unwrap();
    let client = ApnsClient::new(&fake.app).unwrap();
    let tok = |c: char| c.to_string().repeat(64);
    fake.script(
        &tok('1'),
        Script::error(410, "Unregistered").timestamp(1234),
    );
    fake.script(
        &tok('2'),
        Script::error(429, "TooManyRequests").retry_after(7),
    );
    fake.script(&tok('3'), Script::error(503, "ServiceUnavailable").times(1));
    fake.script(&tok('4'), Script::error(400, "DeviceTokenNotForTopic"));
    assert_eq!(
        client.send(&apns(&tok('1')), &message("d1", 1)).await,
        Outcome::InvalidToken {
            reason: "Unregistered".into(),
            since_ms: Some(1234)
        }
    );
    assert_eq!(
        client.send(&apns(&tok('2')), &message("d1", 1)).await,
        Outcome::RateLimited {
            retry_after_ms: Some(7000)
        }
    );
    assert!(matches!(
        client.send(&apns(&tok('3')), &message("d1", 1)).await,
        Outcome::Retryable { .. }
    ));
    assert_eq!(
        client.send(&apns(&tok('3')), &message("d1", 1)).await,
        Outcome::Delivered
    );
    assert!(matches!(
        client.send(&apns(&tok('4')), &message("d1", 1)).await,
        Outcome::InvalidToken { .. }
    ));
    // A token that is not hex: Apple's BadDeviceToken.
    assert!(matches!(
        client.send(&apns("not-hex"), &message("d1", 1)).await,
        Outcome::InvalidToken { reason, .. } if reason == "BadDeviceToken"
    ));
}

#[tokio::test]
async fn apns_refuses_a_client_whose_key_it_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApns::start(dir.path(), "com.example.chat", 0)
        .await
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let stranger = FakeApns::start(other.path(), "com.example.chat", 0)
        .await
        .unwrap();
    let mut app = fake.app.clone();
    app.key_file = stranger.app.key_file.clone();
    let client = ApnsClient::new(&app).unwrap();
    assert!(matches!(
        client.send(&apns(TOKEN), &message("d1", 1)).await,
        Outcome::Fatal { reason } if reason.contains("InvalidProviderToken")
    ));
    // And a client that does not trust the fake's CA never reaches it.
    let mut app = fake.app.clone();
    app.ca_file = Some(stranger.ca_file());
    let client = ApnsClient::new(&app).unwrap();
    assert!(matches!(
        client.send(&apns(TOKEN), &message("d1", 1)).await,
        Outcome::Retryable { .. }
    ));
}

fn fcm(token: &str) -> Target {
    Target::Fcm {
        project: "courier-test".into(),
        token: token.into(),
    }
}

#[tokio::test]
async fn fcm_sends_get_one_access_token_and_failures_come_back_typed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeFcm::start(dir.path(), "courier-test", 0).await.unwrap();
    let client = FcmClient::new(&fake.app).unwrap();
    for i in 0..4 {
        assert_eq!(
            client.send(&fcm("tok-ok"), &message("g1", i)).await,
            Outcome::Delivered
        );
    }
    assert_eq!(fake.token_requests(), 1, "the access token is cached");
    let got = fake.received();
    assert_eq!(got[0].body["message"]["android"]["collapse_key"], "g1");
    assert!(got[0].body["message"].get("notification").is_none());

    fake.script("tok-gone", Script::error(404, "UNREGISTERED"));
    fake.script("tok-bad", Script::error(400, "INVALID_ARGUMENT"));
    fake.script(
        "tok-busy",
        Script::error(429, "QUOTA_EXCEEDED").retry_after(3),
    );
    fake.script("tok-down", Script::error(503, "UNAVAILABLE"));
    assert!(matches!(
        client.send(&fcm("tok-gone"), &message("g1", 1)).await,
        Outcome::InvalidToken { .. }
    ));
    assert!(matches!(
        client.send(&fcm("tok-bad"), &message("g1", 1)).await,
        Outcome::Fatal { .. }
    ));
    assert_eq!(
        client.send(&fcm("tok-busy"), &message("g1", 1)).await,
        Outcome::RateLimited {
            retry_after_ms: Some(3000)
        }
    );
    assert!(matches!(
        client.send(&fcm("tok-down"), &message("g1", 1)).await,
        Outcome::Retryable { .. }
    ));
    // Another project's credentials: SENDER_ID_MISMATCH.
    let mut app = fake.app.clone();
    app.project = "someone-else".into();
    let other = FcmClient::new(&app).unwrap();
    let t = Target::Fcm {
        project: "someone-else".into(),
        token: "tok-ok".into(),
    };
    assert!(matches!(
        other.send(&t, &message("g1", 1)).await,
        Outcome::InvalidToken { .. }
    ));
    let _ = Duration::ZERO;
}

/// Raw requests to the APNs fake: what Apple refuses, it refuses.
#[tokio::test]
async fn the_apns_fake_refuses_what_apple_refuses() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use push_bridge::jwt::Es256;

    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApns::start(dir.path(), "com.example.chat", 0)
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(fake.ca_file()).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(connector);
    let key = Es256::from_pem(&std::fs::read_to_string(&fake.app.key_file).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = |iat: u64| {
        key.sign(
            &serde_json::json!({"alg": "ES256", "kid": fake.app.key_id}),
            &serde_json::json!({"iss": fake.app.team_id, "iat": iat}),
        )
        .unwrap()
    };
    let good = jwt(now);
    let body = br#"{"aps":{"alert":"x"}}"#.to_vec();
    let send = |auth: String, headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("{}/3/device/{TOKEN}", fake.url))
            .header("authorization", format!("bearer {auth}"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            (status, v["reason"].as_str().unwrap_or("").to_owned())
        }
    };
    let topic = || vec![("apns-topic", "com.example.chat".to_owned())];
    assert_eq!(send(good.clone(), topic(), body.clone()).await.0, 200);
    // A provider token older than an hour.
    assert_eq!(
        send(jwt(now - 3700), topic(), body.clone()).await,
        (403, "ExpiredProviderToken".into())
    );
    // A signature that is not the key's.
    let cut = good.rfind('.').unwrap() + 10;
    let flip = if &good[cut..cut + 1] == "A" { "B" } else { "A" };
    let forged = format!("{}{flip}{}", &good[..cut], &good[cut + 1..]);
    assert_eq!(
        send(forged, topic(), body.clone()).await,
        (403, "InvalidProviderToken".into())
    );
    assert_eq!(
        send(good.clone(), vec![], body.clone()).await,
        (400, "MissingTopic".into())
    );
    let mut wrong = topic();
    wrong[0].1 = "com.example.other".into();
    assert_eq!(
        send(good.clone(), wrong, body.clone()).await,
        (400, "DeviceTokenNotForTopic".into())
    );
    let mut h = topic();
    h.push(("apns-collapse-id", "c".repeat(65)));
    assert_eq!(
        send(good.clone(), h, body.clone()).await,
        (400, "BadCollapseId".into())
    );
    let mut h = topic();
    h.push(("apns-push-type", "background".into()));
    h.push(("apns-priority", "10".into()));
    assert_eq!(
        send(good.clone(), h, body.clone()).await,
        (400, "BadPriority".into())
    );
    let mut h = topic();
    h.push(("apns-push-type", "shout".into()));
    assert_eq!(
        send(good.clone(), h, body.clone()).await,
        (400, "InvalidPushType".into())
    );
    let big = format!(r#"{{"aps":{{"alert":"{}"}}}}"#, "x".repeat(4100)).into_bytes();
    assert_eq!(
        send(good.clone(), topic(), big).await,
        (413, "PayloadTooLarge".into())
    );
    assert_eq!(
        send(good, topic(), Vec::new()).await,
        (400, "PayloadEmpty".into())
    );
}
