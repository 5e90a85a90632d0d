//! # export — serve a block array and its attribute tree over FUSE
//!
//! [`mount`] puts a FUSE filesystem on a directory `DIR` holding `DIR/data`,
//! a regular file whose bytes are those of an [`ArrayFile`] (in `umd`, an
//! assembled md array), and, when [`MountOptions::tree`] is given, the
//! children of a [`kernfs`] attribute tree's root next to it (in `umd`,
//! `DIR/md/...`). The server speaks the Linux FUSE kernel protocol directly
//! on `/dev/fuse`: no libfuse, no FUSE crate.
//!
//! ## Responsibility boundary
//! This crate owns everything between the kernel's FUSE connection on one
//! side and the [`ArrayFile`] trait and the [`kernfs`] API on the other:
//! mounting and unmounting (`mount(2)` as root, the `fusermount3` helper
//! otherwise), protocol negotiation, the worker threads and their device
//! descriptors, the poll notifier thread, node ids (inode numbers),
//! attributes, directory listings, the table of attribute files open
//! through FUSE, and the mapping of each request to a reply. It knows
//! nothing of md: it calls [`ArrayFile::size`] and [`ArrayFile::read_at`]
//! (on a writable mount also [`write_at`](ArrayFile::write_at),
//! [`flush`](ArrayFile::flush) and [`copy_range`](ArrayFile::copy_range)),
//! with ranges already clamped or checked against the size, and for the tree
//! [`kernfs::Kernfs`]'s lookup/readdir/node and [`kernfs::Node::open`] plus
//! the [`kernfs::OpenFile`] operations; what an attribute shows or accepts,
//! and when it notifies, is the tree owner's business. It does not cache
//! data (the kernel's page cache does, for `data` only) and does not print.
//!
//! Node ids: 1 the root, 2 `data`, 3 `null` (with
//! [`MountOptions::null_file`]), and `kernfs id + 1024` for every other
//! tree node (kernfs ids are never reused, so neither are these; the
//! tree's root is the FUSE root). A tree child of the root named `data`
//! (or `null`) is refused by [`mount`] and hidden if created later.
//!
//! Internally: `abi` holds the wire structures (decoded field by field from
//! the byte buffer, never transmuted), `sys` the system calls, `fs` the node
//! mapping and request handlers, `attrs` the open-attribute table and the
//! notifier, `session` the INIT handshake, the worker loop and the unmount
//! state.
//!
//! ## Protocol
//! Targets FUSE protocol **7.35** and accepts kernels offering 7.23 or later
//! (it replies with the smaller minor). From `FUSE_INIT` it asks for
//! `FUSE_ASYNC_READ`, `FUSE_ATOMIC_O_TRUNC`, `FUSE_BIG_WRITES`,
//! `FUSE_PARALLEL_DIROPS` and `FUSE_MAX_PAGES` when the kernel offers them,
//! with `max_write` 1 MiB, `max_pages` = 1 MiB of pages (so reads of up to
//! 1 MiB a request), `max_readahead` = min(kernel's, 1 MiB),
//! `max_background` 64 and nanosecond time granularity. As the kernel
//! offers at most its default readahead (128 KiB) in INIT, a root mount
//! also raises the mount's `/sys/class/bdi/MAJ:MIN/read_ahead_kb` to 1 MiB
//! (best effort) so that buffered sequential reads arrive as 1 MiB
//! requests. READDIRPLUS is not advertised.
//!
//! Handled: LOOKUP, FORGET, BATCH_FORGET, GETATTR, SETATTR, READLINK, OPEN,
//! READ, WRITE, FLUSH, RELEASE, FSYNC, OPENDIR, READDIR, RELEASEDIR,
//! FSYNCDIR, STATFS, ACCESS, POLL, COPY_FILE_RANGE and COPY_FILE_RANGE_64
//! (7.45; kernels that know it send it whatever minor was negotiated),
//! INTERRUPT (ignored: every request completes promptly), DESTROY.
//! Creating, removing, renaming, linking, `chmod`/`chown` and resizing
//! answer EROFS (EPERM on a writable mount); everything else ENOSYS
//! (xattrs, locks, lseek, ...; the kernel then stops asking). POLL is never
//! ENOSYS (that would switch poll off for the whole connection): `data`,
//! `null` and directories report the kernel's default mask. Nor is
//! COPY_FILE_RANGE (that would switch `copy_file_range` off): a copy not
//! from `data` to `data` answers EOPNOTSUPP (`data` to `data` on a
//! read-only mount EROFS), on which the kernel copies by reading and
//! writing itself (a splice within one filesystem; seen on Linux 6.18) or
//! hands EOPNOTSUPP to the caller, which does.
//!
//! * `copy_file_range(2)` from `data` to `data` (writable mount) goes to
//!   [`ArrayFile::copy_range`], with the kernel's checks applied again: the
//!   source range is cut at the end of the file (a short count, 0 at or
//!   past the end), a destination range reaching past the end answers
//!   EFBIG with nothing written (the file never grows, wraps or is
//!   truncated), overlapping ranges answer EINVAL, non-zero flags EINVAL,
//!   and one request copies at most `0x7fff_f000` bytes (the kernel's
//!   `MAX_RW_COUNT`; a short count). [`ArrayFile::copy_range`]'s default
//!   copies through the worker's data buffer with `read_at`/`write_at`.
//!
//! * `data`: read-only (OPEN for writing or with `O_TRUNC` is EROFS),
//!   through the page cache, unless [`MountOptions::read_only`] is `false`
//!   (see there: writes, `fsync`, `copy_file_range`, `FOPEN_DIRECT_IO`).
//!   With 7.35 or later OPEN replies `FOPEN_NOFLUSH`, so closing costs no round trip, and a process reading
//!   its own mount cannot hang at exit in FLUSH after its workers are gone.
//! * Attributes (mode `0100000 | kernfs mode`, size `PAGE_SIZE` like
//!   sysfs): OPEN maps `O_ACCMODE` to [`kernfs::OpenFlags`], refuses with
//!   EACCES a write open of a mode without write bits (a read open without
//!   read bits), as kernfs does, ignores `O_TRUNC`, and replies a file
//!   handle with `FOPEN_DIRECT_IO` (and `FOPEN_NOFLUSH`) so that every read
//!   and write reaches the server; the file stays seekable (readers
//!   `lseek(0)` and read again). READ and WRITE go to
//!   [`kernfs::OpenFile::read`]/[`write`](kernfs::OpenFile::write) at the
//!   request's offset, their errors (ENODEV once the node is removed,
//!   EINVAL, E2BIG, ...) to the caller. SETATTR of an attribute accepts size
//!   0 and time updates as no-ops (truncation from `open(O_TRUNC)` without
//!   `FUSE_ATOMIC_O_TRUNC`, or `truncate(2)`), like sysfs. RELEASE closes the
//!   kernfs file. POLL answers [`kernfs::OpenFile::poll`] and, when the
//!   kernel asks (`FUSE_POLL_SCHEDULE_NOTIFY`), registers its handle for a
//!   `FUSE_NOTIFY_POLL` (see below).
//! * Directories `0040000 | mode`, symlinks `0120000 | 0777` (READLINK
//!   answers the target). Tree nodes are looked up with an entry timeout of
//!   0, so a removed node is ENOENT at the next path walk; attributes are
//!   cached for 1 s.
//! * `null` (optional): one page of zeros, read-only, `FOPEN_DIRECT_IO`,
//!   answered from a static page: the cheapest possible READ, a baseline
//!   for attribute reads in benchmarks.
//!
//! With a tree, the mount itself is not `MS_RDONLY` (attributes take
//! writes); without one it is, as before.
//!
//! ## Synchronization model
//! * `threads` worker threads. Worker 0 reads the session descriptor
//!   returned by the mount; every other worker reads its own clone of it
//!   (`FUSE_DEV_IOC_CLONE` on a fresh `/dev/fuse` descriptor). All of them
//!   draw requests from the one queue of the connection, and each writes
//!   the reply to the descriptor it read the request from. `FUSE_INIT` is
//!   answered by [`mount`] itself before any worker starts, and [`mount`]
//!   returns once every thread has allocated its buffers, so the mount is
//!   usable (and serving allocates nothing more, beyond what the
//!   [`ArrayFile`] and kernfs implementations do) when `mount` returns.
//! * Each worker owns its buffers, allocated once when it starts: a
//!   request buffer (1 MiB + 4 KiB, enough for a maximal WRITE) and reply
//!   buffers. A READ reply is `writev(header, data)` with the data read by
//!   [`ArrayFile::read_at`] or [`kernfs::OpenFile::read`] straight into the
//!   worker's data buffer. A WRITE's payload is handed to
//!   [`kernfs::OpenFile::write`] as a slice of the request buffer and the
//!   reply encoded into the reply buffer: for an attribute opened with a
//!   prealloc buffer (and a `store` that does not allocate), nothing is
//!   allocated between reading the request and writing the reply. (A
//!   thread's first kernfs notify registers it with the epoch collector;
//!   each worker does that at start on a private tree, see `attrs`.)
//! * Descriptors are non-blocking; a worker `poll`s its descriptor together
//!   with a shared stop `eventfd`, then reads (EAGAIN means another worker
//!   took the request). A worker ends when the read reports ENODEV (the
//!   filesystem was unmounted or the connection aborted) or when the stop
//!   signal is raised.
//! * With a tree, one **notifier thread** (`umd-fuse-notify`) serves no
//!   request. It sleeps in [`kernfs::Kernfs::wait_notify`] (at most 250 ms,
//!   then looks at the stop signal); after every change of the notify
//!   generation it collects, slot by slot, the poll registrations whose
//!   file now reports `POLLPRI` (changed since its last offset-0 read, or
//!   removed) into an array allocated when it started, dropping them, and
//!   only then, holding no lock, writes one `FUSE_NOTIFY_POLL(kh)` per
//!   handle to its own duplicate of the session descriptor. The kernel
//!   wakes the poller, which polls again (a new FUSE_POLL, registering
//!   again if it still waits). A worker registers a handle and computes the
//!   poll bits under the same slot mutex, so a notify is either seen by
//!   that poll or by the notifier's next scan: no wakeup is lost. A node's
//!   removal drains its open files and bumps the generation, so pollers of
//!   removed attributes are woken too.
//! * Shared, read-only after mount: the `Filesystem` (node mapping,
//!   `Arc<dyn ArrayFile>`, the tree), behind an `Arc`. Shared and mutable:
//!   the open-attribute table (a fixed array of [`MAX_OPEN_ATTRS`] slots,
//!   each behind its own mutex, plus a free-list mutex; OPEN beyond answers
//!   ENFILE), the unmount state (`Mutex<bool>`, held while unmounting so
//!   that concurrent [`Unmounter::unmount`] calls wait for the first) and
//!   the stop signal (`eventfd` plus flag). Lock order: a table slot mutex
//!   and the free-list mutex are never held together; under a slot mutex
//!   only the lock-free [`kernfs::OpenFile::poll`] is called; every other
//!   kernfs call (open, read, write, release, lookup, readdir) and every
//!   write to `/dev/fuse` happens with none of this crate's locks held, so
//!   kernfs's own lock order is the only one that matters below them. The
//!   unmount mutex is taken alone. A released file whose request is still
//!   in flight is closed when that request ends (the table holds an
//!   `Arc`). [`ArrayFile`] methods are called concurrently from all
//!   workers, without any lock.
//! * Shutdown: [`Unmounter::unmount`] detaches the mount, then raises the
//!   stop signal. Workers finish the request in hand and exit, the notifier
//!   within 250 ms; when the last device descriptor closes the kernel
//!   aborts the connection (waking pollers with an error), so a file still
//!   open on the detached mount gets ENOTCONN rather than keeping the
//!   server alive. [`Mount::wait`] joins the workers, raises the stop signal
//!   itself (the workers may have ended because the connection went away),
//!   joins the notifier and, if the mount is still on `DIR` (the connection
//!   was aborted, or a worker failed), detaches it. Attribute files still
//!   open then are closed (kernfs `release`) when the last thread drops the
//!   table.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod abi;
mod attrs;
mod fs;
mod session;
mod sys;

use std::ffi::CString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use session::{Method, Shared, Worker};

/// Filesystem type as shown in `/proc/mounts`.
pub const FSTYPE: &str = "fuse.umd";

/// Name of the file that serves the array, inside the mount point.
pub const DATA_FILE: &str = "data";

/// What the mount serves as `DIR/data`.
///
/// Called from several worker threads at once, hence `Send + Sync`.
pub trait ArrayFile: Send + Sync + 'static {
    /// Size of the file in bytes. Read on every attribute request, so it
    /// should be cheap; it may change over time (the kernel caches it for
    /// up to one second).
    fn size(&self) -> u64;

    /// Read exactly `buf.len()` bytes at `offset` (`offset + buf.len() <=
    /// size()` is guaranteed by the caller). An error becomes the errno of
    /// the reader's `read(2)`: the error's OS error code if it has one in
    /// 1..=511, EIO otherwise. A panic also becomes EIO.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Write all of `data` at `offset` (`offset + data.len() <= size()` is
    /// guaranteed by the caller: a write past the end is answered EFBIG
    /// without calling this). Called only on a mount with
    /// [`MountOptions::read_only`] `false`. Errors map as for
    /// [`read_at`](Self::read_at). The default refuses with EROFS.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let _ = (offset, data);
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    /// Make every completed write durable (`fsync(2)`/`fdatasync(2)` on
    /// `data`). The default has nothing to flush.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Copy `len` bytes of the file from offset `src` to offset `dst`:
    /// `copy_file_range(2)` from `data` to `data` (the FUSE
    /// `COPY_FILE_RANGE` request). Called only on a mount with
    /// [`MountOptions::read_only`] `false`, and the caller guarantees `0 <
    /// len`, `src + len <= size()`, `dst + len <= size()` and that the two
    /// ranges do not overlap (the kernel's rules for a copy within one
    /// file; see the crate doc).
    ///
    /// Returns the bytes copied: `len`, or fewer when an error stopped the
    /// copy after some bytes had been written (the caller's
    /// `copy_file_range` returns that short count; retrying the rest
    /// reports the error). The copied bytes must be written as
    /// [`write_at`](Self::write_at) writes them (same durability, same
    /// side effects). Errors map as for [`read_at`](Self::read_at).
    ///
    /// `buf` is scratch memory lent by the caller (the worker's read
    /// buffer: 1 MiB or more). The default, [`copy_by_read_write`],
    /// copies through it in pieces of `buf.len()` bytes with `read_at`
    /// and `write_at` and allocates nothing.
    fn copy_range(&self, src: u64, dst: u64, len: u64, buf: &mut [u8]) -> io::Result<u64> {
        copy_by_read_write(self, src, dst, len, buf)
    }
}

/// [`ArrayFile::copy_range`]'s default: copy `len` bytes from `src` to
/// `dst` (non-overlapping ranges inside the file) through `buf`, piece by
/// piece, each read with [`ArrayFile::read_at`] and then written with
/// [`ArrayFile::write_at`], in ascending order. Returns `len`, or the bytes
/// copied before the first error if there were any (else the error). An
/// empty `buf` is replaced by a 64 KiB one allocated here.
pub fn copy_by_read_write<F: ArrayFile + ?Sized>(
    file: &F,
    src: u64,
    dst: u64,
    len: u64,
    buf: &mut [u8],
) -> io::Result<u64> {
    let mut own = Vec::new();
    let buf = if buf.is_empty() {
        own.resize(64 << 10, 0u8);
        &mut own[..]
    } else {
        buf
    };
    let mut done = 0u64;
    while done < len {
        // Bounded by buf.len(), a usize.
        let n = (len - done).min(buf.len() as u64) as usize;
        let piece = &mut buf[..n];
        let r = file.read_at(src + done, piece).and_then(|()| file.write_at(dst + done, piece));
        match r {
            Ok(()) => done += n as u64,
            Err(_) if done > 0 => return Ok(done),
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Name of the optional null file (see [`MountOptions::null_file`]).
pub const NULL_FILE: &str = "null";

/// Most attribute files open at once through one mount; opening one more
/// fails with ENFILE.
pub const MAX_OPEN_ATTRS: usize = attrs::MAX_OPEN_ATTRS;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Number of worker threads serving requests (at least 1; 0 is taken
    /// as 1). Default 4.
    pub threads: usize,
    /// Mount read-only. With `false`, `data` opens for writing: WRITE goes
    /// to [`ArrayFile::write_at`] (past the end: EFBIG), FSYNC/FLUSH to
    /// [`ArrayFile::flush`], `copy_file_range(2)` within `data` to
    /// [`ArrayFile::copy_range`]; `data` is then opened with `FOPEN_DIRECT_IO`
    /// (no page cache, so no stale cached pages after a write; the cost is
    /// no readahead and no caching of reads: every read reaches the server
    /// with the caller's own size). `data` cannot be resized: truncation
    /// (`O_TRUNC`, `truncate(2)` to another size) fails EROFS; creating,
    /// removing or renaming anything fails EPERM. The mount is not
    /// `MS_RDONLY`.
    pub read_only: bool,
    /// Source shown in `/proc/mounts`, e.g. `"umd:raid5"`. Must not contain
    /// a NUL byte.
    pub fsname: String,
    /// Let users other than the mounter access the mount (`allow_other`;
    /// without root this needs `user_allow_other` in `/etc/fuse.conf`).
    pub allow_other: bool,
    /// An attribute tree to serve: the children of its root appear in `DIR`
    /// next to `data` (in `umd`, `DIR/md/...`). Its attributes are writable
    /// as their modes say even when `data` is read-only, so with a tree
    /// the mount itself is not `MS_RDONLY`; creating, removing, renaming
    /// or resizing anything still fails with EROFS. [`mount`] refuses a tree
    /// whose root has an active child named `data` (or `null` with
    /// [`null_file`](Self::null_file)); one created later is hidden.
    pub tree: Option<Arc<kernfs::Kernfs>>,
    /// Also serve `DIR/null`: a read-only file of one page of zeros, opened
    /// with direct I/O like an attribute, so that every `pread` reaches the
    /// server and does no work there. A baseline for benchmarks (`umd bench
    /// kernfs`: attribute `pread` against null-file `pread`).
    pub null_file: bool,
}

impl PartialEq for MountOptions {
    /// Field by field; trees compare by identity.
    fn eq(&self, other: &Self) -> bool {
        self.threads == other.threads
            && self.read_only == other.read_only
            && self.fsname == other.fsname
            && self.allow_other == other.allow_other
            && self.null_file == other.null_file
            && match (&self.tree, &other.tree) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for MountOptions {}

impl Default for MountOptions {
    /// Four threads, read-only, fsname `"umd"`, no `allow_other`, no tree,
    /// no null file.
    fn default() -> Self {
        MountOptions {
            threads: 4,
            read_only: true,
            fsname: "umd".to_string(),
            allow_other: false,
            tree: None,
            null_file: false,
        }
    }
}

impl MountOptions {
    /// Whether the mount itself is read-only (`MS_RDONLY`/`ro`): only
    /// without a tree, whose attributes take writes.
    fn mount_read_only(&self) -> bool {
        self.read_only && self.tree.is_none()
    }
}

/// A mounted filesystem and its worker threads.
///
/// Dropping it without calling [`Mount::wait`] unmounts and joins the
/// workers: a mount is never left behind by this process.
pub struct Mount {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    /// The poll notifier, when a tree is served.
    notifier: Option<JoinHandle<()>>,
    /// Set once `finish` ran: nothing left for `Drop` to do.
    finished: bool,
    /// What FUSE_INIT settled (for `Debug`).
    negotiated: Option<session::Negotiated>,
}

/// A cheap, cloneable handle that unmounts a [`Mount`] from any thread (for
/// example a signal-handling thread).
#[derive(Clone)]
pub struct Unmounter {
    shared: Arc<Shared>,
}

impl Unmounter {
    /// Detach the mount (`umount2(MNT_DETACH)` as root, `fusermount3 -u -z`
    /// otherwise) if it is still on its directory, then stop the workers, so
    /// that [`Mount::wait`] returns. Files still open on the detached mount
    /// get ENOTCONN from then on.
    ///
    /// Idempotent: only the first call acts; a concurrent call waits for it.
    /// Never fails here: if the detach fails, [`Mount::wait`] (or the drop
    /// of the [`Mount`]) tries again and reports the error.
    pub fn unmount(&self) {
        // Ignored on purpose: `Mount::finish` retries and reports it.
        let _ = self.shared.unmount();
    }

    /// The (canonical) mount point.
    pub fn mount_point(&self) -> &Path {
        &self.shared.dir
    }
}

impl fmt::Debug for Unmounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unmounter").field("dir", &self.shared.dir).finish()
    }
}

impl Mount {
    /// A handle that unmounts this filesystem from any thread.
    pub fn unmounter(&self) -> Unmounter {
        Unmounter { shared: Arc::clone(&self.shared) }
    }

    /// The (canonical) mount point.
    pub fn mount_point(&self) -> &Path {
        &self.shared.dir
    }

    /// Block until the filesystem is unmounted (by an [`Unmounter`], by
    /// `umount DIR`/`fusermount3 -u DIR`, or by the kernel aborting the
    /// connection), join all worker threads, and make sure `DIR` is no
    /// longer mounted. Returns the first error a worker failed with, or the
    /// error of the final unmount.
    pub fn wait(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.finished = true;
        let mut first: Option<io::Error> = None;
        for h in self.workers.drain(..) {
            let r = h.join().unwrap_or_else(|_| Err(io::Error::other("a FUSE worker thread panicked")));
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        // The workers may have ended on their own (the connection went
        // away): stop the notifier too. It looks at the signal at least
        // every 250 ms.
        self.shared.stop.raise();
        if let Some(h) = self.notifier.take() {
            if h.join().is_err() {
                first.get_or_insert(io::Error::other("the FUSE poll notifier thread panicked"));
            }
        }
        let unmounted = self.shared.ensure_unmounted();
        // Whatever ended the workers, the unmount is done now: later
        // Unmounter calls have nothing to do.
        let _ = self.shared.unmount();
        match first {
            Some(e) => Err(e),
            None => unmounted,
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.shared.unmount();
            let _ = self.finish();
        }
    }
}

impl fmt::Debug for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mount")
            .field("dir", &self.shared.dir)
            .field("workers", &self.workers.len())
            .field("protocol_minor", &self.negotiated.map(|n| n.minor))
            .field("init_flags", &self.negotiated.map(|n| n.flags))
            .field("max_read", &self.negotiated.map(|n| n.max_read))
            .finish()
    }
}

/// Check that `dir` exists and is a directory, and canonicalize it.
fn check_mount_point(dir: &Path) -> io::Result<PathBuf> {
    let md = std::fs::metadata(dir).map_err(|e| {
        io::Error::new(e.kind(), format!("mount point {} is not accessible: {e}", dir.display()))
    })?;
    if !md.is_dir() {
        return Err(io::Error::new(
            io::Error::from_raw_os_error(libc::ENOTDIR).kind(),
            format!("mount point {} is not a directory", dir.display()),
        ));
    }
    dir.canonicalize()
}

/// Mount with `mount(2)`; returns the session descriptor. The error is the
/// raw OS error so the caller can see EPERM.
fn mount_syscall(
    dir: &std::ffi::CStr,
    fsname: &std::ffi::CStr,
    opts: &MountOptions,
) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let dev = sys::open_fuse_device(true)?;
    let (uid, gid) = sys::ids();
    let data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid}{},default_permissions",
        dev.as_raw_fd(),
        if opts.allow_other { ",allow_other" } else { "" },
    );
    let data = CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if opts.mount_read_only() {
        flags |= libc::MS_RDONLY;
    }
    sys::mount(fsname, dir, c"fuse.umd", flags, &data)?;
    Ok(dev)
}

/// Mount `file` as `dir/data` (and [`MountOptions::tree`]'s root children
/// next to it) and start serving it.
///
/// `dir` must be an existing directory. As root this calls `mount(2)`
/// directly; if that is not permitted (EPERM) it falls back to the setuid
/// `fusermount3` helper. The kernel's `FUSE_INIT` is answered before this
/// returns, so the mount is ready for use. On error nothing stays mounted.
pub fn mount(dir: &Path, file: Arc<dyn ArrayFile>, opts: MountOptions) -> io::Result<Mount> {
    if let Some(tree) = &opts.tree {
        let root = tree.root();
        for name in [DATA_FILE, NULL_FILE] {
            if (name == DATA_FILE || opts.null_file) && tree.lookup(&root, name).is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the attribute tree's root has a child named {name:?}, which the mount serves itself"
                    ),
                ));
            }
        }
    }
    let fsname = CString::new(opts.fsname.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "fsname contains a NUL byte".to_string()))?;
    let dir = check_mount_point(dir)?;
    let dir_c = sys::path_cstring(&dir)?;

    let (session_dev, method) = match mount_syscall(&dir_c, &fsname, &opts) {
        Ok(dev) => (dev, Method::Syscall),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let o = sys::fusermount_options(opts.mount_read_only(), &opts.fsname, opts.allow_other);
            (sys::fusermount_mount(&dir, &o)?, Method::Fusermount)
        }
        Err(e) => {
            return Err(io::Error::new(e.kind(), format!("cannot mount FUSE on {}: {e}", dir.display())))
        }
    };

    let shared = match Shared::new(dir.clone(), dir_c, method) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            // No Shared to unmount with: undo the mount directly.
            let _ = match method {
                Method::Syscall => sys::path_cstring(&dir).and_then(|c| sys::umount_detach(&c)),
                Method::Fusermount => sys::fusermount_unmount(&dir),
            };
            return Err(e);
        }
    };
    let mut mount = Mount {
        shared: Arc::clone(&shared),
        workers: Vec::new(),
        notifier: None,
        finished: false,
        negotiated: None,
    };
    // From here on, an early return drops `mount`, which unmounts and joins
    // whatever workers were started.
    if method == Method::Fusermount {
        // fusermount3 opened the descriptor; mount_syscall opens it
        // non-blocking already.
        sys::set_nonblocking(std::os::fd::AsFd::as_fd(&session_dev))?;
    }

    let negotiated = {
        let mut buf = vec![0u8; session::MAX_IO + 4096];
        session::init_handshake(&session_dev, &mut buf, sys::page_size())?
    };
    mount.negotiated = Some(negotiated);

    let tree = opts.tree.clone().map(|t| Arc::new(attrs::TreeState::new(t)));
    let notifier_dev = match &tree {
        Some(_) => Some(session_dev.try_clone()?),
        None => None,
    };

    let threads = opts.threads.max(1);
    let mut devs = Vec::with_capacity(threads);
    for _ in 1..threads {
        devs.push(sys::clone_fuse_device(std::os::fd::AsFd::as_fd(&session_dev))?);
    }
    devs.insert(0, session_dev);

    if method == Method::Syscall {
        shared.raise_readahead(negotiated.max_read);
    }

    let (uid, gid) = sys::ids();
    let mut fs =
        fs::Filesystem::new(file, opts.read_only, uid, gid, negotiated.minor).with_null_file(opts.null_file);
    if let Some(t) = &tree {
        fs = fs.with_tree(Arc::clone(t));
    }
    let fs = Arc::new(fs);
    // Every thread reports once it has allocated its buffers; `mount`
    // returns after all of them did (or died trying), so that serving
    // requests allocates nothing from then on.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let mut starting = 0usize;
    if let (Some(state), Some(dev)) = (tree, notifier_dev) {
        let notifier = attrs::Notifier { dev, state, ready: Some(ready_tx.clone()) };
        let sh = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("umd-fuse-notify".to_string())
            .spawn(move || notifier.run(&sh.stop))?;
        mount.notifier = Some(handle);
        starting += 1;
    }
    for (i, dev) in devs.into_iter().enumerate() {
        let worker = Worker {
            dev,
            fs: Arc::clone(&fs),
            shared: Arc::clone(&shared),
            negotiated,
            ready: Some(ready_tx.clone()),
        };
        let handle = std::thread::Builder::new().name(format!("umd-fuse-{i}")).spawn(move || worker.run())?;
        mount.workers.push(handle);
        starting += 1;
    }
    drop(ready_tx);
    for _ in 0..starting {
        // Err: every sender is gone, a thread died before reporting.
        if ready_rx.recv().is_err() {
            break;
        }
    }
    Ok(mount)
}
