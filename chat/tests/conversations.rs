//! Conversations over real sockets: 1:1 across devices with receipts,
//! groups with offline devices, idempotent resends across a restart,
//! history and the snapshot.

mod common;

use common::*;
use courier_chat::proto::{self, request::Op, response::Result as R};

#[tokio::test]
async fn alice_and_bob_chat_from_two_devices_each_with_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut a_phone = Phone::connect(&s, "alice", "phone").await;
    let mut a_laptop = Phone::connect(&s, "alice", "laptop").await;
    let mut b_phone = Phone::connect(&s, "bob", "phone").await;
    let mut b_tablet = Phone::connect(&s, "bob", "tablet").await;

    // The first message creates the direct conversation (entry 1).
    let (seq, conv) = a_phone
        .send_text(To::User("bob"), "1", "hi bob")
        .await
        .unwrap();
    let conv = conv.expect("a new conversation's id");
    assert_eq!(seq, 2);
    assert_eq!(
        a_phone
            .send_text(To::Conversation(&conv), "2", "how are you")
            .await
            .unwrap()
            .0,
        3
    );
    let (seq, _) = b_tablet
        .send_text(To::User("alice"), "1", "fine")
        .await
        .unwrap();
    assert_eq!(seq, 4, "the same conversation, whoever writes");

    for d in [&mut b_phone, &mut b_tablet, &mut a_laptop] {
        let created = d.entry().await;
        assert_eq!((created.seq, is_message(&created)), (1, false));
        let m = d.entries(2).await;
        assert_eq!(
            (m[0].seq, text(&m[0]).as_str(), m[0].sender.as_str()),
            (2, "hi bob", "alice")
        );
        assert_eq!(m[0].sender_device, "phone");
        assert_eq!((m[1].seq, text(&m[1]).as_str()), (3, "how are you"));
    }
    // bob's tablet wrote seq 4: its phone and alice's devices get it, the
    // tablet does not get its own message back.
    for d in [&mut b_phone, &mut a_phone, &mut a_laptop] {
        let e = d.entry().await;
        assert_eq!(
            (e.seq, text(&e).as_str(), e.sender.as_str()),
            (4, "fine", "bob")
        );
    }
    // The sender's own devices see its client message id; others do not.
    // (Checked on entries above: alice's laptop saw seq 2 from alice.)

    // Delivered: bob's devices acknowledged 2 and 3.
    let r = a_phone
        .receipt_until(&conv, "bob", |r| r.delivered >= 3)
        .await;
    assert!(r.read < 3);
    // Read: bob reads up to 4 on his phone.
    assert!(b_phone
        .ok(Op::MarkRead(proto::MarkRead {
            conversation: conv.clone(),
            seq: 4
        }))
        .await
        .is_none());
    a_phone.receipt_until(&conv, "bob", |r| r.read == 4).await;
    a_laptop.receipt_until(&conv, "bob", |r| r.read == 4).await;
    // bob's tablet clears its unread count.
    b_tablet.receipt_until(&conv, "bob", |r| r.read == 4).await;

    // Nobody got anything twice.
    for d in [&a_phone, &a_laptop, &b_phone, &b_tablet] {
        assert!(
            d.pending_entries().is_empty(),
            "{}:{} got more",
            d.user,
            d.device
        );
    }
    // The snapshot agrees.
    match a_laptop
        .ok(Op::ListConversations(proto::ListConversations {
            offset: 0,
            limit: 0,
        }))
        .await
    {
        Some(R::Conversations(cs)) => {
            assert_eq!(cs.conversations.len(), 1);
            let c = &cs.conversations[0];
            assert_eq!((c.id.as_str(), c.last_seq), (conv.as_str(), 4));
            assert_eq!(c.members, ["alice", "bob"]);
            assert_eq!(text(c.last.as_ref().unwrap()), "fine");
        }
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn a_resend_gets_the_same_sequence_number_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let _bob = Phone::connect(&s, "bob", "phone").await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let (seq, conv) = alice
        .send_text(To::User("bob"), "m-1", "once")
        .await
        .unwrap();
    let conv = conv.unwrap();
    assert_eq!(
        alice
            .send_text(To::User("bob"), "m-1", "once")
            .await
            .unwrap()
            .0,
        seq
    );
    // A reused id with another body still returns the original.
    assert_eq!(
        alice
            .send_text(To::Conversation(&conv), "m-1", "other")
            .await
            .unwrap()
            .0,
        seq
    );
    // Ids are per device: alice's laptop may use "m-1" too.
    let mut laptop = Phone::connect(&s, "alice", "laptop").await;
    let (seq2, _) = laptop
        .send_text(To::Conversation(&conv), "m-1", "laptop's")
        .await
        .unwrap();
    assert_eq!(seq2, seq + 1);
    assert_eq!(s.metric("send_repeats"), 2);
    drop((alice, laptop, _bob));
    s.stop().await;

    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    assert_eq!(
        alice
            .send_text(To::User("bob"), "m-1", "once")
            .await
            .unwrap()
            .0,
        seq
    );
    let (next, _) = alice
        .send_text(To::User("bob"), "m-2", "after")
        .await
        .unwrap();
    assert_eq!(next, seq2 + 1, "no sequence number reused or skipped");
    match alice
        .ok(Op::History(proto::History {
            conversation: conv.clone(),
            before: 0,
            after: 0,
            limit: 100,
        }))
        .await
    {
        Some(R::Entries(es)) => {
            let texts: Vec<String> = es
                .entries
                .iter()
                .filter(|e| is_message(e))
                .map(text)
                .collect();
            assert_eq!(texts, ["once", "laptop's", "after"]);
            let seqs: Vec<u64> = es.entries.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=next).collect::<Vec<_>>());
        }
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn a_group_of_50_with_30_devices_offline_gets_every_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let users: Vec<String> = (0..50).map(|i| format!("u{i:02}")).collect();
    // Every user has a phone and a laptop; the laptops of the first 30 are
    // offline (they connected once, so the server knows them).
    let mut online = Vec::new();
    for (i, u) in users.iter().enumerate() {
        online.push(Phone::connect(&s, u, "phone").await);
        let laptop = Phone::connect(&s, u, "laptop").await;
        if i < 30 {
            laptop.leave().await;
        } else {
            online.push(laptop);
        }
    }
    let members: Vec<&str> = users[1..].iter().map(|u| u.as_str()).collect();
    let group = online[0].create_group("fifty", &members).await;
    // Three senders interleave ten messages.
    let mut sent = Vec::new();
    for k in 0..10usize {
        let who = [0usize, 2, 4][k % 3];
        let (seq, _) = online[who]
            .send_text(
                To::Conversation(&group),
                &format!("k{k}"),
                &format!("msg {k}"),
            )
            .await
            .unwrap();
        sent.push((
            seq,
            format!("msg {k}"),
            online[who].user.clone(),
            online[who].device.clone(),
        ));
    }
    let check = |got: &[proto::Entry], me: (&str, &str)| {
        let msgs: Vec<(u64, String)> = got
            .iter()
            .filter(|e| is_message(e))
            .map(|e| (e.seq, text(e)))
            .collect();
        let want: Vec<(u64, String)> = sent
            .iter()
            .filter(|(_, _, u, d)| (u.as_str(), d.as_str()) != me)
            .map(|(s, t, _, _)| (*s, t.clone()))
            .collect();
        assert_eq!(msgs, want, "{me:?}");
    };
    for p in online.iter_mut() {
        let me = (p.user.clone(), p.device.clone());
        let own = sent
            .iter()
            .filter(|(_, _, u, d)| (u, d) == (&me.0, &me.1))
            .count();
        // The creating device does not get its own creation entry back.
        let created = usize::from(me != ("u00".to_string(), "phone".to_string()));
        let got = p.entries(created + 10 - own).await;
        check(&got, (&me.0, &me.1));
    }
    // The offline laptops come back and catch up, in the same order.
    for u in &users[..30] {
        let mut l = Phone::connect(&s, u, "laptop").await;
        let got = l.entries(11).await;
        assert_eq!(got[0].seq, 1);
        check(&got, (u, "laptop"));
    }
    // Receipts aggregate per member: all 50 have the last message.
    let last = sent.last().unwrap().0;
    let r = tokio::time::timeout(WAIT, async {
        loop {
            match online[0]
                .ok(Op::MessageReceipts(proto::MessageReceipts {
                    conversation: group.clone(),
                    seq: last,
                }))
                .await
            {
                Some(R::Receipts(r)) if r.delivered.len() == 50 => break r,
                Some(R::Receipts(_)) => {
                    // Watermarks move as acknowledgements are processed; ask again
                    // once something else has gone through the server.
                    let _ = online[0].ok(Op::ListDevices(proto::ListDevices {})).await;
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("every member's delivery is counted");
    assert_eq!(r.members, 50);
    s.stop().await;
}

#[tokio::test]
async fn membership_changes_are_in_the_log_and_a_removed_member_gets_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let g = alice.create_group("team", &["bob"]).await;
    assert_eq!(bob.entry().await.seq, 1);
    alice
        .send_text(To::Conversation(&g), "1", "before carol")
        .await
        .unwrap();
    // carol is added: she sees the log from her joining on.
    alice
        .ok(Op::AddMember(proto::AddMember {
            conversation: g.clone(),
            user: "carol".into(),
        }))
        .await;
    let joined = carol.entry().await;
    assert_eq!(joined.seq, 3);
    match &joined.kind {
        Some(proto::entry::Kind::Membership(m)) => {
            assert_eq!(m.action, proto::membership::Action::Added as i32);
            assert_eq!(m.users, ["carol"]);
        }
        other => panic!("{other:?}"),
    }
    match carol
        .ok(Op::History(proto::History {
            conversation: g.clone(),
            before: 100,
            after: 0,
            limit: 10,
        }))
        .await
    {
        Some(R::Entries(es)) => {
            assert_eq!(es.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [3])
        }
        other => panic!("{other:?}"),
    }
    // bob is removed; he hears of it, then nothing more of the group.
    alice
        .ok(Op::RemoveMember(proto::RemoveMember {
            conversation: g.clone(),
            user: "bob".into(),
        }))
        .await;
    let e = bob.entries(3).await;
    assert_eq!(e.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
    alice
        .send_text(To::Conversation(&g), "2", "after bob")
        .await
        .unwrap();
    assert_eq!(text(&carol.entries(2).await[1]), "after bob");
    // bob's next entry is from elsewhere: the group message never came
    // (his inbox is ordered, so it would have come first).
    carol.send_text(To::User("bob"), "1", "psst").await.unwrap();
    let next = bob.entries(2).await;
    assert_ne!(next[0].conversation, g);
    assert_eq!(text(&next[1]), "psst");
    let (_, r) = bob
        .request(Op::History(proto::History {
            conversation: g.clone(),
            before: 0,
            after: 0,
            limit: 10,
        }))
        .await;
    assert_eq!(r.error.unwrap().code, proto::ErrorCode::NotMember as i32);
    assert_eq!(
        bob.send_text(To::Conversation(&g), "2", "let me in")
            .await
            .unwrap_err()
            .error
            .as_deref(),
        Some("NOT_MEMBER")
    );
    // carol leaves.
    assert!(carol
        .ok(Op::Leave(proto::Leave {
            conversation: g.clone()
        }))
        .await
        .is_none());
    let left = alice.entry().await;
    assert_eq!((left.seq, left.sender.as_str()), (6, "carol"));
    s.stop().await;
}
