//! Interoperability with Debian's mosquitto_pub / mosquitto_sub (3.1.1 and 5.0).

mod common;

use std::process::{Command, Stdio};

use common::*;

fn cmd(tool: &str, port: u16, version: &str) -> Command {
    let mut c = Command::new(tool);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version]);
    c
}

async fn blocking(mut c: Command) -> String {
    tokio::task::spawn_blocking(move || run(&mut c))
        .await
        .unwrap()
}

#[tokio::test]
async fn offline_queue_and_retained_via_mosquitto_tools() {
    let b = TestBroker::start().await;
    for v in ["mqttv311", "mqttv5"] {
        let id = format!("mosq-{v}");
        let topic = format!("chat/{v}");
        // Subscribe with a persistent session, then leave (-E: exit once subscribed).
        let mut sub = cmd("mosquitto_sub", b.port(), v);
        sub.args(["-i", &id, "-c", "-q", "1", "-t", &topic, "-E"]);
        if v == "mqttv5" {
            sub.args(["-x", "600"]);
        }
        blocking(sub).await;

        let mut publ = cmd("mosquitto_pub", b.port(), v);
        publ.args(["-q", "1", "-t", &topic, "-m", "while you were away"]);
        blocking(publ).await;

        // Back online: the queued message arrives.
        let mut sub = cmd("mosquitto_sub", b.port(), v);
        sub.args([
            "-i", &id, "-c", "-q", "1", "-t", &topic, "-C", "1", "-W", "10",
        ]);
        if v == "mqttv5" {
            sub.args(["-x", "600"]);
        }
        assert_eq!(blocking(sub).await.trim(), "while you were away", "{v}");

        // Retained: set by one tool, received on subscribe by the other.
        let rt = format!("status/{v}");
        let mut publ = cmd("mosquitto_pub", b.port(), v);
        publ.args(["-q", "1", "-r", "-t", &rt, "-m", "online"]);
        blocking(publ).await;
        let mut sub = cmd("mosquitto_sub", b.port(), v);
        sub.args(["-t", &rt, "-C", "1", "-W", "10", "-v"]);
        assert_eq!(blocking(sub).await.trim(), format!("{rt} online"), "{v}");
    }
}

#[tokio::test]
async fn mosquitto_sub_will_on_kill() {
    use common::v4::*;
    let b = TestBroker::start().await;
    let (w, mut wel) = client(opts("watcher", b.port()));
    connack(&mut wel).await;
    w.subscribe("lwt/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut wel).await;
    let mut events = b.server.broker.events();
    let mut sub = cmd("mosquitto_sub", b.port(), "mqttv311");
    sub.args([
        "-i",
        "doomed",
        "-t",
        "anything",
        "--will-topic",
        "lwt/doomed",
        "--will-payload",
        "lost",
    ])
    .stdout(Stdio::null());
    let mut child = sub.spawn().unwrap();
    // Wait until it is connected before killing it.
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(courier::Event::Connected { client, .. }) = events.recv().await {
                if &*client.client_id == "doomed" {
                    return;
                }
            }
        }
    })
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let p = publish(&mut wel).await;
    assert_eq!(p.topic, "lwt/doomed");
    assert_eq!(&p.payload[..], b"lost");
}
