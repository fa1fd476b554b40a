//! Per-user controls over real sockets: mute, read receipts off, blocking.

mod common;

use common::*;
use courier_chat::proto::{self, request::Op, response::Result as R};

async fn receipts(p: &mut Phone, conv: &str, seq: u64) -> proto::MessageReceiptsResult {
    match p
        .ok(Op::MessageReceipts(proto::MessageReceipts {
            conversation: conv.into(),
            seq,
        }))
        .await
    {
        Some(R::Receipts(r)) => r,
        other => panic!("{other:?}"),
    }
}

fn mark_read(conv: &str, seq: u64) -> Op {
    Op::MarkRead(proto::MarkRead {
        conversation: conv.into(),
        seq,
    })
}

fn block(user: &str, blocked: bool) -> Op {
    Op::Block(proto::Block {
        user: user.into(),
        blocked,
    })
}

#[tokio::test]
async fn a_muted_conversation_still_syncs_and_is_flagged_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let (_, conv) = bob.send_text(To::User("alice"), "1", "hi").await.unwrap();
    let conv = conv.unwrap();
    alice.entries(2).await;
    alice
        .ok(Op::Mute(proto::Mute {
            conversation: conv.clone(),
            until: u64::MAX,
        }))
        .await;
    assert_eq!(alice.conversation(&conv).await.muted_until, u64::MAX);
    // Muted is not for bob, and it still syncs.
    assert_eq!(bob.conversation(&conv).await.muted_until, 0);
    bob.send_text(To::Conversation(&conv), "2", "still there?")
        .await
        .unwrap();
    assert_eq!(text(&alice.entry().await), "still there?");

    drop((alice, bob));
    s.stop().await;
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "laptop").await;
    assert_eq!(alice.conversation(&conv).await.muted_until, u64::MAX);
    alice
        .ok(Op::Mute(proto::Mute {
            conversation: conv.clone(),
            until: 0,
        }))
        .await;
    assert_eq!(alice.conversation(&conv).await.muted_until, 0);
    s.stop().await;
}

#[tokio::test]
async fn read_receipts_off_hides_them_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let g = alice.create_group("pair", &["bob"]).await;
    let (to_bob, _) = alice
        .send_text(To::Conversation(&g), "1", "read me")
        .await
        .unwrap();
    let (to_alice, _) = bob
        .send_text(To::Conversation(&g), "1", "and me")
        .await
        .unwrap();
    bob.ok(Op::SetReadReceipts(proto::SetReadReceipts {
        enabled: false,
    }))
    .await;
    bob.ok(mark_read(&g, to_alice)).await;
    alice.ok(mark_read(&g, to_alice)).await;

    // alice sees bob's delivery but not his read; bob sees no one's read.
    let r = receipts(&mut alice, &g, to_bob).await;
    assert!(!r.read.contains(&"bob".to_string()), "{r:?}");
    assert_eq!(r.read, ["alice"], "alice's own read is hers to see");
    let r = receipts(&mut bob, &g, to_alice).await;
    assert_eq!(r.read, ["bob"], "bob sees only his own: {r:?}");

    // On again: both ways.
    bob.ok(Op::SetReadReceipts(proto::SetReadReceipts {
        enabled: true,
    }))
    .await;
    let r = receipts(&mut alice, &g, to_bob).await;
    assert_eq!(r.read, ["alice", "bob"]);
    let r = receipts(&mut bob, &g, to_alice).await;
    assert_eq!(r.read, ["alice", "bob"]);
    s.stop().await;
}

#[tokio::test]
async fn blocking_refuses_direct_messages_both_ways_and_flags_group_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let (_, direct) = bob
        .send_text(To::User("alice"), "1", "hello")
        .await
        .unwrap();
    let direct = direct.unwrap();
    alice.entries(2).await;
    let g = carol.create_group("friends", &["alice", "bob"]).await;
    alice.entry().await;

    alice.ok(block("bob", true)).await;
    // Direct: refused both ways, in the conversation and to start one.
    let r = bob
        .send_text(To::Conversation(&direct), "2", "why?")
        .await
        .unwrap_err();
    assert_eq!(r.error.as_deref(), Some("BLOCKED"));
    let r = alice
        .send_text(To::User("bob"), "1", "bye")
        .await
        .unwrap_err();
    assert_eq!(r.error.as_deref(), Some("BLOCKED"));
    // Groups: stored for everyone; alice's devices are told to hide it.
    bob.send_text(To::Conversation(&g), "1", "hi all")
        .await
        .unwrap();
    let a = alice.entry().await;
    assert_eq!((text(&a).as_str(), a.sender_blocked), ("hi all", true));
    let c = carol.entry().await;
    assert_eq!((text(&c).as_str(), c.sender_blocked), ("hi all", false));
    // Read receipts are hidden both ways.
    let (seq, _) = alice
        .send_text(To::Conversation(&g), "1", "hi")
        .await
        .unwrap();
    bob.ok(mark_read(&g, seq)).await;
    carol.ok(mark_read(&g, seq)).await;
    assert_eq!(receipts(&mut alice, &g, seq).await.read, ["carol"]);
    match alice.ok(Op::ListBlocked(proto::ListBlocked {})).await {
        Some(R::Users(u)) => {
            assert_eq!(
                u.users.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
                ["bob"]
            )
        }
        other => panic!("{other:?}"),
    }

    // It survives a restart; unblocking lets them talk again.
    drop((alice, bob, carol));
    s.stop().await;
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let r = bob
        .send_text(To::Conversation(&direct), "3", "still?")
        .await
        .unwrap_err();
    assert_eq!(r.error.as_deref(), Some("BLOCKED"));
    alice.ok(block("bob", false)).await;
    bob.send_text(To::Conversation(&direct), "4", "friends again?")
        .await
        .unwrap();
    let e = alice.next_matching(|d| match &d.kind {
        Some(proto::down::Kind::Entry(e)) if e.conversation == direct && e.seq > 2 => {
            Some(e.clone())
        }
        _ => None,
    });
    let e = e.await;
    assert_eq!(
        (text(&e).as_str(), e.sender_blocked),
        ("friends again?", false)
    );
    s.stop().await;
}
