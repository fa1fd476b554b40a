//! Chat test harness: a broker with its chat layer on a free loopback port
//! and its own directory, and `Phone`, a chat device speaking MQTT 5 over a
//! real socket (packets from rumqttc's codec) that acknowledges what it
//! receives explicitly and counts the bytes both ways. Every wait has a
//! deadline; nothing sleeps.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use courier::config::{Config, ListenerConfig, ListenerKind};
use courier_chat::proto::{self, down, request::Op};
use courier_chat::{ChatConfig, Running};
use prost::Message as _;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, ConnectReturnCode, Filter, Login, Packet, PubAck, PubAckReason,
    Publish, PublishProperties, Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any single wait may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// A broker with its chat layer.
pub struct ChatServer {
    pub running: Running,
    pub dir: PathBuf,
}

pub fn configs(dir: &Path) -> (Config, ChatConfig) {
    let mut config = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.listeners = vec![ListenerConfig {
        kind: ListenerKind::Tcp,
        bind: "127.0.0.1:0".into(),
        cert: None,
        key: None,
    }];
    let mut chat = ChatConfig::default();
    chat.tokens.secret_file = Some(dir.join("chat-secret"));
    // Tests send in bursts; the rate limit test sets its own.
    chat.rate_limits = courier_chat::RateLimitConfig::UNLIMITED;
    (config, chat)
}

impl ChatServer {
    pub async fn start(dir: &Path) -> ChatServer {
        Self::with(dir, |_, _| {}).await
    }

    /// Starts on `dir` after `f` adjusted the configuration; retries while
    /// a server stopped in this process still holds the store.
    pub async fn with(dir: &Path, f: impl Fn(&mut Config, &mut ChatConfig)) -> ChatServer {
        let running = tokio::time::timeout(WAIT, async {
            loop {
                let (mut config, mut chat) = configs(dir);
                f(&mut config, &mut chat);
                match courier_chat::start(config, chat).await {
                    Ok(r) => return r,
                    Err(courier_chat::StartError::Broker(_)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("chat server does not start: {e}"),
                }
            }
        })
        .await
        .expect("server starts once the store is released");
        ChatServer {
            running,
            dir: dir.to_owned(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running
            .server
            .addr(ListenerKind::Tcp)
            .expect("tcp listener")
    }

    pub fn token(&self, user: &str, device: &str) -> String {
        self.running
            .chat
            .tokens()
            .mint(user, device, courier::message::unix_now(), 3600)
            .unwrap()
    }

    pub async fn stop(mut self) {
        self.running.server.shutdown().await.unwrap();
    }

    pub fn metric(&self, name: &str) -> u64 {
        self.running
            .chat
            .metrics()
            .snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no metric {name}"))
    }
}

/// Where a message goes.
pub enum To<'a> {
    User(&'a str),
    Conversation(&'a str),
}

/// What a refused send or request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: PubAckReason,
    pub error: Option<String>,
}

/// A chat device on a raw MQTT 5 connection.
pub struct Phone {
    pub user: String,
    pub device: String,
    sock: TcpStream,
    buf: BytesMut,
    next_pkid: u16,
    aliases: HashMap<u16, Bytes>,
    /// Downs received and not yet taken, in order.
    pending: VecDeque<proto::Down>,
    /// PUBACKs received for this phone's publishes, by packet id.
    acks: HashMap<u16, PubAck>,
    /// Responses by correlation data.
    responses: HashMap<Bytes, proto::Response>,
    /// MQTT bytes read and written (packets, not TCP framing).
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// Acknowledge each entry as it arrives (else: `ack_held`).
    pub auto_ack: bool,
    held: Vec<u16>,
    pub closed: Option<Option<rumqttc::v5::mqttbytes::v5::DisconnectReasonCode>>,
}

/// A v5 CONNECT for a chat device.
pub fn connect_packet(client_id: &str, username: &str, password: &str) -> Packet {
    let mut props = ConnectProperties::new();
    props.topic_alias_max = Some(16);
    Packet::Connect(
        rumqttc::v5::mqttbytes::v5::Connect {
            keep_alive: 60,
            client_id: client_id.into(),
            clean_start: true,
            properties: Some(props),
        },
        None,
        Some(Login::new(username, password)),
    )
}

/// Connects with these credentials; the CONNACK's code.
pub async fn try_connect(
    addr: SocketAddr,
    client_id: &str,
    username: &str,
    password: &str,
) -> ConnectReturnCode {
    let mut p = Phone::raw(addr, "", "").await;
    p.send(connect_packet(client_id, username, password)).await;
    match p.packet().await {
        Some(Packet::ConnAck(ConnAck { code, .. })) => code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

impl Phone {
    async fn raw(addr: SocketAddr, user: &str, device: &str) -> Phone {
        let sock = TcpStream::connect(addr).await.unwrap();
        sock.set_nodelay(true).unwrap();
        Phone {
            user: user.into(),
            device: device.into(),
            sock,
            buf: BytesMut::new(),
            next_pkid: 0,
            aliases: HashMap::new(),
            pending: VecDeque::new(),
            acks: HashMap::new(),
            responses: HashMap::new(),
            bytes_in: 0,
            bytes_out: 0,
            auto_ack: true,
            held: Vec::new(),
            closed: None,
        }
    }

    /// Connects `user`'s `device` with `token` and subscribes to its inbox.
    pub async fn connect_with(addr: SocketAddr, user: &str, device: &str, token: &str) -> Phone {
        let id = courier_chat::topics::client_id(user, device);
        let mut p = Phone::connected(addr, user, device, &id, token).await;
        let inbox = courier_chat::topics::inbox(user, device);
        assert_eq!(
            p.subscribe(&inbox).await,
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        );
        p
    }

    /// Opens a peek connection for `user`'s `device` (no subscription).
    pub async fn connect_peek(addr: SocketAddr, user: &str, device: &str, token: &str) -> Phone {
        let id = courier_chat::topics::peek_client_id(user, device);
        Phone::connected(addr, user, device, &id, token).await
    }

    /// Connects as `id`, which must succeed.
    async fn connected(addr: SocketAddr, user: &str, device: &str, id: &str, token: &str) -> Phone {
        let mut p = Phone::raw(addr, user, device).await;
        p.send(connect_packet(id, "", token)).await;
        match p.packet().await {
            Some(Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::Success,
                ..
            })) => p,
            other => panic!("{id}: expected a successful CONNACK, got {other:?}"),
        }
    }

    pub async fn connect(server: &ChatServer, user: &str, device: &str) -> Phone {
        Phone::connect_with(server.addr(), user, device, &server.token(user, device)).await
    }

    pub async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, None).unwrap();
        self.bytes_out += b.len();
        let _ = self.sock.write_all(&b).await;
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid % 65535 + 1;
        self.next_pkid
    }

    /// The next packet (None: closed). Publishes are acknowledged (or held)
    /// and their Down queued; PUBACKs and responses recorded.
    async fn packet(&mut self) -> Option<Packet> {
        let p = tokio::time::timeout(WAIT, async {
            loop {
                if !self.buf.is_empty() {
                    let before = self.buf.len();
                    match Packet::read(&mut self.buf, None) {
                        Ok(p) => {
                            self.bytes_in += before - self.buf.len();
                            return Some(p);
                        }
                        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("undecodable from broker: {e}"),
                    }
                }
                let mut tmp = [0u8; 8192];
                match self.sock.read(&mut tmp).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}:{}: nothing from the broker in time",
                self.user, self.device
            )
        });
        match &p {
            Some(Packet::Publish(publ)) => self.on_publish(publ.clone()).await,
            Some(Packet::PubAck(a)) => {
                self.acks.insert(a.pkid, a.clone());
            }
            Some(Packet::Disconnect(d)) => self.closed = Some(Some(d.reason_code)),
            None if self.closed.is_none() => self.closed = Some(None),
            _ => {}
        }
        p
    }

    async fn on_publish(&mut self, p: Publish) {
        let alias = p.properties.as_ref().and_then(|x| x.topic_alias);
        let topic = match (p.topic.is_empty(), alias) {
            (false, Some(a)) => {
                self.aliases.insert(a, p.topic.clone());
                p.topic.clone()
            }
            (true, Some(a)) => self.aliases.get(&a).cloned().expect("known alias"),
            _ => p.topic.clone(),
        };
        let inbox = courier_chat::topics::inbox(&self.user, &self.device);
        assert_eq!(
            topic,
            inbox.as_bytes(),
            "only the inbox topic reaches a device"
        );
        let down = proto::Down::decode(p.payload.clone()).expect("a Down");
        let is_entry = matches!(down.kind, Some(down::Kind::Entry(_)));
        if let Some(down::Kind::Response(r)) = &down.kind {
            let corr = p
                .properties
                .as_ref()
                .and_then(|x| x.correlation_data.clone())
                .unwrap_or_default();
            self.responses.insert(corr, r.clone());
        } else {
            self.pending.push_back(down);
        }
        if p.qos == QoS::AtLeastOnce {
            if is_entry && !self.auto_ack {
                self.held.push(p.pkid);
            } else {
                self.send(Packet::PubAck(PubAck::new(p.pkid, None))).await;
            }
        }
    }

    /// Acknowledges the entries held since `auto_ack` was turned off.
    pub async fn ack_held(&mut self) {
        for pkid in std::mem::take(&mut self.held) {
            self.send(Packet::PubAck(PubAck::new(pkid, None))).await;
        }
    }

    pub async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        let pkid = self.pkid();
        let mut s = Subscribe::new(Filter::new(filter, QoS::AtLeastOnce), None);
        s.pkid = pkid;
        self.send(Packet::Subscribe(s)).await;
        loop {
            match self.packet().await {
                Some(Packet::SubAck(a)) if a.pkid == pkid => return a.return_codes[0],
                Some(_) => {}
                None => panic!("closed while subscribing"),
            }
        }
    }

    /// Publishes at QoS 0 (nothing comes back).
    pub async fn publish_qos0(&mut self, topic: &str, payload: Vec<u8>) {
        let p = Publish::new(topic, QoS::AtMostOnce, payload, None);
        self.send(Packet::Publish(p)).await;
    }

    /// Publishes at QoS 1 and waits for its PUBACK.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        props: Option<PublishProperties>,
    ) -> PubAck {
        let pkid = self.pkid();
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload, props);
        p.pkid = pkid;
        self.send(Packet::Publish(p)).await;
        loop {
            if let Some(a) = self.acks.remove(&pkid) {
                return a;
            }
            if self.packet().await.is_none() {
                panic!("closed before the PUBACK");
            }
        }
    }

    /// Sends a text message; its sequence number and, for a first message
    /// to a user, the conversation id.
    pub async fn send_text(
        &mut self,
        to: To<'_>,
        client_msg_id: &str,
        text: &str,
    ) -> Result<(u64, Option<String>), Refused> {
        let mut m = proto::SendMessage {
            client_msg_id: client_msg_id.into(),
            kind: Some(proto::send_message::Kind::Content(proto::Content {
                r#type: String::new(),
                body: text.as_bytes().to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        };
        match to {
            To::User(u) => m.to_user = u.into(),
            To::Conversation(c) => m.conversation = c.into(),
        }
        self.send_raw(m.encode_to_vec()).await
    }

    /// Publishes `payload` to `c/s`.
    pub async fn send_raw(&mut self, payload: Vec<u8>) -> Result<(u64, Option<String>), Refused> {
        let a = self
            .publish(courier_chat::topics::SEND, payload, None)
            .await;
        let prop = |name: &str| {
            a.properties
                .as_ref()
                .and_then(|p| p.user_properties.iter().find(|(n, _)| n == name))
                .map(|(_, v)| v.clone())
        };
        if a.reason != PubAckReason::Success {
            return Err(Refused {
                reason: a.reason,
                error: prop("e"),
            });
        }
        let seq = prop("seq").expect("seq property").parse().unwrap();
        Ok((seq, prop("c")))
    }

    /// Sends a request and waits for its PUBACK and response.
    pub async fn request(&mut self, op: Op) -> (PubAckReason, proto::Response) {
        let corr = Bytes::from(format!("r{}", self.next_pkid + 1));
        let props = PublishProperties {
            response_topic: Some(courier_chat::topics::inbox(&self.user, &self.device)),
            correlation_data: Some(corr.clone()),
            ..Default::default()
        };
        let req = proto::Request { op: Some(op) };
        let a = self
            .publish(
                courier_chat::topics::REQUEST,
                req.encode_to_vec(),
                Some(props),
            )
            .await;
        loop {
            if let Some(r) = self.responses.remove(&corr) {
                return (a.reason, r);
            }
            if self.packet().await.is_none() {
                panic!("closed before the response");
            }
        }
    }

    /// A request that must succeed; its result.
    pub async fn ok(&mut self, op: Op) -> Option<proto::response::Result> {
        let (reason, r) = self.request(op).await;
        assert_eq!(reason, PubAckReason::Success, "{:?}", r.error);
        assert!(r.error.is_none());
        r.result
    }

    /// Creates a group; its id.
    pub async fn create_group(&mut self, name: &str, members: &[&str]) -> String {
        match self
            .ok(Op::CreateGroup(proto::CreateGroup {
                name: name.into(),
                members: members.iter().map(|m| m.to_string()).collect(),
            }))
            .await
        {
            Some(proto::response::Result::Conversation(c)) => c.conversation.unwrap().id,
            other => panic!("expected a conversation, got {other:?}"),
        }
    }

    /// The next Down matching `pick`, earlier others kept.
    pub async fn next_matching<T>(&mut self, mut pick: impl FnMut(&proto::Down) -> Option<T>) -> T {
        loop {
            if let Some(i) = self.pending.iter().position(|d| pick(d).is_some()) {
                let d = self.pending.remove(i).unwrap();
                return pick(&d).unwrap();
            }
            if self.packet().await.is_none() {
                panic!("{}:{}: closed while waiting", self.user, self.device);
            }
        }
    }

    /// The next entry.
    pub async fn entry(&mut self) -> proto::Entry {
        self.next_matching(|d| match &d.kind {
            Some(down::Kind::Entry(e)) => Some(e.clone()),
            _ => None,
        })
        .await
    }

    /// The next `n` entries.
    pub async fn entries(&mut self, n: usize) -> Vec<proto::Entry> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.entry().await);
        }
        v
    }

    /// Waits for a receipt for `user` in `conv` that satisfies `ok`.
    pub async fn receipt_until(
        &mut self,
        conv: &str,
        user: &str,
        mut ok: impl FnMut(&proto::Receipt) -> bool,
    ) -> proto::Receipt {
        self.next_matching(|d| match &d.kind {
            Some(down::Kind::Receipts(r)) => r
                .receipts
                .iter()
                .find(|x| x.conversation == conv && x.user == user && ok(x))
                .cloned(),
            _ => None,
        })
        .await
    }

    /// Entries received but not taken yet.
    pub fn pending_entries(&self) -> Vec<proto::Entry> {
        self.pending
            .iter()
            .filter_map(|d| match &d.kind {
                Some(down::Kind::Entry(e)) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Reads until the broker closes the connection; the DISCONNECT reason.
    pub async fn until_closed(
        &mut self,
    ) -> Option<rumqttc::v5::mqttbytes::v5::DisconnectReasonCode> {
        while self.packet().await.is_some() {}
        self.closed.flatten()
    }

    /// Disconnects cleanly.
    pub async fn leave(mut self) {
        self.send(Packet::Disconnect(
            rumqttc::v5::mqttbytes::v5::Disconnect::new(
                rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NormalDisconnection,
            ),
        ))
        .await;
        let _ = self.sock.shutdown().await;
    }
}

/// The text of an entry that is a message.
pub fn text(e: &proto::Entry) -> String {
    match &e.kind {
        Some(proto::entry::Kind::Content(c)) => String::from_utf8_lossy(&c.body).into_owned(),
        other => panic!("not a message: {other:?}"),
    }
}

/// Is the entry a message (not a membership change)?
pub fn is_message(e: &proto::Entry) -> bool {
    matches!(e.kind, Some(proto::entry::Kind::Content(_)))
}

impl Phone {
    /// Publishes a send without waiting; its packet id.
    pub async fn send_nowait(&mut self, m: &proto::SendMessage) -> u16 {
        let pkid = self.pkid();
        let mut p = Publish::new(
            courier_chat::topics::SEND,
            QoS::AtLeastOnce,
            m.encode_to_vec(),
            None,
        );
        p.pkid = pkid;
        self.send(Packet::Publish(p)).await;
        pkid
    }

    /// The next PUBACK (None: the connection closed).
    pub async fn next_ack(&mut self) -> Option<PubAck> {
        loop {
            if let Some(k) = self.acks.keys().next().copied() {
                return self.acks.remove(&k);
            }
            self.packet().await?;
        }
    }

    /// `conv` as this device's user sees it, from the snapshot.
    pub async fn conversation(&mut self, conv: &str) -> proto::Conversation {
        match self
            .ok(Op::ListConversations(proto::ListConversations {
                offset: 0,
                limit: 200,
            }))
            .await
        {
            Some(proto::response::Result::Conversations(cs)) => cs
                .conversations
                .into_iter()
                .find(|c| c.id == conv)
                .expect("listed"),
            other => panic!("{other:?}"),
        }
    }

    /// The whole history of `conv` as this device's user sees it.
    pub async fn history(&mut self, conv: &str) -> Vec<proto::Entry> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            match self
                .ok(Op::History(proto::History {
                    conversation: conv.into(),
                    before: 0,
                    after,
                    limit: 200,
                }))
                .await
            {
                Some(proto::response::Result::Entries(es)) if !es.entries.is_empty() => {
                    after = es.entries.last().unwrap().seq;
                    all.extend(es.entries);
                }
                Some(proto::response::Result::Entries(_)) => return all,
                other => panic!("{other:?}"),
            }
        }
    }
}

/// The sequence number a PUBACK of a send carries.
pub fn acked_seq(a: &PubAck) -> Option<u64> {
    if a.reason != PubAckReason::Success {
        return None;
    }
    a.properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(n, _)| n == "seq")?
        .1
        .parse()
        .ok()
}

/// The `courier` binary as a child process, for kill -9 and power cuts.
pub struct ChatProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ChatProcess {
    /// Starts `courier` with its data in `data` and its token secret at
    /// `secret`; waits until it listens.
    pub fn start(data: &Path, secret: &Path, dir: &Path) -> ChatProcess {
        Self::start_with(data, secret, dir, "")
    }

    /// As [`ChatProcess::start`], with more TOML at the end of the file.
    pub fn start_with(data: &Path, secret: &Path, dir: &Path, extra: &str) -> ChatProcess {
        Self::start_at(data, secret, dir, extra, "127.0.0.1:0")
    }

    /// As [`ChatProcess::start_with`], listening on `listen`.
    pub fn start_at(
        data: &Path,
        secret: &Path,
        dir: &Path,
        extra: &str,
        listen: &str,
    ) -> ChatProcess {
        use std::io::BufRead;
        let conf = dir.join("courier.toml");
        std::fs::write(
            &conf,
            format!(
                "data_dir = {:?}\n[chat.rate_limits]\nenabled = false\n[chat.tokens]\nsecret_file = {:?}\n{extra}",
                data.display().to_string(),
                secret.display().to_string()
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
            .arg("-c")
            .arg(&conf)
            .args(["--listen", listen])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn courier");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(3 * WAIT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("courier did not start listening: {other:?}");
            }
        };
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        ChatProcess { child, addr }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChatProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tokens signed with the secret at `secret` (created if missing).
pub fn tokens_at(secret: &Path) -> courier_chat::Tokens {
    let mut chat = ChatConfig::default();
    chat.tokens.secret_file = Some(secret.to_owned());
    courier_chat::load_tokens(&chat).unwrap()
}

pub fn token(t: &courier_chat::Tokens, user: &str, device: &str) -> String {
    t.mint(user, device, courier::message::unix_now(), 3600)
        .unwrap()
}

impl Phone {
    /// The next Gap: how many inbox entries were lost.
    pub async fn gap(&mut self) -> u64 {
        self.next_matching(|d| match &d.kind {
            Some(down::Kind::Gap(g)) => Some(g.lost),
            _ => None,
        })
        .await
    }
}
