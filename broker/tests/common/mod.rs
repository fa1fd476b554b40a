//! Test harness: brokers on free loopback ports with their own directories,
//! real clients, and waits on events with deadlines (never bare sleeps).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use courier::config::{Config, ListenerConfig, ListenerKind};
use courier::Server;
use rumqttc::v5::mqttbytes::v5::Packet as P5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// An in-process broker with its own data directory.
pub struct TestBroker {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::with(|_| {}).await
    }

    pub async fn with(f: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config_in(dir.path());
        f(&mut cfg);
        let server = Server::start(cfg).await.expect("broker starts");
        TestBroker { server, dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr(ListenerKind::Tcp).expect("tcp listener")
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }
}

/// Starts an in-process broker on `data`, retrying while a stopped one in
/// this process (its last connection tasks) still holds the store's lock.
pub async fn start_on(data: &Path) -> Server {
    tokio::time::timeout(WAIT, async {
        loop {
            let mut cfg = Config {
                data_dir: data.to_owned(),
                ..Config::default()
            };
            cfg.listeners = vec![listener(ListenerKind::Tcp)];
            match Server::start(cfg).await {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("broker starts once the store is released")
}

/// The default configuration with its data in `dir/data` and one TCP
/// listener on a free loopback port.
pub fn config_in(dir: &Path) -> Config {
    let mut cfg = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    cfg.listeners = vec![listener(ListenerKind::Tcp)];
    cfg
}

/// The TCP port of an in-process server.
pub fn tcp_port(s: &Server) -> u16 {
    s.addr(ListenerKind::Tcp).expect("tcp listener").port()
}

pub fn listener(kind: ListenerKind) -> ListenerConfig {
    ListenerConfig {
        kind,
        bind: "127.0.0.1:0".into(),
        cert: None,
        key: None,
    }
}

/// The `courier` binary run as a child process (for kill -9 tests).
pub struct BrokerProcess {
    pub child: Child,
    pub port: u16,
}

impl BrokerProcess {
    /// Starts `courier` on a free port with `data_dir`; waits until it listens.
    pub fn start(data_dir: &Path) -> BrokerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_courier-mqtt"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn courier");
        Self::listening(child)
    }

    /// Waits for the child's "listening" line and takes its port. A broker
    /// that hangs or exits before listening fails the test (never hangs it).
    fn listening(mut child: Child) -> BrokerProcess {
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining stdout so the child never blocks on a full pipe.
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
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        BrokerProcess { child, port }
    }

    /// Like [`BrokerProcess::start`], but under an open-file limit of
    /// `nofile` (set by the shell's `ulimit`); the broker's log lines
    /// arrive on the returned channel.
    pub fn start_with_fd_limit(
        data_dir: &Path,
        nofile: u32,
    ) -> (BrokerProcess, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_courier-mqtt"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn courier");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (Self::listening(child), rx)
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn data_dir(t: &tempfile::TempDir) -> PathBuf {
    t.path().join("data")
}

// ---- rumqttc helpers ---------------------------------------------------

/// The same helpers for rumqttc's 3.1.1 and 5.0 clients, whose types differ.
macro_rules! client_helpers {
    ($packet:ty, $connack:ty, $suback:ty, $publish:ty) => {
        pub fn opts(id: &str, port: u16) -> MqttOptions {
            let mut o = MqttOptions::new(id, "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(30));
            o
        }

        pub fn client(o: MqttOptions) -> (AsyncClient, EventLoop) {
            AsyncClient::new(o, 100)
        }

        /// Polls until `pick` returns Some, or panics at the deadline.
        pub async fn until<T>(
            el: &mut EventLoop,
            mut pick: impl FnMut(&$packet) -> Option<T>,
        ) -> T {
            tokio::time::timeout(WAIT, async {
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(p)) => {
                            if let Some(t) = pick(&p) {
                                return t;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => panic!("connection error: {e}"),
                    }
                }
            })
            .await
            .expect("event within deadline")
        }

        pub async fn connack(el: &mut EventLoop) -> $connack {
            until(el, |p| match p {
                Packet::ConnAck(c) => Some(c.clone()),
                _ => None,
            })
            .await
        }

        pub async fn suback(el: &mut EventLoop) -> $suback {
            until(el, |p| match p {
                Packet::SubAck(s) => Some(s.clone()),
                _ => None,
            })
            .await
        }

        pub async fn publish(el: &mut EventLoop) -> $publish {
            until(el, |p| match p {
                Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await
        }
    };
}

#[allow(unused_imports)]
pub mod v4 {
    use super::*;
    pub use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Packet, QoS};

    client_helpers!(Packet, rumqttc::ConnAck, rumqttc::SubAck, rumqttc::Publish);

    pub async fn puback(el: &mut EventLoop) -> u16 {
        until(el, |p| match p {
            Packet::PubAck(a) => Some(a.pkid),
            _ => None,
        })
        .await
    }

    /// Connects with a persistent session, subscribes at QoS 1 and leaves
    /// with DISCONNECT, so messages are queued for it.
    pub async fn subscribe_and_leave(o: &MqttOptions, filter: &str) {
        let mut o = o.clone();
        o.set_clean_session(false);
        let (c, mut el) = client(o);
        connack(&mut el).await;
        c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        suback(&mut el).await;
        c.disconnect().await.unwrap();
        let _ = publishes_within(&mut el, Duration::from_millis(50)).await;
    }

    /// Drives the event loop for a while and returns any publishes seen.
    /// Used only to show that something does NOT arrive.
    pub async fn publishes_within(el: &mut EventLoop, d: Duration) -> Vec<rumqttc::Publish> {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(d, async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => got.push(p),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
        .await;
        got
    }
}

#[allow(unused_imports)]
pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Packet, PubAckReason, Publish, PublishProperties, SubAck,
        SubscribeReasonCode,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

    client_helpers!(Packet, ConnAck, SubAck, Publish);
}

// ---- raw client: exact bytes in, decoded packets out -------------------

/// A client that writes raw bytes and reads packets decoded with the
/// rumqttc v5 (or v4) codec.
pub struct Raw {
    pub sock: TcpStream,
    buf: BytesMut,
    pub v5: bool,
}

/// What a raw read produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test-only, short-lived values
pub enum RawEvent {
    Packet(P5),
    V4(rumqttc::mqttbytes::v4::Packet),
    Closed,
}

impl Raw {
    pub async fn connect(addr: SocketAddr, v5: bool) -> Raw {
        let sock = TcpStream::connect(addr).await.unwrap();
        sock.set_nodelay(true).unwrap();
        Raw {
            sock,
            buf: BytesMut::new(),
            v5,
        }
    }

    /// Connects a 5.0 client with `connect` and checks that it is accepted.
    pub async fn connected5(addr: SocketAddr, connect: P5) -> Raw {
        let mut r = Raw::connect(addr, true).await;
        r.send(connect).await;
        match r.next().await {
            RawEvent::Packet(P5::ConnAck(_)) => r,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Subscribes (5.0) and waits for the SUBACK.
    pub async fn subscribe5(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        use rumqttc::v5::mqttbytes::v5::{Filter, Subscribe};
        self.send(P5::Subscribe(Subscribe::new(
            Filter::new(filter, qos),
            None,
        )))
        .await;
        match self.next().await {
            RawEvent::Packet(P5::SubAck(_)) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        // The broker may already have closed; a failed write shows up as
        // Closed on the next read.
        let _ = self.sock.write_all(b).await;
    }

    pub async fn send(&mut self, p: P5) {
        let mut b = BytesMut::new();
        p.write(&mut b, None).unwrap();
        self.send_bytes(&b).await;
    }

    pub async fn send4(&mut self, p: rumqttc::mqttbytes::v4::Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        self.send_bytes(&b).await;
    }

    /// Next packet, or Closed at EOF. Panics at the deadline.
    pub async fn next(&mut self) -> RawEvent {
        tokio::time::timeout(WAIT, async {
            loop {
                if !self.buf.is_empty() {
                    if self.v5 {
                        if self.buf.len() >= 2 && self.buf[0] == 0xE0 && self.buf[1] == 0 {
                            let _ = self.buf.split_to(2);
                            return RawEvent::Packet(P5::Disconnect(
                                rumqttc::v5::mqttbytes::v5::Disconnect::new(
                                    rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NormalDisconnection,
                                ),
                            ));
                        }
                        match P5::read(&mut self.buf, None) {
                            Ok(p) => return RawEvent::Packet(p),
                            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                            Err(e) => panic!("undecodable from broker: {e}"),
                        }
                    } else {
                        match rumqttc::mqttbytes::v4::Packet::read(&mut self.buf, usize::MAX) {
                            Ok(p) => return RawEvent::V4(p),
                            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                            Err(e) => panic!("undecodable from broker: {e}"),
                        }
                    }
                }
                let mut tmp = [0u8; 4096];
                match self.sock.read(&mut tmp).await {
                    Ok(0) | Err(_) => return RawEvent::Closed,
                    Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                }
            }
        })
        .await
        .expect("broker answered within deadline")
    }

    /// Reads until the connection closes; returns the v5 DISCONNECT reason
    /// if one was sent first.
    pub async fn until_closed(
        &mut self,
    ) -> Option<rumqttc::v5::mqttbytes::v5::DisconnectReasonCode> {
        let mut reason = None;
        loop {
            match self.next().await {
                RawEvent::Closed => return reason,
                RawEvent::Packet(P5::Disconnect(d)) => reason = Some(d.reason_code),
                _ => {}
            }
        }
    }
}

/// A v5 CONNECT packet.
pub fn connect5(
    id: &str,
    clean: bool,
    props: Option<rumqttc::v5::mqttbytes::v5::ConnectProperties>,
) -> P5 {
    P5::Connect(
        rumqttc::v5::mqttbytes::v5::Connect {
            keep_alive: 30,
            client_id: id.into(),
            clean_start: clean,
            properties: props,
        },
        None,
        None,
    )
}

/// A v5 CONNECT whose session lasts `expiry` s, with a QoS 1 will "gone"
/// on `will_topic` delayed by `delay` s.
pub fn connect5_with_will(id: &str, clean: bool, expiry: u32, will_topic: &str, delay: u32) -> P5 {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    let mut props = props5();
    props.session_expiry_interval = Some(expiry);
    let will = LastWill {
        topic: bytes::Bytes::copy_from_slice(will_topic.as_bytes()),
        message: bytes::Bytes::from_static(b"gone"),
        qos: rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        retain: false,
        properties: Some(LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        }),
    };
    P5::Connect(
        rumqttc::v5::mqttbytes::v5::Connect {
            keep_alive: 30,
            client_id: id.into(),
            clean_start: clean,
            properties: Some(props),
        },
        Some(will),
        None,
    )
}

/// Empty v5 connect properties.
pub fn props5() -> rumqttc::v5::mqttbytes::v5::ConnectProperties {
    rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: vec![],
        authentication_method: None,
        authentication_data: None,
    }
}

/// Runs a command with a deadline, returning its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
