//! The core's admin listener on its own (`courier-mqtt`): the key is
//! required, sessions show their queue depths, a connection can be closed,
//! and `/metrics` parses as the Prometheus text format.

mod common;

use common::v4::*;
use common::{TestBroker, WAIT};
use reqwest::StatusCode;

async fn admin() -> (TestBroker, String, String) {
    let b = TestBroker::with(|c| c.admin.bind = Some("127.0.0.1:0".into())).await;
    let addr = b.server.admin_addr.expect("admin listener");
    let key = std::fs::read_to_string(b.dir.path().join("data/admin.key")).unwrap();
    (b, format!("http://{addr}"), key.trim().to_owned())
}

async fn get(url: &str, key: Option<&str>) -> (StatusCode, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap()
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn sessions_show_queue_depths_and_a_connection_can_be_closed() {
    let (b, base, key) = admin().await;
    assert_eq!(
        get(&format!("{base}/v1/sessions"), None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A persistent session that went away with a subscription; two
    // messages wait for it.
    let mut o = opts("sleeper", b.port());
    o.set_clean_session(false);
    let (sleeper, mut el) = client(o);
    connack(&mut el).await;
    sleeper.subscribe("news", QoS::AtLeastOnce).await.unwrap();
    suback(&mut el).await;
    sleeper.disconnect().await.unwrap();
    while el.poll().await.is_ok() {}

    let (pubr, mut pel) = client(opts("publisher", b.port()));
    connack(&mut pel).await;
    for i in 0..2 {
        pubr.publish("news", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
        puback(&mut pel).await;
    }
    let (status, body) = get(&format!("{base}/v1/sessions"), Some(&key)).await;
    assert_eq!(status, StatusCode::OK);
    let sessions: serde_json::Value = serde_json::from_str(&body).unwrap();
    let find = |id: &str| {
        sessions
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["client_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {sessions}"))
    };
    let s = find("sleeper");
    assert_eq!(s["online"], false, "{s}");
    assert_eq!(s["queued"], 2, "{s}");
    assert_eq!(s["subscriptions"], 1, "{s}");
    assert_eq!(find("publisher")["online"], true);

    // Closing the publisher's connection.
    let kick = |id: &str| {
        reqwest::Client::new()
            .post(format!("{base}/v1/sessions/{id}/kick"))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(kick("publisher").await.unwrap().status(), StatusCode::OK);
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if pel.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the publisher's connection was closed");
    assert_eq!(
        kick("sleeper").await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "not connected"
    );
    // Nothing erased: nothing to shred.
    let shred = reqwest::Client::new()
        .post(format!("{base}/v1/store/shred"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(shred.status(), StatusCode::OK);
    assert_eq!(shred.text().await.unwrap(), r#"{"shredded":false}"#);
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let (b, base, key) = admin().await;
    let (c, mut el) = client(opts("one", b.port()));
    connack(&mut el).await;
    // Retained: stored, so its PUBACK waits for a commit.
    c.publish("t", QoS::AtLeastOnce, true, "x").await.unwrap();
    puback(&mut el).await;
    let (status, body) = get(&format!("{base}/metrics"), Some(&key)).await;
    assert_eq!(status, StatusCode::OK);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &body).unwrap();
    // Prometheus' own Python client's parser (.ci/run installs it).
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys\n\
             from prometheus_client.parser import text_string_to_metric_families as p\n\
             for f in p(open(sys.argv[1]).read()):\n\
             \x20   for s in f.samples: print(s.name, s.value)\n",
        )
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = String::from_utf8(out.stdout).unwrap();
    let value = |name: &str| -> f64 {
        samples
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {samples}"))
    };
    assert_eq!(value("courier_connections"), 1.0);
    assert_eq!(value("courier_publish_received_total"), 1.0);
    assert_eq!(value("courier_connections_total"), 1.0);
    assert!(value("courier_store_commit_seconds_count") >= 1.0);
    assert!(value("courier_store_syncs_total") >= 1.0);
    // No chat layer here: none of its metrics.
    assert!(!samples.contains("courier_chat_"), "{samples}");
}
