//! Micro-benchmarks of the broker's hot paths: packet decode/encode, topic
//! matching against many subscriptions, and the store's append/acknowledge.
//! Run: cargo bench -p courier-benches

use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use courier::codec::{self, Packet, Publish, QoS, Version};
use courier::redb_store::RedbStore;
use courier::router::{Router, SubOptions};
use courier::store::{QueueRecord, Store, Write};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn codec_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let p = Packet::Publish({
        let mut p = Publish::new("users/alice/inbox", QoS::AtLeastOnce, vec![7u8; 64], None);
        p.pkid = 1;
        p
    });
    for v in [Version::V4, Version::V5] {
        let mut wire = BytesMut::new();
        codec::encode(v, &p, &mut wire).unwrap();
        g.bench_function(format!("decode_publish_64B_{v:?}"), |b| {
            b.iter(|| {
                let mut buf = wire.clone();
                black_box(codec::decode(v, &mut buf, 1 << 20).unwrap())
            })
        });
        g.bench_function(format!("encode_publish_64B_{v:?}"), |b| {
            let mut out = BytesMut::with_capacity(256);
            b.iter(|| {
                out.clear();
                codec::encode(v, black_box(&p), &mut out).unwrap();
            })
        });
    }
    g.finish();
}

fn router_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    let opts = SubOptions {
        qos: 1,
        no_local: false,
        retain_as_published: false,
        id: None,
        filtered: false,
    };
    for n in [1_000usize, 100_000] {
        let mut r: Router<u32> = Router::default();
        for i in 0..n {
            let cid: Arc<str> = Arc::from(format!("c{i}"));
            r.insert(&cid, None, &format!("users/u{i}/inbox"), i as u32, opts);
            if i % 100 == 0 {
                r.insert(
                    &cid,
                    None,
                    &format!("groups/g{}/+", i / 100),
                    i as u32,
                    opts,
                );
            }
        }
        let cid: Arc<str> = Arc::from("monitor");
        r.insert(&cid, None, "users/+/presence", 0, opts);
        let mut out = Vec::new();
        g.bench_function(format!("match_one_of_{n}"), |b| {
            b.iter(|| {
                out.clear();
                r.matches(black_box("users/u500/inbox"), |_| true, &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn store_bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let rec = QueueRecord::new(1, 1);
    let mut g = c.benchmark_group("store");
    let mut seq = 0u64;
    // One commit's work for one session: its new entries as one batch, then
    // their acknowledgements as a floor move.
    for n in [1u64, 16] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("append_then_ack/{n}"), |b| {
            b.iter(|| {
                let batch: Vec<_> = (seq + 1..=seq + n).map(|s| (s, rec.clone())).collect();
                seq += n;
                let writes = [
                    Write::Append(1, batch),
                    Write::Marks {
                        log: 1,
                        sent: Some(seq),
                        floor: Some(seq),
                    },
                ];
                store.commit(&mut writes.iter()).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec_bench, router_bench, store_bench);
criterion_main!(benches);
