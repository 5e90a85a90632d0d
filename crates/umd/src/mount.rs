//! `umd assemble [--readonly] --mount DIR`, `umd stop DIR` and `umd mon DIR`.
//!
//! Without `--readonly`, the array is served read-write: members open
//! read-write, md's attributes are published as a running array with
//! external metadata (`array_state` starts `clean`), and every write
//! through `DIR/data` runs md's write handshake
//! ([`md::state::StateMachine::write_start`]/`write_end`); which levels
//! take writes is md's business ([`md::Array::write_at`]). The handshake is
//! acknowledged by the metadata manager, `umd mon DIR` (the `mon` crate), a
//! separate process started once the mount is up: it writes the
//! superblocks dirty before it stores `active` and clean after it stores
//! `clean`. On SIGTERM/`umd stop` the array is stopped first (no new
//! writes, the ones in flight finish), the manager leaves the superblocks
//! clean and exits, then the mount goes. `copy_file_range(2)`
//! within `DIR/data` is served by [`pagecache::copy_range`] on a mapping of
//! the array whose writes are those same handshaked writes (see
//! [`WritableArray`]); a copy is on the members, flushed, when it returns.
//!
//! The serving process records its PID in `/run/umd/<escaped DIR>.pid`;
//! `umd stop DIR` sends it SIGTERM and waits until the mount is gone. The
//! process itself blocks SIGINT/SIGTERM in every thread and takes them in a
//! dedicated thread (`sigwait`), which unmounts; the main thread then joins
//! the FUSE workers and removes the PID file. The mount is released on every
//! exit path.

use std::io::{self, Read, Write};
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use md::{assemble as md_assemble, Array, AssembleOptions};

use crate::{CliError, CmdResult};

/// Options of `umd assemble`.
pub struct Options {
    /// Read-only; without it the array is served read-write.
    pub readonly: bool,
    /// Mount directory.
    pub dir: PathBuf,
    /// Detach when ready.
    pub daemon: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Start dirty+degraded parity arrays.
    pub force: bool,
    /// allow_other mount option.
    pub allow_other: bool,
    /// Fault injectors for members (testing).
    pub faults: crate::faults::Injectors,
}

/// The array as the FUSE layer sees it.
pub struct ArrayAdapter {
    /// The array (shared with its sync thread).
    pub array: Arc<Array>,
    /// md's state machine of a writable array: every write is bracketed
    /// by its `write_start`/`write_end`. `None`: writes are refused (EROFS).
    pub state: Option<Arc<md::state::StateMachine>>,
}

impl export::ArrayFile for ArrayAdapter {
    fn size(&self) -> u64 {
        self.array.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.array.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let Some(state) = &self.state else { return Err(io::Error::from_raw_os_error(libc::EROFS)) };
        state.write_start().map_err(io::Error::from_raw_os_error)?;
        let r = self.array.write_at(offset, data);
        state.write_end();
        r
    }

    fn flush(&self) -> io::Result<()> {
        if self.state.is_none() {
            return Ok(());
        }
        self.array.flush()
    }
}

/// Folio size of the copy cache: big enough that a copy moves large
/// pieces, small enough that the unaligned head and tail of a copy cost
/// little (each is read, patched and written back whole).
const COPY_FOLIO: usize = 64 << 10;
/// Bytes one step of a copy moves (while it holds the write lock; see
/// [`WritableArray`]).
const COPY_STEP: u64 = 8 << 20;
/// The copy cache's limits: room for a step's source and destination
/// folios; no flusher threads (the copying thread writes back itself).
const COPY_CACHE: pagecache::CacheConfig =
    pagecache::CacheConfig { memory_limit: 64 << 20, dirty_limit: 32 << 20, flushers: 0 };

/// The errno of an I/O error as the FUSE layer maps it: its OS error in
/// 1..=511, else EIO.
fn errno_of(e: &io::Error) -> pagecache::Errno {
    match e.raw_os_error() {
        Some(n) if (1..512).contains(&n) => n,
        _ => libc::EIO,
    }
}

/// The array under the copy cache's mapping: reads, writes and flush are
/// the inner file's (for an [`ArrayAdapter`], `write_at` runs md's write
/// handshake, so it wraps every member write of a copy too); the size is
/// fixed.
struct ArrayBacking<F> {
    io: Arc<F>,
    /// The errno of the last failed read, 0 if none: the copy loop reports
    /// a source it cannot read as EFAULT, this is what the caller gets.
    read_error: std::sync::atomic::AtomicI32,
}

impl<F: export::ArrayFile> pagecache::Backing for ArrayBacking<F> {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), pagecache::Errno> {
        // The last folio may reach past the end of the array: zeros there.
        let n = self.io.size().saturating_sub(pos).min(buf.len() as u64) as usize;
        let (inside, past) = buf.split_at_mut(n);
        past.fill(0);
        if inside.is_empty() {
            return Ok(());
        }
        self.io.read_at(pos, inside).map_err(|e| {
            let n = errno_of(&e);
            self.read_error.store(n, std::sync::atomic::Ordering::Relaxed);
            n
        })
    }

    fn write_at(&self, pos: u64, buf: &[u8]) -> Result<(), pagecache::Errno> {
        export::ArrayFile::write_at(&*self.io, pos, buf).map_err(|e| errno_of(&e))
    }

    fn flush(&self) -> Result<(), pagecache::Errno> {
        export::ArrayFile::flush(&*self.io).map_err(|e| errno_of(&e))
    }

    fn set_size(&self, _size: u64) -> Result<(), pagecache::Errno> {
        // An array's size is fixed (nothing truncates the copy mapping).
        Err(libc::EINVAL)
    }

    fn size(&self) -> u64 {
        export::ArrayFile::size(&*self.io)
    }
}

/// The copy cache: one mapping over the whole array.
struct Copier<F> {
    /// Declared before the cache: dropped first.
    mapping: Arc<pagecache::AddressSpace>,
    backing: Arc<ArrayBacking<F>>,
    cache: pagecache::PageCache,
    /// Writeback errors seen up to the last copy (the copier is the
    /// mapping's only opener).
    cursor: pagecache::WbErrCursor,
    /// A step could not empty the cache: its folios could go stale, so no
    /// further copy uses it (EIO). Never expected.
    broken: bool,
}

/// A writable array as `DIR/data`: an [`ArrayAdapter`] (or any other
/// [`export::ArrayFile`]: `F`) whose `copy_file_range` within `DIR/data`
/// ([`export::ArrayFile::copy_range`]) is served by
/// [`pagecache::copy_range`] on a mapping of the array whose reads and
/// writes are the inner file's `read_at` and `write_at`.
///
/// `DIR/data` is opened with `FOPEN_DIRECT_IO`: reads and writes bypass
/// every cache, so the copy cache must never hold a folio while anything
/// else writes the array. A copy therefore goes in steps of at most
/// [`COPY_STEP`] bytes, each holding `writes` exclusively (direct writes
/// hold it shared): the step starts with an empty cache, reads the source
/// folios (and the partly covered destination folios, which are written
/// back whole) from the array, copies, writes every dirty folio back
/// through the inner file's `write_at` (for an [`ArrayAdapter`]: md's
/// write handshake, then the array's write) and drops every folio before
/// direct writes resume. The cache has no flusher thread: nothing else
/// writes from it. Copies are serialized by the copier's mutex (lock
/// order: copier, then `writes`, then the cache's own locks, then md's
/// state). After the last step the members are flushed (the mapping's
/// `fsync`) and only then is the copy acknowledged. Reads take no lock: a
/// read racing a copy sees old or new bytes, as with a racing write. (The
/// kernel also serializes writes and copies of one file on its inode lock,
/// unless the server opts into parallel direct writes; this type does not
/// rely on that.)
pub struct WritableArray<F = ArrayAdapter> {
    io: Arc<F>,
    writes: std::sync::RwLock<()>,
    copier: std::sync::Mutex<Copier<F>>,
    /// Copies served (calls, bytes), for [`copy_stats`](Self::copy_stats).
    copies: std::sync::atomic::AtomicU64,
    copied: std::sync::atomic::AtomicU64,
}

impl<F: export::ArrayFile> WritableArray<F> {
    /// Wrap `file` (an [`ArrayAdapter`] with its write handshake) and build
    /// the copy cache.
    pub fn new(file: F) -> io::Result<WritableArray<F>> {
        let io = Arc::new(file);
        let backing = Arc::new(ArrayBacking { io: io.clone(), read_error: 0.into() });
        let cache = pagecache::PageCache::new(COPY_CACHE);
        let ops = Arc::new(pagecache::BlockOps::new(backing.clone()));
        let mapping = cache.mapping(ops, COPY_FOLIO).map_err(io::Error::from_raw_os_error)?;
        let cursor = mapping.wb_err_cursor();
        let copier = Copier { mapping, backing, cache, cursor, broken: false };
        Ok(WritableArray {
            io,
            writes: std::sync::RwLock::new(()),
            copier: std::sync::Mutex::new(copier),
            copies: 0.into(),
            copied: 0.into(),
        })
    }

    /// Copies served through the copy cache so far that copied something:
    /// (calls, bytes).
    pub fn copy_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (self.copies.load(Ordering::Relaxed), self.copied.load(Ordering::Relaxed))
    }
}

impl<F: export::ArrayFile> export::ArrayFile for WritableArray<F> {
    fn size(&self) -> u64 {
        self.io.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.io.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let _shared = self.writes.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.io.write_at(offset, data)
    }

    fn flush(&self) -> io::Result<()> {
        self.io.flush()
    }

    /// See the type's doc. Returns `len`; or, when a source read failed
    /// after something was copied, the bytes copied until then. A failed
    /// write (or flush) fails the copy: the destination range is then
    /// undefined, as after a failed `write(2)`.
    fn copy_range(&self, src: u64, dst: u64, len: u64, _buf: &mut [u8]) -> io::Result<u64> {
        use std::sync::atomic::Ordering;
        let mut c = self.copier.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.broken {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let mut done = 0u64;
        let mut failed: Option<pagecache::Errno> = None;
        while done < len {
            let n = (len - done).min(COPY_STEP);
            let _exclusive = self.writes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            c.backing.read_error.store(0, Ordering::Relaxed);
            // n <= COPY_STEP fits usize.
            let copied = pagecache::copy_range(&c.mapping, src + done, &c.mapping, dst + done, n as usize);
            // Whatever happened: write back what is dirty, then drop every
            // folio before direct writes resume.
            let written_back = c.cache.sync();
            if c.mapping.invalidate_range(0, u64::MAX) > 0 {
                c.broken = true;
                failed = Some(libc::EIO);
                break;
            }
            match (copied, written_back) {
                (Ok(w), Ok(())) => {
                    done += w as u64;
                    if (w as u64) < n {
                        // Stopped by an error the next call will meet.
                        break;
                    }
                }
                (Err(libc::EFAULT), _) if c.backing.read_error.load(Ordering::Relaxed) != 0 => {
                    failed = Some(c.backing.read_error.load(Ordering::Relaxed));
                    break;
                }
                (Err(e), _) | (Ok(_), Err(e)) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Everything is written back already: flush the members, and take
        // (once) the writeback errors recorded since the last copy.
        let c = &mut *c;
        let synced = c.mapping.fsync(dst, dst + done, &mut c.cursor);
        if done == 0 {
            return Err(io::Error::from_raw_os_error(failed.unwrap_or(libc::EIO)));
        }
        synced.map_err(io::Error::from_raw_os_error)?;
        self.copies.fetch_add(1, Ordering::Relaxed);
        self.copied.fetch_add(done, Ordering::Relaxed);
        Ok(done)
    }
}

const RUN_DIR: &str = "/run/umd";

/// Starts `umd mon DIR` (this executable) and waits for its ready line.
fn start_mon(dir: &Path) -> Result<std::process::Child, String> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the umd executable: {e}"))?;
    let mut child = std::process::Command::new(exe)
        .arg("mon")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start umd mon: {e}"))?;
    let Some(out) = child.stdout.take() else {
        return Err("umd mon has no stdout".into());
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(r.map(|_| line));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(line)) if line.starts_with("umd mon: managing") => {
            eprint!("{line}");
            Ok(child)
        }
        other => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(match other {
                Ok(Ok(line)) if !line.is_empty() => format!("umd mon said {:?} ({status})", line.trim()),
                _ => format!("umd mon did not start ({status}; its reason is on stderr)"),
            })
        }
    }
}

/// Waits up to `limit` for the manager to exit, then kills it.
fn reap_mon(mon: &std::sync::Mutex<Option<std::process::Child>>, limit: Duration) {
    let mut g = mon.lock().unwrap_or_else(|p| p.into_inner());
    let Some(child) = g.as_mut() else { return };
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    *g = None;
}

/// Waits up to `limit` until no manager holds `dir`'s lock.
fn wait_mon_lock_free(dir: &Path, limit: Duration) {
    use std::os::unix::io::AsRawFd;
    let (lock, _) = mon_paths(dir);
    let Ok(f) = std::fs::File::open(&lock) else { return };
    let deadline = Instant::now() + limit;
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lock and control socket of the manager of `dir`.
fn mon_paths(dir: &Path) -> (PathBuf, PathBuf) {
    let pid = pid_file(dir);
    (pid.with_extension("mon.lock"), pid.with_extension("mon.sock"))
}

/// Asks the manager of `dir` to look for work at once (mdadm's
/// `ping_monitor`); false if none answers.
pub fn ping_mon(dir: &Path) -> bool {
    use std::io::BufRead;
    let (_, socket_path) = mon_paths(&absolute(dir));
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(&socket_path) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut line = String::new();
    io::BufReader::new(&s).read_line(&mut line).is_ok_and(|_| line.trim() == "ok")
}

/// Runs `umd mon DIR` (see the `mon` crate).
pub fn mon(dir: &Path) -> CmdResult {
    let dir = absolute(dir);
    if !is_mounted(&dir) || !is_umd_mount(&dir) {
        return Err(CliError(format!("{}: no umd array is mounted here", dir.display())));
    }
    let (lock_path, socket_path) = mon_paths(&dir);
    let hooks = mon::Hooks {
        guard_monitor_thread: crate::alloc_count::guard_this_thread,
        monitor_allocs: crate::alloc_count::guarded_allocations,
    };
    mon::run(mon::Config { dir: dir.clone(), lock_path, socket_path, hooks }, |summary| {
        println!("umd mon: {summary}");
        let _ = io::stdout().flush();
    })
    .map_err(|e| CliError(format!("mon: {e}")))
}

/// Runs `umd mon --status DIR`: the running manager's status line.
pub fn mon_status(dir: &Path) -> CmdResult {
    use std::io::BufRead;
    let dir = absolute(dir);
    let (_, socket_path) = mon_paths(&dir);
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        CliError(format!("{}: no umd mon answers ({}: {what}{e})", dir.display(), socket_path.display()))
    };
    let mut s = std::os::unix::net::UnixStream::connect(&socket_path).map_err(|e| fail("", &e))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| fail("", &e))?;
    s.write_all(b"status\n").map_err(|e| fail("sending: ", &e))?;
    let mut line = String::new();
    let n = io::BufReader::new(&s).read_line(&mut line).map_err(|e| fail("reading: ", &e))?;
    if n == 0 || !line.starts_with("state=") {
        return Err(fail("", &format_args!("unexpected reply {:?}", line.trim_end())));
    }
    print!("{line}");
    Ok(())
}

/// The PID file recording which process serves `dir`.
fn pid_file(dir: &Path) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{}.pid", run_name(dir)))
}

/// The name of a mount directory's files in [`RUN_DIR`] (before the
/// extension): the absolute path with `/` as `_`, `_` doubled, and
/// anything but ASCII letters, digits, `-` and `.` as `%hex`, so that
/// names never collide.
fn run_name(dir: &Path) -> String {
    let s = dir.to_string_lossy();
    let mut name = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '/' => name.push('_'),
            '_' => name.push_str("__"),
            c if c.is_ascii_alphanumeric() || c == '-' || c == '.' => name.push(c),
            c => name.push_str(&format!("%{:x}", c as u32)),
        }
    }
    name
}

/// Removes the files [`RUN_DIR`] keeps for mount directories below
/// `scratch` (daemon logs, and what a killed daemon left): for commands
/// that mount arrays in a scratch directory of their own and remove it
/// (the benches), once every one of those mounts is stopped.
pub(crate) fn forget_run_files(scratch: &Path) {
    let prefix = format!("{}_", run_name(&absolute(scratch)));
    let Ok(entries) = std::fs::read_dir(RUN_DIR) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// An absolute form of `dir` that does not touch the mount itself (a dead
/// FUSE mount fails `stat` with ENOTCONN).
pub(crate) fn absolute(dir: &Path) -> PathBuf {
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            std::fs::canonicalize(parent).map(|p| p.join(name)).unwrap_or_else(|_| dir.to_path_buf())
        }
        (_, Some(name)) => {
            std::env::current_dir().map(|c| c.join(name)).unwrap_or_else(|_| dir.to_path_buf())
        }
        _ => std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
    }
}

/// Whether `dir` is a mount point in /proc/mounts (escaped as the kernel does).
pub fn is_mounted(dir: &Path) -> bool {
    let want = escape_mount_path(&dir.to_string_lossy());
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(want.as_str())))
        .unwrap_or(false)
}

fn escape_mount_path(p: &str) -> String {
    let mut s = String::new();
    for c in p.chars() {
        match c {
            ' ' => s.push_str("\\040"),
            '\t' => s.push_str("\\011"),
            '\n' => s.push_str("\\012"),
            '\\' => s.push_str("\\134"),
            c => s.push(c),
        }
    }
    s
}

/// Runs `umd assemble`.
pub fn assemble(members: &[PathBuf], o: Options) -> CmdResult {
    let dir = absolute(&o.dir);
    let meta = std::fs::metadata(&dir).map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(CliError(format!("{}: not a directory", dir.display())));
    }
    if is_mounted(&dir) {
        return Err(CliError(format!("{}: something is already mounted here", dir.display())));
    }
    // Assemble before detaching, so errors reach the user's terminal.
    let aopts = AssembleOptions { force: o.force, faults: o.faults.clone() };
    let asm =
        if o.readonly { md_assemble(members, &aopts)? } else { md::assemble_writable(members, &aopts)? };
    if !o.readonly && asm.degraded && !o.force {
        // Nothing records the missing member as failed in the others'
        // superblocks until the metadata manager (issue 7) does: given back
        // later, its stale data would be read as current.
        return Err(CliError(format!(
            "the array is degraded: serving it read-write would leave the missing member(s) silently \
             stale (umd does not yet record member failures in the superblocks); use --readonly, or \
             --force if the missing member(s) will never be given back ({})",
            asm.notes.join("; ")
        )));
    }
    for n in &asm.notes {
        eprintln!("umd: {n}");
    }
    let ready_fd = if o.daemon { Some(daemonize(&pid_file(&dir).with_extension("log"))?) } else { None };
    serve(asm.array, asm.degraded, &dir, &o, ready_fd)
}

/// Forks: the parent waits for the child's "ready" line on a pipe, prints
/// it and exits; the child returns the pipe's write end, with its standard
/// streams detached (stderr appended to `log`). Runs before any thread
/// exists.
fn daemonize(log: &Path) -> Result<i32, CliError> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(CliError(format!("pipe: {}", io::Error::last_os_error())));
    }
    // SAFETY: the process is single-threaded here (no thread has been
    // spawned yet), so the child may continue running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(CliError(format!("fork: {}", io::Error::last_os_error())));
    }
    if pid > 0 {
        // Parent.
        // SAFETY: fds[1] is our open write end, closed exactly once here.
        unsafe { libc::close(fds[1]) };
        // SAFETY: fds[0] is an open descriptor that this File now owns.
        let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let mut msg = String::new();
        let _ = r.read_to_string(&mut msg);
        if let Some(line) = msg.strip_prefix("ok ") {
            println!("{}", line.trim_end());
            std::process::exit(0);
        }
        let err = msg.strip_prefix("err ").unwrap_or("the daemon exited before the mount was ready");
        eprintln!("umd: {}", err.trim_end());
        std::process::exit(1);
    }
    // Child.
    // SAFETY: fds[0] is the read end, unused in the child.
    unsafe { libc::close(fds[0]) };
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() };
    redirect_stdio(log);
    Ok(fds[1])
}

/// Detaches the daemon from the caller's standard streams: stdin and stdout
/// go to /dev/null, stderr (late errors) to `log`, or /dev/null when the log
/// cannot be opened. A daemon must not keep its caller's pipes open.
fn redirect_stdio(log: &Path) {
    use std::os::unix::io::AsRawFd;
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null");
    let _ = std::fs::create_dir_all(RUN_DIR);
    let err = std::fs::OpenOptions::new().create(true).append(true).open(log);
    if let Ok(null) = &null {
        // SAFETY: dup2 onto the standard descriptors with a valid source fd.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
    let err_fd = match (&err, &null) {
        (Ok(f), _) => Some(f.as_raw_fd()),
        (Err(_), Ok(n)) => Some(n.as_raw_fd()),
        _ => None,
    };
    if let Some(fd) = err_fd {
        // SAFETY: dup2 onto stderr with a valid source fd.
        unsafe { libc::dup2(fd, 2) };
    }
}

fn write_ready(fd: Option<i32>, msg: &str) {
    if let Some(fd) = fd {
        // SAFETY: `fd` is the pipe's write end, owned by us; the File closes it.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = f.write_all(msg.as_bytes());
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in
/// every thread it spawns afterwards).
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; the sig* calls initialise and fill it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn serve(array: Array, degraded: bool, dir: &Path, o: &Options, ready_fd: Option<i32>) -> CmdResult {
    let sigset = block_signals();
    // This process serves an array that memory reclaim may be waiting on:
    // lock our memory and mark us an I/O flusher (each may be refused
    // without privileges: say so, and go on).
    let protection = blockio::safety::protect_io_path();
    if !protection.complete() {
        eprintln!("umd: warning: I/O path protection incomplete: {protection}");
    }
    let size = array.size();
    let level = array.personality.geometry().level;
    let name = array.sb.name();
    let uuid = md::superblock::format_uuid(&array.sb.set_uuid);
    // md's attribute tree, served as DIR/md/.
    let tree = kernfs::Kernfs::new();
    let sysfs = match md::sysfs::publish(&tree, &tree.root(), &array, o.readonly) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let msg = format!(
                "{}: publishing md attributes failed: {}",
                dir.display(),
                io::Error::from_raw_os_error(e)
            );
            write_ready(ready_fd, &format!("err {msg}\n"));
            return Err(CliError(msg));
        }
    };
    let array = Arc::new(array);
    let sync_ctl = array.sync_ctl().clone();
    let adapter =
        ArrayAdapter { array: array.clone(), state: (!o.readonly).then(|| sysfs.machine().clone()) };
    let (file, writable): (Arc<dyn export::ArrayFile>, _) = if o.readonly {
        (Arc::new(adapter), None)
    } else {
        match WritableArray::new(adapter) {
            Ok(w) => {
                let w = Arc::new(w);
                (w.clone(), Some(w))
            }
            Err(e) => {
                let msg = format!("{}: copy cache: {e}", dir.display());
                write_ready(ready_fd, &format!("err {msg}\n"));
                return Err(CliError(msg));
            }
        }
    };
    if std::env::var_os("UMD_TEST_HOOKS").is_some_and(|v| v == "1") {
        if let Err(e) = add_test_hooks(&tree, &sysfs, writable, o.faults.clone()) {
            eprintln!("umd: warning: test hooks unavailable: errno {e}");
        }
    }
    let opts = export::MountOptions {
        threads: o.threads.clamp(1, 64),
        read_only: o.readonly,
        fsname: format!("umd:{name}"),
        allow_other: o.allow_other,
        tree: Some(tree.clone()),
        null_file: false,
    };
    let mount = match export::mount(dir, file, opts) {
        Ok(m) => m,
        Err(e) => {
            let msg = format!("{}: mount failed: {e}", dir.display());
            write_ready(ready_fd, &format!("err {msg}\n"));
            return Err(CliError(msg));
        }
    };
    let pidf = pid_file(dir);
    let _ = std::fs::create_dir_all(RUN_DIR);
    if let Err(e) = std::fs::write(&pidf, format!("{}\n", std::process::id())) {
        eprintln!(
            "umd: warning: cannot record PID in {}: {e} (`umd stop` will unmount directly)",
            pidf.display()
        );
    }
    // The metadata manager (`umd mon DIR`), for read-write arrays: until it
    // has stored `active`, no write passes md's write-pending handshake.
    let mon = if o.readonly {
        None
    } else {
        match start_mon(dir) {
            Ok(child) => Some(Arc::new(std::sync::Mutex::new(Some(child)))),
            Err(e) => {
                let msg = format!("{}: metadata manager: {e}", dir.display());
                write_ready(ready_fd, &format!("err {msg}\n"));
                mount.unmounter().unmount();
                let _ = mount.wait();
                let _ = std::fs::remove_file(&pidf);
                return Err(CliError(msg));
            }
        }
    };
    // md's sync thread (resync, check, repair), once the manager runs: a
    // dirty array starts resyncing by itself, and the manager records its
    // checkpoints.
    let syncer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>> =
        Arc::new(std::sync::Mutex::new(None));
    if !o.readonly {
        match md::sync::spawn(array.clone()) {
            Ok(h) => *syncer.lock().unwrap_or_else(|p| p.into_inner()) = Some(h),
            Err(e) => eprintln!("umd: warning: no sync thread ({e}): resync, check and repair will not run"),
        }
    }
    // The signal thread clears the idle bitmap bits once writes are over.
    let stopping = Arc::downgrade(&array);
    drop(array);
    let stop_sync = {
        let syncer = syncer.clone();
        let ctl = sync_ctl.clone();
        move || {
            ctl.shutdown();
            let h = syncer.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(h) = h {
                let _ = h.join();
            }
        }
    };
    let sig_stop_sync = stop_sync.clone();
    let unmounter = mount.unmounter();
    let machine = (!o.readonly).then(|| sysfs.machine().clone());
    let sig_mon = mon.clone();
    let mon_dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("umd-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `sigset` is an initialised set; `sig` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&sigset, &mut sig) };
            if rc == 0 {
                // The sync thread stops first, its checkpoint final before
                // the manager writes the superblocks clean.
                sig_stop_sync();
                if let Some(m) = &machine {
                    // md's stop: no new writes, the ones in flight finish,
                    // then the manager sees `inactive` and leaves the
                    // superblocks clean before the attributes go away.
                    m.stop();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while m.writes_in_flight() > 0 && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    // md_bitmap_flush: a clean stop leaves a clean bitmap.
                    if let (Some(a), 0) = (stopping.upgrade(), m.writes_in_flight()) {
                        if let Some(bm) = a.bitmap() {
                            if let Err(e) = bm.flush_idle(&a.slots, a.health(), a.missing() > 0) {
                                eprintln!("umd: clearing the bitmap at stop failed (its bits stay set): {e}");
                            }
                        }
                    }
                }
                if let Some(mon) = &sig_mon {
                    reap_mon(mon, Duration::from_secs(5));
                    // A manager started by hand (a takeover) is not our
                    // child: wait until it lets go of the array's lock.
                    wait_mon_lock_free(&mon_dir, Duration::from_secs(5));
                }
                unmounter.unmount();
                return;
            }
        })
        .map_err(|e| CliError(format!("signal thread: {e}")))?;
    let ready = format!(
        "umd: {level} array {name} ({uuid}) of {} bytes{} mounted {} at {} (file {})",
        size,
        if degraded { ", DEGRADED" } else { "" },
        if o.readonly { "read-only" } else { "read-write" },
        dir.display(),
        dir.join("data").display()
    );
    if ready_fd.is_some() {
        write_ready(ready_fd, &format!("ok {ready}\n"));
    } else {
        println!("{ready}");
        let _ = io::stdout().flush();
    }
    let r = mount.wait();
    stop_sync();
    // Every FUSE worker is gone: no write is in flight any more. A manager
    // still running (the mount went away under it) ends on its own.
    if let Some(mon) = &mon {
        reap_mon(mon, Duration::from_secs(5));
    }
    drop(sysfs);
    let _ = std::fs::remove_file(&pidf);
    if ready_fd.is_some() {
        // A daemon's log that stayed empty says nothing worth keeping.
        let log = pidf.with_extension("log");
        if std::fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&log);
        }
    }
    r.map_err(|e| CliError(format!("{}: {e}", dir.display())))
}

/// With `UMD_TEST_HOOKS=1` in the environment, `umd assemble` adds a
/// write-only attribute `DIR/umd-test-hook` that drives changes md's own
/// machinery will make later (so tests can observe notify/poll and member
/// removal over the real mount): `array_state WORD` sets md/array_state and
/// notifies; `remove SLOT` removes md/dev-*/ of that slot as md does when a
/// member leaves the array; `array_state_garbage on|off` makes
/// md/array_state answer text that is no md word (a metadata manager must
/// then keep the array blocked, not guess); `faults arm|disarm` arms or
/// disarms the fault injectors given with `--faults`/`--member-faults`
/// (a spec started `disarmed` lets a test choose when a member starts
/// failing). A writable array also gets a read-only
/// `DIR/umd-test-copies` showing `CALLS BYTES`: the copies served by the
/// copy cache ([`WritableArray::copy_stats`]), so tests can tell them from
/// a copy the kernel did by reading and writing. Never present without the
/// variable.
fn add_test_hooks(
    tree: &Arc<kernfs::Kernfs>,
    sysfs: &Arc<md::sysfs::MdSysfs>,
    writable: Option<Arc<WritableArray>>,
    faults: crate::faults::Injectors,
) -> Result<(), kernfs::Errno> {
    struct Hook(Arc<md::sysfs::MdSysfs>, crate::faults::Injectors);
    impl kernfs::AttrOps for Hook {
        fn show(&self, _out: &mut kernfs::ShowBuf) -> Result<(), kernfs::Errno> {
            Err(libc::EACCES)
        }
        fn store(&self, data: &[u8]) -> Result<usize, kernfs::Errno> {
            let text = std::str::from_utf8(data).map_err(|_| libc::EINVAL)?.trim();
            let (cmd, arg) = text.split_once(' ').ok_or(libc::EINVAL)?;
            match cmd {
                "array_state" => {
                    let s = md::sysfs::ArrayState::from_word(arg.as_bytes()).ok_or(libc::EINVAL)?;
                    self.0.set_array_state(s);
                }
                "remove" => {
                    let slot: usize = arg.parse().map_err(|_| libc::EINVAL)?;
                    self.0.remove_member(slot)?;
                }
                "array_state_garbage" => match arg {
                    "on" => self.0.garble_array_state(true),
                    "off" => self.0.garble_array_state(false),
                    _ => return Err(libc::EINVAL),
                },
                // Arms or disarms every fault injector (`--faults` /
                // `--member-faults` specs started `disarmed`).
                "faults" => match arg {
                    "arm" => self.1.iter().for_each(|(_, f)| f.arm()),
                    "disarm" => self.1.iter().for_each(|(_, f)| f.disarm()),
                    _ => return Err(libc::EINVAL),
                },
                _ => return Err(libc::EINVAL),
            }
            Ok(data.len())
        }
    }
    let attr = kernfs::Attr {
        ops: Arc::new(Hook(sysfs.clone(), faults)),
        prealloc: false,
        atomic_write_len: 0,
        seq: false,
        notify: false,
    };
    let node = tree.create_attr(&tree.root(), "umd-test-hook", 0o200, attr)?;
    tree.activate(&node);
    if let Some(w) = writable {
        struct Copies(Arc<WritableArray>);
        impl kernfs::AttrOps for Copies {
            fn show(&self, out: &mut kernfs::ShowBuf) -> Result<(), kernfs::Errno> {
                let (calls, bytes) = self.0.copy_stats();
                out.emit(format_args!("{calls} {bytes}\n"))
            }
        }
        let attr = kernfs::Attr {
            ops: Arc::new(Copies(w)),
            prealloc: false,
            atomic_write_len: 0,
            seq: false,
            notify: false,
        };
        let node = tree.create_attr(&tree.root(), "umd-test-copies", 0o444, attr)?;
        tree.activate(&node);
    }
    Ok(())
}

/// Whether process `pid` has exited but not been reaped (state `Z` in
/// `/proc/PID/stat`, the field after the parenthesised command name).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Runs `umd stop DIR`.
pub fn stop(dir: &Path) -> CmdResult {
    let dir = absolute(dir);
    let pidf = pid_file(&dir);
    let pid = std::fs::read_to_string(&pidf).ok().and_then(|s| s.trim().parse::<i32>().ok());
    // SAFETY: kill with signal 0 only checks that the process exists.
    // A zombie (exited, not yet reaped by its parent or init) has stopped.
    let alive = |p: i32| unsafe { libc::kill(p, 0) } == 0 && !is_zombie(p);
    match pid {
        Some(p) if p > 0 && alive(p) => {
            // SAFETY: sending SIGTERM to a process we recorded as ours.
            unsafe { libc::kill(p, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while (alive(p) || is_mounted(&dir)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(p) {
                return Err(CliError(format!("{}: process {p} did not stop within 20 s", dir.display())));
            }
            let _ = std::fs::remove_file(&pidf);
            eprintln!("umd: stopped the array at {}", dir.display());
            Ok(())
        }
        _ => {
            let _ = std::fs::remove_file(&pidf);
            if is_mounted(&dir) && is_umd_mount(&dir) {
                let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                    .map_err(|_| CliError(format!("{}: path contains NUL", dir.display())))?;
                // SAFETY: `c` is a valid NUL-terminated path.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    return Err(CliError(format!(
                        "{}: unmount failed: {}",
                        dir.display(),
                        io::Error::last_os_error()
                    )));
                }
                eprintln!("umd: unmounted {} (its process was gone)", dir.display());
                Ok(())
            } else {
                Err(CliError(format!("{}: no umd array is mounted here", dir.display())))
            }
        }
    }
}

fn is_umd_mount(dir: &Path) -> bool {
    let want = escape_mount_path(&dir.to_string_lossy());
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() > 2 && f[1] == want && f[2].starts_with("fuse") && f[0].starts_with("umd")
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use export::ArrayFile;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    /// A writable file in memory: reads touching `bad` fail with ENXIO,
    /// writes fail with ENOSPC while `fail_writes` is set.
    struct Mem {
        data: Mutex<Vec<u8>>,
        bad: Mutex<Option<std::ops::Range<u64>>>,
        fail_writes: AtomicBool,
        writes: AtomicU64,
        flushes: AtomicU64,
    }

    impl ArrayFile for Mem {
        fn size(&self) -> u64 {
            self.data.lock().expect("data").len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            if let Some(b) = &*self.bad.lock().expect("bad") {
                if offset < b.end && b.start < offset + buf.len() as u64 {
                    return Err(io::Error::from_raw_os_error(libc::ENXIO));
                }
            }
            let d = self.data.lock().expect("data");
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            if self.fail_writes.load(Ordering::Relaxed) {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut d = self.data.lock().expect("data");
            d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn random(size: usize, mut seed: u64) -> Vec<u8> {
        (0..size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    fn array(data: Vec<u8>) -> WritableArray<Mem> {
        WritableArray::new(Mem {
            data: Mutex::new(data),
            bad: Mutex::new(None),
            fail_writes: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        })
        .expect("copy cache")
    }

    fn cached(w: &WritableArray<Mem>) -> u64 {
        w.copier.lock().expect("copier").cache.cached_bytes()
    }

    fn contents(w: &WritableArray<Mem>) -> Vec<u8> {
        w.io.data.lock().expect("data").clone()
    }

    #[test]
    fn copies_match_the_model() {
        // Not a multiple of the folio size: the last folio is partial.
        let size = (20 << 20) + 12_345;
        let mut model = random(size, 0x1234_5678_9abc_def1);
        let w = array(model.clone());
        let mut copy = |src: u64, dst: u64, len: u64| {
            assert_eq!(w.copy_range(src, dst, len, &mut []).expect("copy"), len);
            model.copy_within(src as usize..(src + len) as usize, dst as usize);
            assert_eq!(cached(&w), 0, "folios left in the copy cache");
            assert!(contents(&w) == model, "copy {src} -> {dst} ({len}) differs from the model");
        };
        // Several steps, unaligned.
        copy(3, (10 << 20) + 1, (9 << 20) + 777);
        // From the partial last folio, and into it.
        copy(size as u64 - 5000, 100, 5000);
        copy(0, size as u64 - 3000, 3000);
        // Within one folio, both ways.
        copy(70_000, 70_500, 400);
        copy(70_900, 70_001, 700);
        let mut seed = 77u64;
        for _ in 0..30 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let len = 1 + (seed >> 40) % 300_000;
            let src = (seed >> 8) % (size as u64 - len);
            let dst = (seed >> 20).wrapping_mul(31) % (size as u64 - len);
            if src + len <= dst || dst + len <= src {
                copy(src, dst, len);
            }
        }
        assert!(w.io.flushes.load(Ordering::Relaxed) > 0, "copies were not flushed");
        assert_eq!(w.copy_stats().0, w.io.flushes.load(Ordering::Relaxed));
    }

    #[test]
    fn copy_errors() {
        let size = 20 << 20;
        let init = random(size, 99);
        let w = array(init.clone());
        // A source that cannot be read: its errno, nothing written.
        *w.io.bad.lock().expect("bad") = Some(1_000_000..1_000_001);
        let e = w.copy_range(999_000, 5 << 20, 10_000, &mut []).expect_err("bad source");
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "{e}");
        assert_eq!(w.io.writes.load(Ordering::Relaxed), 0);
        assert_eq!(cached(&w), 0);
        // Failing in the second step: the first step's bytes, copied.
        *w.io.bad.lock().expect("bad") = Some(COPY_STEP + 500..COPY_STEP + 501);
        let n = w.copy_range(0, 10 << 20, COPY_STEP + 4096, &mut []).expect("short copy");
        assert_eq!(n, COPY_STEP);
        let mut model = init.clone();
        model.copy_within(..COPY_STEP as usize, 10 << 20);
        assert!(contents(&w) == model);
        *w.io.bad.lock().expect("bad") = None;
        // Failing writes: the error, and no folio left behind.
        w.io.fail_writes.store(true, Ordering::Relaxed);
        let e = w.copy_range(0, 1 << 20, 100_000, &mut []).expect_err("failing writes");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        assert_eq!(cached(&w), 0);
        assert!(contents(&w) == model);
        // Then a direct write, and a copy of it: not stale.
        w.io.fail_writes.store(false, Ordering::Relaxed);
        w.write_at(0, &[0x5a; 100_000]).expect("write");
        model[..100_000].fill(0x5a);
        assert_eq!(w.copy_range(0, 1 << 20, 100_000, &mut []).expect("copy"), 100_000);
        model.copy_within(..100_000, 1 << 20);
        assert!(contents(&w) == model);
    }

    #[test]
    fn racing_writes_next_to_a_copy_are_kept() {
        let size = 4 << 20;
        let w = array(random(size, 5));
        let (src, dst, len) = (2 << 20, 100_001u64, 300_001u64);
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                for k in 1..=255u8 {
                    w.write_at(dst - 100, &[k; 100]).expect("write before");
                    w.write_at(dst + len, &[k; 100]).expect("write after");
                }
            });
            for _ in 0..50 {
                assert_eq!(w.copy_range(src, dst, len, &mut []).expect("copy"), len);
            }
            writer.join().expect("writer");
        });
        let d = contents(&w);
        assert!(d[dst as usize - 100..dst as usize].iter().all(|&b| b == 255), "a write before was lost");
        let after = (dst + len) as usize;
        assert!(d[after..after + 100].iter().all(|&b| b == 255), "a write after was lost");
        assert!(d[dst as usize..after] == d[src as usize..src as usize + len as usize]);
    }
}
