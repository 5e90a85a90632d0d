//! md's read-error handling through `Array::read_at`, on synthetic arrays
//! with a fault injector on every member:
//!
//! * raid1, raid10 (near 2), raid5 (left-symmetric) and raid6: a member
//!   read that fails once is answered from redundancy (the bytes equal the
//!   model), the member's bytes there are rewritten (the test scribbles
//!   over them first, and reads the image file afterwards), and its
//!   `read_errors` (`dev-*/errors`) is 1, the member still in service;
//! * the 21st corrected error (md's `max_corrected_read_errors` is 20)
//!   fails the member, and the read still returns the right bytes;
//! * raid0, and a degraded raid5 whose read needs the failing member, fail
//!   `EIO` and fail no member;
//! * a read-only assembly answers and counts but rewrites nothing.
//!
//! A fault that fires on exactly one read (the array's, not the verifying
//! re-read after the rewrite) is made from a probability rule: each rule
//! draws from its own seeded stream, so a shadow injector with the same
//! seed and the same number of rules added shows the first two draws, and
//! a probability between them fires the first only.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use blockio::fault::{Faults, Ops, Rule, Trigger};
use blockio::OpKind;
use common::{build_synth, Scratch, DATA_OFFSET};
use md::array::flags;
use md::repair::MAX_CORRECTED_READ_ERRORS;
use md::synth::{Rng, Spec};
use md::{assemble, assemble_writable, Array, AssembleOptions, Assembly, Level};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A member's injector, with what the test needs to add one-shot rules.
struct Injector {
    faults: Arc<Faults>,
    seed: u64,
    /// Rules ever added (the next rule's stream number).
    added: u64,
}

/// A rule that matches no operation (it only advances the stream count).
fn dummy_rule() -> Rule {
    Rule::new(Ops::Read, Trigger::Always).sectors(u64::MAX - 1..u64::MAX)
}

impl Injector {
    fn new(seed: u64) -> Injector {
        Injector { faults: Arc::new(Faults::new(seed)), seed, added: 0 }
    }

    /// Whether the first two matching reads of a probability-`p` rule
    /// added after `added` rules fire, on a shadow injector.
    fn probe(&self, p: f64, file: &File) -> (bool, bool) {
        let shadow = Faults::new(self.seed);
        for _ in 0..self.added {
            shadow.add_rule(dummy_rule());
        }
        shadow.add_rule(Rule::new(Ops::Read, Trigger::Probability(p)));
        let first = shadow.on_io(OpKind::Read, file, 0, 512).is_err();
        let second = shadow.on_io(OpKind::Read, file, 0, 512).is_err();
        (first, second)
    }

    /// Adds a rule on reads of member bytes `start..start + len` (from the
    /// start of the member) that fails the first matching read only (the
    /// second passes; the caller clears the rules after the array read).
    fn fail_next_read(&mut self, start: u64, len: u64, file: &File) {
        let sectors = start / 512..(start + len).div_ceil(512);
        loop {
            let p = (1..40).map(|i| f64::from(i) / 40.0).find(|&p| self.probe(p, file) == (true, false));
            match p {
                Some(p) => {
                    self.faults.add_rule(Rule::new(Ops::Read, Trigger::Probability(p)).sectors(sectors));
                    self.added += 1;
                    return;
                }
                None => {
                    self.faults.add_rule(dummy_rule());
                    self.added += 1;
                    self.faults.clear_rules();
                }
            }
        }
    }

    /// A rule failing every read of member bytes `start..start + len`.
    fn fail_reads(&mut self, start: u64, len: u64) {
        let sectors = start / 512..(start + len).div_ceil(512);
        self.faults.add_rule(Rule::new(Ops::Read, Trigger::Always).sectors(sectors));
        self.added += 1;
    }
}

/// A synthetic array on fresh images with an injector per member.
struct Fixture {
    _dir: Scratch,
    paths: Vec<PathBuf>,
    model: Vec<u8>,
    inj: Vec<Injector>,
}

fn fixture(tag: &str, spec: &Spec) -> Fixture {
    let (dir, paths, model) = build_synth("umd-rerr", tag, spec);
    let inj = (0..paths.len()).map(|i| Injector::new(0x5eed + i as u64)).collect();
    Fixture { _dir: dir, paths, model, inj }
}

impl Fixture {
    fn options(&self, present: &[usize]) -> (Vec<PathBuf>, AssembleOptions) {
        let paths: Vec<PathBuf> = present.iter().map(|&i| self.paths[i].clone()).collect();
        let faults = present.iter().map(|&i| (Some(self.paths[i].clone()), Arc::clone(&self.inj[i].faults)));
        (paths, AssembleOptions { faults: faults.collect(), ..Default::default() })
    }

    fn writable(&self) -> Assembly {
        let all: Vec<usize> = (0..self.paths.len()).collect();
        let (paths, opts) = self.options(&all);
        assemble_writable(&paths, &opts).expect("assemble writable")
    }

    fn read_only(&self, present: &[usize]) -> Assembly {
        let (paths, opts) = self.options(present);
        assemble(&paths, &opts).expect("assemble")
    }

    fn file(&self, slot: usize) -> File {
        File::options().read(true).write(true).open(&self.paths[slot]).expect("open image")
    }

    /// `len` bytes of `slot`'s image at data-area offset `off`.
    fn image_bytes(&self, slot: usize, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.file(slot).read_exact_at(&mut v, DATA_OFFSET + off).expect("read image");
        v
    }

    /// Overwrites `slot`'s image at data-area offset `off` with junk.
    fn scribble(&self, slot: usize, off: u64, len: usize) {
        self.file(slot).write_all_at(&vec![0xa5u8; len], DATA_OFFSET + off).expect("write image");
    }

    /// Writes random bytes through the array at `off` and into the model.
    fn write(&mut self, array: &Array, off: u64, len: usize, rng: &mut Rng) {
        let data = rng.bytes(len);
        array.write_at(off, &data).expect("array write");
        self.model[off as usize..off as usize + len].copy_from_slice(&data);
    }

    fn check(&self, array: &Array, off: u64, len: usize, what: &str) {
        let mut got = vec![0u8; len];
        array.read_at(off, &mut got).unwrap_or_else(|e| panic!("{what}: read at {off}: {e}"));
        assert!(
            got == self.model[off as usize..off as usize + len],
            "{what}: bytes at {off} differ from the model"
        );
    }
}

/// Member reads `slot` has seen.
fn reads_seen(f: &Fixture, slot: usize) -> u64 {
    f.inj[slot].faults.stats().ops
}

fn read_errors(array: &Array, slot: usize) -> u32 {
    let m = array.slots.get(slot).expect("member");
    m.read_errors.load(std::sync::atomic::Ordering::Relaxed)
}

fn faulty(array: &Array, slot: usize) -> bool {
    array.health().flags(slot).expect("member") & flags::FAULTY != 0
}

/// The slot an array read of `off..off + len` reads from, and where: the
/// member (among `copies`) whose injector counts a read.
fn reader_of(f: &Fixture, array: &Array, off: u64, len: usize, copies: &[md::Location]) -> md::Location {
    let before: Vec<u64> = copies.iter().map(|c| reads_seen(f, c.slot)).collect();
    let mut buf = vec![0u8; len];
    array.read_at(off, &mut buf).expect("probe read");
    let read: Vec<md::Location> =
        copies.iter().zip(&before).filter(|(c, &b)| reads_seen(f, c.slot) > b).map(|(c, _)| *c).collect();
    assert_eq!(read.len(), 1, "read at {off} went to {read:?} of {copies:?}");
    read[0]
}

fn specs() -> Vec<(&'static str, Spec)> {
    let mk = |level, disks, chunk: u64| {
        let mut s = Spec::new(level, disks, MIB + 512 * KIB);
        if level != Level::Raid1 {
            s.chunk_sectors = (chunk / 512) as u32;
        }
        s
    };
    vec![
        ("raid1", mk(Level::Raid1, 2, 0)),
        ("raid10", mk(Level::Raid10, 4, 64 * KIB)),
        ("raid5", mk(Level::Raid5, 4, 64 * KIB)),
        ("raid6", mk(Level::Raid6, 5, 64 * KIB)),
    ]
}

/// One corrected error per level: right bytes, member rewritten, count 1.
#[test]
fn a_read_error_is_answered_rewritten_and_counted() {
    for (tag, spec) in specs() {
        let mut f = fixture(&format!("fix-{tag}"), &spec);
        let asm = f.writable();
        let array = &asm.array;
        let mut rng = Rng::new(7);
        // Some fresh data around the spot (cached in the stripe cache for
        // the parity levels).
        let off = 3 * 64 * KIB + 4096;
        let len = 8192;
        f.write(array, off - 1000, len + 3000, &mut rng);
        let copies = array.personality.locate(off);
        let victim = reader_of(&f, array, off, len, &copies);
        let good = f.image_bytes(victim.slot, victim.offset, len);
        f.scribble(victim.slot, victim.offset, len);
        let file = f.file(victim.slot);
        f.inj[victim.slot].fail_next_read(DATA_OFFSET + victim.offset, len as u64, &file);
        let faults_before = f.inj[victim.slot].faults.stats().faults;
        f.check(array, off, len, &format!("{tag}: read over the bad spot"));
        f.inj[victim.slot].faults.clear_rules();
        assert_eq!(
            f.inj[victim.slot].faults.stats().faults,
            faults_before + 1,
            "{tag}: the fault fired once"
        );
        assert_eq!(
            f.image_bytes(victim.slot, victim.offset, len),
            good,
            "{tag}: slot {} rewritten with the good bytes",
            victim.slot
        );
        assert_eq!(read_errors(array, victim.slot), 1, "{tag}: errors of slot {}", victim.slot);
        assert!(!faulty(array, victim.slot), "{tag}: member still in service");
        for s in (0..f.paths.len()).filter(|&s| s != victim.slot) {
            assert_eq!(read_errors(array, s), 0, "{tag}: errors of slot {s}");
        }
        // Everything still reads right, and later writes too.
        f.check(array, 0, array.size() as usize, &format!("{tag}: whole array"));
        f.write(array, off + 100, 5000, &mut rng);
        f.check(array, 0, array.size() as usize, &format!("{tag}: whole array after a write"));
    }
}

/// raid6 with one member missing: a failing read of P (needed to rebuild
/// the missing member's data) is answered through Q, and P is recomputed
/// and rewritten.
#[test]
fn raid6_degraded_parity_read_error_recomputes_parity() {
    let spec = specs().into_iter().find(|(t, _)| *t == "raid6").map(|(_, s)| s).expect("raid6 spec");
    let chunk = u64::from(spec.chunk_sectors) * 512;
    let mut f = fixture("raid6-p", &spec);
    let row = 2u64;
    let (gone, p_slot, off) = {
        let asm = f.writable();
        let array = &asm.array;
        let mut rng = Rng::new(11);
        f.write(array, 0, 3 * 3 * chunk as usize, &mut rng);
        let lay = array.personality.syndrome_layout(row * chunk).expect("layout");
        let off = row * 3 * chunk + 4096;
        (array.personality.locate(off)[0].slot, lay.p, off)
    };
    let present: Vec<usize> = (0..5).filter(|&s| s != gone).collect();
    let (paths, opts) = f.options(&present);
    let asm = assemble_writable(&paths, &opts).expect("degraded writable");
    let array = &asm.array;
    assert_eq!(array.missing(), 1);
    let p_off = row * chunk + 4096;
    let len = 4096usize;
    let good = f.image_bytes(p_slot, p_off, len);
    f.scribble(p_slot, p_off, len);
    let file = f.file(p_slot);
    f.inj[p_slot].fail_next_read(DATA_OFFSET + p_off, len as u64, &file);
    f.check(array, off, len, "raid6: missing data rebuilt through Q");
    f.inj[p_slot].faults.clear_rules();
    assert_eq!(f.image_bytes(p_slot, p_off, len), good, "raid6: P rewritten");
    assert_eq!(read_errors(array, p_slot), 1);
    assert!(!faulty(array, p_slot));
    f.check(array, 0, array.size() as usize, "raid6: whole array");
}

/// md's limit: the 21st corrected error fails the member.
#[test]
fn past_the_limit_the_member_fails() {
    for (tag, spec) in specs() {
        let mut f = fixture(&format!("limit-{tag}"), &spec);
        let asm = f.writable();
        let array = &asm.array;
        let off = 64 * KIB + 512;
        let len = 4096;
        let copies = array.personality.locate(off);
        let victim = reader_of(&f, array, off, len, &copies);
        let file = f.file(victim.slot);
        for n in 1..=MAX_CORRECTED_READ_ERRORS + 1 {
            f.inj[victim.slot].fail_next_read(DATA_OFFSET + victim.offset, len as u64, &file);
            f.check(array, off, len, &format!("{tag}: read {n}"));
            f.inj[victim.slot].faults.clear_rules();
            assert_eq!(read_errors(array, victim.slot), n, "{tag}: count after {n} errors");
            let want = n > MAX_CORRECTED_READ_ERRORS;
            assert_eq!(faulty(array, victim.slot), want, "{tag}: faulty after {n} errors");
        }
        assert_eq!(array.missing(), 1, "{tag}");
        f.check(array, 0, array.size() as usize, &format!("{tag}: whole array without the member"));
    }
}

/// A failing rewrite fails the member as a write error.
#[test]
fn a_failing_rewrite_fails_the_member() {
    let spec = specs().into_iter().find(|(t, _)| *t == "raid1").map(|(_, s)| s).expect("raid1 spec");
    let mut f = fixture("rewrite-fails", &spec);
    let asm = f.writable();
    let array = &asm.array;
    let (off, len) = (8192u64, 4096usize);
    let victim = reader_of(&f, array, off, len, &array.personality.locate(off));
    let file = f.file(victim.slot);
    f.inj[victim.slot].fail_next_read(DATA_OFFSET + victim.offset, len as u64, &file);
    f.inj[victim.slot].faults.add_rule(Rule::new(Ops::Write, Trigger::Always));
    f.inj[victim.slot].added += 1;
    f.check(array, off, len, "raid1: read with a failing rewrite");
    f.inj[victim.slot].faults.clear_rules();
    let fl = array.health().flags(victim.slot).expect("member");
    assert!(fl & flags::FAULTY != 0 && fl & flags::WRITE_ERROR != 0, "flags {fl:#x}");
    assert_eq!(read_errors(array, victim.slot), 1);
}

/// raid0 has no redundancy: EIO, no member failed, nothing counted.
#[test]
fn raid0_read_error_is_eio() {
    let mut spec = Spec::new(Level::Raid0, 3, MIB + 256 * KIB);
    spec.chunk_sectors = 128;
    let mut f = fixture("raid0", &spec);
    let asm = f.writable();
    let array = &asm.array;
    let off = 5 * 64 * KIB + 100;
    let loc = array.personality.locate(off)[0];
    f.inj[loc.slot].fail_reads(DATA_OFFSET + loc.offset, 1);
    let mut buf = vec![0x77u8; 10_000];
    let e = array.read_at(off - 2000, &mut buf).expect_err("raid0 read over a bad sector");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    f.inj[loc.slot].faults.clear_rules();
    assert!(!faulty(array, loc.slot));
    assert_eq!(read_errors(array, loc.slot), 0);
    assert_eq!(array.missing(), 0);
    f.check(array, 0, array.size() as usize, "raid0 after the error");
}

/// A degraded raid5 whose read needs the failing member: EIO (never
/// zeros), no member failed; other rows still read.
#[test]
fn degraded_raid5_read_error_is_eio() {
    let spec = specs().into_iter().find(|(t, _)| *t == "raid5").map(|(_, s)| s).expect("raid5 spec");
    let chunk = u64::from(spec.chunk_sectors) * 512;
    let mut f = fixture("raid5-degraded", &spec);
    let row = 1u64;
    let off = row * 3 * chunk + 8192;
    let gone = {
        let asm = f.writable();
        asm.array.personality.locate(off)[0].slot
    };
    for writable in [true, false] {
        let present: Vec<usize> = (0..4).filter(|&s| s != gone).collect();
        let asm = if writable {
            let (paths, opts) = f.options(&present);
            assemble_writable(&paths, &opts).expect("degraded writable")
        } else {
            f.read_only(&present)
        };
        let array = &asm.array;
        // Another member of the same row, at the same columns.
        let other = present[0];
        f.inj[other].fail_reads(DATA_OFFSET + row * chunk + 8192, 4096);
        let mut buf = vec![0u8; 4096];
        let e = array.read_at(off, &mut buf).expect_err("unanswerable read");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "writable {writable}: {e}");
        // Also a read of the failing member's own data in that row.
        let own = (0..3)
            .map(|k| row * 3 * chunk + k * chunk + 8192)
            .find(|&a| array.personality.locate(a)[0].slot == other);
        if let Some(a) = own {
            let e = array.read_at(a, &mut buf).expect_err("unanswerable read of the failing member");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "writable {writable}: {e}");
        }
        f.inj[other].faults.clear_rules();
        assert!(!faulty(array, other));
        assert_eq!(read_errors(array, other), 0);
        assert_eq!(array.missing(), 1);
        f.check(array, 0, array.size() as usize, &format!("degraded raid5 (writable {writable})"));
    }
}

/// A read-only assembly answers and counts but does not rewrite; the
/// count shows in `dev-*/errors`, and a store there sets it.
#[test]
fn read_only_counts_without_rewriting() {
    for (tag, spec) in specs() {
        let mut f = fixture(&format!("ro-{tag}"), &spec);
        let all: Vec<usize> = (0..f.paths.len()).collect();
        let asm = f.read_only(&all);
        let array = &asm.array;
        assert!(!array.writable());
        let (off, len) = (2 * 64 * KIB + 4096, 8192usize);
        let victim = reader_of(&f, array, off, len, &array.personality.locate(off));
        f.scribble(victim.slot, victim.offset, len);
        let junk = f.image_bytes(victim.slot, victim.offset, len);
        f.inj[victim.slot].fail_reads(DATA_OFFSET + victim.offset, len as u64);
        f.check(array, off, len, &format!("{tag}: read-only read over the bad spot"));
        f.inj[victim.slot].faults.clear_rules();
        assert_eq!(f.image_bytes(victim.slot, victim.offset, len), junk, "{tag}: nothing rewritten");
        assert_eq!(read_errors(array, victim.slot), 1, "{tag}");
        assert!(!faulty(array, victim.slot), "{tag}");

        let fs = kernfs::Kernfs::new();
        let _sys = md::sysfs::publish(&fs, &fs.root(), array, true).expect("publish");
        let name = f.paths[victim.slot].file_name().expect("name").to_string_lossy().into_owned();
        let path = format!("md/dev-{name}/errors");
        let node = fs.walk(&path).unwrap_or_else(|| panic!("{path} missing"));
        let file = node.open(kernfs::OpenFlags::RDWR).expect("open");
        let mut buf = [0u8; 64];
        let k = file.read(0, &mut buf).expect("read");
        assert_eq!(&buf[..k], b"1\n", "{tag}: {path}");
        assert_eq!(file.write(0, b"0\n"), Ok(2));
        assert_eq!(read_errors(array, victim.slot), 0, "{tag}: store sets the count");
    }
}
