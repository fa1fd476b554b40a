//! How long a shred (the embedded store's compaction) pauses store access,
//! by store size: fills a fresh store with chat-sized records, erases 1%
//! of them scattered through it, and times `Store::shred`. One JSON line
//! per size. `cargo run --release -p courier-benches --bin shredtime`.

use clap::Parser;
use courier::redb_store::RedbStore;
use courier::store::{LogRecord, Store, Write};

#[derive(Parser)]
struct Args {
    /// Store sizes, in records (each `--bytes` long, in 100 logs).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    records: Vec<u64>,
    /// Bytes per record.
    #[arg(long, default_value_t = 256)]
    bytes: usize,
    /// Where to put the stores (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("courier-shredtime-{}", std::process::id())),
    };
    for &n in &args.records {
        let data = base.join(format!("n{n}"));
        let s = RedbStore::open(&data)?;
        let body = bytes::Bytes::from(vec![b'x'; args.bytes]);
        let logs = 100u64;
        let mut last = vec![0u64; logs as usize];
        let mut written = 0;
        while written < n {
            let mut writes = Vec::new();
            for _ in 0..1000.min(n - written) {
                let l = (written % logs) as usize;
                last[l] += 1;
                writes.push(Write::LogAppend {
                    log: format!("c/{l}"),
                    records: vec![LogRecord {
                        seq: last[l],
                        id: None,
                        time_ms: 1,
                        data: body.clone(),
                    }],
                });
                written += 1;
            }
            s.commit(&mut writes.iter())?;
        }
        let erase: Vec<Write> = (0..n / 100)
            .map(|i| {
                let l = i % logs;
                Write::LogErase {
                    log: format!("c/{l}"),
                    seq: 1 + (i / logs) * 100 % last[l as usize].max(1),
                }
            })
            .collect();
        s.commit(&mut erase.iter())?;
        let done = s
            .shred()?
            .ok_or_else(|| anyhow::anyhow!("nothing to shred"))?;
        println!(
            "{}",
            serde_json::json!({
                "scenario": "shred",
                "records": n,
                "record_bytes": args.bytes,
                "erased": erase.len(),
                "file_mb_before": done.bytes_before as f64 / 1e6,
                "file_mb_after": done.bytes_after as f64 / 1e6,
                "pause_ms": done.took.as_secs_f64() * 1000.0,
            })
        );
        drop(s);
        std::fs::remove_dir_all(&data)?;
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(())
}
