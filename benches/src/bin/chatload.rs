//! Load generator for the chat protocol: chat devices (MQTT 5 over raw
//! sockets with rumqttc's codec, explicit acknowledgements) in direct conversations or groups, sending
//! at a fixed or an open rate. Prints one JSON line per run: messages
//! accepted (PUBACKed) per second, deliveries per second, send-to-delivery
//! latency, disk bytes written per message (from /proc/<pid>/io of the
//! broker), and for `catchup` the time a device takes to receive a backlog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use bytes::BytesMut;
use std::collections::HashMap;

use clap::{Parser, Subcommand};
use courier_chat::proto::{self, down, request::Op};
use hdrhistogram::Histogram;
use prost::Message as _;
use rumqttc::v5::mqttbytes::v5::{
    Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, Login, Packet, PubAck,
    PubAckReason, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The broker's token secret (`[chat.tokens] secret_file`).
    #[arg(long)]
    secret: std::path::PathBuf,
    /// Name of the build under test, copied into the output.
    #[arg(long, default_value = "courier")]
    label: String,
    /// The broker's pid, for disk bytes written (/proc/<pid>/io).
    #[arg(long)]
    pid: Option<u32>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// Pairs of users in direct conversations, one device each; one of each
    /// pair sends.
    Direct {
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        #[command(flatten)]
        flow: Flow,
    },
    /// Groups of `size` members; one member of each sends; a share of the
    /// members' devices is offline.
    Group {
        #[arg(long, default_value_t = 10)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// Share of the members offline (their inboxes fill).
        #[arg(long, default_value_t = 0.3)]
        offline: f64,
        #[command(flatten)]
        flow: Flow,
    },
    /// One user watching the presence of `contacts` others, `flapping` of
    /// whom drop their connection every `period` seconds and come back
    /// after `down` seconds: presence messages and bytes the watcher gets.
    Presence {
        #[arg(long, default_value_t = 200)]
        contacts: usize,
        #[arg(long, default_value_t = 20)]
        flapping: usize,
        #[arg(long, default_value_t = 10.0)]
        period: f64,
        /// Longer than the broker's presence grace period (5 s), so every
        /// flap is seen.
        #[arg(long, default_value_t = 6.0)]
        down: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
    },
    /// A victim pair at a fixed rate, measured alone and then while a
    /// device of another user floods at `flood` messages per second (run
    /// against a broker with rate limits on): the victim's p99 both times.
    Flood {
        #[arg(long, default_value_t = 20.0)]
        victim: f64,
        /// The default limit per device is 20/s: 200 is ten times it.
        #[arg(long, default_value_t = 200.0)]
        flood: f64,
        /// Seconds measured, each phase.
        #[arg(long, default_value_t = 15.0)]
        duration: f64,
    },
    /// A device offline while `messages` are sent to it, then connecting:
    /// how long until it has them all.
    Catchup {
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct Flow {
    /// Messages per second over all senders; 0: as fast as each sender's
    /// window of unacknowledged sends allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Body bytes (at least 8: the send time).
    #[arg(long, default_value_t = 32)]
    body: usize,
}

fn epoch_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Counters shared by every device of a run.
#[derive(Default)]
struct Stats {
    measuring: std::sync::atomic::AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
    deliveries: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
    /// Presence messages received while measuring, their MQTT bytes, and
    /// the updates in them per user.
    presence_msgs: AtomicU64,
    presence_bytes: AtomicU64,
    presence_per_user: Mutex<HashMap<String, u64>>,
}

impl Stats {
    fn new() -> Arc<Stats> {
        let s = Stats::default();
        *s.latency.lock().unwrap() = Some(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap());
        Arc::new(s)
    }
}

/// A connected chat device: a raw MQTT 5 connection driven by one task
/// (packets from rumqttc's codec), so the load generator adds as little
/// latency as it can: each packet is written at once, each delivery
/// acknowledged as soon as it is counted.
struct Device {
    out: mpsc::UnboundedSender<Packet>,
    user: String,
    device: String,
    responses: mpsc::UnboundedReceiver<proto::Response>,
    /// Entries received (all, measured or not).
    entries: Arc<AtomicU64>,
    /// Sends not yet acknowledged that this device may still make.
    window: Arc<tokio::sync::Semaphore>,
    next_pkid: std::sync::atomic::AtomicU32,
    task: tokio::task::JoinHandle<()>,
}

/// Unacknowledged sends per device in the open-rate runs.
const WINDOW: usize = 16;

struct Ctx {
    host: String,
    port: u16,
    tokens: courier_chat::Tokens,
}

fn write(p: &Packet, buf: &mut BytesMut) {
    // Packets built here are valid; a failure would only mean an empty write.
    let _ = p.write(buf, None);
}

impl Ctx {
    async fn device(&self, user: &str, device: &str, stats: &Arc<Stats>) -> anyhow::Result<Device> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let id = courier_chat::topics::client_id(user, device);
        let token = self
            .tokens
            .mint(user, device, courier::message::unix_now(), 3600)?;
        let mut sock = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        sock.set_nodelay(true)?;
        let connect = Packet::Connect(
            Connect {
                keep_alive: 60,
                client_id: id.clone(),
                clean_start: true,
                properties: None,
            },
            None,
            Some(Login::new("", token)),
        );
        let mut buf = BytesMut::new();
        write(&connect, &mut buf);
        sock.write_all(&buf).await?;
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        loop {
            match Packet::read(&mut rbuf, None) {
                Ok(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success => break,
                Ok(other) => bail!("{id}: {other:?}"),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                    if sock.read_buf(&mut rbuf).await? == 0 {
                        bail!("{id}: closed");
                    }
                }
                Err(e) => bail!("{id}: {e}"),
            }
        }
        let (tx, responses) = mpsc::unbounded_channel();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Packet>();
        let entries = Arc::new(AtomicU64::new(0));
        let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
        let (stats, count, w) = (stats.clone(), entries.clone(), window.clone());
        let task = tokio::spawn(async move {
            let mut wbuf = BytesMut::new();
            loop {
                // Everything decodable first.
                loop {
                    match Packet::read(&mut rbuf, None) {
                        Ok(Packet::Publish(p)) => {
                            let now = epoch_ns();
                            match proto::Down::decode(p.payload.clone()).map(|d| d.kind) {
                                Ok(Some(down::Kind::Entry(e))) => {
                                    count.fetch_add(1, Ordering::Relaxed);
                                    if let Some(proto::entry::Kind::Content(body)) = e.kind {
                                        if stats.measuring.load(Ordering::Relaxed)
                                            && body.body.len() >= 8
                                        {
                                            let sent = u64::from_be_bytes(
                                                body.body[..8].try_into().unwrap_or_default(),
                                            );
                                            stats.deliveries.fetch_add(1, Ordering::Relaxed);
                                            if let Some(h) = stats.latency.lock().unwrap().as_mut()
                                            {
                                                let _ = h.record(
                                                    (now.saturating_sub(sent) / 1000).max(1),
                                                );
                                            }
                                        }
                                    }
                                }
                                Ok(Some(down::Kind::Response(r))) => {
                                    let _ = tx.send(r);
                                }
                                Ok(Some(down::Kind::Presence(ps)))
                                    if stats.measuring.load(Ordering::Relaxed) =>
                                {
                                    stats.presence_msgs.fetch_add(1, Ordering::Relaxed);
                                    stats
                                        .presence_bytes
                                        .fetch_add(p.size() as u64, Ordering::Relaxed);
                                    let mut per = stats.presence_per_user.lock().unwrap();
                                    for x in ps.presences {
                                        *per.entry(x.user).or_default() += 1;
                                    }
                                }
                                _ => {}
                            }
                            if p.qos == QoS::AtLeastOnce {
                                write(&Packet::PubAck(PubAck::new(p.pkid, None)), &mut wbuf);
                            }
                        }
                        Ok(Packet::PubAck(a)) => {
                            w.add_permits(1);
                            if stats.measuring.load(Ordering::Relaxed) {
                                if a.reason == PubAckReason::Success {
                                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    stats.refused.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Ok(Packet::Disconnect(_)) => return,
                        Ok(_) => {}
                        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => break,
                        Err(_) => return,
                    }
                }
                if !wbuf.is_empty() {
                    if sock.write_all(&wbuf).await.is_err() {
                        return;
                    }
                    wbuf.clear();
                }
                tokio::select! {
                    r = sock.read_buf(&mut rbuf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    p = outgoing.recv() => match p {
                        Some(p) => {
                            write(&p, &mut wbuf);
                            while let Ok(p) = outgoing.try_recv() {
                                write(&p, &mut wbuf);
                            }
                            let last_is_disconnect = matches!(p, Packet::Disconnect(_));
                            if sock.write_all(&wbuf).await.is_err() || last_is_disconnect {
                                return;
                            }
                            wbuf.clear();
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(Device {
            out,
            user: user.into(),
            device: device.into(),
            responses,
            entries,
            window,
            next_pkid: std::sync::atomic::AtomicU32::new(0),
            task,
        })
    }
}

impl Device {
    fn pkid(&self) -> u16 {
        (self.next_pkid.fetch_add(1, Ordering::Relaxed) % 65535 + 1) as u16
    }

    fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        props: Option<PublishProperties>,
    ) -> anyhow::Result<()> {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload, props);
        p.pkid = self.pkid();
        self.out
            .send(Packet::Publish(p))
            .map_err(|_| anyhow::anyhow!("connection closed"))
    }

    async fn request(&mut self, op: Op) -> anyhow::Result<proto::Response> {
        let props = PublishProperties {
            response_topic: Some(courier_chat::topics::inbox(&self.user, &self.device)),
            correlation_data: Some(Bytes::from_static(b"1")),
            ..Default::default()
        };
        let req = proto::Request { op: Some(op) }.encode_to_vec();
        self.window.acquire().await?.forget();
        self.publish(courier_chat::topics::REQUEST, req, Some(props))?;
        let r = tokio::time::timeout(Duration::from_secs(30), self.responses.recv())
            .await
            .context("no response")?
            .context("connection closed")?;
        if let Some(e) = r.error {
            bail!("refused: {}", e.message);
        }
        Ok(r)
    }

    async fn send(&self, conv: &str, to_user: &str, id: u64, body: usize) -> anyhow::Result<()> {
        self.window.acquire().await?.forget();
        let mut b = vec![0u8; body.max(8)];
        b[..8].copy_from_slice(&epoch_ns().to_be_bytes());
        let m = proto::SendMessage {
            conversation: conv.into(),
            to_user: to_user.into(),
            client_msg_id: id.to_string(),
            kind: Some(proto::send_message::Kind::Content(proto::Content {
                r#type: String::new(),
                body: b,
                ..Default::default()
            })),
        };
        self.publish(courier_chat::topics::SEND, m.encode_to_vec(), None)
    }

    async fn close(self) {
        let _ = self.out.send(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )));
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    /// Drops the connection without DISCONNECT (a phone losing its network).
    fn drop_connection(self) {
        self.task.abort();
    }
}

fn written_bytes(pid: Option<u32>) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{}/io", pid?)).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// One sender: where it sends, as a conversation or the other user.
struct Sender {
    device: Device,
    conv: String,
    to_user: String,
}

/// Runs the senders for `flow`, measuring after the warm-up.
async fn drive(senders: Vec<Sender>, flow: Flow, stats: &Arc<Stats>) -> Vec<Device> {
    let per_sender = if flow.rate > 0.0 {
        flow.rate / senders.len() as f64
    } else {
        0.0
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (k, s) in senders.into_iter().enumerate() {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            // Staggered, so the senders are not in phase (one burst of all
            // of them at each tick would measure the burst, not the path).
            let offset = if flow.rate > 0.0 {
                k as f64 / flow.rate
            } else {
                0.0
            };
            let mut next = tokio::time::Instant::now() + Duration::from_secs_f64(offset);
            let mut i = (k as u64) << 32;
            while !stop.load(Ordering::Relaxed) {
                if per_sender > 0.0 {
                    next += Duration::from_secs_f64(1.0 / per_sender);
                    tokio::time::sleep_until(next).await;
                }
                i += 1;
                if s.device
                    .send(&s.conv, &s.to_user, i, flow.body)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            s.device
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(flow.warmup)).await;
    stats.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(flow.duration)).await;
    stats.measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut devices = Vec::new();
    for t in tasks {
        if let Ok(d) = t.await {
            devices.push(d);
        }
    }
    devices
}

/// Drives `senders` for the flow, reports the run (with the broker's disk
/// writes over it), and closes every device.
async fn measure(
    args: &Args,
    scenario: &str,
    extra: serde_json::Value,
    senders: Vec<Sender>,
    others: Vec<Device>,
    flow: Flow,
    stats: &Arc<Stats>,
) {
    let w0 = written_bytes(args.pid);
    let devices = drive(senders, flow, stats).await;
    let w1 = written_bytes(args.pid);
    let written = w0.zip(w1).map(|(a, b)| b - a);
    report(args, scenario, extra, stats, flow.duration, written);
    for d in devices.into_iter().chain(others) {
        d.close().await;
    }
}

fn report(
    args: &Args,
    scenario: &str,
    extra: serde_json::Value,
    stats: &Stats,
    secs: f64,
    written: Option<u64>,
) {
    let h = stats.latency.lock().unwrap();
    let h = h.as_ref().unwrap();
    let accepted = stats.accepted.load(Ordering::Relaxed);
    let mut v = serde_json::json!({
        "scenario": scenario,
        "label": args.label,
        "accepted_per_s": (accepted as f64 / secs).round(),
        "refused": stats.refused.load(Ordering::Relaxed),
        "deliveries_per_s": (stats.deliveries.load(Ordering::Relaxed) as f64 / secs).round(),
        "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": h.max() as f64 / 1000.0,
        "disk_bytes_per_msg": written.map(|w| w.checked_div(accepted).unwrap_or(0)),
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    println!("{v}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut chat = courier_chat::ChatConfig::default();
    chat.tokens.secret_file = Some(args.secret.clone());
    let ctx = Ctx {
        host: args.host.clone(),
        port: args.port,
        tokens: courier_chat::load_tokens(&chat)?,
    };
    // Users unique to this run, so runs on one data directory do not mix.
    let run = format!("r{}x{}", std::process::id(), epoch_ns() % 1_000_000);
    let stats = Stats::new();
    match args.scenario.clone() {
        Scenario::Direct { pairs, flow } => {
            let mut senders = Vec::new();
            let mut receivers = Vec::new();
            for i in 0..pairs {
                let (a, b) = (format!("{run}a{i}"), format!("{run}b{i}"));
                receivers.push(ctx.device(&b, "phone", &stats).await?);
                let d = ctx.device(&a, "phone", &stats).await?;
                senders.push(Sender {
                    device: d,
                    conv: String::new(),
                    to_user: b,
                });
            }
            let extra = serde_json::json!({"pairs": pairs, "rate": flow.rate});
            measure(&args, "direct", extra, senders, receivers, flow, &stats).await;
        }
        Scenario::Group {
            size,
            groups,
            offline,
            flow,
        } => {
            let mut senders = Vec::new();
            let mut online = Vec::new();
            for g in 0..groups {
                let users: Vec<String> = (0..size).map(|m| format!("{run}g{g}m{m}")).collect();
                let offline_n = ((size - 1) as f64 * offline).round() as usize;
                for (m, u) in users.iter().enumerate().skip(1) {
                    let d = ctx.device(u, "phone", &stats).await?;
                    if m <= offline_n {
                        d.close().await;
                    } else {
                        online.push(d);
                    }
                }
                let mut creator = ctx.device(&users[0], "phone", &stats).await?;
                let r = creator
                    .request(Op::CreateGroup(proto::CreateGroup {
                        name: format!("g{g}"),
                        members: users[1..].to_vec(),
                    }))
                    .await?;
                let conv = match r.result {
                    Some(proto::response::Result::Conversation(c)) => {
                        c.conversation.map(|c| c.id).unwrap_or_default()
                    }
                    _ => bail!("no conversation"),
                };
                senders.push(Sender {
                    device: creator,
                    conv,
                    to_user: String::new(),
                });
            }
            let extra = serde_json::json!({"size": size, "groups": groups, "offline": offline, "rate": flow.rate});
            measure(&args, "group", extra, senders, online, flow, &stats).await;
        }
        Scenario::Presence {
            contacts,
            flapping,
            period,
            down,
            duration,
        } => {
            let watcher_id = format!("{run}w");
            let mut watcher = ctx.device(&watcher_id, "phone", &stats).await?;
            let users: Vec<String> = (0..contacts).map(|i| format!("{run}c{i}")).collect();
            let mut devices = Vec::new();
            for (i, u) in users.iter().enumerate() {
                let d = ctx.device(u, "phone", &stats).await?;
                // A direct conversation with the watcher: they may see each other.
                d.send("", &watcher_id, i as u64 + 1, 8).await?;
                devices.push(d);
            }
            watcher
                .request(Op::WatchPresence(proto::WatchPresence {
                    users: users.clone(),
                }))
                .await?;
            stats.measuring.store(true, Ordering::Relaxed);
            let start = Instant::now();
            let end = start + Duration::from_secs_f64(duration);
            let mut flappers = Vec::new();
            for (i, d) in devices.drain(..flapping.min(contacts)).enumerate() {
                let user = users[i].clone();
                let ctx = Ctx {
                    host: ctx.host.clone(),
                    port: ctx.port,
                    tokens: courier_chat::load_tokens(&chat)?,
                };
                let stats = stats.clone();
                // Spread over the period, so they do not flap in step.
                let offset = period * i as f64 / flapping.max(1) as f64;
                flappers.push(tokio::spawn(async move {
                    let mut d = Some(d);
                    tokio::time::sleep(Duration::from_secs_f64(offset)).await;
                    while Instant::now() + Duration::from_secs_f64(down) < end {
                        if let Some(d) = d.take() {
                            d.drop_connection();
                        }
                        tokio::time::sleep(Duration::from_secs_f64(down)).await;
                        d = ctx.device(&user, "phone", &stats).await.ok();
                        tokio::time::sleep(Duration::from_secs_f64(period - down)).await;
                    }
                    if let Some(d) = d {
                        d.close().await;
                    }
                }));
            }
            tokio::time::sleep_until(end.into()).await;
            stats.measuring.store(false, Ordering::Relaxed);
            for f in flappers {
                f.abort();
            }
            let per = stats.presence_per_user.lock().unwrap().clone();
            let flap: Vec<u64> = users[..flapping.min(contacts)]
                .iter()
                .map(|u| per.get(u).copied().unwrap_or(0))
                .collect();
            let stable: u64 = users[flapping.min(contacts)..]
                .iter()
                .map(|u| per.get(u).copied().unwrap_or(0))
                .sum();
            let minutes = duration / 60.0;
            let msgs = stats.presence_msgs.load(Ordering::Relaxed) as f64;
            let bytes = stats.presence_bytes.load(Ordering::Relaxed) as f64;
            let max_flap = flap.iter().copied().max().unwrap_or(0) as f64;
            println!(
                "{}",
                serde_json::json!({
                    "scenario": "presence", "label": args.label,
                    "contacts": contacts, "flapping": flapping, "period_s": period, "down_s": down,
                    "presence_msgs_per_min": (msgs / minutes).round(),
                    "presence_bytes_per_min": (bytes / minutes).round(),
                    "stable_updates": stable,
                    "max_updates_per_flapper_per_min": (max_flap / minutes * 10.0).round() / 10.0,
                    "seconds_per_update_per_flapper": if max_flap > 0.0 { (duration / max_flap * 10.0).round() / 10.0 } else { 0.0 },
                })
            );
            for d in devices {
                d.close().await;
            }
            watcher.close().await;
        }
        Scenario::Flood {
            victim,
            flood,
            duration,
        } => {
            let flood_stats = Stats::new();
            let (va, vb) = (format!("{run}va"), format!("{run}vb"));
            let (fa, fb) = (format!("{run}fa"), format!("{run}fb"));
            let v_recv = ctx.device(&vb, "phone", &stats).await?;
            let v_send = Arc::new(ctx.device(&va, "phone", &stats).await?);
            let f_recv = ctx.device(&fb, "phone", &flood_stats).await?;
            let f_send = Arc::new(ctx.device(&fa, "phone", &flood_stats).await?);
            // The conversations exist before anything is measured.
            v_send.send("", &vb, 1, 8).await?;
            f_send.send("", &fb, 1, 8).await?;
            let (tx_v, rx_v) = (v_send.clone(), vb.clone());
            let victim_task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / victim));
                for id in 2u64.. {
                    tick.tick().await;
                    if tx_v.send("", &rx_v, id, 32).await.is_err() {
                        return;
                    }
                }
            });
            let phase = |stats: &Arc<Stats>| {
                stats.measuring.store(false, Ordering::Relaxed);
                let h = stats.latency.lock().unwrap();
                let p = h
                    .as_ref()
                    .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0);
                let n = h.as_ref().map_or(0, |h| h.len());
                (p, n)
            };
            tokio::time::sleep(Duration::from_secs(2)).await;
            stats.measuring.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs_f64(duration)).await;
            let (alone, n_alone) = phase(&stats);
            if let Some(h) = stats.latency.lock().unwrap().as_mut() {
                h.reset();
            }
            let (tx_f, rx_f) = (f_send.clone(), fb.clone());
            let flood_task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / flood));
                for id in 2u64.. {
                    tick.tick().await;
                    if tx_f.send("", &rx_f, id, 32).await.is_err() {
                        return;
                    }
                }
            });
            flood_stats.measuring.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            stats.measuring.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs_f64(duration)).await;
            let (flooded, n_flooded) = phase(&stats);
            flood_stats.measuring.store(false, Ordering::Relaxed);
            flood_task.abort();
            victim_task.abort();
            println!(
                "{}",
                serde_json::json!({
                    "scenario": "flood", "label": args.label,
                    "victim_rate": victim, "flood_rate": flood,
                    "victim_p99_ms_alone": alone, "victim_p99_ms_flooded": flooded,
                    "ratio": if alone > 0.0 { (flooded / alone * 100.0).round() / 100.0 } else { 0.0 },
                    "victim_deliveries": [n_alone, n_flooded],
                    "flood_accepted": flood_stats.accepted.load(Ordering::Relaxed),
                    "flood_refused": flood_stats.refused.load(Ordering::Relaxed),
                })
            );
            drop((v_recv, f_recv));
        }
        Scenario::Catchup { messages } => {
            let (a, b) = (format!("{run}a"), format!("{run}b"));
            ctx.device(&b, "phone", &stats).await?.close().await;
            let sender = ctx.device(&a, "phone", &stats).await?;
            stats.measuring.store(true, Ordering::Relaxed);
            for i in 0..messages as u64 {
                sender.send("", &b, i + 1, 32).await?;
            }
            let t = Instant::now();
            while stats.accepted.load(Ordering::Relaxed) < messages as u64 {
                if t.elapsed() > Duration::from_secs(120) {
                    bail!("sends not acknowledged");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stats.measuring.store(false, Ordering::Relaxed);
            // The conversation's creation is one more entry.
            let want = messages as u64 + 1;
            let start = Instant::now();
            let receiver = ctx.device(&b, "phone", &stats).await?;
            while receiver.entries.load(Ordering::Relaxed) < want {
                if start.elapsed() > Duration::from_secs(120) {
                    bail!("catch-up incomplete");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"scenario": "catchup", "label": args.label, "messages": messages, "catchup_s": (secs * 1000.0).round() / 1000.0})
            );
            receiver.close().await;
            sender.close().await;
        }
    }
    Ok(())
}
