//! A group send cut short by kill -9, and by a power cut on forgetfs (a
//! file system that forgets what was not fsynced): after the restart every
//! acknowledged message is in the log under the sequence number its
//! PUBACK gave, the log has no holes, every entry reaches every member's
//! device (nothing half fanned out), and resending what was not
//! acknowledged stores nothing twice.
//!
//! Also deletes for everyone cut short the same ways: every acknowledged
//! delete stays done (its message and edits gone) after the restart.
//!
//! The power-cut tests need `/dev/fuse` and root; they fail (never skip)
//! without.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use common::*;
use courier_chat::proto;

const USERS: usize = 8;
const SENDS: usize = 400;
/// Sends in flight at once.
const WINDOW: usize = 16;
/// Acknowledgements before the crash.
const CRASH_AFTER: usize = 150;

fn send(i: usize, conv: &str) -> proto::SendMessage {
    proto::SendMessage {
        conversation: conv.into(),
        client_msg_id: format!("m{i}"),
        kind: Some(proto::send_message::Kind::Content(proto::Content {
            r#type: String::new(),
            body: format!("message {i}").into_bytes(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Builds the group, sends with a window in flight, calls `crash` after
/// `CRASH_AFTER` acknowledgements, then checks everything on `restart`.
async fn group_send_cut_short(data: &Path, dir: &Path, crash: impl FnOnce(ChatProcess)) {
    let secret = dir.join("chat-secret");
    let tokens = tokens_at(&secret);
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    let p = ChatProcess::start(data, &secret, dir);
    let mut phones = Vec::new();
    for u in &users {
        phones.push(Phone::connect_with(p.addr, u, "phone", &token(&tokens, u, "phone")).await);
    }
    let others: Vec<&str> = users[1..].iter().map(|u| u.as_str()).collect();
    let mut sender = phones.remove(0);
    let g = sender.create_group("g", &others).await;
    // Half the members are offline during the burst.
    for ph in phones.drain(USERS / 2..) {
        ph.leave().await;
    }

    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut inflight: HashMap<u16, usize> = HashMap::new();
    let mut next = 0;
    let mut crash = Some(crash);
    let mut process = Some(p);
    while next < SENDS || !inflight.is_empty() {
        while next < SENDS && inflight.len() < WINDOW {
            let pkid = sender.send_nowait(&send(next, &g)).await;
            inflight.insert(pkid, next);
            next += 1;
        }
        let Some(a) = sender.next_ack().await else {
            break;
        };
        let i = inflight
            .remove(&a.pkid)
            .expect("an ack for a send in flight");
        let seq = acked_seq(&a).expect("accepted");
        acked.insert(format!("m{i}"), seq);
        if acked.len() == CRASH_AFTER {
            if let (Some(c), Some(p)) = (crash.take(), process.take()) {
                c(p);
            }
        }
    }
    assert!(acked.len() >= CRASH_AFTER);
    assert!(
        acked.len() < SENDS,
        "the crash came while sends were in flight"
    );
    drop((sender, phones));

    let p = ChatProcess::start(data, &secret, dir);
    let mut sender =
        Phone::connect_with(p.addr, "u0", "phone", &token(&tokens, "u0", "phone")).await;
    let log = sender.history(&g).await;
    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no holes, no reuse"
    );
    let by_id: HashMap<&str, u64> = log
        .iter()
        .filter(|e| is_message(e))
        .map(|e| (e.client_msg_id.as_str(), e.seq))
        .collect();
    assert_eq!(
        by_id.len(),
        log.iter().filter(|e| is_message(e)).count(),
        "each id stored once"
    );
    for (id, seq) in &acked {
        assert_eq!(
            by_id.get(id.as_str()),
            Some(seq),
            "acknowledged {id} kept its seq"
        );
    }
    // What was not acknowledged is sent again: stored once, whether or not
    // it had made it.
    for i in 0..SENDS {
        let id = format!("m{i}");
        if !acked.contains_key(&id) {
            let (seq, _) = sender
                .send_text(To::Conversation(&g), &id, "again")
                .await
                .unwrap();
            if let Some(s) = by_id.get(id.as_str()) {
                assert_eq!(seq, *s, "{id} was stored before the crash");
            }
        }
    }
    let log = sender.history(&g).await;
    let messages = log.iter().filter(|e| is_message(e)).count();
    assert_eq!(messages, SENDS, "every send stored exactly once");
    let last = log.last().unwrap().seq;
    // Every member's device gets every entry (each once, by its key).
    for u in &users[1..] {
        let mut ph = Phone::connect_with(p.addr, u, "phone", &token(&tokens, u, "phone")).await;
        let mut seen = BTreeSet::new();
        // Entry 1 came before the crash to the members online then.
        if users.iter().position(|x| x == u).unwrap() < USERS / 2 {
            seen.insert(1);
        }
        while seen.len() < last as usize {
            let e = ph.entry().await;
            assert_eq!(e.conversation, g);
            seen.insert(e.seq);
        }
        assert_eq!(seen, (1..=last).collect::<BTreeSet<_>>(), "{u}");
    }
}

#[tokio::test]
async fn a_group_send_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    group_send_cut_short(&data, dir.path(), |p| p.kill9()).await;
}

#[tokio::test]
async fn a_group_send_survives_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mount = std::sync::Arc::new(std::sync::Mutex::new(
        forgetfs::Mount::new(mnt.path()).expect("mount forgetfs (needs /dev/fuse and root)"),
    ));
    let data = mount.lock().unwrap().path().join("data");
    let m = mount.clone();
    group_send_cut_short(&data, dir.path(), move |p| {
        p.kill9();
        m.lock().unwrap().power_cut().expect("power cut");
    })
    .await;
}

/// Deletes for everyone sent with a window in flight, cut short by `crash`:
/// after the restart every acknowledged delete's message is gone, and so
/// are its edits; resending the rest erases the rest.
async fn deletes_cut_short(data: &Path, dir: &Path, crash: impl FnOnce(ChatProcess)) {
    const MESSAGES: usize = 200;
    let secret = dir.join("chat-secret");
    let tokens = tokens_at(&secret);
    let p = ChatProcess::start(data, &secret, dir);
    let mut alice =
        Phone::connect_with(p.addr, "alice", "phone", &token(&tokens, "alice", "phone")).await;
    let _bob = Phone::connect_with(p.addr, "bob", "phone", &token(&tokens, "bob", "phone")).await;
    let (_, conv) = alice
        .send_text(To::User("bob"), "hello", "hi")
        .await
        .unwrap();
    let conv = conv.unwrap();
    let mut targets = Vec::new();
    for i in 0..MESSAGES {
        let (seq, _) = alice
            .send_text(
                To::Conversation(&conv),
                &format!("m{i}"),
                &format!("secret {i}"),
            )
            .await
            .unwrap();
        // Every other message has an edit, which must go with it.
        if i % 2 == 0 {
            let edit = proto::SendMessage {
                conversation: conv.clone(),
                client_msg_id: format!("e{i}"),
                kind: Some(proto::send_message::Kind::Edit(proto::Edit {
                    seq,
                    content: Some(proto::Content {
                        body: format!("edited secret {i}").into_bytes(),
                        ..Default::default()
                    }),
                })),
                ..Default::default()
            };
            alice
                .send_raw(prost::Message::encode_to_vec(&edit))
                .await
                .unwrap();
        }
        targets.push(seq);
    }
    let delete = |i: usize| proto::SendMessage {
        conversation: conv.clone(),
        client_msg_id: format!("d{i}"),
        kind: Some(proto::send_message::Kind::Delete(proto::Delete {
            seq: targets[i],
            for_everyone: true,
        })),
        ..Default::default()
    };
    let mut acked = Vec::new();
    let mut inflight: HashMap<u16, usize> = HashMap::new();
    let mut next = 0;
    let mut crash = Some(crash);
    let mut process = Some(p);
    while next < MESSAGES || !inflight.is_empty() {
        while next < MESSAGES && inflight.len() < WINDOW {
            inflight.insert(alice.send_nowait(&delete(next)).await, next);
            next += 1;
        }
        let Some(a) = alice.next_ack().await else {
            break;
        };
        let i = inflight
            .remove(&a.pkid)
            .expect("an ack for a delete in flight");
        acked_seq(&a).expect("accepted");
        acked.push(i);
        if acked.len() == MESSAGES / 2 {
            if let (Some(c), Some(p)) = (crash.take(), process.take()) {
                c(p);
            }
        }
    }
    assert!(
        acked.len() < MESSAGES,
        "the crash came while deletes were in flight"
    );
    drop(alice);

    let p = ChatProcess::start(data, &secret, dir);
    let mut alice =
        Phone::connect_with(p.addr, "alice", "phone", &token(&tokens, "alice", "phone")).await;
    let secret_left = |h: &[proto::Entry], i: usize| {
        h.iter().any(|e| match &e.kind {
            Some(proto::entry::Kind::Content(c)) => c.body == format!("secret {i}").as_bytes(),
            Some(proto::entry::Kind::Edit(x)) => x
                .content
                .as_ref()
                .is_some_and(|c| c.body == format!("edited secret {i}").as_bytes()),
            _ => false,
        })
    };
    let h = alice.history(&conv).await;
    for &i in &acked {
        assert!(
            !secret_left(&h, i),
            "acknowledged delete d{i}: its message or edit is back"
        );
    }
    // The rest, sent again: each erased (or already), none refused.
    for i in 0..MESSAGES {
        if !acked.contains(&i) {
            alice
                .send_raw(prost::Message::encode_to_vec(&delete(i)))
                .await
                .unwrap();
        }
    }
    let h = alice.history(&conv).await;
    assert!((0..MESSAGES).all(|i| !secret_left(&h, i)));
}

#[tokio::test]
async fn acknowledged_deletes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    deletes_cut_short(&data, dir.path(), |p| p.kill9()).await;
}

#[tokio::test]
async fn acknowledged_deletes_survive_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mount = std::sync::Arc::new(std::sync::Mutex::new(
        forgetfs::Mount::new(mnt.path()).expect("mount forgetfs (needs /dev/fuse and root)"),
    ));
    let data = mount.lock().unwrap().path().join("data");
    let m = mount.clone();
    deletes_cut_short(&data, dir.path(), move |p| {
        p.kill9();
        m.lock().unwrap().power_cut().expect("power cut");
    })
    .await;
}
