//! The push bridge end to end: real chat devices over MQTT, the broker
//! with its bridge, and the local APNs and FCM fakes over TLS (which
//! check what Apple and Google require). Where a test shows that a push
//! did NOT go, it waits for a later push that must come after it (a
//! sentinel), never for a fixed time.

mod common;

use std::time::Duration;

use common::*;
use courier_chat::proto::{self, call_signal::Signal, register_push::Platform, request::Op};
use prost::Message as _;
use push_bridge::fakes::apns::FakeApns;
use push_bridge::fakes::fcm::FakeFcm;
use push_bridge::fakes::{Received, Script};
use push_bridge::PushConfig;

const APP: &str = "com.example.chat";
const BOB: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const CAROL: &str = "ca701ca701ca701ca701ca701ca701ca701ca701ca701ca701ca701ca701ca70";
const PUSH_WAIT: Duration = Duration::from_secs(10);

fn push_config(
    apns: Option<&FakeApns>,
    fcm: Option<&FakeFcm>,
    due_ms: u64,
    window_ms: u64,
) -> PushConfig {
    PushConfig {
        due_ms,
        window_ms,
        retry_base_ms: 200,
        apns: apns.map(|f| vec![f.app.clone()]).unwrap_or_default(),
        fcm: fcm.map(|f| vec![f.app.clone()]).unwrap_or_default(),
        ..PushConfig::default()
    }
}

async fn server(dir: &std::path::Path, push: PushConfig) -> ChatServer {
    ChatServer::with(dir, move |_, chat| chat.push = push.clone()).await
}

async fn register(p: &mut Phone, platform: Platform, app: &str, token: &str) {
    let (code, resp) = p
        .request(Op::RegisterPush(proto::RegisterPush {
            platform: platform as i32,
            token: token.into(),
            app: app.into(),
            sandbox: true,
        }))
        .await;
    assert_eq!(
        code,
        rumqttc::v5::mqttbytes::v5::PubAckReason::Success,
        "{resp:?}"
    );
}

/// The pushes to `token` so far (accepted ones), oldest first.
fn to(got: &[Received], token: &str) -> Vec<Received> {
    got.iter()
        .filter(|r| r.token == token && r.status == 200)
        .cloned()
        .collect()
}

/// Waits for the `n`th accepted push to `token`.
async fn nth_push(fake: &FakeApns, token: &str, n: usize) -> Vec<Received> {
    fake.wait_for(PUSH_WAIT, |got| {
        let mine = to(got, token);
        (mine.len() >= n).then_some(mine)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{n} pushes to {token} within {PUSH_WAIT:?}: {:#?}",
            fake.received()
        )
    })
}

/// Nothing readable: no text and no sender name anywhere in a push.
fn assert_opaque(r: &Received, secrets: &[&str]) {
    let all = format!("{:?} {}", r.headers, r.body);
    for s in secrets {
        assert!(!all.contains(s), "{s:?} in a push: {all}");
    }
}

fn mention(conv: &str, id: &str, text: &str, who: &str) -> Vec<u8> {
    proto::SendMessage {
        conversation: conv.into(),
        client_msg_id: id.into(),
        kind: Some(proto::send_message::Kind::Content(proto::Content {
            r#type: "text".into(),
            body: text.as_bytes().to_vec(),
            mentions: vec![who.into()],
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_sleeping_phone_gets_one_notification_per_conversation_with_nothing_readable_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let apns = FakeApns::start(fdir.path(), APP, 0).await.unwrap();
    let s = server(dir.path(), push_config(Some(&apns), None, 200, 1500)).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    register(&mut bob, Platform::Apns, APP, BOB).await;
    // bob's phone goes to sleep: the connection drops, no DISCONNECT.
    drop(bob);

    let (_, direct) = alice
        .send_text(To::User("bob"), "1", "the first secret")
        .await
        .unwrap();
    let direct = direct.unwrap();
    let first = nth_push(&apns, BOB, 1).await;
    assert_eq!(first[0].headers["apns-collapse-id"], direct);
    assert_eq!(first[0].headers["apns-push-type"], "alert");
    assert_eq!(first[0].headers["apns-priority"], "10");
    assert_eq!(first[0].body["aps"]["mutable-content"], 1);
    assert_eq!(first[0].body["c"], direct.as_str());
    // Two more in the window: one update, the same collapse id.
    alice
        .send_text(To::Conversation(&direct), "2", "the second secret")
        .await
        .unwrap();
    alice
        .send_text(To::Conversation(&direct), "3", "the third secret")
        .await
        .unwrap();
    let group = alice.create_group("plans", &["bob"]).await;
    alice
        .send_text(To::Conversation(&group), "4", "the group secret")
        .await
        .unwrap();
    let all = nth_push(&apns, BOB, 3).await;
    let for_direct: Vec<&Received> = all
        .iter()
        .filter(|r| r.headers["apns-collapse-id"] == direct)
        .collect();
    let for_group: Vec<&Received> = all
        .iter()
        .filter(|r| r.headers["apns-collapse-id"] == group)
        .collect();
    assert_eq!((for_direct.len(), for_group.len()), (2, 1), "{all:#?}");
    assert!(
        for_direct[1].at_ms >= for_direct[0].at_ms + 1000,
        "the update waits for the window's end"
    );
    // The update counts what bob has not read: three in the direct
    // conversation (and the badge counts the group's too).
    assert!(for_direct[1].body["aps"]["badge"].as_u64().unwrap() >= 3);
    for r in &all {
        assert_opaque(r, &["secret", "alice", "plans"]);
    }

    // bob wakes up and gets the four messages over MQTT.
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut texts = Vec::new();
    while texts.len() < 4 {
        let e = bob.entry().await;
        if is_message(&e) {
            texts.push(text(&e));
        }
    }
    assert_eq!(
        texts,
        [
            "the first secret",
            "the second secret",
            "the third secret",
            "the group secret"
        ]
    );
    assert_eq!(to(&apns.received(), BOB).len(), 3, "nothing more once read");
    s.stop().await;
}

#[tokio::test]
async fn a_device_that_acknowledges_in_time_gets_no_push_and_the_sender_none() {
    let dir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let apns = FakeApns::start(fdir.path(), APP, 0).await.unwrap();
    let s = server(dir.path(), push_config(Some(&apns), None, 500, 1000)).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    register(&mut bob, Platform::Apns, APP, BOB).await;
    register(&mut carol, Platform::Apns, APP, CAROL).await;
    let mut tablet = Phone::connect(&s, "alice", "tablet").await;
    register(&mut tablet, Platform::Apns, APP, &"a1".repeat(32)).await;
    drop((carol, tablet));
    // bob is awake: he gets the message and acknowledges it at once.
    alice
        .send_text(To::User("bob"), "1", "hi bob")
        .await
        .unwrap();
    bob.next_matching(|d| match &d.kind {
        Some(proto::down::Kind::Entry(e)) if is_message(e) => Some(()),
        _ => None,
    })
    .await;
    // Then a message to sleeping carol: its push is the sentinel.
    alice
        .send_text(To::User("carol"), "2", "hi carol")
        .await
        .unwrap();
    nth_push(&apns, CAROL, 1).await;
    let got = apns.received();
    assert!(
        to(&got, BOB).is_empty(),
        "bob acknowledged in time: {got:#?}"
    );
    assert!(
        to(&got, &"a1".repeat(32)).is_empty(),
        "the sender's own device gets none"
    );
    drop(bob);
    s.stop().await;
}

#[tokio::test]
async fn a_muted_conversation_pushes_only_for_a_mention_and_reading_elsewhere_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let apns = FakeApns::start(fdir.path(), APP, 0).await.unwrap();
    let s = server(dir.path(), push_config(Some(&apns), None, 700, 500)).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut laptop = Phone::connect(&s, "bob", "laptop").await;
    register(&mut bob, Platform::Apns, APP, BOB).await;
    let group = alice.create_group("g", &["bob", "carol"]).await;
    let now = courier::message::unix_now();
    bob.ok(Op::Mute(proto::Mute {
        conversation: group.clone(),
        until: now + 3600,
    }))
    .await;
    drop(bob);

    // Muted: a plain message does not push; the sentinel (carol to bob,
    // not muted) does.
    alice
        .send_text(To::Conversation(&group), "1", "lunch?")
        .await
        .unwrap();
    let (_, direct) = carol
        .send_text(To::User("bob"), "1", "sentinel")
        .await
        .unwrap();
    let direct = direct.unwrap();
    let got = nth_push(&apns, BOB, 1).await;
    assert_eq!(got[0].headers["apns-collapse-id"], direct, "{got:#?}");
    // A mention pushes even so, flagged as one.
    let (_, _) = alice
        .send_raw(mention(&group, "2", "bob, you too", "bob"))
        .await
        .unwrap();
    let got = nth_push(&apns, BOB, 2).await;
    assert_eq!(got[1].headers["apns-collapse-id"], group);
    assert_eq!(got[1].body["aps"]["alert"]["loc-key"], "COURIER_MENTION");

    // Read on the laptop before the phone's push falls due: no push. The
    // sentinel after it is another conversation's.
    let (seq, other) = alice
        .send_text(To::User("bob"), "3", "read me on the laptop")
        .await
        .unwrap();
    let other = other.unwrap();
    laptop
        .ok(Op::MarkRead(proto::MarkRead {
            conversation: other.clone(),
            seq,
        }))
        .await;
    carol
        .send_text(To::Conversation(&direct), "2", "second sentinel")
        .await
        .unwrap();
    let got = nth_push(&apns, BOB, 3).await;
    assert!(
        got.iter().all(|r| r.headers["apns-collapse-id"] != other),
        "read elsewhere, not pushed: {got:#?}"
    );
    // A partial read: what was not read still pushes.
    let (p1, _) = alice
        .send_text(To::Conversation(&other), "4", "p1")
        .await
        .unwrap();
    let (p2, _) = alice
        .send_text(To::Conversation(&other), "5", "p2")
        .await
        .unwrap();
    laptop
        .ok(Op::MarkRead(proto::MarkRead {
            conversation: other.clone(),
            seq: p1,
        }))
        .await;
    let got = nth_push(&apns, BOB, 4).await;
    assert_eq!(got[3].headers["apns-collapse-id"], other);
    assert_eq!(got[3].body["s"], p2, "for the unread one: {got:#?}");
    s.stop().await;
}

#[tokio::test]
async fn an_invalidated_token_is_dropped_and_the_device_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let apns = FakeApns::start(fdir.path(), APP, 0).await.unwrap();
    let s = server(dir.path(), push_config(Some(&apns), None, 200, 500)).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    register(&mut bob, Platform::Apns, APP, BOB).await;
    register(&mut carol, Platform::Apns, APP, CAROL).await;
    // bob uninstalled the app (Apple knows since after he registered);
    // carol's 410 is older than her registration: hers stays.
    let later = courier::message::unix_now_ms() + 60_000;
    apns.script(BOB, Script::error(410, "Unregistered").timestamp(later));
    apns.script(
        CAROL,
        Script::error(410, "Unregistered").timestamp(1).times(1),
    );
    drop((bob, carol));
    alice.send_text(To::User("bob"), "1", "x").await.unwrap();
    alice.send_text(To::User("carol"), "1", "y").await.unwrap();
    apns.wait_for(PUSH_WAIT, |got| {
        (got.iter().any(|r| r.token == BOB) && got.iter().any(|r| r.token == CAROL)).then_some(())
    })
    .await
    .expect("both tried");
    // Once the bridge has the answer, the token goes.
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    while s.metric("push_tokens_removed") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's token not dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // bob hears of it when he connects again.
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let why = bob
        .next_matching(|d| match &d.kind {
            Some(proto::down::Kind::PushTokenDropped(p)) => Some(p.reason.clone()),
            _ => None,
        })
        .await;
    assert_eq!(why, "Unregistered");
    drop(bob);
    // And he is pushed no more; carol still is (the sentinel).
    alice.send_text(To::User("bob"), "2", "x2").await.unwrap();
    alice.send_text(To::User("carol"), "2", "y2").await.unwrap();
    nth_push(&apns, CAROL, 1).await;
    assert_eq!(
        apns.received().iter().filter(|r| r.token == BOB).count(),
        1,
        "bob's token is gone"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_call_rings_a_sleeping_phone_at_once_and_its_end_is_no_voip_push() {
    let dir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let apns = FakeApns::start(fdir.path(), APP, 0).await.unwrap();
    // A message push would wait a minute: the call's must not.
    let s = server(dir.path(), push_config(Some(&apns), None, 60_000, 1000)).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    register(&mut bob, Platform::Apns, APP, BOB).await;
    let (_, conv) = alice
        .send_text(To::User("bob"), "1", "call?")
        .await
        .unwrap();
    let conv = conv.unwrap();
    bob.entry().await;
    drop(bob);
    let call = |id: &str, s: Signal| {
        proto::CallSignal {
            call_id: id.into(),
            conversation: conv.clone(),
            signal: Some(s),
            ..Default::default()
        }
        .encode_to_vec()
    };
    alice
        .publish(
            courier_chat::topics::CALL,
            call(
                "k1",
                Signal::Ring(proto::Ring {
                    video: true,
                    ..Default::default()
                }),
            ),
            None,
        )
        .await;
    let got = nth_push(&apns, BOB, 1).await;
    assert_eq!(got[0].headers["apns-push-type"], "voip");
    assert_eq!(got[0].headers["apns-topic"], format!("{APP}.voip"));
    assert_eq!(got[0].body["call"], "k1");
    assert_eq!(got[0].body["video"], true);
    alice
        .publish(
            courier_chat::topics::CALL,
            call("k1", Signal::Hangup(proto::Hangup {})),
            None,
        )
        .await;
    // iOS must report every VoIP push as a call: the end is not pushed.
    // The sentinel: the next call's ring is the next push.
    alice
        .publish(
            courier_chat::topics::CALL,
            call(
                "k2",
                Signal::Ring(proto::Ring {
                    video: false,
                    ..Default::default()
                }),
            ),
            None,
        )
        .await;
    let got = nth_push(&apns, BOB, 2).await;
    assert_eq!(got[1].body["call"], "k2", "{got:#?}");
    s.stop().await;
}

#[tokio::test]
async fn fcm_gets_a_data_message_and_a_retry_honours_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let fcm = FakeFcm::start(fdir.path(), "courier-test", 0)
        .await
        .unwrap();
    let push = push_config(None, Some(&fcm), 200, 500);
    let s = ChatServer::with(dir.path(), move |c, chat| {
        c.admin.bind = Some("127.0.0.1:0".into());
        chat.push = push.clone();
    })
    .await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    register(&mut bob, Platform::Fcm, "courier-test", "fcm-bob").await;
    // Another project's token is refused at registration.
    let (code, _) = bob
        .request(Op::RegisterPush(proto::RegisterPush {
            platform: Platform::Fcm as i32,
            token: "x".into(),
            app: "not-configured".into(),
            sandbox: false,
        }))
        .await;
    assert_ne!(code, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
    fcm.script(
        "fcm-bob",
        Script::error(429, "QUOTA_EXCEEDED").retry_after(1).times(1),
    );
    drop(bob);
    let (_, conv) = alice
        .send_text(To::User("bob"), "1", "fcm secret")
        .await
        .unwrap();
    let got = fcm
        .wait_for(PUSH_WAIT, |got| {
            (got.iter().filter(|r| r.token == "fcm-bob").count() >= 2).then(|| got.to_vec())
        })
        .await
        .expect("a refused push and its retry");
    let (first, retry) = (&got[0], &got[1]);
    assert_eq!((first.status, retry.status), (429, 200));
    assert!(
        retry.at_ms >= first.at_ms + 1000,
        "Retry-After: 1 honoured ({} ms)",
        retry.at_ms - first.at_ms
    );
    let m = &retry.body["message"];
    assert!(m.get("notification").is_none(), "data only: {m}");
    assert_eq!(m["android"]["priority"], "HIGH");
    assert_eq!(m["android"]["collapse_key"], conv.unwrap().as_str());
    assert_opaque(retry, &["secret", "alice"]);

    // The bridge's metrics on the admin listener's /metrics.
    let admin = s.running.server.admin_addr.expect("admin listener");
    let key = std::fs::read_to_string(dir.path().join("data/admin.key")).unwrap();
    // Counted once the provider's answer is in (a moment after the fake
    // recorded the request).
    let scrape = || async {
        reqwest::Client::new()
            .get(format!("http://{admin}/metrics"))
            .bearer_auth(key.trim())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    let mut text = scrape().await;
    while !(text.contains("courier_push_sent_total 1") && text.contains("courier_push_pending 0")) {
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape().await;
    }
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(value("courier_push_queued_total"), 1.0);
    assert_eq!(value("courier_push_sent_total"), 1.0);
    assert_eq!(value("courier_push_failed_rate_limited_total"), 1.0);
    assert_eq!(value("courier_push_pending"), 0.0);
    assert!(value("courier_push_send_seconds_count") >= 2.0);
    s.stop().await;
}

#[tokio::test]
async fn pushes_pending_at_a_kill_9_are_sent_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let apns = FakeApns::start(fdir.path(), APP, 0).await.unwrap();
    let data = dir.path().join("data");
    let secret = dir.path().join("secret");
    let conf = |due_ms: u64| {
        let a = &apns.app;
        format!(
            "[chat.push]\ndue_ms = {due_ms}\nwindow_ms = 500\n[[chat.push.apns]]\ntopic = {:?}\nteam_id = {:?}\nkey_id = {:?}\nkey_file = {:?}\nproduction_url = {:?}\nsandbox_url = {:?}\nca_file = {:?}\n",
            a.topic,
            a.team_id,
            a.key_id,
            a.key_file.display().to_string(),
            a.production_url,
            a.sandbox_url,
            a.ca_file.as_ref().unwrap().display().to_string()
        )
    };
    // A push would be due only in a minute when the broker dies.
    let p = ChatProcess::start_with(&data, &secret, dir.path(), &conf(60_000));
    let tokens = tokens_at(&secret);
    let mut alice =
        Phone::connect_with(p.addr, "alice", "phone", &token(&tokens, "alice", "phone")).await;
    let mut bob =
        Phone::connect_with(p.addr, "bob", "phone", &token(&tokens, "bob", "phone")).await;
    register(&mut bob, Platform::Apns, APP, BOB).await;
    drop(bob);
    let (_, conv) = alice
        .send_text(To::User("bob"), "1", "before the crash")
        .await
        .unwrap();
    p.kill9();
    assert!(apns.received().is_empty());

    let p = ChatProcess::start_with(&data, &secret, dir.path(), &conf(200));
    let got = nth_push(&apns, BOB, 1).await;
    assert_eq!(got[0].headers["apns-collapse-id"], conv.unwrap());
    p.kill9();
}

#[tokio::test]
async fn reactions_edits_deletes_and_membership_changes_never_push() {
    let dir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let apns = FakeApns::start(fdir.path(), APP, 0).await.unwrap();
    let s = server(dir.path(), push_config(Some(&apns), None, 200, 500)).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    register(&mut bob, Platform::Apns, APP, BOB).await;
    let (m1, direct) = alice
        .send_text(To::User("bob"), "1", "hello")
        .await
        .unwrap();
    let direct = direct.unwrap();
    bob.next_matching(|d| match &d.kind {
        Some(proto::down::Kind::Entry(e)) if is_message(e) => Some(()),
        _ => None,
    })
    .await;
    drop(bob);
    let kind = |k: proto::send_message::Kind, id: &str| {
        proto::SendMessage {
            conversation: direct.clone(),
            client_msg_id: id.into(),
            kind: Some(k),
            ..Default::default()
        }
        .encode_to_vec()
    };
    use proto::send_message::Kind as K;
    alice
        .send_raw(kind(
            K::Reaction(proto::Reaction {
                seq: m1,
                emoji: "👍".into(),
                remove: false,
            }),
            "2",
        ))
        .await
        .unwrap();
    alice
        .send_raw(kind(
            K::Edit(proto::Edit {
                seq: m1,
                content: Some(proto::Content {
                    r#type: "text".into(),
                    body: b"hello!".to_vec(),
                    ..Default::default()
                }),
            }),
            "3",
        ))
        .await
        .unwrap();
    alice
        .send_raw(kind(
            K::Delete(proto::Delete {
                seq: m1,
                for_everyone: true,
            }),
            "4",
        ))
        .await
        .unwrap();
    alice.create_group("g", &["bob"]).await;
    // The sentinel: a message, which does push.
    let (_, other) = carol
        .send_text(To::User("bob"), "1", "sentinel")
        .await
        .unwrap();
    let got = nth_push(&apns, BOB, 1).await;
    assert!(
        got.iter()
            .all(|r| r.headers["apns-collapse-id"] == other.clone().unwrap()),
        "only the message pushed: {got:#?}"
    );
    s.stop().await;
}
