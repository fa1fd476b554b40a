//! Call signaling over real sockets: a ring reaches the callee's devices,
//! one answers and the other stops ringing, offers/answers/ICE are relayed
//! between the two devices and never stored; an unanswered call stops and
//! is recorded as missed.

mod common;

use common::*;
use courier_chat::proto::{self, call_signal::Signal, stop::Reason};
use prost::Message as _;

fn signal(call_id: &str, conversation: &str, s: Signal) -> Vec<u8> {
    proto::CallSignal {
        call_id: call_id.into(),
        conversation: conversation.into(),
        signal: Some(s),
        ..Default::default()
    }
    .encode_to_vec()
}

async fn send(p: &mut Phone, call_id: &str, conversation: &str, s: Signal) {
    let a = p
        .publish(
            courier_chat::topics::CALL,
            signal(call_id, conversation, s),
            None,
        )
        .await;
    assert_eq!(
        a.reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::Success,
        "{a:?}"
    );
}

async fn next_call(p: &mut Phone) -> proto::CallSignal {
    p.next_matching(|d| match &d.kind {
        Some(proto::down::Kind::Call(c)) => Some(c.clone()),
        _ => None,
    })
    .await
}

fn stopped(c: &proto::CallSignal) -> Option<Reason> {
    match &c.signal {
        Some(Signal::Stop(s)) => Reason::try_from(s.reason).ok(),
        _ => None,
    }
}

#[tokio::test]
async fn a_call_rings_two_devices_one_answers_and_signals_are_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut b_phone = Phone::connect(&s, "bob", "phone").await;
    let mut b_tablet = Phone::connect(&s, "bob", "tablet").await;
    let (_, conv) = alice
        .send_text(To::User("bob"), "1", "call?")
        .await
        .unwrap();
    let conv = conv.unwrap();
    let ring = Signal::Ring(proto::Ring {
        video: true,
        offer: b"v=0 offer".to_vec(),
    });
    send(&mut alice, "c1", &conv, ring).await;
    for p in [&mut b_phone, &mut b_tablet] {
        let c = next_call(p).await;
        assert_eq!(
            (
                c.call_id.as_str(),
                c.from_user.as_str(),
                c.from_device.as_str()
            ),
            ("c1", "alice", "phone")
        );
        assert!(matches!(&c.signal, Some(Signal::Ring(r)) if r.video && r.offer == b"v=0 offer"));
    }
    // The phone answers: alice gets the answer, the tablet stops ringing.
    send(
        &mut b_phone,
        "c1",
        "",
        Signal::Answer(b"v=0 answer".to_vec()),
    )
    .await;
    let a = next_call(&mut alice).await;
    assert!(matches!(&a.signal, Some(Signal::Answer(x)) if x == b"v=0 answer"));
    assert_eq!(a.from_device, "phone");
    assert_eq!(
        stopped(&next_call(&mut b_tablet).await),
        Some(Reason::Answered)
    );
    // The tablet is out of the call now.
    let late = b_tablet
        .publish(
            courier_chat::topics::CALL,
            signal("c1", "", Signal::Answer(vec![])),
            None,
        )
        .await;
    assert_ne!(
        late.reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::Success
    );
    // ICE both ways, between the two devices of the call.
    send(&mut alice, "c1", "", Signal::Ice(b"candidate a".to_vec())).await;
    assert!(
        matches!(next_call(&mut b_phone).await.signal, Some(Signal::Ice(x)) if x == b"candidate a")
    );
    send(&mut b_phone, "c1", "", Signal::Ice(b"candidate b".to_vec())).await;
    assert!(
        matches!(next_call(&mut alice).await.signal, Some(Signal::Ice(x)) if x == b"candidate b")
    );
    // alice hangs up: bob's phone is told.
    send(&mut alice, "c1", "", Signal::Hangup(proto::Hangup {})).await;
    assert_eq!(
        stopped(&next_call(&mut b_phone).await),
        Some(Reason::HungUp)
    );
    // Nothing of it is in the conversation's log.
    let h = alice.history(&conv).await;
    assert!(h
        .iter()
        .all(|e| !matches!(e.kind, Some(proto::entry::Kind::Call(_)))));
    s.stop().await;
}

#[tokio::test]
async fn an_unanswered_call_stops_ringing_and_is_recorded_as_missed() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::with(dir.path(), |_, chat| chat.ring_timeout_ms = 300).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    let (_, conv) = alice
        .send_text(To::User("bob"), "1", "call?")
        .await
        .unwrap();
    let conv = conv.unwrap();
    bob.entries(2).await;
    send(
        &mut alice,
        "c2",
        &conv,
        Signal::Ring(proto::Ring {
            video: false,
            offer: vec![],
        }),
    )
    .await;
    assert!(matches!(
        next_call(&mut bob).await.signal,
        Some(Signal::Ring(_))
    ));
    // Nobody answers: both are told, and the conversation records it.
    assert_eq!(stopped(&next_call(&mut bob).await), Some(Reason::Missed));
    assert_eq!(stopped(&next_call(&mut alice).await), Some(Reason::Missed));
    let e = bob.entry().await;
    assert_eq!(e.sender, "alice");
    assert_eq!(
        e.kind,
        Some(proto::entry::Kind::Call(proto::CallRecord {
            call_id: "c2".into(),
            video: false,
            missed: true,
        }))
    );
    // A ring into a group, or with no conversation, is refused.
    let g = alice.create_group("g", &["bob"]).await;
    let a = alice
        .publish(
            courier_chat::topics::CALL,
            signal("c3", &g, Signal::Ring(proto::Ring::default())),
            None,
        )
        .await;
    assert_ne!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
    s.stop().await;
}
