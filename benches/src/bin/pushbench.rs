//! The push bridge against its local fakes (no Apple, no Google here):
//!
//! - `throughput`: APNs pushes per second over one HTTP/2 connection to
//!   the APNs fake (client and fake on the same 2 cores), with the send
//!   latency.
//! - `group`: a group of 100 members whose phones sleep (registered, then
//!   disconnected); one member sends 1,000 messages into it; how many
//!   pushes reach the fake, and the most any device got in one coalescing
//!   window.
//!
//! `cargo run --release -p courier-benches --bin pushbench -- throughput|group`
//! One JSON line per run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use courier_chat::proto::{self, register_push::Platform, request::Op};
use prost::Message as _;
use push_bridge::apns::ApnsClient;
use push_bridge::fakes::apns::FakeApns;
use push_bridge::{Notification, Outcome, Target};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

#[derive(Parser)]
struct Args {
    /// `throughput` or `group`.
    scenario: String,
    /// throughput: pushes to send.
    #[arg(long, default_value_t = 20_000)]
    pushes: usize,
    /// throughput: pushes in flight at once (HTTP/2 streams).
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// group: members whose phones sleep.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// group: messages sent into the group.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// group: messages per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
}

const APP: &str = "com.example.bench";

fn token(i: usize) -> String {
    format!("{i:064x}")
}

async fn throughput(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = FakeApns::start(dir.path(), APP, 0).await?;
    let client = Arc::new(ApnsClient::new(&fake.app)?);
    let target = Target::Apns {
        topic: APP.into(),
        sandbox: false,
        token: token(1),
    };
    // Warm the connection.
    let n = |seq: u64| Notification::Message {
        conversation: "g0123456789abcdef".into(),
        seq,
        badge: 1,
        mention: false,
    };
    anyhow::ensure!(client.send(&target, &n(0)).await == Outcome::Delivered);
    let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    for i in 0..args.pushes {
        let permit = limit.clone().acquire_owned().await?;
        let (client, target) = (client.clone(), target.clone());
        let note = n(i as u64 + 1);
        tasks.spawn(async move {
            let t0 = Instant::now();
            let o = client.send(&target, &note).await;
            drop(permit);
            (o, t0.elapsed())
        });
        while let Some(r) = tasks.try_join_next() {
            let (o, took) = r?;
            anyhow::ensure!(o == Outcome::Delivered, "{o:?}");
            hist.record(took.as_micros().max(1) as u64)?;
        }
    }
    while let Some(r) = tasks.join_next().await {
        let (o, took) = r?;
        anyhow::ensure!(o == Outcome::Delivered, "{o:?}");
        hist.record(took.as_micros().max(1) as u64)?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "scenario": "push-throughput",
            "pushes": args.pushes,
            "concurrency": args.concurrency,
            "connections": fake.connections(),
            "pushes_per_s": (args.pushes as f64 / secs).round(),
            "p50_ms": hist.value_at_quantile(0.5) as f64 / 1000.0,
            "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        })
    );
    Ok(())
}

/// Drives `el` until a PUBACK; the packets before it are returned.
async fn until_puback(el: &mut EventLoop) -> anyhow::Result<Vec<Packet>> {
    let mut seen = Vec::new();
    loop {
        match el.poll().await? {
            Event::Incoming(Packet::PubAck(_)) => return Ok(seen),
            Event::Incoming(p) => seen.push(p),
            Event::Outgoing(_) => {}
        }
    }
}

fn options(port: u16, tokens: &courier_chat::Tokens, user: &str) -> anyhow::Result<MqttOptions> {
    let mut o = MqttOptions::new(
        courier_chat::topics::client_id(user, "phone"),
        "127.0.0.1",
        port,
    );
    o.set_credentials(
        "",
        tokens.mint(user, "phone", courier::message::unix_now(), 3600)?,
    );
    o.set_keep_alive(Duration::from_secs(60));
    Ok(o)
}

async fn group(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = FakeApns::start(dir.path(), APP, 0).await?;
    let mut config = courier::Config {
        data_dir: dir.path().join("data"),
        ..courier::Config::default()
    };
    config.listeners[0].bind = "127.0.0.1:0".into();
    let mut chat = courier_chat::ChatConfig::default();
    chat.tokens.secret_file = Some(dir.path().join("secret"));
    chat.rate_limits = courier_chat::RateLimitConfig::UNLIMITED;
    chat.push.apns = vec![fake.app.clone()];
    let (due_ms, window_ms) = (chat.push.due_ms, chat.push.window_ms);
    let running = courier_chat::start(config, chat).await?;
    let port = running
        .server
        .addr(courier::config::ListenerKind::Tcp)
        .ok_or_else(|| anyhow::anyhow!("no listener"))?
        .port();
    let tokens = running.chat.tokens();

    // The members register a push token and fall asleep.
    let mut members = Vec::new();
    for i in 0..args.members {
        let user = format!("m{i}");
        let (c, mut el) = AsyncClient::new(options(port, tokens, &user)?, 10);
        let req = proto::Request {
            op: Some(Op::RegisterPush(proto::RegisterPush {
                platform: Platform::Apns as i32,
                token: token(i),
                app: APP.into(),
                sandbox: false,
            })),
        };
        c.publish(
            courier_chat::topics::REQUEST,
            QoS::AtLeastOnce,
            false,
            req.encode_to_vec(),
        )
        .await?;
        until_puback(&mut el).await?;
        c.disconnect().await?;
        while el.poll().await.is_ok() {}
        members.push(user);
    }

    // The sender makes the group, then writes into it at the rate.
    let (alice, mut el) = AsyncClient::new(options(port, tokens, "sender")?, 1000);
    let inbox = courier_chat::topics::inbox("sender", "phone");
    alice.subscribe(&inbox, QoS::AtLeastOnce).await?;
    let create = proto::Request {
        op: Some(Op::CreateGroup(proto::CreateGroup {
            name: "bench".into(),
            members: members.clone(),
        })),
    };
    let props = PublishProperties {
        response_topic: Some(inbox.clone()),
        correlation_data: Some(bytes::Bytes::from_static(b"1")),
        ..Default::default()
    };
    alice
        .publish_with_properties(
            courier_chat::topics::REQUEST,
            QoS::AtLeastOnce,
            false,
            create.encode_to_vec(),
            props,
        )
        .await?;
    let conv = loop {
        if let Event::Incoming(Packet::Publish(p)) = el.poll().await? {
            if let Ok(proto::Down {
                kind: Some(proto::down::Kind::Response(r)),
            }) = proto::Down::decode(p.payload)
            {
                match r.result {
                    Some(proto::response::Result::Conversation(c)) => {
                        break c.conversation.map(|c| c.id).unwrap_or_default()
                    }
                    other => anyhow::bail!("CreateGroup: {other:?} {:?}", r.error),
                }
            }
        }
    };
    let drive = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let started = Instant::now();
    let every = Duration::from_micros(1_000_000 / args.rate.max(1));
    for i in 0..args.messages {
        let send = proto::SendMessage {
            conversation: conv.clone(),
            client_msg_id: i.to_string(),
            kind: Some(proto::send_message::Kind::Content(proto::Content {
                r#type: "text".into(),
                body: format!("message {i}").into_bytes(),
                ..Default::default()
            })),
            ..Default::default()
        };
        alice
            .publish(
                courier_chat::topics::SEND,
                QoS::AtLeastOnce,
                false,
                send.encode_to_vec(),
            )
            .await?;
        tokio::time::sleep_until((started + every * (i as u32 + 1)).into()).await;
    }
    let sending = started.elapsed();
    // Everything due has gone once a window after the last message.
    tokio::time::sleep(Duration::from_millis(due_ms + window_ms + 2000)).await;
    let got = fake.received();
    let ok: Vec<_> = got.iter().filter(|r| r.status == 200).collect();
    let mut per_device: std::collections::HashMap<&str, Vec<u64>> = Default::default();
    for r in &ok {
        per_device
            .entry(r.token.as_str())
            .or_default()
            .push(r.at_ms);
    }
    // The most pushes one device got within any window.
    let most_in_window = per_device
        .values()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    ts.iter()
                        .filter(|u| **u >= *t && **u < t + window_ms)
                        .count()
                })
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "scenario": "push-group",
            "members_asleep": args.members,
            "messages": args.messages,
            "sending_s": sending.as_secs_f64(),
            "window_ms": window_ms,
            "pushes": ok.len(),
            "pushes_per_1000_messages": (ok.len() as f64 * 1000.0 / args.messages as f64).round(),
            "devices_pushed": per_device.len(),
            "most_pushes_for_one_device_in_a_window": most_in_window,
            "refused_by_fake": got.len() - ok.len(),
        })
    );
    drive.abort();
    let mut server = running.server;
    server.shutdown().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.scenario.as_str() {
        "throughput" => throughput(&args).await,
        "group" => group(&args).await,
        other => anyhow::bail!("unknown scenario {other:?}: throughput or group"),
    }
}
