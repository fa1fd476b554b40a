//! The client SDK (`client-sdk/`) against a real broker on loopback: the
//! in-process server, and the `courier` binary for kill -9. The SDK's own
//! process is killed too (this test binary runs itself as the child).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use courier_sdk::{proto, Client, ClientConfig, Event, SendState, To, Token};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An SDK client whose tokens come from the broker's secret, each valid
/// `ttl` seconds; `calls` counts the token provider's calls.
fn client_with(
    addr: &str,
    user: &str,
    device: &str,
    dir: &Path,
    secret: &Path,
    ttl: u64,
    calls: Arc<AtomicU64>,
) -> Client {
    let tokens = Arc::new(tokens_at(secret));
    let (u, d) = (user.to_owned(), device.to_owned());
    let mut config = ClientConfig::new(
        addr,
        user,
        device,
        dir.join(format!("{user}-{device}")),
        move || {
            let (tokens, u, d, calls) = (tokens.clone(), u.clone(), d.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                let now = courier::message::unix_now();
                let value = tokens.mint(&u, &d, now, ttl).map_err(|e| e.to_string())?;
                Ok(Token {
                    value,
                    expires_at: Some(now + ttl),
                })
            }
        },
    );
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(500);
    Client::connect(config).unwrap()
}

fn client(addr: &str, user: &str, device: &str, dir: &Path, secret: &Path) -> Client {
    client_with(addr, user, device, dir, secret, 3600, Arc::default())
}

/// Waits for an event `pick` wants.
async fn until<T>(c: &mut Client, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match c.next_event().await {
                Some(e) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                None => panic!("the client closed"),
            }
        }
    })
    .await
    .expect("the event within the deadline")
}

fn text_of(e: &Event) -> Option<String> {
    match e {
        Event::Entry(e) => match &e.kind {
            Some(proto::entry::Kind::Content(c)) => {
                Some(String::from_utf8_lossy(&c.body).into_owned())
            }
            _ => None,
        },
        _ => None,
    }
}

/// Collects message texts until `n` distinct ones arrived; the count of
/// each (a repeat would show as 2).
async fn texts(c: &mut Client, n: usize) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    while seen.len() < n {
        let t = until(c, text_of).await;
        *seen.entry(t).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn a_message_sent_while_disconnected_arrives_once_when_connected() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let at = |c: &mut courier::Config| c.listeners[0].bind = format!("127.0.0.1:{port}");
    let s = ChatServer::with(dir.path(), |c, _| at(c)).await;
    let addr = format!("127.0.0.1:{port}");
    let secret = dir.path().join("chat-secret");
    let mut bob = client(&addr, "bob", "phone", dir.path(), &secret);
    until(&mut bob, |e| (*e == Event::Connected).then_some(())).await;
    s.stop().await;

    // The broker is down: the send is queued on disk.
    let mut alice = client(&addr, "alice", "phone", dir.path(), &secret);
    let id = alice
        .send_text(To::User("bob".into()), "sent while offline")
        .unwrap();
    assert_eq!(alice.state(&id).unwrap(), Some(SendState::Queued));

    let s = ChatServer::with(dir.path(), |c, _| at(c)).await;
    let seq = until(&mut alice, |e| match e {
        Event::SendState {
            client_msg_id,
            state: SendState::Sent { seq },
        } if *client_msg_id == id => Some(*seq),
        _ => None,
    })
    .await;
    assert!(seq > 0);
    alice
        .send_text(To::User("bob".into()), "and then another")
        .unwrap();
    let got = texts(&mut bob, 2).await;
    assert_eq!(got["sent while offline"], 1);
    assert_eq!(got["and then another"], 1);
    // Stored locally, so history shows offline.
    let conv = alice.conversations(0, 10).await.unwrap()[0].id.clone();
    let local = bob.local_history(&conv, 0, 10).unwrap();
    assert_eq!(local.iter().filter(|e| e.seq == seq).count(), 1);
    // bob reads: alice's message goes to Read.
    bob.mark_read(&conv, seq).await.unwrap();
    until(&mut alice, |e| match e {
        Event::SendState {
            client_msg_id,
            state: SendState::Read { .. },
        } if *client_msg_id == id => Some(()),
        _ => None,
    })
    .await;
    alice.close().await;
    bob.close().await;
    s.stop().await;
}

#[tokio::test]
async fn a_broker_killed_mid_conversation_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, secret) = (dir.path().join("data"), dir.path().join("secret"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let p = ChatProcess::start_at(&data, &secret, dir.path(), "", &listen);
    let mut bob = client(&listen, "bob", "phone", dir.path(), &secret);
    until(&mut bob, |e| (*e == Event::Connected).then_some(())).await;
    let mut alice = client(&listen, "alice", "phone", dir.path(), &secret);
    for i in 0..40 {
        alice
            .send_text(To::User("bob".into()), &format!("m{i}"))
            .unwrap();
    }
    // Some have arrived when the broker dies.
    let early = texts(&mut bob, 5).await;
    p.kill9();
    let p = ChatProcess::start_at(&data, &secret, dir.path(), "", &listen);
    let mut all = early;
    while all.len() < 40 {
        let t = until(&mut bob, text_of).await;
        *all.entry(t).or_default() += 1;
    }
    assert!(all.values().all(|n| *n == 1), "each once: {all:?}");
    // And every send ended as sent, once.
    let mut sent = 0;
    while sent < 40 {
        if let Event::SendState {
            state: SendState::Sent { .. },
            ..
        } = until(&mut alice, |e| Some(e.clone())).await
        {
            sent += 1;
        }
    }
    let conv = bob.conversations(0, 10).await.unwrap()[0].clone();
    assert_eq!(
        conv.last_seq, 41,
        "40 messages and the conversation's start, stored once"
    );
    p.kill9();
}

#[tokio::test]
async fn two_devices_of_one_user_stay_in_sync_and_typing_and_presence_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let addr = s.addr().to_string();
    let secret = dir.path().join("chat-secret");
    let mut phone = client(&addr, "alice", "phone", dir.path(), &secret);
    let mut laptop = client(&addr, "alice", "laptop", dir.path(), &secret);
    let mut bob = client(&addr, "bob", "phone", dir.path(), &secret);
    for c in [&mut phone, &mut laptop, &mut bob] {
        until(c, |e| (*e == Event::Connected).then_some(())).await;
    }
    let group = phone.create_group("team", &["bob"]).await.unwrap();
    phone
        .send_text(To::Conversation(group.clone()), "from the phone")
        .unwrap();
    bob.send_text(To::Conversation(group.clone()), "from bob")
        .unwrap();
    // The laptop sees both; the phone sees bob's (its own is not sent back).
    let l = texts(&mut laptop, 2).await;
    assert_eq!((l["from the phone"], l["from bob"]), (1, 1));
    assert_eq!(until(&mut phone, text_of).await, "from bob");
    // Typing and presence.
    let now = laptop.watch_presence(&["bob"]).await.unwrap();
    assert!(now[0].online);
    bob.typing(&group, true).unwrap();
    let t = until(&mut laptop, |e| match e {
        Event::Typing(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!((t.user.as_str(), t.typing), ("bob", true));
    bob.close().await;
    let p = until(&mut laptop, |e| match e {
        Event::Presence(p) if !p.online => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(p.user, "bob");
    // A refused send: failed, with the server's code, and can be retried.
    let id = phone
        .send_text(To::Conversation("g-nothing".into()), "to nowhere")
        .unwrap();
    let state = until(&mut phone, |e| match e {
        Event::SendState {
            client_msg_id,
            state,
        } if *client_msg_id == id => Some(state.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(state, SendState::Failed { ref code, .. } if code != "UNAVAILABLE"),
        "{state:?}"
    );
    assert!(phone.cancel(&id).unwrap());
    assert_eq!(phone.state(&id).unwrap(), None);
    phone.close().await;
    laptop.close().await;
    s.stop().await;
}

#[tokio::test]
async fn an_expiring_token_is_renewed_through_the_provider_without_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let addr = s.addr().to_string();
    let secret = dir.path().join("chat-secret");
    let calls = Arc::new(AtomicU64::new(0));
    // Valid 32 s: renewed 30 s before, so after about 2 s.
    let mut bob = client_with(
        &addr,
        "bob",
        "phone",
        dir.path(),
        &secret,
        32,
        calls.clone(),
    );
    let mut alice = client(&addr, "alice", "phone", dir.path(), &secret);
    until(&mut bob, |e| (*e == Event::Connected).then_some(())).await;
    until(&mut alice, |e| (*e == Event::Connected).then_some(())).await;
    alice.send_text(To::User("bob".into()), "before").unwrap();
    assert_eq!(until(&mut bob, text_of).await, "before");
    // The renewal: a reconnect with a fresh token.
    until(&mut bob, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    until(&mut bob, |e| (*e == Event::Connected).then_some(())).await;
    assert!(calls.load(Ordering::Relaxed) >= 2);
    alice.send_text(To::User("bob".into()), "after").unwrap();
    assert_eq!(until(&mut bob, text_of).await, "after");
    alice.close().await;
    bob.close().await;
    s.stop().await;
}

/// The child of the next test (does nothing unless the parent runs it):
/// queues messages and says so, then keeps running until killed.
#[tokio::test]
async fn sdk_child_process() {
    let Ok(addr) = std::env::var("COURIER_SDK_CHILD_ADDR") else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var("COURIER_SDK_CHILD_DIR").unwrap());
    let secret = std::path::PathBuf::from(std::env::var("COURIER_SDK_CHILD_SECRET").unwrap());
    let n: usize = std::env::var("COURIER_SDK_CHILD_SEND")
        .unwrap()
        .parse()
        .unwrap();
    let mut alice = client(&addr, "alice", "phone", &dir, &secret);
    for i in 0..n {
        alice
            .send_text(To::User("bob".into()), &format!("c{i}"))
            .unwrap();
    }
    println!("QUEUED");
    // Drain what the server acknowledges, until killed.
    while alice.next_event().await.is_some() {}
}

fn child(addr: &str, dir: &Path, secret: &Path, send: usize) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sdk_child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("COURIER_SDK_CHILD_ADDR", addr)
        .env("COURIER_SDK_CHILD_DIR", dir)
        .env("COURIER_SDK_CHILD_SECRET", secret)
        .env("COURIER_SDK_CHILD_SEND", send.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn an_app_killed_with_messages_in_its_outbox_sends_each_once_after_its_restart() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let addr = s.addr().to_string();
    let secret = dir.path().join("chat-secret");
    let mut bob = client(&addr, "bob", "phone", dir.path(), &secret);
    until(&mut bob, |e| (*e == Event::Connected).then_some(())).await;
    // The app queues 30 and is killed as soon as they are on its disk.
    let mut app = child(&addr, dir.path(), &secret, 30);
    let out = app.stdout.take().unwrap();
    let queued = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(out)
            .lines()
            .any(|l| l.is_ok_and(|l| l.contains("QUEUED")))
    });
    assert!(tokio::time::timeout(WAIT, queued).await.unwrap().unwrap());
    app.kill().unwrap();
    app.wait().unwrap();
    // Restarted, it sends nothing new of its own; the outbox drains.
    let mut app = child(&addr, dir.path(), &secret, 0);
    let got = texts(&mut bob, 30).await;
    assert!(got.values().all(|n| *n == 1), "each once: {got:?}");
    app.kill().unwrap();
    app.wait().unwrap();
    let conv = bob.conversations(0, 10).await.unwrap()[0].clone();
    assert_eq!(conv.last_seq, 31, "30 messages stored once, and the start");
    bob.close().await;
    s.stop().await;
}

#[tokio::test]
async fn a_call_signal_goes_through_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let addr = s.addr().to_string();
    let secret = dir.path().join("chat-secret");
    let alice = client(&addr, "alice", "phone", dir.path(), &secret);
    let mut bob = client(&addr, "bob", "phone", dir.path(), &secret);
    until(&mut bob, |e| (*e == Event::Connected).then_some(())).await;
    let id = alice.send_text(To::User("bob".into()), "call?").unwrap();
    until(&mut bob, text_of).await;
    let conv = alice.conversations(0, 1).await.unwrap()[0].id.clone();
    assert!(matches!(
        alice.state(&id).unwrap(),
        Some(SendState::Sent { .. } | SendState::Delivered { .. })
    ));
    alice
        .call_signal(proto::CallSignal {
            call_id: "k1".into(),
            conversation: conv,
            signal: Some(proto::call_signal::Signal::Ring(proto::Ring {
                video: false,
                ..Default::default()
            })),
            ..Default::default()
        })
        .unwrap();
    let call = until(&mut bob, |e| match e {
        Event::Call(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (call.call_id.as_str(), call.from_user.as_str()),
        ("k1", "alice")
    );
    alice.close().await;
    bob.close().await;
    s.stop().await;
}

#[tokio::test]
async fn the_sdk_connects_over_tls_and_refuses_a_server_it_cannot_verify() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (cert_path, key_path, ca_path) = (
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let (c2, k2) = (cert_path.clone(), key_path.clone());
    let s = ChatServer::with(dir.path(), move |c, _| {
        c.listeners.push(courier::config::ListenerConfig {
            kind: courier::config::ListenerKind::Tls,
            bind: "127.0.0.1:0".into(),
            cert: Some(c2.clone()),
            key: Some(k2.clone()),
        })
    })
    .await;
    let port = s
        .running
        .server
        .addr(courier::config::ListenerKind::Tls)
        .unwrap()
        .port();
    let url = format!("tls://localhost:{port}");
    let secret = dir.path().join("chat-secret");
    let tokens = Arc::new(tokens_at(&secret));
    let tls_client = |user: &str, ca: Option<std::path::PathBuf>| {
        let (t, u) = (tokens.clone(), user.to_owned());
        let mut config = ClientConfig::new(&url, user, "phone", dir.path().join(user), move || {
            let (t, u) = (t.clone(), u.clone());
            async move {
                let now = courier::message::unix_now();
                Ok(Token {
                    value: t.mint(&u, "phone", now, 3600).map_err(|e| e.to_string())?,
                    expires_at: None,
                })
            }
        });
        config.tls_ca = ca;
        config.backoff_min = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(200);
        Client::connect(config).unwrap()
    };
    // Without the CA: the server is not trusted.
    let mut stranger = tls_client("eve", None);
    let why = until(&mut stranger, |e| match e {
        Event::Disconnected { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(why.contains("TLS"), "{why}");
    stranger.close().await;
    let mut bob = tls_client("bob", Some(ca_path.clone()));
    until(&mut bob, |e| (*e == Event::Connected).then_some(())).await;
    let alice = tls_client("alice", Some(ca_path));
    alice.send_text(To::User("bob".into()), "over TLS").unwrap();
    assert_eq!(until(&mut bob, text_of).await, "over TLS");
    alice.close().await;
    bob.close().await;
    s.stop().await;
}
