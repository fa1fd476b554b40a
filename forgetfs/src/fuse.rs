//! The FUSE adapter: kernel requests in, [`Tree`] calls, replies out.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::tree::{Kind, Tree};

/// Attributes are never cached by the kernel: every change goes through
/// this process anyway, and a remount must see the forgotten state.
const TTL: Duration = Duration::ZERO;

/// State shared by the mount and the handle the test holds.
#[derive(Default)]
pub(crate) struct Shared {
    pub tree: Mutex<Tree>,
    /// errno that every fsync fails with while non-zero.
    pub fail_sync: AtomicI32,
    /// Milliseconds every fsync takes (a slow disk), while non-zero.
    pub sync_delay_ms: AtomicU64,
    pub file_syncs: AtomicU64,
    pub dir_syncs: AtomicU64,
}

impl Shared {
    pub fn tree(&self) -> MutexGuard<'_, Tree> {
        // A panic elsewhere must not wedge the file system.
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct Fuse(pub Arc<Shared>);

fn attr(tree: &Tree, ino: u64) -> Result<FileAttr, Errno> {
    let n = tree.node(ino).map_err(Errno::from_i32)?;
    let size = n.data.len() as u64;
    Ok(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: n.mtime,
        mtime: n.mtime,
        ctime: n.mtime,
        crtime: n.mtime,
        kind: match n.kind {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
        },
        perm: n.perm,
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

impl Fuse {
    fn entry(&self, r: Result<u64, i32>, reply: ReplyEntry) {
        let tree = self.0.tree();
        match r.map_err(Errno::from_i32).and_then(|ino| attr(&tree, ino)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn new_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        umask: u32,
    ) -> Result<u64, i32> {
        let perm = (mode & !umask & 0o7777) as u16;
        self.0
            .tree()
            .create(parent.0, name, kind, perm, req.uid(), req.gid())
    }

    fn sync(&self, ino: INodeNo, dir: bool, reply: ReplyEmpty) {
        let delay = self.0.sync_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            // One request at a time: the whole file system stalls, as a
            // saturated disk does.
            std::thread::sleep(Duration::from_millis(delay));
        }
        let mut tree = self.0.tree();
        let fail = self.0.fail_sync.load(Ordering::SeqCst);
        let r = if fail != 0 {
            tree.lose_dirty(ino.0).and(Err(fail))
        } else if dir {
            self.0.dir_syncs.fetch_add(1, Ordering::Relaxed);
            tree.sync_dir(ino.0)
        } else {
            self.0.file_syncs.fetch_add(1, Ordering::Relaxed);
            tree.sync_file(ino.0)
        };
        empty(r, reply)
    }
}

fn empty(r: Result<(), i32>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(Errno::from_i32(e)),
    }
}

impl Filesystem for Fuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.0.tree().lookup(parent.0, name);
        self.entry(r, reply)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr(&self.0.tree(), ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut tree = self.0.tree();
        let mut r = tree.set_meta(ino.0, mode.map(|m| (m & 0o7777) as u16), uid, gid);
        if let (Ok(()), Some(size)) = (r, size) {
            r = tree.set_size(ino.0, size);
        }
        match r.map_err(Errno::from_i32).and_then(|()| attr(&tree, ino.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::from_i32(libc::EPERM));
        }
        let r = self.new_node(req, parent, name, Kind::File, mode, umask);
        self.entry(r, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.new_node(req, parent, name, Kind::Dir, mode, umask);
        self.entry(r, reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(self.0.tree().remove(parent.0, name, false), reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(self.0.tree().remove(parent.0, name, true), reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = self
            .0
            .tree()
            .rename(parent.0, name, newparent.0, newname, noreplace);
        empty(r, reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut tree = self.0.tree();
        let r = match tree.node(ino.0) {
            Err(e) => Err(e),
            Ok(_) if flags.0 & libc::O_TRUNC != 0 => tree.set_size(ino.0, 0),
            Ok(_) => Ok(()),
        };
        match r {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.new_node(req, parent, name, Kind::File, mode, umask);
        let tree = self.0.tree();
        match r.map_err(Errno::from_i32).and_then(|ino| attr(&tree, ino)) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.0.tree().read(ino.0, offset, size) {
            Ok(d) => reply.data(d),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.0.tree().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, false, reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.tree().node(ino.0) {
            Ok(n) if n.kind == Kind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.0.tree();
        let dir = match tree.node(ino.0) {
            Ok(n) if n.kind == Kind::Dir => n,
            Ok(_) => return reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => return reply.error(Errno::from_i32(e)),
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (ino.0, FileType::Directory, OsStr::new("..")),
        ];
        let children = dir.entries.iter().map(|(name, &child)| {
            let kind = match tree.node(child).map(|n| n.kind) {
                Ok(Kind::Dir) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            (child, kind, name.as_os_str())
        });
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, true, reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096)
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut tree = self.0.tree();
        let r = match mode {
            0 => match tree.node(ino.0) {
                Ok(n) => {
                    let end = offset.saturating_add(length);
                    if end > n.data.len() as u64 {
                        tree.set_size(ino.0, end)
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e),
            },
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(libc::EOPNOTSUPP),
        };
        empty(r, reply)
    }
}
