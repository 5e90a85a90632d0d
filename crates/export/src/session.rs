//! The connection: `FUSE_INIT` negotiation, the worker loop, and the
//! unmount/stop state shared by the workers, [`crate::Mount`] and every
//! [`crate::Unmounter`].

use std::ffi::CString;
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::abi::{self, init, op, InHeader, InitIn, InitOut};
use crate::fs::{Errno, Filesystem, Reply, ReplyBufs};
use crate::sys::{self, Ready, StopSignal};

/// Largest READ/WRITE payload requested from the kernel: 1 MiB.
pub const MAX_IO: usize = 1 << 20;
/// Without FUSE_MAX_PAGES the kernel uses at most this many pages a request.
const DEFAULT_MAX_PAGES: usize = 32;
/// How long `mount` waits for the kernel's FUSE_INIT.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Flags this server asks for, if the kernel offers them.
const WANTED_FLAGS: u32 =
    init::ASYNC_READ | init::ATOMIC_O_TRUNC | init::BIG_WRITES | init::PARALLEL_DIROPS | init::MAX_PAGES;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("FUSE protocol: {}", msg.into()))
}

/// What FUSE_INIT settled.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    /// Protocol minor version in use.
    pub minor: u32,
    /// INIT flags both sides agreed on.
    pub flags: u32,
    /// Largest WRITE payload the kernel will send.
    pub max_write: usize,
    /// Largest READ the kernel will ask for.
    pub max_read: usize,
}

impl Negotiated {
    /// Size of a worker's request buffer: the kernel refuses to read into a
    /// buffer smaller than header + `fuse_write_in` + `max_write`.
    pub fn request_buffer_size(&self) -> usize {
        (abi::IN_HEADER_SIZE + abi::WRITE_IN_SIZE + self.max_write).max(MAX_IO + 4096)
    }
}

/// Write one reply: out header + body in a single `writev`.
fn send(dev: &File, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
    let len = abi::OUT_HEADER_SIZE + body.len();
    let hdr =
        abi::out_header(u32::try_from(len).map_err(|_| protocol_error("reply too large"))?, error, unique);
    let iov = [IoSlice::new(&hdr), IoSlice::new(body)];
    let n_iov = if body.is_empty() { 1 } else { 2 };
    match (&*dev).write_vectored(&iov[..n_iov]) {
        Ok(n) if n == len => Ok(()),
        Ok(n) => Err(protocol_error(format!("short reply write {n} of {len}"))),
        // ENOENT: the request was interrupted or aborted and the kernel no
        // longer waits for it. ENODEV: the connection is gone; the next
        // read reports that and ends the worker.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What one read of the device produced.
enum ReadOutcome {
    /// A request of this many bytes is in the buffer.
    Request(usize),
    /// Nothing to read right now; poll again.
    Retry,
    /// The filesystem was unmounted or the connection aborted.
    Disconnected,
}

fn read_request(dev: &File, buf: &mut [u8]) -> io::Result<ReadOutcome> {
    match (&*dev).read(buf) {
        Ok(0) => Ok(ReadOutcome::Disconnected),
        Ok(n) => Ok(ReadOutcome::Request(n)),
        Err(e) => match e.raw_os_error() {
            // EAGAIN: another worker took the request (non-blocking fd).
            // EINTR: a signal. ENOENT: the request was interrupted before
            // it could be handed over.
            Some(libc::EAGAIN | libc::EINTR | libc::ENOENT) => Ok(ReadOutcome::Retry),
            // The filesystem was unmounted or the connection aborted.
            Some(libc::ENODEV | libc::ECONNABORTED) => Ok(ReadOutcome::Disconnected),
            _ => Err(e),
        },
    }
}

/// Wait for and answer the kernel's FUSE_INIT on the session descriptor.
pub fn init_handshake(dev: &File, buf: &mut [u8], page_size: usize) -> io::Result<Negotiated> {
    let deadline = Instant::now() + INIT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the kernel sent no FUSE_INIT"));
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        if sys::wait_readable(dev.as_fd(), None, ms)? != Ready::Device {
            continue;
        }
        let n = match read_request(dev, buf)? {
            ReadOutcome::Request(n) => n,
            ReadOutcome::Retry => continue,
            ReadOutcome::Disconnected => return Err(protocol_error("connection closed before FUSE_INIT")),
        };
        let msg = &buf[..n];
        let h = InHeader::decode(msg).map_err(|_| protocol_error("short request header"))?;
        if h.opcode != op::INIT {
            send(dev, h.unique, -libc::EIO, &[])?;
            return Err(protocol_error(format!("first request is opcode {}, not INIT", h.opcode)));
        }
        let body = msg.get(abi::IN_HEADER_SIZE..).unwrap_or(&[]);
        let Ok(i) = InitIn::decode(body) else {
            send(dev, h.unique, -libc::EINVAL, &[])?;
            return Err(protocol_error("short FUSE_INIT"));
        };
        let mut out = Vec::with_capacity(64);
        if i.major > abi::KERNEL_VERSION {
            // Tell the kernel our major; it answers with a new INIT.
            InitOut { major: abi::KERNEL_VERSION, minor: abi::KERNEL_MINOR_VERSION, ..InitOut::default() }
                .encode(&mut out);
            send(dev, h.unique, 0, &out)?;
            continue;
        }
        if i.major < abi::KERNEL_VERSION || i.minor < abi::MIN_KERNEL_MINOR_VERSION {
            send(dev, h.unique, -libc::EPROTO, &[])?;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "kernel FUSE protocol {}.{} is older than the required {}.{}",
                    i.major,
                    i.minor,
                    abi::KERNEL_VERSION,
                    abi::MIN_KERNEL_MINOR_VERSION
                ),
            ));
        }
        let flags = i.flags & WANTED_FLAGS;
        let max_pages = (MAX_IO / page_size).clamp(1, usize::from(u16::MAX));
        let max_read =
            if flags & init::MAX_PAGES != 0 { max_pages * page_size } else { DEFAULT_MAX_PAGES * page_size };
        let reply = InitOut {
            major: abi::KERNEL_VERSION,
            minor: i.minor.min(abi::KERNEL_MINOR_VERSION),
            max_readahead: i.max_readahead.min(MAX_IO as u32),
            flags,
            max_background: 64,
            congestion_threshold: 48,
            max_write: MAX_IO as u32,
            time_gran: 1,
            max_pages: u16::try_from(max_pages).unwrap_or(u16::MAX),
        };
        reply.encode(&mut out);
        send(dev, h.unique, 0, &out)?;
        return Ok(Negotiated { minor: reply.minor, flags, max_write: MAX_IO, max_read });
    }
}

/// How the filesystem was mounted, hence how it is unmounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `mount(2)` as root; unmount with `umount2(MNT_DETACH)`.
    Syscall,
    /// `fusermount3`; unmount with `fusermount3 -u -z`.
    Fusermount,
}

/// State shared by the workers, the [`crate::Mount`] and its unmounters.
pub struct Shared {
    /// Canonical mount point.
    pub dir: PathBuf,
    dir_c: CString,
    /// `major:minor` of our mount from mountinfo, to tell it apart from
    /// whatever else may be mounted on `dir` later.
    dev: Option<String>,
    method: Method,
    /// Raised once the workers must stop reading requests.
    pub stop: StopSignal,
    /// Whether an unmount was already requested (for idempotence); held
    /// while unmounting so concurrent callers wait for the first.
    unmount_requested: Mutex<bool>,
}

impl Shared {
    /// New shared state for a filesystem just mounted on `dir`.
    pub fn new(dir: PathBuf, dir_c: CString, method: Method) -> io::Result<Self> {
        let dev =
            sys::top_mount_at(&dir).ok().flatten().filter(|e| e.fstype.starts_with("fuse")).map(|e| e.dev);
        Ok(Shared { dir, dir_c, dev, method, stop: StopSignal::new()?, unmount_requested: Mutex::new(false) })
    }

    /// Best effort, as root: raise the readahead window of the mount's
    /// backing device info to `bytes`. The kernel offers at most its default
    /// (128 KiB) in FUSE_INIT, so buffered sequential reads would otherwise
    /// arrive as 128 KiB requests even though 1 MiB ones were negotiated.
    /// The fuse bdi is named after the connection's `major:minor`.
    pub fn raise_readahead(&self, bytes: usize) {
        if let Some(dev) = &self.dev {
            let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
            let current = std::fs::read_to_string(&knob).ok().and_then(|s| s.trim().parse::<usize>().ok());
            if current.is_some_and(|kb| kb < bytes / 1024) {
                let _ = std::fs::write(&knob, (bytes / 1024).to_string());
            }
        }
    }

    /// Whether our filesystem is (still) the topmost mount on `dir`.
    fn is_mounted(&self) -> bool {
        match sys::top_mount_at(&self.dir) {
            Ok(Some(e)) => match &self.dev {
                Some(dev) => e.dev == *dev,
                None => e.fstype == crate::FSTYPE,
            },
            Ok(None) => false,
            // Cannot tell: try, the unmount reports "not mounted" harmlessly.
            Err(_) => true,
        }
    }

    /// Detach our mount from `dir` if it is still there.
    pub fn ensure_unmounted(&self) -> io::Result<()> {
        if !self.is_mounted() {
            return Ok(());
        }
        let r = match self.method {
            Method::Syscall => sys::umount_detach(&self.dir_c),
            Method::Fusermount => sys::fusermount_unmount(&self.dir),
        };
        match r {
            // Not (or no longer) a mount point.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), format!("cannot unmount {}: {e}", self.dir.display()))),
            Ok(()) => Ok(()),
        }
    }

    /// Unmount (lazily) and stop the workers; only the first call acts.
    /// The workers keep serving during the unmount itself and stop after
    /// it; closing their descriptors then aborts the connection, so files
    /// still open on the detached mount see ENOTCONN instead of keeping the
    /// server alive.
    pub fn unmount(&self) -> io::Result<()> {
        let mut requested = lock(&self.unmount_requested);
        if *requested {
            return Ok(());
        }
        *requested = true;
        let r = self.ensure_unmounted();
        self.stop.raise();
        r
    }
}

/// One request-serving thread with its own device descriptor and buffers.
pub struct Worker {
    /// This worker's descriptor: the session fd or a clone of it.
    pub dev: File,
    pub fs: Arc<Filesystem>,
    pub shared: Arc<Shared>,
    pub negotiated: Negotiated,
    /// Signalled (then dropped) once the worker's buffers are allocated:
    /// [`crate::mount`] returns only after every thread has done so.
    pub ready: Option<mpsc::Sender<()>>,
}

impl Worker {
    /// Serve until the connection ends or the stop signal is raised. A fatal
    /// error raises the stop signal too, so the other workers follow.
    pub fn run(mut self) -> io::Result<()> {
        if self.fs.has_tree() {
            crate::attrs::prime_thread();
        }
        let mut req = vec![0u8; self.negotiated.request_buffer_size()];
        let mut bufs = ReplyBufs::new(self.negotiated.max_read.max(MAX_IO));
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        let r = self.serve(&mut req, &mut bufs);
        if r.is_err() {
            self.shared.stop.raise();
        }
        r
    }

    fn serve(&self, req: &mut [u8], bufs: &mut ReplyBufs) -> io::Result<()> {
        loop {
            match sys::wait_readable(self.dev.as_fd(), Some(self.shared.stop.as_fd()), -1)? {
                Ready::Stop => return Ok(()),
                Ready::Nothing => continue,
                Ready::Device => {}
            }
            match read_request(&self.dev, req)? {
                ReadOutcome::Request(n) => self.process(&req[..n], bufs)?,
                ReadOutcome::Retry => continue,
                ReadOutcome::Disconnected => return Ok(()),
            }
        }
    }

    fn process(&self, msg: &[u8], bufs: &mut ReplyBufs) -> io::Result<()> {
        let h = InHeader::decode(msg).map_err(|_| protocol_error("short request header"))?;
        let len = (h.len as usize).min(msg.len());
        let ext = usize::from(h.total_extlen) * 8;
        let result = match len.checked_sub(ext).filter(|&end| end >= abi::IN_HEADER_SIZE) {
            None => Err(Errno(libc::EINVAL)),
            Some(end) => {
                let body = &msg[abi::IN_HEADER_SIZE..end];
                // A panic in the ArrayFile fails this request, not the mount.
                catch_unwind(AssertUnwindSafe(|| self.fs.handle(&h, body, bufs)))
                    .unwrap_or(Err(Errno(libc::EIO)))
            }
        };
        if matches!(h.opcode, op::FORGET | op::BATCH_FORGET | op::INTERRUPT) {
            return Ok(());
        }
        match result {
            Ok(Reply::None) => Ok(()),
            Ok(Reply::Payload) => send(&self.dev, h.unique, 0, &bufs.out),
            Ok(Reply::Data(n)) => send(&self.dev, h.unique, 0, &bufs.data[..n]),
            Ok(Reply::Zeros(n)) => send(&self.dev, h.unique, 0, &crate::fs::ZEROS[..n]),
            Err(Errno(e)) => send(&self.dev, h.unique, -e, &[]),
        }
    }
}
