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
//! With md's write-intent bitmap (raid1, raid5 left-symmetric, raid6; 50
//! seeds each): the array is made by `md::create` with an internal bitmap
//! of 64 KiB chunks (one bit per stripe row, 64 in all; the synthetic
//! builder makes none), filled with the pattern, its bits cleared. Most
//! writes go to a few hot rows, so that many find their bit already set
//! (the area write that sets a bit flushes every member: the writes
//! before it count as flushed), and the daemon's clearing pass runs, once
//! or twice in a row, at random points. At the cut every member holds the
//! same bits, as the array has them, and every write since the last flush
//! lies in chunks whose bit is set; the cut does not change them. Before
//! the resync, every chunk whose bit is clear holds exactly the flushed
//! data with its parity (or mirror copy) right; the resync processes
//! exactly the dirty chunks (`synced_units`); then every check above.
//! `raid5_bitmap_clear_after_data` cuts the power during a clearing
//! pass's flush (it failed until the pass flushed the members before
//! writing cleared bits).
//!
//! A failure names the level, layout and seed; `POWER_CUT_SEED=N` runs
//! only seed N (`POWER_CUT_SEED=17 cargo test -p md --test power_cut
//! raid6`).

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockio::fault::{CutMode, CutReport, Faults};
use common::{
    bitmap_area, build_synth, check_parity, create_with_bitmap, dirty_chunks, mark_resync_offset, member_map,
    set_resync_offset, synth_map, Scratch,
};
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
/// Data area of every member of the bitmap configurations: 64 bitmap
/// chunks of [`BITMAP_CHUNK_KIB`] (per-member sectors: one stripe row
/// each for raid5/6).
const BITMAP_DATA_BYTES: u64 = 4 * MIB;
/// The bitmap chunk of the bitmap configurations (the array's chunk: one
/// bit per stripe row, so a resync's count of processed rows is exact).
const BITMAP_CHUNK_KIB: u64 = 64;
/// Stripe rows (whole chunks for raid1) of the bitmap configurations' hot
/// region.
const HOT_ROWS: u64 = 3;
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
    /// Made by `md::create` with an internal write-intent bitmap (chunks
    /// of [`BITMAP_CHUNK_KIB`], members of [`BITMAP_DATA_BYTES`]) instead
    /// of by the synthetic builder, whose arrays have none.
    bitmap: bool,
}

impl Config {
    /// The synthetic array (configurations without a bitmap).
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
    /// Bitmap configurations: writes whose bit-setting area write flushed
    /// the members (so the writes before it became durable), clearing
    /// area writes of the workload's daemon passes, bits set on disk at
    /// the cuts and bits in all, seeds whose resync covered less than
    /// the whole array, and sync units the resyncs processed.
    bm_set_flushes: u64,
    bm_clear_writes: u64,
    bm_dirty: u64,
    bm_chunks: u64,
    bm_seeds_partial: u64,
    bm_synced_units: u64,
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

/// The member images of a bitmap configuration, made once and copied for
/// every seed: created by `md::create` (`--assume-clean`, bitmap chunks
/// of [`BITMAP_CHUNK_KIB`]), filled with the fixtures' pattern (id 1)
/// through the array, flushed, and every bit cleared by two idle daemon
/// passes; superblocks clean.
struct Template {
    dir: Scratch,
    paths: Vec<PathBuf>,
    model: Vec<u8>,
}

impl Template {
    fn new(cfg: &Config) -> Template {
        let what = format!("{} template", cfg.name);
        let dir = Scratch(std::env::temp_dir().join(format!(
            "umd-pcut-{}-{}-template",
            std::process::id(),
            cfg.name
        )));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).expect("create temp dir");
        let paths =
            create_with_bitmap(&dir.0, cfg.level, cfg.disks, MIB + BITMAP_DATA_BYTES, BITMAP_CHUNK_KIB, true);
        let asm = assemble_writable(&paths, &AssembleOptions::default())
            .unwrap_or_else(|e| panic!("{what}: assemble: {e}"));
        let array = asm.array;
        let g = array.personality.geometry();
        assert_eq!(
            (g.level, g.layout, g.raid_disks as usize),
            (cfg.level, cfg.layout, cfg.disks),
            "{what}: geometry"
        );
        assert_eq!(array.sb.data_offset * 512, MIB, "{what}: data offset");
        let mut model = vec![0u8; array.size() as usize];
        md::synth::pattern_fill(0, 1, &mut model);
        array.write_at(0, &model).unwrap_or_else(|e| panic!("{what}: fill: {e}"));
        array.flush().unwrap_or_else(|e| panic!("{what}: flush: {e}"));
        let bm = array.bitmap().expect("bitmap loaded").clone();
        assert_eq!(bm.chunk_units() * 512, BITMAP_CHUNK_KIB * KIB, "{what}: bitmap chunk");
        assert_eq!(bm.chunks() * BITMAP_CHUNK_KIB * KIB, BITMAP_DATA_BYTES, "{what}: bits");
        assert_eq!(bm.stats().dirty, bm.chunks(), "{what}: the fill sets every bit");
        for _ in 0..2 {
            bm.daemon_pass(&array.slots, array.health(), false, true).expect("daemon pass");
        }
        drop(array);
        for p in &paths {
            let (_, bits) = bitmap_area(p);
            assert!(dirty_chunks(&bits).is_empty(), "{what}: bits left on {}", p.display());
        }
        Template { dir, paths, model }
    }

    /// Copies of the images for one seed, in their own directory.
    fn copy(&self, tag: &str) -> (Scratch, Vec<PathBuf>, Vec<u8>) {
        let dir = Scratch(self.dir.0.with_file_name(format!("umd-pcut-{}-{tag}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).expect("create temp dir");
        let paths: Vec<PathBuf> = self
            .paths
            .iter()
            .map(|p| {
                let to = dir.0.join(p.file_name().expect("image name"));
                std::fs::copy(p, &to).expect("copy member image");
                to
            })
            .collect();
        (dir, paths, self.model.clone())
    }
}

/// The bitmap chunks the sync units `[u0, u1)` fall in.
fn chunks_of((u0, u1): (u64, u64), chunk_units: u64) -> std::ops::Range<u64> {
    u0 / chunk_units..u1.div_ceil(chunk_units)
}

/// What the bitmap promises at a cut, checked on the images before any
/// resync: every chunk whose bit is clear on disk holds exactly the flushed
/// data (`durable`), with its redundancy right — raid4/5/6: each stripe
/// row of such a chunk, data and P (and Q), by the tests' parity
/// reference; mirrors: every copy — so a resync may skip it.
fn check_clean_chunks(array: &Array, paths: &[PathBuf], bits: &[bool], durable: &[u8], what: &str) {
    let cu = array.bitmap().expect("bitmap").chunk_units();
    let data_offset = array.sb.data_offset * 512;
    let what = format!("{what}: a chunk whose bit was clear at the cut, before the resync");
    match array.personality.parity_shape() {
        Some(shape) => {
            let unit = shape.chunk_bytes / 512;
            let rows: Vec<u64> = (0..shape.stripes).filter(|r| !bits[(r * unit / cu) as usize]).collect();
            if !rows.is_empty() {
                check_parity(
                    &*array.personality,
                    &member_map(paths, data_offset),
                    durable,
                    Some(&rows),
                    &what,
                );
            }
        }
        None => {
            assert_eq!(array.personality.geometry().level, Level::Raid1, "{what}: mirrors here are raid1");
            let files: Vec<File> = paths.iter().map(|p| File::open(p).expect("open member image")).collect();
            let bytes = cu * 512;
            let mut buf = vec![0u8; bytes as usize];
            for c in (0..bits.len() as u64).filter(|&c| !bits[c as usize]) {
                let (a, b) = (c * bytes, ((c + 1) * bytes).min(durable.len() as u64));
                let buf = &mut buf[..(b - a) as usize];
                for (slot, f) in files.iter().enumerate() {
                    f.read_exact_at(buf, data_offset + a).expect("read member image");
                    if let Some(i) =
                        buf.iter().zip(&durable[a as usize..b as usize]).position(|(x, y)| x != y)
                    {
                        panic!(
                            "{what}: chunk {c}, slot {slot}: array byte {} is {:#04x} on disk, {:#04x} was flushed",
                            a + i as u64,
                            buf[i],
                            durable[a as usize + i]
                        );
                    }
                }
            }
        }
    }
}

/// One seed: build, mark dirty, write, cut, re-assemble, resync, check.
/// With a bitmap (`template`), also: daemon passes at random points of the
/// workload; at the cut, no write since the last flush in a chunk whose
/// bit is clear on disk, and those chunks hold the flushed data with
/// their redundancy right; the resync processes exactly the dirty chunks.
fn one_seed(cfg: &Config, template: Option<&Template>, seed: u64, totals: &mut Totals) {
    let what = format!("{} seed {seed}", cfg.name);
    let _failing = Failing(&what);
    let spec = cfg.spec();
    let (_dir, paths, model) = match template {
        Some(t) => t.copy(&format!("{}-{seed}", cfg.name)),
        None => build_synth("umd-pcut", &format!("{}-{seed}", cfg.name), &spec),
    };
    // Superblocks marked on the images (`resync_offset`).
    let mark = |offset: u64| {
        if cfg.bitmap {
            mark_resync_offset(&paths, offset);
        } else {
            mark_superblocks(&paths, &spec, offset);
        }
    };
    let mut rng = Rng::new(
        seed ^ ((cfg.level.to_md() as u64) << 32)
            ^ (u64::from(cfg.layout) << 40)
            ^ (u64::from(cfg.bitmap) << 48),
    );
    let mode = if seed % 5 == 4 { CutMode::Lost } else { CutMode::Torn };
    let before_assembly = seed.is_multiple_of(2);

    // Write phase: every member tracked.
    let (faults, opts) = tracked(&paths, seed);
    if before_assembly {
        mark(0);
    }
    let asm = assemble_writable(&paths, &opts).unwrap_or_else(|e| panic!("{what}: assemble: {e}"));
    assert!(!asm.degraded, "{what}: degraded at assembly: {:?}", asm.notes);
    let array = asm.array;
    assert_eq!(array.size(), model.len() as u64, "{what}: array size");
    let expect_cp = if before_assembly { 0 } else { MAX_SECTOR };
    assert_eq!(array.sync_ctl().resync_cp(), expect_cp, "{what}: checkpoint at assembly");
    if !before_assembly {
        mark(0);
    }
    let bm = array.bitmap().cloned();
    assert_eq!(bm.is_some(), cfg.bitmap, "{what}: bitmap loaded");

    let size = array.size();
    let stripe = cfg.stripe_bytes();
    let planned = 6 + rng.below(30);
    let flush_every = 1 + rng.below(6);
    let cut_after = 1 + rng.below(planned);
    let hot = cfg.bitmap.then(|| rng.below(size / stripe - HOT_ROWS + 1) * stripe);
    let mut current = model;
    let mut durable = current.clone();
    let mut unflushed: Vec<(u64, Vec<u8>)> = Vec::new();
    for i in 0..cut_after {
        let (off, len) = match hot {
            // Most writes of a bitmap configuration go to a few stripe
            // rows, so that many find their bits already set: only those
            // stay unflushed (the area write that sets a bit flushes the
            // members).
            Some(base) if rng.below(4) != 0 => {
                let (off, len) = random_range(&mut rng, HOT_ROWS * stripe, stripe, mode == CutMode::Lost);
                (base + off, len)
            }
            _ => random_range(&mut rng, size, stripe, mode == CutMode::Lost),
        };
        let data = rng.bytes(len as usize);
        let set_writes = bm.as_ref().map(|b| b.stats().set_writes);
        array.write_at(off, &data).unwrap_or_else(|e| panic!("{what}: write {i} at {off} len {len}: {e}"));
        if bm.as_ref().map(|b| b.stats().set_writes) != set_writes {
            // The area write that set this write's bits flushed every
            // member before its data went out: what was written before is
            // durable.
            durable.copy_from_slice(&current);
            unflushed.clear();
            totals.bm_set_flushes += 1;
        }
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
        // md's bitmap daemon, now and then once or twice in a row (two
        // idle passes clear a chunk's bit).
        if let Some(b) = bm.as_ref().filter(|_| rng.below(5) == 0) {
            for _ in 0..1 + rng.below(2) {
                let cleared = b.stats().clear_writes;
                b.daemon_pass(&array.slots, array.health(), false, true)
                    .unwrap_or_else(|e| panic!("{what}: daemon pass after write {i}: {e}"));
                if b.stats().clear_writes != cleared {
                    // The clearing area write flushed every member.
                    for (s, f) in faults.iter().enumerate() {
                        assert_eq!(
                            f.unflushed_writes(),
                            0,
                            "{what}: slot {s}: undo log after a clearing pass"
                        );
                    }
                    durable.copy_from_slice(&current);
                    unflushed.clear();
                    totals.bm_clear_writes += 1;
                }
            }
        }
    }
    assert_eq!(array.missing(), 0, "{what}: a member failed during the workload");

    // The bits on disk at the cut (the area is written flushed: the cut
    // cannot change it): the same on every member, as the array has them,
    // and set for every chunk a write since the last flush touched.
    let cut_bits: Option<Vec<bool>> = bm.as_ref().map(|b| {
        let (_, bits) = bitmap_area(&paths[0]);
        for p in &paths[1..] {
            assert_eq!(bitmap_area(p).1, bits, "{what}: {} holds other bits than {}", p.display(), paths[0].display());
        }
        assert_eq!(dirty_chunks(&bits).len() as u64, b.stats().dirty, "{what}: bits on disk vs in memory");
        for (off, data) in &unflushed {
            for c in chunks_of(array.sync_units(*off, data.len()), b.chunk_units()) {
                assert!(
                    bits[c as usize],
                    "{what}: the write at array byte {off}, {} bytes (since the last flush), touches bitmap chunk \
                     {c}, whose bit is clear on disk at the cut: a resync would miss it",
                    data.len()
                );
            }
        }
        bits
    });
    drop(bm);

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
    if let Some(bits) = &cut_bits {
        for p in &paths {
            assert_eq!(&bitmap_area(p).1, bits, "{what}: {}: the cut changed the bitmap", p.display());
        }
    }

    // Re-assembly: dirty, so the sync thread resyncs by itself.
    let asm = assemble_writable(&paths, &opts).unwrap_or_else(|e| panic!("{what}: re-assemble: {e}"));
    assert!(!asm.degraded, "{what}: degraded at re-assembly: {:?}", asm.notes);
    let array = Arc::new(asm.array);
    assert_eq!(array.sb.resync_offset, 0, "{what}: superblock not dirty after the cut");
    let ctl = Arc::clone(array.sync_ctl());
    if let Some(bits) = &cut_bits {
        let dirty = dirty_chunks(bits).len() as u64;
        let bm = array.bitmap().expect("bitmap loaded again");
        assert_eq!(bm.stats().dirty, dirty, "{what}: bits loaded at re-assembly vs on disk");
        check_clean_chunks(&array, &paths, bits, &durable, &what);
    }
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
    if let Some(bits) = &cut_bits {
        let dirty = dirty_chunks(bits);
        let cu = array.bitmap().expect("bitmap").chunk_units();
        let synced = ctl.synced_units();
        assert_eq!(
            synced,
            dirty.len() as u64 * cu,
            "{what}: the resync processed {synced} sync units; the {} chunks dirty at the cut ({dirty:?}) are {} \
             ({cu} per chunk)",
            dirty.len(),
            dirty.len() as u64 * cu
        );
        totals.bm_dirty += dirty.len() as u64;
        totals.bm_chunks += bits.len() as u64;
        totals.bm_seeds_partial += u64::from(dirty.len() < bits.len());
        totals.bm_synced_units += synced;
    }
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
        let map = match cfg.bitmap {
            true => member_map(&paths, array.sb.data_offset * 512),
            false => synth_map(&paths, &spec, &[]),
        };
        check_parity(&*array.personality, &map, &got, None, &what);
    }
    drop(array);
    for f in &faults {
        assert!(!f.is_dead(), "{what}: injector dead after revive");
    }

    // Clean shutdown, then a degraded read-only assembly must rebuild the
    // same bytes.
    mark(MAX_SECTOR);
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
    let template = cfg.bitmap.then(|| Template::new(&cfg));
    let mut t = Totals::default();
    for &seed in &seeds {
        one_seed(&cfg, template.as_ref(), seed, &mut t);
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
    if cfg.bitmap {
        eprintln!(
            "power_cut {}: bitmap: {} of {} bits dirty at the cuts, resync of less than the whole array in {} \
             seeds, {} sync units resynced; {} bit-setting area writes flushed earlier writes, {} clearing \
             area writes",
            cfg.name,
            t.bm_dirty,
            t.bm_chunks,
            t.bm_seeds_partial,
            t.bm_synced_units,
            t.bm_set_flushes,
            t.bm_clear_writes
        );
        if only.is_none() {
            // Not vacuous: bits were cleared during the workloads, and most
            // resyncs skipped clean chunks.
            assert!(t.bm_clear_writes > 0, "{}: no daemon pass cleared a bit", cfg.name);
            assert!(
                t.bm_seeds_partial * 10 >= t.seeds * 9,
                "{}: only {} of {} resyncs covered less than the whole array",
                cfg.name,
                t.bm_seeds_partial,
                t.seeds
            );
        }
    }
}

#[test]
fn raid1_power_cuts() {
    run(Config { name: "raid1", level: Level::Raid1, layout: 0, disks: 2, redundancy: 1, bitmap: false });
}

#[test]
fn raid4_power_cuts() {
    run(Config { name: "raid4", level: Level::Raid4, layout: 0, disks: 3, redundancy: 1, bitmap: false });
}

#[test]
fn raid5_left_symmetric_power_cuts() {
    run(Config {
        name: "raid5-left-symmetric",
        level: Level::Raid5,
        layout: 2,
        disks: 4,
        redundancy: 1,
        bitmap: false,
    });
}

#[test]
fn raid5_right_asymmetric_power_cuts() {
    run(Config {
        name: "raid5-right-asymmetric",
        level: Level::Raid5,
        layout: 1,
        disks: 4,
        redundancy: 1,
        bitmap: false,
    });
}

#[test]
fn raid6_power_cuts() {
    run(Config { name: "raid6", level: Level::Raid6, layout: 2, disks: 5, redundancy: 2, bitmap: false });
}

#[test]
fn raid10_near2_power_cuts() {
    run(Config {
        name: "raid10-near2",
        level: Level::Raid10,
        layout: 0x102,
        disks: 4,
        redundancy: 1,
        bitmap: false,
    });
}

#[test]
fn raid1_bitmap_power_cuts() {
    run(Config {
        name: "raid1-bitmap",
        level: Level::Raid1,
        layout: 0,
        disks: 2,
        redundancy: 1,
        bitmap: true,
    });
}

#[test]
fn raid5_left_symmetric_bitmap_power_cuts() {
    run(Config {
        name: "raid5-left-symmetric-bitmap",
        level: Level::Raid5,
        layout: 2,
        disks: 4,
        redundancy: 1,
        bitmap: true,
    });
}

#[test]
fn raid6_bitmap_power_cuts() {
    run(Config {
        name: "raid6-bitmap",
        level: Level::Raid6,
        layout: 2,
        disks: 5,
        redundancy: 2,
        bitmap: true,
    });
}

/// The order of a clearing bitmap write against the data it stops
/// covering: md writes bitmap pages with `REQ_PREFLUSH | REQ_FUA`
/// (`md_super_write`), so a chunk's completed data writes are on the
/// medium before its cleared bit can be. Here the power goes while the
/// clearing pass's flush of the first member is under way (a flush
/// latency holds it): the cleared area and the chunk's unflushed data are
/// both in the members' caches, and a torn cut may keep the one and lose
/// the other. Every chunk whose bit is clear on disk must still have its
/// redundancy right, so that the resync may skip it: after the resync,
/// `check` must count 0.
#[test]
fn raid5_bitmap_clear_after_data() {
    let cfg = Config {
        name: "raid5-clear-order",
        level: Level::Raid5,
        layout: 2,
        disks: 4,
        redundancy: 1,
        bitmap: true,
    };
    let template = Template::new(&cfg);
    let mut failed = Vec::new();
    for seed in 0..20u64 {
        let what = format!("{} seed {seed}", cfg.name);
        let (_dir, paths, _model) = template.copy(&format!("{}-{seed}", cfg.name));
        let (faults, opts) = tracked(&paths, seed);
        mark_resync_offset(&paths, 0);
        let array = Arc::new(
            assemble_writable(&paths, &opts).unwrap_or_else(|e| panic!("{what}: assemble: {e}")).array,
        );
        let bm = array.bitmap().expect("bitmap").clone();
        // Row 7: a 4 KiB write (read-modify-write of one data chunk and P).
        let row = 7;
        array.write_at(row * cfg.stripe_bytes() + 8192, &[0xa5; 4096]).expect("write");
        bm.daemon_pass(&array.slots, array.health(), false, true).expect("first pass");
        assert_eq!(bm.stats().dirty, 1, "{what}: one bit");
        for f in &faults {
            f.set_latency(blockio::fault::Ops::Flush, Duration::from_millis(300));
        }
        let (a2, bm2) = (Arc::clone(&array), Arc::clone(&bm));
        let pass = std::thread::spawn(move || {
            let _ = bm2.daemon_pass(&a2.slots, a2.health(), false, true);
        });
        std::thread::sleep(Duration::from_millis(100));
        for f in &faults {
            f.power_cut(CutMode::Torn).expect("cut");
        }
        pass.join().expect("pass thread");
        drop(bm);
        drop(array);
        for f in &faults {
            f.set_latency(blockio::fault::Ops::Flush, Duration::ZERO);
            f.track_writes(false);
            f.revive();
        }
        let (_, bits) = bitmap_area(&paths[0]);
        let asm = assemble_writable(&paths, &AssembleOptions::default()).expect("re-assemble");
        let array = Arc::new(asm.array);
        let ctl = Arc::clone(array.sync_ctl());
        let thread = md::sync::spawn(Arc::clone(&array)).expect("sync thread");
        wait_for(&array, &format!("{what}: resync"), || {
            ctl.resync_cp() == MAX_SECTOR && ctl.action() == SyncAction::Idle
        });
        let synced = ctl.synced_units();
        let checks = Checks::watch(&ctl);
        let n = checks.run(&array, &what);
        ctl.shutdown();
        thread.join().expect("sync thread");
        if n > 0 {
            failed.push(format!(
                "seed {seed}: bit of row {row} {} on disk, resync processed {} units, check then counts {n}",
                if bits[row as usize] { "set" } else { "clear" },
                synced
            ));
        }
    }
    assert!(failed.is_empty(), "a cleared bit reached the disk before its chunk's data: {failed:#?}");
}

/// One fault injector per member, seeded from `seed`, tracking writes (the
/// undo log a power cut uses), and the assembly options that attach them.
fn tracked(paths: &[std::path::PathBuf], seed: u64) -> (Vec<Arc<Faults>>, AssembleOptions) {
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
    (faults, opts)
}
