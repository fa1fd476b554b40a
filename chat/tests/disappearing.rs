//! Disappearing messages over real sockets: the setting is an entry of
//! the log; a message carries its expiry and is erased with its edits when
//! it is due (time handed in), also after a restart; the real timer fires
//! on its own; devices are told.

mod common;

use common::*;
use courier_chat::proto::{self, request::Op, send_message::Kind};
use prost::Message as _;

fn set_ttl(conv: &str, ttl_secs: u64) -> Op {
    Op::SetDisappearing(proto::SetDisappearing {
        conversation: conv.into(),
        ttl_secs,
    })
}

async fn expired(p: &mut Phone, conv: &str) -> Vec<u64> {
    p.next_matching(|d| match &d.kind {
        Some(proto::down::Kind::Expired(e)) if e.conversation == conv => Some(e.seqs.clone()),
        _ => None,
    })
    .await
}

fn seqs(h: &[proto::Entry]) -> Vec<u64> {
    h.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn a_disappearing_message_is_erased_when_due_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let (kept, conv) = alice
        .send_text(To::User("bob"), "1", "before")
        .await
        .unwrap();
    let conv = conv.unwrap();
    bob.entries(2).await;

    // bob turns it on: an entry every member gets.
    bob.ok(set_ttl(&conv, 60)).await;
    let e = alice.entry().await;
    assert_eq!(e.kind, Some(proto::entry::Kind::Disappearing(60)));
    assert_eq!(e.sender, "bob");
    let ttl_entry = e.seq;

    let (gone, _) = alice
        .send_text(To::Conversation(&conv), "2", "soon gone")
        .await
        .unwrap();
    let got = bob.entry().await;
    assert_eq!(text(&got), "soon gone");
    let due = got.expires_at_ms;
    // Stamped when the server accepted it, just before the entry's time.
    assert!(
        (got.time_ms + 59_000..=got.time_ms + 60_000).contains(&due),
        "{got:?}"
    );
    // An edit goes with it.
    let edit = proto::SendMessage {
        conversation: conv.clone(),
        client_msg_id: "3".into(),
        kind: Some(Kind::Edit(proto::Edit {
            seq: gone,
            content: Some(proto::Content {
                body: b"soon gone, edited".to_vec(),
                ..Default::default()
            }),
        })),
        ..Default::default()
    };
    let (edited, _) = alice.send_raw(edit.encode_to_vec()).await.unwrap();
    bob.entry().await;

    let chat = s.running.chat.clone();
    // Not yet due: nothing goes.
    assert_eq!(chat.expire(due - 1).await.unwrap(), 0);
    assert!(seqs(&bob.history(&conv).await).contains(&gone));
    // Due: the message and its edit are gone from every read path, and the
    // devices are told.
    assert_eq!(chat.expire(due).await.unwrap(), 1);
    assert_eq!(expired(&mut bob, &conv).await, [gone]);
    assert_eq!(expired(&mut alice, &conv).await, [gone]);
    for h in [alice.history(&conv).await, bob.history(&conv).await] {
        assert_eq!(seqs(&h), [1, kept, ttl_entry]);
        assert!(h.iter().all(|e| e.seq != edited));
    }
    let mut tablet = Phone::connect(&s, "bob", "tablet").await;
    let fed = tablet.entries(3).await;
    assert_eq!(seqs(&fed), [1, kept, ttl_entry]);

    // Across a restart: the pending expiry is read back, and fires.
    let (later, _) = alice
        .send_text(To::Conversation(&conv), "4", "after restart")
        .await
        .unwrap();
    let due2 = bob.entry().await.expires_at_ms;
    drop((alice, bob, tablet));
    s.stop().await;
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    assert!(seqs(&alice.history(&conv).await).contains(&later));
    assert_eq!(s.running.chat.expire(due2).await.unwrap(), 1);
    assert!(!seqs(&alice.history(&conv).await).contains(&later));
    // Turned off: messages stay, with no expiry.
    alice.ok(set_ttl(&conv, 0)).await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let (stays, _) = alice
        .send_text(To::Conversation(&conv), "5", "stays")
        .await
        .unwrap();
    let e = bob
        .next_matching(|d| match &d.kind {
            Some(proto::down::Kind::Entry(e)) if e.seq == stays => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(e.expires_at_ms, 0);
    assert_eq!(s.running.chat.expire(u64::MAX / 2).await.unwrap(), 0);
    s.stop().await;
}

#[tokio::test]
async fn the_timer_fires_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let g = alice.create_group("brief", &["bob"]).await;
    alice.ok(set_ttl(&g, 1)).await;
    let (seq, _) = alice
        .send_text(To::Conversation(&g), "1", "a second")
        .await
        .unwrap();
    // One second later the real timer erases it and tells bob (waiting on
    // that event, not on a clock).
    assert_eq!(expired(&mut bob, &g).await, [seq]);
    assert!(!seqs(&alice.history(&g).await).contains(&seq));
    s.stop().await;
}
