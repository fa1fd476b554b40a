//! Whole connections on arbitrary input: the bytes a client might send,
//! fed to a real broker (store on disk, one per process) through an
//! in-memory stream. Nothing a peer sends may panic the broker or hang the
//! connection.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use courier::connection::{serve, Stream};
use courier::{Broker, Config};
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
        World { rt, broker }
    })
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
