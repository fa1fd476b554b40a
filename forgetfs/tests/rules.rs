//! The file system's rules, checked through the kernel with ordinary
//! system calls. These tests fail (never skip) where the mount cannot be
//! made: the power-loss tests depend on it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use forgetfs::Mount;

fn mounted() -> (tempfile::TempDir, Mount) {
    let dir = tempfile::tempdir().unwrap();
    let m = Mount::new(dir.path()).expect("mount forgetfs (needs /dev/fuse and root)");
    (dir, m)
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

/// Creates `p` with `data`, fsyncs and closes it.
fn write_synced(p: &Path, data: &[u8]) {
    let mut f = File::create(p).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn contents(p: &Path) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    File::open(p).ok()?.read_to_end(&mut v).unwrap();
    Some(v)
}

#[test]
fn unsynced_file_and_name_are_forgotten() {
    let (_d, mut m) = mounted();
    let p = m.path().join("a");
    fs::write(&p, b"hello").unwrap();
    assert_eq!(contents(&p).unwrap(), b"hello", "visible before the cut");
    m.power_cut().unwrap();
    assert!(contents(&p).is_none());
}

#[test]
fn fsync_and_fdatasync_make_data_and_size_durable_for_that_file_only() {
    let (_d, mut m) = mounted();
    let (a, b, c) = (m.path().join("a"), m.path().join("b"), m.path().join("c"));
    let mut fa = File::create(&a).unwrap();
    let mut fb = File::create(&b).unwrap();
    let mut fc = File::create(&c).unwrap();
    sync_dir(m.path());
    fa.write_all(b"all").unwrap();
    fa.sync_all().unwrap();
    fb.write_all(b"data").unwrap();
    fb.sync_data().unwrap();
    fc.write_all(b"never").unwrap();
    // Written after the syncs: lost.
    fa.write_all(b"-later").unwrap();
    drop((fa, fb, fc));
    m.power_cut().unwrap();
    assert_eq!(contents(&a).unwrap(), b"all");
    assert_eq!(contents(&b).unwrap(), b"data");
    assert_eq!(contents(&c).unwrap(), b"", "name durable, data not");
}

#[test]
fn sync_file_range_is_not_durable() {
    let (_d, mut m) = mounted();
    let p = m.path().join("log");
    let mut f = File::create(&p).unwrap();
    sync_dir(m.path());
    f.write_all(&[1u8; 8192]).unwrap();
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid open descriptor and a plain range.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 8192, flags) };
    assert_eq!(r, 0);
    drop(f);
    m.power_cut().unwrap();
    assert_eq!(contents(&p).unwrap(), b"");
}

#[test]
fn rename_create_and_unlink_need_a_directory_fsync() {
    let (_d, mut m) = mounted();
    let sub = m.path().join("sub");
    fs::create_dir(&sub).unwrap();
    sync_dir(m.path());
    let cfg = sub.join("cfg");
    let tmp = sub.join("cfg.tmp");
    write_synced(&cfg, b"v1");
    sync_dir(&sub);
    // Atomic replace without the directory fsync: the old version stays.
    write_synced(&tmp, b"v2");
    fs::rename(&tmp, &cfg).unwrap();
    assert_eq!(contents(&cfg).unwrap(), b"v2");
    m.power_cut().unwrap();
    assert_eq!(contents(&cfg).unwrap(), b"v1");
    assert!(contents(&tmp).is_none());
    // The same with the fsync.
    write_synced(&tmp, b"v2");
    fs::rename(&tmp, &cfg).unwrap();
    sync_dir(&sub);
    m.power_cut().unwrap();
    assert_eq!(contents(&cfg).unwrap(), b"v2");
    // An unlink comes back unless the directory is fsynced.
    fs::remove_file(&cfg).unwrap();
    m.power_cut().unwrap();
    assert_eq!(contents(&cfg).unwrap(), b"v2");
    fs::remove_file(&cfg).unwrap();
    sync_dir(&sub);
    m.power_cut().unwrap();
    assert!(contents(&cfg).is_none());
}

#[test]
fn truncate_and_growth_roll_back_to_the_synced_size() {
    let (_d, mut m) = mounted();
    let p = m.path().join("f");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&p)
        .unwrap();
    sync_dir(m.path());
    f.write_all(&[9u8; 10_000]).unwrap();
    f.sync_data().unwrap();
    f.set_len(3).unwrap();
    f.set_len(1 << 20).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 1 << 20);
    drop(f);
    m.power_cut().unwrap();
    assert_eq!(contents(&p).unwrap(), vec![9u8; 10_000]);
}

#[test]
fn an_injected_sync_error_reaches_the_caller_and_loses_the_pages() {
    let (_d, mut m) = mounted();
    let p = m.path().join("f");
    let mut f = File::create(&p).unwrap();
    sync_dir(m.path());
    f.write_all(b"doomed").unwrap();
    m.fail_syncs(Some(libc::EIO));
    let e = f.sync_data().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    m.fail_syncs(None);
    // The retry succeeds and covers nothing: trusting it would lose data.
    f.sync_data().unwrap();
    drop(f);
    m.power_cut().unwrap();
    assert_ne!(contents(&p).unwrap(), b"doomed");
}
