//! md's sync thread (`md_do_sync`): resync, check and repair of an
//! array's redundancy, driven by `md/sync_action`.
//!
//! ## Responsibility boundary
//! [`SyncCtl`] is the array's sync state as md keeps it: the action asked
//! for and the one running, `frozen`, progress (`sync_completed`), the
//! mismatch count (`mismatch_cnt`), the speed limits (`sync_speed_min`,
//! `sync_speed_max`) and the resync checkpoint (md's `recovery_cp`, shown
//! as `resync_start`, recorded in the superblocks by the metadata manager).
//! [`spawn`] runs the sync thread of one writable array: it waits for a
//! request (a `sync_action` store, or by itself when the array is not in
//! sync: md's `md_check_recovery`) and walks the array:
//!
//! * raid4/5/6, a stripe row at a time under the row's stripe lock: every
//!   data chunk and P (and Q) read, P/Q computed from the data; `check`
//!   counts the 4 KiB pages where they differ (in sectors, as md's
//!   `mismatch_cnt`); `repair` counts and rewrites them; `resync` rewrites
//!   them from the checkpoint on. The stripe cache forgets the row.
//! * raid1/10, 64 KiB of the array at a time under its write-window lock
//!   (writes of that window wait): every copy of every piece read, the
//!   first copy in service is the reference; `check` counts the differing
//!   pages, `repair` and `resync` write the reference over them.
//!
//! A resync advances the checkpoint every 1/16 of the array (and at least
//! every 2 s), notifying `sync_completed` (the manager records it when the
//! superblocks are clean); `idle`/`frozen`, or the array stopping,
//! interrupts at a row boundary with the checkpoint kept, so the next run
//! resumes. A member read or write that fails during a sync fails the
//! member (md's `md_error`) and ends the run. Sync runs only on an array
//! with every member in service (rebuilding missing members is recovery,
//! which comes with spares).
//!
//! ## Synchronization model
//! One leaf mutex + condvar for requests (`Ctl`); the shown values are
//! atomics read lock-free by the attributes. The sync thread takes, per
//! step, one stripe lock (parity) or one write-window lock (mirrors) — the
//! same locks writers take, so a step and a write of the same rows never
//! interleave — and never the request mutex while holding either.
//!
//! ## Allocation
//! The thread allocates its row buffers once per run; a step makes only
//! small vectors (the row's column list, a mirror window's pieces).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::array::Array;
use crate::personality::{MemberRead, StripeMap};
use crate::superblock::MAX_SECTOR;
use crate::sync_io::{self, Batch, SyncIo};

/// md's `speed_limit_min` default (KiB/s).
pub const SPEED_MIN_DEFAULT: u32 = 1000;
/// md's `speed_limit_max` default (KiB/s).
pub const SPEED_MAX_DEFAULT: u32 = 200_000;
/// Bytes of the array a mirror step covers (and the write-window size).
pub const MIRROR_WINDOW: u64 = 64 << 10;
/// Granule of mismatch counting: a page (8 sectors), as md's raid5 does.
const PAGE: usize = 4096;

/// md's `sync_action` words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SyncAction {
    /// Nothing running.
    Idle = 0,
    /// Make redundancy consistent from the checkpoint on.
    Resync = 1,
    /// Rebuild members that are not in sync.
    Recover = 2,
    /// Compare, count mismatches.
    Check = 3,
    /// Compare, count, correct.
    Repair = 4,
    /// Nothing may start.
    Frozen = 5,
}

impl SyncAction {
    /// md's word.
    pub fn word(self) -> &'static str {
        match self {
            SyncAction::Idle => "idle",
            SyncAction::Resync => "resync",
            SyncAction::Recover => "recover",
            SyncAction::Check => "check",
            SyncAction::Repair => "repair",
            SyncAction::Frozen => "frozen",
        }
    }

    fn from_u8(v: u8) -> SyncAction {
        match v {
            1 => SyncAction::Resync,
            2 => SyncAction::Recover,
            3 => SyncAction::Check,
            4 => SyncAction::Repair,
            5 => SyncAction::Frozen,
            _ => SyncAction::Idle,
        }
    }
}

/// What changed, for the attribute tree's notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// `sync_action`.
    Action,
    /// `sync_completed` (and the checkpoint, `resync_start`).
    Completed,
}

#[derive(Debug, Default)]
struct Ctl {
    request: Option<SyncAction>,
    frozen: bool,
    interrupt: bool,
    shutdown: bool,
}

type Notify = Box<dyn Fn(Changed) + Send + Sync>;

/// The sync state of one array (see the module doc).
pub struct SyncCtl {
    ctl: Mutex<Ctl>,
    cv: Condvar,
    running: AtomicU8,
    done: AtomicU64,
    total: AtomicU64,
    mismatches: AtomicU64,
    /// Sync units actually processed by the last run (a resync with a
    /// bitmap skips clean chunks).
    synced: AtomicU64,
    /// Batches read again because their rows were written while they were
    /// read ahead (see [`crate::sync_io`]), since the thread started.
    rereads: AtomicU64,
    resync_cp: AtomicU64,
    speed_min: AtomicU32,
    speed_max: AtomicU32,
    speed: AtomicU64,
    /// Milliseconds since `epoch` of the last user I/O (0: none yet).
    last_io: AtomicU64,
    epoch: Instant,
    notify: OnceLock<Notify>,
}

impl std::fmt::Debug for SyncCtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncCtl")
            .field("action", &self.action())
            .field("resync_cp", &self.resync_cp())
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Ctl>) -> MutexGuard<'_, Ctl> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SyncCtl {
    /// The state of an array whose superblock says `resync_offset`.
    pub fn new(resync_offset: u64) -> SyncCtl {
        SyncCtl {
            ctl: Mutex::new(Ctl::default()),
            cv: Condvar::new(),
            running: AtomicU8::new(0),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            rereads: AtomicU64::new(0),
            resync_cp: AtomicU64::new(resync_offset),
            speed_min: AtomicU32::new(0),
            speed_max: AtomicU32::new(0),
            speed: AtomicU64::new(0),
            last_io: AtomicU64::new(0),
            epoch: Instant::now(),
            notify: OnceLock::new(),
        }
    }

    /// Connects the attribute tree's notifications (first call counts).
    pub fn set_notify(&self, f: impl Fn(Changed) + Send + Sync + 'static) {
        let _ = self.notify.set(Box::new(f));
    }

    fn fire(&self, c: Changed) {
        if let Some(n) = self.notify.get() {
            n(c);
        }
    }

    /// What `sync_action` shows: the action running, else the one asked
    /// for and not yet started (md shows a request from the store on, so
    /// a reader never sees `idle` before the run it asked for), else
    /// `frozen` or `idle`.
    pub fn action(&self) -> SyncAction {
        let r = SyncAction::from_u8(self.running.load(Ordering::Acquire));
        if r != SyncAction::Idle {
            return r;
        }
        let g = lock(&self.ctl);
        match g.request {
            Some(a) => a,
            None if g.frozen => SyncAction::Frozen,
            None => SyncAction::Idle,
        }
    }

    /// Wakes the sync thread to look for work now (a member was given a
    /// slot: md's `md_wakeup_thread` from `slot_store`).
    pub fn kick(&self) {
        let _g = lock(&self.ctl);
        self.cv.notify_all();
    }

    /// `sync_completed`: `(done, total)` in sectors while running.
    pub fn completed(&self) -> Option<(u64, u64)> {
        (self.running.load(Ordering::Acquire) != 0)
            .then(|| (self.done.load(Ordering::Acquire), self.total.load(Ordering::Acquire)))
    }

    /// Sync units (sectors) the last run processed; with a bitmap, a
    /// resync skips chunks whose bit is clear.
    pub fn synced_units(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Batches the sync thread read again since it started: their rows
    /// were written while their reads were in flight (tests, statistics).
    pub fn rereads(&self) -> u64 {
        self.rereads.load(Ordering::Acquire)
    }

    /// `mismatch_cnt`: sectors found differing by the last check/repair.
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Acquire)
    }

    /// The resync checkpoint (md's `recovery_cp`, `resync_start`):
    /// [`MAX_SECTOR`] when in sync.
    pub fn resync_cp(&self) -> u64 {
        self.resync_cp.load(Ordering::Acquire)
    }

    /// `sync_speed`: KiB/s of the run (`None` when idle).
    pub fn speed(&self) -> Option<u64> {
        (self.running.load(Ordering::Acquire) != 0).then(|| self.speed.load(Ordering::Acquire))
    }

    /// `sync_speed_min` / `_max`: `(KiB/s, whether it is the system
    /// default)`.
    pub fn speed_limits(&self) -> ((u32, bool), (u32, bool)) {
        let f = |a: &AtomicU32, d: u32| match a.load(Ordering::Acquire) {
            0 => (d, true),
            v => (v, false),
        };
        (f(&self.speed_min, SPEED_MIN_DEFAULT), f(&self.speed_max, SPEED_MAX_DEFAULT))
    }

    /// Sets `sync_speed_min` (`max == false`) or `_max`; `None`: back to
    /// the system default.
    pub fn set_speed_limit(&self, max: bool, v: Option<u32>) {
        let a = if max { &self.speed_max } else { &self.speed_min };
        a.store(v.unwrap_or(0), Ordering::Release);
        self.cv.notify_all();
    }

    /// Called by user reads and writes (md's idle detection: a sync above
    /// its minimum speed yields to user I/O). Lock-free.
    pub fn note_io(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_io.store(ms.max(1), Ordering::Relaxed);
    }

    fn user_io_recent(&self) -> bool {
        let last = self.last_io.load(Ordering::Relaxed);
        last != 0 && (self.epoch.elapsed().as_millis() as u64).saturating_sub(last) < 500
    }

    /// md's `action_store`. `idle` stops a running sync (its checkpoint
    /// kept) and unfreezes; `frozen` stops it and lets nothing start;
    /// `resync`, `recover`, `check`, `repair` ask for a run (`EBUSY` while
    /// one runs). `reshape` is not supported (`EINVAL` for unknown words).
    pub fn store_action(&self, word: &[u8]) -> Result<(), i32> {
        let w = word.strip_suffix(b"\n").unwrap_or(word);
        let mut g = lock(&self.ctl);
        let running = self.running.load(Ordering::Acquire) != 0;
        match w {
            b"idle" => {
                g.frozen = false;
                g.request = None;
                g.interrupt = running;
            }
            b"frozen" => {
                g.frozen = true;
                g.request = None;
                g.interrupt = running;
            }
            b"resync" | b"recover" | b"check" | b"repair" => {
                if running || g.request.is_some() {
                    return Err(libc::EBUSY);
                }
                g.frozen = false;
                g.request = Some(match w {
                    b"resync" => SyncAction::Resync,
                    b"recover" => SyncAction::Recover,
                    b"check" => SyncAction::Check,
                    _ => SyncAction::Repair,
                });
            }
            b"reshape" => return Err(libc::EBUSY),
            _ => return Err(libc::EINVAL),
        }
        drop(g);
        self.cv.notify_all();
        self.fire(Changed::Action);
        Ok(())
    }

    /// Ends the sync thread (the array stops): a running sync is
    /// interrupted at a row boundary, its checkpoint kept.
    pub fn shutdown(&self) {
        let mut g = lock(&self.ctl);
        g.shutdown = true;
        g.interrupt = true;
        drop(g);
        self.cv.notify_all();
    }

    fn interrupted(&self) -> bool {
        let g = lock(&self.ctl);
        g.interrupt || g.shutdown
    }

    fn set_cp(&self, cp: u64) {
        self.resync_cp.store(cp, Ordering::Release);
    }
}

/// Starts the sync thread of a writable array (see the module doc); it
/// ends after [`SyncCtl::shutdown`]. The caller joins it.
pub fn spawn(array: Arc<Array>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("umd-md-sync".into()).spawn(move || sync_thread(&array))
}

/// What the thread should do next: a request, or a resync the array needs
/// (md starts one by itself); `None`: shut down. The run is started (shown
/// as running, its progress at its first unit) in the same critical
/// section that takes the request, so an `idle` or `frozen` stored after
/// the request was taken always finds it running and interrupts it, and
/// `sync_action` never shows `idle` in between.
fn next_action(array: &Array) -> Option<SyncAction> {
    let ctl = array.sync_ctl();
    let mut g = lock(&ctl.ctl);
    loop {
        if g.shutdown {
            return None;
        }
        g.interrupt = false;
        // A resync with nothing to do, or a recovery with no member to
        // rebuild, ends at once (md: nothing needed). md_check_recovery:
        // members being recovered first, then a resync the array needs.
        let next = g.request.take().or_else(|| {
            if g.frozen {
                None
            } else if array.slots.recovering().next().is_some() {
                Some(SyncAction::Recover)
            } else {
                (ctl.resync_cp() != MAX_SECTOR && array.missing() == 0).then_some(SyncAction::Resync)
            }
        });
        if let Some(a) = next {
            // md clears `mismatch_cnt` when a resync, check or repair
            // starts (a resync with nothing to do does not start).
            let syncs = match a {
                SyncAction::Check | SyncAction::Repair => true,
                SyncAction::Resync => ctl.resync_cp() != MAX_SECTOR && array.missing() == 0,
                _ => false,
            };
            if syncs {
                ctl.mismatches.store(0, Ordering::Release);
            }
            let (first, total) = span(array, a);
            ctl.total.store(total, Ordering::Release);
            ctl.done.store(first, Ordering::Release);
            ctl.synced.store(0, Ordering::Release);
            ctl.speed.store(0, Ordering::Release);
            ctl.running.store(a as u8, Ordering::Release);
            return Some(a);
        }
        drop(g);
        bitmap_pass(array, false);
        g = lock(&ctl.ctl);
        if g.shutdown || g.request.is_some() {
            continue;
        }
        g = ctl
            .cv
            .wait_timeout(g, Duration::from_secs(1))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// The bitmap's clearing pass (md's bitmap daemon), when its time comes
/// (`force`: now).
fn bitmap_pass(array: &Array, force: bool) {
    if let Some(bm) = array.bitmap() {
        if let Err(e) = bm.daemon_pass(&array.slots, array.health(), array.missing() > 0, force) {
            eprintln!("umd: bitmap update failed: {e}");
        }
    }
}

/// A run's first unit and its end, in sectors: member sectors by stripe
/// row for raid4/5/6, array sectors by [`MIRROR_WINDOW`] for mirrors. A
/// resync starts at its checkpoint, a recovery at the lowest
/// `recovery_offset` of the members it rebuilds (rounded down to a step),
/// a check or repair at 0.
fn span(array: &Array, action: SyncAction) -> (u64, u64) {
    let (unit, total) = (sync_unit(array), array.sync_size());
    let from = match action {
        SyncAction::Resync => array.sync_ctl().resync_cp(),
        SyncAction::Recover => array
            .slots
            .recovering()
            .filter_map(|s| array.slots.get(s))
            .map(|m| m.recovery_offset.load(Ordering::Acquire))
            .min()
            .unwrap_or(0),
        _ => 0,
    };
    ((from / unit * unit).min(total), total)
}

/// Sync units (sectors) one step covers: a stripe row's chunk for parity
/// levels, a write window for mirrors.
fn sync_unit(array: &Array) -> u64 {
    array.personality.parity_shape().map_or(MIRROR_WINDOW / 512, |shape| shape.chunk_bytes / 512)
}

fn sync_thread(array: &Array) {
    while let Some(action) = next_action(array) {
        let ctl = array.sync_ctl();
        ctl.fire(Changed::Action);
        ctl.fire(Changed::Completed);
        let r = run(array, action);
        ctl.running.store(0, Ordering::Release);
        ctl.fire(Changed::Action);
        ctl.fire(Changed::Completed);
        if let Err(e) = r {
            eprintln!("umd: {} of the array stopped: {e}", action.word());
            // What stopped it may stop the next try too (a member failed
            // is seen at once; anything else is retried after a pause,
            // not in a loop).
            let g = lock(&ctl.ctl);
            if !g.shutdown && g.request.is_none() {
                drop(ctl.cv.wait_timeout(g, Duration::from_secs(1)));
            }
        }
    }
}

/// Progress, checkpoints and speed limits of one run.
///
/// Checkpoints are durable: the member bytes a run rewrote before a
/// checkpoint are flushed (`fdatasync`) before the checkpoint is shown
/// (`resync_start`, `dev-*/recovery_start`) for the metadata manager to
/// record. md's rewrites go to the device and complete there before its
/// superblock write (a flush with FUA) records progress; umd's member
/// writes complete in the kernel's page cache, so without the flush a
/// power cut could leave a superblock saying "rebuilt up to here" over
/// bytes that never reached the disk.
struct Run<'a> {
    array: &'a Array,
    ctl: &'a SyncCtl,
    action: SyncAction,
    /// Slots flushed before a checkpoint is shown.
    durable: Vec<usize>,
    /// Recovery: the members being rebuilt (their `recovery_offset` is
    /// the checkpoint).
    targets: Vec<usize>,
    start: Instant,
    /// Units (sectors) done when the run started (a resumed resync).
    first: u64,
    total: u64,
    last_cp: u64,
    last_cp_at: Instant,
    mark: (Instant, u64),
}

impl<'a> Run<'a> {
    fn new(array: &'a Array, action: SyncAction, first: u64, total: u64, targets: &[usize]) -> Run<'a> {
        let now = Instant::now();
        let durable = match action {
            SyncAction::Recover => targets.to_vec(),
            SyncAction::Resync | SyncAction::Repair => (0..array.slots.len()).collect(),
            _ => Vec::new(),
        };
        Run {
            array,
            ctl: array.sync_ctl(),
            action,
            durable,
            targets: targets.to_vec(),
            start: now,
            first,
            total,
            last_cp: first,
            last_cp_at: now,
            mark: (now, first),
        }
    }

    /// Flushes every member this run rewrites (that still takes writes).
    /// A member whose flush fails is failed.
    fn make_durable(&self) -> io::Result<()> {
        let slots = &self.array.slots;
        for &s in &self.durable {
            if let (true, Some(m)) = (slots.takes_writes(s), slots.get(s)) {
                m.dev.flush().map_err(|e| member_error(self.array, s, e, true))?;
            }
        }
        Ok(())
    }

    /// Makes everything before unit `done` durable, then shows `done` as
    /// the run's checkpoint (resync: `resync_start`; recovery: the
    /// rebuilt members' `recovery_offset`).
    fn checkpoint(&self, done: u64) -> io::Result<()> {
        match self.action {
            SyncAction::Resync => {
                self.make_durable()?;
                self.ctl.set_cp(done);
            }
            SyncAction::Recover => {
                self.make_durable()?;
                for m in self.targets.iter().filter_map(|&t| self.array.slots.get(t)) {
                    m.recovery_offset.store(done, Ordering::Release);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// After a step that ended at unit `done`: progress, checkpoint,
    /// throttle. Returns false if the run must stop.
    fn stepped(&mut self, done: u64) -> io::Result<bool> {
        self.ctl.done.store(done, Ordering::Release);
        let now = Instant::now();
        // Speed over the last second or so.
        let (t0, d0) = self.mark;
        let dt = now.duration_since(t0).as_secs_f64();
        if dt >= 1.0 {
            self.ctl.speed.store(((done - d0) as f64 / 2.0 / dt) as u64, Ordering::Release);
            self.mark = (now, done);
        } else if self.ctl.speed.load(Ordering::Relaxed) == 0 && dt > 0.05 {
            self.ctl.speed.store(((done - d0) as f64 / 2.0 / dt) as u64, Ordering::Release);
        }
        let step = (self.total >> 4).max(1);
        if done >= self.last_cp + step || now.duration_since(self.last_cp_at) >= Duration::from_secs(2) {
            self.checkpoint(done)?;
            self.last_cp = done;
            self.last_cp_at = now;
            self.ctl.fire(Changed::Completed);
        }
        Ok(self.throttle(done))
    }

    /// md's speed limits: never above `sync_speed_max`; above
    /// `sync_speed_min` only while no user I/O is recent.
    fn throttle(&self, done: u64) -> bool {
        loop {
            if self.ctl.interrupted() {
                return false;
            }
            let ((min, _), (max, _)) = self.ctl.speed_limits();
            let kib = (done - self.first) / 2;
            let secs = self.start.elapsed().as_secs_f64().max(1e-6);
            let rate = kib as f64 / secs;
            if rate > f64::from(max) || (rate > f64::from(min) && self.ctl.user_io_recent()) {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            return true;
        }
    }
}

fn run(array: &Array, action: SyncAction) -> io::Result<()> {
    let ctl = array.sync_ctl();
    let recovering: Vec<usize> = array.slots.recovering().collect();
    if action == SyncAction::Recover {
        // No member to rebuild: nothing to do (md: recovery not needed).
        if recovering.is_empty() {
            return Ok(());
        }
        return recover(array, &recovering);
    }
    if array.missing() > 0 {
        // Resync, check and repair need every member in sync; rebuilding
        // one is recovery.
        return Ok(());
    }
    if action == SyncAction::Resync && ctl.resync_cp() == MAX_SECTOR {
        return Ok(());
    }
    let parity = array.personality.parity_shape();
    // Where `next_action` showed it starting (the checkpoint moves only
    // here).
    let (first, total) = span(array, action);
    let mut r = Run::new(array, action, first, total, &[]);
    let finished = match &parity {
        Some(shape) => sync_parity(array, shape, &mut r, first / (shape.chunk_bytes / 512))?,
        None => sync_mirrors(array, &mut r, first)?,
    };
    if finished {
        ctl.done.store(total, Ordering::Release);
        if matches!(action, SyncAction::Resync | SyncAction::Repair) {
            r.make_durable()?;
            ctl.set_cp(MAX_SECTOR);
            if let Some(bm) = array.bitmap() {
                bm.synced(0, total);
            }
        }
    } else if action == SyncAction::Resync {
        r.checkpoint(ctl.done.load(Ordering::Acquire))?;
    }
    ctl.fire(Changed::Completed);
    Ok(())
}

/// Counts the pages of `a` and `b` (same length) that differ.
fn differing_pages(a: &[u8], b: &[u8]) -> u64 {
    a.chunks(PAGE).zip(b.chunks(PAGE)).filter(|(x, y)| x != y).count() as u64
}

/// A member I/O error during a sync: the member is failed (md_error) and
/// the run ends.
fn member_error(array: &Array, slot: usize, e: io::Error, write: bool) -> io::Error {
    array.health().fail(slot, write);
    io::Error::new(e.kind(), format!("member in slot {slot}: {e}"))
}

/// Walks the stripe rows from `from`; returns whether it reached the end.
fn sync_parity(
    array: &Array,
    shape: &crate::personality::ParityShape,
    r: &mut Run<'_>,
    from: u64,
) -> io::Result<bool> {
    let Some(stripes) = array.stripe_cache() else { return Ok(true) };
    let chunk = shape.chunk_bytes as usize;
    let mut new = vec![0u8; 2 * chunk];
    let mut map = StripeMap::default();
    let slots = &array.slots;
    let unit = shape.chunk_bytes / 512;
    let bitmap = array.bitmap().filter(|_| r.action == SyncAction::Resync);
    let mut batch = batch_rows(chunk);
    if let Some(bm) = bitmap {
        // Batches inside one bitmap chunk: clean chunks are skipped whole.
        batch = batch.min((bm.chunk_units() / unit).max(1));
    }
    // Every member read in batches of rows, read ahead (resync, check and
    // repair run only with every member in sync).
    let all: Vec<usize> = (0..slots.len()).collect();
    let mut io = SyncIo::new(slots, &all, &[], batch as usize * chunk, sync_io::MAX_DEPTH)?;
    let mut plan = Plan::new(from, shape.stripes, batch, shape.chunk_bytes);
    while let Some((r0, r1, read)) = plan.next(&mut io, |r0, r1| {
        // The bitmap says no write was in flight here: nothing to resync.
        let clean = bitmap.is_some_and(|bm| !bm.is_dirty(r0 * unit, r1 * unit));
        (!clean).then(|| stripes.rows_gen(r0..r1))
    })? {
        if let Some(mut b) = read {
            r.ctl.synced.fetch_add((r1 - r0) * unit, Ordering::AcqRel);
            let outcome: io::Result<()> = stripes.with_rows(r0..r1, || {
                make_current(array, stripes, &mut b, r0..r1)?;
                for row in r0..r1 {
                    if !array.personality.stripe_map(row, &mut map) {
                        break;
                    }
                    let i = (row - r0) as usize * chunk;
                    let block = |slot: usize| b.part(slot).map(|p| &p[i..i + chunk]);
                    let cols: Option<Vec<&[u8]>> = map.data.iter().map(|&s| block(s)).collect();
                    let (Some(cols), Some(op)) = (cols, block(map.p)) else {
                        return Err(io::Error::other("sync: a row's member was not read"));
                    };
                    let oq = map.q.and_then(block).unwrap_or(&[]);
                    let (np, nq) = new.split_at_mut(chunk);
                    crate::stripe::gen_parity(shape, &map, &cols, np, nq);
                    let bad_p = differing_pages(op, np);
                    let bad_q = if map.q.is_some() { differing_pages(oq, nq) } else { 0 };
                    if matches!(r.action, SyncAction::Check | SyncAction::Repair) {
                        r.ctl.mismatches.fetch_add((bad_p + bad_q) * (PAGE as u64 / 512), Ordering::AcqRel);
                    }
                    if r.action != SyncAction::Check && bad_p + bad_q > 0 {
                        let base = row * shape.chunk_bytes;
                        if bad_p > 0 {
                            slots
                                .write_at(map.p, base, np)
                                .map_err(|e| member_error(array, map.p, e, true))?;
                        }
                        if let (Some(q), true) = (map.q, bad_q > 0) {
                            slots.write_at(q, base, nq).map_err(|e| member_error(array, q, e, true))?;
                        }
                        stripes.forget_columns(row, 0, shape.chunk_bytes);
                    }
                }
                Ok(())
            });
            outcome?;
        }
        if !r.stepped(r1 * unit)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Walks mirror windows from sector `from`; returns whether it reached
/// the end.
fn sync_mirrors(array: &Array, r: &mut Run<'_>, from: u64) -> io::Result<bool> {
    let size = array.size();
    let win = MIRROR_WINDOW as usize;
    let mut reference = vec![0u8; win];
    let mut copy = vec![0u8; win];
    let slots = &array.slots;
    let mut off = from * 512;
    while off < size {
        let len = (size - off).min(MIRROR_WINDOW) as usize;
        let (u0, u1) = (off / 512, (off + len as u64).div_ceil(512));
        if r.action == SyncAction::Resync && array.bitmap().is_some_and(|bm| !bm.is_dirty(u0, u1)) {
            off += len as u64;
            if !r.stepped(off.div_ceil(512))? {
                return Ok(false);
            }
            continue;
        }
        r.ctl.synced.fetch_add(u1 - u0, Ordering::AcqRel);
        let pieces = array.personality.map_write(off, len)?;
        let outcome: io::Result<()> = array.with_mirror_window(off, || {
            let mut starts: Vec<usize> = pieces.iter().map(|p| p.buf_start).collect();
            starts.sort_unstable();
            starts.dedup();
            for start in starts {
                let group: Vec<_> =
                    pieces.iter().filter(|p| p.buf_start == start && slots.is_present(p.slot)).collect();
                let Some(first) = group.first() else { continue };
                let n = first.len;
                MemberRead::read_at(&**slots, first.slot, first.member_offset, &mut reference[..n])
                    .map_err(|e| member_error(array, first.slot, e, false))?;
                for p in &group[1..] {
                    MemberRead::read_at(&**slots, p.slot, p.member_offset, &mut copy[..n])
                        .map_err(|e| member_error(array, p.slot, e, false))?;
                    let bad = differing_pages(&reference[..n], &copy[..n]);
                    if matches!(r.action, SyncAction::Check | SyncAction::Repair) {
                        r.ctl.mismatches.fetch_add(bad * (PAGE as u64 / 512), Ordering::AcqRel);
                    }
                    if r.action != SyncAction::Check && bad > 0 {
                        slots
                            .write_at(p.slot, p.member_offset, &reference[..n])
                            .map_err(|e| member_error(array, p.slot, e, true))?;
                    }
                }
            }
            Ok(())
        });
        outcome?;
        off += len as u64;
        if !r.stepped(off.div_ceil(512))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Rebuilds the members in `slots` (being recovered) from the others,
/// from the lowest `recovery_offset` on; at the end they are in sync.
fn recover(array: &Array, targets: &[usize]) -> io::Result<()> {
    let ctl = array.sync_ctl();
    let parity = array.personality.parity_shape();
    let unit = sync_unit(array);
    let (first, total) = span(array, SyncAction::Recover);
    ctl.total.store(total, Ordering::Release);
    ctl.done.store(first, Ordering::Release);
    let mut r = Run::new(array, SyncAction::Recover, first, total, targets);
    let finished = match &parity {
        Some(shape) => recover_parity(array, shape, targets, &mut r, first / unit)?,
        None => recover_mirrors(array, targets, &mut r, first)?,
    };
    if finished {
        ctl.done.store(total, Ordering::Release);
        // In sync only once every rebuilt byte is on the member.
        r.make_durable()?;
        for &s in targets {
            array.health().recovered(s);
        }
    } else {
        r.checkpoint(ctl.done.load(Ordering::Acquire))?;
    }
    ctl.fire(Changed::Completed);
    Ok(())
}

fn recover_parity(
    array: &Array,
    shape: &crate::personality::ParityShape,
    targets: &[usize],
    r: &mut Run<'_>,
    from: u64,
) -> io::Result<bool> {
    let Some(stripes) = array.stripe_cache() else { return Ok(true) };
    let chunk = shape.chunk_bytes as usize;
    let dd = shape.data_disks;
    let slots = &array.slots;
    let n = slots.len();
    let unit = shape.chunk_bytes / 512;
    let row_bytes = shape.stripe_bytes();
    let mut batch = batch_rows(chunk);
    if let Some(bm) = bitmap_only(array, targets) {
        // Batches no larger than a bitmap chunk: clean chunks are skipped
        // whole.
        batch = batch.min((bm.chunk_units() / unit).max(1));
    }
    let sources: Vec<usize> = (0..n).filter(|&s| slots.is_present(s)).collect();
    // Every member in service reads its part of each batch as one
    // sequential read, all members at once, batches read ahead; the
    // rebuilt parts are written the same way.
    let mut io = SyncIo::new(slots, &sources, targets, batch as usize * chunk, sync_io::MAX_DEPTH)?;
    let mut data = vec![0u8; dd * chunk];
    let mut parity = vec![0u8; 2 * chunk];
    let mut map = StripeMap::default();
    let xor_only = !shape.raid6 && targets.len() == 1 && sources.len() + 1 == n;
    let mut plan = Plan::new(from, shape.stripes, batch, shape.chunk_bytes);
    while let Some((r0, r1, dirty)) = plan.next(&mut io, |r0, r1| {
        let clean = bitmap_only(array, targets).is_some_and(|bm| !bm.is_dirty(r0 * unit, r1 * unit));
        (!clean).then(|| stripes.rows_gen(r0..r1))
    })? {
        let rows = (r1 - r0) as usize;
        if let Some(mut b) = dirty {
            r.ctl.synced.fetch_add((r1 - r0) * unit, Ordering::AcqRel);
            let outcome: io::Result<()> = stripes.with_rows(r0..r1, || {
                make_current(array, stripes, &mut b, r0..r1)?;
                let len = rows * chunk;
                if xor_only {
                    // raid4/5, one member missing: every row's blocks XOR
                    // to zero at the same member offset, so the missing
                    // member's part of the whole batch is the XOR of the
                    // others' parts.
                    let srcs: Vec<&[u8]> = sources.iter().filter_map(|&s| b.part(s)).collect();
                    let out = io.out(targets[0]).ok_or_else(|| io::Error::other("no output buffer"))?;
                    crate::personality::gf::xor_blocks(&mut out[..len], &srcs);
                } else {
                    let parts: Vec<Option<&[u8]>> = (0..n).map(|s| b.part(s)).collect();
                    let view = BatchView { parts: &parts, first: b.at };
                    for row in r0..r1 {
                        if !array.personality.stripe_map(row, &mut map) {
                            break;
                        }
                        let i = (row - r0) as usize;
                        // The row's data from the parts read, the members
                        // being recovered rebuilt (they are not read).
                        array.personality.read(&view, row * row_bytes, &mut data)?;
                        let (p, q) = parity.split_at_mut(chunk);
                        let cols: Vec<&[u8]> = data.chunks_exact(chunk).collect();
                        crate::stripe::gen_parity(shape, &map, &cols, p, q);
                        for &t in targets {
                            let block: &[u8] = if t == map.p {
                                p
                            } else if map.q == Some(t) {
                                q
                            } else if let Some(k) = map.data.iter().position(|&s| s == t) {
                                cols[k]
                            } else {
                                continue;
                            };
                            let out = io.out(t).ok_or_else(|| io::Error::other("no output buffer"))?;
                            out[i * chunk..(i + 1) * chunk].copy_from_slice(block);
                        }
                    }
                }
                let live: Vec<usize> = targets.iter().copied().filter(|&t| slots.takes_writes(t)).collect();
                for (&t, res) in live.iter().zip(io.write_out(&live, b.at, len)?) {
                    res.map_err(|errno| member_error(array, t, io::Error::from_raw_os_error(errno), true))?;
                }
                for row in r0..r1 {
                    stripes.forget_columns(row, 0, shape.chunk_bytes);
                }
                Ok(())
            });
            outcome?;
        }
        if !r.stepped(r1 * unit)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Makes batch `b` of rows `rows` what the members hold now: read again
/// if a write of those rows completed (or was under way) since its reads
/// were issued. A member read that failed fails the member.
///
/// Called under: the stripe locks of `rows`.
fn make_current(
    array: &Array,
    stripes: &crate::stripe::StripeCache,
    b: &mut Batch,
    rows: std::ops::Range<u64>,
) -> io::Result<()> {
    if stripes.rows_gen(rows) != b.tag {
        array.sync_ctl().rereads.fetch_add(1, Ordering::AcqRel);
        b.reread(&array.slots).map_err(|(slot, e)| member_error(array, slot, e, false))?;
    }
    match b.failed() {
        Some((slot, e)) => Err(member_error(array, slot, e, false)),
        None => Ok(()),
    }
}

/// Stripe rows per sync batch for chunks of `chunk` bytes.
fn batch_rows(chunk: usize) -> u64 {
    (BATCH_BYTES / chunk).clamp(1, MAX_BATCH_ROWS) as u64
}

/// The batches of a pass over rows `[from, end)`, read ahead: planned
/// (and, those to be processed, issued) up to the read-ahead's depth
/// before the caller takes them in order.
struct Plan {
    next: u64,
    end: u64,
    batch: u64,
    /// Bytes of each member per row.
    row_bytes: u64,
    /// Planned: rows, and whether issued (processed) or skipped.
    queued: VecDeque<(u64, u64, bool)>,
}

impl Plan {
    fn new(from: u64, end: u64, batch: u64, row_bytes: u64) -> Plan {
        Plan { next: from, end, batch: batch.max(1), row_bytes, queued: VecDeque::with_capacity(PLAN_AHEAD) }
    }

    /// The next batch: its rows and, unless skipped, its reads (tagged by
    /// what `issue` returned for it). `issue(r0, r1)`: None skips rows
    /// `[r0, r1)`, Some(tag) reads them.
    fn next(
        &mut self,
        ra: &mut SyncIo,
        mut issue: impl FnMut(u64, u64) -> Option<u64>,
    ) -> io::Result<Option<(u64, u64, Option<Batch>)>> {
        while self.next < self.end && ra.has_room() && self.queued.len() < PLAN_AHEAD {
            // Batches aligned to multiples of their size (a resumed run's
            // first one shorter), so that one never straddles two bitmap
            // chunks.
            let r0 = self.next;
            let r1 = ((r0 / self.batch + 1) * self.batch).min(self.end);
            let read = match issue(r0, r1) {
                Some(tag) => {
                    ra.issue(r0 * self.row_bytes, ((r1 - r0) * self.row_bytes) as usize, tag)?;
                    true
                }
                None => false,
            };
            self.queued.push_back((r0, r1, read));
            self.next = r1;
        }
        let Some((r0, r1, read)) = self.queued.pop_front() else { return Ok(None) };
        if !read {
            return Ok(Some((r0, r1, None)));
        }
        match ra.next_batch()? {
            Some(b) if b.at == r0 * self.row_bytes => Ok(Some((r0, r1, Some(b)))),
            _ => Err(io::Error::other("sync read-ahead: batches out of order")),
        }
    }
}

/// Most batches planned ahead (skipped ones included).
const PLAN_AHEAD: usize = 64;

/// The bitmap, when every member being recovered is a re-add (it missed
/// only the writes the bitmap marks): recovery skips clean chunks.
fn bitmap_only<'a>(array: &'a Array, targets: &[usize]) -> Option<&'a crate::bitmap::Bitmap> {
    let readd = targets
        .iter()
        .all(|&t| array.slots.get(t).is_some_and(|m| m.flags() & crate::array::flags::BITMAP_RECOVERY != 0));
    array.bitmap().map(|b| &**b).filter(|_| readd)
}

/// Bytes of each member a recovery batch reads.
const BATCH_BYTES: usize = 2 << 20;
/// Most stripe rows in one batch (their stripe locks are held together).
const MAX_BATCH_ROWS: usize = 64;

/// The members' blocks of a batch of rows, as the personality reads
/// members.
struct BatchView<'a> {
    /// Per slot, its bytes of the batch (None: not read).
    parts: &'a [Option<&'a [u8]>],
    /// Member offset of the batch's first byte.
    first: u64,
}

impl MemberRead for BatchView<'_> {
    fn is_present(&self, slot: usize) -> bool {
        self.parts.get(slot).is_some_and(Option::is_some)
    }

    fn read_at(&self, slot: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let from = offset.checked_sub(self.first).map(|o| o as usize);
        let part = self.parts.get(slot).copied().flatten();
        let src = part.zip(from).and_then(|(b, o)| b.get(o..o + buf.len()));
        match src {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "read outside the batch")),
        }
    }
}

fn recover_mirrors(array: &Array, targets: &[usize], r: &mut Run<'_>, from: u64) -> io::Result<bool> {
    let size = array.size();
    let mut buf = vec![0u8; MIRROR_WINDOW as usize];
    let slots = &array.slots;
    let mut off = from * 512;
    while off < size {
        let len = (size - off).min(MIRROR_WINDOW) as usize;
        let (u0, u1) = (off / 512, (off + len as u64).div_ceil(512));
        if bitmap_only(array, targets).is_some_and(|bm| !bm.is_dirty(u0, u1)) {
            off += len as u64;
            if !r.stepped(off.div_ceil(512))? {
                return Ok(false);
            }
            continue;
        }
        r.ctl.synced.fetch_add(u1 - u0, Ordering::AcqRel);
        let pieces = array.personality.map_write(off, len)?;
        let outcome: io::Result<()> = array.with_mirror_window(off, || {
            for p in pieces.iter().filter(|p| targets.contains(&p.slot) && slots.takes_writes(p.slot)) {
                let src = pieces.iter().find(|c| c.buf_start == p.buf_start && slots.is_present(c.slot));
                let Some(src) = src else {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                };
                let b = &mut buf[..p.len];
                MemberRead::read_at(&**slots, src.slot, src.member_offset, b)
                    .map_err(|e| member_error(array, src.slot, e, false))?;
                slots
                    .write_at(p.slot, p.member_offset, b)
                    .map_err(|e| member_error(array, p.slot, e, true))?;
            }
            Ok(())
        });
        outcome?;
        off += len as u64;
        if !r.stepped(off.div_ceil(512))? {
            return Ok(false);
        }
    }
    Ok(true)
}
