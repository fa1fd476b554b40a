//! MQTT 5 topic aliases of one connection, both ways.

use std::collections::HashMap;

/// Topic alias tables of one 5.0 connection.
#[derive(Default)]
pub(super) struct Aliases {
    pub(super) incoming: HashMap<u16, String>,
    pub(super) outgoing: OutAliases,
}

/// Aliases the broker assigns to topics it sends, at most a configured
/// number: when all are taken, the least recently used one is given to the
/// new topic (the PUBLISH then carries both, which rebinds it at the client).
#[derive(Default)]
pub(super) struct OutAliases {
    /// Topic -> (alias, last use).
    by_topic: HashMap<String, (u16, u64)>,
    /// Last use -> alias, oldest first.
    lru: std::collections::BTreeMap<u64, u16>,
    /// Topic of each alias (alias n at n - 1).
    topics: Vec<String>,
    clock: u64,
}

impl OutAliases {
    /// The alias for `topic`, and whether the client already knows it.
    pub(super) fn alias(&mut self, topic: &str, max: u16) -> (u16, bool) {
        self.clock += 1;
        let now = self.clock;
        if let Some((a, used)) = self.by_topic.get_mut(topic) {
            self.lru.remove(used);
            *used = now;
            self.lru.insert(now, *a);
            return (*a, true);
        }
        let a = if self.topics.len() < max as usize {
            self.topics.push(topic.to_owned());
            self.topics.len() as u16
        } else {
            let Some((_, a)) = self.lru.pop_first() else {
                return (0, false);
            };
            let old = std::mem::replace(&mut self.topics[a as usize - 1], topic.to_owned());
            self.by_topic.remove(&old);
            a
        };
        self.by_topic.insert(topic.to_owned(), (a, now));
        self.lru.insert(now, a);
        (a, false)
    }
}
