//! Feeding devices from their inboxes, and receipts.
//!
//! One task drives every connected device: it sends the inbox entries after
//! the device's cursor (a window of them at a time) with
//! `Broker::deliver`, and advances the cursor as the device acknowledges
//! them, in inbox order. A delivery is not kept in an MQTT session queue:
//! the inbox is the durable copy, so a device that drops and returns is
//! simply fed again from its cursor. Acknowledgements also move the
//! user's delivered watermark in the conversation; watermark changes go
//! out as coalesced receipts every `FLUSH`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier::broker::Delivered;
use courier::feed::{ClientUpdate, Feed};
use courier::message::Message;
use courier::tracker::{DropReason, Outcome, Tracker};
use prost::Message as _;
use tokio::sync::mpsc;

use crate::identity::{device_of, scope_of, Scope};
use crate::proto;
use crate::records::{conversation_log, inbox_log, ConvKind, LAST_SEEN};
use crate::{inbox, topics, Chat};

/// How often cursors are saved and receipts sent.
const FLUSH: Duration = Duration::from_millis(50);

/// What the delivery task hears.
pub(crate) enum Event {
    /// These users' inboxes have new, durable entries.
    InboxGrew(Vec<String>),
    /// A user's read watermark in a conversation moved (from `device`).
    Watermark {
        conversation: String,
        user: String,
        device: String,
    },
    /// Someone types (user stamped).
    Typing(proto::Typing),
    /// Disappearing messages of a conversation were erased.
    Expired {
        conversation: String,
        seqs: Vec<u64>,
        /// Whom to tell (default: the members now).
        to: Option<Vec<String>>,
    },
    /// How one delivery ended.
    Report {
        client_id: Arc<str>,
        inbox_seq: u64,
        conversation: String,
        seq: u64,
        outcome: Outcome,
    },
}

/// One connected device.
struct Pump {
    user: String,
    device: String,
    /// Every inbox entry up to here is acknowledged (or was the device's
    /// own).
    cursor: u64,
    saved: u64,
    /// The next inbox entry to send.
    next: u64,
    /// Sent, not yet acknowledged: inbox seq to (conversation, seq).
    outstanding: BTreeMap<u64, (String, u64)>,
    /// Read from the store, not sent yet (read in batches, sent one per
    /// acknowledgement so the link never idles).
    ready: VecDeque<Ready>,
    /// Every inbox entry up to here has left `ready` (sent or skipped).
    taken: u64,
}

/// An inbox entry read ahead.
enum Ready {
    /// To send: its inbox seq, its key and the encoded `Down`.
    Send(u64, String, u64, Bytes),
    /// Nothing to send (the device's own, or gone): counts as acknowledged.
    Skip(u64),
    /// Entries were removed by retention before this device got them:
    /// how many, and the first that is still there.
    Gap(u64, u64),
}

#[derive(Default)]
struct Dirty {
    read: bool,
    /// The device the read came from (it needs no receipt of it).
    from_device: Option<String>,
}

struct Deliveries {
    chat: Arc<Chat>,
    tx: mpsc::UnboundedSender<Event>,
    pumps: HashMap<Arc<str>, Pump>,
    devices: HashMap<String, Vec<Arc<str>>>,
    dirty: HashMap<(String, String), Dirty>,
}

pub(crate) fn spawn(chat: Arc<Chat>, feed: Arc<Feed>, mut rx: mpsc::UnboundedReceiver<Event>) {
    let Ok(broker) = chat.broker() else { return };
    let mut stop = broker.shutdown_signal();
    drop(broker);
    let tx = chat.events.clone();
    tokio::spawn(async move {
        let mut s = Deliveries {
            chat,
            tx,
            pumps: HashMap::new(),
            devices: HashMap::new(),
            dirty: HashMap::new(),
        };
        let mut tick = tokio::time::interval(FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Reports first: a device's last acknowledgements are in
                // the channel before the feed says it left.
                biased;
                Some(e) = rx.recv() => s.event(e),
                u = feed.next() => s.update(u),
                _ = tick.tick() => s.flush(),
                _ = stop.changed() => break,
            }
        }
        s.flush();
    });
}

impl Deliveries {
    fn update(&mut self, u: ClientUpdate) {
        let Some((user, device)) = device_of(&u.client) else {
            return;
        };
        if scope_of(&u.client) != Scope::Device {
            return; // asks for an access token, or peeks: nothing is fed
        }
        let id = u.client.client_id.clone();
        let (user, device) = (user.to_owned(), device.to_owned());
        if u.online {
            if !self.pumps.contains_key(&id) {
                self.chat.presence.device_online(&user);
            }
            // Also after a quick reconnect the feed coalesced: what the old
            // connection had outstanding is sent again.
            let cursor = match self.pumps.get(&id) {
                Some(p) => p.cursor,
                None => self.saved_cursor(&user, &device),
            };
            let list = self.devices.entry(user.clone()).or_default();
            if !list.contains(&id) {
                list.push(id.clone());
            }
            self.chat.push_connected(&user, &device);
            self.pumps.insert(
                id.clone(),
                Pump {
                    user,
                    device,
                    cursor,
                    saved: cursor,
                    next: cursor + 1,
                    outstanding: BTreeMap::new(),
                    ready: VecDeque::new(),
                    taken: cursor,
                },
            );
            self.refill(&id);
        } else if let Some(mut p) = self.pumps.remove(&id) {
            let grace = self.chat.config.presence_grace_ms;
            let now = courier::message::unix_now_ms();
            let last = self.chat.presence.device_offline(&p.user, &id, now, grace);
            if let Ok(b) = self.chat.broker() {
                Self::save(&self.chat, &b, &mut p);
                if last {
                    // Durable with the next commit: last seen outlives a
                    // restart.
                    b.logs().set_cursor(LAST_SEEN, &p.user, now);
                }
            }
            if let Some(list) = self.devices.get_mut(&p.user) {
                list.retain(|c| *c != id);
                if list.is_empty() {
                    self.devices.remove(&p.user);
                }
            }
        }
    }

    fn saved_cursor(&self, user: &str, device: &str) -> u64 {
        let Ok(b) = self.chat.broker() else { return 0 };
        match inbox::saved_cursor(b.logs(), user, device) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(user, device, "chat: reading inbox cursor: {e}");
                0
            }
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::InboxGrew(users) => {
                for u in users {
                    let ids = self.devices.get(&u).cloned().unwrap_or_default();
                    for id in ids {
                        self.refill(&id);
                    }
                }
            }
            Event::Watermark {
                conversation,
                user,
                device,
            } => {
                let d = self.dirty.entry((conversation, user)).or_default();
                d.read = true;
                d.from_device = Some(device);
            }
            Event::Report {
                client_id,
                inbox_seq,
                conversation,
                seq,
                outcome,
            } => self.report(client_id, inbox_seq, conversation, seq, outcome),
            Event::Expired {
                conversation,
                seqs,
                to,
            } => self.expired(conversation, seqs, to),
            Event::Typing(t) => self.typing(t),
        }
    }

    fn report(&mut self, id: Arc<str>, inbox_seq: u64, conv: String, seq: u64, outcome: Outcome) {
        let Some(p) = self.pumps.get_mut(&id) else {
            return;
        };
        if !p.outstanding.contains_key(&inbox_seq) {
            return; // from an earlier connection, sent again since
        }
        match outcome {
            Outcome::Acknowledged | Outcome::Sent => {
                self.chat.metrics.inc(&self.chat.metrics.delivery_acks, 1);
                let user = p.user.clone();
                Self::done(p, inbox_seq);
                self.delivered(&conv, &user, seq);
            }
            Outcome::Dropped(DropReason::TooLarge) => {
                tracing::warn!(client_id = %id, conversation = conv, seq, "chat: entry larger than the device's maximum packet size; skipped");
                Self::done(p, inbox_seq);
            }
            Outcome::Dropped(_) => {
                // Still connected (else the feed ends the pump): send the
                // window again from the cursor.
                p.outstanding.clear();
                p.ready.clear();
                p.next = p.cursor + 1;
                p.taken = p.cursor;
            }
        }
        self.refill(&id);
    }

    fn done(p: &mut Pump, inbox_seq: u64) {
        p.outstanding.remove(&inbox_seq);
        Self::advance(p);
    }

    /// Moves the cursor up to the first entry still outstanding, or to
    /// everything taken from `ready` if none is.
    fn advance(p: &mut Pump) {
        let upto = match p.outstanding.keys().next() {
            Some(first) => first - 1,
            None => p.taken,
        };
        p.cursor = p.cursor.max(upto);
    }

    /// Sends the presence changes that are due, at QoS 0.
    fn presence(&mut self, broker: &courier::Broker) {
        let now = courier::message::unix_now_ms();
        let interval = self.chat.config.presence_interval_ms;
        let out = {
            let d = self.chat.dir.lock();
            self.chat.presence.tick(&self.chat, &d, now, interval)
        };
        for (id, presences) in out {
            let Some(p) = self.pumps.get(&id) else {
                continue;
            };
            let down = proto::Down {
                kind: Some(proto::down::Kind::Presence(proto::Presences { presences })),
            };
            let mut msg = inbox_message(p, Bytes::from(down.encode_to_vec()));
            msg.qos = 0;
            if broker.deliver(&id, msg, false, None).is_ok() {
                self.chat
                    .metrics
                    .inc(&self.chat.metrics.presence_updates, 1);
            }
        }
    }

    /// Shows `user` typing in `conversation` to the other members' online
    /// devices (not to those who blocked it), at QoS 0.
    fn typing(&mut self, t: proto::Typing) {
        let Ok(broker) = self.chat.broker() else {
            return;
        };
        let members: Vec<String> = {
            let d = self.chat.dir.lock();
            match d.conversations.get(&t.conversation) {
                Some(c) => c.members.keys().cloned().collect(),
                None => return,
            }
        };
        let down = proto::Down {
            kind: Some(proto::down::Kind::Typing(t.clone())),
        };
        let payload = Bytes::from(down.encode_to_vec());
        for u in members {
            if u == t.user || self.chat.blocks.has(&u, &t.user) {
                continue;
            }
            for id in self.devices.get(&u).into_iter().flatten() {
                if let Some(p) = self.pumps.get(id) {
                    let mut msg = inbox_message(p, payload.clone());
                    msg.qos = 0;
                    let _ = broker.deliver(id, msg, false, None);
                }
            }
        }
    }

    /// Tells the members' online devices that `seqs` of `conv` are gone
    /// (best effort: a device expires them itself by their expiry).
    fn expired(&mut self, conversation: String, seqs: Vec<u64>, to: Option<Vec<String>>) {
        let Ok(broker) = self.chat.broker() else {
            return;
        };
        let members: Vec<String> = if let Some(to) = to {
            to
        } else {
            let d = self.chat.dir.lock();
            match d.conversations.get(&conversation) {
                Some(c) => c.members.keys().cloned().collect(),
                None => return,
            }
        };
        let down = proto::Down {
            kind: Some(proto::down::Kind::Expired(proto::Expired {
                conversation,
                seqs,
            })),
        };
        let payload = Bytes::from(down.encode_to_vec());
        for u in members {
            for id in self.devices.get(&u).into_iter().flatten() {
                if let Some(p) = self.pumps.get(id) {
                    let _ = broker.deliver(id, inbox_message(p, payload.clone()), false, None);
                }
            }
        }
    }

    /// `user` has entry `seq` of `conv` on a device.
    fn delivered(&mut self, conv: &str, user: &str, seq: u64) {
        let mut d = self.chat.dir.lock();
        let Some(m) = d
            .conversations
            .get_mut(conv)
            .and_then(|c| c.members.get_mut(user))
        else {
            return;
        };
        if seq > m.delivered {
            m.delivered = seq;
            drop(d);
            self.dirty
                .entry((conv.to_owned(), user.to_owned()))
                .or_default();
        }
    }

    /// Sends device `id` inbox entries until its window is full.
    fn refill(&mut self, id: &Arc<str>) {
        let Ok(broker) = self.chat.broker() else {
            return;
        };
        let window = self.chat.config.inbox_window.max(1);
        let Some(p) = self.pumps.get_mut(id) else {
            return;
        };
        while p.outstanding.len() < window {
            if p.ready.is_empty() && !Self::read_ahead(&self.chat, p, &broker, id, window) {
                return;
            }
            let Some(item) = p.ready.pop_front() else {
                return;
            };
            let (inbox_seq, conv, seq, payload) = match item {
                Ready::Skip(s) => {
                    // Needs no sending: as if acknowledged.
                    p.taken = s;
                    Self::advance(p);
                    continue;
                }
                Ready::Gap(lost, first) => {
                    p.taken = first - 1;
                    Self::advance(p);
                    tracing::info!(client_id = %id, lost, "chat: inbox gap");
                    let down = proto::Down {
                        kind: Some(proto::down::Kind::Gap(proto::Gap { lost })),
                    };
                    let msg = inbox_message(p, Bytes::from(down.encode_to_vec()));
                    if !matches!(
                        broker.deliver(id, msg, false, None),
                        Ok(Delivered::Queued { .. })
                    ) {
                        return;
                    }
                    continue;
                }
                Ready::Send(a, b, c, d) => (a, b, c, d),
            };
            p.taken = inbox_seq;
            let tx = self.tx.clone();
            let (c2, s2) = (conv.clone(), seq);
            let tracker = Tracker::new(move |rep| {
                let _ = tx.send(Event::Report {
                    client_id: rep.client_id,
                    inbox_seq,
                    conversation: c2.clone(),
                    seq: s2,
                    outcome: rep.outcome,
                });
            });
            p.outstanding.insert(inbox_seq, (conv, seq));
            match broker.deliver(id, inbox_message(p, payload), false, Some(&tracker)) {
                Ok(Delivered::Queued { .. }) => {
                    self.chat.metrics.inc(&self.chat.metrics.deliveries, 1);
                }
                Ok(Delivered::Dropped(_)) => {} // the tracker was told
                Ok(Delivered::NoSession) | Err(_) => {
                    // Gone: the feed ends this pump; start over from the
                    // cursor if it comes back.
                    p.outstanding.remove(&inbox_seq);
                    p.ready.clear();
                    p.next = p.cursor + 1;
                    p.taken = p.cursor;
                    return;
                }
            }
        }
    }

    /// Reads the next inbox entries of `p` (up to `limit`) into
    /// `p.ready`. False if there is nothing to read.
    fn read_ahead(
        chat: &Chat,
        p: &mut Pump,
        broker: &courier::Broker,
        id: &Arc<str>,
        limit: usize,
    ) -> bool {
        let page = match inbox::read(chat, broker.logs(), &p.user, &p.device, p.next, limit) {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(client_id = %id, "chat: reading inbox: {e}");
                return false;
            }
        };
        if page.lost > 0 {
            p.ready.push_back(Ready::Gap(page.lost, page.first));
            p.next = page.first;
        }
        for item in page.items {
            match item {
                inbox::Item::Skip(seq) => {
                    p.next = seq + 1;
                    p.ready.push_back(Ready::Skip(seq));
                }
                inbox::Item::Entry(seq, conv, entry) => {
                    p.next = seq + 1;
                    let conv_seq = entry.seq;
                    let down = proto::Down {
                        kind: Some(proto::down::Kind::Entry(*entry)),
                    };
                    p.ready.push_back(Ready::Send(
                        seq,
                        conv,
                        conv_seq,
                        Bytes::from(down.encode_to_vec()),
                    ));
                }
            }
        }
        !p.ready.is_empty()
    }

    /// Saves `p`'s cursor if it moved (durable with the next commit).
    fn save(chat: &Chat, broker: &courier::Broker, p: &mut Pump) {
        if p.cursor > p.saved {
            broker
                .logs()
                .set_cursor(&inbox_log(&p.user), &p.device, p.cursor);
            p.saved = p.cursor;
            chat.push_acked(&p.user, &p.device, p.cursor);
        }
    }

    /// Saves moved cursors and watermarks, and sends receipts: one message
    /// per device, with every watermark that moved for it.
    fn flush(&mut self) {
        let Ok(broker) = self.chat.broker() else {
            return;
        };
        for p in self.pumps.values_mut() {
            Self::save(&self.chat, &broker, p);
        }
        self.presence(&broker);
        // Calls that rang too long: their missed-call entries go out once
        // they are durable.
        let woken = self.chat.ring_timeouts(courier::message::unix_now_ms());
        if !woken.is_empty() {
            let tx = self.tx.clone();
            let chat = self.chat.clone();
            tokio::spawn(async move {
                if let Ok(b) = chat.broker() {
                    if b.durable().await.is_ok() {
                        let _ = tx.send(Event::InboxGrew(woken));
                    }
                }
            });
        }
        if self.dirty.is_empty() {
            return;
        }
        let mut out: HashMap<Arc<str>, Vec<proto::Receipt>> = HashMap::new();
        {
            let d = self.chat.dir.lock();
            for ((conv, user), dirty) in self.dirty.drain() {
                let Some(c) = d.conversations.get(&conv) else {
                    continue;
                };
                let Some(m) = c.members.get(&user) else {
                    continue;
                };
                let log = conversation_log(&conv);
                broker
                    .logs()
                    .set_cursor(&log, &format!("d:{user}"), m.delivered);
                broker.logs().set_cursor(&log, &format!("r:{user}"), m.read);
                let receipt = proto::Receipt {
                    conversation: conv.clone(),
                    user: user.clone(),
                    delivered: m.delivered,
                    read: m.read,
                };
                // Direct: the other member sees both ticks. Groups: members
                // ask per message (MessageReceipts); live receipts there
                // would cost members x members messages.
                if c.kind == ConvKind::Direct {
                    for other in c.members.keys().filter(|u| **u != user) {
                        // Read receipts off, or blocked: delivered only.
                        let mut r = receipt.clone();
                        if !crate::controls::read_visible(&self.chat, &d, &user, other) {
                            r.read = 0;
                        }
                        for id in self.devices.get(other).into_iter().flatten() {
                            out.entry(id.clone()).or_default().push(r.clone());
                        }
                    }
                }
                // The reader's other devices clear their unread counts.
                if dirty.read {
                    for id in self.devices.get(&user).into_iter().flatten() {
                        let from = dirty.from_device.as_deref();
                        if self.pumps.get(id).map(|p| p.device.as_str()) != from {
                            out.entry(id.clone()).or_default().push(receipt.clone());
                        }
                    }
                }
            }
        }
        for (id, receipts) in out {
            let Some(p) = self.pumps.get(&id) else {
                continue;
            };
            let down = proto::Down {
                kind: Some(proto::down::Kind::Receipts(proto::Receipts { receipts })),
            };
            let msg = inbox_message(p, Bytes::from(down.encode_to_vec()));
            if broker.deliver(&id, msg, false, None).is_ok() {
                self.chat.metrics.inc(&self.chat.metrics.receipts, 1);
            }
        }
    }
}

/// A message on `p`'s inbox topic.
fn inbox_message(p: &Pump, payload: Bytes) -> Message {
    Message {
        topic: topics::inbox(&p.user, &p.device),
        payload,
        qos: 1,
        retain: false,
        expires_at: None,
        props: None,
    }
}
