//! Load generator for any MQTT broker at host:port. Prints one JSON line per
//! run. Every loop is bounded in count or time.
//!
//! loadgen --port 1883 --label courier pairs --pairs 50 --payload 64 --duration 10
//! loadgen --port 1883 pairs --rate 10000          # fixed total rate
//! loadgen --port 1883 fanout --subs 100 --rate 500 # 500 msg/s x 100 = 50k deliveries/s
//! loadgen --port 1883 fanin --pubs 50
//! loadgen --port 1883 --pid $(pidof courier) conns --count 10000
//! loadgen --port 1883 offline --count 10000
//! loadgen --port 1883 fill --sessions 100000 --messages 10   # for start-up

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use clap::{Parser, Subcommand};
use courier_benches::{now_ns, parse, payload, Tracker};
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Name of the broker under test, copied into the output.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Broker process id, to read its memory from /proc.
    #[arg(long)]
    pid: Option<u32>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(clap::Args, Clone)]
struct Flow {
    /// Payload bytes (at least 20: stream id, sequence, timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Total publish rate in messages/s; omitted: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Subscribers keep persistent sessions (clean session 0), so a durable
    /// broker must write every delivery to disk. Removed after the run.
    #[arg(long)]
    persistent: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// N publisher/subscriber pairs, one topic each.
    Pairs {
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        #[command(flatten)]
        flow: Flow,
    },
    /// One publisher, M subscribers on its topic.
    Fanout {
        #[arg(long, default_value_t = 100)]
        subs: usize,
        #[command(flatten)]
        flow: Flow,
    },
    /// N publishers, one subscriber.
    Fanin {
        #[arg(long, default_value_t = 50)]
        pubs: usize,
        #[command(flatten)]
        flow: Flow,
    },
    /// C idle connections: connect rate and broker memory per connection.
    Conns {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Seconds to hold them open before measuring growth.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
        /// Connections opened concurrently.
        #[arg(long, default_value_t = 200)]
        parallel: usize,
        /// If set, every connection subscribes and receives one QoS 0
        /// message of this many bytes before the hold (memory after
        /// traffic, not just after CONNECT).
        #[arg(long)]
        message_bytes: Option<usize>,
    },
    /// Leaves N offline persistent sessions with M QoS 1 messages queued
    /// each (then measure the broker's start-up on that store).
    Fill {
        #[arg(long, default_value_t = 100_000)]
        sessions: usize,
        #[arg(long, default_value_t = 10)]
        messages: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Connections opened concurrently.
        #[arg(long, default_value_t = 200)]
        parallel: usize,
    },
    /// A persistent session away while N messages were queued reconnects.
    Offline {
        #[arg(long, default_value_t = 10000)]
        count: u64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Seconds to stay away after the last acknowledgement (a broker
        /// may move an offline queue to disk meanwhile).
        #[arg(long, default_value_t = 0.0)]
        away: f64,
    },
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{:x}", t & 0xffff_ffff)
}

fn options(cli: &Cli, id: String) -> MqttOptions {
    let mut o = MqttOptions::new(id, cli.host.clone(), cli.port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Polls until CONNACK (and SUBACK when `subscribed`), within 10 s.
async fn ready(el: &mut EventLoop, want_suback: bool) -> anyhow::Result<()> {
    let mut got_connack = false;
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = el.poll() => match ev? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    got_connack = true;
                    if !want_suback { return Ok(()); }
                }
                Event::Incoming(Packet::SubAck(_)) if got_connack => return Ok(()),
                _ => {}
            },
            _ = &mut deadline => bail!("no CONNACK/SUBACK within 10 s"),
        }
    }
}

/// What one subscriber saw.
struct SubResult {
    trackers: Vec<Tracker>,
    hist: Histogram<u64>,
    in_window: u64,
}

/// A generic flow: publishers on topics, subscribers on filters.
struct FlowSpec {
    scenario: &'static str,
    pubs: Vec<String>,
    /// Filter and the publisher streams it receives.
    subs: Vec<(String, Vec<usize>)>,
}

async fn run_flow(cli: &Cli, spec: FlowSpec, flow: &Flow) -> anyhow::Result<serde_json::Value> {
    let q = qos(flow.qos);
    let id = run_id();
    let npubs = spec.pubs.len();
    let warm = Duration::from_secs_f64(flow.warmup);
    let dur = Duration::from_secs_f64(flow.duration);

    // Subscribers first, each ready before anyone publishes.
    let unique: Arc<Vec<AtomicU64>> =
        Arc::new((0..spec.subs.len()).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let window = Arc::new((AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)));
    let mut sub_tasks = Vec::new();
    for (i, (filter, _)) in spec.subs.iter().enumerate() {
        let mut o = options(cli, format!("lg-{id}-s{i}"));
        o.set_clean_session(!flow.persistent);
        let (client, mut el) = AsyncClient::new(o, 10);
        client.subscribe(filter.clone(), q).await?;
        ready(&mut el, true).await.context("subscriber")?;
        let (unique, stop, window) = (unique.clone(), stop.clone(), window.clone());
        sub_tasks.push(tokio::spawn(async move {
            let _client = client;
            let mut r = SubResult {
                trackers: vec![Tracker::default(); npubs],
                hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
                in_window: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                let ev = tokio::time::timeout(Duration::from_millis(100), el.poll()).await;
                let Ok(ev) = ev else { continue };
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let now = now_ns();
                        let Some((stream, seq, sent)) = parse(&p.payload) else {
                            continue;
                        };
                        let Some(t) = r.trackers.get_mut(stream as usize) else {
                            continue;
                        };
                        let before = t.unique;
                        t.record(seq);
                        if t.unique > before {
                            unique[i].fetch_add(1, Ordering::Relaxed);
                        }
                        let (from, to) = (
                            window.0.load(Ordering::Relaxed),
                            window.1.load(Ordering::Relaxed),
                        );
                        if now >= from && now < to {
                            r.in_window += 1;
                            let _ = r.hist.record(now.saturating_sub(sent) / 1000);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            r
        }));
    }

    // Publishers.
    let start = now_ns();
    let from = start + warm.as_nanos() as u64;
    let to = from + dur.as_nanos() as u64;
    window.0.store(from, Ordering::Relaxed);
    window.1.store(to, Ordering::Relaxed);
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..npubs).map(|_| AtomicU64::new(0)).collect());
    let mut pub_tasks = Vec::new();
    for (p, topic) in spec.pubs.iter().enumerate() {
        let (client, mut el) = AsyncClient::new(options(cli, format!("lg-{id}-p{p}")), 10);
        ready(&mut el, false).await.context("publisher")?;
        let acked = acked.clone();
        let poller = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                        acked[p].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let topic = topic.clone();
        let per_pub = flow.rate.map(|r| r / npubs as f64);
        let size = flow.payload;
        pub_tasks.push(tokio::spawn(async move {
            let mut tick = per_pub.map(|r| {
                let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                i
            });
            let mut seq = 0u64;
            while now_ns() < to {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if client
                    .publish(topic.clone(), q, false, payload(p as u32, seq, size))
                    .await
                    .is_err()
                {
                    break;
                }
                seq += 1;
            }
            (client, poller, seq)
        }));
    }
    let mut sent = vec![0u64; npubs];
    let mut clients = Vec::new();
    for (p, t) in pub_tasks.into_iter().enumerate() {
        let (c, poller, n) = t.await?;
        sent[p] = n;
        clients.push((c, poller));
    }
    // Drain: bounded wait for acknowledgements and deliveries.
    let expected: Vec<u64> = spec
        .subs
        .iter()
        .map(|(_, streams)| streams.iter().map(|&s| sent[s]).sum())
        .collect();
    let drain_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < drain_until {
        let acks_done =
            q == QoS::AtMostOnce || (0..npubs).all(|p| acked[p].load(Ordering::Relaxed) >= sent[p]);
        let subs_done = expected
            .iter()
            .enumerate()
            .all(|(i, e)| unique[i].load(Ordering::Relaxed) >= *e);
        if acks_done && subs_done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for (c, poller) in clients {
        let _ = c.disconnect().await;
        poller.abort();
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut delivered, mut dups, mut reordered, mut in_window) = (0u64, 0u64, 0u64, 0u64);
    for t in sub_tasks {
        let r = t.await?;
        hist.add(&r.hist)?;
        in_window += r.in_window;
        for tr in &r.trackers {
            delivered += tr.unique;
            dups += tr.duplicates;
            reordered += tr.reordered;
        }
    }
    if flow.persistent {
        // Connecting with clean session 1 discards each persistent session.
        for i in 0..spec.subs.len() {
            let (c, mut el) = AsyncClient::new(options(cli, format!("lg-{id}-s{i}")), 10);
            if ready(&mut el, false).await.is_ok() {
                let _ = c.disconnect().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while el.poll().await.is_ok() {}
                })
                .await;
            }
        }
    }
    let acked_total: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    let expected_total: u64 = expected.iter().sum();
    // Lost: acknowledged (QoS>0) or sent (QoS 0) messages never delivered.
    let lost = expected_total.saturating_sub(delivered);
    Ok(json!({
        "scenario": spec.scenario,
        "broker": cli.label,
        "publishers": npubs,
        "subscribers": spec.subs.len(),
        "payload": flow.payload,
        "qos": flow.qos,
        "persistent": flow.persistent,
        "rate": flow.rate,
        "duration_s": flow.duration,
        "sent": sent.iter().sum::<u64>(),
        // Fairness: in a closed loop each publisher sends as fast as it is
        // served, so the spread of per-stream counts shows uneven service.
        "sent_min_stream": sent.iter().min(),
        "sent_max_stream": sent.iter().max(),
        "acked": acked_total,
        "delivered": delivered,
        "lost": lost,
        "duplicates": dups,
        "reordered": reordered,
        "deliveries_per_s": (in_window as f64 / flow.duration).round(),
        "p50_ms": hist.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "p999_ms": hist.value_at_quantile(0.999) as f64 / 1000.0,
        "max_ms": hist.max() as f64 / 1000.0,
    }))
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn idle_conn(
    host: &str,
    port: u16,
    id: String,
    subscribe: Option<String>,
) -> anyhow::Result<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect((host, port)).await?;
    let mut c = rumqttc::mqttbytes::v4::Connect::new(id);
    c.keep_alive = 60;
    let mut b = BytesMut::new();
    c.write(&mut b)?;
    s.write_all(&b).await?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut ack)).await??;
    if ack[0] != 0x20 || ack[3] != 0 {
        bail!("connection refused: {ack:?}");
    }
    if let Some(topic) = subscribe {
        let mut b = BytesMut::new();
        let mut sub = rumqttc::mqttbytes::v4::Subscribe::new(topic, QoS::AtMostOnce);
        sub.pkid = 1;
        sub.write(&mut b)?;
        s.write_all(&b).await?;
        let mut suback = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut suback)).await??;
        if suback[0] != 0x90 || suback[4] != 0 {
            bail!("subscription refused: {suback:?}");
        }
    }
    Ok(s)
}

async fn run_conns(
    cli: &Cli,
    count: usize,
    hold: f64,
    parallel: usize,
    message_bytes: Option<usize>,
) -> anyhow::Result<serde_json::Value> {
    let id = run_id();
    let topic = format!("bench/{id}/all");
    let sub = message_bytes.map(|_| topic.clone());
    let rss0 = cli.pid.and_then(rss_kb);
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let permit = sem.clone().acquire_owned().await?;
        let host = cli.host.clone();
        let port = cli.port;
        let cid = format!("lg-{id}-c{i}");
        let sub = sub.clone();
        tasks.push(tokio::spawn(async move {
            let r = idle_conn(&host, port, cid, sub).await;
            drop(permit);
            r
        }));
    }
    let mut socks = Vec::with_capacity(count);
    let mut failed = 0usize;
    for t in tasks {
        match t.await? {
            Ok(s) => socks.push(s),
            Err(_) => failed += 1,
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    if let Some(n) = message_bytes {
        broadcast_once(cli, &topic, n, &mut socks).await?;
    }
    let rss1 = cli.pid.and_then(rss_kb);
    // Hold them open (keep-alive 60 s: a PINGREQ each if holding long).
    let half = Duration::from_secs_f64(hold / 2.0);
    tokio::time::sleep(half).await;
    if hold > 45.0 {
        for s in socks.iter_mut() {
            let _ = s.write_all(&[0xC0, 0x00]).await;
        }
    }
    tokio::time::sleep(half).await;
    let rss2 = cli.pid.and_then(rss_kb);
    let ok = socks.len();
    drop(socks);
    let per_conn = match (rss0, rss1) {
        (Some(a), Some(b)) if ok > 0 => Some((b.saturating_sub(a) * 1024) as f64 / ok as f64),
        _ => None,
    };
    Ok(json!({
        "scenario": "conns",
        "broker": cli.label,
        "requested": count,
        "connected": ok,
        "failed": failed,
        "connects_per_s": (ok as f64 / connect_s).round(),
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "rss_after_hold_kb": rss2,
        "bytes_per_conn": per_conn.map(|b| b.round()),
        "hold_s": hold,
        "message_bytes": message_bytes,
    }))
}

/// Publishes one QoS 0 message of `n` bytes to `topic` and reads it on
/// every socket (all subscribed to it).
async fn broadcast_once(
    cli: &Cli,
    topic: &str,
    n: usize,
    socks: &mut [tokio::net::TcpStream],
) -> anyhow::Result<()> {
    let mut p = BytesMut::new();
    rumqttc::mqttbytes::v4::Publish::new(topic, QoS::AtMostOnce, vec![0u8; n]).write(&mut p)?;
    let mut publ = tokio::net::TcpStream::connect((cli.host.as_str(), cli.port)).await?;
    let mut c = BytesMut::new();
    rumqttc::mqttbytes::v4::Connect::new(format!("{topic}-pub")).write(&mut c)?;
    publ.write_all(&c).await?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), publ.read_exact(&mut ack)).await??;
    publ.write_all(&p).await?;
    // Each subscriber gets the same bytes: read exactly that many.
    let mut buf = vec![0u8; p.len()];
    for s in socks.iter_mut() {
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await??;
    }
    Ok(())
}

async fn run_offline(
    cli: &Cli,
    count: u64,
    size: usize,
    away: f64,
) -> anyhow::Result<serde_json::Value> {
    let id = run_id();
    let topic = format!("bench/{id}/offline");
    let mut o = options(cli, format!("lg-{id}-away"));
    o.set_clean_session(false);
    {
        let (c, mut el) = AsyncClient::new(o.clone(), 10);
        c.subscribe(topic.clone(), QoS::AtLeastOnce).await?;
        ready(&mut el, true).await?;
        c.disconnect().await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while el.poll().await.is_ok() {}
        })
        .await;
    }
    let (publ, mut pel) = AsyncClient::new(options(cli, format!("lg-{id}-pub")), 100);
    ready(&mut pel, false).await?;
    let t_pub = Instant::now();
    let sender = {
        let topic = topic.clone();
        tokio::spawn(async move {
            for seq in 0..count {
                if publ
                    .publish(
                        topic.clone(),
                        QoS::AtLeastOnce,
                        false,
                        payload(0, seq, size),
                    )
                    .await
                    .is_err()
                {
                    break;
                }
            }
            publ
        })
    };
    let mut acks = 0;
    tokio::time::timeout(Duration::from_secs(120), async {
        while acks < count {
            if let Event::Incoming(Packet::PubAck(_)) = pel.poll().await? {
                acks += 1;
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("acknowledgements")??;
    let publish_s = t_pub.elapsed().as_secs_f64();
    let _ = sender.await?.disconnect().await;
    tokio::time::sleep(Duration::from_secs_f64(away)).await;

    let t0 = Instant::now();
    let (_c, mut el) = AsyncClient::new(o, 10);
    let mut t = Tracker::default();
    let mut first_ms = None;
    let mut last = t0;
    // A broker that dropped part of the queue never sends the rest: stop
    // after 3 s without a message and report what arrived.
    loop {
        if t.unique >= count {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(3), el.poll()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(e).context("offline delivery"),
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                first_ms.get_or_insert(t0.elapsed().as_secs_f64() * 1000.0);
                last = Instant::now();
                if let Some((_, seq, _)) = parse(&p.payload) {
                    t.record(seq);
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    let drain_s = (last - t0).as_secs_f64();
    Ok(json!({
        "scenario": "offline",
        "broker": cli.label,
        "count": count,
        "payload": size,
        "publish_s": publish_s,
        "away_s": away,
        "first_message_ms": first_ms,
        "drain_s": drain_s,
        "drain_msgs_per_s": (count as f64 / drain_s).round(),
        "lost": count - t.unique,
        "duplicates": t.duplicates,
        "reordered": t.reordered,
    }))
}

/// Connects `fill-{i}` with a persistent session, subscribes to
/// `fill/{i}` at QoS 1 and leaves with DISCONNECT.
async fn subscribe_and_leave(host: &str, port: u16, i: usize) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect((host, port)).await?;
    let mut c = rumqttc::mqttbytes::v4::Connect::new(format!("fill-{i}"));
    c.keep_alive = 60;
    c.clean_session = false;
    let mut b = BytesMut::new();
    c.write(&mut b)?;
    let mut sub = rumqttc::mqttbytes::v4::Subscribe::new(format!("fill/{i}"), QoS::AtLeastOnce);
    sub.pkid = 1;
    sub.write(&mut b)?;
    s.write_all(&b).await?;
    let mut acks = [0u8; 9]; // CONNACK (4) + SUBACK (5)
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut acks)).await??;
    if acks[0] != 0x20 || acks[3] != 0 || acks[4] != 0x90 || acks[8] > 2 {
        bail!("session {i} refused: {acks:?}");
    }
    s.write_all(&[0xE0, 0]).await?;
    Ok(())
}

async fn run_fill(
    cli: &Cli,
    sessions: usize,
    messages: usize,
    size: usize,
    parallel: usize,
) -> anyhow::Result<serde_json::Value> {
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let permit = sem.clone().acquire_owned().await?;
        let host = cli.host.clone();
        let port = cli.port;
        tasks.push(tokio::spawn(async move {
            let r = subscribe_and_leave(&host, port, i).await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await??;
    }
    let sessions_s = t0.elapsed().as_secs_f64();
    // Four publishers over disjoint sessions, each pipelining QoS 1.
    let t1 = Instant::now();
    let publishers = 4;
    let mut pubs = Vec::new();
    for p in 0..publishers {
        let (c, mut el) = AsyncClient::new(options(cli, format!("fill-pub-{p}")), 1000);
        ready(&mut el, false).await?;
        let mine: Vec<usize> = (p..sessions).step_by(publishers).collect();
        let total = (mine.len() * messages) as u64;
        let sender = tokio::spawn(async move {
            for seq in 0..messages as u64 {
                for &i in &mine {
                    let body = payload(i as u32, seq, size);
                    if c.publish(format!("fill/{i}"), QoS::AtLeastOnce, false, body)
                        .await
                        .is_err()
                    {
                        return c;
                    }
                }
            }
            c
        });
        pubs.push(tokio::spawn(async move {
            let mut acks = 0u64;
            while acks < total {
                if let Event::Incoming(Packet::PubAck(_)) = el.poll().await? {
                    acks += 1;
                }
            }
            let _ = sender.await?.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while el.poll().await.is_ok() {}
            })
            .await;
            anyhow::Ok(acks)
        }));
    }
    let mut acked = 0;
    for p in pubs {
        acked += tokio::time::timeout(Duration::from_secs(600), p)
            .await
            .context("acknowledgements")???;
    }
    Ok(json!({
        "scenario": "fill",
        "broker": cli.label,
        "sessions": sessions,
        "messages_each": messages,
        "payload": size,
        "sessions_s": sessions_s,
        "publish_s": t1.elapsed().as_secs_f64(),
        "acknowledged": acked,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let id = run_id();
    let out = match &cli.scenario {
        Scenario::Pairs { pairs, flow } => {
            let spec = FlowSpec {
                scenario: "pairs",
                pubs: (0..*pairs)
                    .map(|i| format!("bench/{id}/pair/{i}"))
                    .collect(),
                subs: (0..*pairs)
                    .map(|i| (format!("bench/{id}/pair/{i}"), vec![i]))
                    .collect(),
            };
            run_flow(&cli, spec, flow).await?
        }
        Scenario::Fanout { subs, flow } => {
            let spec = FlowSpec {
                scenario: "fanout",
                pubs: vec![format!("bench/{id}/fan")],
                subs: (0..*subs)
                    .map(|_| (format!("bench/{id}/fan"), vec![0]))
                    .collect(),
            };
            run_flow(&cli, spec, flow).await?
        }
        Scenario::Fanin { pubs, flow } => {
            let spec = FlowSpec {
                scenario: "fanin",
                pubs: (0..*pubs).map(|i| format!("bench/{id}/in/{i}")).collect(),
                subs: vec![(format!("bench/{id}/in/+"), (0..*pubs).collect())],
            };
            run_flow(&cli, spec, flow).await?
        }
        Scenario::Conns {
            count,
            hold,
            parallel,
            message_bytes,
        } => run_conns(&cli, *count, *hold, *parallel, *message_bytes).await?,
        Scenario::Offline {
            count,
            payload,
            away,
        } => run_offline(&cli, *count, *payload, *away).await?,
        Scenario::Fill {
            sessions,
            messages,
            payload,
            parallel,
        } => run_fill(&cli, *sessions, *messages, *payload, *parallel).await?,
    };
    println!("{out}");
    Ok(())
}
