//! # export — serve a block array as a file over FUSE
//!
//! [`mount`] puts a FUSE filesystem on a directory `DIR` whose only content
//! today is `DIR/data`, a regular file whose bytes are those of an
//! [`ArrayFile`] (in `umd`, an assembled md array). The server speaks the
//! Linux FUSE kernel protocol directly on `/dev/fuse`: no libfuse, no FUSE
//! crate.
//!
//! ## Responsibility boundary
//! This crate owns everything between the kernel's FUSE connection and the
//! [`ArrayFile`] trait: mounting and unmounting (`mount(2)` as root, the
//! `fusermount3` helper otherwise), protocol negotiation, the worker threads
//! and their device descriptors, the node table (inode numbers, attributes,
//! directory listings) and the mapping of each request to a reply. It knows
//! nothing of md: it only calls [`ArrayFile::size`] and
//! [`ArrayFile::read_at`], with ranges already clamped to the size. It does
//! not cache data (the kernel's page cache does) and does not print.
//!
//! Internally: `abi` holds the wire structures (decoded field by field from
//! the byte buffer, never transmuted), `sys` the system calls, `fs` the node
//! table and request handlers, `session` the INIT handshake, the worker
//! loop and the unmount state. Further nodes (the attribute tree) become
//! new node kinds in `fs`, further operations new arms of its dispatch.
//!
//! ## Protocol
//! Targets FUSE protocol **7.35** and accepts kernels offering 7.23 or later
//! (it replies with the smaller minor). From `FUSE_INIT` it asks for
//! `FUSE_ASYNC_READ`, `FUSE_BIG_WRITES`, `FUSE_PARALLEL_DIROPS` and
//! `FUSE_MAX_PAGES` when the kernel offers them, with `max_write` 1 MiB,
//! `max_pages` = 1 MiB of pages (so reads of up to 1 MiB a request),
//! `max_readahead` = min(kernel's, 1 MiB), `max_background` 64 and
//! nanosecond time granularity. As the kernel offers at most its default
//! readahead (128 KiB) in INIT, a root mount also raises the mount's
//! `/sys/class/bdi/MAJ:MIN/read_ahead_kb` to 1 MiB (best effort) so that
//! buffered sequential reads arrive as 1 MiB requests. READDIRPLUS is not
//! advertised.
//!
//! Handled: LOOKUP, FORGET, BATCH_FORGET, GETATTR, SETATTR, OPEN, READ,
//! WRITE, FLUSH, RELEASE, FSYNC, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR,
//! STATFS, ACCESS, INTERRUPT (ignored: every request completes promptly),
//! DESTROY. Modifying operations answer EROFS; everything else ENOSYS
//! (xattrs, locks, poll, lseek, ...; the kernel then stops asking). With
//! 7.35 or later OPEN replies `FOPEN_NOFLUSH`, so closing `data` costs no
//! round trip, and a process reading its own mount cannot hang at exit in
//! FLUSH after its workers are gone.
//!
//! ## Synchronization model
//! * `threads` worker threads. Worker 0 reads the session descriptor
//!   returned by the mount; every other worker reads its own clone of it
//!   (`FUSE_DEV_IOC_CLONE` on a fresh `/dev/fuse` descriptor). All of them
//!   draw requests from the one queue of the connection, and each writes
//!   the reply to the descriptor it read the request from. `FUSE_INIT` is
//!   answered by [`mount`] itself before any worker starts, so the mount is
//!   usable when `mount` returns.
//! * Each worker owns its buffers, allocated once when it starts: a
//!   request buffer (1 MiB + 4 KiB, enough for a maximal WRITE) and reply
//!   buffers. A READ reply is `writev(header, data)` with the data read by
//!   [`ArrayFile::read_at`] straight into the worker's data buffer.
//! * Descriptors are non-blocking; a worker `poll`s its descriptor together
//!   with a shared stop `eventfd`, then reads (EAGAIN means another worker
//!   took the request). A worker ends when the read reports ENODEV (the
//!   filesystem was unmounted or the connection aborted) or when the stop
//!   signal is raised.
//! * Shared, read-only after mount: the `Filesystem` (node table,
//!   `Arc<dyn ArrayFile>`), behind an `Arc`. Shared and mutable: the unmount
//!   state (`Mutex<bool>`, held while unmounting so that concurrent
//!   [`Unmounter::unmount`] calls wait for the first) and the stop
//!   `eventfd`. That mutex is the only lock; no code takes another lock
//!   while holding it, so there is no lock order. [`ArrayFile`] methods are
//!   called concurrently from all workers, without any lock.
//! * Shutdown: [`Unmounter::unmount`] detaches the mount, then raises the
//!   stop signal. Workers finish the request in hand and exit; when the
//!   last device descriptor closes the kernel aborts the connection, so a
//!   file still open on the detached mount gets ENOTCONN rather than
//!   keeping the server alive. [`Mount::wait`] joins the workers and, if
//!   the mount is still on `DIR` (the connection was aborted, or a worker
//!   failed), detaches it.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod abi;
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
}

/// How to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Number of worker threads serving requests (at least 1; 0 is taken
    /// as 1). Default 4.
    pub threads: usize,
    /// Mount read-only. Only `true` is supported for now: [`mount`] refuses
    /// `false` with [`io::ErrorKind::Unsupported`].
    pub read_only: bool,
    /// Source shown in `/proc/mounts`, e.g. `"umd:raid5"`. Must not contain
    /// a NUL byte.
    pub fsname: String,
    /// Let users other than the mounter access the mount (`allow_other`;
    /// without root this needs `user_allow_other` in `/etc/fuse.conf`).
    pub allow_other: bool,
}

impl Default for MountOptions {
    /// Four threads, read-only, fsname `"umd"`, no `allow_other`.
    fn default() -> Self {
        MountOptions { threads: 4, read_only: true, fsname: "umd".to_string(), allow_other: false }
    }
}

/// A mounted filesystem and its worker threads.
///
/// Dropping it without calling [`Mount::wait`] unmounts and joins the
/// workers: a mount is never left behind by this process.
pub struct Mount {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<io::Result<()>>>,
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
    if opts.read_only {
        flags |= libc::MS_RDONLY;
    }
    sys::mount(fsname, dir, c"fuse.umd", flags, &data)?;
    Ok(dev)
}

/// Mount `file` as `dir/data` and start serving it.
///
/// `dir` must be an existing directory. As root this calls `mount(2)`
/// directly; if that is not permitted (EPERM) it falls back to the setuid
/// `fusermount3` helper. The kernel's `FUSE_INIT` is answered before this
/// returns, so the mount is ready for use. On error nothing stays mounted.
pub fn mount(dir: &Path, file: Arc<dyn ArrayFile>, opts: MountOptions) -> io::Result<Mount> {
    if !opts.read_only {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "read-write export is not implemented yet".to_string(),
        ));
    }
    let fsname = CString::new(opts.fsname.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "fsname contains a NUL byte".to_string()))?;
    let dir = check_mount_point(dir)?;
    let dir_c = sys::path_cstring(&dir)?;

    let (session_dev, method) = match mount_syscall(&dir_c, &fsname, &opts) {
        Ok(dev) => (dev, Method::Syscall),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let o = sys::fusermount_options(opts.read_only, &opts.fsname, opts.allow_other);
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
    let mut mount =
        Mount { shared: Arc::clone(&shared), workers: Vec::new(), finished: false, negotiated: None };
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
    let fs = Arc::new(fs::Filesystem::new(file, opts.read_only, uid, gid, negotiated.minor));
    for (i, dev) in devs.into_iter().enumerate() {
        let worker = Worker { dev, fs: Arc::clone(&fs), shared: Arc::clone(&shared), negotiated };
        let handle = std::thread::Builder::new().name(format!("umd-fuse-{i}")).spawn(move || worker.run())?;
        mount.workers.push(handle);
    }
    Ok(mount)
}
