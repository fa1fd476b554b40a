//! forgetfs: a FUSE file system for power-loss tests.
//!
//! Everything lives in memory, in two images: what programs see now, and
//! what a power cut would leave (data made durable by fsync/fdatasync of
//! that file, names made durable by an fsync of their directory). A test
//! mounts it, runs a program on it, kills the program, then calls
//! [`Mount::power_cut`]: the file system is unmounted (so no kernel cache
//! survives), everything not durable is forgotten, and it is mounted again
//! at the same place. The idea is LazyFS's, which Jepsen uses.
//!
//! `sync_file_range`, `syncfs` and plain writes never reach a FUSE file
//! system as a sync, so they are not durable here, as they are not on a
//! drive with a volatile cache. The kernel's writeback cache is off, so
//! every write reaches the model at once.
//!
//! Mounting needs `/dev/fuse` and root (or `fusermount3` from Debian's
//! `fuse3`).

mod fuse;
mod tree;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuse::{Fuse, Shared};

/// A mounted forgetful file system. Dropping it unmounts.
pub struct Mount {
    path: PathBuf,
    shared: Arc<Shared>,
    session: Option<fuser::BackgroundSession>,
}

impl Mount {
    /// Mounts an empty file system on the existing directory `path`.
    pub fn new(path: &Path) -> io::Result<Mount> {
        let shared = Arc::new(Shared::default());
        let session = Some(mount(path, shared.clone())?);
        Ok(Mount {
            path: path.to_owned(),
            shared,
            session,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Simulates a power cut: unmounts, forgets everything that was not
    /// made durable, and mounts the rest again. Stop every program using
    /// the mount first (an open file keeps the mount busy).
    pub fn power_cut(&mut self) -> io::Result<()> {
        if let Some(s) = self.session.take() {
            s.umount_and_join()?;
        }
        self.shared.tree().power_cut();
        self.session = Some(mount(&self.path, self.shared.clone())?);
        Ok(())
    }

    /// While `errno` is `Some`, every fsync and fdatasync fails with it,
    /// and (as on Linux after a writeback error) the pages it should have
    /// made durable are dropped from the dirty set without being made so.
    pub fn fail_syncs(&self, errno: Option<i32>) {
        self.shared
            .fail_sync
            .store(errno.unwrap_or(0), Ordering::SeqCst);
    }

    /// Makes every fsync and fdatasync take `delay` (a slow disk); zero
    /// for none.
    pub fn slow_syncs(&self, delay: std::time::Duration) {
        self.shared
            .sync_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Successful fsyncs so far: of files, and of directories.
    pub fn syncs(&self) -> (u64, u64) {
        (
            self.shared.file_syncs.load(Ordering::Relaxed),
            self.shared.dir_syncs.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if s.umount_and_join().is_err() {
                // Still busy (a test failed with a file open inside): abort
                // the connection, so nothing waits on it for ever (a thread
                // of this very process would: the file system answers from
                // here), then detach it, so no mount outlives the test.
                force_unmount(&self.path);
            }
        }
    }
}

fn force_unmount(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path; umount2 has no other inputs.
        // MNT_FORCE aborts a FUSE connection: pending and later requests
        // fail with ENOTCONN instead of waiting.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_FORCE);
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

fn mount(path: &Path, shared: Arc<Shared>) -> io::Result<fuser::BackgroundSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("forgetfs".into()),
        fuser::MountOption::RW,
    ];
    fuser::spawn_mount(Fuse(shared), path, &config)
}
