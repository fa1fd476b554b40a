//! Message kinds over real sockets: replies, mentions and attachments
//! checked; reactions and edits reaching every device in order; deletes
//! for everyone erasing the message from every read path at once, and
//! deletes for me staying private.

mod common;

use common::*;
use courier_chat::proto::{self, send_message::Kind};
use prost::Message as _;

fn send(conv: &str, id: &str, kind: Kind) -> Vec<u8> {
    proto::SendMessage {
        conversation: conv.into(),
        client_msg_id: id.into(),
        kind: Some(kind),
        ..Default::default()
    }
    .encode_to_vec()
}

fn content(text: &str) -> proto::Content {
    proto::Content {
        r#type: "text".into(),
        body: text.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn react(seq: u64, emoji: &str, remove: bool) -> Kind {
    Kind::Reaction(proto::Reaction {
        seq,
        emoji: emoji.into(),
        remove,
    })
}

fn delete(seq: u64, for_everyone: bool) -> Kind {
    Kind::Delete(proto::Delete { seq, for_everyone })
}

fn attachment() -> proto::Attachment {
    proto::Attachment {
        id: "files/cat.jpg".into(),
        mime_type: "image/jpeg".into(),
        size: 123_456,
        sha256: vec![7; 32],
        thumbnail_id: "files/cat.thumb.jpg".into(),
    }
}

fn body(e: &proto::Entry) -> Option<&proto::Content> {
    match &e.kind {
        Some(proto::entry::Kind::Content(c)) => Some(c),
        Some(proto::entry::Kind::Edit(e)) => e.content.as_ref(),
        _ => None,
    }
}

fn refused_with(r: Result<(u64, Option<String>), Refused>) -> String {
    r.expect_err("refused").error.unwrap_or_default()
}

#[tokio::test]
async fn replies_mentions_and_attachments_are_checked_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let _carol = Phone::connect(&s, "carol", "phone").await;
    let g = alice.create_group("team", &["bob"]).await;
    bob.entry().await;
    let (first, _) = alice
        .send_raw(send(&g, "1", Kind::Content(content("lunch?"))))
        .await
        .unwrap();

    // A reply that mentions alice, with a picture.
    let mut reply = content("yes!");
    reply.reply_to = first;
    reply.mentions = vec!["alice".into()];
    reply.attachment = Some(attachment());
    bob.send_raw(send(&g, "1", Kind::Content(reply)))
        .await
        .unwrap();
    let e = alice.entry().await;
    let c = body(&e).unwrap();
    assert_eq!(
        (c.reply_to, c.mentions.as_slice()),
        (first, &["alice".to_string()][..])
    );
    assert!(e.mentions_me);
    assert_eq!(c.attachment, Some(attachment()));
    assert_eq!(e.sender, "bob");

    // The parent must be a message of this conversation the sender sees.
    for (id, parent) in [("2", 999), ("3", 1)] {
        let mut bad = content("?");
        bad.reply_to = parent;
        let r = bob.send_raw(send(&g, id, Kind::Content(bad))).await;
        assert_eq!(refused_with(r), "UNKNOWN_MESSAGE");
    }
    // Mentions name members only.
    let mut bad = content("hey carol");
    bad.mentions = vec!["carol".into()];
    let r = bob.send_raw(send(&g, "4", Kind::Content(bad))).await;
    assert_eq!(refused_with(r), "BAD_REQUEST");
    // Attachments are checked: hash length, size limit, mime type.
    let broken = [
        proto::Attachment {
            sha256: vec![7; 31],
            ..attachment()
        },
        proto::Attachment {
            size: 200 << 20,
            ..attachment()
        },
        proto::Attachment {
            mime_type: "jpeg".into(),
            ..attachment()
        },
        proto::Attachment {
            id: String::new(),
            ..attachment()
        },
    ];
    for (i, a) in broken.into_iter().enumerate() {
        let mut bad = content("");
        bad.attachment = Some(a);
        let r = bob
            .send_raw(send(&g, &format!("a{i}"), Kind::Content(bad)))
            .await;
        assert_eq!(refused_with(r), "BAD_REQUEST", "attachment {i}");
    }
    // Nothing refused was stored: the next entry alice gets is this one.
    bob.send_raw(send(&g, "5", Kind::Content(content("after"))))
        .await
        .unwrap();
    let next = alice.entry().await;
    assert_eq!(text(&next), "after");
    assert!(!next.mentions_me);
    s.stop().await;
}

#[tokio::test]
async fn a_reaction_and_an_edit_reach_every_device_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut a_phone = Phone::connect(&s, "alice", "phone").await;
    let mut a_laptop = Phone::connect(&s, "alice", "laptop").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let (seq, conv) = a_phone
        .send_text(To::User("bob"), "1", "see you at 6")
        .await
        .unwrap();
    let conv = conv.unwrap();
    bob.entries(2).await;

    let (r, _) = bob
        .send_raw(send(&conv, "r1", react(seq, "👍", false)))
        .await
        .unwrap();
    // The same reaction again stores nothing and answers the first's seq.
    let (again, _) = bob
        .send_raw(send(&conv, "r2", react(seq, "👍", false)))
        .await
        .unwrap();
    assert_eq!(again, r);
    let mut edit = content("see you at 7");
    edit.reply_to = 42; // ignored on an edit
    let (ed, _) = a_phone
        .send_raw(send(
            &conv,
            "2",
            Kind::Edit(proto::Edit {
                seq,
                content: Some(edit),
            }),
        ))
        .await
        .unwrap();
    // Only the sender edits.
    let r2 = bob
        .send_raw(send(
            &conv,
            "e",
            Kind::Edit(proto::Edit {
                seq,
                content: Some(content("see you never")),
            }),
        ))
        .await;
    assert_eq!(refused_with(r2), "NOT_ALLOWED");

    // alice's laptop: the message, the reaction, the edit, in that order.
    let seen = a_laptop.entries(4).await;
    assert_eq!(
        seen.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, seq, r, ed]
    );
    assert!(matches!(
        &seen[2].kind,
        Some(proto::entry::Kind::Reaction(x)) if x.seq == seq && x.emoji == "👍" && !x.remove
    ));
    match &seen[3].kind {
        Some(proto::entry::Kind::Edit(e)) => {
            assert_eq!(e.seq, seq);
            let c = e.content.as_ref().unwrap();
            assert_eq!((c.body.as_slice(), c.reply_to), (&b"see you at 7"[..], 0));
        }
        other => panic!("{other:?}"),
    }
    // alice's phone sent the edit: it gets the reaction only.
    assert_eq!(a_phone.entry().await.seq, r);
    let e = bob.entry().await;
    assert_eq!(e.seq, ed);

    // History shows the summary, and a reaction taken back leaves it.
    let h = bob.history(&conv).await;
    let m = h.iter().find(|e| e.seq == seq).unwrap();
    assert_eq!(
        m.reactions,
        [proto::ReactionCount {
            emoji: "👍".into(),
            count: 1,
            users: vec!["bob".into()],
        }]
    );
    bob.send_raw(send(&conv, "r3", react(seq, "👍", true)))
        .await
        .unwrap();
    let (zero, _) = bob
        .send_raw(send(&conv, "r4", react(seq, "👍", true)))
        .await
        .unwrap();
    assert_eq!(zero, 0, "taking back what is not there stores nothing");
    // A reaction on something that is not a message is refused.
    let r5 = bob.send_raw(send(&conv, "r5", react(r, "🙂", false))).await;
    assert_eq!(refused_with(r5), "UNKNOWN_MESSAGE");
    let h = a_phone.history(&conv).await;
    assert!(h
        .iter()
        .find(|e| e.seq == seq)
        .unwrap()
        .reactions
        .is_empty());
    s.stop().await;
}

#[tokio::test]
async fn delete_for_everyone_erases_the_message_everywhere_and_delete_for_me_stays_private() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let (secret, conv) = alice
        .send_text(To::User("bob"), "1", "the password is hunter2")
        .await
        .unwrap();
    let conv = conv.unwrap();
    let (edit, _) = alice
        .send_raw(send(
            &conv,
            "2",
            Kind::Edit(proto::Edit {
                seq: secret,
                content: Some(content("the password is hunter3")),
            }),
        ))
        .await
        .unwrap();
    let (kept, _) = alice
        .send_text(To::Conversation(&conv), "3", "see you")
        .await
        .unwrap();
    bob.entries(4).await;

    // bob may not delete alice's message for everyone; alice may.
    let r = bob.send_raw(send(&conv, "d", delete(secret, true))).await;
    assert_eq!(refused_with(r), "NOT_ALLOWED");
    let (del, _) = alice
        .send_raw(send(&conv, "4", delete(secret, true)))
        .await
        .unwrap();
    let e = bob.entry().await;
    assert!(matches!(
        &e.kind,
        Some(proto::entry::Kind::Delete(d)) if d.seq == secret && d.for_everyone
    ));
    assert_eq!(e.seq, del);

    // bob deletes alice's last message for himself only.
    let mut b_tablet = Phone::connect(&s, "bob", "tablet").await;
    let (mine, _) = bob
        .send_raw(send(&conv, "5", delete(kept, false)))
        .await
        .unwrap();

    // Gone at once, on every path: history for both, a device fed from
    // the start of its inbox (bob's new tablet), and after a restart. The
    // Delete entry is what names it.
    let check = |h: &[proto::Entry], viewer: &str| {
        for seq in [secret, edit] {
            assert!(
                h.iter().all(|e| e.seq != seq),
                "{viewer}: entry {seq} is still there"
            );
        }
        assert!(h
            .iter()
            .all(|e| body(e).is_none_or(|c| !c.body.starts_with(b"the password"))));
        let k = h.iter().find(|e| e.seq == kept).unwrap();
        assert_eq!(text(k), "see you");
        assert!(
            h.iter().any(|e| e.seq == del),
            "{viewer}: the delete is listed"
        );
        let m = h.iter().find(|e| e.seq == mine).unwrap();
        if viewer == "bob" {
            assert!(matches!(
                &m.kind,
                Some(proto::entry::Kind::Delete(d)) if d.seq == kept && !d.for_everyone
            ));
        } else {
            // Another member's private delete: an entry without a kind.
            assert_eq!((m.kind.as_ref(), m.sender.as_str()), (None, ""));
        }
    };
    check(&alice.history(&conv).await, "alice");
    check(&bob.history(&conv).await, "bob");
    // alice's snapshot shows the delete as the last entry, not bob's
    // private one.
    match alice
        .ok(proto::request::Op::ListConversations(
            proto::ListConversations {
                offset: 0,
                limit: 10,
            },
        ))
        .await
    {
        Some(proto::response::Result::Conversations(cs)) => {
            let last = cs.conversations[0].last.clone().unwrap();
            assert_eq!(last.seq, del);
        }
        other => panic!("{other:?}"),
    }
    let fed = b_tablet.entries(4).await;
    assert_eq!(
        fed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, kept, del, mine]
    );
    check(&fed, "bob");
    // An edit of what is gone finds nothing.
    let r = alice
        .send_raw(send(
            &conv,
            "6",
            Kind::Edit(proto::Edit {
                seq: secret,
                content: Some(content("again")),
            }),
        ))
        .await;
    assert_eq!(refused_with(r), "UNKNOWN_MESSAGE");

    drop((alice, bob, b_tablet));
    s.stop().await;
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    check(&alice.history(&conv).await, "alice");
    s.stop().await;
}

/// How often `marker` occurs in the store's file.
fn in_store_file(dir: &std::path::Path, marker: &[u8]) -> usize {
    let bytes = std::fs::read(dir.join("data/courier.redb")).unwrap();
    bytes.windows(marker.len()).filter(|w| *w == marker).count()
}

#[tokio::test]
async fn a_message_deleted_for_everyone_leaves_the_store_file_within_the_shred_interval() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::with(dir.path(), |config, _| config.shred_interval_secs = 1).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let _bob = Phone::connect(&s, "bob", "phone").await;
    let marker = "launch code 7f3a9c41d2";
    let (secret, conv) = alice.send_text(To::User("bob"), "1", marker).await.unwrap();
    let conv = conv.unwrap();
    // Acknowledged means on disk.
    assert!(in_store_file(dir.path(), marker.as_bytes()) > 0);
    let shreds = s
        .running
        .server
        .broker
        .metrics
        .shreds
        .load(std::sync::atomic::Ordering::Relaxed);
    alice
        .send_raw(send(&conv, "2", delete(secret, true)))
        .await
        .unwrap();
    // The next shred after the delete takes it out of the file.
    let deadline = tokio::time::Instant::now() + WAIT;
    while s
        .running
        .server
        .broker
        .metrics
        .shreds
        .load(std::sync::atomic::Ordering::Relaxed)
        == shreds
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no shred within {WAIT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(in_store_file(dir.path(), marker.as_bytes()), 0);
    // The conversation goes on.
    alice
        .send_text(To::Conversation(&conv), "3", "next")
        .await
        .unwrap();
    s.stop().await;
}

/// Publishes `sends` back to back, before any is acknowledged (so they
/// share a commit window), then collects their PUBACKs: each one's seq,
/// or its error name.
async fn burst(p: &mut Phone, sends: &[proto::SendMessage]) -> Vec<Result<u64, String>> {
    let mut ids = Vec::new();
    for m in sends {
        ids.push(p.send_nowait(m).await);
    }
    let mut acks = std::collections::HashMap::new();
    while acks.len() < ids.len() {
        let a = p.next_ack().await.expect("a PUBACK");
        acks.insert(a.pkid, a);
    }
    ids.iter()
        .map(|id| {
            let a = &acks[id];
            acked_seq(a).ok_or_else(|| {
                a.properties
                    .as_ref()
                    .and_then(|p| p.user_properties.iter().find(|(n, _)| n == "e"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            })
        })
        .collect()
}

fn msg(conv: &str, id: &str, kind: Kind) -> proto::SendMessage {
    proto::SendMessage {
        conversation: conv.into(),
        client_msg_id: id.into(),
        kind: Some(kind),
        ..Default::default()
    }
}

#[tokio::test]
async fn sends_in_one_commit_window_see_each_other_and_resends_stay_answered() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let (first, conv) = alice
        .send_text(To::User("bob"), "0", "hello")
        .await
        .unwrap();
    let conv = conv.unwrap();
    // A message, a reply to it, a reaction on it, an edit of it and a
    // delete for everyone, all before the first is on disk.
    let mut reply = content("re");
    reply.reply_to = first + 1;
    let out = burst(
        &mut alice,
        &[
            msg(&conv, "1", Kind::Content(content("typo"))),
            msg(&conv, "2", Kind::Content(reply)),
            msg(&conv, "3", react(first + 1, "👍", false)),
            msg(&conv, "4", react(first + 1, "👍", true)),
            msg(
                &conv,
                "5",
                Kind::Edit(proto::Edit {
                    seq: first + 1,
                    content: Some(content("still a typo")),
                }),
            ),
            msg(&conv, "6", delete(first + 1, true)),
        ],
    )
    .await;
    let seqs: Vec<u64> = out.iter().map(|r| *r.as_ref().unwrap()).collect();
    assert_eq!(seqs, (first + 1..first + 7).collect::<Vec<_>>(), "{out:?}");
    // The delete took the edit with it, although neither was on disk when
    // the delete was checked; the reaction was taken back.
    let h = bob.history(&conv).await;
    let listed: Vec<u64> = h.iter().map(|e| e.seq).collect();
    assert!(
        !listed.contains(&(first + 1)) && !listed.contains(&(first + 5)),
        "{listed:?}"
    );
    assert!(h
        .iter()
        .all(|e| body(e).is_none_or(|c| !c.body.ends_with(b"typo"))));
    let r = alice.history(&conv).await;
    assert!(r.iter().all(|e| e.reactions.is_empty()));

    // A resend of the delete, whose target is gone now, gets its seq back.
    let again = alice
        .send_raw(msg(&conv, "6", delete(first + 1, true)).encode_to_vec())
        .await
        .unwrap();
    assert_eq!(again.0, first + 6);
    // An emoji may not smuggle a separator in.
    let r = alice
        .send_raw(msg(&conv, "7", react(first, "👍\0bob", false)).encode_to_vec())
        .await;
    assert_eq!(refused_with(r), "BAD_REQUEST");
    s.stop().await;
}
