//! The file tree in memory, with two images: what the system sees now, and
//! what a power cut would leave. No I/O; the FUSE adapter drives it.
//!
//! The rules are the strict POSIX ones (the ones a careful program must
//! assume, since real file systems and drives differ):
//! - fsync or fdatasync of a file makes that file's data and size durable,
//!   and nothing else;
//! - a created, renamed or unlinked name is durable only once its parent
//!   directory is fsynced;
//! - anything else (plain writes, `sync_file_range`, closing a file) is not.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// Dirty tracking granularity: an fsync copies only the pages written
/// since the last one.
const PAGE: u64 = 4096;

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// What went wrong, as an errno for the kernel.
pub type Errno = i32;

/// A file or a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// One inode.
#[derive(Clone, Debug)]
pub struct Node {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    /// Names that refer to it now.
    pub nlink: u32,
    /// File contents as seen now.
    pub data: Vec<u8>,
    /// File contents as of its last successful fsync.
    durable: Vec<u8>,
    /// Pages of `data` changed since then.
    dirty: BTreeSet<u64>,
    /// Directory entries as seen now.
    pub entries: BTreeMap<OsString, u64>,
    /// Directory entries as of its last successful fsync.
    durable_entries: BTreeMap<OsString, u64>,
}

impl Node {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Node {
        Node {
            kind,
            perm,
            uid,
            gid,
            mtime: SystemTime::now(),
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            data: Vec::new(),
            durable: Vec::new(),
            dirty: BTreeSet::new(),
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
        }
    }

    fn mark_dirty(&mut self, from: u64, to: u64) {
        if to > from {
            self.dirty.extend(from / PAGE..=(to - 1) / PAGE);
        }
    }
}

/// The whole file system.
#[derive(Debug)]
pub struct Tree {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

impl Default for Tree {
    fn default() -> Tree {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new(Kind::Dir, 0o755, 0, 0));
        Tree {
            nodes,
            next_ino: ROOT + 1,
        }
    }
}

impl Tree {
    /// The inode `ino`.
    pub fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        let n = self.node_mut(ino)?;
        if n.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(n)
    }

    /// The inode that `name` in `parent` refers to.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let dir = self.node(parent)?;
        if dir.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        dir.entries.get(name).copied().ok_or(libc::ENOENT)
    }

    /// Creates `name` in `parent`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        if self.dir_mut(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node::new(kind, perm, uid, gid));
        let dir = self.dir_mut(parent)?;
        dir.entries.insert(name.to_owned(), ino);
        if kind == Kind::Dir {
            dir.nlink += 1;
        }
        Ok(ino)
    }

    /// Removes the name `name` from `parent` (a file, or an empty
    /// directory if `dir`).
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let node = self.node(ino)?;
        match (node.kind, dir) {
            (Kind::Dir, false) => return Err(libc::EISDIR),
            (Kind::File, true) => return Err(libc::ENOTDIR),
            (Kind::Dir, true) if !node.entries.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        let p = self.dir_mut(parent)?;
        p.entries.remove(name);
        if dir {
            p.nlink -= 1;
        }
        // The inode stays: a durable name may still refer to it.
        let n = self.node_mut(ino)?;
        n.nlink = n.nlink.saturating_sub(if dir { 2 } else { 1 });
        Ok(())
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`, replacing
    /// what is there unless `noreplace`.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        let kind = self.node(ino)?.kind;
        self.dir_mut(new_parent)?;
        if let Ok(old) = self.lookup(new_parent, new_name) {
            if old == ino {
                return Ok(());
            }
            if noreplace {
                return Err(libc::EEXIST);
            }
            let target = self.node(old)?;
            match (kind, target.kind) {
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                _ => {}
            }
            self.remove(new_parent, new_name, target.kind == Kind::Dir)?;
        }
        let p = self.dir_mut(parent)?;
        p.entries.remove(name);
        if kind == Kind::Dir {
            p.nlink -= 1;
        }
        let np = self.dir_mut(new_parent)?;
        np.entries.insert(new_name.to_owned(), ino);
        if kind == Kind::Dir {
            np.nlink += 1;
        }
        Ok(())
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<&[u8], Errno> {
        let n = self.node(ino)?;
        if n.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let len = n.data.len() as u64;
        let start = offset.min(len) as usize;
        let end = offset.saturating_add(size as u64).min(len) as usize;
        Ok(&n.data[start..end])
    }

    /// Writes `data` at `offset`; a write past the end leaves a hole of
    /// zeros.
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        if n.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        let old = n.data.len() as u64;
        if end > old {
            n.data.resize(end as usize, 0);
            n.mark_dirty(old, end);
        }
        n.data[offset as usize..end as usize].copy_from_slice(data);
        n.mark_dirty(offset, end);
        n.mtime = SystemTime::now();
        Ok(())
    }

    /// Sets a file's size (truncate or extend with zeros).
    pub fn set_size(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        if n.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        let old = n.data.len() as u64;
        n.data.resize(size as usize, 0);
        n.mark_dirty(old.min(size), old.max(size));
        n.mtime = SystemTime::now();
        Ok(())
    }

    /// Changes permission bits or owner.
    pub fn set_meta(
        &mut self,
        ino: u64,
        perm: Option<u16>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        n.perm = perm.unwrap_or(n.perm);
        n.uid = uid.unwrap_or(n.uid);
        n.gid = gid.unwrap_or(n.gid);
        Ok(())
    }

    /// fsync/fdatasync of a file: its data and size become durable.
    pub fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        let len = n.data.len();
        n.durable.resize(len, 0);
        for page in std::mem::take(&mut n.dirty) {
            let start = (page * PAGE) as usize;
            if start >= len {
                continue;
            }
            let end = (start + PAGE as usize).min(len);
            n.durable[start..end].copy_from_slice(&n.data[start..end]);
        }
        Ok(())
    }

    /// fsync of a directory: its entries become durable.
    pub fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        let d = self.dir_mut(ino)?;
        d.durable_entries = d.entries.clone();
        Ok(())
    }

    /// A failed fsync: like Linux after a writeback error, the pages are no
    /// longer dirty, yet they never reached the durable image. A program
    /// that retries the fsync and trusts its success loses them.
    pub fn lose_dirty(&mut self, ino: u64) -> Result<(), Errno> {
        self.node_mut(ino)?.dirty.clear();
        Ok(())
    }

    /// A power cut: every inode reachable through durable names keeps its
    /// durable contents; everything else is gone.
    pub fn power_cut(&mut self) {
        let mut kept = HashMap::new();
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut queue = VecDeque::from([ROOT]);
        while let Some(ino) = queue.pop_front() {
            if kept.contains_key(&ino) {
                continue;
            }
            let Some(old) = self.nodes.get(&ino) else {
                continue;
            };
            let mut n = old.clone();
            n.data = n.durable.clone();
            n.dirty.clear();
            n.entries = n.durable_entries.clone();
            for &child in n.entries.values() {
                *links.entry(child).or_default() += 1;
                queue.push_back(child);
            }
            kept.insert(ino, n);
        }
        let subdirs: HashMap<u64, u32> = kept
            .iter()
            .map(|(&ino, n)| {
                let dirs = n
                    .entries
                    .values()
                    .filter(|c| kept.get(c).is_some_and(|c| c.kind == Kind::Dir))
                    .count();
                (ino, dirs as u32)
            })
            .collect();
        for (ino, n) in kept.iter_mut() {
            n.nlink = match n.kind {
                Kind::Dir => 2 + subdirs[ino],
                Kind::File => links.get(ino).copied().unwrap_or(0),
            };
        }
        self.nodes = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(t: &mut Tree, name: &str) -> u64 {
        t.create(ROOT, OsStr::new(name), Kind::File, 0o644, 0, 0)
            .unwrap()
    }

    #[test]
    fn fsync_covers_one_file_and_not_its_name() {
        let mut t = Tree::default();
        let a = file(&mut t, "a");
        let b = file(&mut t, "b");
        t.write(a, 0, b"alpha").unwrap();
        t.write(b, 0, b"beta").unwrap();
        t.sync_file(a).unwrap();
        t.power_cut();
        // Neither name was made durable.
        assert_eq!(t.lookup(ROOT, OsStr::new("a")), Err(libc::ENOENT));

        let a = file(&mut t, "a");
        let b = file(&mut t, "b");
        t.write(a, 0, b"alpha").unwrap();
        t.write(b, 0, b"beta").unwrap();
        t.sync_dir(ROOT).unwrap();
        t.sync_file(a).unwrap();
        t.write(a, 5, b"-more").unwrap();
        t.power_cut();
        let a = t.lookup(ROOT, OsStr::new("a")).unwrap();
        let b = t.lookup(ROOT, OsStr::new("b")).unwrap();
        assert_eq!(t.read(a, 0, 100).unwrap(), b"alpha", "size as of the fsync");
        assert_eq!(t.read(b, 0, 100).unwrap(), b"", "b was never fsynced");
    }

    #[test]
    fn truncate_and_rewrite_roll_back_to_the_synced_image() {
        let mut t = Tree::default();
        let a = file(&mut t, "a");
        t.sync_dir(ROOT).unwrap();
        t.write(a, 0, &[7u8; 10_000]).unwrap();
        t.sync_file(a).unwrap();
        t.set_size(a, 100).unwrap();
        t.write(a, 0, b"new").unwrap();
        t.power_cut();
        assert_eq!(t.read(a, 0, 20_000).unwrap(), &[7u8; 10_000][..]);
    }

    #[test]
    fn rename_and_unlink_need_the_directory_fsync() {
        let mut t = Tree::default();
        let a = file(&mut t, "a");
        t.write(a, 0, b"old").unwrap();
        t.sync_file(a).unwrap();
        t.sync_dir(ROOT).unwrap();
        let tmp = file(&mut t, "a.tmp");
        t.write(tmp, 0, b"new").unwrap();
        t.sync_file(tmp).unwrap();
        t.rename(ROOT, OsStr::new("a.tmp"), ROOT, OsStr::new("a"), false)
            .unwrap();
        t.power_cut();
        let a = t.lookup(ROOT, OsStr::new("a")).unwrap();
        assert_eq!(t.read(a, 0, 10).unwrap(), b"old", "rename not durable");

        t.remove(ROOT, OsStr::new("a"), false).unwrap();
        t.power_cut();
        assert!(
            t.lookup(ROOT, OsStr::new("a")).is_ok(),
            "unlink not durable"
        );
        t.remove(ROOT, OsStr::new("a"), false).unwrap();
        t.sync_dir(ROOT).unwrap();
        t.power_cut();
        assert!(t.lookup(ROOT, OsStr::new("a")).is_err());
    }

    #[test]
    fn subdirectory_needs_both_fsyncs() {
        let mut t = Tree::default();
        let d = t
            .create(ROOT, OsStr::new("d"), Kind::Dir, 0o755, 0, 0)
            .unwrap();
        let f = t
            .create(d, OsStr::new("f"), Kind::File, 0o644, 0, 0)
            .unwrap();
        t.write(f, 0, b"x").unwrap();
        t.sync_file(f).unwrap();
        t.sync_dir(d).unwrap();
        t.power_cut();
        assert!(t.lookup(ROOT, OsStr::new("d")).is_err(), "root not synced");
        assert_eq!(t.node(ROOT).unwrap().nlink, 2);
    }

    #[test]
    fn failed_fsync_loses_the_pages() {
        let mut t = Tree::default();
        let a = file(&mut t, "a");
        t.sync_dir(ROOT).unwrap();
        t.write(a, 0, b"lost").unwrap();
        t.lose_dirty(a).unwrap();
        // A retried fsync succeeds and covers nothing.
        t.sync_file(a).unwrap();
        t.power_cut();
        assert_eq!(t.read(a, 0, 10).unwrap(), &[0u8; 4][..]);
    }
}
