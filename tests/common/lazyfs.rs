//! A lose-unsynced-writes filesystem for the power-loss nemesis, after Jepsen's LazyFS: a FUSE passthrough
//! over a backing directory that remembers, per file, what has not been fsynced since it was written, and
//! on a simulated power loss puts every file back to what its last fsync made durable.
//!
//! SIGKILL alone proves little about durability: the kernel's page cache outlives the process, so a write
//! that was never synced survives it. Here a write reaches the backing file at once (reads need no merging),
//! but the filesystem first saves the bytes it overwrites below the file's last synced length and remembers
//! that length; `fsync`/`fdatasync` forgets both. [`LazyFs::lose_unsynced_writes`] restores the saved bytes
//! and cuts each file back to its synced length — what a machine that lost power would find on its disk.
//! Metadata (create, rename, unlink, mkdir) is durable at once, as on a journalling filesystem.
//!
//! [`LazyFs::set_full`] makes every write that would grow a file fail with ENOSPC: a disk that filled up.
//!
//! The kernel must not cache data or attributes behind our back (the files change under it on a power
//! loss): files are opened with direct I/O and every reply has a zero time-to-live.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::SystemTime;

use fuser::Errno;
use fuser::FileAttr;
use fuser::FileHandle;
use fuser::FileType;
use fuser::Filesystem;
use fuser::FopenFlags;
use fuser::Generation;
use fuser::INodeNo;
use fuser::LockOwner;
use fuser::OpenFlags;
use fuser::RenameFlags;
use fuser::ReplyAttr;
use fuser::ReplyCreate;
use fuser::ReplyData;
use fuser::ReplyDirectory;
use fuser::ReplyEmpty;
use fuser::ReplyEntry;
use fuser::ReplyOpen;
use fuser::ReplyStatfs;
use fuser::ReplyWrite;
use fuser::Request;
use fuser::TimeOrNow;
use fuser::WriteFlags;

/// Granularity of the saved bytes an unsynced overwrite would destroy.
const PAGE: u64 = 4096;
/// The kernel caches nothing.
const TTL: Duration = Duration::ZERO;

/// A mounted lazy filesystem; unmounted when dropped.
pub(crate) struct LazyFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

/// What a file has written since its last fsync.
#[derive(Default)]
struct Unsynced {
    /// The file's length at its last fsync (or when first written here).
    synced_len: u64,
    /// Page index → the page's bytes at the last fsync, saved before an unsynced write overwrote them.
    saved_pages: BTreeMap<u64, Vec<u8>>,
}

#[derive(Default)]
struct State {
    backing: PathBuf,
    /// Inode → path relative to the backing directory (the root is inode 1, path "").
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_inode: u64,
    /// Handle → the open file's inode and the backing file.
    open_files: HashMap<u64, (u64, Arc<File>)>,
    next_handle: u64,
    /// Per relative path: what a power loss would take back.
    unsynced: HashMap<PathBuf, Unsynced>,
    /// Writes that grow a file fail with ENOSPC.
    full: bool,
    /// Files cut back and unsynced bytes dropped by power losses, for the run's summary.
    stats: LossStats,
}

/// What simulated power losses took back.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LossStats {
    /// Files that had unsynced writes at a power loss.
    pub(crate) files_rolled_back: u64,
    /// Bytes beyond the synced lengths that were dropped.
    pub(crate) bytes_dropped: u64,
}

impl LazyFs {
    /// Mounts a lazy view of `backing` at `mountpoint` (both directories, created if missing).
    pub(crate) fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<LazyFs> {
        remove_stale_mounts();
        std::fs::create_dir_all(backing)?;
        std::fs::create_dir_all(mountpoint)?;
        let mut state = State { backing: backing.to_owned(), next_inode: 2, next_handle: 1, ..State::default() };
        state.paths.insert(INodeNo::ROOT.0, PathBuf::new());
        state.inodes.insert(PathBuf::new(), INodeNo::ROOT.0);
        let state = Arc::new(Mutex::new(state));
        let mut config = fuser::Config::default();
        // No auto-unmount (fusermount3's helper did not unmount here when the process died); `Drop` unmounts.
        config.mount_options = vec![fuser::MountOption::FSName("fjord-lazyfs".to_owned())];
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(2);
        let session = fuser::spawn_mount2(Lazy(state.clone()), mountpoint, &config)?;
        Ok(LazyFs { state, mountpoint: mountpoint.to_owned(), session: Some(session) })
    }

    /// Simulates a power loss: every file goes back to what its last fsync made durable. Call it only while
    /// no process uses the filesystem (kill them first), as a machine's power goes for everyone at once.
    pub(crate) fn lose_unsynced_writes(&self) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap();
        state.open_files.clear();
        let unsynced = std::mem::take(&mut state.unsynced);
        for (path, lost) in unsynced {
            let file = match std::fs::OpenOptions::new().write(true).open(state.backing.join(&path)) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            let len = file.metadata()?.len();
            for (page, bytes) in &lost.saved_pages {
                file.write_all_at(bytes, page * PAGE)?;
            }
            file.set_len(lost.synced_len)?;
            state.stats.files_rolled_back += 1;
            state.stats.bytes_dropped += len.saturating_sub(lost.synced_len);
        }
        Ok(())
    }

    /// Makes writes that grow a file fail with ENOSPC (`true`), or succeed again (`false`).
    pub(crate) fn set_full(&self, full: bool) {
        self.state.lock().unwrap().full = full;
    }

    /// What simulated power losses have taken back so far.
    pub(crate) fn stats(&self) -> LossStats {
        self.state.lock().unwrap().stats
    }
}

/// Detaches lazy filesystems whose serving process died (a test killed mid-run): their mountpoints answer
/// every call with ENOTCONN.
fn remove_stale_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return };
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some("fjord-lazyfs"), Some(mountpoint)) = (fields.next(), fields.next()) else { continue };
        let stale = std::fs::metadata(mountpoint).is_err_and(|error| error.raw_os_error() == Some(libc::ENOTCONN));
        if stale && let Ok(path) = std::ffi::CString::new(mountpoint) {
            // SAFETY: a NUL-terminated path; umount2 reads it and nothing else.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

impl Drop for LazyFs {
    /// Unmounts (lazily, so a file something still holds cannot keep the mount) and waits for the FUSE
    /// session to end.
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Ok(path) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()) {
                // SAFETY: a NUL-terminated path; umount2 reads it and nothing else.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = session.join();
        }
    }
}

impl State {
    fn path(&self, inode: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&inode.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn inode_of(&mut self, path: &Path) -> u64 {
        if let Some(inode) = self.inodes.get(path) {
            return *inode;
        }
        let inode = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(path.to_owned(), inode);
        self.paths.insert(inode, path.to_owned());
        inode
    }

    fn attr(&mut self, path: &Path) -> Result<FileAttr, Errno> {
        let metadata = std::fs::symlink_metadata(self.backing.join(path)).map_err(Errno::from)?;
        Ok(file_attr(INodeNo(self.inode_of(path)), &metadata))
    }

    /// An open file and its current path (`None` once it has been unlinked: a power loss leaves nothing
    /// of it to take back).
    fn file(&self, handle: FileHandle) -> Result<(Option<PathBuf>, Arc<File>), Errno> {
        let (inode, file) = self.open_files.get(&handle.0).ok_or(Errno::EBADF)?;
        Ok((self.paths.get(inode).cloned(), file.clone()))
    }

    fn open_handle(&mut self, path: &Path, file: File) -> FileHandle {
        let inode = self.inode_of(path);
        let handle = self.next_handle;
        self.next_handle += 1;
        self.open_files.insert(handle, (inode, Arc::new(file)));
        FileHandle(handle)
    }

    /// Before `path` (now `current_len` long) changes in `[from, to)`: starts remembering what it had at its
    /// last fsync, and saves the synced pages the change would overwrite.
    fn before_change(&mut self, path: &Path, file: &File, current_len: u64, from: u64, to: u64) -> Result<(), Errno> {
        let unsynced = self
            .unsynced
            .entry(path.to_owned())
            .or_insert_with(|| Unsynced { synced_len: current_len, ..Unsynced::default() });
        let end = to.min(unsynced.synced_len);
        if from >= end {
            return Ok(());
        }
        for page in from / PAGE..end.div_ceil(PAGE) {
            if unsynced.saved_pages.contains_key(&page) {
                continue;
            }
            let start = page * PAGE;
            let mut bytes = vec![0u8; (unsynced.synced_len.min(start + PAGE) - start) as usize];
            file.read_exact_at(&mut bytes, start).map_err(Errno::from)?;
            unsynced.saved_pages.insert(page, bytes);
        }
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) {
        self.unsynced.remove(to);
        let moved: Vec<(PathBuf, u64)> =
            self.inodes.iter().filter(|(path, _)| path.starts_with(from)).map(|(p, i)| (p.clone(), *i)).collect();
        if let Some(displaced) = self.inodes.remove(to) {
            self.paths.remove(&displaced);
        }
        for (old, inode) in moved {
            // `join("")` would add a trailing slash: the renamed path itself maps to `to` exactly.
            let new = match old.strip_prefix(from) {
                Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
                _ => to.to_owned(),
            };
            self.inodes.remove(&old);
            self.inodes.insert(new.clone(), inode);
            self.paths.insert(inode, new.clone());
            if let Some(unsynced) = self.unsynced.remove(&old) {
                self.unsynced.insert(new, unsynced);
            }
        }
    }

    fn forget_path(&mut self, path: &Path) {
        self.unsynced.remove(path);
        if let Some(inode) = self.inodes.remove(path) {
            self.paths.remove(&inode);
        }
    }
}

fn file_attr(inode: INodeNo, metadata: &std::fs::Metadata) -> FileAttr {
    let time = |seconds: i64, nanos: i64| {
        SystemTime::UNIX_EPOCH + Duration::new(seconds.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
    };
    let kind = if metadata.is_dir() {
        FileType::Directory
    } else if metadata.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: inode,
        size: metadata.len(),
        blocks: metadata.blocks(),
        atime: time(metadata.atime(), metadata.atime_nsec()),
        mtime: time(metadata.mtime(), metadata.mtime_nsec()),
        ctime: time(metadata.ctime(), metadata.ctime_nsec()),
        crtime: time(metadata.ctime(), metadata.ctime_nsec()),
        kind,
        perm: (metadata.mode() & 0o7777) as u16,
        nlink: metadata.nlink() as u32,
        uid: metadata.uid(),
        gid: metadata.gid(),
        rdev: metadata.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn system_time(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// The FUSE side: every operation under one lock, so a change and the bytes it saves are one step.
struct Lazy(Arc<Mutex<State>>);

impl Lazy {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Lazy {
    /// Removes `name` from `parent` with `remove` (a file or an empty directory); durable at once.
    fn remove(&self, parent: INodeNo, name: &OsStr, reply: ReplyEmpty, remove: fn(&Path) -> std::io::Result<()>) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|path| {
            remove(&state.backing.join(&path)).map_err(Errno::from)?;
            state.forget_path(&path);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }
}

impl Filesystem for Lazy {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        match state.child(parent, name).and_then(|path| state.attr(&path)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn getattr(&self, _req: &Request, inode: INodeNo, handle: Option<FileHandle>, reply: ReplyAttr) {
        let mut state = self.state();
        let attr = match (state.path(inode), handle) {
            (Ok(path), _) => state.attr(&path),
            // An unlinked file still open: its attributes come from the open file.
            (Err(_), Some(handle)) => {
                state.file(handle).and_then(|(_, file)| Ok(file_attr(inode, &file.metadata().map_err(Errno::from)?)))
            }
            (Err(errno), None) => Err(errno),
        };
        match attr {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        inode: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _handle: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let result = (|| {
            let path = state.path(inode)?;
            let full = state.backing.join(&path);
            if let Some(mode) = mode {
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).map_err(Errno::from)?;
            }
            if let Some(size) = size {
                let file = std::fs::OpenOptions::new().read(true).write(true).open(&full).map_err(Errno::from)?;
                let len = file.metadata().map_err(Errno::from)?.len();
                if size > len && state.full {
                    return Err(Errno::ENOSPC);
                }
                state.before_change(&path, &file, len, size.min(len), len)?;
                file.set_len(size).map_err(Errno::from)?;
            }
            if atime.is_some() || mtime.is_some() {
                let file = File::open(&full).map_err(Errno::from)?;
                let mut times = std::fs::FileTimes::new();
                if let Some(atime) = atime {
                    times = times.set_accessed(system_time(atime));
                }
                if let Some(mtime) = mtime {
                    times = times.set_modified(system_time(mtime));
                }
                file.set_times(times).map_err(Errno::from)?;
            }
            state.attr(&path)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|path| {
            std::fs::DirBuilder::new().mode(mode & !umask).create(state.backing.join(&path)).map_err(Errno::from)?;
            state.attr(&path)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |path| std::fs::remove_file(path));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |path| std::fs::remove_dir(path));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = (|| {
            if flags.bits() != 0 {
                return Err(Errno::EINVAL);
            }
            let (from, to) = (state.child(parent, name)?, state.child(new_parent, new_name)?);
            std::fs::rename(state.backing.join(&from), state.backing.join(&to)).map_err(Errno::from)?;
            state.rename(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&self, _req: &Request, inode: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        let result = state.path(inode).and_then(|path| {
            let access = flags.0 & libc::O_ACCMODE;
            // Always readable: saving the synced bytes an overwrite destroys reads through this handle.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(access != libc::O_RDONLY)
                .custom_flags(flags.0 & libc::O_APPEND)
                .open(state.backing.join(&path))
                .map_err(Errno::from)?;
            Ok(state.open_handle(&path, file))
        });
        match result {
            Ok(handle) => reply.opened(handle, FopenFlags::FOPEN_DIRECT_IO),
            Err(errno) => reply.error(errno),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|path| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .custom_flags(flags & (libc::O_EXCL | libc::O_APPEND))
                .mode(mode & !umask)
                .open(state.backing.join(&path))
                .map_err(Errno::from)?;
            let len = file.metadata().map_err(Errno::from)?.len();
            // The new (empty) file's name is durable; its bytes are not until it is synced.
            state.before_change(&path, &file, len, len, len)?;
            let attr = state.attr(&path)?;
            Ok((attr, state.open_handle(&path, file)))
        });
        match result {
            Ok((attr, handle)) => reply.created(&TTL, &attr, Generation(0), handle, FopenFlags::FOPEN_DIRECT_IO),
            Err(errno) => reply.error(errno),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _req: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = self.state().file(handle);
        let result = file.and_then(|(_, file)| {
            let mut buffer = vec![0u8; size as usize];
            let mut filled = 0;
            while filled < buffer.len() {
                match file.read_at(&mut buffer[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(Errno::from(error)),
                }
            }
            buffer.truncate(filled);
            Ok(buffer)
        });
        match result {
            Ok(bytes) => reply.data(&bytes),
            Err(errno) => reply.error(errno),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _req: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let result = state.file(handle).and_then(|(path, file)| {
            let len = file.metadata().map_err(Errno::from)?.len();
            let offset = if flags.0 & libc::O_APPEND != 0 { len } else { offset };
            let end = offset + data.len() as u64;
            if end > len && state.full {
                return Err(Errno::ENOSPC);
            }
            if let Some(path) = path {
                state.before_change(&path, &file, len, offset, end)?;
            }
            file.write_all_at(data, offset).map_err(Errno::from)?;
            Ok(data.len() as u32)
        });
        match result {
            Ok(written) => reply.written(written),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(&self, _req: &Request, _inode: INodeNo, _handle: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().open_files.remove(&handle.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _inode: INodeNo, handle: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.state();
        match state.file(handle) {
            // Durable from here on: a power loss keeps everything written so far. (The backing file is
            // not synced: the loss is simulated, and the tests should not pay for real fsyncs.)
            Ok((path, _)) => {
                if let Some(path) = path {
                    state.unsynced.remove(&path);
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn fsyncdir(&self, _req: &Request, _inode: INodeNo, _handle: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn readdir(&self, _req: &Request, inode: INodeNo, _handle: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut state = self.state();
        let result = state.path(inode).and_then(|path| {
            let mut entries =
                vec![(inode.0, FileType::Directory, ".".into()), (inode.0, FileType::Directory, "..".into())];
            for entry in std::fs::read_dir(state.backing.join(&path)).map_err(Errno::from)? {
                let entry = entry.map_err(Errno::from)?;
                let kind = if entry.file_type().map_err(Errno::from)?.is_dir() {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                let child = state.inode_of(&path.join(entry.file_name()));
                entries.push((child, kind, entry.file_name()));
            }
            Ok(entries)
        });
        match result {
            Ok(entries) => {
                for (index, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn statfs(&self, _req: &Request, _inode: INodeNo, reply: ReplyStatfs) {
        let state = self.state();
        match backing_statvfs(&state.backing) {
            Ok(stat) if state.full => reply.statfs(stat.f_blocks, 0, 0, stat.f_files, stat.f_ffree, 4096, 255, 4096),
            Ok(stat) => {
                reply.statfs(stat.f_blocks, stat.f_bfree, stat.f_bavail, stat.f_files, stat.f_ffree, 4096, 255, 4096)
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _inode: INodeNo,
        handle: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = state.file(handle).and_then(|(path, file)| {
            let len = file.metadata().map_err(Errno::from)?.len();
            if state.full {
                return Err(Errno::ENOSPC);
            }
            if let Some(path) = path {
                state.before_change(&path, &file, len, offset, offset + length)?;
            }
            // SAFETY: fallocate on a file descriptor we own, with plain integer arguments.
            let done = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, length as i64) };
            if done == 0 { Ok(()) } else { Err(Errno::from(std::io::Error::last_os_error())) }
        });
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }
}

/// The backing filesystem's block counts (in 4 KiB blocks).
fn backing_statvfs(path: &Path) -> Result<libc::statvfs, Errno> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer statvfs fills on success.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(Errno::from(std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let mut stat = unsafe { stat.assume_init() };
    let scale = stat.f_frsize / 4096;
    if scale > 1 {
        stat.f_blocks *= scale;
        stat.f_bfree *= scale;
        stat.f_bavail *= scale;
    }
    Ok(stat)
}
