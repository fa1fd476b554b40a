//! Bytes on a mobile link: the MQTT bytes (packets, not TCP or TLS
//! framing) of one 20-byte text message sent, delivered, acknowledged and
//! read, with both receipts back to the sender, on both sides. The goal
//! (docs/PROTOCOL.md) is under 300 bytes in all.

mod common;

use common::*;
use courier_chat::proto::{self, request::Op};
use prost::Message as _;

#[tokio::test]
async fn one_text_message_with_its_receipts_costs_under_300_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = ChatServer::start(dir.path()).await;
    let mut alice = Phone::connect(&s, "alice", "phone").await;
    let mut bob = Phone::connect(&s, "bob", "phone").await;
    // The conversation exists and the inbox topic has its alias already:
    // the steady state of a chat.
    let (_, conv) = alice
        .send_text(To::User("bob"), "1", "first")
        .await
        .unwrap();
    let conv = conv.unwrap();
    bob.entries(2).await;
    bob.ok(Op::MarkRead(proto::MarkRead {
        conversation: conv.clone(),
        seq: 2,
    }))
    .await;
    alice.receipt_until(&conv, "bob", |r| r.read == 2).await;

    let (a0, b0) = (
        alice.bytes_in + alice.bytes_out,
        bob.bytes_in + bob.bytes_out,
    );
    let text = "twenty bytes of text";
    assert_eq!(text.len(), 20);
    let (seq, _) = alice
        .send_text(To::Conversation(&conv), "2", text)
        .await
        .unwrap();
    let sent = alice.bytes_in + alice.bytes_out - a0;
    let e = bob.entry().await;
    assert_eq!(e.seq, seq);
    let delivered = bob.bytes_in + bob.bytes_out - b0;
    alice
        .receipt_until(&conv, "bob", |r| r.delivered == seq)
        .await;
    let with_delivered = alice.bytes_in + alice.bytes_out - a0;
    // The read watermark, as a request without a response topic: its
    // PUBACK is the answer.
    let b1 = bob.bytes_in + bob.bytes_out;
    let req = proto::Request {
        op: Some(Op::MarkRead(proto::MarkRead {
            conversation: conv.clone(),
            seq,
        })),
    };
    let ack = bob
        .publish(courier_chat::topics::REQUEST, req.encode_to_vec(), None)
        .await;
    assert_eq!(
        ack.reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::Success
    );
    let read = bob.bytes_in + bob.bytes_out - b1;
    alice.receipt_until(&conv, "bob", |r| r.read == seq).await;
    let alice_total = alice.bytes_in + alice.bytes_out - a0;
    let bob_total = bob.bytes_in + bob.bytes_out - b0;
    let total = alice_total + bob_total;
    println!(
        "send+PUBACK {sent} B; delivery+PUBACK {delivered} B; delivered receipt {} B; \
         read+PUBACK {read} B; read receipt {} B; alice {alice_total} B, bob {bob_total} B, total {total} B",
        with_delivered - sent,
        alice_total - with_delivered
    );
    assert!(total < 300, "{total} bytes");
    s.stop().await;
}
