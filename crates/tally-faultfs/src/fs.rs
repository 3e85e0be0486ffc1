//! The FUSE side: a passthrough of the backing folder whose file data goes through
//! [`Unsynced`] until the file is fsynced.
//!
//! Metadata (create, unlink, rename, mkdir, mode, times) goes to the backing folder at once:
//! only file data and sizes are volatile. That leaves out lost directory entries, which SQLite
//! guards against itself: it syncs the folder at the first sync of a WAL or journal it created.
//!
//! One mutex holds the whole state, and an fsync keeps it through the real sync of the backing
//! file, so a power cut comes either before an fsync (which then fails) or after it (whose data
//! is then kept): never in the middle of one that is answered success.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::volatile::Unsynced;

/// No caching of names or attributes in the kernel: every lookup and stat comes here, so what
/// the kernel believes is always what the overlay says.
const TTL: Duration = Duration::ZERO;

/// What the mount and its owner share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) backing: PathBuf,
    /// Set by the power cut: from then on every request fails and nothing reaches the backing
    /// folder.
    pub(crate) cut: bool,
    pub(crate) nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
}

/// One inode the kernel knows. Inode numbers are never reused (a test mounts for seconds).
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// Relative to the backing folder; `None` once unlinked or replaced by a rename.
    path: Option<PathBuf>,
    /// The backing file, opened on first use and kept (so data can be read after an unlink).
    file: Option<File>,
    pub(crate) unsynced: Option<Unsynced>,
}

impl Node {
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl State {
    pub(crate) fn new(backing: PathBuf) -> Self {
        let mut state = Self {
            backing,
            cut: false,
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next_ino: 2,
        };
        state.nodes.insert(INodeNo::ROOT.0, Node { path: Some(PathBuf::new()), ..Node::default() });
        state.by_path.insert(PathBuf::new(), INodeNo::ROOT.0);
        state
    }

    fn intern(&mut self, path: PathBuf) -> u64 {
        if let Some(&ino) = self.by_path.get(&path) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_path.insert(path.clone(), ino);
        self.nodes.insert(ino, Node { path: Some(path), ..Node::default() });
        ino
    }

    fn node(&mut self, ino: INodeNo) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        let node = self.nodes.get(&ino.0).ok_or(Errno::ENOENT)?;
        node.path.clone().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path_of(parent)?.join(name))
    }

    /// Forgets the name `path` (it was unlinked or renamed over); its inode lives on unnamed.
    fn detach(&mut self, path: &Path) {
        if let Some(ino) = self.by_path.remove(path)
            && let Some(node) = self.nodes.get_mut(&ino)
        {
            node.path = None;
        }
    }

    /// The backing file of `ino`, opened for reading and writing (we run as root or as the
    /// owner of every file, as the mount's only user).
    fn file(&mut self, ino: INodeNo) -> Result<&File, Errno> {
        if self.node(ino)?.file.is_none() {
            let full = self.backing.join(self.path_of(ino)?);
            let file = File::options().read(true).write(true).open(full).map_err(Errno::from)?;
            self.node(ino)?.file = Some(file);
        }
        self.node(ino)?.file.as_ref().ok_or(Errno::EIO)
    }

    fn attr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let node = self.nodes.get(&ino.0).ok_or(Errno::ENOENT)?;
        let metadata = match (&node.file, &node.path) {
            (Some(file), _) => file.metadata(),
            (None, Some(path)) => fs::symlink_metadata(self.backing.join(path)),
            (None, None) => return Err(Errno::ENOENT),
        }
        .map_err(Errno::from)?;
        let size = node.unsynced.as_ref().map(Unsynced::size);
        Ok(to_attr(ino, &metadata, size))
    }

    /// The overlay of `ino`, made when its first unsynced change comes.
    fn unsynced(&mut self, ino: INodeNo) -> Result<(&File, &mut Unsynced), Errno> {
        self.file(ino)?;
        let node = self.node(ino)?;
        let file = node.file.as_ref().ok_or(Errno::EIO)?;
        if node.unsynced.is_none() {
            node.unsynced = Some(Unsynced::new(file.metadata().map_err(Errno::from)?.len()));
        }
        let unsynced = node.unsynced.as_mut().ok_or(Errno::EIO)?;
        Ok((file, unsynced))
    }

    /// fsync: the overlay goes to the backing file, which is then synced for real.
    fn sync(&mut self, ino: INodeNo, data_only: bool) -> Result<(), Errno> {
        let file = self.file(ino)?.try_clone().map_err(Errno::from)?;
        let node = self.node(ino)?;
        if let Some(unsynced) = &node.unsynced {
            unsynced.apply(&file).map_err(Errno::from)?;
        }
        node.unsynced = None;
        if data_only { file.sync_data() } else { file.sync_all() }.map_err(Errno::from)
    }

    fn rename(&mut self, from: &Path, to: &Path) {
        self.detach(to);
        // The renamed entry and, for a folder, everything under it move to the new name.
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(path, _)| path.starts_with(from))
            .map(|(path, &ino)| (path.clone(), ino))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = match old.strip_prefix(from) {
                Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
                _ => to.to_path_buf(),
            };
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
    }
}

fn to_attr(ino: INodeNo, metadata: &fs::Metadata, size: Option<u64>) -> FileAttr {
    let size = size.unwrap_or(metadata.len());
    let time = |seconds: i64, nanos: i64| {
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(seconds.max(0) as u64)
            + Duration::from_nanos(nanos.max(0) as u64)
    };
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: time(metadata.atime(), metadata.atime_nsec()),
        mtime: time(metadata.mtime(), metadata.mtime_nsec()),
        ctime: time(metadata.ctime(), metadata.ctime_nsec()),
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::from_std(metadata.file_type()).unwrap_or(FileType::RegularFile),
        perm: (metadata.mode() & 0o7777) as u16,
        nlink: metadata.nlink() as u32,
        uid: metadata.uid(),
        gid: metadata.gid(),
        rdev: metadata.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// The file system the session runs; the state is shared with [`crate::LazyFs`].
pub(crate) struct LazyFsImpl {
    pub(crate) state: Arc<Mutex<State>>,
}

impl LazyFsImpl {
    /// The state, or EIO once the power is cut.
    fn live(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let state = self.state.lock().map_err(|_| Errno::EIO)?;
        if state.cut { Err(Errno::EIO) } else { Ok(state) }
    }

    /// Runs `use_data` on file `ino`'s backing file and its overlay of unsynced writes: the one
    /// path of `read` and `write`.
    fn with_data<T>(
        &self,
        ino: INodeNo,
        use_data: impl FnOnce(&File, &mut Unsynced) -> io::Result<T>,
    ) -> Result<T, Errno> {
        let mut state = self.live()?;
        let (file, unsynced) = state.unsynced(ino)?;
        use_data(file, unsynced).map_err(Errno::from)
    }

    /// unlink or rmdir (`remove`) at once on the backing folder; an open file's inode lives on.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        remove: fn(PathBuf) -> io::Result<()>,
    ) -> Result<(), Errno> {
        let mut state = self.live()?;
        let path = state.child(parent, name)?;
        remove(state.backing.join(&path)).map_err(Errno::from)?;
        state.detach(&path);
        Ok(())
    }

    fn entry(
        &self,
        path_of: impl FnOnce(&State) -> Result<PathBuf, Errno>,
    ) -> Result<FileAttr, Errno> {
        let mut state = self.live()?;
        let path = path_of(&state)?;
        fs::symlink_metadata(state.backing.join(&path)).map_err(Errno::from)?;
        let ino = INodeNo(state.intern(path));
        state.attr(ino)
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(error) => reply.error(error),
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(error) => reply.error(error),
    }
}

fn reply_attr(reply: ReplyAttr, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(error) => reply.error(error),
    }
}

impl Filesystem for LazyFsImpl {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.entry(|state| state.child(parent, name)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.live().and_then(|state| state.attr(ino)));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.live().and_then(|mut state| {
            let full = state.path_of(ino).map(|path| state.backing.join(path));
            if let Some(mode) = mode {
                fs::set_permissions(full.clone()?, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(Errno::from)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(full.clone()?, uid, gid).map_err(Errno::from)?;
            }
            if atime.is_some() || mtime.is_some() {
                let when = |time: TimeOrNow| match time {
                    TimeOrNow::SpecificTime(at) => at,
                    TimeOrNow::Now => SystemTime::now(),
                };
                let mut times = fs::FileTimes::new();
                if let Some(atime) = atime {
                    times = times.set_accessed(when(atime));
                }
                if let Some(mtime) = mtime {
                    times = times.set_modified(when(mtime));
                }
                state.file(ino)?.set_times(times).map_err(Errno::from)?;
            }
            // A size change is data: volatile like a write.
            if let Some(size) = size {
                state.unsynced(ino)?.1.set_size(size);
            }
            state.attr(ino)
        });
        reply_attr(reply, result);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.live().and_then(|state| {
            let path = state.child(parent, name)?;
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(state.backing.join(path))
                .map_err(Errno::from)
        });
        reply_entry(reply, result.and_then(|()| self.entry(|state| state.child(parent, name))));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.remove(parent, name, fs::remove_file));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.remove(parent, name, fs::remove_dir));
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
        let result = self.live().and_then(|mut state| {
            // Exchange and no-replace renames are not used by SQLite or Tally.
            if !flags.is_empty() {
                return Err(Errno::EINVAL);
            }
            let from = state.child(parent, name)?;
            let to = state.child(newparent, newname)?;
            fs::rename(state.backing.join(&from), state.backing.join(&to)).map_err(Errno::from)?;
            state.rename(&from, &to);
            Ok(())
        });
        reply_empty(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No FOPEN_DIRECT_IO: without the writeback-cache option (not asked for) FUSE writes
        // through, each write(2) reaching `write` below before it returns, and mmap (SQLite's
        // `-shm`) keeps working; the kernel caches only what it read, and a cut unmounts it.
        match self.live().and_then(|mut state| state.file(ino).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(error) => reply.error(error),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.live().and_then(|mut state| {
            let path = state.child(parent, name)?;
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .mode(mode & !umask & 0o7777)
                .open(state.backing.join(&path))
                .map_err(Errno::from)?;
            let ino = INodeNo(state.intern(path));
            state.node(ino)?.file = Some(file);
            state.attr(ino)
        });
        match result {
            Ok(attr) => {
                reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty());
            }
            Err(error) => reply.error(error),
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
        match self.with_data(ino, |file, unsynced| unsynced.read(file, offset, u64::from(size))) {
            Ok(data) => reply.data(&data),
            Err(error) => reply.error(error),
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
        match self.with_data(ino, |file, unsynced| unsynced.write(file, offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(error) => reply.error(error),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not a sync: nothing to do.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.live().and_then(|mut state| state.sync(ino, datasync)));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.live().and_then(|mut state| {
            let path = state.path_of(ino)?;
            let mut entries = vec![
                (ino, FileType::Directory, ".".into()),
                (ino, FileType::Directory, "..".into()),
            ];
            for entry in fs::read_dir(state.backing.join(&path)).map_err(Errno::from)? {
                let entry = entry.map_err(Errno::from)?;
                let kind = entry
                    .file_type()
                    .ok()
                    .and_then(FileType::from_std)
                    .unwrap_or(FileType::RegularFile);
                let child = INodeNo(state.intern(path.join(entry.file_name())));
                entries.push((child, kind, entry.file_name()));
            }
            Ok(entries)
        });
        match listed {
            Ok(entries) => {
                for (index, (child, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(child, index as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(error) => reply.error(error),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Entries are on the backing folder already; sync it so that they are durable there.
        let result = self.live().and_then(|state| {
            let path = state.backing.join(state.path_of(ino)?);
            File::open(path).and_then(|dir| dir.sync_all()).map_err(Errno::from)
        });
        reply_empty(reply, result);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Room is not what this file system tests: report plenty (1 TiB of 4 KiB blocks).
        let blocks = 1 << 28;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
