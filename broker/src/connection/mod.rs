//! One client connection. The protocol itself is [`Protocol`], a state
//! machine with no I/O and the time passed in; this module is its async
//! shell ([`serve`]): it reads the transport into it, waits for the disk
//! when it holds acknowledgements, writes what it has to send, and races
//! all of that against takeovers. Transport-agnostic (TCP, TLS and
//! WebSocket all implement [`Transport`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::acks::{AckQueue, Released};
use crate::broker::{Broker, Kick, SessionRef, EXPIRED_CREDENTIAL, EXPIRED_REVOKED};
use crate::codec::{self, *};
use crate::commit::SyncFailed;
use crate::feed::DisconnectCause;
use crate::hooks::{AuthDecision, AuthRequest, ClientInfo, Event, SubscribeDecision};
use crate::message::{unix_now, Message, MessageProps};
use crate::metrics::Metrics;
use crate::namespace::{Ack, AckCode, AckSlot, Inbound, Namespace, Reply};
use crate::router::SubOptions;
use crate::session::{Delivery, Next};
use crate::topic;
use crate::tracker::{DropReason, Outcome};

mod aliases;
mod connect;
mod protocol;
mod publish;
mod subscribe;
mod transport;

use aliases::Aliases;
use connect::admit;
use protocol::{boxed_props, v5};
pub use protocol::{Close, Leave, Now, Protocol};
pub use transport::{Stream, Transport};

/// Serves one accepted connection until it ends. Never panics on input.
///
/// The future is what an idle connection costs, so it is kept small: the
/// socket and peer address go straight into the boxed CONNECT phase (an
/// `async fn` would keep slots for its arguments for its whole life), the
/// connection state is on the heap, and the clean-up phase is boxed too.
pub fn serve<T: Transport>(
    broker: Arc<Broker>,
    t: T,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    let admitted = broker.try_admit();
    let start = Box::pin(admit(broker.clone(), t, peer, admitted));
    async move {
        if let Some(mut conn) = start.await {
            let close = conn.run().await;
            Box::pin(conn.finish(close)).await;
        }
        if admitted {
            broker.release_slot();
        }
    }
}

/// The async shell around one connection's [`Protocol`].
struct Conn<T> {
    p: Protocol,
    t: T,
}

impl<T: Transport> Conn<T> {
    async fn run(&mut self) -> Close {
        if self.p.broker.closing() {
            return Close::error(DisconnectReasonCode::ServerShuttingDown);
        }
        // Packets that arrived together with CONNECT.
        if let Err(c) = self.p.handle_input(Now::of(&self.p.broker)) {
            return c;
        }
        loop {
            match self.p.poll_leave() {
                None => {}
                Some(Leave::Close(c)) => return c,
                Some(Leave::TakenOver(reply)) => return self.taken_over(reply).await,
            }
            let Some(more) = self.p.poll_deliveries(Now::of(&self.p.broker)) else {
                // A takeover went ahead without this connection's answer.
                return Close {
                    will: false,
                    ..Close::error(DisconnectReasonCode::SessionTakenOver)
                };
            };
            if let Err(c) = self.flush().await {
                return c;
            }
            // Idle connections keep no buffers: memory per connection is
            // what makes 20,000 phones on one box cheap. A TCP read frees
            // its buffer when it has to wait; `flush` releases the output.
            let throttled = !self.p.throttle.is_empty();
            let low = self.p.broker.config.limits.throttle_backlog / 2;
            tokio::select! {
                biased;
                // The wait is boxed inside a lazily-run block: allocated only
                // when a publisher is actually throttled.
                _ = async { Box::pin(wait_drained(&self.p.throttle, low)).await }, if throttled => {
                    self.p.throttle.clear();
                    if let Err(c) = self.p.handle_input(Now::of(&self.p.broker)) {
                        return c;
                    }
                }
                r = self.t.read_into(&mut self.p.inbuf), if !throttled => {
                    match r {
                        Ok(0) | Err(_) => return Close::dropped(),
                        Ok(n) => {
                            Metrics::add(&self.p.broker.metrics.bytes_received, n as u64);
                            if let Err(c) = self.p.received(Now::of(&self.p.broker)) {
                                return c;
                            }
                        }
                    }
                }
                // Deliveries, takeover, keep-alive expiry and shutdown.
                _ = self.p.session.notify.notified() => {}
                _ = std::future::ready(()), if more => {}
            }
        }
    }

    /// Writes pending output; first makes held acks durable.
    async fn flush(&mut self) -> Result<(), Close> {
        if self.p.needs_durable() {
            // Boxed: the wait is large and most connections never do it.
            let r = Box::pin(self.wait_durable()).await?;
            self.p.durable_done(r, Now::of(&self.p.broker))?;
        }
        let Some(out) = self.p.poll_transmit() else {
            return Ok(());
        };
        Metrics::add(&self.p.broker.metrics.bytes_sent, out.len() as u64);
        // A takeover must not wait behind a write to a dead peer. Written
        // out rather than through `or_kick`: as a call it made every
        // connection's future 96 bytes larger (the size test).
        let mut woken = false;
        let res = {
            let write = self.t.write_all(&out);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    r = &mut write => break Ok(r),
                    _ = self.p.session.notify.notified() => {
                        if let Some(reply) = self.p.session.take_kick() {
                            break Err(reply);
                        }
                        woken = true;
                    }
                }
            }
        };
        if woken {
            // Deliveries, answers, expiry or shutdown: for the run loop.
            self.p.session.notify.notify_one();
        }
        match res {
            Ok(r) => r.map_err(|_| Close::dropped()),
            Err(reply) => {
                Box::pin(self.finish_takeover(reply)).await;
                Err(Close {
                    will: false,
                    ..Close::dropped()
                })
            }
        }
    }

    /// Waits until the held acknowledgements are durable, or a takeover
    /// asks this connection to leave: a takeover must not wait behind a
    /// slow disk (the new connection would time out, and both would drain
    /// the session).
    async fn wait_durable(&mut self) -> Result<Result<(), SyncFailed>, Close> {
        match or_kick(&self.p.session, self.p.broker.durable()).await {
            Err(reply) => {
                self.finish_takeover(reply).await;
                Err(Close {
                    will: false,
                    ..Close::dropped()
                })
            }
            Ok(r) => Ok(r),
        }
    }

    /// Leaves for a takeover from the run loop.
    async fn taken_over(&mut self, reply: Kick) -> Close {
        tracing::info!(client_id = %self.p.client.client_id, "session taken over");
        Box::pin(self.finish_takeover(reply)).await;
        Close {
            will: false,
            ..Close::taken_over()
        }
    }

    async fn finish_takeover(&mut self, reply: Kick) {
        let bye = self
            .p
            .closing_packet(DisconnectReasonCode::SessionTakenOver, None);
        if let Some(out) = bye {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.t.write_all(&out)).await;
        }
        self.p.end(&Close::taken_over());
        // Release the new connection before closing ours: the old peer is
        // often gone, and a close handshake must not delay the takeover.
        let _ = reply.send(());
        self.t.close().await;
        // Boxed: its timer would otherwise grow every connection's task.
        Box::pin(self.drain_input()).await;
    }

    /// After a DISCONNECT and the write side's shutdown: reads and discards
    /// what the client still sends, for a short, bounded time, so that
    /// closing with unread input (which makes the kernel send a reset, and
    /// drop anything not yet sent, the DISCONNECT included) is less likely
    /// to destroy the reason code.
    async fn drain_input(&mut self) {
        const MAX_BYTES: usize = 4 << 20;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let mut drained = 0;
        let mut buf = BytesMut::new();
        while drained < MAX_BYTES {
            buf.clear();
            match tokio::time::timeout_at(deadline, self.t.read_into(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }

    /// Ends the connection: DISCONNECT (5.0), will, session detach, event.
    async fn finish(&mut self, close: Close) {
        if self.p.ended() {
            return; // taken over; already cleaned up
        }
        let drain = close.notify && v5(self.p.version());
        if close.notify {
            let bye = self.p.closing_packet(close.reason, close.why.clone());
            if let Some(out) = bye {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.t.write_all(&out)).await;
            }
        } else {
            self.p.forget_unanswered();
            if close.graceful {
                let _ = self.flush().await;
            }
        }
        self.t.close().await;
        self.p.end(&close);
        if drain {
            Box::pin(self.drain_input()).await;
        }
    }
}

/// Awaits `f`, unless a takeover asks the connection to leave first
/// (`Err` with the takeover's reply). Other wake-ups seen meanwhile
/// (deliveries, answers, expiry, shutdown) are passed on to the run loop.
async fn or_kick<F: Future>(session: &SessionRef, f: F) -> Result<F::Output, Kick> {
    let mut woken = false;
    let mut f = std::pin::pin!(f);
    let r = loop {
        tokio::select! {
            r = &mut f => break Ok(r),
            _ = session.notify.notified() => {
                if let Some(reply) = session.take_kick() {
                    break Err(reply);
                }
                woken = true;
            }
        }
    };
    if woken {
        session.notify.notify_one();
    }
    r
}

/// Longest a publisher's input is paused for one congested batch. Bounded,
/// so clients publishing to each other cannot deadlock.
const THROTTLE_MAX: Duration = Duration::from_millis(100);

/// Waits until every session in `hs` has at most `low` unsent messages (or
/// went offline), for at most [`THROTTLE_MAX`].
async fn wait_drained(hs: &[SessionRef], low: usize) {
    let deadline = Instant::now() + THROTTLE_MAX;
    for h in hs {
        loop {
            let n = h.drained.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !h.backlogged(low) {
                break;
            }
            h.throttling
                .store(true, std::sync::atomic::Ordering::Release);
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
