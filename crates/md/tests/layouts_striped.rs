//! raid0, raid1 and raid10 read paths against an independent reference
//! encoder and against member images written by the real Linux md driver.
//!
//! The reference encoder restates each layout from its definition, one
//! array chunk at a time: raid0 walks the zones row by row (each zone being
//! the members still longer than the previous zone, striped in slot order),
//! raid10 places the near copies of chunk `c` at device positions
//! `c * near_copies + n` of a row-major grid of `raid_disks` columns and
//! moves each far copy `near_copies` devices on inside its far set, either a
//! section (far) or a row (offset) further down. It writes whole arrays onto
//! in-memory members; the tests then check that the personality reads every
//! byte back, that `locate` agrees with the reference for every chunk, that
//! no two copies share a member location, and that degraded reads succeed
//! exactly when every chunk keeps a present copy.

use std::collections::HashSet;
use std::io;

mod common;
use common::{check_fixture, unpack_fixture};
use md::personality::{build, Geometry, Level, Location, MemberRead, Personality};
use md::synth::Rng;
use proptest::prelude::*;

const SECTOR: u64 = 512;

// ---------------------------------------------------------------------------
// In-memory members
// ---------------------------------------------------------------------------

/// Member images in memory, some possibly absent or failing every read.
struct Mem {
    disks: Vec<Vec<u8>>,
    present: Vec<bool>,
    failing: Vec<bool>,
}

impl Mem {
    fn new(disks: Vec<Vec<u8>>) -> Mem {
        let n = disks.len();
        Mem { disks, present: vec![true; n], failing: vec![false; n] }
    }

    /// Marks the slots whose bit is set in `mask` as absent.
    fn set_missing_mask(&mut self, mask: u32) {
        for (s, p) in self.present.iter_mut().enumerate() {
            *p = mask & (1 << s) == 0;
        }
    }
}

impl MemberRead for Mem {
    fn is_present(&self, slot: usize) -> bool {
        self.present[slot]
    }

    fn read_at(&self, slot: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        assert!(self.present[slot], "read of absent member {slot}");
        if self.failing[slot] {
            return Err(io::Error::other(format!("member {slot} fails")));
        }
        let disk = &self.disks[slot];
        let start = offset as usize;
        let end = start + buf.len();
        if end > disk.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {}..{end} past the end of member {slot}", start),
            ));
        }
        buf.copy_from_slice(&disk[start..end]);
        Ok(())
    }
}

/// Array contents: pseudo-random bytes from `seed`.
fn array_image(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut v = Vec::with_capacity(len as usize);
    while (v.len() as u64) < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len as usize);
    v
}

// ---------------------------------------------------------------------------
// Reference encoder
// ---------------------------------------------------------------------------

/// Where the reference puts every array chunk: for chunk `c`, every copy as
/// (slot, member byte offset of the chunk's start).
struct Placement {
    chunk_bytes: u64,
    array_bytes: u64,
    members: usize,
    member_bytes: u64,
    chunks: Vec<Vec<(usize, u64)>>,
}

impl Placement {
    /// Writes `image` onto members laid out by the placement; bytes no chunk
    /// covers hold 0xEE.
    fn encode(&self, image: &[u8]) -> Vec<Vec<u8>> {
        let mut disks = vec![vec![0xEEu8; self.member_bytes as usize]; self.members];
        for (c, copies) in self.chunks.iter().enumerate() {
            let start = c as u64 * self.chunk_bytes;
            let end = (start + self.chunk_bytes).min(self.array_bytes);
            let data = &image[start as usize..end as usize];
            for &(slot, off) in copies {
                disks[slot][off as usize..off as usize + data.len()].copy_from_slice(data);
            }
        }
        disks
    }

    /// The sorted copies of array byte `offset`.
    fn locate(&self, offset: u64) -> Vec<Location> {
        let c = (offset / self.chunk_bytes) as usize;
        let mut v: Vec<Location> = self.chunks[c]
            .iter()
            .map(|&(slot, off)| Location { slot, offset: off + offset % self.chunk_bytes })
            .collect();
        v.sort();
        v
    }

    /// Whether every chunk has a copy on a member whose bit is clear in
    /// `missing`.
    fn chunk_readable(&self, c: usize, missing: u32) -> bool {
        self.chunks[c].iter().any(|&(s, _)| missing & (1 << s) == 0)
    }
}

/// raid0 as md lays it out. `layout_orig` picks the pre-3.14 member choice.
fn reference_raid0(chunk_sectors: u64, member_sectors: &[u64], layout_orig: bool) -> Placement {
    let chunk_bytes = chunk_sectors * SECTOR;
    // Whole chunks per member.
    let rows: Vec<u64> = member_sectors.iter().map(|s| s / chunk_sectors).collect();
    // md's size: every member's rounded size, masked with ~(chunk-1).
    let array_sectors: u64 = rows.iter().map(|r| (r * chunk_sectors) & !(chunk_sectors - 1)).sum();
    let array_bytes = array_sectors * SECTOR;
    let mut levels = rows.clone();
    levels.sort();
    levels.dedup();
    let mut chunks = Vec::new();
    let mut below = 0u64;
    for &level in &levels {
        // Members reaching past the previous level, in slot order.
        let devs: Vec<usize> = (0..rows.len()).filter(|&s| rows[s] >= level).collect();
        let zone_first = chunks.len() as u64;
        for row in below..level {
            for j in 0..devs.len() {
                let in_zone = (row - below) * devs.len() as u64 + j as u64;
                let dev = if layout_orig {
                    devs[((zone_first + in_zone) % devs.len() as u64) as usize]
                } else {
                    devs[j]
                };
                chunks.push(vec![(dev, row * chunk_bytes)]);
            }
        }
        below = level;
    }
    let used = array_bytes.div_ceil(chunk_bytes) as usize;
    assert!(used <= chunks.len());
    chunks.truncate(used);
    Placement {
        chunk_bytes,
        array_bytes,
        members: rows.len(),
        member_bytes: rows.iter().max().copied().unwrap_or(0) * chunk_bytes,
        chunks,
    }
}

/// A raid10 shape in the reference's terms.
#[derive(Clone, Copy, Debug)]
struct R10Shape {
    raid_disks: u64,
    near: u64,
    far: u64,
    offset: bool,
    /// Far-set variant: 0 original, 1 (disks / far), 2 (near * far).
    variant: u32,
}

impl R10Shape {
    fn layout(&self) -> u32 {
        (self.near as u32)
            | (self.far as u32) << 8
            | if self.offset { 1 << 16 } else { 0 }
            | self.variant << 17
    }

    fn set_size(&self) -> u64 {
        match self.variant {
            0 => self.raid_disks,
            1 => self.raid_disks / self.far,
            _ => self.near * self.far,
        }
    }

    /// The far set holding device `d`: (first device, size); the last set
    /// takes the devices left over.
    fn far_set(&self, d: u64) -> (u64, u64) {
        let size = self.set_size();
        let sets = self.raid_disks / size;
        let set = (d / size).min(sets - 1);
        let start = set * size;
        let len = if set == sets - 1 { self.raid_disks - start } else { size };
        (start, len)
    }

    /// Shapes where md's arithmetic leaves the plain definition (a wrapped
    /// near copy in the offset layout lands on a far row; a far copy leaves
    /// its set near the last set): not modelled by the reference.
    fn quirky(&self) -> bool {
        // A row does not hold a whole number of chunks' near copies.
        let wraps = self.raid_disks / self.near * self.near != self.raid_disks;
        // The last far set has the leftover devices.
        let uneven_sets = self.far_set(self.raid_disks - 1).1 != self.set_size();
        self.far > 1 && self.near > 1 && ((self.offset && wraps) || (self.variant != 0 && uneven_sets))
    }
}

/// raid10 as md lays it out, for members of `dev_sectors`.
fn reference_raid10(shape: R10Shape, chunk_sectors: u64, dev_sectors: u64) -> Placement {
    let chunk_bytes = chunk_sectors * SECTOR;
    let r = shape.raid_disks;
    let copies = shape.near * shape.far;
    // Chunks in the array: each far section holds (dev chunks / far) rows
    // of raid_disks chunk slots, near_copies of them per chunk.
    let array_chunks = (dev_sectors / chunk_sectors / shape.far) * r / shape.near;
    // Used chunks per device, rounded up; far sections split it evenly.
    let dev_chunks = (array_chunks * copies).div_ceil(r);
    let section = dev_chunks / shape.far;
    let mut chunks = Vec::new();
    for c in 0..array_chunks {
        let mut v = Vec::new();
        for n in 0..shape.near {
            let p = c * shape.near + n;
            let (mut dev, row) = (p % r, p / r);
            for f in 0..shape.far {
                let dev_row = if shape.offset { row * shape.far + f } else { row + f * section };
                v.push((dev as usize, dev_row * chunk_bytes));
                let (start, len) = shape.far_set(dev);
                dev = start + (dev - start + shape.near) % len;
            }
        }
        chunks.push(v);
    }
    Placement {
        chunk_bytes,
        array_bytes: array_chunks * chunk_bytes,
        members: r as usize,
        member_bytes: dev_chunks * chunk_bytes,
        chunks,
    }
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Checks size, `locate` for every chunk, injectivity, full and random reads.
fn check_layout(p: &dyn Personality, reference: &Placement, seed: u64) -> Mem {
    assert_eq!(p.array_bytes(), reference.array_bytes, "array size");
    let copies = reference.chunks.first().map_or(0, Vec::len);

    // locate agrees with the reference at the start, middle and end of
    // every chunk; no member location is used twice.
    let mut seen = HashSet::new();
    for (c, placed) in reference.chunks.iter().enumerate() {
        let start = c as u64 * reference.chunk_bytes;
        let end = (start + reference.chunk_bytes).min(reference.array_bytes);
        for off in [start, start + (end - start) / 2, end - 1] {
            assert_eq!(p.locate(off), reference.locate(off), "locate({off}), chunk {c}");
        }
        assert_eq!(placed.len(), copies);
        for &(slot, member_off) in placed {
            assert!(
                seen.insert((slot, member_off)),
                "chunk {c}: member {slot} offset {member_off} holds two chunks"
            );
        }
    }
    assert!(p.locate(reference.array_bytes).is_empty());

    let image = array_image(reference.array_bytes, seed);
    let mem = Mem::new(reference.encode(&image));
    let mut all = vec![0u8; image.len()];
    p.read(&mem, 0, &mut all).expect("full read");
    assert!(all == image, "full read differs");

    let mut rng = Rng(seed.wrapping_mul(31) | 1);
    for _ in 0..24 {
        let off = rng.below(reference.array_bytes + 1);
        let len = rng.below((reference.array_bytes - off).min(3 << 20) + 1) as usize;
        let mut buf = vec![0u8; len];
        p.read(&mem, off, &mut buf).unwrap_or_else(|e| panic!("read {len} at {off}: {e}"));
        assert!(buf[..] == image[off as usize..off as usize + len], "read {len} at {off}");
    }

    // Out of range.
    let mut one = [0u8; 1];
    let err = p.read(&mem, reference.array_bytes, &mut one).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(p.read(&mem, u64::MAX, &mut one).is_err());

    let hint = p.io_hint();
    assert!(hint > 0);
    mem
}

/// With every set of missing members: `readable_with` matches the
/// reference, every chunk with a present copy reads back, and a chunk with
/// none gives an error.
fn check_degraded(p: &dyn Personality, reference: &Placement, mem: &mut Mem, image_seed: u64) {
    let image = array_image(reference.array_bytes, image_seed);
    let n = reference.members;
    for missing in 0u32..(1 << n) {
        mem.set_missing_mask(missing);
        let all_readable = (0..reference.chunks.len()).all(|c| reference.chunk_readable(c, missing));
        assert_eq!(p.readable_with(&mem.present), all_readable, "readable_with, missing mask {missing:#b}");
        for c in 0..reference.chunks.len() {
            let start = c as u64 * reference.chunk_bytes;
            let end = (start + reference.chunk_bytes).min(reference.array_bytes);
            let mut buf = vec![0u8; (end - start) as usize];
            let r = p.read(mem, start, &mut buf);
            if reference.chunk_readable(c, missing) {
                r.unwrap_or_else(|e| panic!("chunk {c}, missing {missing:#b}: {e}"));
                assert!(buf[..] == image[start as usize..end as usize], "chunk {c}, missing {missing:#b}");
            } else {
                assert!(r.is_err(), "chunk {c} read with every copy missing ({missing:#b})");
            }
        }
        let mut all = vec![0u8; image.len()];
        let r = p.read(mem, 0, &mut all);
        if all_readable {
            r.expect("full degraded read");
            assert!(all == image, "full read, missing {missing:#b}");
        } else if !image.is_empty() {
            assert!(r.is_err());
        }
    }
    mem.set_missing_mask(0);
}

fn raid0_geometry(chunk_sectors: u32, member_sectors: Vec<u64>, layout: Option<u32>) -> Geometry {
    Geometry {
        level: Level::Raid0,
        layout: layout.unwrap_or(0),
        raid0_layout_set: layout.is_some(),
        chunk_sectors,
        raid_disks: member_sectors.len() as u32,
        dev_sectors: 0,
        member_sectors,
    }
}

fn raid10_geometry(shape: R10Shape, chunk_sectors: u32, dev_sectors: u64) -> Geometry {
    Geometry {
        level: Level::Raid10,
        layout: shape.layout(),
        raid0_layout_set: false,
        chunk_sectors,
        raid_disks: shape.raid_disks as u32,
        dev_sectors,
        member_sectors: vec![dev_sectors + 64; shape.raid_disks as usize],
    }
}

/// Chunk sizes in sectors, 4 KiB to 1 MiB.
fn pow2_chunk() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![8u32, 16, 32, 64, 128, 256, 512, 1024, 2048])
}

/// Rows per member so that a test array stays a few MiB.
fn rows_for(chunk_sectors: u32, members: usize, wanted: u64) -> u64 {
    let budget = (6u64 << 20) / (u64::from(chunk_sectors) * SECTOR * members as u64);
    wanted.min(budget.max(2))
}

// ---------------------------------------------------------------------------
// raid0
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn raid0_reads_back_reference(
        chunk in prop_oneof![pow2_chunk(), prop::sample::select(vec![1u32, 3, 12, 24, 40, 100, 200])],
        wanted in prop::collection::vec((0u64..=6, 0u64..4096), 2..=8),
        orig in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let n = wanted.len();
        let member_sectors: Vec<u64> = wanted
            .iter()
            .map(|&(rows, extra)| {
                rows_for(chunk, n, rows) * u64::from(chunk) + extra % u64::from(chunk)
            })
            .collect();
        let layout = if orig { 1 } else { 2 };
        let g = raid0_geometry(chunk, member_sectors.clone(), Some(layout));
        let p = build(&g).expect("valid raid0");
        let reference = reference_raid0(u64::from(chunk), &member_sectors, orig);
        let mem = check_layout(&*p, &reference, seed);
        // raid0 needs every member.
        let mut present = vec![true; n];
        prop_assert!(p.readable_with(&present));
        present[n - 1] = false;
        prop_assert!(!p.readable_with(&present));
        let stripe = u64::from(chunk) * SECTOR * n as u64;
        prop_assert_eq!(p.io_hint() % stripe, 0);
        drop(mem);
    }

    #[test]
    fn raid0_single_zone_ignores_layout(
        chunk in pow2_chunk(),
        n in 2usize..=8,
        rows in 1u64..=6,
        layout in prop::option::of(any::<u32>()),
        seed in any::<u64>(),
    ) {
        let rows = rows_for(chunk, n, rows);
        let member_sectors = vec![rows * u64::from(chunk); n];
        let g = raid0_geometry(chunk, member_sectors.clone(), layout);
        let p = build(&g).expect("single-zone raid0 with any layout");
        let reference = reference_raid0(u64::from(chunk), &member_sectors, true);
        check_layout(&*p, &reference, seed);
        prop_assert_eq!(p.array_bytes(), rows * u64::from(chunk) * SECTOR * n as u64);
    }
}

#[test]
fn raid0_multizone_orig_and_alt_known_answers() {
    // Members of 1, 3 and 3 chunks (8 sectors): zone 0 = chunks 0..3 on
    // rows 0 of slots 0,1,2; zone 1 = chunks 3..7 on rows 1,2 of slots 1,2.
    let sizes = vec![8, 24, 24];
    let orig = build(&raid0_geometry(8, sizes.clone(), Some(1))).unwrap();
    let alt = build(&raid0_geometry(8, sizes, Some(2))).unwrap();
    assert_eq!(orig.array_bytes(), 7 * 4096);
    assert_eq!(alt.array_bytes(), 7 * 4096);
    let at = |slot, row: u64| vec![Location { slot, offset: row * 4096 }];
    // Zone 0 agrees.
    for (c, slot) in [(0u64, 0usize), (1, 1), (2, 2)] {
        assert_eq!(orig.locate(c * 4096), at(slot, 0));
        assert_eq!(alt.locate(c * 4096), at(slot, 0));
    }
    // Zone 1: the alternate layout counts chunks from the zone start, the
    // original from the array start (chunk 3 is odd).
    assert_eq!(alt.locate(3 * 4096), at(1, 1));
    assert_eq!(alt.locate(4 * 4096), at(2, 1));
    assert_eq!(alt.locate(5 * 4096 + 7), vec![Location { slot: 1, offset: 2 * 4096 + 7 }]);
    assert_eq!(orig.locate(3 * 4096), at(2, 1));
    assert_eq!(orig.locate(4 * 4096), at(1, 1));
    assert_eq!(orig.locate(6 * 4096), at(1, 2));
}

#[test]
fn raid0_multizone_without_layout_is_refused() {
    let err = build(&raid0_geometry(128, vec![1024, 2048, 2048], None)).unwrap_err();
    assert!(err.0.contains("layout"), "{err}");
    // Same sizes after rounding to chunks: one zone, no layout needed.
    assert!(build(&raid0_geometry(128, vec![1024, 1100, 1151], None)).is_ok());
}

#[test]
fn raid0_unknown_layout_is_refused() {
    for layout in [0u32, 3, 0xffff_ffff] {
        let err = build(&raid0_geometry(128, vec![1024, 2048], Some(layout))).unwrap_err();
        assert!(err.0.contains(&layout.to_string()), "{err}");
    }
}

#[test]
fn raid0_nonsense_geometry_is_refused() {
    assert!(build(&raid0_geometry(0, vec![1024, 1024], Some(2))).is_err());
    let mut g = raid0_geometry(128, vec![1024, 1024], None);
    g.raid_disks = 3;
    assert!(build(&g).is_err());
    assert!(build(&raid0_geometry(u32::MAX, vec![u64::MAX; 4], Some(2))).is_err());
    // Huge but representable members are fine.
    assert!(build(&raid0_geometry(128, vec![1 << 40; 4], None)).is_ok());
}

#[test]
fn raid0_missing_member_gives_error_not_zeros() {
    let sizes = vec![64u64; 3];
    let p = build(&raid0_geometry(8, sizes.clone(), None)).unwrap();
    let reference = reference_raid0(8, &sizes, true);
    let mut mem = Mem::new(reference.encode(&array_image(reference.array_bytes, 5)));
    mem.set_missing_mask(0b010);
    let mut buf = vec![0u8; 3 * 4096];
    assert!(p.read(&mem, 0, &mut buf).is_err());
    // Chunks on present members still read.
    let mut chunk = vec![0u8; 4096];
    p.read(&mem, 2 * 4096, &mut chunk).unwrap();
}

// ---------------------------------------------------------------------------
// raid1
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn raid1_reads_back_with_any_tolerable_missing_set(
        n in 1usize..=5,
        dev_sectors in 0u64..8192,
        seed in any::<u64>(),
    ) {
        let g = Geometry {
            level: Level::Raid1,
            layout: 0,
            raid0_layout_set: false,
            chunk_sectors: 0,
            raid_disks: n as u32,
            dev_sectors,
            member_sectors: vec![dev_sectors + 8; n],
        };
        let p = build(&g).expect("valid raid1");
        let array_bytes = dev_sectors * SECTOR;
        prop_assert_eq!(p.array_bytes(), array_bytes);
        let image = array_image(array_bytes, seed);
        let mut disk = image.clone();
        disk.extend_from_slice(&[0xEE; 4096]);
        let mut mem = Mem::new(vec![disk; n]);
        for off in [0, array_bytes / 3, array_bytes.saturating_sub(1)] {
            if off < array_bytes {
                let want: Vec<Location> = (0..n).map(|slot| Location { slot, offset: off }).collect();
                prop_assert_eq!(p.locate(off), want);
            }
        }
        prop_assert!(p.locate(array_bytes).is_empty());
        let mut rng = Rng(seed | 1);
        for missing in 0u32..(1 << n) {
            mem.set_missing_mask(missing);
            let readable = mem.present.iter().any(|&x| x);
            prop_assert_eq!(p.readable_with(&mem.present), readable);
            let mut all = vec![0u8; image.len()];
            let r = p.read(&mem, 0, &mut all);
            if readable {
                prop_assert!(r.is_ok());
                prop_assert!(all == image);
                let off = rng.below(array_bytes + 1);
                let len = rng.below(array_bytes - off + 1) as usize;
                let mut buf = vec![0u8; len];
                p.read(&mem, off, &mut buf).unwrap();
                prop_assert!(buf[..] == image[off as usize..off as usize + len]);
            } else if array_bytes > 0 {
                prop_assert!(r.is_err());
            }
        }
    }
}

#[test]
fn raid1_spreads_large_reads_and_survives_a_failing_mirror() {
    let dev_sectors = 3 * 2048 + 5; // a little over 3 MiB
    let g = Geometry {
        level: Level::Raid1,
        layout: 0,
        raid0_layout_set: false,
        chunk_sectors: 0,
        raid_disks: 2,
        dev_sectors,
        member_sectors: vec![dev_sectors; 2],
    };
    let p = build(&g).unwrap();
    let image = array_image(dev_sectors * SECTOR, 77);
    let mut mem = Mem::new(vec![image.clone(), image.clone()]);
    let mut all = vec![0u8; image.len()];
    p.read(&mem, 0, &mut all).unwrap();
    assert!(all == image);
    mem.failing[1] = true;
    all.fill(0);
    p.read(&mem, 0, &mut all).unwrap();
    assert!(all == image);
    mem.failing[0] = true;
    assert!(p.read(&mem, 0, &mut all).is_err());
    assert!(p.io_hint() >= 1 << 20);
}

// ---------------------------------------------------------------------------
// raid10
// ---------------------------------------------------------------------------

/// raid10 shapes the reference models: 2 or 3 copies, 2..=8 members.
fn r10_shape() -> impl Strategy<Value = R10Shape> {
    (2u64..=8, 1u64..=3, 1u64..=3, any::<bool>(), 0u32..=2)
        .prop_map(|(raid_disks, near, far, offset, variant)| R10Shape {
            raid_disks,
            near,
            far,
            offset,
            variant,
        })
        .prop_filter("copies in 2..=raid_disks", |s| {
            let c = s.near * s.far;
            (2..=s.raid_disks).contains(&c)
        })
        .prop_filter("set size >= 1", |s| s.set_size() >= 1)
        .prop_filter("modelled by the reference", |s| !s.quirky())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn raid10_reads_back_reference(
        shape in r10_shape(),
        chunk in pow2_chunk(),
        rows in 1u64..=8,
        extra in 0u64..4096,
        seed in any::<u64>(),
    ) {
        let rows = rows_for(chunk, shape.raid_disks as usize, rows * shape.far).max(shape.far);
        let dev_sectors = rows * u64::from(chunk) + extra % u64::from(chunk);
        let p = build(&raid10_geometry(shape, chunk, dev_sectors)).expect("valid raid10");
        let reference = reference_raid10(shape, u64::from(chunk), dev_sectors);
        check_layout(&*p, &reference, seed);
        let stripe = u64::from(chunk) * SECTOR * shape.raid_disks;
        prop_assert_eq!(p.io_hint() % stripe, 0);
    }

    #[test]
    fn raid10_degraded_reads_match_copy_sets(
        shape in r10_shape(),
        chunk in prop::sample::select(vec![8u32, 16, 32]),
        rows in 1u64..=4,
        seed in any::<u64>(),
    ) {
        let dev_sectors = rows * shape.far * u64::from(chunk);
        let p = build(&raid10_geometry(shape, chunk, dev_sectors)).expect("valid raid10");
        let reference = reference_raid10(shape, u64::from(chunk), dev_sectors);
        let mut mem = check_layout(&*p, &reference, seed);
        check_degraded(&*p, &reference, &mut mem, seed);
    }
}

#[test]
fn raid10_known_answers() {
    // Hand-worked placements, 4 KiB chunks, 4 chunks per member.
    let chunk = 4096u64;
    let loc = |slot, row: u64| Location { slot, offset: row * chunk };
    let shape = |raid_disks, near, far, offset| R10Shape { raid_disks, near, far, offset, variant: 0 };
    // n2 on 3 disks: chunk 1 = positions 2,3 -> (2,0),(0,1).
    let n2 = build(&raid10_geometry(shape(3, 2, 1, false), 8, 32)).unwrap();
    assert_eq!(n2.array_bytes(), 6 * chunk);
    assert_eq!(n2.locate(chunk), vec![loc(0, 1), loc(2, 0)]);
    assert_eq!(n2.locate(2 * chunk), vec![loc(1, 1), loc(2, 1)]);
    // f2 on 3 disks: the far section starts at row 2, one device on.
    let f2 = build(&raid10_geometry(shape(3, 1, 2, false), 8, 32)).unwrap();
    assert_eq!(f2.array_bytes(), 6 * chunk);
    assert_eq!(f2.locate(0), vec![loc(0, 0), loc(1, 2)]);
    assert_eq!(f2.locate(2 * chunk), vec![loc(0, 2), loc(2, 0)]);
    assert_eq!(f2.locate(4 * chunk), vec![loc(1, 1), loc(2, 3)]);
    // o2 on 3 disks: each stripe is followed by its copy, one device on.
    let o2 = build(&raid10_geometry(shape(3, 1, 2, true), 8, 32)).unwrap();
    assert_eq!(o2.array_bytes(), 6 * chunk);
    assert_eq!(o2.locate(0), vec![loc(0, 0), loc(1, 1)]);
    assert_eq!(o2.locate(2 * chunk), vec![loc(0, 1), loc(2, 0)]);
    assert_eq!(o2.locate(3 * chunk), vec![loc(0, 2), loc(1, 3)]);
    // f2 with far sets of 2 (variant 2) on 4 disks: [B A] [D C].
    let sets = R10Shape { variant: 2, ..shape(4, 1, 2, false) };
    let fs = build(&raid10_geometry(sets, 8, 32)).unwrap();
    assert_eq!(fs.locate(chunk), vec![loc(0, 2), loc(1, 0)]);
    assert_eq!(fs.locate(3 * chunk), vec![loc(2, 2), loc(3, 0)]);
}

#[test]
fn raid10_nonsense_geometry_is_refused() {
    let base = |layout: u32, chunk: u32, disks: u32| Geometry {
        level: Level::Raid10,
        layout,
        raid0_layout_set: false,
        chunk_sectors: chunk,
        raid_disks: disks,
        dev_sectors: 4096,
        member_sectors: vec![4096; disks as usize],
    };
    assert!(build(&base(0x102, 128, 4)).is_ok());
    for (layout, chunk, disks, what) in [
        (0x102, 0, 4, "chunk 0"),
        (0x102, 96, 4, "chunk not a power of 2"),
        (0x102, 4, 4, "chunk below 4 KiB"),
        (0x101, 128, 4, "one copy"),
        (0x103, 128, 2, "more copies than disks"),
        (0x202, 128, 3, "n2 f2 on 3 disks"),
        (0x002, 128, 4, "far copies 0"),
        (0x100, 128, 4, "near copies 0"),
        (0x60102, 128, 4, "far-set variant 3"),
        (0x80102, 128, 4, "unknown bit 19"),
    ] {
        assert!(build(&base(layout, chunk, disks)).is_err(), "{what} accepted");
    }
    let mut huge = base(0x102, 1 << 31, 4);
    huge.dev_sectors = u64::MAX;
    assert!(build(&huge).is_err(), "overflowing size accepted");
}

#[test]
fn raid10_survives_a_failing_member() {
    let shape = R10Shape { raid_disks: 4, near: 2, far: 1, offset: false, variant: 0 };
    let dev_sectors = 64 * 16;
    let p = build(&raid10_geometry(shape, 16, dev_sectors)).unwrap();
    let reference = reference_raid10(shape, 16, dev_sectors);
    let image = array_image(reference.array_bytes, 9);
    let mut mem = Mem::new(reference.encode(&image));
    mem.failing[0] = true;
    mem.failing[3] = true;
    let mut all = vec![0u8; image.len()];
    p.read(&mem, 0, &mut all).unwrap();
    assert!(all == image);
    mem.failing[1] = true;
    assert!(p.read(&mem, 0, &mut all).is_err());
}

// ---------------------------------------------------------------------------
// Known answers from the real kernel
// ---------------------------------------------------------------------------

#[test]
fn kernel_raid0_4d_64k() {
    let (_dir, files) = unpack_fixture("raid0_4d_64k", 4);
    // Feature map 0: no RAID0_LAYOUT bit; one zone, so no layout needed.
    let g = raid0_geometry(128, vec![14336; 4], None);
    let p = build(&g).expect("fixture geometry");
    check_fixture(&*p, &files, 29_360_128, |_| 1, "raid0");
    assert_eq!(p.locate(65536), vec![Location { slot: 1, offset: 0 }]);
}

#[test]
fn kernel_raid10_n2_4d_64k() {
    let (_dir, mut files) = unpack_fixture("raid10_n2_4d_64k", 4);
    let g = Geometry::uniform(Level::Raid10, 258, 4, 128, 14336);
    let p = build(&g).expect("fixture geometry");
    check_fixture(&*p, &files, 14_680_064, |_| 1, "raid10 n2");
    // One member of each mirror pair may go.
    for missing in [[0usize, 2], [1, 3], [0, 3], [1, 2]] {
        files.present = vec![true; 4];
        for m in missing {
            files.present[m] = false;
        }
        assert!(p.readable_with(&files.present));
        check_fixture(&*p, &files, 14_680_064, |_| 1, &format!("raid10 n2 without {missing:?}"));
    }
    files.present = vec![false, false, true, true];
    assert!(!p.readable_with(&files.present));
    let mut buf = vec![0u8; 4096];
    assert!(p.read(&files, 0, &mut buf).is_err());
    // Chunk 1 lives on the other pair.
    p.read(&files, 65536, &mut buf).unwrap();
    assert!(buf == common::block(16, 1));
}

#[test]
fn kernel_raid1_2d() {
    let (_dir, mut files) = unpack_fixture("raid1_2d", 2);
    let g = Geometry::uniform(Level::Raid1, 0, 2, 0, 14336);
    let p = build(&g).expect("fixture geometry");
    check_fixture(&*p, &files, 7_340_032, |_| 1, "raid1");
    for gone in 0..2 {
        files.present = vec![true; 2];
        files.present[gone] = false;
        check_fixture(&*p, &files, 7_340_032, |_| 1, &format!("raid1 without m{gone}"));
    }
    files.present = vec![false; 2];
    assert!(!p.readable_with(&files.present));
    let mut buf = vec![0u8; 4096];
    assert!(p.read(&files, 0, &mut buf).is_err());
}
