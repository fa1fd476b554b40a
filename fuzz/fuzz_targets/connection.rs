//! Whole connections on arbitrary input: the bytes a client might send,
//! fed to a real broker (store on disk, one per process) through an
//! in-memory stream. Nothing a peer sends may panic the broker or hang the
//! connection.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use courier::connection::{serve, Stream};
use courier::hooks::SubscribeDecision;
use courier::namespace::{AckCode, Inbound, Namespace, Reply};
use courier::{Broker, ClientInfo, Config};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    broker: Arc<Broker>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("courier-fuzz-{}", std::process::id()));
        let mut config = Config {
            data_dir: dir,
            ..Config::default()
        };
        // Periodic: the fuzzer measures the protocol, not the disk.
        config.durability = courier::config::Durability::Periodic;
        config.limits.connect_timeout_secs = 1;
        let broker = rt.block_on(async { Broker::open(config).unwrap() });
        broker.claim_namespace("chat", Arc::new(Answering)).unwrap();
        World { rt, broker }
    })
}

/// A namespace handler whose answer the input chooses (the payload's first
/// byte): accept, refuse, drop unanswered, answer later from another task,
/// or respond and accept. Subscriptions inside `chat` are granted filtered.
struct Answering;

impl Namespace for Answering {
    fn publish(&self, broker: &Arc<Broker>, p: Inbound) {
        match p.message.payload.first().copied().unwrap_or(0) % 5 {
            0 => p.ack.accept(),
            1 => p
                .ack
                .answer(Reply::refuse(AckCode::QuotaExceeded, "slow down")),
            2 => drop(p),
            3 => {
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    p.ack.answer(Reply::success().with_property("seq", "1"));
                });
            }
            _ => {
                let _ = p.respond(broker, bytes::Bytes::from_static(b"ok"));
                p.ack.accept();
            }
        }
    }

    fn authorize_subscribe(&self, _: &ClientInfo, _: &str) -> SubscribeDecision {
        SubscribeDecision::Filter
    }

    fn authorize_read(&self, _: &ClientInfo, topic: &str) -> bool {
        topic.len() % 2 == 0
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let broker = w.broker.clone();
    let input = data.to_vec();
    w.rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let peer = "127.0.0.1:1".parse().unwrap();
        let conn = tokio::spawn(serve(broker, Stream(server), peer));
        let _ = client.write_all(&input).await;
        let _ = client.shutdown().await;
        // Read whatever the broker answers until it closes.
        let mut sink = vec![0u8; 4096];
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = client.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        assert!(
            drained.await.is_ok(),
            "the connection neither closed nor went quiet"
        );
        match tokio::time::timeout(Duration::from_secs(5), conn).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("connection task failed: {e}"),
            Err(_) => panic!("connection task did not end after its input closed"),
        }
    });
});
