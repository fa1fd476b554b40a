//! Rate limits over real sockets: a device over its limit gets PUBACK
//! 0x97 with a retry-after, and another user is not affected.

mod common;

use common::*;
use courier_chat::proto::{self, request::Op, send_message::Kind};
use courier_chat::{ActionLimit, Rate};
use rumqttc::v5::mqttbytes::v5::PubAckReason;

fn text_to(conv: &str, id: usize) -> proto::SendMessage {
    proto::SendMessage {
        conversation: conv.into(),
        client_msg_id: id.to_string(),
        kind: Some(Kind::Content(proto::Content {
            body: format!("m{id}").into_bytes(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_flooding_device_is_refused_and_another_user_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::with(dir.path(), |_, chat| {
        chat.rate_limits.enabled = true;
        chat.rate_limits.send = ActionLimit {
            device: Rate {
                per_sec: 1,
                burst: 5,
            },
            user: Rate::UNLIMITED,
        };
        chat.rate_limits.create_group = ActionLimit {
            device: Rate::UNLIMITED,
            user: Rate {
                per_sec: 1,
                burst: 2,
            },
        };
    })
    .await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let mut carol = Phone::connect(&s, "carol", "phone").await;
    let g = alice.create_group("flood", &["bob", "carol"]).await;

    // alice sends 50 at once: 5 go through, 45 are refused with 0x97,
    // LIMIT_REACHED and when to retry.
    let mut pkids = Vec::new();
    for i in 0..50 {
        pkids.push(alice.send_nowait(&text_to(&g, i)).await);
    }
    let mut ok = 0;
    let mut refused = 0;
    for _ in 0..50 {
        let a = alice.next_ack().await.expect("a PUBACK");
        if a.reason == PubAckReason::Success {
            ok += 1;
            continue;
        }
        assert_eq!(a.reason, PubAckReason::QuotaExceeded);
        let props = &a.properties.as_ref().unwrap().user_properties;
        let prop = |n: &str| props.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(prop("e").as_deref(), Some("LIMIT_REACHED"));
        let retry: u64 = prop("r").expect("retry after").parse().unwrap();
        assert!((1..=1000).contains(&retry), "{retry}");
        refused += 1;
    }
    assert_eq!((ok, refused), (5, 45));
    assert!(s.metric("rate_limited") >= 45);
    // bob, meanwhile, has all of his own burst.
    for i in 0..5 {
        bob.send_text(To::Conversation(&g), &i.to_string(), "not limited")
            .await
            .unwrap();
    }
    // carol got alice's 5 and bob's 5, nothing refused.
    let got = carol.entries(1 + 5 + 5).await;
    assert_eq!(
        got.iter()
            .filter(|e| e.sender == "alice" && is_message(e))
            .count(),
        5
    );
    assert_eq!(got.iter().filter(|e| e.sender == "bob").count(), 5);

    // Per user: alice's second device shares her group-creation limit.
    let mut laptop = Phone::connect(&s, "alice", "laptop").await;
    let create = || {
        Op::CreateGroup(proto::CreateGroup {
            name: "more".into(),
            members: vec![],
        })
    };
    laptop.ok(create()).await; // the second (the first was "flood")
    let (reason, r) = laptop.request(create()).await;
    assert_eq!(reason, PubAckReason::QuotaExceeded, "{r:?}");
    assert_eq!(r.error.unwrap().code, proto::ErrorCode::LimitReached as i32);
    bob.ok(create()).await;
    s.stop().await;
}
