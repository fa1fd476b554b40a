//! MQTT.js, the client browser apps use, against the WebSocket listener.
//! Node runs broker/tests/js/roundtrip.mjs (dependencies installed by
//! `.ci/run` with `npm ci`).

mod common;

use std::process::Command;

use common::*;
use courier::config::ListenerKind;

#[tokio::test]
async fn mqttjs_over_websocket() {
    let b = TestBroker::with(|c| c.listeners.push(listener(ListenerKind::Ws))).await;
    let port = b.server.addr(ListenerKind::Ws).unwrap().port();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("roundtrip.mjs")
            .arg(format!("ws://127.0.0.1:{port}/mqtt"))
            .current_dir(dir)
            .output()
            .expect("node runs (install Node.js; .ci/run does npm ci in broker/tests/js)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        r#"{"ok":true,"topic":"js/echo","payload":"hello from mqtt.js","qos":1,"user":"ws"}"#
    );
}
