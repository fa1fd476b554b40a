//! The session state machine checked against a model with proptest: random
//! sequences of queueing, sending under a window, acknowledgements in any
//! order (and bogus ones), reconnects and restarts from what the disk
//! would hold.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use courier::session::{Delivery, Next, Session, SessionLimits};
use courier::Message;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Queue a message of this QoS.
    Push(u8),
    /// Send what the window allows (1..=4 in flight).
    Send(usize),
    /// Acknowledge the n-th in-flight delivery (PUBACK, or PUBREC then
    /// PUBCOMP), in any order.
    Ack(usize),
    /// QoS 2: only PUBREC for the n-th in-flight delivery.
    Rec(usize),
    /// An acknowledgement for a packet id never used.
    Bogus(u16),
    /// The connection drops and comes back.
    Reconnect,
    /// The broker restarts from what the store holds.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..=2).prop_map(Op::Push),
        3 => (1usize..=4).prop_map(Op::Send),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Rec),
        1 => (30_000u16..40_000).prop_map(Op::Bogus),
        1 => Just(Op::Reconnect),
        1 => Just(Op::Restart),
    ]
}

fn msg(seq: u64, qos: u8) -> Arc<Message> {
    Arc::new(Message {
        topic: "t".into(),
        payload: Bytes::from(seq.to_be_bytes().to_vec()),
        qos,
        retain: false,
        expires_at: None,
        props: None,
    })
}

fn limits() -> SessionLimits {
    SessionLimits {
        max_messages: 10_000,
        max_bytes: u64::MAX,
    }
}

/// What the model expects of one stored (QoS 1/2) delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    qos: u8,
    sent: bool,
    released: bool,
}

#[derive(Default)]
struct Model {
    /// Unfinished stored deliveries by sequence number: the disk.
    live: BTreeMap<u64, Entry>,
    /// In flight on the current connection: pkid -> seq.
    inflight: BTreeMap<u16, u64>,
    /// Every sequence number finished so far.
    finished: BTreeSet<u64>,
    /// Highest sequence number sent for the first time.
    last_sent: u64,
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut s = Session::new("c".into(), 1, 3600, limits());
    let mut m = Model::default();
    let mut floor = 0;
    for op in ops {
        match op {
            Op::Push(qos) => {
                let seq = s.take_seq();
                s.push(Delivery {
                    seq,
                    msg_id: 0,
                    stored: qos > 0,
                    msg: msg(seq, qos),
                    qos,
                    retain: false,
                    sub_ids: vec![],
                    tracker: None,
                });
                if qos > 0 {
                    m.live.insert(
                        seq,
                        Entry {
                            qos,
                            sent: false,
                            released: false,
                        },
                    );
                }
            }
            Op::Send(window) => loop {
                let before = s.inflight_len();
                let Some(n) = s.next(window, 0) else { break };
                let Next::Publish {
                    delivery,
                    pkid,
                    dup,
                } = n
                else {
                    return Err(TestCaseError::fail(format!("unexpected {n:?}")));
                };
                prop_assert!(!dup, "a first send is not a duplicate");
                prop_assert!(delivery.seq > m.last_sent, "sent in order");
                m.last_sent = delivery.seq;
                if delivery.qos > 0 {
                    prop_assert!(before < window, "window respected");
                    prop_assert!(m.inflight.insert(pkid, delivery.seq).is_none());
                    m.live.get_mut(&delivery.seq).unwrap().sent = true;
                }
            },
            Op::Ack(i) | Op::Rec(i) if !m.inflight.is_empty() => {
                let (&pkid, &seq) = m.inflight.iter().nth(i % m.inflight.len()).unwrap();
                let e = m.live[&seq];
                let only_rec = matches!(op, Op::Rec(_));
                let done = if e.qos == 1 {
                    let d = s.on_puback(pkid);
                    prop_assert_eq!(d.map(|d| d.seq), Some(seq));
                    true
                } else {
                    if !e.released {
                        prop_assert_eq!(s.on_pubrec(pkid).map(|d| d.seq), Some(seq));
                        m.live.get_mut(&seq).unwrap().released = true;
                    }
                    if only_rec {
                        false
                    } else {
                        prop_assert_eq!(s.on_pubcomp(pkid).map(|d| d.seq), Some(seq));
                        true
                    }
                };
                if done {
                    m.inflight.remove(&pkid);
                    m.live.remove(&seq);
                    m.finished.insert(seq);
                    // A second acknowledgement changes nothing.
                    prop_assert!(s.on_puback(pkid).is_none());
                    prop_assert!(s.on_pubcomp(pkid).is_none());
                }
            }
            Op::Ack(_) | Op::Rec(_) => {}
            Op::Bogus(pkid) => {
                prop_assert!(s.on_puback(pkid).is_none());
                prop_assert!(s.on_pubrec(pkid).is_none());
                prop_assert!(s.on_pubcomp(pkid).is_none());
            }
            Op::Reconnect => {
                // Everything in flight goes again, in log order, as a
                // duplicate (or as PUBREL once released).
                let resent: Vec<(u64, bool)> = s
                    .resend()
                    .into_iter()
                    .map(|n| match n {
                        Next::Publish { delivery, dup, .. } => (delivery.seq, dup),
                        Next::PubRel(pkid) => (m.inflight[&pkid], true),
                        Next::Expired(d) => (d.seq, false),
                    })
                    .collect();
                let want: Vec<(u64, bool)> = m.inflight.values().map(|&seq| (seq, true)).collect();
                let mut sorted = want.clone();
                sorted.sort();
                prop_assert_eq!(resent, sorted);
            }
            Op::Restart => {
                // A new session from the disk: unfinished stored entries,
                // with what was sent and released; QoS 0 is gone.
                let mut fresh = Session::new("c".into(), 1, 3600, limits());
                fresh.resume_after(floor.max(m.last_sent));
                for (&seq, e) in &m.live {
                    fresh.restore(
                        Delivery {
                            seq,
                            msg_id: 0,
                            stored: true,
                            msg: msg(seq, e.qos),
                            qos: e.qos,
                            retain: false,
                            sub_ids: vec![],
                            tracker: None,
                        },
                        e.sent || e.released,
                        e.released,
                    );
                }
                s = fresh;
                m.inflight = m
                    .live
                    .iter()
                    .filter(|(_, e)| e.sent || e.released)
                    .map(|(&seq, _)| (courier::session::pkid_for(seq), seq))
                    .collect();
                // Unsent entries are sent again from the queue, in order.
                m.last_sent = m
                    .live
                    .iter()
                    .filter(|(_, e)| !e.sent)
                    .map(|(&seq, _)| seq - 1)
                    .next()
                    .unwrap_or(m.last_sent)
                    .min(m.last_sent);
            }
        }
        // The floor never goes back, and everything at or below it is
        // finished.
        let f = s.floor();
        prop_assert!(f >= floor, "floor went back from {floor} to {f}");
        floor = f;
        prop_assert!(
            m.live.keys().all(|&seq| seq > f),
            "floor {f} passes an unfinished entry"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn session_matches_its_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
