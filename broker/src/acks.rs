//! The acknowledgements a connection owes for publishes, released in the
//! order the publishes came, once a namespace handler has answered one:
//! MQTT wants PUBACKs in PUBLISH order, and a handler may answer a later
//! publish before an earlier one. Allocated only while some answer is
//! outstanding; plain publishes' acknowledgements skip it otherwise.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::codec::Packet;
use crate::namespace::{AckSlot, Reply};

enum Entry {
    /// Waiting for a handler's answer.
    Waiting {
        slot: Arc<AckSlot>,
        pkid: u16,
        qos: u8,
    },
    /// An acknowledgement the broker made itself, waiting for its turn.
    Ready { packet: Box<Packet>, qos1: bool },
}

/// What is released next.
pub(crate) enum Released {
    /// Send this packet.
    Packet(Box<Packet>),
    /// A handler answered the publish with packet id `pkid` and `qos`.
    Answer { pkid: u16, qos: u8, reply: Reply },
}

/// Acknowledgements in PUBLISH order.
#[derive(Default)]
pub(crate) struct AckQueue {
    entries: VecDeque<Entry>,
    qos1: usize,
}

impl AckQueue {
    /// A handler's answer is awaited for this publish.
    pub(crate) fn wait_for(&mut self, slot: Arc<AckSlot>, pkid: u16, qos: u8) {
        self.qos1 += usize::from(qos == 1);
        self.entries.push_back(Entry::Waiting { slot, pkid, qos });
    }

    /// An acknowledgement that must not overtake those queued before it.
    pub(crate) fn push(&mut self, packet: Packet, qos1: bool) {
        self.qos1 += usize::from(qos1);
        let packet = Box::new(packet);
        self.entries.push_back(Entry::Ready { packet, qos1 });
    }

    /// QoS 1 publishes not yet acknowledged (for receive maximum; QoS 2
    /// ones are counted by the session until PUBREL).
    pub(crate) fn qos1_pending(&self) -> usize {
        self.qos1
    }

    /// Packet ids of QoS 2 publishes still waiting for their handler.
    pub(crate) fn unanswered_qos2(&self) -> impl Iterator<Item = u16> + '_ {
        self.entries.iter().filter_map(|e| match e {
            Entry::Waiting { pkid, qos: 2, slot } if slot.is_empty() => Some(*pkid),
            _ => None,
        })
    }

    /// Nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The front entry if it can go: made by the broker, or answered.
    pub(crate) fn pop(&mut self) -> Option<Released> {
        let released = match self.entries.front()? {
            Entry::Ready { .. } => match self.entries.pop_front()? {
                Entry::Ready { packet, qos1 } => {
                    self.qos1 -= usize::from(qos1);
                    Released::Packet(packet)
                }
                Entry::Waiting { .. } => return None,
            },
            Entry::Waiting { slot, pkid, qos } => {
                let reply = slot.take()?;
                let (pkid, qos) = (*pkid, *qos);
                self.entries.pop_front();
                self.qos1 -= usize::from(qos == 1);
                Released::Answer { pkid, qos, reply }
            }
        };
        Some(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{PingResp, PubAck};
    use crate::namespace::Ack;

    #[test]
    fn answers_go_out_in_publish_order() {
        let mut q = AckQueue::default();
        let (a, b) = (Arc::new(AckSlot::default()), Arc::new(AckSlot::default()));
        q.wait_for(a.clone(), 1, 1);
        q.push(Packet::PubAck(PubAck::new(2, None)), true);
        q.wait_for(b.clone(), 3, 1);
        q.push(Packet::PingResp(PingResp), false);
        assert_eq!(q.qos1_pending(), 3);
        // The third is answered first: nothing may overtake the first.
        Ack::new(b, std::sync::Weak::new()).accept();
        assert!(q.pop().is_none());
        Ack::new(a, std::sync::Weak::new()).accept();
        let order: Vec<u16> = std::iter::from_fn(|| q.pop())
            .map(|r| match r {
                Released::Answer { pkid, .. } => pkid,
                Released::Packet(p) => match *p {
                    Packet::PubAck(p) => p.pkid,
                    _ => 0,
                },
            })
            .collect();
        assert_eq!(order, vec![1, 2, 3, 0]);
        assert!(q.is_empty());
        assert_eq!(q.qos1_pending(), 0);
    }
}
