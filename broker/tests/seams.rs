//! The broker's seams used the way an embedder (the messaging layer) will.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use courier::redb_store::RedbStore;
use courier::store::Store;

#[tokio::test]
async fn an_injected_store_receives_the_brokers_writes() {
    use common::v4::*;
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("mine")).unwrap();
    let mut cfg = courier::Config {
        // Not used: the store is given.
        data_dir: dir.path().join("unused"),
        ..courier::Config::default()
    };
    cfg.listeners = vec![listener(courier::config::ListenerKind::Tcp)];
    let server = courier::Server::builder(cfg)
        .store(store.clone() as Arc<dyn Store>)
        .start()
        .await
        .unwrap();
    let port = server
        .addr(courier::config::ListenerKind::Tcp)
        .unwrap()
        .port();
    let (c, mut el) = client(opts("pub", port));
    c.publish("config/theme", QoS::AtLeastOnce, true, "dark")
        .await
        .unwrap();
    puback(&mut el).await;
    // Acknowledged, so committed to the store the embedder passed in.
    let retained = store.load_retained().unwrap();
    assert_eq!(retained.len(), 1);
    assert_eq!(retained[0].payload, Bytes::from("dark"));
    assert!(
        !dir.path().join("unused").exists(),
        "no second store opened"
    );
}
