//! The connection task: one MQTT 5 connection at a time (rumqttc's packet
//! codec over TCP, so acknowledgements are the SDK's to send, after the
//! local store has what they acknowledge), reconnecting with backoff.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message as _;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, Login, Packet,
    PubAck, PubAckReason, Publish, PublishProperties, Subscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::client::ClientConfig;
use crate::proto::{self, down};
use crate::store::Store;
use crate::{Event, SdkError, SendState};

/// Sends in flight at once.
const SEND_WINDOW: usize = 16;
/// Reconnect this long before the token expires.
const TOKEN_MARGIN_SECS: u64 = 30;

/// Where a request's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<proto::Response, SdkError>>;

/// What the app's handle asks of the task.
pub(crate) enum Command {
    /// The outbox has something new.
    Drain,
    /// A request and where its answer goes.
    Request {
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<proto::Response, SdkError>>,
    },
    /// A typing indicator (QoS 0).
    Typing { payload: Vec<u8> },
    /// A call signal (QoS 1; ephemeral: only while connected).
    Call { payload: Vec<u8> },
    /// Disconnect and stop.
    Close { done: oneshot::Sender<()> },
}

/// Why a connection ended.
enum End {
    /// Try again after a backoff.
    Retry(String),
    /// At once (a token about to expire).
    Now(String),
    /// The app closed the client.
    Closed(oneshot::Sender<()>),
}

/// A byte stream to the broker: TCP, or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Opens the stream `server` names: `host:port` (TCP) or
/// `tls://host:port` (TLS, checked against the public roots and the
/// configured CA).
async fn open(config: &ClientConfig) -> Result<Box<dyn Stream>, String> {
    let (tls, addr) = match config.server.strip_prefix("tls://") {
        Some(a) => (true, a),
        None => (false, config.server.as_str()),
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(Box::new(tcp));
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &config.tls_ca {
        let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(host).map_err(|e| format!("server name: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls_config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(Box::new(stream))
}

struct Conn {
    sock: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Conn {
    fn queue(&mut self, p: &Packet) {
        // Packets built here are valid; a failure would only mean no write.
        let _ = p.write(&mut self.wbuf, None);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.sock.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// The next packet, reading as needed.
    async fn next(&mut self) -> Result<Packet, String> {
        loop {
            match Packet::read(&mut self.rbuf, None) {
                Ok(p) => return Ok(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                    match self.sock.read_buf(&mut self.rbuf).await {
                        Ok(0) => return Err("closed by the server".into()),
                        Ok(_) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Err(e) => return Err(format!("bad packet: {e}")),
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs until the app closes the client or drops it.
pub(crate) async fn run(
    config: ClientConfig,
    store: Arc<Store>,
    events: mpsc::UnboundedSender<Event>,
    mut cmds: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = config.backoff_min;
    // Requests that wait for a connection.
    let mut waiting: VecDeque<(Vec<u8>, Reply)> = VecDeque::new();
    loop {
        let started = Instant::now();
        let end = session(&config, &store, &events, &mut cmds, &mut waiting).await;
        let (reason, wait) = match end {
            End::Closed(done) => {
                let _ = done.send(());
                return;
            }
            End::Now(r) => (r, Duration::ZERO),
            End::Retry(r) => {
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = config.backoff_min; // it had been up for a while
                }
                let jitter = (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
                    % 1000) as f64
                    / 1000.0;
                let wait = backoff.mul_f64(0.5 + jitter / 2.0);
                backoff = (backoff * 2).min(config.backoff_max);
                (r, wait)
            }
        };
        tracing::debug!(
            reason,
            wait_ms = wait.as_millis() as u64,
            "courier-sdk: reconnecting"
        );
        if events.send(Event::Disconnected { reason }).is_err() {
            return; // the app dropped the client
        }
        // Wait, still taking commands (a close ends it at once).
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                c = cmds.recv() => match c {
                    None => return,
                    Some(Command::Close { done }) => { let _ = done.send(()); return; }
                    Some(Command::Request { payload, reply }) => waiting.push_back((payload, reply)),
                    Some(Command::Drain) | Some(Command::Typing { .. }) | Some(Command::Call { .. }) => {}
                },
            }
        }
    }
}

/// One connection, from CONNECT to its end.
async fn session(
    config: &ClientConfig,
    store: &Store,
    events: &mpsc::UnboundedSender<Event>,
    cmds: &mut mpsc::UnboundedReceiver<Command>,
    waiting: &mut VecDeque<(Vec<u8>, Reply)>,
) -> End {
    let token = match (config.tokens)().await {
        Ok(t) => t,
        Err(e) => return End::Retry(format!("no access token: {e}")),
    };
    let sock = match open(config).await {
        Ok(s) => s,
        Err(e) => return End::Retry(e),
    };
    let mut c = Conn {
        sock,
        rbuf: BytesMut::with_capacity(16 * 1024),
        wbuf: BytesMut::new(),
    };
    let client_id = format!("{}:{}", config.user, config.device);
    let inbox = format!("c/in/{}/{}", config.user, config.device);
    c.queue(&Packet::Connect(
        Connect {
            keep_alive: config.keep_alive.as_secs().min(u16::MAX as u64) as u16,
            client_id,
            clean_start: true,
            properties: None,
        },
        None,
        Some(Login::new("", token.value.clone())),
    ));
    let mut sub = Subscribe::new(Filter::new(inbox.clone(), QoS::AtLeastOnce), None);
    sub.pkid = 1;
    c.queue(&Packet::Subscribe(sub));
    if let Err(e) = c.flush().await {
        return End::Retry(format!("write: {e}"));
    }
    match tokio::time::timeout(Duration::from_secs(15), c.next()).await {
        Ok(Ok(Packet::ConnAck(ConnAck {
            code: ConnectReturnCode::Success,
            ..
        }))) => {}
        Ok(Ok(Packet::ConnAck(a))) => return End::Retry(format!("refused: {:?}", a.code)),
        Ok(Ok(other)) => return End::Retry(format!("not a CONNACK: {other:?}")),
        Ok(Err(e)) => return End::Retry(e),
        Err(_) => return End::Retry("no CONNACK in 15 s".into()),
    }
    let _ = events.send(Event::Connected);

    let mut s = Session {
        next_pkid: 1,
        sends: HashMap::new(),
        requests: HashMap::new(),
        next_corr: 1,
        in_window: 0,
        events,
        store,
    };
    // Requests made while offline go first.
    while let Some((payload, reply)) = waiting.pop_front() {
        s.request(&mut c, &inbox, payload, reply);
    }
    s.fill(&mut c);
    if let Err(e) = c.flush().await {
        return End::Retry(format!("write: {e}"));
    }
    let renew_at = token.expires_at.map(|exp| {
        exp.saturating_sub(TOKEN_MARGIN_SECS)
            .saturating_sub(unix_now())
    });
    let renew = tokio::time::sleep(Duration::from_secs(renew_at.unwrap_or(u64::MAX / 4)));
    tokio::pin!(renew);
    let mut ping = tokio::time::interval(config.keep_alive / 2);
    ping.tick().await;
    loop {
        // Everything already read first.
        loop {
            match Packet::read(&mut c.rbuf, None) {
                Ok(p) => {
                    if let Err(e) = s.incoming(&mut c, p) {
                        return End::Retry(e);
                    }
                }
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => return End::Retry(format!("bad packet: {e}")),
            }
        }
        s.fill(&mut c);
        if let Err(e) = c.flush().await {
            return End::Retry(format!("write: {e}"));
        }
        tokio::select! {
            r = c.sock.read_buf(&mut c.rbuf) => match r {
                Ok(0) => return End::Retry("closed by the server".into()),
                Ok(_) => {}
                Err(e) => return End::Retry(e.to_string()),
            },
            cmd = cmds.recv() => match cmd {
                None => return End::Closed(oneshot::channel().0),
                Some(Command::Drain) => {}
                Some(Command::Request { payload, reply }) => s.request(&mut c, &inbox, payload, reply),
                Some(Command::Typing { payload }) => {
                    c.queue(&Packet::Publish(Publish::new("c/t", QoS::AtMostOnce, payload, None)));
                }
                Some(Command::Call { payload }) => {
                    let pkid = s.pkid();
                    let mut p = Publish::new("c/k", QoS::AtLeastOnce, payload, None);
                    p.pkid = pkid;
                    c.queue(&Packet::Publish(p));
                    s.sends.insert(pkid, String::new());
                }
                Some(Command::Close { done }) => {
                    c.queue(&Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)));
                    let _ = c.flush().await;
                    return End::Closed(done);
                }
            },
            _ = ping.tick() => c.queue(&Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq)),
            _ = &mut renew => {
                c.queue(&Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)));
                let _ = c.flush().await;
                return End::Now("the access token is about to expire".into());
            }
        }
    }
}

struct Session<'a> {
    next_pkid: u16,
    /// Sends in flight: packet id -> client message id.
    sends: HashMap<u16, String>,
    /// Requests in flight: correlation -> where the answer goes.
    requests: HashMap<u64, oneshot::Sender<Result<proto::Response, SdkError>>>,
    next_corr: u64,
    in_window: usize,
    events: &'a mpsc::UnboundedSender<Event>,
    store: &'a Store,
}

impl Session<'_> {
    fn pkid(&mut self) -> u16 {
        // 1 was the SUBSCRIBE's; ids in use are skipped.
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(2);
            if !self.sends.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Publishes queued sends, oldest first, up to the window.
    fn fill(&mut self, c: &mut Conn) {
        if self.in_window >= SEND_WINDOW {
            return;
        }
        let queued = match self.store.queued() {
            Ok(q) => q,
            Err(e) => {
                tracing::error!("courier-sdk: reading the outbox: {e}");
                return;
            }
        };
        let in_flight: std::collections::HashSet<&String> =
            self.sends.values().filter(|id| !id.is_empty()).collect();
        let todo: Vec<_> = queued
            .into_iter()
            .filter(|r| !in_flight.contains(&r.client_msg_id))
            .take(SEND_WINDOW - self.in_window)
            .collect();
        for r in todo {
            let pkid = self.pkid();
            let mut p = Publish::new("c/s", QoS::AtLeastOnce, r.send, None);
            p.pkid = pkid;
            c.queue(&Packet::Publish(p));
            self.sends.insert(pkid, r.client_msg_id);
            self.in_window += 1;
        }
    }

    fn request(
        &mut self,
        c: &mut Conn,
        inbox: &str,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<proto::Response, SdkError>>,
    ) {
        let corr = self.next_corr;
        self.next_corr += 1;
        let props = PublishProperties {
            response_topic: Some(inbox.to_owned()),
            correlation_data: Some(Bytes::from(corr.to_be_bytes().to_vec())),
            ..Default::default()
        };
        let pkid = self.pkid();
        let mut p = Publish::new("c/r", QoS::AtLeastOnce, payload, Some(props));
        p.pkid = pkid;
        c.queue(&Packet::Publish(p));
        // Its PUBACK says no more than the answer will.
        self.sends.insert(pkid, String::new());
        self.requests.insert(corr, reply);
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// One packet from the server.
    fn incoming(&mut self, c: &mut Conn, p: Packet) -> Result<(), String> {
        match p {
            Packet::Publish(p) => {
                let ack = p.qos != QoS::AtMostOnce;
                let pkid = p.pkid;
                let corr = p
                    .properties
                    .as_ref()
                    .and_then(|x| x.correlation_data.as_ref())
                    .and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
                    .map(u64::from_be_bytes);
                match proto::Down::decode(p.payload) {
                    Ok(d) => self
                        .down(d, corr)
                        .map_err(|e| format!("local store: {e}"))?,
                    Err(e) => tracing::warn!("courier-sdk: a Down that does not decode: {e}"),
                }
                // Only now that it is stored.
                if ack {
                    c.queue(&Packet::PubAck(PubAck::new(pkid, None)));
                }
            }
            Packet::PubAck(a) => {
                if let Some(id) = self.sends.remove(&a.pkid).filter(|id| !id.is_empty()) {
                    self.in_window = self.in_window.saturating_sub(1);
                    self.send_answered(&id, &a)
                        .map_err(|e| format!("local store: {e}"))?;
                }
            }
            Packet::Disconnect(d) => {
                return Err(format!("disconnected by the server: {:?}", d.reason_code))
            }
            _ => {}
        }
        Ok(())
    }

    fn send_answered(&mut self, id: &str, a: &PubAck) -> Result<(), SdkError> {
        let prop = |name: &str| {
            a.properties
                .as_ref()
                .and_then(|p| p.user_properties.iter().find(|(n, _)| n == name))
                .map(|(_, v)| v.clone())
        };
        if a.reason == PubAckReason::Success {
            let seq = prop("seq").and_then(|s| s.parse().ok()).unwrap_or(0);
            let conv = prop("c").unwrap_or_default();
            self.store.set_sent(id, &conv, seq)?;
            self.emit(Event::SendState {
                client_msg_id: id.to_owned(),
                state: SendState::Sent { seq },
            });
            return Ok(());
        }
        let code = prop("e").unwrap_or_else(|| format!("{:?}", a.reason));
        let message = a
            .properties
            .as_ref()
            .and_then(|p| p.reason_string.clone())
            .unwrap_or_default();
        // Worth another try by itself: the store was unavailable, or a
        // rate limit (stays queued; sent again on the next fill or
        // connection).
        if code == "UNAVAILABLE" || code == "LIMIT_REACHED" && prop("r").is_some() {
            return Ok(());
        }
        let state = SendState::Failed { code, message };
        self.store.set_state(id, state.clone())?;
        self.emit(Event::SendState {
            client_msg_id: id.to_owned(),
            state,
        });
        Ok(())
    }

    fn down(&mut self, d: proto::Down, corr: Option<u64>) -> Result<(), SdkError> {
        match d.kind {
            Some(down::Kind::Entry(e)) => {
                // A repeat (the same key) was stored before: not shown again.
                let fresh = self.store.put_entry(&e)?;
                if fresh {
                    self.emit(Event::Entry(Box::new(e)));
                }
            }
            Some(down::Kind::Response(r)) => {
                if let Some(tx) = corr.and_then(|c| self.requests.remove(&c)) {
                    let _ = tx.send(Ok(r));
                }
            }
            Some(down::Kind::Receipts(rs)) => {
                for r in rs.receipts {
                    for (id, state) in self.store.receipt(&r.conversation, r.delivered, r.read)? {
                        self.emit(Event::SendState {
                            client_msg_id: id,
                            state,
                        });
                    }
                    self.emit(Event::Receipt(r));
                }
            }
            Some(down::Kind::Gap(g)) => self.emit(Event::Gap { lost: g.lost }),
            Some(down::Kind::Expired(x)) => {
                self.store.remove(&x.conversation, &x.seqs)?;
                self.emit(Event::Removed {
                    conversation: x.conversation,
                    seqs: x.seqs,
                });
            }
            Some(down::Kind::Presence(ps)) => {
                for p in ps.presences {
                    self.emit(Event::Presence(p));
                }
            }
            Some(down::Kind::Typing(t)) => self.emit(Event::Typing(t)),
            Some(down::Kind::Call(c)) => self.emit(Event::Call(c)),
            Some(down::Kind::PushTokenDropped(p)) => {
                self.emit(Event::PushTokenDropped { reason: p.reason })
            }
            None => {}
        }
        Ok(())
    }
}
