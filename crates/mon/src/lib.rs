//! # mon — the metadata manager (mdmon's role) for umd arrays
//!
//! ## Responsibility boundary
//! `mon` keeps the v1.x superblocks of a running umd array (metadata
//! `external:1.x`) in step with md's `array_state` and its members'
//! `state`, the way mdmon does for external metadata: on `write-pending`
//! it marks every member's superblock dirty (`resync_offset` 0, `events` + 1),
//! writes them with `O_DIRECT` through `blockio` and flushes, and
//! only then stores `active`; on `active-idle` it stores `clean` and then
//! marks the superblocks clean (`resync_offset` from `md/resync_start`,
//! `events` + 1); when the array stops (`inactive`/`clear`) it leaves them
//! clean. When a member turns `faulty` (md's `md_error`: a failed write,
//! `umd fail`) it records the failure — the member's role becomes faulty
//! (`0xfffe`) in the superblocks of the members in service, `events` + 1 —
//! before it stores `active` or `-blocked`, so no write that needed the
//! member is acknowledged before the metadata says so; the manager then
//! removes the member (`remove`). A member whose superblock cannot be
//! written is failed the same way (stored `faulty`). It reaches the
//! running array **only** through the attribute files under `DIR/md/` and
//! the members' superblock areas: it never reads or writes array data, and
//! the serving process never writes a superblock.
//!
//! ## Threads
//! * the **monitor** ([`Monitor::run`]): polls (`POLLPRI`) `md/array_state`,
//!   `md/sync_action`, `md/sync_completed`, every `md/dev-*/state`, and its
//!   mailbox wake-up; on every wake-up applies the manager's updates and
//!   re-reads `array_state` and every member's `state` from offset 0, then
//!   acts (mdmon's `read_and_act`). It never opens a file, never
//!   allocates or frees, and blocks only in `poll`, in its own superblock
//!   I/O and in its attribute reads/stores. A failed superblock write is
//!   never acknowledged: the array stays blocked, the monitor logs and
//!   retries.
//! * the **manager** ([`run`]'s second thread): everything that may
//!   allocate or open — the control socket (`umd mon --status`), removing
//!   failed members through a newly opened `state` (`remove`), preparing
//!   updates for the monitor and freeing what the monitor hands back.
//!
//! ## Synchronization model
//! The threads share [`Shared`]: statistics (atomics), the `removable`
//! slot mask (atomic), and the [`mailbox`]: two bounded SPSC rings of
//! preallocated slots carrying boxed [`Update`]s (manager → monitor:
//! `Retire`; monitor → manager: the `MemberEntry` it let go of), each side
//! woken through an `eventfd`. No lock. The monitor owns every
//! [`MemberEntry`] it manages; one changes hands only through the rings.
//!
//! ## Allocation
//! Everything the monitor will use is made before its loop: the attribute
//! descriptors, the pollfd table (a slot per array slot), the members
//! (opened `O_DIRECT` where the filesystem does direct I/O), each with its
//! engine queue, its persistent I/O descriptor and a page-aligned pool
//! buffer holding its superblock block. Then `mlockall(MCL_CURRENT|
//! MCL_FUTURE)` and `PR_SET_IO_FLUSHER`. The loop ([`Monitor::run`]) is
//! allocation-free, updates included (boxes move, they are neither made
//! nor freed there); [`Hooks`] lets the binary put the monitor thread under
//! an allocation guard and read its count.

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
use md::superblock::{self, Found, MAX_SB_SIZE};
use md::sysfs::ArrayState;

pub mod mailbox;
use mailbox::{Ring, Wake};

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
    /// Member failures recorded in the survivors' superblocks.
    pub failures: AtomicU64,
    /// Failed members removed from the array and let go of.
    pub removed: AtomicU64,
    /// Spares given a slot (and handed to the monitor).
    pub spares: AtomicU64,
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

/// md's role of a failed member in `dev_roles` (`MD_DISK_ROLE_FAULTY`).
pub const ROLE_FAULTY: u16 = 0xfffe;

/// Sets member `dev_number`'s entry of the `dev_roles` table in a v1.x
/// superblock block (the checksum is [`patch_superblock`]'s). Entries past
/// `max_dev` are not touched. Allocation-free.
pub fn set_role(block: &mut [u8], max_dev: u32, dev_number: u32, role: u16) {
    if dev_number >= max_dev {
        return;
    }
    let at = 256 + 2 * dev_number as usize;
    if let Some(b) = block.get_mut(at..at + 2) {
        b.copy_from_slice(&role.to_le_bytes());
    }
}

/// One member's superblock, as the monitor rewrites it.
struct SbMember {
    /// Byte offset of the superblock block on the member.
    offset: u64,
    /// Bytes written: the superblock rounded up to the member's direct-I/O
    /// block.
    len: usize,
    /// `max_dev` (checksum length, size of `dev_roles`).
    max_dev: u32,
    /// The member's pool buffer holding its superblock block (taken while
    /// an I/O owns it).
    buf: Option<IoBuf>,
}

/// One member as the monitor manages it: made by the manager (at start,
/// and for members that arrive later), handed to the monitor, handed back
/// to the manager to be closed and freed.
pub struct MemberEntry {
    slot: usize,
    /// Index of the member in `dev_roles`.
    dev_number: u32,
    /// `md/dev-NAME` (the manager opens its `state` anew to remove it).
    dir_name: String,
    /// The member's file (messages).
    path: PathBuf,
    /// `md/dev-NAME/state`, read-write (the monitor stores `-blocked`).
    state: File,
    /// `md/dev-NAME/recovery_start`: how far md has rebuilt it.
    recovery: File,
    /// The `recovery_offset` its superblock holds (`None`: in sync, the
    /// feature bit clear).
    recovery_recorded: Option<u64>,
    sb: SbMember,
    queue: Queue,
    _engine: Engine,
    /// Seen `faulty`: its role is faulty in every other member's buffer.
    failed: bool,
    /// The failure is in the survivors' superblocks on disk.
    recorded: bool,
    /// Its `state` showed `blocked` at the last read.
    blocked: bool,
}

impl MemberEntry {
    /// Opens the member at `path` (slot `slot`, directory `dir_name`)
    /// O_DIRECT where possible, loads its superblock into a pool buffer of
    /// its own, opens its `state` read-write. May allocate: manager side.
    fn open(md: &Path, dir_name: &str, slot: usize, path: &Path) -> Result<(MemberEntry, Found), MonError> {
        // Read through the page cache (any alignment), written later with
        // direct I/O.
        let reader = Member::open_with(
            path,
            &MemberOptions { access: Access::ReadOnly, direct: Direct::Never, faults: None },
        )
        .map_err(|e| MonError(format!("{}: {e}", path.display())))?;
        let f = superblock::load(&reader, None, true)
            .map_err(|e| MonError(format!("{}: superblock: {e}", path.display())))?;
        let entry = MemberEntry::with_block(md, dir_name, slot, path, &f.sb, &f.raw)?;
        Ok((entry, f))
    }

    /// A member whose superblock is `sb`, encoded in `raw` (its first
    /// [`MAX_SB_SIZE`] bytes go to the buffer). May allocate: manager side.
    fn with_block(
        md: &Path,
        dir_name: &str,
        slot: usize,
        path: &Path,
        sb: &superblock::Superblock,
        raw: &[u8],
    ) -> Result<MemberEntry, MonError> {
        let state = open_attr(&md.join(dir_name).join("state"), true)?;
        let recovery = open_attr(&md.join(dir_name).join("recovery_start"), false)?;
        let m = Member::open_with(
            path,
            &MemberOptions { access: Access::ReadWrite, direct: Direct::Auto, faults: None },
        )
        .map_err(|e| MonError(format!("{}: {e}", path.display())))?;
        let align = m.alignment().offset.max(512) as usize;
        let len = sb.sb_bytes().div_ceil(align) * align;
        let offset = sb.super_offset * 512;
        if len > MAX_SB_SIZE || !offset.is_multiple_of(align as u64) {
            return err(format!(
                "{}: superblock at byte {offset} ({len} bytes) cannot be written with direct I/O blocks of {align}",
                path.display()
            ));
        }
        let pool = BufPool::new(PoolConfig { count: 1, size: MAX_SB_SIZE, huge_pages: false })
            .map_err(|e| MonError(format!("buffer pool: {e}")))?;
        let mut buf = pool.take().ok_or_else(|| MonError("buffer pool exhausted".into()))?;
        buf[..MAX_SB_SIZE].copy_from_slice(&raw[..MAX_SB_SIZE]);
        let engine =
            Engine::new(EngineKind::Sync, vec![m], pool).map_err(|e| MonError(format!("engine: {e}")))?;
        let queue = engine.queue(1).map_err(|e| MonError(format!("engine queue: {e}")))?;
        let recovering = sb.has_feature(superblock::feature::RECOVERY_OFFSET);
        let entry = MemberEntry {
            slot,
            dev_number: sb.dev_number,
            dir_name: dir_name.to_string(),
            path: path.to_path_buf(),
            state,
            recovery,
            recovery_recorded: recovering.then_some(sb.recovery_offset),
            sb: SbMember { offset, len, max_dev: sb.max_dev, buf: Some(buf) },
            queue,
            _engine: engine,
            failed: false,
            recorded: false,
            blocked: false,
        };
        Ok(entry)
    }

    /// Writes this member's superblock block as it is in its buffer
    /// (patched by the caller), then flushes it. Allocation-free.
    fn write_sb(&mut self) -> Result<(), i32> {
        let Some(buf) = self.sb.buf.take() else { return Err(libc::EIO) };
        match self.queue.run(Op::write(0, self.sb.offset, buf, self.sb.len)) {
            Ok(c) => {
                self.sb.buf = Some(c.op.buf);
                c.result?;
            }
            Err(op) => {
                self.sb.buf = Some(op.buf);
                return Err(libc::EAGAIN);
            }
        }
        self.queue.flush(0)
    }
}

/// What travels through the mailbox (see [`mailbox`]).
pub enum Update {
    /// Manager → monitor: stop managing `slot` (the member was removed
    /// from the array). Comes back as `Retired` (or `Unapplied`).
    Retire {
        /// The slot.
        slot: usize,
    },
    /// Manager → monitor: manage a member that now holds `slot` (a spare
    /// md is recovering there); its superblock is written, its files
    /// open. The box comes back empty (`Unapplied`) or holding a member
    /// the slot had (`Retired`).
    Install {
        /// The slot.
        slot: usize,
        /// The member.
        entry: Box<MemberEntry>,
    },
    /// Monitor → manager: a member the monitor let go of, to be closed
    /// and freed on the manager thread.
    Retired(Box<MemberEntry>),
    /// Monitor → manager: an update that named no member the monitor has.
    Unapplied,
}

/// What the manager and the monitor share: the statistics, the mailbox
/// and the wake-up signals.
pub struct Shared {
    /// What the monitor has done.
    pub stats: Stats,
    to_monitor: Ring<Update>,
    to_manager: Ring<Update>,
    monitor_wake: Wake,
    manager_wake: Wake,
    /// Slots whose failure is recorded and unblocked: the manager removes
    /// them from the array (bit per slot).
    removable: AtomicU64,
}

impl Shared {
    fn new() -> Result<Shared, MonError> {
        let wake = || Wake::new().map_err(|e| MonError(format!("eventfd: {e}")));
        Ok(Shared {
            stats: Stats::default(),
            to_monitor: Ring::default(),
            to_manager: Ring::default(),
            monitor_wake: wake()?,
            manager_wake: wake()?,
            removable: AtomicU64::new(0),
        })
    }
}

/// Index of `array_state` in the pollfd table.
const PFD_ARRAY_STATE: usize = 0;
/// Index of the monitor's mailbox wake-up.
const PFD_WAKE: usize = 1;
/// Most slots an array may have for the monitor (a bit each in
/// [`Shared::removable`]).
pub const MAX_SLOTS: usize = 64;

/// The monitor: everything it needs, made before its loop.
pub struct Monitor {
    dir: PathBuf,
    array_state: File,
    resync_start: File,
    /// `sync_action`, `sync_completed` where the level has them.
    sync_attrs: Vec<File>,
    /// `array_state`, the wake-up, the sync attributes, then one per slot
    /// (the member's `state`, fd -1 when the slot has no member managed).
    pollfds: Vec<libc::pollfd>,
    /// By slot: the members managed.
    members: Vec<Option<Box<MemberEntry>>>,
    /// `dir` as a C string, made at start (the loop checks that the mount
    /// is still there without allocating).
    dir_c: std::ffi::CString,
    /// The device of the mount (`st_dev` of `array_state`).
    mount_dev: u64,
    events: u64,
    dirty: bool,
    /// The `resync_offset` the clean superblocks on disk hold.
    recorded: u64,
    /// A member was installed: the superblocks are written this round.
    structural: bool,
    shared: Arc<Shared>,
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

/// Stores `word` into an attribute. Allocation-free.
fn store_attr(f: &File, word: &[u8]) -> Result<(), i32> {
    match f.write_at(word, 0) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// md's member flags the monitor acts on, from a `dev-*/state` text
/// (comma-separated words). Allocation-free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DevState {
    faulty: bool,
    blocked: bool,
}

fn parse_dev_state(text: &[u8]) -> DevState {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let mut s = DevState::default();
    for w in text.split(|&b| b == b',') {
        match w {
            b"faulty" => s.faulty = true,
            b"blocked" => s.blocked = true,
            _ => {}
        }
    }
    s
}

impl Monitor {
    /// Opens everything for the array mounted at `dir` (see the crate doc).
    pub fn prepare(dir: &Path, shared: Arc<Shared>) -> Result<Monitor, MonError> {
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
        let raid_disks: usize = read_text(&md.join("raid_disks"))?
            .trim()
            .parse()
            .map_err(|_| MonError(format!("{}: raid_disks is not a number", md.display())))?;
        if raid_disks == 0 || raid_disks > MAX_SLOTS {
            return err(format!("{}: {raid_disks} slots (umd mon manages 1 to {MAX_SLOTS})", md.display()));
        }
        let array_state = open_attr(&md.join("array_state"), true)?;
        let resync_start = open_attr(&md.join("resync_start"), false)?;
        // Levels without redundancy (raid0) have no sync attributes.
        let mut sync_attrs = Vec::new();
        for name in ["sync_action", "sync_completed"] {
            let p = md.join(name);
            if p.exists() {
                sync_attrs.push(open_attr(&p, false)?);
            }
        }
        // Members: every dev-* directory with a slot; its `block` link names
        // the member.
        let mut found: Vec<(usize, String, PathBuf)> = Vec::new();
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
            let Ok(slot) = slot.trim().parse::<usize>() else { continue };
            if slot >= raid_disks {
                return err(format!("{}: slot {slot} is not below raid_disks {raid_disks}", d.display()));
            }
            let block = std::fs::read_link(d.join("block"))
                .map_err(|e| MonError(format!("{}/block: {e}", d.display())))?;
            found.push((slot, name.to_string(), block));
        }
        if found.is_empty() {
            return err(format!("{}: the array has no members in slots", dir.display()));
        }
        found.sort();
        let mut members: Vec<Option<Box<MemberEntry>>> = (0..raid_disks).map(|_| None).collect();
        let mut uuid = None;
        let mut events = 0u64;
        let mut dirty = false;
        let mut recorded = superblock::MAX_SECTOR;
        for (slot, name, path) in &found {
            let (entry, f) = MemberEntry::open(&md, name, *slot, path)?;
            if *uuid.get_or_insert(f.sb.set_uuid) != f.sb.set_uuid {
                return err(format!("{}: belongs to another array", path.display()));
            }
            if usize::from(f.sb.role()) != *slot {
                return err(format!(
                    "{}: superblock role {} differs from slot {slot} shown by the array",
                    path.display(),
                    f.sb.role()
                ));
            }
            if members[*slot].is_some() {
                return err(format!("{}: two members in slot {slot}", md.display()));
            }
            events = events.max(f.sb.events);
            dirty |= f.sb.resync_offset == 0;
            recorded = recorded.min(f.sb.resync_offset);
            members[*slot] = Some(Box::new(entry));
        }
        let mut pollfds = Vec::with_capacity(2 + sync_attrs.len() + raid_disks);
        let pfd = |fd: i32, events: i16| libc::pollfd { fd, events, revents: 0 };
        pollfds.push(pfd(array_state.as_raw_fd(), libc::POLLPRI | libc::POLLERR));
        pollfds.push(pfd(shared.monitor_wake.fd(), libc::POLLIN));
        for f in &sync_attrs {
            pollfds.push(pfd(f.as_raw_fd(), libc::POLLPRI | libc::POLLERR));
        }
        for m in &members {
            pollfds.push(pfd(m.as_ref().map_or(-1, |m| m.state.as_raw_fd()), libc::POLLPRI | libc::POLLERR));
        }
        shared.stats.events.store(events, Ordering::Relaxed);
        shared.stats.dirty.store(u8::from(dirty), Ordering::Relaxed);
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
            sync_attrs,
            pollfds,
            members,
            dir_c,
            mount_dev,
            events,
            dirty,
            recorded,
            structural: false,
            shared,
        })
    }

    /// Number of members whose superblocks it writes.
    pub fn members(&self) -> usize {
        self.members.iter().flatten().filter(|m| !m.failed).count()
    }

    fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The pollfd index of `slot`'s `state`.
    fn member_pfd(&self, slot: usize) -> usize {
        2 + self.sync_attrs.len() + slot
    }

    /// Writes the superblock of every member in service (not failed) with
    /// `events` + 1 and `resync_offset`, each flushed. Allocation-free. On
    /// error nothing is acknowledged by the caller; a member whose
    /// superblock cannot be written is failed through its `state` (md's
    /// `md_error`: metadata that cannot be kept on it makes it unusable),
    /// and the next round records that.
    fn write_superblocks(&mut self, resync_offset: u64) -> Result<(), i32> {
        let events = self.events + 1;
        let utime =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut result = Ok(());
        for m in self.members.iter_mut().flatten() {
            if m.failed {
                continue;
            }
            let max_dev = m.sb.max_dev;
            if let Some(buf) = m.sb.buf.as_mut() {
                patch_superblock(buf, max_dev, events, resync_offset, utime);
            }
            match m.write_sb() {
                Ok(()) => {
                    self.shared.stats.sb_writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    log(format_args!(
                        "superblock write to {} failed: errno {e}; failing the member",
                        m.path.display()
                    ));
                    self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if let Err(se) = store_attr(&m.state, b"faulty") {
                        log(format_args!("{}: storing faulty failed: errno {se}", m.dir_name));
                    }
                    result = Err(e);
                }
            }
        }
        result?;
        self.events = events;
        self.shared.stats.events.store(events, Ordering::Relaxed);
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
        self.shared.stats.dirty.store(u8::from(dirty), Ordering::Relaxed);
    }

    /// The `resync_offset` to write while the superblocks stay as dirty or
    /// clean as they are (`None`: `resync_start` unreadable).
    fn current_resync(&self) -> Option<u64> {
        if self.dirty {
            Some(0)
        } else {
            self.resync_point()
        }
    }

    /// Marks the superblocks clean (`resync_offset` = `resync_start`).
    fn mark_clean(&mut self) -> bool {
        let Some(point) = self.resync_point() else {
            log(format_args!("{}: cannot read md/resync_start; superblocks stay dirty", self.dir.display()));
            self.stats().errors.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        match self.write_superblocks(point) {
            Ok(()) => {
                self.set_dirty(false);
                self.recorded = point;
                self.stats().cleans.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                log(format_args!("marking superblocks clean failed: errno {e}; they stay dirty"));
                self.stats().errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Puts `entry` in `slot`: its roles table copied from a member in
    /// service, its role (the slot) set in every member's buffer, its
    /// `state` polled; the superblocks are written this round. Returns
    /// what goes back to the manager. Allocation-free.
    fn install(&mut self, slot: usize, mut entry: Box<MemberEntry>) -> Update {
        let pfd = self.member_pfd(slot);
        let Some(cell) = self.members.get_mut(slot) else { return Update::Retired(entry) };
        let old = cell.take();
        let dev = entry.dev_number;
        let Ok(role) = u16::try_from(slot) else { return Update::Retired(entry) };
        if let (Some(src), Some(dst)) = (
            self.members.iter().flatten().find(|m| !m.failed).and_then(|m| m.sb.buf.as_ref()),
            entry.sb.buf.as_mut(),
        ) {
            let n = 256 + 2 * entry.sb.max_dev as usize;
            if n <= MAX_SB_SIZE {
                dst[256..n].copy_from_slice(&src[256..n]);
            }
        }
        for m in self.members.iter_mut().flatten().chain(std::iter::once(&mut entry)) {
            let max_dev = m.sb.max_dev;
            if let Some(buf) = m.sb.buf.as_mut() {
                set_role(buf, max_dev, dev, role);
            }
        }
        self.pollfds[pfd].fd = entry.state.as_raw_fd();
        log(format_args!("{} takes slot {slot}: managing its superblock", entry.path.display()));
        self.members[slot] = Some(entry);
        self.structural = true;
        match old {
            Some(o) => Update::Retired(o),
            None => Update::Unapplied,
        }
    }

    /// Reads every member's `recovery_start`: a moved recovery checkpoint
    /// (or its end) goes into that member's buffer. Returns whether one
    /// moved. Allocation-free.
    fn read_recovery(&mut self, word: &mut [u8]) -> bool {
        let mut moved = false;
        for m in self.members.iter_mut().flatten() {
            if m.failed {
                continue;
            }
            let Ok(n) = read_attr(&m.recovery, word) else { continue };
            let t = word[..n].strip_suffix(b"\n").unwrap_or(&word[..n]);
            let now = if t == b"none" {
                None
            } else {
                match std::str::from_utf8(t).ok().and_then(|t| t.parse::<u64>().ok()) {
                    Some(v) => Some(v),
                    None => continue,
                }
            };
            if now == m.recovery_recorded {
                continue;
            }
            if let Some(buf) = m.sb.buf.as_mut() {
                let mut fm = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
                match now {
                    Some(v) => {
                        fm |= superblock::feature::RECOVERY_OFFSET;
                        buf[152..160].copy_from_slice(&v.to_le_bytes());
                    }
                    None => {
                        fm &= !superblock::feature::RECOVERY_OFFSET;
                        buf[152..160].copy_from_slice(&0u64.to_le_bytes());
                    }
                }
                buf[8..12].copy_from_slice(&fm.to_le_bytes());
            }
            m.recovery_recorded = now;
            moved = true;
        }
        moved
    }

    /// Applies the manager's updates (while the manager's ring has room
    /// for the box to go back). Allocation-free: boxes only move.
    fn apply_updates(&mut self) -> bool {
        let mut applied = false;
        while self.shared.to_manager.has_room() {
            let Some(mut update) = self.shared.to_monitor.pop() else { break };
            let back = match std::mem::replace(&mut *update, Update::Unapplied) {
                Update::Install { slot, entry } => self.install(slot, entry),
                Update::Retire { slot } => {
                    let pfd = self.member_pfd(slot);
                    match self.members.get_mut(slot).and_then(Option::take) {
                        Some(entry) => {
                            self.pollfds[pfd].fd = -1;
                            Update::Retired(entry)
                        }
                        None => Update::Unapplied,
                    }
                }
                // Not sent to the monitor; returned as they are.
                u @ (Update::Retired(_) | Update::Unapplied) => u,
            };
            // The old contents moved out above: nothing is freed here.
            *update = back;
            // Cannot fail: room was checked and only this thread pushes.
            if let Err(b) = self.shared.to_manager.push(update) {
                std::mem::forget(b);
            }
            applied = true;
        }
        if applied {
            self.shared.manager_wake.signal();
        }
        applied
    }

    /// Reads every managed member's `state`: a member newly `faulty` gets
    /// the faulty role in every other member's buffer. Returns whether a
    /// failure awaits recording. Allocation-free.
    fn read_members(&mut self, word: &mut [u8], all: bool) -> bool {
        let mut pending = false;
        for slot in 0..self.members.len() {
            let pfd = self.member_pfd(slot);
            let Some(m) = self.members[slot].as_mut() else { continue };
            if self.pollfds[pfd].fd < 0 {
                continue;
            }
            // Only what notified (a pending notify is consumed by the
            // read), unless everything is to be looked at.
            if !all && self.pollfds[pfd].revents == 0 {
                pending |= m.failed && !m.recorded;
                continue;
            }
            let st = match read_attr(&m.state, word) {
                Ok(n) => parse_dev_state(&word[..n]),
                // Removed from the array: no longer watched (the
                // manager's `Retire` frees it).
                Err(_) => {
                    self.pollfds[pfd].fd = -1;
                    continue;
                }
            };
            m.blocked = st.blocked;
            if st.faulty && !m.failed {
                m.failed = true;
                log(format_args!(
                    "{} (slot {slot}) failed: recording it in the superblocks",
                    m.path.display()
                ));
                let dev = m.dev_number;
                for other in self.members.iter_mut().flatten() {
                    let max_dev = other.sb.max_dev;
                    if let Some(buf) = other.sb.buf.as_mut() {
                        set_role(buf, max_dev, dev, ROLE_FAULTY);
                    }
                }
            }
            let m = self.members[slot].as_ref();
            pending |= m.is_some_and(|m| m.failed && !m.recorded);
        }
        pending
    }

    /// After a successful superblock write: every failure seen so far is
    /// on disk.
    fn failures_recorded(&mut self) {
        for m in self.members.iter_mut().flatten() {
            if m.failed && !m.recorded {
                m.recorded = true;
                self.shared.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stores `-blocked` for every failed member whose failure is on disk
    /// and tells the manager to remove it. Returns false if a store
    /// failed (retry). Allocation-free.
    fn unblock_recorded(&mut self) -> bool {
        let mut ok = true;
        let mut removable = 0u64;
        for m in self.members.iter_mut().flatten() {
            if !(m.failed && m.recorded) {
                continue;
            }
            if m.blocked {
                match store_attr(&m.state, b"-blocked") {
                    Ok(()) => m.blocked = false,
                    Err(e) => {
                        log(format_args!("{}: storing -blocked failed: errno {e}", m.dir_name));
                        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                        ok = false;
                        continue;
                    }
                }
            }
            removable |= 1 << m.slot;
        }
        if removable & !self.shared.removable.fetch_or(removable, Ordering::AcqRel) != 0 {
            self.shared.manager_wake.signal();
        }
        ok
    }

    fn store(&self, word: &[u8]) -> Result<(), i32> {
        store_attr(&self.array_state, word)
    }

    /// The monitor loop: until the array stops (then the superblocks are
    /// left clean) or its attributes go away (the serving process ended;
    /// superblocks as they are, dirty if writes may have been in flight).
    /// Allocation-free.
    ///
    /// Each round, as mdmon's `read_and_act`: apply the manager's updates,
    /// read `array_state` and every member's `state`; record new failures
    /// (with the dirty mark a `write-pending` asks for) in one superblock
    /// write; only then store `active` and `-blocked`; then `clean` as
    /// `active-idle` asks.
    ///
    /// Called on the monitor thread, holding nothing.
    pub fn run(&mut self) -> Result<(), MonError> {
        let mut word = [0u8; 64];
        let mut unknown_logged = false;
        // Read every member's attributes this round (the first, after a
        // timeout or a retry).
        let mut full = true;
        loop {
            self.shared.monitor_wake.clear();
            let applied = self.apply_updates();
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
            self.stats().state.store(encode_state(state), Ordering::Relaxed);
            if state.is_none() {
                if !unknown_logged {
                    let shown = std::str::from_utf8(&word[..n]).unwrap_or("(not text)");
                    log(format_args!(
                        "array_state reads {:?}, not an md word: doing nothing",
                        shown.trim_end()
                    ));
                    unknown_logged = true;
                }
                self.stats().errors.fetch_add(1, Ordering::Relaxed);
            }
            let mut member_word = [0u8; 128];
            // A write-pending acknowledgement reads only what notified; on
            // a timeout, a retry or an update, every member is read.
            let members_notified =
                self.pollfds[2..].iter().any(|p| p.fd >= 0 && p.revents != 0) || applied || full;
            let failures = self.read_members(&mut member_word, full || applied);
            let moved = members_notified && self.read_recovery(&mut member_word);
            let pending = failures || moved || self.structural;
            let mut retry = false;
            // 1. Metadata first: new failures, and the dirty mark a
            //    write-pending array asks for, in one write.
            let want_dirty = state == Some(ArrayState::WritePending) && !self.dirty;
            let mut recorded = !pending;
            if state.is_some() && (pending || want_dirty) {
                let resync =
                    if state == Some(ArrayState::WritePending) { Some(0) } else { self.current_resync() };
                match resync.map(|r| self.write_superblocks(r)) {
                    Some(Ok(())) => {
                        if resync == Some(0) {
                            self.set_dirty(true);
                        }
                        self.failures_recorded();
                        self.structural = false;
                        recorded = true;
                    }
                    Some(Err(e)) => {
                        log(format_args!(
                            "superblock update failed: errno {e}; writes stay blocked, retrying"
                        ));
                        self.stats().errors.fetch_add(1, Ordering::Relaxed);
                        retry = true;
                    }
                    None => {
                        log(format_args!("cannot read md/resync_start; retrying"));
                        self.stats().errors.fetch_add(1, Ordering::Relaxed);
                        retry = true;
                    }
                }
            }
            // 2. Acknowledgements, only for what is on disk.
            if recorded && !self.unblock_recorded() {
                retry = true;
            }
            match state {
                Some(ArrayState::WritePending) if self.dirty && recorded => match self.store(b"active") {
                    Ok(()) => {
                        self.stats().acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        log(format_args!("storing active failed: errno {e}"));
                        self.stats().errors.fetch_add(1, Ordering::Relaxed);
                        retry = true;
                    }
                },
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
                        self.stats().errors.fetch_add(1, Ordering::Relaxed);
                        retry = true;
                    }
                },
                // In sync with no writes in flight (a writer would wait for
                // us in write-pending): superblocks left dirty by a failed
                // write or an earlier monitor are made clean; a resync
                // checkpoint that moved is recorded (md writes the
                // superblock at each checkpoint).
                Some(ArrayState::Clean)
                    if (self.dirty || self.resync_point().is_some_and(|p| p != self.recorded))
                        && !self.mark_clean() =>
                {
                    retry = true
                }
                Some(ArrayState::Inactive | ArrayState::Clear) => {
                    // md stops an array only with no writes in flight.
                    if self.dirty {
                        self.mark_clean();
                    }
                    return Ok(());
                }
                _ => {}
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
            full = rc == 0 || retry;
            // As mdmon: every wake-up re-reads every attribute (a notify
            // stays pending on an open attribute until it is read, and
            // poll would return at once forever). `array_state` and the
            // members' `state` are read at the top of the loop.
            let _ = PFD_ARRAY_STATE;
            let _ = PFD_WAKE;
            for (i, f) in self.sync_attrs.iter().enumerate() {
                let p = &mut self.pollfds[2 + i];
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

    /// What the manager needs to know of the members: by slot, the
    /// `dev-NAME` directory name.
    fn member_dirs(&self) -> Vec<Option<String>> {
        self.members.iter().map(|m| m.as_ref().map(|m| m.dir_name.clone())).collect()
    }
}

/// The manager thread: the control socket (one request line, one reply
/// line; `status`, or `ping`: look for work at once, as mdadm's
/// `ping_monitor` after adding a spare), spare activation, and member
/// removal: a member whose failure the
/// monitor recorded and unblocked is removed from the array with `remove`
/// through a newly opened `state` (as mdmon's manager does), then the
/// monitor is told to let go of it (a `Retire` update through the
/// mailbox) and the structure it hands back is closed and freed here.
fn manager(
    listener: std::os::unix::net::UnixListener,
    shared: Arc<Shared>,
    hooks: Hooks,
    md: PathBuf,
    mut dirs: Vec<Option<String>>,
) {
    use std::io::{BufRead, BufReader};
    let _ = listener.set_nonblocking(true);
    // Retire updates not yet queued (the monitor's ring was full).
    let mut outbox: std::collections::VecDeque<Box<Update>> = std::collections::VecDeque::new();
    // Slots removed (or found gone) whose Retire is queued or sent.
    let mut retiring = 0u64;
    // A `ping` (mdadm's ping_monitor after an add): look again at once.
    let mut pinged = false;
    // Rounds since the last look for spares.
    let mut idle_rounds = 0u32;
    loop {
        let mut pfds = [
            libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: shared.manager_wake.fd(), events: libc::POLLIN, revents: 0 },
        ];
        // A removal refused for now (EBUSY) is retried every second.
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, if pinged { 0 } else { 1000 }) };
        let pinged_now = std::mem::take(&mut pinged);
        let woken = pfds[1].revents != 0;
        shared.manager_wake.clear();
        // Structures the monitor let go of: closed and freed here.
        while let Some(back) = shared.to_manager.pop() {
            if let Update::Retired(entry) = *back {
                log(format_args!("{} (slot {}) let go", entry.path.display(), entry.slot));
                shared.stats.removed.fetch_add(1, Ordering::Relaxed);
                let bit = 1u64 << entry.slot;
                if retiring & bit != 0 {
                    retiring &= !bit;
                    shared.removable.fetch_and(!bit, Ordering::AcqRel);
                    if dirs.get(entry.slot).and_then(Option::as_deref) == Some(entry.dir_name.as_str()) {
                        dirs[entry.slot] = None;
                    }
                }
                drop(entry);
            }
        }
        // A spare and an empty slot: the spare takes it (mdmon's
        // activate_spare) and md recovers it. Looked for when pinged
        // (`umd add`), woken, and every ten seconds otherwise, and only
        // while the array is degraded (each look reads the attribute tree
        // over FUSE, beside the array's own requests).
        idle_rounds += 1;
        let look = pinged_now || woken || idle_rounds >= 10;
        let degraded = || {
            std::fs::read_to_string(md.join("degraded")).ok().and_then(|t| t.trim().parse::<u64>().ok())
                != Some(0)
        };
        if look {
            idle_rounds = 0;
        }
        if outbox.is_empty() && look && degraded() {
            match activate_spare(&md, &dirs, retiring) {
                Ok(Some((slot, entry))) => {
                    dirs[slot] = Some(entry.dir_name.clone());
                    shared.stats.spares.fetch_add(1, Ordering::Relaxed);
                    outbox.push_back(Box::new(Update::Install { slot, entry: Box::new(entry) }));
                }
                Ok(None) => {}
                Err(e) => log(format_args!("activating a spare: {e}")),
            }
        }
        // Removals.
        let want = shared.removable.load(Ordering::Acquire) & !retiring;
        for slot in (0..64).filter(|s| want & (1 << s) != 0) {
            let Some(Some(name)) = dirs.get(slot) else { continue };
            let path = md.join(name).join("state");
            let r =
                std::fs::OpenOptions::new().write(true).open(&path).and_then(|mut f| f.write_all(b"remove"));
            let gone = match r {
                Ok(()) => {
                    log(format_args!("{name} (slot {slot}) removed from the array"));
                    true
                }
                // Already removed (by hand): let go of it too.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => true,
                Err(e) => {
                    if e.raw_os_error() != Some(libc::EBUSY) {
                        log(format_args!("{name}: remove failed: {e}; retrying"));
                    }
                    false
                }
            };
            if gone {
                retiring |= 1 << slot;
                outbox.push_back(Box::new(Update::Retire { slot }));
            }
        }
        let mut sent = false;
        while let Some(u) = outbox.pop_front() {
            match shared.to_monitor.push(u) {
                Ok(()) => sent = true,
                Err(u) => {
                    outbox.push_front(u);
                    break;
                }
            }
        }
        if sent {
            shared.monitor_wake.signal();
        }
        // Control requests.
        loop {
            let conn = match listener.accept() {
                Ok((c, _)) => c,
                Err(_) => break,
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut line = String::new();
            let mut r = BufReader::new(&conn);
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let reply = match line.trim() {
                "status" => status_line(&shared.stats, hooks),
                "ping" => {
                    pinged = true;
                    "ok".to_string()
                }
                other => format!("error: unknown request {other:?} (status, ping)"),
            };
            let _ = (&conn).write_all(format!("{reply}\n").as_bytes());
        }
    }
}

/// mdmon's `activate_spare`: if the array at `md` has an empty slot (no
/// `rdN`, and not one whose member is being let go) and a spare (a
/// `dev-*` with slot `none`, state `spare`), writes the spare's
/// superblock — the array's, from a member in service, with a new device
/// UUID, the lowest free `dev_number`, role = the slot, `recovery_offset` 0
/// — with `O_DIRECT`, stores the slot (md then recovers the member), and
/// returns the prepared [`MemberEntry`] for the monitor. Manager side: may
/// allocate.
fn activate_spare(
    md: &Path,
    dirs: &[Option<String>],
    retiring: u64,
) -> Result<Option<(usize, MemberEntry)>, MonError> {
    let mut spare = None;
    let mut source = None;
    let rd = std::fs::read_dir(md).map_err(|e| MonError(format!("{}: {e}", md.display())))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("dev-") {
            continue;
        }
        let d = e.path();
        let slot = std::fs::read_to_string(d.join("slot")).unwrap_or_default();
        let state = std::fs::read_to_string(d.join("state")).unwrap_or_default();
        let Ok(block) = std::fs::read_link(d.join("block")) else { continue };
        if slot.trim() == "none" && state.trim() == "spare" {
            spare.get_or_insert((name, block));
        } else if state.trim() == "in_sync" {
            source.get_or_insert(block);
        }
    }
    let (Some((name, path)), Some(source)) = (spare, source) else { return Ok(None) };
    let is_empty =
        |s: usize| s < dirs.len() && retiring & (1 << s) == 0 && !md.join(format!("rd{s}")).exists();
    let empty = (0..dirs.len()).find(|&s| is_empty(s));
    let Some(mut slot) = empty else { return Ok(None) };
    // The array's superblock, from a member in service.
    let reader = Member::open_with(
        &source,
        &MemberOptions { access: Access::ReadOnly, direct: Direct::Never, faults: None },
    )
    .map_err(|e| MonError(format!("{}: {e}", source.display())))?;
    let f = superblock::load(&reader, None, true)
        .map_err(|e| MonError(format!("{}: superblock: {e}", source.display())))?;
    let mut sb = f.sb.clone();
    // A member coming back (re-add): its own superblock names this array
    // and a slot that is empty; it goes back there, keeping its device
    // number and UUID (md recovers it from the bitmap).
    let own = Member::open_with(
        &path,
        &MemberOptions { access: Access::ReadOnly, direct: Direct::Never, faults: None },
    )
    .ok()
    .and_then(|m| superblock::load(&m, None, true).ok());
    let readd = own.filter(|o| {
        o.sb.set_uuid == sb.set_uuid && is_empty(usize::from(o.sb.role())) && o.sb.dev_number < sb.max_dev
    });
    if let Some(o) = &readd {
        slot = usize::from(o.sb.role());
    }
    let size_kib: u64 = std::fs::read_to_string(md.join(&name).join("size"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| MonError(format!("{name}: size unreadable")))?;
    // md picks the lowest descriptor number no member holds.
    let held: Vec<u16> = sb.dev_roles.clone();
    let free = (0..sb.max_dev).find(|&i| {
        held.get(i as usize).is_some_and(|&r| r == superblock::MD_DISK_ROLE_SPARE || r == ROLE_FAULTY)
    });
    let (dev_number, device_uuid) = match (&readd, free) {
        (Some(o), _) => (o.sb.dev_number, o.sb.device_uuid),
        (None, Some(d)) => (d, new_uuid()),
        (None, None) => {
            return err(format!("{name}: no free device number among {} in the superblock", sb.max_dev));
        }
    };
    sb.dev_number = dev_number;
    sb.device_uuid = device_uuid;
    sb.data_size = size_kib * 2;
    sb.recovery_offset = 0;
    sb.feature_map |= superblock::feature::RECOVERY_OFFSET;
    sb.cnt_corrected_read = 0;
    let Ok(role) = u16::try_from(slot) else { return err(format!("slot {slot} out of range")) };
    if let Some(r) = sb.dev_roles.get_mut(dev_number as usize) {
        *r = role;
    }
    sb.update_checksum();
    let mut raw = vec![0u8; MAX_SB_SIZE];
    sb.encode(&mut raw);
    let mut entry = MemberEntry::with_block(md, &name, slot, &path, &sb, &raw)?;
    entry
        .write_sb()
        .map_err(|e| MonError(format!("{}: writing its superblock: errno {e}", path.display())))?;
    // md gives it the slot and recovers it there.
    std::fs::OpenOptions::new()
        .write(true)
        .open(md.join(&name).join("slot"))
        .and_then(|mut f| f.write_all(slot.to_string().as_bytes()))
        .map_err(|e| MonError(format!("{name}: storing slot {slot}: {e}")))?;
    log(format_args!(
        "{} ({}) takes slot {slot}; md recovers it",
        path.display(),
        if readd.is_some() { "re-added" } else { "spare" }
    ));
    Ok(Some((slot, entry)))
}

/// A random device UUID (from the kernel's random source).
fn new_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    // SAFETY: getrandom writes at most 16 bytes into `u`.
    let n = unsafe { libc::getrandom(u.as_mut_ptr().cast(), u.len(), 0) };
    if n != 16 {
        // Fall back on time and PID: unique enough for a device UUID.
        let t =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        u.copy_from_slice(&(t ^ u128::from(std::process::id())).to_le_bytes());
    }
    u
}

/// The `status` reply.
pub fn status_line(stats: &Stats, hooks: Hooks) -> String {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "state={} dirty={} events={} acks={} cleans={} sb_writes={} errors={} failures={} removed={} \
         spares={} monitor_allocs={}",
        decode_state(stats.state.load(Ordering::Relaxed)),
        stats.dirty.load(Ordering::Relaxed),
        l(&stats.events),
        l(&stats.acks),
        l(&stats.cleans),
        l(&stats.sb_writes),
        l(&stats.errors),
        l(&stats.failures),
        l(&stats.removed),
        l(&stats.spares),
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
    let shared = Arc::new(Shared::new()?);
    let mut monitor = Monitor::prepare(&cfg.dir, shared.clone())?;
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
    let mgr_shared = shared.clone();
    let dirs = monitor.member_dirs();
    let md = cfg.dir.join("md");
    let spawned = std::thread::Builder::new()
        .name("umd-mon-manager".into())
        .spawn(move || manager(listener, mgr_shared, hooks, md, dirs))
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
