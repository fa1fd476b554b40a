//! The contract every storage backend's named logs must keep ([`Logs`] on a
//! [`Store`]). Each check takes a function that opens the backend in a
//! directory, so another backend (a NATS JetStream one) runs the same
//! suite; today it runs against the embedded redb store.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use courier::commit::GroupCommit;
use courier::logs::{LogError, Logs, NewRecord, Retention};
use courier::redb_store::RedbStore;
use courier::store::Store;

type Open = fn(&Path) -> Arc<dyn Store>;

fn redb(dir: &Path) -> Arc<dyn Store> {
    RedbStore::open(dir).expect("open the store")
}

/// The backends under contract.
const BACKENDS: &[(&str, Open)] = &[("redb", redb)];

fn logs_on(store: Arc<dyn Store>) -> (Logs, Arc<GroupCommit>) {
    let gc = GroupCommit::start(store.clone(), std::time::Duration::ZERO).unwrap();
    (Logs::new(store, gc.clone()), gc)
}

fn rec(id: Option<&str>, data: &str) -> NewRecord {
    NewRecord {
        id: id.map(str::to_owned),
        data: Bytes::copy_from_slice(data.as_bytes()),
    }
}

fn seqs(r: &[courier::store::LogRecord]) -> Vec<u64> {
    r.iter().map(|r| r.seq).collect()
}

#[tokio::test]
async fn ordered_and_densely_numbered() {
    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (logs, _gc) = logs_on(open(dir.path()));
        let a = logs
            .append(
                "conv/1",
                vec![rec(None, "a"), rec(None, "b"), rec(None, "c")],
                None,
            )
            .unwrap();
        let b = logs.append("conv/1", vec![rec(None, "d")], None).unwrap();
        let other = logs.append("conv/2", vec![rec(None, "x")], None).unwrap();
        b.durable().await.unwrap();
        assert_eq!(a.seqs, [1, 2, 3], "{name}");
        assert_eq!(b.seqs, [4], "{name}");
        assert_eq!(other.seqs, [1], "{name}: per log");
        let all = logs.read("conv/1", 0, 100).unwrap();
        assert_eq!(seqs(&all), [1, 2, 3, 4], "{name}");
        let data: Vec<_> = all.iter().map(|r| r.data.clone()).collect();
        assert_eq!(data, ["a", "b", "c", "d"].map(Bytes::from), "{name}");
        assert_eq!(logs.last("conv/1").unwrap(), 4, "{name}");
    }
}

#[tokio::test]
async fn idempotent_on_the_callers_id() {
    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (logs, _gc) = logs_on(open(dir.path()));
        let first = logs
            .append("inbox/u1", vec![rec(Some("m1"), "hi")], None)
            .unwrap();
        // Before the first is committed ...
        let again = logs
            .append("inbox/u1", vec![rec(Some("m1"), "hi")], None)
            .unwrap();
        assert_eq!(
            (again.seqs.clone(), again.duplicates),
            (vec![1], 1),
            "{name}"
        );
        first.durable().await.unwrap();
        // ... and after, mixed with a new one.
        let mixed = logs
            .append(
                "inbox/u1",
                vec![rec(Some("m2"), "yo"), rec(Some("m1"), "hi")],
                None,
            )
            .unwrap();
        assert_eq!(mixed.seqs, [2, 1], "{name}");
        mixed.durable().await.unwrap();
        assert_eq!(
            seqs(&logs.read("inbox/u1", 0, 10).unwrap()),
            [1, 2],
            "{name}"
        );
        // The same id in another log is another record.
        let elsewhere = logs
            .append("inbox/u2", vec![rec(Some("m1"), "hi")], None)
            .unwrap();
        assert_eq!(
            (elsewhere.seqs.clone(), elsewhere.duplicates),
            (vec![1], 0),
            "{name}"
        );
    }
}

#[tokio::test]
async fn conflict_when_the_expected_last_differs() {
    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (logs, _gc) = logs_on(open(dir.path()));
        logs.append("conv/9", vec![rec(None, "a")], Some(0))
            .unwrap();
        match logs.append("conv/9", vec![rec(None, "b")], Some(0)) {
            Err(LogError::Conflict {
                expected: 0,
                last: 1,
                ..
            }) => {}
            other => panic!("{name}: expected a conflict, got {other:?}"),
        }
        let ok = logs
            .append("conv/9", vec![rec(None, "b")], Some(1))
            .unwrap();
        assert_eq!(ok.seqs, [2], "{name}");
    }
}

#[tokio::test]
async fn pages_forward_and_backward() {
    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (logs, _gc) = logs_on(open(dir.path()));
        let recs = (1..=25).map(|i| rec(None, &i.to_string())).collect();
        logs.append("h", recs, None)
            .unwrap()
            .durable()
            .await
            .unwrap();
        assert_eq!(
            seqs(&logs.read("h", 1, 10).unwrap()),
            (1..=10).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            seqs(&logs.read("h", 21, 10).unwrap()),
            (21..=25).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            seqs(&logs.read_back("h", 26, 10).unwrap()),
            (16..=25).rev().collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            seqs(&logs.read_back("h", 6, 10).unwrap()),
            (1..=5).rev().collect::<Vec<_>>(),
            "{name}"
        );
        assert!(logs.read("other", 0, 10).unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn retention_by_count_by_cursors_and_by_age() {
    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (logs, gc) = logs_on(open(dir.path()));
        let recs = (1..=10)
            .map(|i| rec(Some(&format!("id{i}")), "x"))
            .collect();
        logs.append("q", recs, None)
            .unwrap()
            .durable()
            .await
            .unwrap();
        assert_eq!(logs.trim("q", Retention::KeepLast(6)).unwrap(), 4, "{name}");
        gc.durable().await.unwrap();
        assert_eq!(
            seqs(&logs.read("q", 0, 100).unwrap()),
            (5..=10).collect::<Vec<_>>()
        );
        // Numbering goes on; a trimmed id is forgotten with its record.
        let next = logs
            .append("q", vec![rec(Some("id1"), "again")], None)
            .unwrap();
        assert_eq!(next.seqs, [11], "{name}");
        // Cursors: what every consumer has read goes.
        logs.set_cursor("q", "phone", 8);
        logs.set_cursor("q", "laptop", 6);
        gc.durable().await.unwrap();
        assert_eq!(logs.trim("q", Retention::ReadByAll).unwrap(), 6, "{name}");
        gc.durable().await.unwrap();
        assert_eq!(logs.read("q", 0, 1).unwrap()[0].seq, 7, "{name}");
        // Age: everything appended before now.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert_eq!(
            logs.trim("q", Retention::Before(now + 1)).unwrap(),
            11,
            "{name}"
        );
        gc.durable().await.unwrap();
        assert!(logs.read("q", 0, 100).unwrap().is_empty(), "{name}");
        assert_eq!(logs.last("q").unwrap(), 11, "{name}");
    }
}

fn redb_small_staging(dir: &Path) -> Arc<dyn Store> {
    let limits = courier::redb_store::StagingLimits {
        records: 16,
        bytes: 1 << 20,
    };
    RedbStore::open_with(dir, limits).expect("open the store")
}

#[tokio::test]
async fn an_erased_record_is_gone_from_every_read_and_stays_gone() {
    // Also with a tiny staging area, so that erased records lie in moved
    // batches (first, middle, last of one) as well as in the staging.
    let opens: Vec<(&str, Open)> = BACKENDS
        .iter()
        .copied()
        .chain([("redb-small-staging", redb_small_staging as Open)])
        .collect();
    for (name, open) in opens {
        let dir = tempfile::tempdir().unwrap();
        let erased = [1, 30, 31, 64, 65, 99, 100];
        {
            let (logs, gc) = logs_on(open(dir.path()));
            for i in 1..=100 {
                let id = format!("m{i}");
                logs.append("c", vec![rec(Some(&id), &format!("body {i}"))], None)
                    .unwrap();
                logs.append("other", vec![rec(None, "x")], None).unwrap();
                if i % 10 == 0 {
                    gc.durable().await.unwrap();
                }
            }
            for seq in erased {
                logs.erase("c", seq);
            }
            // Erasing what is not there (again, or never was) is no error.
            logs.erase("c", 30);
            logs.erase("c", 1000);
            gc.durable().await.unwrap();
            let want: Vec<u64> = (1..=100).filter(|s| !erased.contains(s)).collect();
            assert_eq!(seqs(&logs.read("c", 0, 200).unwrap()), want, "{name}");
            let mut back = seqs(&logs.read_back("c", u64::MAX, 200).unwrap());
            back.reverse();
            assert_eq!(back, want, "{name}: backward");
            assert_eq!(
                seqs(&logs.read_back("c", 65, 2).unwrap()),
                [63, 62],
                "{name}"
            );
            assert_eq!(logs.last("c").unwrap(), 100, "{name}: numbering goes on");
            // A resend of an erased record's id is still a repeat.
            let again = logs
                .append("c", vec![rec(Some("m31"), "body 31")], None)
                .unwrap();
            assert_eq!(
                (again.seqs.clone(), again.duplicates),
                (vec![31], 1),
                "{name}"
            );
            let next = logs.append("c", vec![rec(None, "new")], None).unwrap();
            assert_eq!(next.seqs, [101], "{name}");
            assert_eq!(logs.read("other", 0, 200).unwrap().len(), 100, "{name}");
            gc.durable().await.unwrap();
            gc.close().await;
        }
        let (logs, _gc) = logs_on(open(dir.path()));
        let got = logs.read("c", 0, 200).unwrap();
        assert_eq!(got.len(), 94, "{name}: after a restart");
        assert!(got.iter().all(|r| !erased.contains(&r.seq)), "{name}");
        assert!(
            !got.iter().any(|r| r.data == "body 64"),
            "{name}: the erased body is not read back"
        );
    }
}

#[tokio::test]
async fn records_cursors_and_ids_survive_a_restart() {
    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        {
            let (logs, gc) = logs_on(open(dir.path()));
            logs.append("c", vec![rec(Some("a"), "1"), rec(Some("b"), "2")], None)
                .unwrap();
            logs.set_cursor("c", "phone", 1);
            gc.durable().await.unwrap();
            gc.close().await;
        }
        let (logs, _gc) = logs_on(open(dir.path()));
        assert_eq!(logs.last("c").unwrap(), 2, "{name}");
        assert_eq!(
            logs.cursors("c").unwrap(),
            [("phone".to_owned(), 1)],
            "{name}"
        );
        let again = logs
            .append("c", vec![rec(Some("b"), "2"), rec(Some("c"), "3")], None)
            .unwrap();
        assert_eq!(again.seqs, [2, 3], "{name}");
    }
}

#[tokio::test]
async fn many_logs_stay_correct_when_their_heads_leave_memory() {
    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let (logs, gc) = logs_on(open(dir.path()));
        // More logs than the heads kept in memory.
        for i in 0..66_000u32 {
            logs.append(&format!("conv/{i}"), vec![rec(Some("first"), "x")], None)
                .unwrap();
        }
        gc.durable().await.unwrap();
        gc.durable().await.unwrap();
        gc.durable().await.unwrap();
        // A new log: the committed heads make room for it.
        logs.append("conv/new", vec![rec(None, "z")], None).unwrap();
        for i in [0u32, 1, 65_999] {
            let log = format!("conv/{i}");
            let again = logs
                .append(
                    &log,
                    vec![rec(Some("first"), "x"), rec(Some("second"), "y")],
                    Some(1),
                )
                .unwrap();
            assert_eq!(
                (again.seqs.clone(), again.duplicates),
                (vec![1, 2], 1),
                "{name} {log}"
            );
        }
    }
}

/// Not a test of its own: the writer process of the two tests below, run
/// by them as a child (`--ignored --exact`). Appends one record at a time,
/// waits until it is durable, and prints its sequence number.
#[tokio::test]
#[ignore]
async fn child_writer() {
    let Ok(dir) = std::env::var("LOG_CONTRACT_DIR") else {
        return;
    };
    let backend = std::env::var("LOG_CONTRACT_BACKEND").unwrap();
    let open = BACKENDS.iter().find(|b| b.0 == backend).unwrap().1;
    let batch: usize = std::env::var("LOG_CONTRACT_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    let (logs, _gc) = logs_on(open(Path::new(&dir)));
    for i in 0.. {
        let ids: Vec<String> = (0..batch).map(|j| format!("m{}", i * batch + j)).collect();
        let recs = ids.iter().map(|id| rec(Some(id), id)).collect();
        let a = logs.append("inbox/u1", recs, None).unwrap();
        a.durable().await.unwrap();
        for (seq, id) in a.seqs.iter().zip(&ids) {
            println!("ACKED {seq} {id}");
        }
    }
}

/// Runs the child writer on `dir` until it has acknowledged `n` records,
/// kills it with SIGKILL, and returns what it acknowledged.
fn write_then_kill(backend: &str, dir: &Path, n: usize, batch: usize) -> Vec<(u64, String)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LOG_CONTRACT_DIR", dir)
        .env("LOG_CONTRACT_BACKEND", backend)
        .env("LOG_CONTRACT_BATCH", batch.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ACKED ") {
                let mut parts = rest.split(' ');
                let seq: u64 = parts.next().unwrap().parse().unwrap();
                let id = parts.next().unwrap().to_owned();
                if tx.send((seq, id)).is_err() {
                    return;
                }
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < n {
        match rx.recv_timeout(common::WAIT) {
            Ok(a) => acked.push(a),
            Err(e) => {
                let _ = child.kill();
                panic!("writer stopped after {} records: {e}", acked.len());
            }
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-append
    child.wait().unwrap();
    acked
}

async fn check_acknowledged(backend: Open, dir: &Path, acked: &[(u64, String)]) {
    let (logs, gc) = logs_on(backend(dir));
    let stored = logs.read("inbox/u1", 0, 100_000).unwrap();
    for (seq, id) in acked {
        let r = stored
            .iter()
            .find(|r| r.seq == *seq)
            .unwrap_or_else(|| panic!("acknowledged record {seq} lost"));
        assert_eq!(r.id.as_deref(), Some(id.as_str()));
    }
    // Dense: nothing missing between the first and the last.
    let s = seqs(&stored);
    assert_eq!(s, (1..=s.len() as u64).collect::<Vec<_>>());
    // Release the store's files before the caller unmounts.
    drop(logs);
    gc.close().await;
}

#[tokio::test]
async fn durable_before_acknowledged_across_kill9() {
    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let acked = write_then_kill(name, &data, 200, 1);
        check_acknowledged(*open, &data, &acked).await;
    }
}

#[tokio::test]
async fn durable_before_acknowledged_across_a_power_cut() {
    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let mut mount = forgetfs::Mount::new(dir.path()).expect("mount forgetfs");
        let data = mount.path().join("data");
        let acked = write_then_kill(name, &data, 100, 1);
        mount.power_cut().unwrap();
        check_acknowledged(*open, &data, &acked).await;
    }
}

/// Enough records that the store reorganises them while it writes (the
/// redb store moves staged appends into their log in bulk): a power cut
/// in the middle still keeps everything acknowledged, densely numbered.
#[tokio::test]
async fn durable_across_a_power_cut_while_the_store_reorganises() {
    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let mut mount = forgetfs::Mount::new(dir.path()).expect("mount forgetfs");
        let data = mount.path().join("data");
        let acked = write_then_kill(name, &data, 20_000, 250);
        mount.power_cut().unwrap();
        check_acknowledged(*open, &data, &acked).await;
    }
}
