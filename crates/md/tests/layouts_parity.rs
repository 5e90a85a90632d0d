//! raid4/5/6 read path against an independent reference encoder and against
//! member images written by the real Linux md driver.
//!
//! The reference encoder below restates each layout from its definition
//! (where P, Q and each data chunk of a stripe go, and Q's coefficient of
//! each data disk) without looking at the personality's code, writes whole
//! arrays with P by xor and Q by a bitwise GF(2^8) multiply, and the tests
//! check that the personality reads every byte back, healthy and with every
//! tolerable set of members missing.

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;

mod common;
use common::{check_fixture, unpack_fixture};
use md::personality::{build, Geometry, GeometryError, Level, Location, MemberRead, Personality};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// In-memory members
// ---------------------------------------------------------------------------

/// Member images in memory, some possibly marked absent; records every read.
struct Mem {
    disks: Vec<Vec<u8>>,
    present: Vec<bool>,
    log: Mutex<Vec<(usize, u64, usize)>>,
}

impl Mem {
    fn new(disks: Vec<Vec<u8>>) -> Mem {
        let present = vec![true; disks.len()];
        Mem { disks, present, log: Mutex::new(Vec::new()) }
    }

    fn with_missing(&mut self, missing: &[usize]) -> &Mem {
        self.present.iter_mut().for_each(|p| *p = true);
        for &m in missing {
            self.present[m] = false;
        }
        self.log.lock().unwrap().clear();
        self
    }
}

impl MemberRead for Mem {
    fn is_present(&self, slot: usize) -> bool {
        self.present[slot]
    }

    fn read_at(&self, slot: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        assert!(self.present[slot], "read of absent member {slot}");
        let disk = &self.disks[slot];
        let start = offset as usize;
        let end = start + buf.len();
        if end > disk.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past member end"));
        }
        buf.copy_from_slice(&disk[start..end]);
        self.log.lock().unwrap().push((slot, offset, buf.len()));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Reference encoder
// ---------------------------------------------------------------------------

/// What a member holds in one stripe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Data chunk `k` of the stripe (array chunk `stripe * data_disks + k`).
    Data(usize),
    P,
    Q,
}

/// One stripe of the reference layout: each disk's role, and for raid6 the
/// Q coefficient exponent of each data disk.
struct RefStripe {
    roles: Vec<Role>,
    coef: Vec<Option<usize>>,
}

/// Disks `0..n` without those in `skip`, in increasing order.
fn increasing(n: usize, skip: &[usize]) -> Vec<usize> {
    (0..n).filter(|d| !skip.contains(d)).collect()
}

/// Disks starting at `first`, wrapping around `n`, without those in `skip`.
fn wrapping(n: usize, first: usize, skip: &[usize]) -> Vec<usize> {
    (0..n).map(|i| (first + i) % n).filter(|d| !skip.contains(d)).collect()
}

/// raid5-style placement over `n` disks: (parity disk, data disks in data
/// order) for stripe `s`, from the layout's definition.
fn raid5_style(layout: u32, n: usize, s: u64) -> (usize, Vec<usize>) {
    let r = (s % n as u64) as usize;
    match layout {
        // left-asymmetric: parity walks down from the last disk, data from disk 0.
        0 => {
            let p = n - 1 - r;
            (p, increasing(n, &[p]))
        }
        // right-asymmetric: parity walks up from disk 0, data from disk 0.
        1 => (r, increasing(n, &[r])),
        // left-symmetric: parity walks down, data starts right after parity.
        2 => {
            let p = n - 1 - r;
            (p, wrapping(n, p + 1, &[p]))
        }
        // right-symmetric: parity walks up, data starts right after parity.
        3 => (r, wrapping(n, r + 1, &[r])),
        // parity-first.
        4 => (0, increasing(n, &[0])),
        // parity-last.
        5 => (n - 1, increasing(n, &[n - 1])),
        _ => unreachable!("layout {layout}"),
    }
}

/// The reference placement of stripe `s`.
fn reference_stripe(level: Level, layout: u32, n: usize, s: u64) -> RefStripe {
    let r = (s % n as u64) as usize;
    let (p, q, data, ddf): (usize, Option<usize>, Vec<usize>, bool) = match level {
        Level::Raid4 => (n - 1, None, increasing(n, &[n - 1]), false),
        Level::Raid5 => {
            let (p, d) = raid5_style(layout, n, s);
            (p, None, d, false)
        }
        Level::Raid6 => match layout {
            // md layouts: P as raid5, Q on the disk right after P.
            0 | 1 => {
                let p = if layout == 0 { n - 1 - r } else { r };
                let q = (p + 1) % n;
                (p, Some(q), increasing(n, &[p, q]), false)
            }
            2 | 3 => {
                let p = if layout == 2 { n - 1 - r } else { r };
                let q = (p + 1) % n;
                (p, Some(q), wrapping(n, q + 1, &[p, q]), false)
            }
            4 => (0, Some(1), increasing(n, &[0, 1]), false),
            5 => (n - 2, Some(n - 1), increasing(n, &[n - 2, n - 1]), false),
            // DDF rotating parity, zero restart: P from disk 0 upward, Q after P.
            8 => {
                let q = (r + 1) % n;
                (r, Some(q), increasing(n, &[r, q]), true)
            }
            // DDF rotating parity N restart: the first stripe is D..D P Q,
            // P walks down from disk n-2.
            9 => {
                let p = (n + n - 2 - r) % n;
                let q = (p + 1) % n;
                (p, Some(q), increasing(n, &[p, q]), true)
            }
            // DDF rotating parity N continue: P walks down from the last disk,
            // Q just before P, data from just after P onward.
            10 => {
                let p = n - 1 - r;
                let q = (p + n - 1) % n;
                (p, Some(q), wrapping(n, p + 1, &[p, q]), true)
            }
            // The *_6 layouts: raid5 layout over disks 0..n-1, Q on the last.
            16..=20 => {
                let (p, d) = raid5_style(if layout == 20 { 4 } else { layout - 16 }, n - 1, s);
                (p, Some(n - 1), d, false)
            }
            _ => unreachable!("layout {layout}"),
        },
        _ => unreachable!(),
    };
    let mut roles = vec![Role::P; n];
    if let Some(q) = q {
        roles[q] = Role::Q;
    }
    for (k, &d) in data.iter().enumerate() {
        assert_ne!(d, p);
        assert_ne!(Some(d), q);
        roles[d] = Role::Data(k);
    }
    let mut coef = vec![None; n];
    if let Some(q) = q {
        if ddf {
            // DDF: coefficient = disk number.
            for &d in &data {
                coef[d] = Some(d);
            }
        } else {
            // md: data disks numbered in disk order starting after Q.
            for (z, d) in wrapping(n, q + 1, &[p, q]).into_iter().enumerate() {
                coef[d] = Some(z);
            }
        }
    }
    RefStripe { roles, coef }
}

/// Bitwise GF(2^8) multiply, polynomial 0x11d.
fn gf_mul_slow(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1d;
        }
        b >>= 1;
    }
    r
}

/// `{02}^e`, by repeated bitwise doubling.
fn gf_pow2_slow(e: usize) -> u8 {
    (0..e).fold(1u8, |v, _| gf_mul_slow(v, 2))
}

/// A test array: its geometry and the data written to it.
#[derive(Clone, Debug)]
struct Case {
    level: Level,
    layout: u32,
    n: usize,
    chunk: usize,
    stripes: u64,
    geom: Geometry,
}

impl Case {
    /// `stripes` full stripes plus `extra_sectors` (< chunk) of unused tail.
    fn new(
        level: Level,
        layout: u32,
        n: usize,
        chunk_sectors: u32,
        stripes: u64,
        extra_sectors: u64,
    ) -> Case {
        let dev_sectors = stripes * u64::from(chunk_sectors) + extra_sectors;
        let geom = Geometry {
            level,
            layout,
            raid0_layout_set: false,
            chunk_sectors,
            raid_disks: n as u32,
            dev_sectors,
            member_sectors: vec![dev_sectors; n],
        };
        Case { level, layout, n, chunk: chunk_sectors as usize * 512, stripes, geom }
    }

    fn max_degraded(&self) -> usize {
        if self.level == Level::Raid6 {
            2
        } else {
            1
        }
    }

    fn data_disks(&self) -> usize {
        self.n - self.max_degraded()
    }

    fn array_bytes(&self) -> usize {
        self.stripes as usize * self.chunk * self.data_disks()
    }

    fn stripe(&self, s: u64) -> RefStripe {
        reference_stripe(self.level, self.layout, self.n, s)
    }

    /// Writes `data` (one array image) onto fresh members.
    fn encode(&self, data: &[u8]) -> Vec<Vec<u8>> {
        assert_eq!(data.len(), self.array_bytes());
        let dev_bytes = self.geom.dev_sectors as usize * 512;
        // Unused tail bytes are garbage, never read back.
        let mut disks: Vec<Vec<u8>> = (0..self.n).map(|d| vec![0xe0 | d as u8; dev_bytes]).collect();
        let c = self.chunk;
        let dd = self.data_disks();
        for s in 0..self.stripes {
            let st = self.stripe(s);
            let at = s as usize * c;
            let mut p = vec![0u8; c];
            let mut q = vec![0u8; c];
            for (d, role) in st.roles.iter().enumerate() {
                if let Role::Data(k) = *role {
                    let src = &data[(s as usize * dd + k) * c..][..c];
                    disks[d][at..at + c].copy_from_slice(src);
                    for (pv, sv) in p.iter_mut().zip(src) {
                        *pv ^= sv;
                    }
                    if let Some(e) = st.coef[d] {
                        let g = gf_pow2_slow(e);
                        let table: Vec<u8> = (0..=255u8).map(|x| gf_mul_slow(g, x)).collect();
                        for (qv, sv) in q.iter_mut().zip(src) {
                            *qv ^= table[*sv as usize];
                        }
                    }
                }
            }
            for (d, role) in st.roles.iter().enumerate() {
                match role {
                    Role::P => disks[d][at..at + c].copy_from_slice(&p),
                    Role::Q => disks[d][at..at + c].copy_from_slice(&q),
                    Role::Data(_) => {}
                }
            }
        }
        disks
    }

    /// The reference location of array byte `off`.
    fn locate(&self, off: usize) -> Location {
        let chunk_number = off / self.chunk;
        let s = (chunk_number / self.data_disks()) as u64;
        let k = chunk_number % self.data_disks();
        let st = self.stripe(s);
        let slot = st.roles.iter().position(|r| *r == Role::Data(k)).expect("data chunk placed");
        Location { slot, offset: s * self.chunk as u64 + (off % self.chunk) as u64 }
    }

    fn name(&self) -> String {
        format!(
            "{} layout {} disks {} chunk {} stripes {}",
            self.level, self.layout, self.n, self.chunk, self.stripes
        )
    }
}

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every subset of `0..n` with exactly `k` members.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for first in 0..n {
        for rest in subsets(n, k - 1) {
            if rest.iter().all(|&r| r > first) {
                let mut v = vec![first];
                v.extend(rest);
                out.push(v);
            }
        }
    }
    out
}

const RAID5_LAYOUTS: &[u32] = &[0, 1, 2, 3, 4, 5];
const RAID6_LAYOUTS: &[u32] = &[0, 1, 2, 3, 4, 5, 8, 9, 10, 16, 17, 18, 19, 20];

/// Every (level, layout) the personality supports.
fn all_layouts() -> Vec<(Level, u32)> {
    let mut v = vec![(Level::Raid4, 0)];
    v.extend(RAID5_LAYOUTS.iter().map(|&l| (Level::Raid5, l)));
    v.extend(RAID6_LAYOUTS.iter().map(|&l| (Level::Raid6, l)));
    v
}

fn min_disks(level: Level) -> usize {
    if level == Level::Raid6 {
        4
    } else {
        2
    }
}

/// Where two byte strings first differ (or their lengths, if one is a
/// prefix of the other); `None` if equal. Keeps failure messages short.
fn first_diff(got: &[u8], want: &[u8]) -> Option<usize> {
    if got.len() != want.len() {
        return Some(got.len().min(want.len()));
    }
    got.iter().zip(want).position(|(a, b)| a != b)
}

/// Asserts `got == want`, naming the first differing byte.
#[track_caller]
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = first_diff(got, want) {
        panic!(
            "{what}: differs at byte {i} of {} (got {:?}, want {:?})",
            want.len(),
            got.get(i),
            want.get(i)
        );
    }
}

/// Reads `len` bytes at `off`, asserting success.
fn read(p: &dyn Personality, m: &Mem, off: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0x5a; len];
    p.read(m, off as u64, &mut buf).unwrap_or_else(|e| panic!("read {len} at {off}: {e}"));
    buf
}

/// Checks the whole map of a case against the reference: `locate` agrees,
/// is injective, never lands on P or Q, and `syndrome_layout` agrees.
fn check_map(case: &Case, p: &dyn Personality) {
    assert_eq!(p.array_bytes(), case.array_bytes() as u64, "{}", case.name());
    let mut seen = HashSet::new();
    let chunk = case.chunk;
    for c in 0..case.array_bytes() / chunk {
        for off in [c * chunk, c * chunk + chunk / 2 + 3, c * chunk + chunk - 1] {
            let want = case.locate(off);
            assert_eq!(p.locate(off as u64), vec![want], "{} offset {off}", case.name());
            assert!(seen.insert(want), "{} offset {off} shares {want:?}", case.name());
            let st = case.stripe(want.offset / chunk as u64);
            assert!(matches!(st.roles[want.slot], Role::Data(_)), "{} offset {off} on parity", case.name());
        }
    }
    assert!(p.locate(case.array_bytes() as u64).is_empty());
    for s in 0..case.stripes {
        let st = case.stripe(s);
        let lay = p.syndrome_layout(s * chunk as u64 + 1).expect("parity level has a syndrome layout");
        let pd = st.roles.iter().position(|r| *r == Role::P);
        let qd = st.roles.iter().position(|r| *r == Role::Q);
        assert_eq!(Some(lay.p), pd, "{} stripe {s}", case.name());
        assert_eq!(lay.q, qd, "{} stripe {s}", case.name());
        if case.level == Level::Raid6 {
            for (z, slot) in lay.data.iter().enumerate() {
                if let Some(d) = slot {
                    assert_eq!(st.coef[*d], Some(z), "{} stripe {s} disk {d}", case.name());
                }
            }
            assert_eq!(lay.data.iter().flatten().count(), case.data_disks());
        } else {
            let want: Vec<Option<usize>> =
                (0..case.data_disks()).map(|k| st.roles.iter().position(|r| *r == Role::Data(k))).collect();
            assert_eq!(lay.data, want, "{} stripe {s}", case.name());
        }
    }
}

// ---------------------------------------------------------------------------
// Exhaustive small arrays
// ---------------------------------------------------------------------------

/// Every layout of every level with 2/4..8 members and 4 KiB chunks over
/// more than a full parity rotation: map, healthy read, every tolerable
/// missing set, and intolerable sets.
#[test]
fn every_layout_every_missing_set() {
    for (level, layout) in all_layouts() {
        for n in min_disks(level)..=8 {
            let case = Case::new(level, layout, n, 8, 2 * n as u64 + 1, 5);
            let p = build(&case.geom).unwrap_or_else(|e| panic!("{}: {e}", case.name()));
            check_map(&case, &*p);
            let data = noise(n as u64 * 1000 + u64::from(layout), case.array_bytes());
            let mut mem = Mem::new(case.encode(&data));
            let len = case.array_bytes();
            assert_same(
                &read(&*p, mem.with_missing(&[]), 0, len),
                &data,
                &format!("{} healthy", case.name()),
            );
            for k in 1..=case.max_degraded() {
                for missing in subsets(n, k) {
                    let mut present = vec![true; n];
                    missing.iter().for_each(|&m| present[m] = false);
                    assert!(p.readable_with(&present));
                    let m = mem.with_missing(&missing);
                    let what = format!("{} missing {missing:?}", case.name());
                    assert_same(&read(&*p, m, 0, len), &data, &what);
                    // An unaligned range inside the array too.
                    let (off, l) = (case.chunk / 3, len - case.chunk / 3 - 7);
                    assert_same(&read(&*p, m, off, l), &data[off..off + l], &what);
                }
            }
            for missing in subsets(n, case.max_degraded() + 1).into_iter().take(6) {
                let mut present = vec![true; n];
                missing.iter().for_each(|&m| present[m] = false);
                assert!(!p.readable_with(&present), "{} missing {missing:?}", case.name());
                let mut buf = vec![0u8; 4096];
                let m = mem.with_missing(&missing);
                assert!(p.read(m, 0, &mut buf).is_err(), "{} missing {missing:?} read", case.name());
            }
        }
    }
}

/// A healthy large read does at most one member read per chunk (runs merged),
/// reads each data byte once, and never touches P or Q.
#[test]
fn healthy_read_never_touches_parity() {
    for (level, layout) in all_layouts() {
        for n in [min_disks(level), 5] {
            let case = Case::new(level, layout, n, 16, 2 * n as u64, 0);
            let p = build(&case.geom).expect("valid");
            let data = noise(7, case.array_bytes());
            let mut mem = Mem::new(case.encode(&data));
            let m = mem.with_missing(&[]);
            assert_same(&read(&*p, m, 0, case.array_bytes()), &data, &case.name());
            let log = m.log.lock().unwrap().clone();
            // One read per chunk at most (runs contiguous on a member merge),
            // and nothing read twice or beyond the data.
            let chunks = case.array_bytes() / case.chunk;
            assert!(log.len() <= chunks, "{}", case.name());
            assert_eq!(log.iter().map(|r| r.2).sum::<usize>(), case.array_bytes(), "{}", case.name());
            for (slot, off, len) in log {
                assert_eq!(off % case.chunk as u64, 0);
                for s in off / case.chunk as u64..(off + len as u64).div_ceil(case.chunk as u64) {
                    let st = case.stripe(s);
                    assert!(matches!(st.roles[slot], Role::Data(_)), "{} read parity", case.name());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Random geometries
// ---------------------------------------------------------------------------

/// A random case: (level, layout), members, chunk (4 KiB..1 MiB), stripes,
/// unused tail sectors.
fn case_strategy() -> impl Strategy<Value = Case> {
    (0..all_layouts().len(), 0usize..7, 3u32..=11, 1u64..=3, 0u64..8).prop_map(
        |(li, extra, cshift, stripes, tail)| {
            let (level, layout) = all_layouts()[li];
            let n = min_disks(level) + extra.min(8 - min_disks(level));
            let chunk_sectors = 1u32 << cshift;
            // Keep arrays at or under ~8 MiB.
            let per_stripe = u64::from(chunk_sectors) * 512 * n as u64;
            let stripes = stripes.min((8 << 20) / per_stripe).max(1);
            Case::new(level, layout, n, chunk_sectors, stripes, tail % u64::from(chunk_sectors))
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random ranges of random geometries read back exactly, healthy, with a
    /// random tolerable missing set, and fail with an intolerable one.
    #[test]
    fn random_geometries_read_back(
        case in case_strategy(),
        seed in any::<u64>(),
        ranges in prop::collection::vec((any::<u64>(), any::<u64>()), 3),
        pick in any::<u64>(),
    ) {
        let p = build(&case.geom).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(p.array_bytes(), case.array_bytes() as u64);
        let data = noise(seed, case.array_bytes());
        let mut mem = Mem::new(case.encode(&data));
        let len = case.array_bytes();
        let n = case.n;
        // A tolerable missing set: up to max_degraded members.
        let k = (pick % (case.max_degraded() as u64 + 1)) as usize;
        let sets = subsets(n, k);
        let missing = sets[(pick / 7) as usize % sets.len()].clone();
        for (a, b) in &ranges {
            let off = (*a % len as u64) as usize;
            let l = (*b % (len - off) as u64) as usize + 1;
            let m = mem.with_missing(&[]);
            let diff = first_diff(&read(&*p, m, off, l), &data[off..off + l]);
            prop_assert!(diff.is_none(), "{} healthy {} at {}: differs at {:?}", case.name(), l, off, diff);
            let loc = p.locate(off as u64);
            prop_assert_eq!(loc, vec![case.locate(off)]);
            let m = mem.with_missing(&missing);
            let diff = first_diff(&read(&*p, m, off, l), &data[off..off + l]);
            prop_assert!(diff.is_none(), "{} missing {:?} {} at {}: differs at {:?}", case.name(), missing, l, off, diff);
        }
        let sets = subsets(n, case.max_degraded() + 1);
        let bad = sets[(pick / 11) as usize % sets.len()].clone();
        let m = mem.with_missing(&bad);
        let mut buf = vec![0u8; 1];
        prop_assert!(p.read(m, 0, &mut buf).is_err());
        // Out-of-range reads are refused.
        let m = mem.with_missing(&[]);
        let mut buf = vec![0u8; 2];
        let e = p.read(m, len as u64 - 1, &mut buf).expect_err("past the end");
        prop_assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let io_hint = p.io_hint();
        prop_assert_eq!(io_hint % (case.chunk * case.data_disks()) as u64, 0);
    }
}

// ---------------------------------------------------------------------------
// Geometry validation
// ---------------------------------------------------------------------------

fn geometry(level: Level, layout: u32, raid_disks: u32, chunk_sectors: u32) -> Geometry {
    Geometry::uniform(level, layout, raid_disks, chunk_sectors, 1 << 16)
}

fn rejects(g: Geometry, needle: &str) {
    match build(&g) {
        Ok(p) => panic!("{g:?} accepted as {p:?}"),
        Err(GeometryError(msg)) => {
            assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}")
        }
    }
}

#[test]
fn invalid_geometries_are_rejected() {
    for layout in [6, 7, 8, 16, 20, 100] {
        rejects(geometry(Level::Raid5, layout, 4, 128), &layout.to_string());
    }
    for layout in [6, 7, 11, 15, 21, u32::MAX] {
        rejects(geometry(Level::Raid6, layout, 5, 128), &layout.to_string());
    }
    rejects(geometry(Level::Raid6, 2, 3, 128), "3");
    rejects(geometry(Level::Raid5, 2, 1, 128), "1");
    rejects(geometry(Level::Raid4, 0, 1, 128), "1");
    for chunk in [0, 1, 4, 12, 24, 96, 1000] {
        rejects(geometry(Level::Raid5, 2, 4, chunk), &chunk.to_string());
    }
    // Overflowing sizes.
    let mut g = geometry(Level::Raid5, 2, 4, 1 << 30);
    g.dev_sectors = u64::MAX;
    rejects(g, "overflow");
    // The minimums and odd-but-valid shapes are accepted.
    for g in [
        geometry(Level::Raid4, 0, 2, 8),
        geometry(Level::Raid5, 5, 2, 8),
        geometry(Level::Raid6, 10, 4, 8),
        geometry(Level::Raid6, 20, 4, 2048),
        geometry(Level::Raid4, 77, 3, 128),
    ] {
        build(&g).unwrap_or_else(|e| panic!("{g:?}: {e}"));
    }
}

/// raid4 ignores the layout number: parity always on the last disk.
#[test]
fn raid4_ignores_layout() {
    let base = build(&geometry(Level::Raid4, 0, 5, 16)).expect("valid");
    for layout in [1, 2, 5, 9, 1234] {
        let other = build(&geometry(Level::Raid4, layout, 5, 16)).expect("valid");
        for off in (0..base.array_bytes()).step_by(8192 + 17) {
            assert_eq!(base.locate(off), other.locate(off));
            assert!(base.locate(off)[0].slot < 4);
        }
    }
}

/// Array size follows raid5_size: whole chunks per member times data disks.
#[test]
fn array_size_rounds_to_chunks() {
    let mut g = geometry(Level::Raid6, 2, 6, 128);
    g.dev_sectors = 128 * 10 + 127;
    assert_eq!(build(&g).expect("valid").array_bytes(), 10 * 128 * 512 * 4);
    g.dev_sectors = 127;
    assert_eq!(build(&g).expect("valid").array_bytes(), 0);
}

// ---------------------------------------------------------------------------
// Known answers from the real kernel
// ---------------------------------------------------------------------------

/// The fixture geometry: raid5 left-symmetric, 4 disks, 64 KiB chunk.
fn fixture_geometry() -> Geometry {
    Geometry::uniform(Level::Raid5, 2, 4, 128, 14336)
}

#[test]
fn kernel_raid5_left_symmetric_healthy() {
    let (_dir, mut files) = unpack_fixture("raid5_ls_4d_64k", 4);
    let p = build(&fixture_geometry()).expect("fixture geometry");
    check_fixture(&*p, &files, 22_020_096, |_| 1, "healthy");
    for gone in 0..4 {
        files.present = vec![true; 4];
        files.present[gone] = false;
        check_fixture(&*p, &files, 22_020_096, |_| 1, &format!("without m{gone}"));
    }
    files.present = vec![true, false, true, false];
    let mut buf = vec![0u8; 4096];
    assert!(p.read(&files, 0, &mut buf).is_err());
}

#[test]
fn kernel_raid5_left_symmetric_degraded() {
    let (_dir, mut files) = unpack_fixture("raid5_ls_4d_64k_degraded", 4);
    let p = build(&fixture_geometry()).expect("fixture geometry");
    // m2 was failed and holds stale data: it must be left out.
    files.present = vec![true, true, false, true];
    check_fixture(&*p, &files, 22_020_096, |b| if b < 256 { 2 } else { 1 }, "degraded");
}
