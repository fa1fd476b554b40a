//! Retention, with time as an input: a device offline past the inbox's
//! retention gets an explicit gap and the snapshot, never a silent hole;
//! history past its limit says where it starts.

mod common;

use common::*;
use courier_chat::proto::{self, request::Op, response::Result as R};

const DAY_MS: u64 = 24 * 3600 * 1000;

fn now_ms() -> u64 {
    courier::message::unix_now() * 1000
}

#[tokio::test]
async fn a_device_offline_past_retention_gets_a_gap_then_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let bob = Phone::connect(&s, "bob", "phone").await;
    bob.leave().await;
    let (_, conv) = alice
        .send_text(To::User("bob"), "1", "old news")
        .await
        .unwrap();
    let conv = conv.unwrap();
    alice
        .send_text(To::Conversation(&conv), "2", "more old news")
        .await
        .unwrap();
    // 31 days on, bob's inbox no longer holds those three entries.
    let t = s.running.chat.trim(now_ms() + 31 * DAY_MS).unwrap();
    assert_eq!(t.inboxes, 2);
    s.running.server.broker.durable().await.unwrap();
    alice
        .send_text(To::Conversation(&conv), "3", "today")
        .await
        .unwrap();

    let mut bob = Phone::connect(&s, "bob", "phone").await;
    assert_eq!(bob.gap().await, 3);
    let e = bob.entry().await;
    assert_eq!((e.seq, text(&e).as_str()), (4, "today"));
    // The snapshot, then the history fill the gap (the conversation keeps
    // its history: no history retention is configured).
    match bob
        .ok(Op::ListConversations(proto::ListConversations {
            offset: 0,
            limit: 20,
        }))
        .await
    {
        Some(R::Conversations(cs)) => {
            assert_eq!(cs.conversations.len(), 1);
            assert_eq!(
                (cs.conversations[0].last_seq, cs.conversations[0].unread),
                (4, 4)
            );
        }
        other => panic!("{other:?}"),
    }
    let h = bob.history(&conv).await;
    assert_eq!(h.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    s.stop().await;
}

#[tokio::test]
async fn a_device_whose_whole_backlog_expired_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    Phone::connect(&s, "bob", "phone").await.leave().await;
    alice.send_text(To::User("bob"), "1", "gone").await.unwrap();
    s.running.chat.trim(now_ms() + 31 * DAY_MS).unwrap();
    // Retention takes effect with the next commit.
    s.running.server.broker.durable().await.unwrap();
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    assert_eq!(bob.gap().await, 2);
    s.stop().await;
}

#[tokio::test]
async fn history_past_its_limit_says_where_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::with(dir.path(), |_, chat| chat.history_max_entries = 3).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let _bob = Phone::connect(&s, "bob", "phone").await;
    let (_, conv) = alice.send_text(To::User("bob"), "1", "a").await.unwrap();
    let conv = conv.unwrap();
    for (i, t) in ["b", "c", "d", "e"].iter().enumerate() {
        alice
            .send_text(To::Conversation(&conv), &format!("{}", i + 2), t)
            .await
            .unwrap();
    }
    // Entries 1-6; the limit keeps 4-6, then 5-7 once "f" is in.
    assert_eq!(s.running.chat.trim(now_ms()).unwrap().conversations, 1);
    alice
        .send_text(To::Conversation(&conv), "9", "f")
        .await
        .unwrap();
    s.running.chat.trim(now_ms()).unwrap();
    alice
        .send_text(To::Conversation(&conv), "10", "g")
        .await
        .unwrap();
    match alice
        .ok(Op::History(proto::History {
            conversation: conv.clone(),
            before: 0,
            after: 0,
            limit: 50,
        }))
        .await
    {
        Some(R::Entries(es)) => {
            assert_eq!(
                es.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
                [5, 6, 7, 8]
            );
            assert_eq!(es.first_kept, 5);
        }
        other => panic!("{other:?}"),
    }
    s.stop().await;
}
