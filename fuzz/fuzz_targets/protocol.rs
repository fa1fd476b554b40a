//! The protocol core alone, deterministic: no socket, no shell. The input
//! is a script of steps against one connection's [`Protocol`]: client
//! bytes, the clock moving on, the disk catching up, the output taken (and
//! its QoS 1 deliveries acknowledged), a look for a reason to leave.
//! Sessions persist across inputs (four client ids), so one input's
//! queued messages and subscriptions meet the next. Nothing may panic,
//! and everything the core sends must decode.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use courier::codec::{self, Connect, ConnectProperties, Packet, PubAck, QoS, Version};
use courier::connection::{Close, Leave, Now, Protocol};
use courier::{Broker, Config};
use libfuzzer_sys::fuzz_target;
use rumqttc::mqttbytes::v4;

struct World {
    rt: tokio::runtime::Runtime,
    broker: Arc<Broker>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Acknowledgements wait for real fsyncs (the held-ack path is part
        // of the core), on tmpfs where there is one, so they are cheap.
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("courier-fuzz-core-{}", std::process::id()));
        let mut config = Config {
            data_dir: dir,
            ..Config::default()
        };
        // Small limits, so the input reaches them.
        config.limits.max_inflight = 4;
        config.limits.max_queued_messages = 16;
        let broker = rt.block_on(async { Broker::open(config).unwrap() });
        World { rt, broker }
    })
}

/// Decodes what the core sent, as a client of `version` would (the
/// broker's own codec reads only what clients send), and returns the
/// packet ids of its QoS 1 deliveries.
fn qos1_deliveries(version: Version, mut out: BytesMut) -> Vec<u16> {
    let mut ids = Vec::new();
    while !out.is_empty() {
        match version {
            Version::V5 => match codec::decode(version, &mut out, usize::MAX) {
                Ok(Some(Packet::Publish(m))) if m.qos == QoS::AtLeastOnce => ids.push(m.pkid),
                Ok(Some(_)) => {}
                other => panic!("the core sent bytes that do not decode: {other:?}"),
            },
            Version::V4 => match v4::Packet::read(&mut out, usize::MAX) {
                Ok(v4::Packet::Publish(m)) if m.qos == rumqttc::QoS::AtLeastOnce => {
                    ids.push(m.pkid)
                }
                Ok(_) => {}
                Err(e) => panic!("the core sent 3.1.1 bytes that do not decode: {e:?}"),
            },
        }
    }
    ids
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut script)) = data.split_first() else {
        return;
    };
    let w = world();
    let broker = w.broker.clone();
    w.rt.block_on(async move {
        let version = if flags & 1 == 0 {
            Version::V4
        } else {
            Version::V5
        };
        let connect = Connect {
            keep_alive: 10,
            client_id: format!("core-{}", (flags >> 2) & 3),
            clean_start: flags & 2 != 0,
            properties: (version == Version::V5).then(|| ConnectProperties {
                session_expiry_interval: Some(if flags & 16 != 0 { 60 } else { 0 }),
                receive_maximum: Some(2),
                topic_alias_max: Some(2),
                ..ConnectProperties::new()
            }),
        };
        let peer = "127.0.0.1:1".parse().unwrap();
        let start = Now::of(&broker);
        let mut now = start;
        let Ok(mut p) = Protocol::open(
            broker.clone(),
            version,
            connect,
            None,
            None,
            BytesMut::new(),
            peer,
            now,
        )
        .await
        else {
            return;
        };
        let mut close = None;
        while let Some((&op, rest)) = script.split_first() {
            script = rest;
            let step = match op % 5 {
                0 => {
                    let n = (op as usize / 5).min(script.len());
                    let (bytes, rest) = script.split_at(n);
                    script = rest;
                    p.receive(bytes, now)
                }
                1 => {
                    let secs = u64::from(op / 5);
                    now = Now {
                        unix_secs: now.unix_secs + secs,
                        tick_ms: now.tick_ms + secs * 1000,
                    };
                    p.poll_deliveries(now);
                    Ok(())
                }
                2 if p.needs_durable() => p.durable_done(broker.durable().await, now),
                2 => Ok(()),
                3 => {
                    // What the core sends must decode; QoS 1 deliveries
                    // are acknowledged as a client would.
                    let acks = match p.poll_transmit() {
                        Some(out) => qos1_deliveries(p.version(), out),
                        None => Vec::new(),
                    };
                    let mut r = Ok(());
                    for pkid in acks {
                        let mut b = BytesMut::new();
                        let ack = Packet::PubAck(PubAck::new(pkid, None));
                        codec::encode(p.version(), &ack, &mut b).unwrap();
                        r = r.and(p.receive(&b, now));
                    }
                    r
                }
                _ => match p.poll_leave() {
                    None => Ok(()),
                    Some(Leave::Close(c)) => Err(c),
                    Some(Leave::TakenOver(_)) => unreachable!("one connection per client id"),
                },
            };
            if let Err(c) = step {
                close = Some(c);
                break;
            }
        }
        // The connection ends either way, so the next input can resume
        // the session.
        let close = close.unwrap_or_else(Close::dropped);
        let _ = p.closing_packet(close.reason(), None);
        p.end(&close);
    });
});
