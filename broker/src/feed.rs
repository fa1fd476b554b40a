//! A lossless view of clients' lifecycle for slow listeners (presence, a
//! push bridge): instead of a stream of events that a slow reader falls
//! behind on, each feed keeps the latest state of every client that changed
//! since it last looked, and hands them out oldest change first. Memory is
//! bounded by the number of clients, not of events; a client that connects
//! and drops a thousand times while the listener is busy costs one entry.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::hooks::ClientInfo;
pub use crate::hooks::DisconnectCause;

/// The latest state of one client, as a feed reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientUpdate {
    /// The client's identity as of its last connection.
    pub client: ClientInfo,
    /// A connection is attached.
    pub online: bool,
    /// Why its last connection ended (`None` while online, or if the feed
    /// has not seen one end).
    pub cause: Option<DisconnectCause>,
    /// Messages queued for it while offline (0 while online).
    pub queued_offline: usize,
}

#[derive(Default)]
struct State {
    order: VecDeque<Arc<str>>,
    latest: HashMap<Arc<str>, ClientUpdate>,
}

/// One listener's feed (see [`crate::Broker::feed`]).
#[derive(Default)]
pub struct Feed {
    state: Mutex<State>,
    ready: Notify,
}

impl Feed {
    /// The next client whose state changed, oldest change first; waits if
    /// none has.
    pub async fn next(&self) -> ClientUpdate {
        loop {
            if let Some(u) = self.try_next() {
                return u;
            }
            self.ready.notified().await;
        }
    }

    /// The next client whose state changed, if any.
    pub fn try_next(&self) -> Option<ClientUpdate> {
        let mut s = self.state.lock();
        let id = s.order.pop_front()?;
        s.latest.remove(&id)
    }

    /// Clients with a change not yet taken.
    pub fn pending(&self) -> usize {
        self.state.lock().order.len()
    }

    pub(crate) fn update(&self, client: &ClientInfo, f: impl FnOnce(&mut ClientUpdate)) {
        {
            let mut guard = self.state.lock();
            let s = &mut *guard;
            let u = s.latest.entry(client.client_id.clone()).or_insert_with(|| {
                s.order.push_back(client.client_id.clone());
                ClientUpdate {
                    client: client.clone(),
                    online: false,
                    cause: None,
                    queued_offline: 0,
                }
            });
            f(u);
        }
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str) -> ClientInfo {
        ClientInfo {
            client_id: id.into(),
            username: None,
            principal: None,
        }
    }

    #[test]
    fn keeps_the_latest_state_per_client_in_order_of_first_change() {
        let f = Feed::default();
        for _ in 0..1000 {
            f.update(&client("flappy"), |u| u.online = true);
            f.update(&client("flappy"), |u| {
                u.online = false;
                u.cause = Some(DisconnectCause::Dropped);
            });
        }
        f.update(&client("steady"), |u| u.online = true);
        f.update(&client("flappy"), |u| u.queued_offline = 3);
        assert_eq!(f.pending(), 2);
        let a = f.try_next().unwrap();
        assert_eq!(&*a.client.client_id, "flappy");
        assert!(!a.online);
        assert_eq!(a.cause, Some(DisconnectCause::Dropped));
        assert_eq!(a.queued_offline, 3);
        let b = f.try_next().unwrap();
        assert_eq!(&*b.client.client_id, "steady");
        assert!(f.try_next().is_none());
    }
}
