//! Power cuts (issue 8): a random write workload with periodic flushes
//! runs on a small synthetic array whose members carry fault injectors
//! with write tracking on; at a random point every member loses power at
//! once (`CutMode::Torn` for most seeds: each 512-byte sector of each
//! unflushed member write reached the medium or not, at random;
//! `CutMode::Lost` for every fifth: none did). The array is dropped
//! without a clean shutdown, so its superblocks still say dirty.
//!
//! Writes are unaligned (offsets and lengths: tiny, sub-chunk, pages,
//! whole stripes, several stripes), except in `Lost` seeds, whose writes
//! are rounded out to whole sectors: the injector's undo log counts whole
//! sectors from each write's own offset, so it never undoes a member write
//! shorter than 512 bytes, nor the last `len % 512` bytes of a torn one.
//! Such leftovers are still a possible power-cut outcome (the `Torn`
//! checks allow them), but not what `Lost` is checked for: exactly the
//! flushed state.
//!
//! Then, for 50 seeds of each of raid1 (2 members), raid4 (3), raid5 (4,
//! left-symmetric and right-asymmetric), raid6 (5) and raid10 (4, near 2):
//! the members are revived and re-assembled writable; the sync thread,
//! frozen first, runs a `check` (its count is kept as a statistic: the
//! torn redundancy md's resync must put right), then resyncs by itself,
//! as md does for a dirty array; when the checkpoint reaches `MAX_SECTOR`:
//!
//! * every byte not written since the last successful flush reads back as
//!   the model has it (fsynced bytes are intact), every byte written since
//!   holds its flushed value or the value of one of those writes, and after
//!   a `Lost` cut the array is exactly the flushed model;
//! * a `check` counts 0 mismatches;
//! * raid4/5/6: every row's P (and Q) on the images is right by the tests'
//!   own parity reference (`common::check_parity`);
//! * after a clean shutdown (superblocks marked clean), a read-only
//!   assembly without a random set of members (as many as the level can
//!   lose) reads the same bytes: parity or the other copy rebuilds every
//!   byte.
//!
//! The superblocks are marked dirty (`resync_offset` 0), as the metadata
//! manager marks them, before the first write: in even seeds on the images
//! before assembly (the array's checkpoint starts at 0, so partial parity
//! rows take reconstruct-write), in odd seeds while the array is assembled
//! (its checkpoint stays in sync, as with `umd mon`, so partial rows may
//! take read-modify-write).
//!
//! A failure names the level, layout and seed; `POWER_CUT_SEED=N` runs
//! only seed N (`POWER_CUT_SEED=17 cargo test -p md --test power_cut
//! raid6`).

mod common;

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockio::fault::{CutMode, CutReport, Faults};
use common::{build_synth, check_parity, set_resync_offset, synth_map};
use md::superblock::MAX_SECTOR;
use md::sync::{Changed, SyncAction, SyncCtl};
use md::synth::{Rng, Spec};
use md::{assemble, assemble_writable, Array, AssembleOptions, Level};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Chunk size of every array.
const CHUNK: u64 = 64 * KIB;
/// Data area of every member (behind md's 1 MiB data offset).
const DATA_BYTES: u64 = MIB;
/// Seeds per configuration.
const SEEDS: u64 = 50;
/// How long a sync may take before the test gives up (a hang, not a
/// speed requirement).
const SYNC_DEADLINE: Duration = Duration::from_secs(120);

/// One array configuration.
#[derive(Clone, Copy)]
struct Config {
    name: &'static str,
    level: Level,
    layout: u32,
    disks: usize,
    /// Members the level can lose.
    redundancy: usize,
}

impl Config {
    fn spec(&self) -> Spec {
        let mut s = Spec::new(self.level, self.disks, MIB + DATA_BYTES);
        s.layout = self.layout;
        s.chunk_sectors = if self.level == Level::Raid1 { 0 } else { (CHUNK / 512) as u32 };
        s
    }

    /// Bytes of a stripe row (parity levels), of a raid10 row, or one
    /// chunk-sized unit for raid1: the unit of "whole stripe" writes.
    fn stripe_bytes(&self) -> u64 {
        match self.level {
            Level::Raid1 => CHUNK,
            Level::Raid10 => CHUNK * (self.disks / 2) as u64,
            _ => CHUNK * (self.disks - self.redundancy) as u64,
        }
    }
}

/// What the seeds of one configuration did, for the summary (and a check
/// that the cuts tore something).
#[derive(Default)]
struct Totals {
    seeds: u64,
    torn: u64,
    writes: u64,
    flushes: u64,
    cut: CutReport,
    /// Sectors `check` counted before the resync, and the seeds with any.
    mismatches_before: u64,
    seeds_mismatched: u64,
    /// Bytes written since the last flush that read back with new data.
    unflushed_kept: u64,
}

/// Prints the failing run's name when a panic unwinds through it.
struct Failing<'a>(&'a str);

impl Drop for Failing<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("power_cut: FAILED {} (rerun alone with POWER_CUT_SEED)", self.0);
        }
    }
}

/// Marks the superblocks of the synthetic array `spec` on `paths` with
/// `resync_offset` (0: dirty, `MAX_SECTOR`: clean), as the metadata
/// manager does, directly on the images (flushed).
fn mark_superblocks(paths: &[PathBuf], spec: &Spec, resync_offset: u64) {
    let files: Vec<File> = paths
        .iter()
        .map(|p| OpenOptions::new().read(true).write(true).open(p).expect("open member image"))
        .collect();
    set_resync_offset(&files, spec, resync_offset);
}

/// A random write range: tiny, sub-chunk, page-aligned pages, whole
/// aligned stripes, a whole chunk, or unaligned across several stripes;
/// `sectors`: rounded out to whole 512-byte sectors.
fn random_range(rng: &mut Rng, size: u64, stripe: u64, sectors: bool) -> (u64, u64) {
    let (offset, len) = match rng.below(7) {
        0 => (rng.below(size), rng.below(64) + 1),
        1 => (rng.below(size), rng.below(CHUNK) + 1),
        2 => (rng.below(size / 4096) * 4096, (rng.below(16) + 1) * 4096),
        3 | 4 => (rng.below(size / stripe) * stripe, (rng.below(2) + 1) * stripe),
        5 => (rng.below(size / CHUNK) * CHUNK, CHUNK),
        _ => (rng.below(size), rng.below(3 * stripe) + 1),
    };
    let (offset, len) = if sectors {
        let start = offset / 512 * 512;
        (start, (offset + len).div_ceil(512) * 512 - start)
    } else {
        (offset, len)
    };
    let len = len.min(size);
    (offset.min(size - len), len)
}

/// Polls `done` until it holds; panics after [`SYNC_DEADLINE`] (a hang).
fn wait_for(array: &Array, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        let ctl = array.sync_ctl();
        assert!(
            start.elapsed() < SYNC_DEADLINE,
            "{what}: no end after {SYNC_DEADLINE:?}: action {:?}, checkpoint {:#x}, completed {:?}, missing {}",
            ctl.action(),
            ctl.resync_cp(),
            ctl.completed(),
            array.missing()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The checks of the sync thread, as its notifications report them: a
/// check's count is taken when it ends, before the next run starts (a
/// resync clears it).
#[derive(Default)]
struct Checks {
    running: AtomicBool,
    ended: AtomicU64,
    mismatches: AtomicU64,
}

impl Checks {
    /// Follows `ctl`'s action changes. The sync thread reports a run's
    /// start with the run shown as running, and its end with nothing
    /// running, before it takes the next request.
    fn watch(ctl: &Arc<SyncCtl>) -> Arc<Checks> {
        let checks = Arc::new(Checks::default());
        let (me, weak) = (Arc::clone(&checks), Arc::downgrade(ctl));
        ctl.set_notify(move |c| {
            let on_sync_thread = std::thread::current().name() == Some("umd-md-sync");
            let Some(ctl) = weak.upgrade() else { return };
            if c != Changed::Action || !on_sync_thread {
                return;
            }
            if ctl.action() == SyncAction::Check {
                me.running.store(true, Ordering::SeqCst);
            } else if me.running.swap(false, Ordering::SeqCst) {
                me.mismatches.store(ctl.mismatches(), Ordering::SeqCst);
                me.ended.fetch_add(1, Ordering::SeqCst);
            }
        });
        checks
    }

    /// Asks the sync thread for a `check` and waits until it ended;
    /// returns its count (`mismatch_cnt`).
    fn run(&self, array: &Array, what: &str) -> u64 {
        let before = self.ended.load(Ordering::SeqCst);
        array.sync_ctl().store_action(b"check").unwrap_or_else(|e| panic!("{what}: store check: errno {e}"));
        wait_for(array, &format!("{what}: check"), || self.ended.load(Ordering::SeqCst) > before);
        self.mismatches.load(Ordering::SeqCst)
    }
}

fn read_all(array: &Array, what: &str) -> Vec<u8> {
    let mut v = vec![0u8; array.size() as usize];
    array.read_at(0, &mut v).unwrap_or_else(|e| panic!("{what}: read the whole array: {e}"));
    v
}

/// Checks the array's bytes after the cut: bytes not written since the
/// last flush equal `durable`; the others equal `durable` or the data of
/// one of the `unflushed` writes covering them. Returns how many of the
/// latter hold new data.
fn check_bytes(got: &[u8], durable: &[u8], unflushed: &[(u64, Vec<u8>)], what: &str) -> u64 {
    assert_eq!(got.len(), durable.len(), "{what}: array size");
    let mut written = vec![false; durable.len()];
    for (off, data) in unflushed {
        written[*off as usize..*off as usize + data.len()].fill(true);
    }
    let mut kept = 0;
    for (i, (&g, &d)) in got.iter().zip(durable).enumerate() {
        if g == d {
            continue;
        }
        assert!(
            written[i],
            "{what}: array byte {i} (not written since the last flush) is {g:#04x}, was {d:#04x} at the \
             flush: fsynced data lost ({} bytes differ in all)",
            got.iter().zip(durable).zip(&written).filter(|((a, b), w)| a != b && !**w).count()
        );
        let i64 = i as u64;
        let ok = unflushed.iter().any(|(off, data)| {
            (*off..*off + data.len() as u64).contains(&i64) && data[i - *off as usize] == g
        });
        assert!(
            ok,
            "{what}: array byte {i} (written since the last flush) is {g:#04x}: neither its flushed value \
             {d:#04x} nor any unflushed write's"
        );
        kept += 1;
    }
    kept
}

/// Opens `paths` read-only without the slots in `gone`.
fn without(paths: &[PathBuf], gone: &[usize]) -> Vec<PathBuf> {
    (0..paths.len()).filter(|s| !gone.contains(s)).map(|s| paths[s].clone()).collect()
}

/// One seed: build, mark dirty, write, cut, re-assemble, resync, check.
fn one_seed(cfg: &Config, seed: u64, totals: &mut Totals) {
    let what = format!("{} seed {seed}", cfg.name);
    let _failing = Failing(&what);
    let spec = cfg.spec();
    let (_dir, paths, model) = build_synth("umd-pcut", &format!("{}-{seed}", cfg.name), &spec);
    let mut rng = Rng::new(seed ^ ((cfg.level.to_md() as u64) << 32) ^ (u64::from(cfg.layout) << 40));
    let mode = if seed % 5 == 4 { CutMode::Lost } else { CutMode::Torn };
    let before_assembly = seed.is_multiple_of(2);

    // Write phase: every member tracked.
    let faults: Vec<Arc<Faults>> = (0..paths.len())
        .map(|s| {
            let f = Arc::new(Faults::new(seed.wrapping_mul(64) + s as u64));
            f.track_writes(true);
            f
        })
        .collect();
    let opts = AssembleOptions {
        faults: paths.iter().cloned().map(Some).zip(faults.iter().cloned()).collect(),
        ..AssembleOptions::default()
    };
    if before_assembly {
        mark_superblocks(&paths, &spec, 0);
    }
    let asm = assemble_writable(&paths, &opts).unwrap_or_else(|e| panic!("{what}: assemble: {e}"));
    assert!(!asm.degraded, "{what}: degraded at assembly: {:?}", asm.notes);
    let array = asm.array;
    assert_eq!(array.size(), model.len() as u64, "{what}: array size");
    let expect_cp = if before_assembly { 0 } else { MAX_SECTOR };
    assert_eq!(array.sync_ctl().resync_cp(), expect_cp, "{what}: checkpoint at assembly");
    if !before_assembly {
        mark_superblocks(&paths, &spec, 0);
    }

    let size = array.size();
    let stripe = cfg.stripe_bytes();
    let planned = 6 + rng.below(30);
    let flush_every = 1 + rng.below(6);
    let cut_after = 1 + rng.below(planned);
    let mut current = model;
    let mut durable = current.clone();
    let mut unflushed: Vec<(u64, Vec<u8>)> = Vec::new();
    for i in 0..cut_after {
        let (off, len) = random_range(&mut rng, size, stripe, mode == CutMode::Lost);
        let data = rng.bytes(len as usize);
        array.write_at(off, &data).unwrap_or_else(|e| panic!("{what}: write {i} at {off} len {len}: {e}"));
        current[off as usize..(off + len) as usize].copy_from_slice(&data);
        unflushed.push((off, data));
        totals.writes += 1;
        if (i + 1) % flush_every == 0 {
            array.flush().unwrap_or_else(|e| panic!("{what}: flush after write {i}: {e}"));
            durable.copy_from_slice(&current);
            unflushed.clear();
            totals.flushes += 1;
            for (s, f) in faults.iter().enumerate() {
                assert_eq!(f.unflushed_writes(), 0, "{what}: slot {s}: undo log after a flush");
            }
        }
    }
    assert_eq!(array.missing(), 0, "{what}: a member failed during the workload");

    // The cut: every member at once, no write in flight.
    for (s, f) in faults.iter().enumerate() {
        let r = f.power_cut(mode).unwrap_or_else(|e| panic!("{what}: power cut of slot {s}: {e}"));
        totals.cut.writes += r.writes;
        totals.cut.writes_undone += r.writes_undone;
        totals.cut.sectors_undone += r.sectors_undone;
        totals.cut.sectors_kept += r.sectors_kept;
    }
    drop(array);
    for f in &faults {
        f.track_writes(false);
        f.revive();
    }

    // Re-assembly: dirty, so the sync thread resyncs by itself.
    let asm = assemble_writable(&paths, &opts).unwrap_or_else(|e| panic!("{what}: re-assemble: {e}"));
    assert!(!asm.degraded, "{what}: degraded at re-assembly: {:?}", asm.notes);
    let array = Arc::new(asm.array);
    assert_eq!(array.sb.resync_offset, 0, "{what}: superblock not dirty after the cut");
    let ctl = Arc::clone(array.sync_ctl());
    let checks = Checks::watch(&ctl);
    // Frozen, so that a check sees the array as the cut left it.
    ctl.store_action(b"frozen").expect("store frozen");
    let thread = md::sync::spawn(Arc::clone(&array)).expect("spawn the sync thread");
    let before = checks.run(&array, &format!("{what}: before resync"));
    totals.mismatches_before += before;
    totals.seeds_mismatched += u64::from(before > 0);
    if mode == CutMode::Lost {
        assert_eq!(before, 0, "{what}: mismatches after a cut that lost every unflushed write");
    }
    wait_for(&array, &format!("{what}: resync"), || {
        ctl.resync_cp() == MAX_SECTOR && ctl.action() == SyncAction::Idle
    });
    assert_eq!(array.missing(), 0, "{what}: a member failed during the resync");
    let after = checks.run(&array, &format!("{what}: after resync"));
    assert_eq!(after, 0, "{what}: check after the resync counts {after} mismatched sectors");
    ctl.shutdown();
    thread.join().expect("sync thread panicked");
    let got = read_all(&array, &what);
    totals.unflushed_kept += check_bytes(&got, &durable, &unflushed, &what);
    if mode == CutMode::Lost && got != durable {
        let first = got.iter().zip(&durable).position(|(a, b)| a != b).unwrap_or(0);
        let count = got.iter().zip(&durable).filter(|(a, b)| a != b).count();
        let covering: Vec<(u64, usize)> = unflushed
            .iter()
            .filter(|(o, d)| (*o..*o + d.len() as u64).contains(&(first as u64)))
            .map(|(o, d)| (*o, d.len()))
            .collect();
        panic!(
            "{what}: a Lost cut left {count} byte(s) other than the flushed ones, first at array byte \
             {first} (unflushed writes there, offset and length: {covering:?}; all unflushed: {:?})",
            unflushed.iter().map(|(o, d)| (*o, d.len())).collect::<Vec<_>>()
        );
    }
    if array.personality.parity_shape().is_some() {
        // The parity reference of the tests (xor, GF(2^8) written there)
        // over what the array now holds.
        check_parity(&*array.personality, &synth_map(&paths, &spec, &[]), &got, None, &what);
    }
    drop(array);
    for f in &faults {
        assert!(!f.is_dead(), "{what}: injector dead after revive");
    }

    // Clean shutdown, then a degraded read-only assembly must rebuild the
    // same bytes.
    mark_superblocks(&paths, &spec, MAX_SECTOR);
    let lose = 1 + rng.below(cfg.redundancy as u64) as usize;
    let mut gone: Vec<usize> = Vec::new();
    while gone.len() < lose {
        let s = rng.below(cfg.disks as u64) as usize;
        if !gone.contains(&s) {
            gone.push(s);
        }
    }
    gone.sort_unstable();
    let ro = assemble(&without(&paths, &gone), &AssembleOptions::default())
        .unwrap_or_else(|e| panic!("{what}: read-only assembly without slots {gone:?}: {e}"));
    assert!(ro.degraded, "{what}: assembly without slots {gone:?} not degraded");
    let rebuilt = read_all(&ro.array, &format!("{what}: without slots {gone:?}"));
    if rebuilt != got {
        let first = rebuilt.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(0);
        let count = rebuilt.iter().zip(&got).filter(|(a, b)| a != b).count();
        panic!(
            "{what}: read without slots {gone:?} differs from the whole array in {count} byte(s), first at \
             array byte {first}: redundancy not right after the resync"
        );
    }
    totals.seeds += 1;
    totals.torn += u64::from(mode == CutMode::Torn);
}

/// Runs every seed of `cfg` (or only `POWER_CUT_SEED`) and prints a
/// summary; with every seed run, checks that the cuts did tear writes.
fn run(cfg: Config) {
    let only: Option<u64> = std::env::var("POWER_CUT_SEED")
        .ok()
        .map(|s| s.trim().parse().unwrap_or_else(|_| panic!("POWER_CUT_SEED={s:?} is not a number")));
    let seeds: Vec<u64> = match only {
        Some(s) => vec![s],
        None => (0..SEEDS).collect(),
    };
    let mut t = Totals::default();
    for &seed in &seeds {
        one_seed(&cfg, seed, &mut t);
    }
    eprintln!(
        "power_cut {}: {} seeds ({} torn), {} writes, {} flushes; cuts: {} unflushed member writes, {} \
         partly undone, {} sectors undone, {} kept; check before resync: {} sectors in {} seeds; {} \
         unflushed bytes kept",
        cfg.name,
        t.seeds,
        t.torn,
        t.writes,
        t.flushes,
        t.cut.writes,
        t.cut.writes_undone,
        t.cut.sectors_undone,
        t.cut.sectors_kept,
        t.mismatches_before,
        t.seeds_mismatched,
        t.unflushed_kept
    );
    if only.is_none() {
        // Not vacuous: the cuts undid and kept sectors, and left
        // redundancy for the resync to put right.
        assert!(t.cut.sectors_undone > 0 && t.cut.sectors_kept > 0, "{}: the cuts tore nothing", cfg.name);
        assert!(t.seeds_mismatched > 0, "{}: no cut left a mismatch for the resync", cfg.name);
    }
}

#[test]
fn raid1_power_cuts() {
    run(Config { name: "raid1", level: Level::Raid1, layout: 0, disks: 2, redundancy: 1 });
}

#[test]
fn raid4_power_cuts() {
    run(Config { name: "raid4", level: Level::Raid4, layout: 0, disks: 3, redundancy: 1 });
}

#[test]
fn raid5_left_symmetric_power_cuts() {
    run(Config { name: "raid5-left-symmetric", level: Level::Raid5, layout: 2, disks: 4, redundancy: 1 });
}

#[test]
fn raid5_right_asymmetric_power_cuts() {
    run(Config { name: "raid5-right-asymmetric", level: Level::Raid5, layout: 1, disks: 4, redundancy: 1 });
}

#[test]
fn raid6_power_cuts() {
    run(Config { name: "raid6", level: Level::Raid6, layout: 2, disks: 5, redundancy: 2 });
}

#[test]
fn raid10_near2_power_cuts() {
    run(Config { name: "raid10-near2", level: Level::Raid10, layout: 0x102, disks: 4, redundancy: 1 });
}
