//! Fault injection: a member's injector, attached at open
//! ([`MemberOptions::faults`](crate::MemberOptions)), consulted by both
//! engines before every op and flush, and controlled at run time by tests
//! (and by `umd` behind an explicit `--faults` option).
//!
//! What it does:
//! * **Rules** ([`Rule`]) fail reads, writes (for a sector range) or
//!   flushes with an errno (default `EIO`): always, with a probability, or
//!   after N matching operations (the first N pass, every later one fails).
//!   A failed op is not issued: it touches nothing on the member.
//! * **Latency**: a fixed delay before each read, write or flush.
//! * **Power cut** ([`Faults::power_cut`]): while write tracking is on
//!   ([`Faults::track_writes`]), every write reads the old contents of its
//!   range before it is issued and keeps them in an undo log, which a
//!   successful flush clears. A power cut undoes the writes since the last
//!   flush — all of them ([`CutMode::Lost`]) or sector by sector at random
//!   ([`CutMode::Torn`]) — and leaves the member *dead*: every op and flush
//!   fails with `EIO` until [`Faults::revive`].
//!
//! Rules and latency act only while the injector is *armed* (it starts
//! armed; [`Faults::disarm`] suspends them without forgetting them). Write
//! tracking and the dead state do not depend on arming. Tracking is off
//! until asked for (it costs a read and an allocation per write).
//!
//! ## Determinism
//! Everything random comes from SplitMix64 streams derived from the seed
//! given to [`Faults::new`]: one stream per rule (the n-th rule ever added
//! gets the n-th stream; a rule draws only for the ops it matches, so rules
//! do not perturb each other) and one for torn power cuts. The same seed
//! and the same sequence of ops give the same faults. (With several threads
//! the sequence is their interleaving.)
//!
//! ## Power-cut semantics
//! The undo log holds, per tracked write, its range and the bytes there
//! just before it was issued, in issue order. [`CutMode::Lost`] restores
//! them newest first, so the member is exactly as it was at the last
//! successful flush. [`CutMode::Torn`] goes newest first too, and for each
//! 512-byte sector of each write decides with the seeded PRNG whether that
//! write reached the medium: if kept, the sector is final (older writes
//! leave it alone); if not, its old bytes are restored (which are the
//! previous write's data, decided next). So every sector ends up holding
//! its contents at the last flush or the data of one unflushed write to it.
//! Restoring writes through a duplicate of the member's descriptor, then
//! `fdatasync`s. Exact only when no write is in flight across the flush or
//! the cut (a flush clears the log of every write issued before it).
//!
//! ## Spec grammar (`Faults::parse`, umd's `--faults`)
//! ```text
//! spec     := item ( ',' item )*         empty items ignored; blanks trimmed
//! item     := 'seed=' U64                PRNG seed (default 0; at most once)
//!           | 'track'                    write tracking on (power cuts)
//!           | 'disarmed'                 start disarmed
//!           | [ ops ':' ] 'latency=' DURATION
//!           | [ ops ':' ] trigger [ '@' range ] [ '/' errno ]
//! ops      := 'read' | 'write' | 'rw' | 'flush'    (default rw: reads and writes)
//! trigger  := 'fail'                     every matching op
//!           | 'p=' FLOAT                 each matching op with probability 0..=1
//!           | 'after=' U64               the first N matching ops pass, then all fail
//! range    := U64 '-' U64                512-byte sectors, end excluded
//!           | U64 '-'                    to the end of the member
//!           | U64                        one sector
//! errno    := 'eio' | 'enospc' | 'erofs' | 'enxio' | 'enodev' | 'enodata'
//!           | 'etimedout' | 'eagain' | 'ebusy' | 'einval' | 'enomem' | U32
//! DURATION := U64 ( 'ns' | 'us' | 'ms' | 's' )
//! ```
//! Flush rules and latencies take no range; latencies take no errno.
//! Example: `seed=7,write:fail@1000-2000,read:p=0.01,after=500,latency=2ms`
//! fails every write touching sectors 1000..2000, 1% of reads, every read or
//! write after the first 500, and delays reads and writes by 2 ms.
//!
//! ## Allocation
//! With tracking off, [`Faults::on_io`], [`Faults::on_flush`] and
//! [`Faults::flushed`] allocate nothing. Tracking allocates the undo log
//! (test-only). Control methods may allocate.
//!
//! ## Synchronization
//! One `std::sync::Mutex` over the whole state (rules, counters, undo log),
//! held briefly: never across a sleep or I/O (latency sleeps, the old-bytes
//! read and power-cut restoring all happen with it released). Lock order:
//! taken alone, never while holding anything else of this crate, and
//! nothing else is taken while it is held.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::dio::OpKind;

/// The sector of rules and torn writes: md's 512 bytes.
const SECTOR: u64 = 512;

/// Which operations a rule or a latency applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ops {
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Reads and writes.
    Both,
    /// Flushes (a rule's sector range does not apply).
    Flush,
}

impl Ops {
    fn covers(self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (Ops::Read, Kind::Read)
                | (Ops::Write, Kind::Write)
                | (Ops::Both, Kind::Read | Kind::Write)
                | (Ops::Flush, Kind::Flush)
        )
    }
}

/// When a matching operation fails.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trigger {
    /// Every one.
    Always,
    /// Each with this probability (clamped to 0..=1; NaN is 0), drawn from
    /// the rule's seeded stream.
    Probability(f64),
    /// The first N pass, every later one fails.
    After(u64),
}

/// A fault rule: `ops` touching `sectors` fail with `errno` when `trigger`
/// says so.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub ops: Ops,
    /// 512-byte sectors, half-open; an op matches when its range overlaps.
    /// Ignored for flushes.
    pub sectors: Range<u64>,
    pub trigger: Trigger,
    /// The errno the op fails with (a non-positive one means `EIO`).
    pub errno: i32,
}

impl Rule {
    /// `ops` anywhere on the member fail with `EIO` per `trigger`.
    pub fn new(ops: Ops, trigger: Trigger) -> Rule {
        Rule { ops, sectors: 0..u64::MAX, trigger, errno: libc::EIO }
    }

    /// Only ops overlapping these sectors (half-open).
    pub fn sectors(mut self, sectors: Range<u64>) -> Rule {
        self.sectors = sectors;
        self
    }

    /// Fail with this errno.
    pub fn errno(mut self, errno: i32) -> Rule {
        self.errno = errno;
        self
    }
}

/// How a power cut treats the writes since the last flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// All are lost: the member is as it was at the last flush.
    Lost,
    /// Each 512-byte sector of each is kept or lost at random (seeded).
    Torn,
}

/// Counters since the injector was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Reads and writes seen by [`Faults::on_io`].
    pub ops: u64,
    /// Flushes seen by [`Faults::on_flush`].
    pub flushes: u64,
    /// Ops and flushes failed by the injector (rules, or a dead member).
    pub faults: u64,
    /// Ops and flushes delayed by a latency.
    pub delayed: u64,
    /// Writes recorded in the undo log.
    pub writes_logged: u64,
    /// Power cuts.
    pub power_cuts: u64,
    /// Unflushed writes at least one sector of which a power cut undid.
    pub writes_undone: u64,
    /// Sectors restored to their old contents by power cuts (both modes).
    pub sectors_undone: u64,
    /// Sectors of unflushed writes undone by torn power cuts.
    pub sectors_torn: u64,
    /// Sectors of unflushed writes that torn power cuts kept.
    pub sectors_kept: u64,
}

/// What one power cut did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Writes in the undo log (since the last flush).
    pub writes: u64,
    /// Of those, writes at least one sector of which was undone.
    pub writes_undone: u64,
    /// Sectors restored to their old contents.
    pub sectors_undone: u64,
    /// Sectors of unflushed writes kept (torn cuts only).
    pub sectors_kept: u64,
}

/// A member's fault injector. See the [module documentation](self).
pub struct Faults {
    seed: u64,
    state: Mutex<State>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
}

struct State {
    armed: bool,
    dead: bool,
    track: bool,
    rules: Vec<RuleState>,
    /// Rules ever added: the stream number of the next one.
    rules_added: u64,
    read_delay: Duration,
    write_delay: Duration,
    flush_delay: Duration,
    /// Unflushed tracked writes, oldest first.
    log: Vec<Undo>,
    /// Duplicates of the descriptors written through, by (dev, ino).
    files: Vec<(u64, u64, Arc<File>)>,
    /// Seeds one stream per torn power cut.
    torn: SplitMix,
    stats: FaultStats,
}

struct RuleState {
    rule: Rule,
    /// Matching ops seen so far.
    seen: u64,
    rng: SplitMix,
}

struct Undo {
    file: Arc<File>,
    offset: u64,
    old: Aligned,
}

impl Faults {
    /// An armed injector with no rules, no latency, tracking off.
    pub fn new(seed: u64) -> Faults {
        Faults {
            seed,
            state: Mutex::new(State {
                armed: true,
                dead: false,
                track: false,
                rules: Vec::new(),
                rules_added: 0,
                read_delay: Duration::ZERO,
                write_delay: Duration::ZERO,
                flush_delay: Duration::ZERO,
                log: Vec::new(),
                files: Vec::new(),
                torn: SplitMix(mix(seed ^ 0x746f_726e_5f63_7574)),
                stats: FaultStats::default(),
            }),
        }
    }

    /// Builds an injector from a spec (grammar in the module
    /// documentation); the error names the offending item and why.
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut seed = None;
        let mut track = false;
        let mut armed = true;
        let mut rules = Vec::new();
        let mut delays = Vec::new();
        for (i, raw) in spec.split(',').enumerate() {
            let item = raw.trim();
            if item.is_empty() {
                continue;
            }
            let bad = |why: String| format!("faults spec item {} {item:?}: {why}", i + 1);
            if let Some(v) = item.strip_prefix("seed=") {
                if seed.is_some() {
                    return Err(bad("seed given twice".into()));
                }
                seed = Some(v.parse::<u64>().map_err(|_| bad(format!("bad seed {v:?}")))?);
                continue;
            }
            match item {
                "track" => {
                    track = true;
                    continue;
                }
                "disarmed" => {
                    armed = false;
                    continue;
                }
                _ => {}
            }
            let (ops, body) = match item.split_once(':') {
                Some((o, b)) => (parse_ops(o.trim()).map_err(bad)?, b.trim()),
                None => (Ops::Both, item),
            };
            if let Some(d) = body.strip_prefix("latency=") {
                delays.push((ops, parse_duration(d).map_err(bad)?));
                continue;
            }
            let (body, errno) = match body.split_once('/') {
                Some((b, e)) => (b, parse_errno(e.trim()).map_err(bad)?),
                None => (body, libc::EIO),
            };
            let (trig, range) = match body.split_once('@') {
                Some((t, r)) => (t.trim(), Some(parse_range(r.trim()).map_err(bad)?)),
                None => (body.trim(), None),
            };
            let trigger = parse_trigger(trig).map_err(bad)?;
            let mut rule = Rule::new(ops, trigger).errno(errno);
            if let Some(r) = range {
                if ops == Ops::Flush {
                    return Err(bad("flush rules take no sector range".into()));
                }
                rule = rule.sectors(r);
            }
            rules.push(rule);
        }
        let f = Faults::new(seed.unwrap_or(0));
        for r in rules {
            f.add_rule(r);
        }
        for (ops, d) in delays {
            f.set_latency(ops, d);
        }
        f.track_writes(track);
        if !armed {
            f.disarm();
        }
        Ok(f)
    }

    /// The seed given at creation.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Adds a rule after the others (the first that fires gives the errno;
    /// every matching rule counts the op).
    pub fn add_rule(&self, mut rule: Rule) {
        if let Trigger::Probability(p) = rule.trigger {
            rule.trigger = Trigger::Probability(if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) });
        }
        if rule.errno <= 0 {
            rule.errno = libc::EIO;
        }
        let mut s = self.lock();
        let n = s.rules_added;
        s.rules_added += 1;
        let rng = SplitMix(mix(self.seed ^ mix(n.wrapping_add(1))));
        s.rules.push(RuleState { rule, seen: 0, rng });
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        let old = std::mem::take(&mut self.lock().rules);
        drop(old);
    }

    /// The number of rules.
    pub fn rules(&self) -> usize {
        self.lock().rules.len()
    }

    /// Delays each op of `ops` by `delay` before it is issued
    /// (`Duration::ZERO`: none). [`Ops::Both`] sets reads and writes.
    pub fn set_latency(&self, ops: Ops, delay: Duration) {
        let mut s = self.lock();
        match ops {
            Ops::Read => s.read_delay = delay,
            Ops::Write => s.write_delay = delay,
            Ops::Both => {
                s.read_delay = delay;
                s.write_delay = delay;
            }
            Ops::Flush => s.flush_delay = delay,
        }
    }

    /// Rules and latencies act (the initial state).
    pub fn arm(&self) {
        self.lock().armed = true;
    }

    /// Rules and latencies are suspended (kept; rules count nothing).
    pub fn disarm(&self) {
        self.lock().armed = false;
    }

    /// Whether rules and latencies act.
    pub fn is_armed(&self) -> bool {
        self.lock().armed
    }

    /// Turns write tracking (the undo log of power cuts) on or off. Off
    /// drops the log: a power cut then undoes nothing.
    pub fn track_writes(&self, on: bool) {
        let mut s = self.lock();
        s.track = on;
        if !on {
            let log = std::mem::take(&mut s.log);
            drop(s);
            drop(log);
        }
    }

    /// Writes in the undo log: tracked writes since the last flush.
    pub fn unflushed_writes(&self) -> usize {
        self.lock().log.len()
    }

    /// Whether a power cut left the member dead.
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Ends the dead state of a power cut: ops are issued again.
    pub fn revive(&self) {
        self.lock().dead = false;
    }

    /// The counters.
    pub fn stats(&self) -> FaultStats {
        self.lock().stats
    }

    /// Called by every engine before an op is issued: `Err(errno)` fails
    /// it unissued. May sleep (latency); with tracking on, reads the old
    /// contents of a write's range through `file`. Allocation-free with
    /// tracking off.
    pub fn on_io(&self, kind: OpKind, file: &File, offset: u64, len: usize) -> Result<(), i32> {
        let kind = match kind {
            OpKind::Read => Kind::Read,
            OpKind::Write => Kind::Write,
        };
        let first = offset / SECTOR;
        let end = offset.saturating_add(len as u64).div_ceil(SECTOR);
        let (delay, verdict, track) = {
            let mut s = self.lock();
            s.stats.ops += 1;
            if s.dead {
                s.stats.faults += 1;
                return Err(libc::EIO);
            }
            let (delay, verdict) = s.armed_verdict(kind, first..end);
            (delay, verdict, s.track && kind == Kind::Write)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        verdict?;
        if track {
            self.capture(file, offset, len)?;
        }
        Ok(())
    }

    /// Called before a flush: `Err(errno)` fails it unissued. May sleep.
    /// Allocation-free.
    pub fn on_flush(&self) -> Result<(), i32> {
        let (delay, verdict) = {
            let mut s = self.lock();
            s.stats.flushes += 1;
            if s.dead {
                s.stats.faults += 1;
                return Err(libc::EIO);
            }
            s.armed_verdict(Kind::Flush, 0..0)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        verdict
    }

    /// Called after a flush succeeded: every tracked write is now durable
    /// (the undo log is cleared). Allocation-free.
    pub fn flushed(&self) {
        let log = {
            let mut s = self.lock();
            if s.dead {
                return;
            }
            std::mem::take(&mut s.log)
        };
        drop(log);
    }

    /// Simulates a power cut: undoes the writes since the last flush per
    /// `mode` (see the module documentation), then makes the member dead
    /// until [`revive`](Self::revive). The member is dead even if
    /// restoring fails (the first error is returned, having tried every
    /// write). Call it with no write in flight.
    pub fn power_cut(&self, mode: CutMode) -> io::Result<CutReport> {
        let (log, mut rng) = {
            let mut s = self.lock();
            s.dead = true;
            s.stats.power_cuts += 1;
            let seed = s.torn.next();
            (std::mem::take(&mut s.log), SplitMix(seed))
        };
        let mut report = CutReport { writes: log.len() as u64, ..CutReport::default() };
        let mut first_err = None;
        // Torn: (descriptor, sector) already final, kept by a newer write.
        let mut settled: HashSet<(usize, u64)> = HashSet::new();
        let mut synced: Vec<Arc<File>> = Vec::new();
        for u in log.iter().rev() {
            let sectors = u.old.len() as u64 / SECTOR;
            let first = u.offset / SECTOR;
            let key = Arc::as_ptr(&u.file) as usize;
            let undo: Vec<bool> = match mode {
                CutMode::Lost => vec![true; sectors as usize],
                CutMode::Torn => (0..sectors)
                    .map(|i| {
                        if settled.contains(&(key, first + i)) {
                            return false;
                        }
                        let keep = rng.next() & 1 == 1;
                        if keep {
                            settled.insert((key, first + i));
                            report.sectors_kept += 1;
                        }
                        !keep
                    })
                    .collect(),
            };
            let n = undo.iter().filter(|&&b| b).count() as u64;
            if n == 0 {
                continue;
            }
            report.writes_undone += 1;
            report.sectors_undone += n;
            if !synced.iter().any(|f| Arc::ptr_eq(f, &u.file)) {
                synced.push(Arc::clone(&u.file));
            }
            if let Err(e) = restore(u, &undo) {
                first_err.get_or_insert(e);
            }
        }
        for f in &synced {
            if let Err(e) = f.sync_data() {
                first_err.get_or_insert(e);
            }
        }
        drop(log);
        {
            let mut s = self.lock();
            s.stats.writes_undone += report.writes_undone;
            s.stats.sectors_undone += report.sectors_undone;
            if mode == CutMode::Torn {
                s.stats.sectors_torn += report.sectors_undone;
                s.stats.sectors_kept += report.sectors_kept;
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere (every
        // update is a plain store): a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the old contents of a write's range in the undo log.
    fn capture(&self, file: &File, offset: u64, len: usize) -> Result<(), i32> {
        let errno = |e: io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        // The undo covers whole sectors (a power cut keeps or loses a
        // sector, never part of one): an unaligned buffered write is
        // rounded out. Bytes past the end of the file read as zeros.
        let meta = file.metadata().map_err(errno)?;
        let start = offset / SECTOR * SECTOR;
        let end = (offset + len as u64).div_ceil(SECTOR) * SECTOR;
        let mut old = Aligned::zeroed((end - start) as usize);
        let avail = meta.len().clamp(start, end) - start;
        // Read through the member's own descriptor (O_DIRECT or not): for
        // direct I/O the range is aligned already (the engine checked it)
        // and so is the buffer.
        read_full(file, &mut old.bytes_mut()[..avail as usize], start).map_err(errno)?;
        let offset = start;
        let (dev, ino) = (meta.dev(), meta.ino());
        let mut s = self.lock();
        if s.dead {
            // Cut while we read: this write is not issued.
            s.stats.faults += 1;
            return Err(libc::EIO);
        }
        if !s.track {
            return Ok(());
        }
        let file = match s.files.iter().find(|(d, i, _)| *d == dev && *i == ino) {
            Some((_, _, f)) => Arc::clone(f),
            None => {
                let dup = Arc::new(file.try_clone().map_err(errno)?);
                s.files.push((dev, ino, Arc::clone(&dup)));
                dup
            }
        };
        s.log.push(Undo { file, offset, old });
        s.stats.writes_logged += 1;
        Ok(())
    }
}

impl State {
    /// The delay and verdict of the rules for an op of `kind` on `sectors`
    /// (nothing when disarmed). Counts the fault and the delay.
    fn armed_verdict(&mut self, kind: Kind, sectors: Range<u64>) -> (Duration, Result<(), i32>) {
        if !self.armed {
            return (Duration::ZERO, Ok(()));
        }
        let delay = match kind {
            Kind::Read => self.read_delay,
            Kind::Write => self.write_delay,
            Kind::Flush => self.flush_delay,
        };
        if !delay.is_zero() {
            self.stats.delayed += 1;
        }
        let mut verdict = Ok(());
        for r in &mut self.rules {
            if !r.rule.ops.covers(kind) {
                continue;
            }
            if kind != Kind::Flush
                && !(sectors.start < r.rule.sectors.end && r.rule.sectors.start < sectors.end)
            {
                continue;
            }
            let fire = match r.rule.trigger {
                Trigger::Always => true,
                Trigger::Probability(p) => r.rng.unit() < p,
                Trigger::After(n) => r.seen >= n,
            };
            r.seen = r.seen.saturating_add(1);
            if fire && verdict.is_ok() {
                verdict = Err(r.rule.errno);
            }
        }
        if verdict.is_err() {
            self.stats.faults += 1;
        }
        (delay, verdict)
    }
}

impl Default for Faults {
    /// `Faults::new(0)`.
    fn default() -> Self {
        Faults::new(0)
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("Faults")
            .field("seed", &self.seed)
            .field("armed", &s.armed)
            .field("dead", &s.dead)
            .field("track", &s.track)
            .field("rules", &s.rules.iter().map(|r| &r.rule).collect::<Vec<_>>())
            .field("read_delay", &s.read_delay)
            .field("write_delay", &s.write_delay)
            .field("flush_delay", &s.flush_delay)
            .field("unflushed", &s.log.len())
            .field("stats", &s.stats)
            .finish()
    }
}

/// Puts back the old bytes of the sectors of `u` marked in `undo`.
fn restore(u: &Undo, undo: &[bool]) -> io::Result<()> {
    if undo.iter().all(|&b| b) {
        return u.file.write_all_at(u.old.bytes(), u.offset);
    }
    // Mixed: read-modify-write the whole (aligned) range, as O_DIRECT may
    // refuse single sectors.
    let mut now = Aligned::zeroed(u.old.len());
    read_full(&u.file, now.bytes_mut(), u.offset)?;
    let sector = SECTOR as usize;
    for (i, _) in undo.iter().enumerate().filter(|(_, &b)| b) {
        let r = i * sector..(i + 1) * sector;
        now.bytes_mut()[r.clone()].copy_from_slice(&u.old.bytes()[r]);
    }
    u.file.write_all_at(now.bytes(), u.offset)
}

/// Reads `buf.len()` bytes at `offset`; zeroes past the end of the file.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Memory alignment of the undo log's buffers: enough for direct I/O on
/// every device with logical blocks up to 4 KiB.
const ALIGN: usize = 4096;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; ALIGN]);

/// A zeroed, 4096-byte-aligned byte buffer.
struct Aligned {
    blocks: Vec<Block>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        Aligned { blocks: vec![Block([0; ALIGN]); len.div_ceil(ALIGN)], len }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: Block is repr(C) over a [u8; ALIGN] with no padding, so
        // the blocks are blocks.len() * ALIGN >= len initialised bytes,
        // borrowed shared with self.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in bytes, borrowed exclusively with self.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014).
#[derive(Clone, Copy)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn parse_ops(s: &str) -> Result<Ops, String> {
    match s {
        "read" => Ok(Ops::Read),
        "write" => Ok(Ops::Write),
        "rw" => Ok(Ops::Both),
        "flush" => Ok(Ops::Flush),
        _ => Err(format!("unknown ops {s:?} (read, write, rw or flush)")),
    }
}

fn parse_trigger(s: &str) -> Result<Trigger, String> {
    if s == "fail" {
        return Ok(Trigger::Always);
    }
    if let Some(v) = s.strip_prefix("p=") {
        return match v.parse::<f64>() {
            Ok(p) if (0.0..=1.0).contains(&p) => Ok(Trigger::Probability(p)),
            _ => Err(format!("probability {v:?} is not a number in 0..=1")),
        };
    }
    if let Some(v) = s.strip_prefix("after=") {
        return v.parse::<u64>().map(Trigger::After).map_err(|_| format!("bad count {v:?}"));
    }
    Err(format!("unknown trigger {s:?} (fail, p=P, after=N or latency=D)"))
}

fn parse_range(s: &str) -> Result<Range<u64>, String> {
    let num = |v: &str| v.trim().parse::<u64>().map_err(|_| format!("bad sector {v:?} in range {s:?}"));
    let r = match s.split_once('-') {
        Some((a, b)) if b.trim().is_empty() => num(a)?..u64::MAX,
        Some((a, b)) => num(a)?..num(b)?,
        None => {
            let a = num(s)?;
            a..a.saturating_add(1)
        }
    };
    if r.start >= r.end {
        return Err(format!("empty sector range {s:?} (end is excluded)"));
    }
    Ok(r)
}

fn parse_errno(s: &str) -> Result<i32, String> {
    let e = match s.to_ascii_lowercase().as_str() {
        "eio" => libc::EIO,
        "enospc" => libc::ENOSPC,
        "erofs" => libc::EROFS,
        "enxio" => libc::ENXIO,
        "enodev" => libc::ENODEV,
        "enodata" => libc::ENODATA,
        "etimedout" => libc::ETIMEDOUT,
        "eagain" => libc::EAGAIN,
        "ebusy" => libc::EBUSY,
        "einval" => libc::EINVAL,
        "enomem" => libc::ENOMEM,
        other => match other.parse::<i32>() {
            Ok(n) if n > 0 && n < 4096 => n,
            _ => return Err(format!("unknown errno {s:?} (a name like eio, or a number 1..4095)")),
        },
    };
    Ok(e)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?} (like 2ms)"))?;
    match unit {
        "ns" => Ok(Duration::from_nanos(n)),
        "us" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("bad duration unit in {s:?} (ns, us, ms or s)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let f =
            Faults::parse("seed=7,write:fail@1000-2000,read:p=0.01,after=500,latency=2ms").expect("parse");
        assert_eq!(f.seed(), 7);
        let s = f.lock();
        let rules: Vec<&Rule> = s.rules.iter().map(|r| &r.rule).collect();
        assert_eq!(
            rules,
            [
                &Rule::new(Ops::Write, Trigger::Always).sectors(1000..2000),
                &Rule::new(Ops::Read, Trigger::Probability(0.01)),
                &Rule::new(Ops::Both, Trigger::After(500)),
            ]
        );
        assert_eq!(s.read_delay, Duration::from_millis(2));
        assert_eq!(s.write_delay, Duration::from_millis(2));
        assert_eq!(s.flush_delay, Duration::ZERO);
        assert!(s.armed && !s.track);
    }

    #[test]
    fn parses_every_form() {
        let f = Faults::parse(
            " track , disarmed, flush:after=3/enospc, read:fail@5/28, write:fail@8-/erofs, \
             flush:latency=1s, write:latency=10us ,",
        )
        .expect("parse");
        assert_eq!(f.seed(), 0);
        let s = f.lock();
        assert!(s.track && !s.armed);
        let rules: Vec<&Rule> = s.rules.iter().map(|r| &r.rule).collect();
        assert_eq!(
            rules,
            [
                &Rule::new(Ops::Flush, Trigger::After(3)).errno(libc::ENOSPC),
                &Rule::new(Ops::Read, Trigger::Always).sectors(5..6).errno(28),
                &Rule::new(Ops::Write, Trigger::Always).sectors(8..u64::MAX).errno(libc::EROFS),
            ]
        );
        assert_eq!(s.flush_delay, Duration::from_secs(1));
        assert_eq!(s.write_delay, Duration::from_micros(10));
        assert_eq!(s.read_delay, Duration::ZERO);
        assert!(Faults::parse("").is_ok());
    }

    #[test]
    fn refuses_garbage_naming_the_item() {
        for (spec, want) in [
            ("bogus", "item 1 \"bogus\": unknown trigger"),
            ("seed=1,seed=2", "item 2 \"seed=2\": seed given twice"),
            ("seed=x", "bad seed"),
            ("read:p=1.5", "probability \"1.5\""),
            ("read:p=nan", "probability"),
            ("disk:fail", "unknown ops \"disk\""),
            ("write:fail@20-10", "empty sector range"),
            ("write:fail@a-b", "bad sector"),
            ("write:fail/eweird", "unknown errno"),
            ("write:fail/0", "unknown errno"),
            ("flush:fail@1-2", "flush rules take no sector range"),
            ("latency=2", "bad duration unit"),
            ("latency=ms", "bad duration"),
            ("write:after=-1", "bad count"),
        ] {
            let e = Faults::parse(spec).expect_err(spec);
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (reference C code).
        let mut r = SplitMix(0);
        assert_eq!(r.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next(), 0x6e78_9e6a_a1b9_65f4);
        let u = r.unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn rules_match_by_kind_and_overlap() {
        let f = Faults::new(1);
        f.add_rule(Rule::new(Ops::Write, Trigger::Always).sectors(8..16).errno(libc::ENOSPC));
        f.add_rule(Rule::new(Ops::Flush, Trigger::After(1)));
        let mut s = f.lock();
        assert_eq!(s.armed_verdict(Kind::Write, 0..8).1, Ok(()));
        assert_eq!(s.armed_verdict(Kind::Write, 7..9).1, Err(libc::ENOSPC));
        assert_eq!(s.armed_verdict(Kind::Write, 15..16).1, Err(libc::ENOSPC));
        assert_eq!(s.armed_verdict(Kind::Write, 16..24).1, Ok(()));
        assert_eq!(s.armed_verdict(Kind::Read, 8..16).1, Ok(()));
        assert_eq!(s.armed_verdict(Kind::Flush, 0..0).1, Ok(()));
        assert_eq!(s.armed_verdict(Kind::Flush, 0..0).1, Err(libc::EIO));
        s.armed = false;
        assert_eq!(s.armed_verdict(Kind::Write, 8..16).1, Ok(()));
    }
}
