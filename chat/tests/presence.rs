//! Presence and typing over real sockets: online and last seen with a
//! grace period, hidden last seen, blocked users, coalescing; typing to the
//! other members, rate-limited, never stored.

mod common;

use common::*;
use courier_chat::proto::{self, request::Op, response::Result as R};
use prost::Message as _;
use rumqttc::v5::mqttbytes::v5::PubAckReason;

async fn watch(p: &mut Phone, users: &[&str]) -> Vec<proto::Presence> {
    match p
        .ok(Op::WatchPresence(proto::WatchPresence {
            users: users.iter().map(|u| u.to_string()).collect(),
        }))
        .await
    {
        Some(R::Presences(ps)) => ps.presences,
        other => panic!("{other:?}"),
    }
}

/// The next presence change `p` is told of.
async fn change(p: &mut Phone) -> Vec<proto::Presence> {
    p.next_matching(|d| match &d.kind {
        Some(proto::down::Kind::Presence(ps)) => Some(ps.presences.clone()),
        _ => None,
    })
    .await
}

async fn typing(p: &mut Phone) -> proto::Typing {
    p.next_matching(|d| match &d.kind {
        Some(proto::down::Kind::Typing(t)) => Some(t.clone()),
        _ => None,
    })
    .await
}

fn typing_msg(conv: &str, on: bool) -> Vec<u8> {
    proto::Typing {
        conversation: conv.into(),
        typing: on,
        user: "forged".into(),
    }
    .encode_to_vec()
}

async fn quick(dir: &std::path::Path) -> ChatServer {
    ChatServer::with(dir, |_, chat| {
        // Long enough for a test to reconnect within it on a slow machine.
        chat.presence_grace_ms = 1500;
        chat.presence_interval_ms = 100;
    })
    .await
}

#[tokio::test]
async fn presence_goes_offline_after_the_grace_period_and_last_seen_can_be_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let s = quick(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let bob = Phone::connect(&s, "bob", "phone").await;
    let _carol = Phone::connect(&s, "carol", "phone").await;
    alice.send_text(To::User("bob"), "1", "hi").await.unwrap();
    // carol shares no conversation with alice: not shown.
    let now = watch(&mut alice, &["bob", "carol"]).await;
    assert_eq!(now.len(), 1);
    assert_eq!((now[0].user.as_str(), now[0].online), ("bob", true));

    // A phone that flaps within the grace period costs alice nothing: the
    // next change she hears of is the drop that lasts.
    drop(bob);
    for _ in 0..3 {
        let b = Phone::connect(&s, "bob", "phone").await;
        drop(b);
    }
    let gone = change(&mut alice).await;
    assert_eq!(gone.len(), 1);
    assert!(!gone[0].online);
    assert!(gone[0].last_seen_ms > 0);
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    assert!(change(&mut alice).await[0].online);

    // bob hides his last seen: online still shows, last seen no longer.
    bob.ok(Op::HideLastSeen(proto::HideLastSeen { hidden: true }))
        .await;
    drop(bob);
    let gone = change(&mut alice).await;
    assert_eq!((gone[0].online, gone[0].last_seen_ms), (false, 0));
    s.stop().await;
}

#[tokio::test]
async fn last_seen_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = quick(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let bob = Phone::connect(&s, "bob", "phone").await;
    alice.send_text(To::User("bob"), "1", "hi").await.unwrap();
    watch(&mut alice, &["bob"]).await;
    bob.leave().await;
    let gone = change(&mut alice).await;
    let seen = gone[0].last_seen_ms;
    assert!(!gone[0].online && seen > 0, "{gone:?}");
    drop(alice);
    s.stop().await;

    let s = quick(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let now = watch(&mut alice, &["bob"]).await;
    assert_eq!(now.len(), 1);
    assert_eq!((now[0].online, now[0].last_seen_ms), (false, seen));
    s.stop().await;
}

#[tokio::test]
async fn a_blocked_user_sees_no_presence() {
    let dir = tempfile::tempdir().unwrap();
    let s = quick(dir.path()).await;
    let alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let carol = Phone::connect(&s, "carol", "phone").await;
    let mut alice = alice;
    alice.create_group("three", &["bob", "carol"]).await;
    alice
        .ok(Op::Block(proto::Block {
            user: "bob".into(),
            blocked: true,
        }))
        .await;
    let now = watch(&mut bob, &["alice", "carol"]).await;
    assert_eq!(
        now.iter().map(|p| p.user.as_str()).collect::<Vec<_>>(),
        ["carol"]
    );
    // Both leave: bob hears only of carol.
    drop(alice);
    drop(carol);
    let first = change(&mut bob).await;
    assert_eq!(
        first.iter().map(|p| p.user.as_str()).collect::<Vec<_>>(),
        ["carol"]
    );
    s.stop().await;
}

#[tokio::test]
async fn typing_reaches_the_other_members_rate_limited_and_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let mut dave = Phone::connect(&s, "dave", "phone").await;
    let g = alice.create_group("three", &["bob", "carol"]).await;

    alice
        .publish_qos0(courier_chat::topics::TYPING, typing_msg(&g, true))
        .await;
    for p in [&mut bob, &mut carol] {
        let t = typing(p).await;
        // The server stamps who types.
        assert_eq!(
            (t.conversation.as_str(), t.user.as_str(), t.typing),
            (g.as_str(), "alice", true)
        );
    }
    // A flood is cut to one per interval; a stop still goes through.
    for _ in 0..20 {
        alice
            .publish_qos0(courier_chat::topics::TYPING, typing_msg(&g, true))
            .await;
    }
    alice
        .publish_qos0(courier_chat::topics::TYPING, typing_msg(&g, false))
        .await;
    let t = typing(&mut bob).await;
    assert!(!t.typing, "the repeats were dropped: {t:?}");
    assert!(s.metric("typing_dropped") >= 20);
    // Not a member: refused (visible at QoS 1).
    let a = dave
        .publish(courier_chat::topics::TYPING, typing_msg(&g, true), None)
        .await;
    assert_eq!(a.reason, PubAckReason::NotAuthorized);
    // Never stored: a device that connects later gets no typing, and its
    // first Down is the next entry.
    let mut tablet = Phone::connect(&s, "bob", "tablet").await;
    alice
        .send_text(To::Conversation(&g), "1", "hello")
        .await
        .unwrap();
    let first = tablet.next_matching(|d| Some(d.clone())).await;
    assert!(
        matches!(first.kind, Some(proto::down::Kind::Entry(_))),
        "{first:?}"
    );
    s.stop().await;
}
