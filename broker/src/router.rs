//! The subscription tree: which sessions want a message on a topic.
//!
//! A trie keyed by topic level. Matching a topic walks only the branches the
//! topic can reach (the literal level, `+` and `#`), so its cost depends on
//! the topic's depth, not on the number of subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Options a client gave for one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubOptions {
    /// Granted QoS (0..=2).
    pub qos: u8,
    /// 5.0 no-local: do not deliver the client's own publishes.
    pub no_local: bool,
    /// 5.0 retain-as-published: keep the RETAIN flag on forwarded messages.
    pub retain_as_published: bool,
    /// 5.0 subscription identifier.
    pub id: Option<u32>,
    /// Granted with [`crate::hooks::SubscribeDecision::Filter`]: each
    /// message is checked with `Hooks::authorize_read` before delivery.
    pub filtered: bool,
}

/// One subscription that matched a topic.
#[derive(Debug, Clone)]
pub struct Matched<S> {
    /// Client id of the subscriber.
    pub client_id: Arc<str>,
    /// Handle to the subscriber's session.
    pub session: S,
    /// The subscription's options.
    pub opts: SubOptions,
}

struct Entry<S> {
    session: S,
    opts: SubOptions,
}

struct SharedGroup<S> {
    members: Vec<(Arc<str>, Entry<S>)>,
    next: AtomicUsize,
}

/// Most topics have a subscriber or two (a device's own topic): they keep
/// a short list; past this many, a map.
const FEW: usize = 8;

/// The plain (not shared) subscriptions at one node, by client id.
// Boxed maps on purpose: 8 bytes in every node instead of 48, and most
// nodes are leaves with a subscriber or two.
#[allow(clippy::box_collection)]
enum Subs<S> {
    Few(Vec<(Arc<str>, Entry<S>)>),
    Many(Box<HashMap<Arc<str>, Entry<S>>>),
}

impl<S> Subs<S> {
    /// Adds or replaces; true if it is new.
    fn insert(&mut self, client_id: &Arc<str>, entry: Entry<S>) -> bool {
        match self {
            Subs::Few(v) => {
                if let Some(e) = v.iter_mut().find(|(c, _)| c == client_id) {
                    e.1 = entry;
                    return false;
                }
                if v.len() < FEW {
                    v.push((client_id.clone(), entry));
                    return true;
                }
                let mut map: HashMap<Arc<str>, Entry<S>> = v.drain(..).collect();
                map.insert(client_id.clone(), entry);
                *self = Subs::Many(Box::new(map));
                true
            }
            Subs::Many(m) => m.insert(client_id.clone(), entry).is_none(),
        }
    }

    fn remove(&mut self, client_id: &str) -> bool {
        match self {
            Subs::Few(v) => {
                let before = v.len();
                v.retain(|(c, _)| &**c != client_id);
                if v.is_empty() {
                    *v = Vec::new();
                }
                v.len() != before
            }
            Subs::Many(m) => m.remove(client_id).is_some(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Subs::Few(v) => v.is_empty(),
            Subs::Many(m) => m.is_empty(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(&Arc<str>, &Entry<S>)) {
        match self {
            Subs::Few(v) => v.iter().for_each(|(c, e)| f(c, e)),
            Subs::Many(m) => m.iter().for_each(|(c, e)| f(c, e)),
        }
    }
}

#[allow(clippy::box_collection)] // see `Subs`
struct Node<S> {
    /// Allocated by the first child (most nodes are leaves).
    children: Option<Box<HashMap<Box<str>, Node<S>>>>,
    subs: Subs<S>,
    /// Allocated by the first shared subscription here.
    shared: Option<Box<HashMap<Box<str>, SharedGroup<S>>>>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Node {
            children: None,
            subs: Subs::Few(Vec::new()),
            shared: None,
        }
    }
}

impl<S> Node<S> {
    fn is_empty(&self) -> bool {
        self.children.is_none() && self.subs.is_empty() && self.shared.is_none()
    }

    fn child(&self, level: &str) -> Option<&Node<S>> {
        self.children.as_ref()?.get(level)
    }
}

/// The subscription trie. `S` is the session handle stored with each entry.
pub struct Router<S> {
    root: Node<S>,
    count: usize,
}

impl<S> Default for Router<S> {
    fn default() -> Self {
        Router {
            root: Node::default(),
            count: 0,
        }
    }
}

impl<S: Clone> Router<S> {
    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn node_mut(&mut self, filter: &str) -> &mut Node<S> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node
                .children
                .get_or_insert_with(Default::default)
                .entry(level.into())
                .or_default();
        }
        node
    }

    /// Adds or replaces a subscription. Returns true if it is new.
    pub fn insert(
        &mut self,
        client_id: &Arc<str>,
        group: Option<&str>,
        filter: &str,
        session: S,
        opts: SubOptions,
    ) -> bool {
        let node = self.node_mut(filter);
        let entry = Entry { session, opts };
        let new = match group {
            None => node.subs.insert(client_id, entry),
            Some(g) => {
                let shared = node.shared.get_or_insert_with(Default::default);
                let grp = shared.entry(g.into()).or_insert_with(|| SharedGroup {
                    members: Vec::new(),
                    next: AtomicUsize::new(0),
                });
                match grp.members.iter_mut().find(|(c, _)| c == client_id) {
                    Some(m) => {
                        m.1 = entry;
                        false
                    }
                    None => {
                        grp.members.push((client_id.clone(), entry));
                        true
                    }
                }
            }
        };
        if new {
            self.count += 1;
        }
        new
    }

    /// Removes a subscription. Returns true if it existed.
    pub fn remove(&mut self, client_id: &str, group: Option<&str>, filter: &str) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, client_id, group);
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn remove_at(
        node: &mut Node<S>,
        levels: &[&str],
        client_id: &str,
        group: Option<&str>,
    ) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return match group {
                None => node.subs.remove(client_id),
                Some(g) => {
                    let Some(shared) = node.shared.as_mut() else {
                        return false;
                    };
                    let Some(grp) = shared.get_mut(g) else {
                        return false;
                    };
                    let before = grp.members.len();
                    grp.members.retain(|(c, _)| &**c != client_id);
                    let removed = grp.members.len() != before;
                    if grp.members.is_empty() {
                        shared.remove(g);
                        if shared.is_empty() {
                            node.shared = None;
                        }
                    }
                    removed
                }
            };
        };
        let Some(children) = node.children.as_mut() else {
            return false;
        };
        let Some(child) = children.get_mut(*first) else {
            return false;
        };
        let removed = Self::remove_at(child, rest, client_id, group);
        if child.is_empty() {
            children.remove(*first);
            if children.is_empty() {
                node.children = None;
            }
        }
        removed
    }

    /// Collects every subscription matching `topic`. For each shared group
    /// one member is chosen, round-robin, preferring those `available`.
    pub fn matches(&self, topic: &str, available: impl Fn(&S) -> bool, out: &mut Vec<Matched<S>>) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, &levels, dollar, &available, out);
    }

    fn collect(node: &Node<S>, available: &impl Fn(&S) -> bool, out: &mut Vec<Matched<S>>) {
        node.subs.for_each(|cid, e| {
            out.push(Matched {
                client_id: cid.clone(),
                session: e.session.clone(),
                opts: e.opts,
            })
        });
        for grp in node.shared.iter().flat_map(|m| m.values()) {
            let n = grp.members.len();
            if n == 0 {
                continue;
            }
            let start = grp.next.fetch_add(1, Ordering::Relaxed);
            let pick = (0..n)
                .map(|i| (start + i) % n)
                .find(|&i| available(&grp.members[i].1.session))
                .unwrap_or(start % n);
            let (cid, e) = &grp.members[pick];
            out.push(Matched {
                client_id: cid.clone(),
                session: e.session.clone(),
                opts: e.opts,
            });
        }
    }

    fn walk(
        node: &Node<S>,
        levels: &[&str],
        skip_wild: bool,
        available: &impl Fn(&S) -> bool,
        out: &mut Vec<Matched<S>>,
    ) {
        // `a/#` also matches `a` itself.
        if !skip_wild {
            if let Some(multi) = node.child("#") {
                Self::collect(multi, available, out);
            }
        }
        let Some((first, rest)) = levels.split_first() else {
            Self::collect(node, available, out);
            return;
        };
        if let Some(child) = node.child(first) {
            Self::walk(child, rest, false, available, out);
        }
        if !skip_wild {
            if let Some(child) = node.child("+") {
                Self::walk(child, rest, false, available, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
            filtered: false,
        }
    }

    fn ids(r: &Router<u32>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        r.matches(topic, |_| true, &mut out);
        let mut v: Vec<u32> = out.into_iter().map(|m| m.session).collect();
        v.sort();
        v
    }

    #[test]
    fn a_topic_grows_from_a_short_list_to_a_map_and_back() {
        let mut r = Router::default();
        let cids: Vec<Arc<str>> = (0..20).map(|i| format!("c{i}").into()).collect();
        for (i, c) in cids.iter().enumerate() {
            assert!(r.insert(c, None, "room/1", i as u32, opts(1)));
        }
        // A repeat replaces, past the short list too.
        assert!(!r.insert(&cids[3], None, "room/1", 3, opts(0)));
        assert!(!r.insert(&cids[15], None, "room/1", 15, opts(0)));
        assert_eq!(ids(&r, "room/1"), (0..20).collect::<Vec<_>>());
        for c in &cids[..19] {
            assert!(r.remove(c, None, "room/1"));
        }
        assert!(!r.remove(&cids[0], None, "room/1"));
        assert_eq!(ids(&r, "room/1"), vec![19]);
        assert!(r.remove(&cids[19], None, "room/1"));
        assert!(r.is_empty());
        assert!(r.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn wildcards_and_dollar() {
        let mut r = Router::default();
        let c: Vec<Arc<str>> = (0..6).map(|i| Arc::from(format!("c{i}"))).collect();
        r.insert(&c[0], None, "a/b", 0, opts(1));
        r.insert(&c[1], None, "a/+", 1, opts(1));
        r.insert(&c[2], None, "a/#", 2, opts(1));
        r.insert(&c[3], None, "#", 3, opts(1));
        r.insert(&c[4], None, "+/b", 4, opts(1));
        r.insert(&c[5], None, "$SYS/#", 5, opts(1));
        assert_eq!(ids(&r, "a/b"), vec![0, 1, 2, 3, 4]);
        assert_eq!(ids(&r, "a"), vec![2, 3]);
        assert_eq!(ids(&r, "$SYS/x"), vec![5]);
        assert!(r.remove("c2", None, "a/#"));
        assert!(!r.remove("c2", None, "a/#"));
        assert_eq!(ids(&r, "a"), vec![3]);
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn shared_round_robin_prefers_available() {
        let mut r = Router::default();
        for i in 0..3u32 {
            let c: Arc<str> = Arc::from(format!("m{i}"));
            r.insert(&c, Some("g"), "jobs/#", i, opts(1));
        }
        let mut seen = Vec::new();
        for _ in 0..6 {
            let mut out = Vec::new();
            r.matches("jobs/1", |s| *s != 1, &mut out);
            assert_eq!(out.len(), 1);
            seen.push(out[0].session);
        }
        assert!(!seen.contains(&1));
        assert!(seen.contains(&0) && seen.contains(&2));
    }
}
