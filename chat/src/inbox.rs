//! Reading a user's inbox as one of their devices sees it: the entries
//! after a position, resolved to the conversation entries they point to.
//! The delivery task feeds devices from it; a peek connection's `Fetch`
//! answers from it.

use std::collections::HashMap;

use courier::logs::Logs;
use courier::store::{LogRecord, StoreError};

use crate::proto;
use crate::records::{self, conversation_log, inbox_log, InboxRef};
use crate::Chat;

/// A run of inbox entries from a position on.
pub(crate) struct Page {
    /// Entries removed by retention between the position asked for and
    /// `first`.
    pub lost: u64,
    /// The first inbox position still there (at or after the one asked
    /// for).
    pub first: u64,
    /// The entries, in inbox order.
    pub items: Vec<Item>,
}

/// One inbox entry.
pub(crate) enum Item {
    /// To show: its inbox position and conversation, and the entry.
    Entry(u64, String, Box<proto::Entry>),
    /// Nothing to show (the device's own message, or gone from the
    /// conversation): its inbox position.
    Skip(u64),
}

/// The device's saved cursor in its user's inbox (0: none).
pub(crate) fn saved_cursor(logs: &Logs, user: &str, device: &str) -> Result<u64, StoreError> {
    Ok(logs
        .cursors(&inbox_log(user))?
        .iter()
        .find(|(n, _)| n == device)
        .map_or(0, |c| c.1))
}

/// Up to `limit` committed entries of `user`'s inbox from `from` on, as
/// `device` sees them. The entries of one conversation that lie close
/// together are read with one read.
pub(crate) fn read(
    chat: &Chat,
    logs: &Logs,
    user: &str,
    device: &str,
    from: u64,
    limit: usize,
) -> Result<Page, StoreError> {
    let inbox = inbox_log(user);
    let refs = logs.read(&inbox, from, limit)?;
    // Past `from`, retention removed what lies before the first entry the
    // inbox still has (a newer, uncommitted append is no gap).
    let first = match refs.first() {
        Some(r) => r.seq,
        None => match logs.last_committed(&inbox)? {
            last if last >= from => last + 1,
            _ => from,
        },
    };
    let decoded: Vec<Option<InboxRef>> = refs
        .iter()
        .map(|r| records::decode::<InboxRef>(&r.data))
        .collect();
    let mut spans: HashMap<&str, (u64, u64, u64)> = HashMap::new();
    for iref in decoded.iter().flatten() {
        let e = spans
            .entry(iref.conversation.as_str())
            .or_insert((iref.seq, iref.seq, 0));
        *e = (e.0.min(iref.seq), e.1.max(iref.seq), e.2 + 1);
    }
    let mut near: HashMap<(String, u64), LogRecord> = HashMap::new();
    for (conv, (lo, hi, n)) in spans {
        if hi - lo < 4 * n + 8 {
            for rec in logs.read(&conversation_log(conv), lo, (hi - lo + 1) as usize)? {
                near.insert((conv.to_owned(), rec.seq), rec);
            }
        }
    }
    let mut items = Vec::with_capacity(refs.len());
    for (r, iref) in refs.iter().zip(decoded) {
        let Some(iref) = iref else {
            tracing::error!(user, seq = r.seq, "chat: unreadable inbox entry skipped");
            items.push(Item::Skip(r.seq));
            continue;
        };
        if iref.from_device.as_deref() == Some(device) {
            items.push(Item::Skip(r.seq)); // the device has its own
            continue;
        }
        let rec = match near.remove(&(iref.conversation.clone(), iref.seq)) {
            Some(rec) => Some(rec),
            None => logs
                .read(&conversation_log(&iref.conversation), iref.seq, 1)?
                .into_iter()
                .find(|e| e.seq == iref.seq),
        };
        // Gone from the conversation (retention): nothing to show.
        match rec.and_then(|e| chat.show(&iref.conversation, &e, Some(user))) {
            Some(entry) => items.push(Item::Entry(r.seq, iref.conversation, Box::new(entry))),
            None => items.push(Item::Skip(r.seq)),
        }
    }
    Ok(Page {
        lost: first - from,
        first,
        items,
    })
}
