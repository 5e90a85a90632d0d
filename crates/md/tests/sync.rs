//! md's sync thread ([`md::sync`]): resync, check and repair on synthetic
//! arrays (raid4/5/6 of several layouts, raid1, raid10 near/far/offset),
//! every outcome checked against something the sync code does not compute:
//!
//! * the array's bytes against a model (what was built plus what was
//!   written), read back through `Array::read_at`;
//! * P and Q on the member images against the parity reference of
//!   `common` (xor and GF(2^8) written there, not md's), and every mirror
//!   copy on the images against the model;
//! * member images byte for byte against snapshots (a check writes
//!   nothing; a repair restores exactly what was corrupted);
//! * mismatch counts against the number of 4 KiB pages the test corrupted
//!   (8 sectors each);
//! * checkpoints against which rows the images show rewritten.
//!
//! Nothing here depends on timing: a run is slowed with `sync_speed_max`
//! only so that it can be interrupted, and state is polled with generous
//! timeouts.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blockio::fault::{Faults, Ops, Rule, Trigger};
use common::{
    build_synth, check_model, check_parity, pspec, set_resync_offset, snapshot, snapshot_from, synth_map,
    Scratch, DATA_OFFSET,
};
use md::superblock::MAX_SECTOR;
use md::sync::{Changed, SyncAction, SyncCtl};
use md::synth::{Rng, Spec};
use md::{assemble_writable, Array, AssembleOptions, Level, Personality};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// How long any awaited state may take to show (generous: the machine may
/// be busy with other tests).
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A synthetic array on member images, its model and its layout.
struct Fx {
    tag: String,
    spec: Spec,
    paths: Vec<PathBuf>,
    /// The array's bytes as they must read.
    model: Vec<u8>,
    /// The layout, built from the spec (not the assembled array's).
    pers: Box<dyn Personality>,
    /// The members' data areas as built (consistent redundancy).
    clean: Vec<Vec<u8>>,
    _dir: Scratch,
}

impl Fx {
    fn new(tag: &str, spec: Spec) -> Fx {
        Fx::new_at("umd-sync", tag, spec)
    }

    /// [`Fx::new`] in directory `prefix`-PID-`tag` (relative to the temp
    /// directory, or absolute: `/dev/shm/...` for tmpfs members, which do
    /// no direct I/O).
    fn new_at(prefix: &str, tag: &str, spec: Spec) -> Fx {
        let (dir, paths, model) = build_synth(prefix, tag, &spec);
        let pers = md::personality::build(&spec.geometry().unwrap()).unwrap();
        assert_eq!(pers.array_bytes(), model.len() as u64, "{tag}: array size");
        let clean = snapshot_from(&paths, DATA_OFFSET as usize);
        Fx { tag: tag.into(), spec, paths, model, pers, clean, _dir: dir }
    }

    fn parity(&self) -> bool {
        matches!(self.spec.level, Level::Raid4 | Level::Raid5 | Level::Raid6)
    }

    fn chunk(&self) -> u64 {
        u64::from(self.spec.chunk_sectors) * 512
    }

    /// Stripe rows (parity levels).
    fn rows(&self) -> u64 {
        self.pers.parity_shape().expect("parity level").stripes
    }

    fn files(&self) -> Vec<File> {
        self.paths.iter().map(|p| OpenOptions::new().read(true).write(true).open(p).unwrap()).collect()
    }

    /// Marks the array dirty from `sector` on (member sectors for
    /// raid4/5/6, array sectors for mirrors), as md's superblocks would.
    fn set_dirty(&self, sector: u64) {
        set_resync_offset(&self.files(), &self.spec, sector);
    }

    /// The paths of the members left in when `gone` are missing.
    fn without(&self, gone: &[usize]) -> Vec<PathBuf> {
        (0..self.paths.len()).filter(|s| !gone.contains(s)).map(|s| self.paths[s].clone()).collect()
    }

    /// Checks the redundancy on the member images against the model:
    /// every row's data, P and Q against the reference (raid4/5/6), every
    /// copy of every page (raid1/10).
    fn check_redundancy(&self, what: &str) {
        let what = format!("{}: {what}", self.tag);
        if self.parity() {
            check_parity(&*self.pers, &synth_map(&self.paths, &self.spec, &[]), &self.model, None, &what);
        } else {
            check_copies(&*self.pers, &self.paths, &self.model, &what);
        }
    }

    /// Checks the parity of stripe rows `rows` only.
    fn check_rows(&self, rows: &[u64], what: &str) {
        let what = format!("{}: {what}", self.tag);
        check_parity(&*self.pers, &synth_map(&self.paths, &self.spec, &[]), &self.model, Some(rows), &what);
    }

    /// The data areas now equal the clean build byte for byte.
    fn assert_clean(&self, what: &str) {
        let now = snapshot_from(&self.paths, DATA_OFFSET as usize);
        for (slot, (a, b)) in now.iter().zip(&self.clean).enumerate() {
            if a != b {
                let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap();
                panic!("{}: {what}: member {slot} data area byte {i} differs from the clean build", self.tag);
            }
        }
    }
}

/// Every copy of every 4 KiB page of the array, on the member images,
/// equals the model (the personality's `locate` names the copies).
fn check_copies(pers: &dyn Personality, paths: &[PathBuf], model: &[u8], what: &str) {
    let files: Vec<File> = paths.iter().map(|p| File::open(p).unwrap()).collect();
    let mut page = vec![0u8; PAGE as usize];
    for off in (0..model.len() as u64).step_by(PAGE as usize) {
        let want = &model[off as usize..(off + PAGE) as usize];
        let locs = pers.locate(off);
        assert!(locs.len() >= 2, "{what}: array byte {off} has {} copies", locs.len());
        for l in locs {
            files[l.slot].read_exact_at(&mut page, DATA_OFFSET + l.offset).unwrap();
            if page != want {
                let i = page.iter().zip(want).position(|(a, b)| a != b).unwrap();
                panic!(
                    "{what}: array page at {off}: the copy on slot {} (member byte {}) differs at byte {i}",
                    l.slot, l.offset
                );
            }
        }
    }
}

/// Corrupts the 4 KiB page at member byte `off` of `f`'s data area (a
/// whole page of junk, or one byte changed); returns nothing but
/// guarantees the page differs.
fn corrupt_page(f: &File, off: u64, rng: &mut Rng) {
    assert_eq!(off % PAGE, 0);
    let at = DATA_OFFSET + off;
    let mut page = vec![0u8; PAGE as usize];
    f.read_exact_at(&mut page, at).unwrap();
    let orig = page.clone();
    match rng.below(3) {
        0 => rng.fill(&mut page),
        1 => page[rng.below(PAGE) as usize] ^= rng.below(255) as u8 + 1,
        _ => page[PAGE as usize - 1] ^= 0x80,
    }
    if page == orig {
        page[0] ^= 1;
    }
    f.write_all_at(&page, at).unwrap();
}

/// Corrupts `k` distinct pages of redundancy: P (and Q) pages of random
/// rows for raid4/5/6; for mirrors, pages of a copy that is not the first
/// (the one sync compares the others against: lowest member offset, then
/// lowest slot). Only rows (parity) or array bytes (mirrors) in `within`
/// are touched. Returns the pages as (slot, member offset), sorted.
fn corrupt_redundancy(fx: &Fx, k: usize, within: std::ops::Range<u64>, seed: u64) -> Vec<(usize, u64)> {
    let files = fx.files();
    let mut rng = Rng::new(seed);
    let mut pages: Vec<(usize, u64)> = Vec::new();
    let mut tries = 0;
    while pages.len() < k {
        tries += 1;
        assert!(tries < 100_000, "{}: cannot place {k} pages in {within:?}", fx.tag);
        let target = if fx.parity() {
            let row = within.start + rng.below(within.end - within.start);
            let lay = fx.pers.syndrome_layout(row * fx.chunk()).unwrap();
            let slot = match lay.q {
                Some(q) if rng.below(2) == 0 => q,
                _ => lay.p,
            };
            (slot, row * fx.chunk() + rng.below(fx.chunk() / PAGE) * PAGE)
        } else {
            let off = (within.start + rng.below(within.end - within.start)) / PAGE * PAGE;
            let mut locs = fx.pers.locate(off);
            locs.sort_by_key(|l| (l.offset, l.slot));
            let l = locs[1 + rng.below(locs.len() as u64 - 1) as usize];
            (l.slot, l.offset)
        };
        if !pages.contains(&target) {
            pages.push(target);
        }
    }
    for &(slot, off) in &pages {
        corrupt_page(&files[slot], off, &mut rng);
    }
    for f in &files {
        f.sync_all().unwrap();
    }
    pages.sort_unstable();
    pages
}

// ---------------------------------------------------------------------------
// The running array
// ---------------------------------------------------------------------------

/// An assembled writable array with its sync thread; dropping it shuts the
/// thread down and joins it.
struct Running {
    array: Arc<Array>,
    thread: Option<JoinHandle<()>>,
    faults: Vec<Arc<Faults>>,
}

impl Running {
    fn ctl(&self) -> &Arc<SyncCtl> {
        self.array.sync_ctl()
    }

    /// Shuts the thread down and joins it, failing if it does not end in
    /// time.
    fn stop(&mut self) {
        self.ctl().shutdown();
        if let Some(t) = self.thread.take() {
            wait_for("the sync thread to end after shutdown", || t.is_finished());
            t.join().expect("sync thread panicked");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.ctl().shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Assembles `paths` writable (each member with a fault injector, no
/// rules), lets `before` set the sync state up, then starts the sync
/// thread.
fn start(paths: &[PathBuf], before: impl FnOnce(&Arc<SyncCtl>)) -> Running {
    start_opts(paths, false, before)
}

/// [`start`], forced (md's `--force`: a dirty degraded array).
fn start_opts(paths: &[PathBuf], force: bool, before: impl FnOnce(&Arc<SyncCtl>)) -> Running {
    let faults: Vec<Arc<Faults>> = (0..paths.len()).map(|i| Arc::new(Faults::new(i as u64 + 1))).collect();
    let opts = AssembleOptions {
        faults: paths.iter().cloned().map(Some).zip(faults.iter().cloned()).collect(),
        force,
    };
    let asm = assemble_writable(paths, &opts).unwrap_or_else(|e| panic!("assemble_writable: {e}"));
    let array = Arc::new(asm.array);
    before(array.sync_ctl());
    let thread = md::sync::spawn(Arc::clone(&array)).expect("spawn the sync thread");
    Running { array, thread: Some(thread), faults }
}

/// Polls `cond` until it holds; fails after [`TIMEOUT`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {TIMEOUT:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the array is in sync and nothing runs.
fn wait_in_sync(ctl: &SyncCtl, what: &str) {
    wait_for(&format!("{what}: the resync to finish"), || {
        ctl.resync_cp() == MAX_SECTOR && ctl.action() == SyncAction::Idle
    });
    assert_eq!(ctl.completed(), None, "{what}: sync_completed once idle");
}

/// Stores `word` and waits for the action to return to idle; returns
/// `mismatch_cnt`.
fn run_action(ctl: &SyncCtl, word: &str, what: &str) -> u64 {
    ctl.store_action(word.as_bytes()).unwrap_or_else(|e| panic!("{what}: store {word}: errno {e}"));
    // md shows the action asked for from the store on, so `idle` means it
    // has run (and may already have ended).
    let shown = ctl.action();
    assert!(
        shown.word() == word || shown == SyncAction::Idle,
        "{what}: sync_action shows {} right after storing {word}",
        shown.word()
    );
    wait_for(&format!("{what}: {word} to end"), || ctl.action() == SyncAction::Idle);
    ctl.mismatches()
}

/// What the sync thread showed each time it started or ended a run.
#[derive(Clone, Copy, Debug)]
struct Seen {
    action: SyncAction,
    completed: Option<(u64, u64)>,
    cp: u64,
    mismatches: u64,
}

/// Records, from the sync thread's own `sync_action` notifications, what
/// `sync_action`, `sync_completed` and the checkpoint show when a run
/// starts (`completed` is `Some`) and ends (`None`).
fn log_runs(ctl: &Arc<SyncCtl>) -> Arc<Mutex<Vec<Seen>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (weak, sink) = (Arc::downgrade(ctl), Arc::clone(&log));
    ctl.set_notify(move |c| {
        if c != Changed::Action || std::thread::current().name() != Some("umd-md-sync") {
            return;
        }
        if let Some(ctl) = weak.upgrade() {
            let seen = Seen {
                action: ctl.action(),
                completed: ctl.completed(),
                cp: ctl.resync_cp(),
                mismatches: ctl.mismatches(),
            };
            sink.lock().unwrap().push(seen);
        }
    });
    log
}

fn starts(log: &Mutex<Vec<Seen>>) -> Vec<Seen> {
    log.lock().unwrap().iter().filter(|s| s.completed.is_some()).copied().collect()
}

/// Member sectors per step of a run: a chunk (parity), a 64 KiB window of
/// the array (mirrors).
fn unit(fx: &Fx) -> u64 {
    if fx.parity() {
        fx.chunk() / 512
    } else {
        md::sync::MIRROR_WINDOW / 512
    }
}

// ---------------------------------------------------------------------------
// 1. A dirty array resyncs by itself
// ---------------------------------------------------------------------------

fn parity_specs() -> Vec<(String, Spec)> {
    let mut v = Vec::new();
    for (level, layout, disks) in [
        (Level::Raid4, 0, 4),
        (Level::Raid5, 0, 4),
        (Level::Raid5, 1, 5),
        (Level::Raid5, 2, 4),
        (Level::Raid5, 3, 3),
        (Level::Raid5, 5, 4),
        (Level::Raid6, 2, 5),
        (Level::Raid6, 10, 6),
        (Level::Raid6, 17, 5),
    ] {
        v.push((format!("{level}-l{layout}-{disks}d"), pspec(level, layout, disks, 16 * KIB, 256 * KIB)));
    }
    v
}

fn mirror_specs() -> Vec<(String, Spec)> {
    vec![
        ("raid1-2d".into(), pspec(Level::Raid1, 0, 2, 0, 512 * KIB)),
        ("raid1-3d".into(), pspec(Level::Raid1, 0, 3, 0, 512 * KIB)),
        ("raid10-n2-4d".into(), pspec(Level::Raid10, 0x102, 4, 16 * KIB, 512 * KIB)),
        ("raid10-n2-3d".into(), pspec(Level::Raid10, 0x102, 3, 16 * KIB, 512 * KIB)),
        ("raid10-f2-4d".into(), pspec(Level::Raid10, 0x201, 4, 16 * KIB, 512 * KIB)),
        ("raid10-o2-4d".into(), pspec(Level::Raid10, 0x10201, 4, 16 * KIB, 512 * KIB)),
    ]
}

/// Corrupts redundancy in several places (first and last rows or pages
/// among them), marks the array dirty from 0, and starts it: the resync
/// starts by itself, finishes, and leaves every member's data area as it
/// was built, with the reference's parity / equal copies; the data reads
/// back; a check finds nothing.
fn resync_fixes(tag: &str, spec: Spec, seed: u64) {
    let fx = Fx::new(&format!("resync-{tag}"), spec);
    let size = fx.model.len() as u64;
    let mut pages = Vec::new();
    if fx.parity() {
        let rows = fx.rows();
        pages.extend(corrupt_redundancy(&fx, 1, 0..1, seed));
        pages.extend(corrupt_redundancy(&fx, 1, rows - 1..rows, seed + 1));
        pages.extend(corrupt_redundancy(&fx, 6, 0..rows, seed + 2));
    } else {
        pages.extend(corrupt_redundancy(&fx, 1, 0..PAGE, seed));
        pages.extend(corrupt_redundancy(&fx, 1, size - PAGE..size, seed + 1));
        pages.extend(corrupt_redundancy(&fx, 6, 0..size, seed + 2));
    }
    assert_ne!(snapshot_from(&fx.paths, DATA_OFFSET as usize), fx.clean, "{tag}: corrupted");
    fx.set_dirty(0);
    let mut l = None;
    let run = start(&fx.paths, |ctl| {
        assert_eq!(ctl.resync_cp(), 0, "{tag}: the superblocks' resync_offset");
        l = Some(log_runs(ctl));
    });
    let log = l.unwrap();
    let ctl = run.ctl();
    wait_in_sync(ctl, tag);
    // It started by itself, as a resync from 0 over the whole array.
    let s = starts(&log);
    assert!(!s.is_empty(), "{tag}: no run started");
    assert_eq!(s[0].action, SyncAction::Resync, "{tag}: the first run");
    let total = if fx.parity() { fx.rows() * unit(&fx) } else { size / 512 };
    assert_eq!(s[0].completed, Some((0, total)), "{tag}: sync_completed at the start");
    fx.assert_clean("after the resync");
    fx.check_redundancy("after the resync");
    check_model(&run.array, &fx.model, &format!("{tag}: reads after the resync"));
    assert_eq!(
        run_action(ctl, "check", tag),
        0,
        "{tag}: check after the resync ({} pages fixed)",
        pages.len()
    );
    fx.assert_clean("after the check");
}

#[test]
fn resync_makes_parity_right() {
    for (i, (tag, spec)) in parity_specs().into_iter().enumerate() {
        resync_fixes(&tag, spec, 100 + i as u64 * 10);
    }
}

#[test]
fn resync_makes_mirrors_equal() {
    for (i, (tag, spec)) in mirror_specs().into_iter().enumerate() {
        resync_fixes(&tag, spec, 200 + i as u64 * 10);
    }
}

/// A dirty array whose checkpoint is inside it: the resync starts there.
/// Corruption before the checkpoint is left alone (the superblock says
/// those rows are in sync), corruption after it is fixed; a check then
/// counts exactly the pages before the checkpoint.
#[test]
fn resync_starts_at_the_recorded_checkpoint() {
    for (tag, spec) in [
        ("r5".to_string(), pspec(Level::Raid5, 2, 4, 16 * KIB, 256 * KIB)),
        ("r6".to_string(), pspec(Level::Raid6, 2, 5, 16 * KIB, 256 * KIB)),
        ("r1".to_string(), pspec(Level::Raid1, 0, 2, 0, 1024 * KIB)),
        ("r10".to_string(), pspec(Level::Raid10, 0x201, 4, 16 * KIB, 512 * KIB)),
    ] {
        let fx = Fx::new(&format!("cp-{tag}"), spec);
        let size = fx.model.len() as u64;
        let u = unit(&fx);
        // The checkpoint: 5 steps in (member sectors by row for parity,
        // array sectors for mirrors).
        let cp = 5 * u;
        let (before, after) = if fx.parity() {
            (corrupt_redundancy(&fx, 3, 0..5, 300), corrupt_redundancy(&fx, 4, 5..fx.rows(), 301))
        } else {
            (corrupt_redundancy(&fx, 3, 0..cp * 512, 302), corrupt_redundancy(&fx, 4, cp * 512..size, 303))
        };
        fx.set_dirty(cp);
        let mut l = None;
        let run = start(&fx.paths, |ctl| l = Some(log_runs(ctl)));
        let log = l.unwrap();
        let ctl = run.ctl();
        wait_in_sync(ctl, &tag);
        let s = starts(&log);
        assert_eq!(s[0].action, SyncAction::Resync, "{tag}");
        assert_eq!(s[0].completed.map(|c| c.0), Some(cp), "{tag}: the resync started at the checkpoint");
        // Rows / pages from the checkpoint on are right again; the ones
        // before still hold exactly what the test wrote.
        let now = snapshot_from(&fx.paths, DATA_OFFSET as usize);
        for (slot, img) in now.iter().enumerate() {
            for p in (0..img.len()).step_by(PAGE as usize) {
                let bad = img[p..p + PAGE as usize] != fx.clean[slot][p..p + PAGE as usize];
                let was_before = before.contains(&(slot, p as u64));
                assert_eq!(bad, was_before, "{tag}: slot {slot} member page {p} (in after: {})", {
                    after.contains(&(slot, p as u64))
                });
            }
        }
        check_model(&run.array, &fx.model, &tag);
        assert_eq!(run_action(ctl, "check", &tag), 8 * before.len() as u64, "{tag}: check");
        assert_eq!(run_action(ctl, "repair", &tag), 8 * before.len() as u64, "{tag}: repair");
        fx.assert_clean("after the repair");
        assert_eq!(run_action(ctl, "check", &tag), 0, "{tag}: check after the repair");
    }
}

// ---------------------------------------------------------------------------
// 2. check counts, repair fixes
// ---------------------------------------------------------------------------

/// A clean array with `k` corrupted pages of redundancy: `check` counts
/// 8k sectors and writes nothing; `repair` counts the same and restores
/// the images exactly as built; a check after it counts 0; the data never
/// changes.
fn check_then_repair(tag: &str, spec: Spec, k: usize, seed: u64) {
    let fx = Fx::new(&format!("chk-{tag}"), spec);
    let size = fx.model.len() as u64;
    let within = if fx.parity() { 0..fx.rows() } else { 0..size };
    let pages = corrupt_redundancy(&fx, k, within, seed);
    assert_eq!(pages.len(), k);
    let run = start(&fx.paths, |_| {});
    let ctl = run.ctl();
    assert_eq!(ctl.resync_cp(), MAX_SECTOR, "{tag}: clean");
    assert_eq!(ctl.action(), SyncAction::Idle, "{tag}: a clean array starts nothing");
    let corrupted = snapshot(&fx.paths);
    assert_eq!(run_action(ctl, "check", tag), 8 * k as u64, "{tag}: check of {k} pages: {pages:?}");
    let after_check = snapshot(&fx.paths);
    for (slot, (a, b)) in after_check.iter().zip(&corrupted).enumerate() {
        assert!(a == b, "{tag}: check changed member image {slot}");
    }
    assert_eq!(ctl.resync_cp(), MAX_SECTOR, "{tag}: a check leaves the checkpoint");
    // Data reads are unaffected either way (redundancy only).
    check_model(&run.array, &fx.model, &format!("{tag}: reads after check"));
    assert_eq!(run_action(ctl, "repair", tag), 8 * k as u64, "{tag}: repair of {k} pages");
    fx.assert_clean("after the repair");
    fx.check_redundancy("after the repair");
    assert_eq!(run_action(ctl, "check", tag), 0, "{tag}: check after the repair");
    check_model(&run.array, &fx.model, &format!("{tag}: reads after repair"));
    // A second repair has nothing to do and writes nothing.
    let before = snapshot(&fx.paths);
    assert_eq!(run_action(ctl, "repair", tag), 0, "{tag}: repair of a consistent array");
    for (slot, (a, b)) in snapshot(&fx.paths).iter().zip(&before).enumerate() {
        assert!(a == b, "{tag}: a repair with nothing to fix changed member image {slot}");
    }
}

#[test]
fn check_counts_and_repair_fixes_parity() {
    for (i, (tag, spec)) in parity_specs().into_iter().enumerate() {
        check_then_repair(&tag, spec, 1 + i % 4 * 3, 400 + i as u64);
    }
}

#[test]
fn check_counts_and_repair_fixes_mirrors() {
    for (i, (tag, spec)) in mirror_specs().into_iter().enumerate() {
        check_then_repair(&tag, spec, 1 + i % 3 * 4, 500 + i as u64);
    }
}

/// Writes that read-modify-write rows with corrupted P/Q (so the stripe
/// cache holds those pages), a repair, then the same again: the repair's
/// rewrite of P/Q reaches later writes (the cache forgot its copy), so
/// parity ends right and a check counts 0.
#[test]
fn repair_reaches_the_stripe_cache() {
    for (tag, spec) in [
        ("cache-r5", pspec(Level::Raid5, 2, 5, 16 * KIB, 256 * KIB)),
        ("cache-r6", pspec(Level::Raid6, 2, 7, 16 * KIB, 256 * KIB)),
    ] {
        let mut fx = Fx::new(tag, spec);
        let pages = corrupt_redundancy(&fx, 6, 0..fx.rows(), 1400);
        let run = start(&fx.paths, |_| {});
        let ctl = run.ctl();
        let shape = fx.pers.parity_shape().unwrap();
        let mut rng = Rng::new(1401);
        // A small write into data chunk 0 of the row, in the corrupted
        // page's columns: read-modify-write reads that P/Q page.
        let mut write_over = |fx: &mut Fx| {
            for &(_, off) in &pages {
                let (row, col) = (off / fx.chunk(), off % fx.chunk());
                let at = row * shape.stripe_bytes() + col + rng.below(PAGE - 100);
                let data = rng.bytes(100);
                run.array.write_at(at, &data).unwrap();
                fx.model[at as usize..at as usize + 100].copy_from_slice(&data);
            }
        };
        write_over(&mut fx);
        assert_eq!(run_action(ctl, "repair", tag), 8 * pages.len() as u64, "{tag}: repair");
        write_over(&mut fx);
        run.array.flush().unwrap();
        fx.check_redundancy("writes after the repair");
        check_model(&run.array, &fx.model, tag);
        assert_eq!(run_action(ctl, "check", tag), 0, "{tag}: check");
    }
}

/// P and Q of the same page of a row both corrupted count twice (two
/// pages differ), and so do two copies of the same array page on a
/// 3-way mirror.
#[test]
fn mismatches_count_every_differing_page() {
    let fx = Fx::new("both-pq", pspec(Level::Raid6, 2, 5, 16 * KIB, 256 * KIB));
    let files = fx.files();
    let mut rng = Rng::new(600);
    let row = 7;
    let lay = fx.pers.syndrome_layout(row * fx.chunk()).unwrap();
    let off = row * fx.chunk() + PAGE;
    corrupt_page(&files[lay.p], off, &mut rng);
    corrupt_page(&files[lay.q.unwrap()], off, &mut rng);
    let run = start(&fx.paths, |_| {});
    assert_eq!(run_action(run.ctl(), "check", "both-pq"), 16);
    assert_eq!(run_action(run.ctl(), "repair", "both-pq"), 16);
    fx.assert_clean("after the repair");

    let fx = Fx::new("both-copies", pspec(Level::Raid1, 0, 3, 0, 512 * KIB));
    let files = fx.files();
    for slot in [1, 2] {
        corrupt_page(&files[slot], 40 * PAGE, &mut rng);
    }
    let run = start(&fx.paths, |_| {});
    assert_eq!(run_action(run.ctl(), "check", "both-copies"), 16);
    assert_eq!(run_action(run.ctl(), "repair", "both-copies"), 16);
    fx.assert_clean("after the repair");
}

// ---------------------------------------------------------------------------
// 3. An interrupted resync resumes from its checkpoint
// ---------------------------------------------------------------------------

/// A slowed resync of a dirty array: `idle` stops it with its checkpoint
/// kept (and md starts it again by itself, from there); `frozen` stops it
/// and nothing restarts; `idle` lets it resume from the checkpoint, which
/// the test enforces: reads of member sectors below it fail (a resync that
/// started over would fail a member and stop). Then at full speed to the
/// end; parity, data and a check.
fn interrupted_resync(tag: &str, spec: Spec) {
    let fx = Fx::new(&format!("intr-{tag}"), spec);
    let size = fx.model.len() as u64;
    let within = if fx.parity() { 0..fx.rows() } else { 0..size };
    corrupt_redundancy(&fx, 8, within, 700);
    fx.set_dirty(0);
    let mut l = None;
    let mut run = start(&fx.paths, |ctl| {
        ctl.set_speed_limit(true, Some(2000));
        l = Some(log_runs(ctl));
    });
    let log = l.unwrap();
    let ctl = Arc::clone(run.ctl());
    let u = unit(&fx);
    let total = if fx.parity() { fx.rows() * u } else { size / 512 };
    assert!(total / 2 / 2000 >= 3, "{tag}: the slowed resync must take seconds ({total} sectors)");

    wait_for(&format!("{tag}: progress past 1/16"), || ctl.completed().is_some_and(|(d, t)| d * 16 > t));
    assert_eq!(ctl.action(), SyncAction::Resync, "{tag}");
    ctl.store_action(b"idle").unwrap();
    // The run ends with its checkpoint, and a new one starts from it.
    wait_for(&format!("{tag}: the resync to restart after idle"), || starts(&log).len() >= 2);
    let seen = log.lock().unwrap().clone();
    let end = seen.iter().find(|s| s.completed.is_none()).copied().expect("an end");
    let cp1 = end.cp;
    assert!(cp1 > 0 && cp1 < total, "{tag}: checkpoint {cp1} of {total} after idle");
    assert_eq!(cp1 % u, 0, "{tag}: checkpoint at a step boundary");
    let restart = starts(&log)[1];
    assert_eq!(restart.action, SyncAction::Resync, "{tag}");
    assert_eq!(restart.completed, Some((cp1, total)), "{tag}: the restarted resync begins at the checkpoint");

    ctl.store_action(b"frozen").unwrap();
    wait_for(&format!("{tag}: frozen"), || ctl.action() == SyncAction::Frozen);
    let cp2 = ctl.resync_cp();
    assert!(cp2 >= cp1 && cp2 < total, "{tag}: checkpoint {cp2} after frozen (was {cp1})");
    let runs = starts(&log).len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ctl.action(), SyncAction::Frozen, "{tag}: still frozen");
    assert_eq!(ctl.completed(), None, "{tag}: nothing runs while frozen");
    assert_eq!(ctl.resync_cp(), cp2, "{tag}: the checkpoint does not move while frozen");
    assert_eq!(starts(&log).len(), runs, "{tag}: nothing started while frozen");
    // Rows (or windows) below the checkpoint are right already; the ones
    // after it are not all right yet.
    if fx.parity() {
        fx.check_rows(&(0..cp2 / u).collect::<Vec<_>>(), "rows below the checkpoint");
    }

    // From here on, reading member sectors below the checkpoint fails.
    let first_sector = DATA_OFFSET / 512;
    for f in &run.faults {
        f.add_rule(Rule::new(Ops::Read, Trigger::Always).sectors(first_sector..first_sector + cp2));
    }
    ctl.store_action(b"idle").unwrap();
    wait_for(&format!("{tag}: the resync to resume"), || starts(&log).len() > runs);
    let resumed = starts(&log)[runs];
    assert_eq!(resumed.completed, Some((cp2, total)), "{tag}: the resumed resync begins at the checkpoint");
    ctl.set_speed_limit(true, None);
    wait_for(&format!("{tag}: the resumed resync to finish (or fail a member)"), || {
        ctl.resync_cp() == MAX_SECTOR || run.array.missing() > 0
    });
    for (slot, f) in run.faults.iter().enumerate() {
        assert_eq!(f.stats().faults, 0, "{tag}: the resumed resync read slot {slot} below the checkpoint");
        f.clear_rules();
    }
    assert_eq!(run.array.missing(), 0, "{tag}: no member failed");
    wait_in_sync(&ctl, tag);
    fx.assert_clean("after the resumed resync");
    fx.check_redundancy("after the resumed resync");
    check_model(&run.array, &fx.model, tag);
    assert_eq!(run_action(&ctl, "check", tag), 0, "{tag}: check");
    run.stop();
}

#[test]
fn interrupted_resync_resumes_from_its_checkpoint_raid5() {
    interrupted_resync("r5", pspec(Level::Raid5, 2, 4, 16 * KIB, 8 * MIB));
}

#[test]
fn interrupted_resync_resumes_from_its_checkpoint_raid1() {
    interrupted_resync("r1", pspec(Level::Raid1, 0, 2, 0, 8 * MIB));
}

// ---------------------------------------------------------------------------
// 4. Writes during a resync
// ---------------------------------------------------------------------------

/// A dirty array resyncing slowly while three threads write at random
/// (unaligned, sub-page to several rows, each thread in its own regions
/// of the array, which cut across chunks and rows): the writes land both
/// behind and ahead of the resync; at the end the data equals the model,
/// the redundancy is right everywhere, and a check counts 0.
fn writes_during_resync(tag: &str, spec: Spec) {
    const THREADS: u64 = 3;
    const REGION: u64 = 20 * KIB + 1000;
    let fx = Fx::new(&format!("wr-{tag}"), spec);
    let size = fx.model.len() as u64;
    let within = if fx.parity() { 0..fx.rows() } else { 0..size };
    corrupt_redundancy(&fx, 10, within, 800);
    fx.set_dirty(0);
    let run = start(&fx.paths, |ctl| {
        ctl.set_speed_limit(false, Some(500));
        ctl.set_speed_limit(true, Some(2000));
    });
    let ctl = run.ctl();
    wait_for(&format!("{tag}: the resync to start"), || ctl.completed().is_some());
    // Array bytes the resync has passed, from its progress.
    let stripe = if fx.parity() { fx.pers.parity_shape().unwrap().stripe_bytes() } else { 0 };
    let passed = |done: u64| if fx.parity() { done * 512 / fx.chunk() * stripe } else { done * 512 };
    let model = Mutex::new(fx.model.clone());
    let stop = AtomicBool::new(false);
    let (behind, ahead, during) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (array, model, stop) = (&run.array, &model, &stop);
            let (behind, ahead, during, passed) = (&behind, &ahead, &during, &passed);
            s.spawn(move || {
                let mut rng = Rng::new(900 + t);
                let regions = size.div_ceil(REGION);
                let mine: Vec<u64> = (0..regions).filter(|r| r % THREADS == t).collect();
                for i in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = mine[rng.below(mine.len() as u64) as usize];
                    let (lo, hi) = (r * REGION, ((r + 1) * REGION).min(size));
                    let start = lo + rng.below(hi - lo);
                    let max = if rng.below(4) == 0 { hi - start } else { (hi - start).min(600) };
                    let len = rng.below(max) + 1;
                    let data = rng.bytes(len as usize);
                    let at = array.sync_ctl().completed();
                    array
                        .write_at(start, &data)
                        .unwrap_or_else(|e| panic!("write {i} at {start}+{len}: {e}"));
                    model.lock().unwrap()[start as usize..(start + len) as usize].copy_from_slice(&data);
                    if let Some((done, _)) = at {
                        during.fetch_add(1, Ordering::Relaxed);
                        if start + len <= passed(done) {
                            behind.fetch_add(1, Ordering::Relaxed);
                        } else if start >= passed(done) + stripe {
                            ahead.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        wait_for(&format!("{tag}: the resync to finish during writes"), || ctl.resync_cp() == MAX_SECTOR);
        stop.store(true, Ordering::Relaxed);
    });
    wait_in_sync(ctl, tag);
    let (behind, ahead, during) = (behind.into_inner(), ahead.into_inner(), during.into_inner());
    assert!(
        behind > 0 && ahead > 0,
        "{tag}: writes behind {behind}, ahead {ahead} of {during} during the resync"
    );
    run.array.flush().unwrap();
    let fx = Fx { model: model.into_inner().unwrap(), ..fx };
    check_model(&run.array, &fx.model, &format!("{tag}: after writes during the resync"));
    fx.check_redundancy("after writes during the resync");
    assert_eq!(run_action(ctl, "check", tag), 0, "{tag}: check");
}

#[test]
fn writes_during_resync_raid5() {
    writes_during_resync("r5", pspec(Level::Raid5, 2, 4, 16 * KIB, MIB));
}

#[test]
fn writes_during_resync_raid1() {
    writes_during_resync("r1", pspec(Level::Raid1, 0, 2, 0, MIB));
}

#[test]
fn writes_during_resync_raid10() {
    writes_during_resync("r10", pspec(Level::Raid10, 0x102, 4, 16 * KIB, 512 * KIB));
}

/// Recovery onto fresh members in the slots `victims` with writes landing
/// on rows whose reads are in flight or done but not yet used: the rebuild
/// reads batches of rows ahead of their stripe locks (`md::sync_io`), and
/// such batches must be read again under the locks (a stale batch would
/// rebuild the old bytes of the rows, which the model, the parity
/// reference and `check` all show). The recovery is held after its first
/// batch (`sync_speed_max`), with the next batches read ahead, while
/// three threads write the rows not yet rebuilt; then it is let go.
fn writes_during_recovery(tag: &str, spec: Spec, victims: &[usize]) {
    writes_during_recovery_at("umd-sync", tag, spec, victims);
}

fn writes_during_recovery_at(prefix: &str, tag: &str, spec: Spec, victims: &[usize]) {
    const THREADS: u64 = 3;
    const WRITES: u64 = 60;
    let fx = Fx::new_at(prefix, &format!("wrec-{tag}"), spec);
    let size = fx.model.len() as u64;
    let shape = fx.pers.parity_shape().expect("parity level");
    let run = start(&fx.paths, |ctl| {
        ctl.set_speed_limit(false, Some(10));
        ctl.set_speed_limit(true, Some(20));
    });
    let ctl = run.ctl();
    let h = run.array.health();
    let mut paths = fx.paths.clone();
    for &v in victims {
        assert!(h.fail_request(v), "{tag}: fail slot {v}");
        h.remove(v).unwrap_or_else(|e| panic!("{tag}: remove slot {v}: errno {e}"));
    }
    for &v in victims {
        let fresh = paths[v].with_extension(format!("spare{v}"));
        let len = std::fs::metadata(&paths[v]).unwrap().len();
        File::create(&fresh).unwrap().set_len(len).unwrap();
        let m = md::array::spare_from_path(&fresh, &run.array.sb, None)
            .unwrap_or_else(|e| panic!("{tag}: spare: errno {e}"));
        let id = h.add(m).unwrap_or_else(|e| panic!("{tag}: add: errno {e}"));
        h.place(id, v).unwrap_or_else(|e| panic!("{tag}: place in slot {v}: errno {e}"));
        paths[v] = fresh;
    }
    // The first batch rebuilt; the thread now waits for its speed limit.
    let mut done = 0;
    wait_for(&format!("{tag}: the recovery's first batch"), || {
        done = ctl.completed().map_or(0, |(d, _)| d);
        done > 0
    });
    let first_row = done / unit(&fx);
    assert!(first_row < shape.stripes, "{tag}: the whole recovery ran before it was held");
    let from = first_row * shape.stripe_bytes();
    let model = Mutex::new(fx.model.clone());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (array, model) = (&run.array, &model);
            s.spawn(move || {
                let mut rng = Rng::new(700 + t);
                for _ in 0..WRITES {
                    let start = from + rng.below(size - from);
                    let len = rng.below((size - start).min(40 * KIB)) + 1;
                    let data = rng.bytes(len as usize);
                    // The model follows the array: one writer at a time.
                    let mut m = model.lock().unwrap();
                    array.write_at(start, &data).unwrap_or_else(|e| panic!("write at {start}+{len}: {e}"));
                    m[start as usize..(start + len) as usize].copy_from_slice(&data);
                }
            });
        }
    });
    assert!(
        ctl.completed().is_some_and(|(d, _)| d == done),
        "{tag}: the recovery moved while it was held ({:?} after {done})",
        ctl.completed()
    );
    ctl.set_speed_limit(false, Some(2_000_000));
    ctl.set_speed_limit(true, Some(2_000_000));
    wait_for(&format!("{tag}: the recovery to finish"), || {
        run.array.missing() == 0 && ctl.action() == SyncAction::Idle
    });
    assert!(ctl.rereads() > 0, "{tag}: no batch read again");
    run.array.flush().unwrap();
    let fx = Fx { model: model.into_inner().unwrap(), paths, ..fx };
    check_model(&run.array, &fx.model, &format!("{tag}: after writes during the recovery"));
    fx.check_redundancy("after writes during the recovery (rebuilt members included)");
    assert_eq!(run_action(ctl, "check", tag), 0, "{tag}: check");
}

#[test]
fn writes_during_recovery_raid5() {
    writes_during_recovery("r5", pspec(Level::Raid5, 2, 4, 16 * KIB, 2 * MIB), &[1]);
}

#[test]
fn writes_during_recovery_raid6_two_members() {
    writes_during_recovery("r6", pspec(Level::Raid6, 2, 5, 16 * KIB, 2 * MIB), &[0, 3]);
}

/// The same on tmpfs members: no direct I/O there, the sync thread's
/// second opens are buffered.
#[test]
fn writes_during_recovery_raid5_tmpfs() {
    writes_during_recovery_at(
        "/dev/shm/umd-sync",
        "r5-shm",
        pspec(Level::Raid5, 2, 4, 16 * KIB, 2 * MIB),
        &[1],
    );
}

#[test]
fn writes_during_recovery_raid4_parity_member() {
    writes_during_recovery("r4", pspec(Level::Raid4, 0, 4, 64 * KIB, 6 * MIB), &[3]);
}

/// A recovery checkpoint is shown (for the metadata manager to record)
/// only once everything rebuilt before it is durable: the rebuilt member
/// has a write-tracking fault injector, the recovery is held after its
/// first checkpoint, and a simulated power cut then undoes every write not
/// flushed; the rebuilt member must still hold the right bytes up to the
/// checkpoint.
#[test]
fn recovery_checkpoints_are_durable() {
    let fx = Fx::new("durable", pspec(Level::Raid5, 2, 4, 16 * KIB, 4 * MIB));
    let run = start(&fx.paths, |ctl| {
        ctl.set_speed_limit(false, Some(10));
        ctl.set_speed_limit(true, Some(20));
    });
    let h = run.array.health();
    let victim = 2;
    assert!(h.fail_request(victim));
    h.remove(victim).expect("remove");
    let fresh = fx.paths[victim].with_extension("spare");
    File::create(&fresh).unwrap().set_len(std::fs::metadata(&fx.paths[victim]).unwrap().len()).unwrap();
    let faults = Arc::new(Faults::new(5));
    faults.track_writes(true);
    let m = md::array::spare_with_faults(&fresh, &run.array.sb, None, Some(faults.clone())).expect("spare");
    let id = h.add(m).expect("add");
    h.place(id, victim).expect("place");
    let member = run.array.slots.get(victim).expect("the spare in its slot");
    let mut cp = 0;
    wait_for("a recovery checkpoint", || {
        cp = member.recovery_offset.load(Ordering::Acquire);
        cp > 0
    });
    let total = fx.clean[victim].len() as u64;
    assert!(cp * 512 < total, "the recovery ran to the end before it was held");
    faults.power_cut(blockio::fault::CutMode::Lost).expect("power cut");
    let mut got = vec![0u8; (cp * 512) as usize];
    File::open(&fresh).unwrap().read_exact_at(&mut got, DATA_OFFSET).unwrap();
    let want = &fx.clean[victim][..got.len()];
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "after the power cut, the rebuilt member differs at data byte {i}, below the checkpoint {}",
            cp * 512
        );
    }
}

/// A resync checkpoint (`resync_start`, recorded by the metadata manager)
/// is shown only once the parity the resync rewrote before it is durable:
/// every member tracks its writes, the resync is held after its first
/// checkpoint, a simulated power cut undoes every write not flushed, and
/// the rows below the checkpoint must still have right parity on disk.
#[test]
fn resync_checkpoints_are_durable() {
    let fx = Fx::new("durable-resync", pspec(Level::Raid5, 2, 4, 16 * KIB, 4 * MIB));
    // Every row's parity wrong: the resync rewrites every row.
    let files = fx.files();
    let mut rng = Rng::new(3);
    for row in 0..fx.rows() {
        let lay = fx.pers.syndrome_layout(row * fx.chunk()).unwrap();
        corrupt_page(&files[lay.p], row * fx.chunk(), &mut rng);
    }
    for f in &files {
        f.sync_all().unwrap();
    }
    fx.set_dirty(0);
    let run = start(&fx.paths, |ctl| {
        ctl.store_action(b"frozen").unwrap();
    });
    let ctl = run.ctl();
    for f in &run.faults {
        f.track_writes(true);
    }
    ctl.set_speed_limit(false, Some(10));
    ctl.set_speed_limit(true, Some(20));
    ctl.store_action(b"idle").unwrap();
    wait_for("a resync checkpoint", || ctl.resync_cp() > 0 && ctl.resync_cp() != MAX_SECTOR);
    let cp = ctl.resync_cp();
    let rows = cp / unit(&fx);
    assert!(rows > 0 && rows < fx.rows(), "checkpoint at row {rows} of {}", fx.rows());
    for f in &run.faults {
        f.power_cut(blockio::fault::CutMode::Lost).expect("power cut");
    }
    fx.check_rows(&(0..rows).collect::<Vec<_>>(), "rows below the resync checkpoint after a power cut");
}

// ---------------------------------------------------------------------------
// 5. sync_action's rules
// ---------------------------------------------------------------------------

/// Unknown words are EINVAL and `reshape` is refused, changing nothing;
/// a request shows in `sync_action` from the store on (before the thread
/// takes it), a second one is EBUSY, `frozen` cancels it; a running check
/// or resync refuses requests with EBUSY; `frozen` stops a resync, `idle`
/// resumes it; on a clean array `frozen` and `idle` show, a requested
/// resync has nothing to do and a check asked for while frozen runs.
#[test]
fn store_action_rules() {
    let fx = Fx::new("rules", pspec(Level::Raid5, 2, 4, 16 * KIB, MIB));
    let pages = corrupt_redundancy(&fx, 4, 0..fx.rows(), 1000);
    fx.set_dirty(0);
    let mut l = None;
    let run = start(&fx.paths, |ctl| {
        // Before the thread runs.
        l = Some(log_runs(ctl));
        ctl.set_speed_limit(true, Some(1000));
        for w in [&b"garbage"[..], b"", b"\n", b"chec", b"checks", b"check\n\n", b"IDLE", b" idle"] {
            assert_eq!(ctl.store_action(w), Err(libc::EINVAL), "{:?}", String::from_utf8_lossy(w));
        }
        assert!(ctl.store_action(b"reshape").is_err(), "reshape");
        assert_eq!(ctl.action(), SyncAction::Idle, "refused stores change nothing");
        ctl.store_action(b"repair").unwrap();
        assert_eq!(ctl.action(), SyncAction::Repair, "a request shows before it runs");
        assert_eq!(ctl.store_action(b"check"), Err(libc::EBUSY), "a second request");
        ctl.store_action(b"frozen").unwrap();
        assert_eq!(ctl.action(), SyncAction::Frozen, "frozen cancels the request");
        ctl.store_action(b"idle").unwrap();
        assert_eq!(ctl.action(), SyncAction::Idle);
        ctl.store_action(b"check\n").unwrap();
        assert_eq!(ctl.action(), SyncAction::Check, "a request shows before it runs");
    });
    let log = l.unwrap();
    let ctl = run.ctl();
    // The request goes first: a check of the dirty array.
    wait_for("the check to run", || ctl.completed().is_some() || ctl.action() != SyncAction::Check);
    for w in ["check", "repair", "resync", "recover"] {
        let r = ctl.store_action(w.as_bytes());
        // Unless it ended meanwhile (it is slowed: it should not have).
        if ctl.action() == SyncAction::Check {
            assert_eq!(r, Err(libc::EBUSY), "{w:?} during a check");
        }
    }
    // Then the resync the array needs starts by itself.
    wait_for("the resync to start", || log.lock().unwrap().len() >= 3);
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen[0].action, SyncAction::Check, "the request ran first: {seen:?}");
    assert_eq!(seen[1].completed, None, "{seen:?}");
    assert_eq!(seen[1].mismatches, 8 * pages.len() as u64, "check of the dirty array");
    assert_eq!(seen[2].action, SyncAction::Resync, "{seen:?}");
    assert_eq!(ctl.action(), SyncAction::Resync, "the slowed resync runs");
    for w in ["check", "repair", "resync", "recover", "check\n"] {
        assert_eq!(ctl.store_action(w.as_bytes()), Err(libc::EBUSY), "{w:?} during a resync");
    }
    assert!(ctl.store_action(b"reshape").is_err(), "reshape during a resync");
    assert_eq!(ctl.action(), SyncAction::Resync, "still resyncing");
    ctl.store_action(b"frozen\n").unwrap();
    wait_for("frozen", || ctl.action() == SyncAction::Frozen);
    assert_eq!(ctl.completed(), None);
    assert!(ctl.resync_cp() < MAX_SECTOR, "a frozen resync is not finished");
    ctl.store_action(b"frozen").unwrap();
    assert_eq!(ctl.action(), SyncAction::Frozen);
    ctl.store_action(b"idle").unwrap();
    wait_for("the resync to resume", || ctl.action() == SyncAction::Resync || ctl.resync_cp() == MAX_SECTOR);
    ctl.set_speed_limit(true, None);
    wait_in_sync(ctl, "rules");
    assert_eq!(ctl.mismatches(), 0, "a resync clears mismatch_cnt when it starts, as md");
    fx.assert_clean("after the resync");
    fx.check_redundancy("after the resync");
    // Clean now.
    ctl.store_action(b"frozen").unwrap();
    assert_eq!(ctl.action(), SyncAction::Frozen);
    ctl.store_action(b"idle").unwrap();
    assert_eq!(ctl.action(), SyncAction::Idle);
    let before = snapshot(&fx.paths);
    assert_eq!(run_action(ctl, "resync", "rules"), 0, "a resync with nothing to do");
    assert_eq!(ctl.resync_cp(), MAX_SECTOR);
    // A check asked for while frozen unfreezes and runs.
    ctl.store_action(b"frozen").unwrap();
    assert_eq!(run_action(ctl, "check", "rules"), 0);
    assert_eq!(ctl.action(), SyncAction::Idle, "a request unfreezes");
    for (slot, (a, b)) in snapshot(&fx.paths).iter().zip(&before).enumerate() {
        assert!(a == b, "rules: a resync / check of a clean array changed member image {slot}");
    }
}

/// A degraded array (a member missing): nothing starts by itself though it
/// is dirty (assembled by force, as md needs), and resync, check and
/// repair requests end with nothing done: nothing counted, nothing
/// written, the checkpoint unchanged. The same for a clean degraded array.
#[test]
fn degraded_array_does_not_sync() {
    for (tag, spec, gone, dirty) in [
        ("deg-r5", pspec(Level::Raid5, 2, 4, 16 * KIB, 256 * KIB), 1usize, true),
        ("deg-r6", pspec(Level::Raid6, 2, 5, 16 * KIB, 256 * KIB), 4, true),
        ("deg-r1", pspec(Level::Raid1, 0, 3, 0, 512 * KIB), 0, true),
        ("deg-r5-clean", pspec(Level::Raid5, 0, 3, 16 * KIB, 256 * KIB), 2, false),
        ("deg-r10-clean", pspec(Level::Raid10, 0x102, 4, 16 * KIB, 256 * KIB), 3, false),
    ] {
        let fx = Fx::new(tag, spec);
        let size = fx.model.len() as u64;
        let within = if fx.parity() { 0..fx.rows() } else { 0..size };
        corrupt_redundancy(&fx, 6, within, 1100);
        let cp = if dirty { 0 } else { MAX_SECTOR };
        if dirty {
            fx.set_dirty(cp);
        }
        let before = snapshot(&fx.paths);
        let paths = fx.without(&[gone]);
        let run = start_opts(&paths, dirty, |_| {});
        let ctl = run.ctl();
        assert_eq!(run.array.missing(), 1, "{tag}");
        assert_eq!(ctl.resync_cp(), cp, "{tag}: dirty {dirty}");
        if dirty {
            std::thread::sleep(Duration::from_millis(1000));
        }
        assert_eq!(ctl.action(), SyncAction::Idle, "{tag}: nothing started by itself");
        assert_eq!(ctl.completed(), None, "{tag}");
        for w in ["check", "repair", "resync", "recover"] {
            assert_eq!(run_action(ctl, w, tag), 0, "{tag}: {w} counted on a degraded array");
            assert_eq!(ctl.resync_cp(), cp, "{tag}: {w} moved the checkpoint");
        }
        assert_eq!(ctl.action(), SyncAction::Idle, "{tag}");
        for (slot, (a, b)) in snapshot(&fx.paths).iter().zip(&before).enumerate() {
            assert!(a == b, "{tag}: member image {slot} changed on a degraded array");
        }
    }
}

// ---------------------------------------------------------------------------
// 6. Shutdown
// ---------------------------------------------------------------------------

/// `shutdown` during a slowed resync: the thread ends (joined), the
/// checkpoint is kept and exact: the rows below it were rewritten, every
/// row from it on still holds the junk the test wrote. Shutdown of an
/// idle thread, and of a frozen one, ends it too.
#[test]
fn shutdown_keeps_the_checkpoint() {
    let fx = Fx::new("shut-r5", pspec(Level::Raid5, 2, 4, 16 * KIB, 2 * MIB));
    let rows = fx.rows();
    let u = unit(&fx);
    // One corrupted P page in every row.
    let files = fx.files();
    let mut rng = Rng::new(1200);
    for r in 0..rows {
        let lay = fx.pers.syndrome_layout(r * fx.chunk()).unwrap();
        corrupt_page(&files[lay.p], r * fx.chunk() + rng.below(fx.chunk() / PAGE) * PAGE, &mut rng);
    }
    let corrupted = snapshot_from(&fx.paths, DATA_OFFSET as usize);
    fx.set_dirty(0);
    let mut run = start(&fx.paths, |ctl| ctl.set_speed_limit(true, Some(1000)));
    let ctl = Arc::clone(run.ctl());
    wait_for("progress past 1/8", || ctl.completed().is_some_and(|(d, t)| d * 8 > t));
    let seen = ctl.completed().unwrap().0;
    run.stop();
    let cp = ctl.resync_cp();
    assert!(cp >= seen && cp < rows * u, "checkpoint {cp} (progress seen {seen}, total {})", rows * u);
    assert_eq!(cp % u, 0, "checkpoint at a row boundary");
    assert_eq!(ctl.action(), SyncAction::Idle);
    let now = snapshot_from(&fx.paths, DATA_OFFSET as usize);
    let chunk = fx.chunk() as usize;
    for r in 0..rows {
        let lay = fx.pers.syndrome_layout(r * fx.chunk()).unwrap();
        let span = r as usize * chunk..(r as usize + 1) * chunk;
        let want = if r < cp / u { &fx.clean[lay.p][span.clone()] } else { &corrupted[lay.p][span.clone()] };
        assert!(now[lay.p][span] == *want, "row {r}: P is not what a checkpoint of {cp} implies");
    }
    fx.check_rows(&(0..cp / u).collect::<Vec<_>>(), "rows below the checkpoint");
    drop(run);

    // Idle, and frozen, threads end on shutdown too.
    let fx = Fx::new("shut-idle", pspec(Level::Raid1, 0, 2, 0, 256 * KIB));
    let mut run = start(&fx.paths, |_| {});
    run.stop();
    let mut run = start(&fx.paths, |ctl| ctl.store_action(b"frozen").unwrap());
    run.stop();
    assert_eq!(run.ctl().resync_cp(), MAX_SECTOR);
}

/// `shutdown` during a check: the thread ends, the (clean) checkpoint and
/// the members are untouched.
#[test]
fn shutdown_during_a_check() {
    let fx = Fx::new("shut-chk", pspec(Level::Raid10, 0x102, 4, 16 * KIB, 2 * MIB));
    corrupt_redundancy(&fx, 5, 0..fx.model.len() as u64, 1300);
    let before = snapshot(&fx.paths);
    let mut run = start(&fx.paths, |ctl| ctl.set_speed_limit(true, Some(1000)));
    let ctl = Arc::clone(run.ctl());
    ctl.store_action(b"check").unwrap();
    wait_for("the check to progress", || ctl.completed().is_some_and(|(d, t)| d * 8 > t));
    assert_eq!(ctl.action(), SyncAction::Check);
    run.stop();
    assert_eq!(ctl.resync_cp(), MAX_SECTOR, "a check keeps the checkpoint");
    assert_eq!(ctl.action(), SyncAction::Idle);
    drop(run);
    for (slot, (a, b)) in snapshot(&fx.paths).iter().zip(&before).enumerate() {
        assert!(a == b, "an interrupted check changed member image {slot}");
    }
}
