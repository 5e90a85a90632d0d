//! # mon — the metadata manager (mdmon's role) for umd arrays
//!
//! ## Responsibility boundary
//! `mon` keeps the v1.x superblocks of a running umd array (metadata
//! `external:1.x`) in step with md's `array_state`, the way mdmon does for
//! external metadata: on `write-pending` it marks every member's superblock
//! dirty (`resync_offset` 0, `events` + 1), writes them with `O_DIRECT`
//! through `blockio` and flushes, and only then stores `active`; on
//! `active-idle` it stores `clean` and then marks the superblocks clean
//! (`resync_offset` from `md/resync_start`, `events` + 1); when the array
//! stops (`inactive`/`clear`) it leaves them clean. It reaches the running
//! array **only** through the attribute files under `DIR/md/` and the
//! members' superblock areas: it never reads or writes array data, and the
//! serving process never writes a superblock. Member failures (`faulty`,
//! `blocked`) are issue 8's, built on this loop.
//!
//! ## Threads
//! * the **monitor** ([`Monitor::run`]): polls (`POLLPRI`) `md/array_state`,
//!   `md/sync_action`, `md/sync_completed` and every `md/dev-*/state`,
//!   re-reads `array_state` from offset 0 after every wake-up and acts. It
//!   never opens a file, never allocates, and blocks only in `poll`, in its
//!   own superblock I/O and in its attribute reads/stores. A failed
//!   superblock write is never acknowledged: the array stays blocked, the
//!   monitor logs and retries.
//! * the **manager** ([`run`]'s control socket thread): everything that
//!   may allocate — answering `umd mon --status`. (Adding members and
//!   replacing structures, issue 8, will hand prepared updates to the
//!   monitor through preallocated slots.)
//!
//! ## Synchronization model
//! The two threads share only [`Stats`] (atomics). No lock.
//!
//! ## Allocation
//! Everything the monitor will use is made before its loop: the attribute
//! descriptors, the pollfd table, the members (opened `O_DIRECT` where the
//! filesystem does direct I/O) with their persistent I/O descriptors, one
//! page-aligned pool buffer per member holding its superblock block, the
//! engine queue. Then `mlockall(MCL_CURRENT|MCL_FUTURE)` and
//! `PR_SET_IO_FLUSHER`. The loop ([`Monitor::run`]) is allocation-free;
//! [`Hooks`] lets the binary put the monitor thread under an allocation
//! guard and read its count.

#![deny(unsafe_op_in_unsafe_fn)]

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use blockio::{
    Access, BufPool, Direct, Engine, EngineKind, IoBuf, Member, MemberOptions, Op, PoolConfig, Queue,
};
use md::superblock::{self, MAX_SB_SIZE};
use md::sysfs::ArrayState;

/// What the binary provides around the monitor thread.
#[derive(Clone, Copy)]
pub struct Hooks {
    /// Called on the monitor thread once its set-up is done, right before
    /// its loop: puts the thread under the allocation guard.
    pub guard_monitor_thread: fn(),
    /// Allocations the guarded thread made so far.
    pub monitor_allocs: fn() -> u64,
}

/// How to run.
pub struct Config {
    /// The mount directory of the array (`DIR/md/` holds its attributes).
    pub dir: PathBuf,
    /// A lock file: one monitor per array (`flock`).
    pub lock_path: PathBuf,
    /// The control socket (`umd mon --status`).
    pub socket_path: PathBuf,
    /// Allocation guard of the monitor thread.
    pub hooks: Hooks,
}

/// Why the monitor cannot run: one line.
#[derive(Debug)]
pub struct MonError(pub String);

impl std::fmt::Display for MonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MonError {}

fn err<T>(msg: impl Into<String>) -> Result<T, MonError> {
    Err(MonError(msg.into()))
}

/// `array_state` as read: md's word (one trailing newline allowed), or
/// `None` for anything else.
fn parse_state(w: &[u8]) -> Option<ArrayState> {
    ArrayState::from_word(w.strip_suffix(b"\n").unwrap_or(w))
}

/// [`Stats::state`]'s encoding: 0 unknown, else the state's number + 1.
fn encode_state(s: Option<ArrayState>) -> u8 {
    s.map_or(0, |s| s as u8 + 1)
}

fn decode_state(v: u8) -> &'static str {
    v.checked_sub(1).and_then(ArrayState::from_u8).map_or("unknown", ArrayState::word)
}

/// What the monitor has done (shared with the manager).
#[derive(Debug, Default)]
pub struct Stats {
    /// `write-pending` acknowledged (superblocks dirty, then `active`).
    pub acks: AtomicU64,
    /// Superblock sets marked clean.
    pub cleans: AtomicU64,
    /// Superblock writes (one per member per set).
    pub sb_writes: AtomicU64,
    /// Failures (superblock I/O, stores) logged.
    pub errors: AtomicU64,
    /// The superblocks' `events` as last written.
    pub events: AtomicU64,
    /// Whether the superblocks on disk say dirty (1) or clean (0).
    pub dirty: AtomicU8,
    /// The last `array_state` read (0: not an md word, else its number + 1).
    pub state: AtomicU8,
}

/// Writes one log line to stderr without allocating (truncated at 512
/// bytes).
fn log(args: std::fmt::Arguments<'_>) {
    let mut buf = [0u8; 512];
    let len = {
        let mut w: &mut [u8] = &mut buf;
        let _ = w.write_fmt(format_args!("umd mon: {args}\n"));
        512 - w.len()
    };
    // SAFETY: writing `len` initialised bytes of `buf` to fd 2.
    unsafe { libc::write(2, buf.as_ptr().cast(), len) };
}

/// Rewrites a v1.x superblock held in `block` (its first `256 + 2 *
/// max_dev` bytes) in place: `utime`, `events`, `resync_offset`, and the
/// checksum md computes over it. Allocation-free.
pub fn patch_superblock(block: &mut [u8], max_dev: u32, events: u64, resync_offset: u64, utime: u64) {
    block[192..200].copy_from_slice(&utime.to_le_bytes());
    block[200..208].copy_from_slice(&events.to_le_bytes());
    block[208..216].copy_from_slice(&resync_offset.to_le_bytes());
    let csum = superblock::checksum(block, max_dev);
    block[216..220].copy_from_slice(&csum.to_le_bytes());
}

/// One member's superblock, as the monitor rewrites it.
struct SbMember {
    /// Byte offset of the superblock block on the member.
    offset: u64,
    /// Bytes written: the superblock rounded up to the member's direct-I/O
    /// block.
    len: usize,
    /// `max_dev` (checksum length).
    max_dev: u32,
    /// The member's pool buffer holding its superblock block (taken while
    /// an I/O owns it).
    buf: Option<IoBuf>,
}

/// The monitor: everything it needs, made before its loop.
pub struct Monitor {
    dir: PathBuf,
    array_state: File,
    resync_start: File,
    /// `array_state` first, then the other watched attributes.
    pollfds: Vec<libc::pollfd>,
    /// The other watched attributes (`pollfds[1..]`, same order).
    watched: Vec<File>,
    /// `dir` as a C string, made at start (the loop checks that the mount
    /// is still there without allocating).
    dir_c: std::ffi::CString,
    /// The device of the mount (`st_dev` of `array_state`).
    mount_dev: u64,
    members: Vec<SbMember>,
    queue: Queue,
    _engine: Engine,
    events: u64,
    dirty: bool,
    stats: Arc<Stats>,
}

fn open_attr(path: &Path, write: bool) -> Result<File, MonError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| MonError(format!("{}: {e}", path.display())))
}

fn read_text(path: &Path) -> Result<String, MonError> {
    std::fs::read_to_string(path).map_err(|e| MonError(format!("{}: {e}", path.display())))
}

/// Reads an attribute from offset 0 into `buf`; returns the bytes read.
/// Allocation-free.
fn read_attr(f: &File, buf: &mut [u8]) -> io::Result<usize> {
    f.read_at(buf, 0)
}

impl Monitor {
    /// Opens everything for the array mounted at `dir` (see the crate doc);
    /// `stats` is shared with the manager.
    pub fn prepare(dir: &Path, stats: Arc<Stats>) -> Result<Monitor, MonError> {
        let md = dir.join("md");
        let version = read_text(&md.join("metadata_version"))?;
        let version = version.trim();
        if !version.starts_with("external:1.") {
            return err(format!(
                "{}: metadata_version is {version:?}, not external:1.x (umd mon manages arrays served read-write \
                 by umd)",
                dir.display()
            ));
        }
        let array_state = open_attr(&md.join("array_state"), true)?;
        let resync_start = open_attr(&md.join("resync_start"), false)?;
        // Levels without redundancy (raid0) have no sync attributes.
        let mut watched = Vec::new();
        for name in ["sync_action", "sync_completed"] {
            let p = md.join(name);
            if p.exists() {
                watched.push(open_attr(&p, false)?);
            }
        }
        // Members: every dev-* directory with a slot; its `block` link names
        // the member.
        let mut found: Vec<(u32, PathBuf)> = Vec::new();
        let entries = std::fs::read_dir(&md).map_err(|e| MonError(format!("{}: {e}", md.display())))?;
        for e in entries {
            let e = e.map_err(|e| MonError(format!("{}: {e}", md.display())))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with("dev-") {
                continue;
            }
            let d = e.path();
            let slot = read_text(&d.join("slot"))?;
            let Ok(slot) = slot.trim().parse::<u32>() else { continue };
            let block = std::fs::read_link(d.join("block"))
                .map_err(|e| MonError(format!("{}/block: {e}", d.display())))?;
            watched.push(open_attr(&d.join("state"), false)?);
            found.push((slot, block));
        }
        if found.is_empty() {
            return err(format!("{}: the array has no members in slots", dir.display()));
        }
        found.sort();
        // Members, O_DIRECT where possible, and their superblocks.
        let mut opened = Vec::with_capacity(found.len());
        let mut members = Vec::with_capacity(found.len());
        let mut uuid = None;
        let mut events = 0u64;
        let mut dirty = false;
        for (slot, path) in &found {
            let m = Member::open_with(
                path,
                &MemberOptions { access: Access::ReadWrite, direct: Direct::Auto, faults: None },
            )
            .map_err(|e| MonError(format!("{}: {e}", path.display())))?;
            // Read through the page cache (any alignment), written later
            // with direct I/O through `m`.
            let reader = Member::open_with(
                path,
                &MemberOptions { access: Access::ReadOnly, direct: Direct::Never, faults: None },
            )
            .map_err(|e| MonError(format!("{}: {e}", path.display())))?;
            let f = superblock::load(&reader, None, true)
                .map_err(|e| MonError(format!("{}: superblock: {e}", path.display())))?;
            if *uuid.get_or_insert(f.sb.set_uuid) != f.sb.set_uuid {
                return err(format!("{}: belongs to another array", path.display()));
            }
            if f.sb.role() != u16::try_from(*slot).unwrap_or(u16::MAX) {
                return err(format!(
                    "{}: superblock role {} differs from slot {slot} shown by the array",
                    path.display(),
                    f.sb.role()
                ));
            }
            let align = m.alignment().offset.max(512) as usize;
            let len = f.sb.sb_bytes().div_ceil(align) * align;
            let offset = f.sb.super_offset * 512;
            if len > MAX_SB_SIZE || offset % align as u64 != 0 {
                return err(format!(
                    "{}: superblock at byte {offset} ({len} bytes) cannot be written with direct I/O blocks of {align}",
                    path.display()
                ));
            }
            events = events.max(f.sb.events);
            dirty |= f.sb.resync_offset != superblock::MAX_SECTOR;
            members.push((offset, len, f.sb.max_dev, f.raw));
            opened.push(m);
        }
        let pool = BufPool::new(PoolConfig { count: opened.len(), size: MAX_SB_SIZE, huge_pages: false })
            .map_err(|e| MonError(format!("buffer pool: {e}")))?;
        let mut sbs = Vec::with_capacity(members.len());
        for (offset, len, max_dev, raw) in members {
            let mut buf = pool.take().ok_or_else(|| MonError("buffer pool exhausted".into()))?;
            buf[..MAX_SB_SIZE].copy_from_slice(&raw[..MAX_SB_SIZE]);
            sbs.push(SbMember { offset, len, max_dev, buf: Some(buf) });
        }
        let engine =
            Engine::new(EngineKind::Sync, opened, pool).map_err(|e| MonError(format!("engine: {e}")))?;
        let queue = engine.queue(1).map_err(|e| MonError(format!("engine queue: {e}")))?;
        let mut pollfds = Vec::with_capacity(1 + watched.len());
        for f in std::iter::once(&array_state).chain(watched.iter()) {
            pollfds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLPRI | libc::POLLERR,
                revents: 0,
            });
        }
        stats.events.store(events, Ordering::Relaxed);
        stats.dirty.store(u8::from(dirty), Ordering::Relaxed);
        let dir_c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| MonError(format!("{}: path contains NUL", dir.display())))?;
        let mount_dev = {
            use std::os::unix::fs::MetadataExt;
            array_state.metadata().map_err(|e| MonError(format!("{}: {e}", md.display())))?.dev()
        };
        Ok(Monitor {
            dir: dir.to_path_buf(),
            array_state,
            resync_start,
            pollfds,
            watched,
            dir_c,
            mount_dev,
            members: sbs,
            queue,
            _engine: engine,
            events,
            dirty,
            stats,
        })
    }

    /// Number of members whose superblocks it writes.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Writes every member's superblock with `events` + 1 and
    /// `resync_offset`, then flushes every member. Allocation-free. On
    /// error nothing is acknowledged by the caller.
    fn write_superblocks(&mut self, resync_offset: u64) -> Result<(), i32> {
        let events = self.events + 1;
        let utime =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut result = Ok(());
        for (i, m) in self.members.iter_mut().enumerate() {
            let Some(mut buf) = m.buf.take() else {
                result = Err(libc::EIO);
                continue;
            };
            patch_superblock(&mut buf, m.max_dev, events, resync_offset, utime);
            match self.queue.run(Op::write(i, m.offset, buf, m.len)) {
                Ok(c) => {
                    m.buf = Some(c.op.buf);
                    if let Err(e) = c.result {
                        result = Err(e);
                    } else {
                        self.stats.sb_writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(op) => {
                    m.buf = Some(op.buf);
                    result = Err(libc::EAGAIN);
                }
            }
        }
        result?;
        self.queue.flush_all().map_err(|(_, e)| e)?;
        self.events = events;
        self.stats.events.store(events, Ordering::Relaxed);
        Ok(())
    }

    /// `resync_start` as a sector (`none`: in sync). Allocation-free.
    fn resync_point(&self) -> Option<u64> {
        let mut b = [0u8; 32];
        let n = read_attr(&self.resync_start, &mut b).ok()?;
        let t = b[..n].strip_suffix(b"\n").unwrap_or(&b[..n]);
        if t == b"none" {
            return Some(superblock::MAX_SECTOR);
        }
        std::str::from_utf8(t).ok()?.parse().ok()
    }

    fn set_dirty(&mut self, dirty: bool) {
        self.dirty = dirty;
        self.stats.dirty.store(u8::from(dirty), Ordering::Relaxed);
    }

    /// Marks the superblocks clean (`resync_offset` = `resync_start`).
    fn mark_clean(&mut self) -> bool {
        let Some(point) = self.resync_point() else {
            log(format_args!("{}: cannot read md/resync_start; superblocks stay dirty", self.dir.display()));
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        match self.write_superblocks(point) {
            Ok(()) => {
                self.set_dirty(false);
                self.stats.cleans.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                log(format_args!("marking superblocks clean failed: errno {e}; they stay dirty"));
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    fn store(&self, word: &[u8]) -> Result<(), i32> {
        match self.array_state.write_at(word, 0) {
            Ok(_) => Ok(()),
            Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    /// The monitor loop: until the array stops (then the superblocks are
    /// left clean) or its attributes go away (the serving process ended;
    /// superblocks as they are, dirty if writes may have been in flight).
    /// Allocation-free.
    ///
    /// Called on the monitor thread, holding nothing.
    pub fn run(&mut self) -> Result<(), MonError> {
        let mut word = [0u8; 64];
        let mut unknown_logged = false;
        loop {
            let n = match read_attr(&self.array_state, &mut word) {
                Ok(n) => n,
                Err(e) => {
                    log(format_args!(
                        "{}: array_state unreadable ({e}): the array is gone",
                        self.dir.display()
                    ));
                    return Ok(());
                }
            };
            let state = parse_state(&word[..n]);
            self.stats.state.store(encode_state(state), Ordering::Relaxed);
            let mut retry = false;
            match state {
                Some(ArrayState::WritePending) => {
                    // The metadata write always comes before the ack.
                    if !self.dirty {
                        match self.write_superblocks(0) {
                            Ok(()) => self.set_dirty(true),
                            Err(e) => {
                                log(format_args!(
                                    "marking superblocks dirty failed: errno {e}; writes stay blocked, retrying"
                                ));
                                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                                retry = true;
                            }
                        }
                    }
                    if self.dirty {
                        match self.store(b"active") {
                            Ok(()) => {
                                self.stats.acks.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                log(format_args!("storing active failed: errno {e}"));
                                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                                retry = true;
                            }
                        }
                    }
                }
                Some(ArrayState::ActiveIdle) => match self.store(b"clean") {
                    Ok(()) => {
                        if self.dirty && !self.mark_clean() {
                            retry = true;
                        }
                    }
                    // A write started meanwhile: its write-pending wakes us.
                    Err(libc::EBUSY) => {}
                    Err(e) => {
                        log(format_args!("storing clean failed: errno {e}"));
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        retry = true;
                    }
                },
                Some(ArrayState::Clean) => {
                    // In sync with no writes in flight (a writer would wait
                    // for us in write-pending): superblocks left dirty by a
                    // failed write or an earlier monitor are made clean.
                    if self.dirty && !self.mark_clean() {
                        retry = true;
                    }
                }
                Some(ArrayState::Inactive | ArrayState::Clear) => {
                    // md stops an array only with no writes in flight.
                    if self.dirty {
                        self.mark_clean();
                    }
                    return Ok(());
                }
                None => {
                    if !unknown_logged {
                        let shown = std::str::from_utf8(&word[..n]).unwrap_or("(not text)");
                        log(format_args!(
                            "array_state reads {:?}, not an md word: doing nothing",
                            shown.trim_end()
                        ));
                        unknown_logged = true;
                    }
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                Some(
                    ArrayState::Active
                    | ArrayState::Readonly
                    | ArrayState::ReadAuto
                    | ArrayState::Suspended
                    | ArrayState::Broken,
                ) => {}
            }
            if !self.mounted() {
                log(format_args!(
                    "{}: the array's mount is gone; superblocks stay as they are",
                    self.dir.display()
                ));
                return Ok(());
            }
            for p in self.pollfds.iter_mut() {
                p.revents = 0;
            }
            let timeout = if retry { 100 } else { 1000 };
            // SAFETY: `pollfds` is a valid array of initialised pollfd
            // structures for the whole call.
            let rc =
                unsafe { libc::poll(self.pollfds.as_mut_ptr(), self.pollfds.len() as libc::nfds_t, timeout) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    log(format_args!("poll: {e}"));
                    return Ok(());
                }
            }
            // As mdmon: every wake-up re-reads every attribute (a notify
            // stays pending on an open attribute until it is read, and
            // poll would return at once forever). A member's attribute
            // that is gone (removed member) is no longer watched.
            for (p, f) in self.pollfds[1..].iter_mut().zip(&self.watched) {
                if p.fd >= 0 && p.revents != 0 && read_attr(f, &mut word).is_err() {
                    p.fd = -1;
                }
            }
        }
    }

    /// Whether `dir` is still the mount the monitor opened its attributes
    /// on (a lazily detached mount lives on while files are open on it:
    /// without this check the monitor would keep it, and the serving
    /// process, alive). Allocation-free.
    fn mounted(&self) -> bool {
        // SAFETY: stat is plain data; zeroed is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `dir_c` is NUL-terminated and `st` a valid out pointer.
        let rc = unsafe { libc::stat(self.dir_c.as_ptr(), &mut st) };
        rc == 0 && st.st_dev == self.mount_dev
    }
}

/// The control socket: one request line, one reply line. `status` answers
/// `state=WORD dirty=0|1 events=N acks=N cleans=N sb_writes=N errors=N
/// monitor_allocs=N`.
fn manager(listener: std::os::unix::net::UnixListener, stats: Arc<Stats>, hooks: Hooks) {
    use std::io::{BufRead, BufReader};
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mut line = String::new();
        let mut r = BufReader::new(&conn);
        if r.read_line(&mut line).is_err() {
            continue;
        }
        let reply = match line.trim() {
            "status" => status_line(&stats, hooks),
            other => format!("error: unknown request {other:?} (status)"),
        };
        let _ = (&conn).write_all(format!("{reply}\n").as_bytes());
    }
}

/// The `status` reply.
pub fn status_line(stats: &Stats, hooks: Hooks) -> String {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "state={} dirty={} events={} acks={} cleans={} sb_writes={} errors={} monitor_allocs={}",
        decode_state(stats.state.load(Ordering::Relaxed)),
        stats.dirty.load(Ordering::Relaxed),
        l(&stats.events),
        l(&stats.acks),
        l(&stats.cleans),
        l(&stats.sb_writes),
        l(&stats.errors),
        (hooks.monitor_allocs)()
    )
}

/// The one-monitor-per-array lock: an `flock`ed file holding the PID.
/// Removed while still locked, so a file that exists and is locked is
/// always the current holder's.
struct Lock {
    /// Held for its `flock`: closing it releases the lock.
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock; refused (naming the holder's PID) if another holds
    /// it.
    fn take(path: &Path) -> Result<Lock, MonError> {
        use std::os::unix::fs::MetadataExt;
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        loop {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| MonError(format!("{}: {e}", path.display())))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                return err(format!(
                    "another umd mon already manages this array (pid {}, lock {})",
                    holder.trim(),
                    path.display()
                ));
            }
            // The holder we waited on may have removed the file between our
            // open and our flock: then we locked an orphan; start over.
            let same = match (f.metadata(), std::fs::metadata(path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            f.set_len(0).map_err(|e| MonError(format!("{}: {e}", path.display())))?;
            f.write_at(format!("{}\n", std::process::id()).as_bytes(), 0)
                .map_err(|e| MonError(format!("{}: {e}", path.display())))?;
            return Ok(Lock { _file: f, path: path.to_path_buf() });
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while locked; the lock goes with the descriptor.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs the manager for the array at `cfg.dir` until the array stops or
/// goes away: takes the lock, prepares the monitor, protects the process
/// (`mlockall`, `PR_SET_IO_FLUSHER`), calls `ready` with a one-line
/// summary, serves the control socket on the manager thread and runs the
/// monitor on its own thread.
pub fn run(cfg: Config, ready: impl FnOnce(&str)) -> Result<(), MonError> {
    let _lock = Lock::take(&cfg.lock_path)?;
    let stats = Arc::new(Stats::default());
    let mut monitor = Monitor::prepare(&cfg.dir, stats.clone())?;
    let _ = std::fs::remove_file(&cfg.socket_path);
    let listener = std::os::unix::net::UnixListener::bind(&cfg.socket_path)
        .map_err(|e| MonError(format!("{}: {e}", cfg.socket_path.display())))?;
    let protection = blockio::safety::protect_io_path();
    let hooks = cfg.hooks;
    let summary = format!(
        "managing {} ({} members, events {}, superblocks {}); {protection}",
        cfg.dir.display(),
        monitor.members(),
        monitor.events,
        if monitor.dirty { "dirty" } else { "clean" }
    );
    let mgr_stats = stats.clone();
    let spawned = std::thread::Builder::new()
        .name("umd-mon-manager".into())
        .spawn(move || manager(listener, mgr_stats, hooks))
        .map_err(|e| MonError(format!("manager thread: {e}")))
        .and_then(|_| {
            std::thread::Builder::new()
                .name("umd-mon-monitor".into())
                .spawn(move || {
                    (hooks.guard_monitor_thread)();
                    monitor.run()
                })
                .map_err(|e| MonError(format!("monitor thread: {e}")))
        });
    let mon = match spawned {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&cfg.socket_path);
            return Err(e);
        }
    };
    ready(&summary);
    let r = mon.join().unwrap_or_else(|_| err("the monitor thread panicked"));
    let _ = std::fs::remove_file(&cfg.socket_path);
    r
}
#[cfg(test)]
mod tests {
    use super::*;
    use md::synth::Spec;
    use md::Level;

    #[test]
    fn patched_superblock_decodes_with_md_checksum() {
        let spec = Spec::new(Level::Raid5, 4, 8 << 20);
        let sb = spec.superblock(2).expect("superblock");
        let mut block = vec![0u8; MAX_SB_SIZE];
        sb.encode(&mut block);
        for (events, resync) in [(sb.events + 1, 0u64), (sb.events + 2, superblock::MAX_SECTOR), (7, 12345)] {
            patch_superblock(&mut block, sb.max_dev, events, resync, 1_800_000_000);
            let back = superblock::Superblock::decode(&block, sb.super_offset, (8 << 20) / 512, true)
                .expect("decodes with a correct checksum");
            assert_eq!((back.events, back.resync_offset, back.utime), (events, resync, 1_800_000_000));
            assert_eq!(back.sb_csum, superblock::checksum(&block, sb.max_dev));
            // Nothing else changed.
            let mut expect = sb.clone();
            expect.events = events;
            expect.resync_offset = resync;
            expect.utime = 1_800_000_000;
            expect.sb_csum = back.sb_csum;
            assert_eq!(back, expect);
        }
    }

    #[test]
    fn state_words() {
        for w in [
            "clear",
            "inactive",
            "suspended",
            "readonly",
            "read-auto",
            "clean",
            "active",
            "write-pending",
            "active-idle",
            "broken",
        ] {
            let s = parse_state(format!("{w}\n").as_bytes());
            assert_eq!(s.map(ArrayState::word), Some(w));
            assert_eq!(decode_state(encode_state(s)), w);
        }
        assert_eq!(parse_state(b"garbage"), None);
        assert_eq!(parse_state(b"clean\n\n"), None);
        assert_eq!(decode_state(encode_state(None)), "unknown");
    }
}
