//! The protocol needs no SDK: a scripted exchange with mosquitto_pub and
//! mosquitto_sub (MQTT 5), payloads built from the .proto schema.

mod common;

use std::process::Stdio;

use tokio::process::Command;

use common::*;
use courier_chat::proto;
use prost::Message as _;

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn mosquitto_clients_chat_with_plain_mqtt_5() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let port = s.addr().port().to_string();
    let bob_token = s.token("bob", "phone");
    let feed = s.running.server.broker.feed();
    // bob listens for his first two deliveries, printed as hex.
    let sub = Command::new("mosquitto_sub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &port, "-q", "1"])
        .args(["-i", "bob:phone", "-u", "bob", "-P", &bob_token])
        .args(["-t", "c/in/bob/phone", "-F", "%x", "-C", "2", "-W", "15"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt install mosquitto-clients)");
    tokio::time::timeout(WAIT, async {
        while !matches!(feed.next().await, u if u.online && &*u.client.client_id == "bob:phone") {}
    })
    .await
    .expect("bob connects");

    // alice writes to bob with mosquitto_pub.
    let send = proto::SendMessage {
        to_user: "bob".into(),
        client_msg_id: "1".into(),
        kind: Some(proto::send_message::Kind::Content(proto::Content {
            r#type: "text".into(),
            body: b"hello from mosquitto".to_vec(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let file = dir.path().join("send.bin");
    std::fs::write(&file, send.encode_to_vec()).unwrap();
    let status = Command::new("mosquitto_pub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &port, "-q", "1"])
        .args([
            "-i",
            "alice:phone",
            "-u",
            "alice",
            "-P",
            &s.token("alice", "phone"),
        ])
        .args(["-t", "c/s", "-f"])
        .arg(&file)
        .status()
        .await
        .unwrap();
    assert!(status.success());

    let out = sub.wait_with_output().await.unwrap();
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let entry = |hex: &str| match proto::Down::decode(hex_decode(hex).as_slice())
        .unwrap()
        .kind
    {
        Some(proto::down::Kind::Entry(e)) => e,
        other => panic!("{other:?}"),
    };
    let created = entry(&lines[0]);
    assert_eq!(created.seq, 1);
    let m = entry(&lines[1]);
    assert_eq!(
        (m.seq, m.sender.as_str(), text(&m).as_str()),
        (2, "alice", "hello from mosquitto")
    );
    // mosquitto_sub acknowledged both: bob's cursor moved past them, so
    // his phone, back, gets only what is new.
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let conv = m.conversation.clone();
    alice
        .send_text(To::Conversation(&conv), "2", "new")
        .await
        .unwrap();
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    assert_eq!(bob.entry().await.seq, 3);

    // A chat device subscribing to everything is refused.
    let out = Command::new("mosquitto_sub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &port])
        .args([
            "-i",
            "alice:phone",
            "-u",
            "alice",
            "-P",
            &s.token("alice", "phone"),
        ])
        .args(["-t", "#", "-C", "1", "-W", "5"])
        .output()
        .await
        .unwrap();
    // (mosquitto_sub 2.0.11 says so and exits 0; later versions exit 1.)
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied"),
        "{out:?}"
    );
    s.stop().await;
}
