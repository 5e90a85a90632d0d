//! raid4, raid5 and raid6 write path: synthetic arrays of every layout and
//! the real kernel's raid5 fixtures, assembled writable, take random writes
//! (unaligned, sub-page, multi-stripe, full-stripe) checked against an
//! in-memory model through `Array::read_at`; then
//!
//! * every member image is checked byte for byte against the model with a
//!   parity reference written here (xor for P; GF(2^8) over 0x11d with
//!   generator 2 for Q, evaluated by Horner's rule), so P and Q are known
//!   right on disk, not only through the array's own read path;
//! * every degraded assembly the level allows reads the model back;
//! * degraded arrays take writes, arrays missing too many members refuse
//!   them, writes past the end fail with EFBIG and read-only assemblies with
//!   EROFS, with nothing changed on any member;
//! * dirty rows (past `resync_offset`) get parity from their data, member
//!   I/O errors fail writes without breaking other rows, and partial writes
//!   over more member space than the stripe cache holds stay right;
//! * concurrent writers sharing stripes (healthy and degraded) leave
//!   consistent parity, and degraded reads of bytes nobody writes stay
//!   stable while other chunks of their rows are written.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use common::{
    assert_same, assert_unchanged, assert_unchanged_from, check_model, check_parity, gf_mul2, pspec,
    read_all, reference_pq, snapshot, snapshot_from, synth_map, unpack_fixture, MemberMap, Scratch,
    DATA_OFFSET,
};
use md::synth::Rng;
use md::synth::{self, Spec};
use md::{assemble, assemble_writable, Array, AssembleOptions, Level, Personality};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A unique scratch directory for `tag`.
fn scratch(tag: &str) -> Scratch {
    let dir = Scratch(std::env::temp_dir().join(format!("umd-wpar-{}-{tag}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("create scratch dir");
    dir
}

/// Builds `spec` on fresh images; returns the scratch dir, the member paths
/// (slot order) and the array's initial content (pattern id 1).
fn build(tag: &str, spec: &Spec) -> (Scratch, Vec<PathBuf>, Vec<u8>) {
    let dir = scratch(tag);
    let paths: Vec<PathBuf> = (0..spec.member_bytes.len()).map(|i| dir.0.join(format!("m{i}.img"))).collect();
    let size = synth::write_array(spec, &paths, &mut |off, buf| synth::pattern_fill(off, 1, buf))
        .expect("write synthetic array");
    let mut model = vec![0u8; size as usize];
    synth::pattern_fill(0, 1, &mut model);
    (dir, paths, model)
}

/// Data area per member for a chunk size: at least a few stripes, small
/// enough to keep the suite fast.
fn data_bytes_for(chunk: u64) -> u64 {
    (chunk * 4).max(256 * KIB)
}

fn member_map(array: &Array) -> MemberMap {
    array
        .slots
        .iter()
        .map(|s| {
            s.map(|m| {
                assert_eq!(
                    m.data_start,
                    m.sb.data_offset * 512,
                    "data_start is the superblock's data_offset"
                );
                (m.dev.path().to_path_buf(), m.data_start)
            })
        })
        .collect()
}

/// Subsets of `0..n` of size `k`, in lexicographic order.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn rec(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            rec(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    rec(0, n, k, &mut Vec::new(), &mut out);
    out
}

fn without(paths: &[PathBuf], gone: &[usize]) -> Vec<PathBuf> {
    (0..paths.len()).filter(|s| !gone.contains(s)).map(|s| paths[s].clone()).collect()
}

fn max_degraded(level: Level) -> usize {
    if level == Level::Raid6 {
        2
    } else {
        1
    }
}

// ---------------------------------------------------------------------------
// Parity reference: GF(2^8) and xor written here, not md's.
// ---------------------------------------------------------------------------

/// Carry-less "Russian peasant" product modulo 0x11d.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        a = gf_mul2(a);
        b >>= 1;
    }
    r
}

fn gf_pow2(z: usize) -> u8 {
    (0..z).fold(1u8, |x, _| gf_mul2(x))
}

/// Stripe rows touched by array bytes `offset..offset + len`.
fn rows_of(offset: u64, len: u64, stripe_bytes: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / stripe_bytes..(offset + len - 1) / stripe_bytes + 1
}

/// A random write for an array of `size` bytes with `chunk`-byte chunks and
/// `stripe`-byte rows: tiny, sub-chunk, chunk, several-stripe, page-aligned
/// and stripe-aligned full-stripe writes.
fn random_range(rng: &mut Rng, size: u64, chunk: u64, stripe: u64) -> (u64, u64) {
    let (offset, len) = match rng.below(8) {
        0 => (rng.below(size), rng.below(64) + 1),
        1 => (rng.below(size), rng.below(2 * chunk) + 1),
        2 => (rng.below(size), rng.below(3 * stripe) + 1),
        3 | 4 => {
            // Full stripes, aligned.
            let n = rng.below(2) + 1;
            (rng.below(size / stripe) * stripe, n * stripe)
        }
        5 => (rng.below(size / chunk) * chunk, chunk),
        6 => (rng.below(size / 4096) * 4096, (rng.below(8) + 1) * 4096),
        _ => (rng.below(size / 4096) * 4096 + rng.below(4096), rng.below(2 * 4096) + 1),
    };
    let len = len.min(size);
    (offset.min(size - len), len)
}

/// Random writes against the model; each read back at once, the whole array
/// every `full_every` writes. Returns the set of touched rows.
#[allow(clippy::too_many_arguments)]
fn random_writes(
    array: &Array,
    model: &mut [u8],
    rng: &mut Rng,
    count: usize,
    chunk: u64,
    stripe: u64,
    full_every: usize,
    what: &str,
) -> Vec<u64> {
    let size = array.size();
    let mut touched = Vec::new();
    for i in 0..count {
        let (offset, len) = random_range(rng, size, chunk, stripe);
        let data = rng.bytes(len as usize);
        array
            .write_at(offset, &data)
            .unwrap_or_else(|e| panic!("{what}: write {i} at {offset} len {len}: {e}"));
        model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
        touched.extend(rows_of(offset, len, stripe));
        let mut back = vec![0u8; len as usize];
        array.read_at(offset, &mut back).unwrap_or_else(|e| panic!("{what}: read back {i}: {e}"));
        assert_same(&back, &data, &format!("{what}: read back write {i} at {offset} len {len}"));
        if full_every > 0 && i % full_every == full_every - 1 {
            check_model(array, model, &format!("{what}: after write {i} (at {offset} len {len})"));
        }
    }
    touched.sort_unstable();
    touched.dedup();
    touched
}

// ---------------------------------------------------------------------------
// 0. The reference itself
// ---------------------------------------------------------------------------

/// The GF reference: {02} generates all 255 non-zero elements (0x11d is
/// primitive), the peasant product is commutative, distributive and
/// agrees with g^a * g^b = g^(a+b), and Horner's Q equals the explicit sum.
#[test]
fn gf_reference_self_check() {
    let mut seen = [false; 256];
    let mut x = 1u8;
    for i in 0..255 {
        assert!(!seen[x as usize], "g^{i} repeats");
        seen[x as usize] = true;
        x = gf_mul2(x);
    }
    assert_eq!(x, 1, "g^255 = 1");
    assert!(!seen[0]);
    for a in 0..255usize {
        for b in [0usize, 1, 7, 100, 254] {
            assert_eq!(gf_mul(gf_pow2(a), gf_pow2(b)), gf_pow2((a + b) % 255));
        }
    }
    let mut rng = Rng::new(5);
    for _ in 0..2000 {
        let (a, b, c) = (rng.next() as u8, rng.next() as u8, rng.next() as u8);
        assert_eq!(gf_mul(a, b), gf_mul(b, a));
        assert_eq!(gf_mul(a, b ^ c), gf_mul(a, b) ^ gf_mul(a, c));
    }
    // One product by schoolbook multiplication and long division by 0x11d.
    let slow = {
        let (a, b) = (0x53u16, 0xcau16);
        let mut prod = 0u16;
        for i in 0..8 {
            if b & (1 << i) != 0 {
                prod ^= a << i;
            }
        }
        for bit in (8..16).rev() {
            if prod & (1 << bit) != 0 {
                prod ^= 0x11d << (bit - 8);
            }
        }
        prod as u8
    };
    assert_eq!(gf_mul(0x53, 0xca), slow);
    // Horner vs the explicit sum, with zero positions.
    let blocks: Vec<Vec<u8>> = (0..6).map(|_| rng.bytes(64)).collect();
    let pos: Vec<Option<&[u8]>> =
        blocks.iter().enumerate().map(|(i, b)| (i != 2).then_some(b.as_slice())).collect();
    let (p, q) = reference_pq(&pos, 64);
    for i in 0..64 {
        let mut ep = 0u8;
        let mut eq = 0u8;
        for (z, b) in pos.iter().enumerate() {
            if let Some(b) = b {
                ep ^= b[i];
                eq ^= gf_mul(gf_pow2(z), b[i]);
            }
        }
        assert_eq!((p[i], q[i]), (ep, eq), "byte {i}");
    }
}

/// The reference agrees with the arrays `synth` lays out (and with the
/// independent layouts), before any write: a check of the checker.
#[test]
fn reference_agrees_with_fresh_arrays() {
    for (level, layout, disks) in [
        (Level::Raid4, 0, 4),
        (Level::Raid5, 2, 4),
        (Level::Raid5, 0, 5),
        (Level::Raid6, 2, 5),
        (Level::Raid6, 9, 6),
    ] {
        let spec = pspec(level, layout, disks, 16 * KIB, 256 * KIB);
        let tag = format!("fresh-{level}-{layout}-{disks}");
        let (_dir, paths, model) = build(&tag, &spec);
        let pers = md::personality::build(&spec.geometry().unwrap()).unwrap();
        let map = synth_map(&paths, &spec, &[]);
        let n = check_parity(&*pers, &map, &model, None, &tag);
        assert_eq!(n, disks * (256 * KIB / (16 * KIB)) as usize, "{tag}: blocks compared");
        // A single flipped byte anywhere in a member's data area is caught.
        let mut rng = Rng::new(disks as u64);
        for (slot, path) in paths.iter().enumerate() {
            let off = spec.data_offset * 512 + rng.below(256 * KIB);
            let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
            let mut b = [0u8];
            f.read_exact_at(&mut b, off).unwrap();
            f.write_all_at(&[b[0] ^ 0x40], off).unwrap();
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_parity(&*pers, &map, &model, None, "flip")
            }));
            assert!(caught.is_err(), "{tag}: flipped byte on slot {slot} at {off} not caught");
            f.write_all_at(&b, off).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// 1 + 2. Round trips, parity on disk, every degraded assembly
// ---------------------------------------------------------------------------

/// Random writes against the model on a healthy array; the whole array
/// through `read_at` periodically and at the end; edge writes; then member
/// images against the parity reference and every degraded read-only
/// assembly the level allows.
fn exercise(tag: &str, spec: &Spec, seed: u64, writes: usize) {
    let (_dir, paths, mut model) = build(tag, spec);
    let asm = assemble_writable(&paths, &AssembleOptions::default())
        .unwrap_or_else(|e| panic!("{tag}: assemble_writable: {e}"));
    let array = &asm.array;
    assert!(array.writable());
    assert!(!asm.degraded);
    assert_eq!(array.size(), model.len() as u64, "{tag}");
    let map = member_map(array);
    assert_eq!(map, synth_map(&paths, spec, &[]), "{tag}: member map");
    let size = array.size();
    let chunk = u64::from(spec.chunk_sectors) * 512;
    let data_disks = paths.len() - max_degraded(spec.level);
    let stripe = chunk * data_disks as u64;
    let mut rng = Rng::new(seed);
    random_writes(array, &mut model, &mut rng, writes, chunk, stripe, 10, tag);
    // Edges: the last bytes, the first bytes, a write straddling each of
    // the first row boundaries.
    let tail = rng.bytes(777);
    array.write_at(size - 777, &tail).unwrap_or_else(|e| panic!("{tag}: tail write: {e}"));
    model[(size - 777) as usize..].copy_from_slice(&tail);
    array.write_at(0, &tail[..3]).unwrap_or_else(|e| panic!("{tag}: head write: {e}"));
    model[..3].copy_from_slice(&tail[..3]);
    let across = rng.bytes(5000);
    for b in [chunk, stripe] {
        if b + 2500 <= size {
            array.write_at(b - 2500, &across).unwrap_or_else(|e| panic!("{tag}: write across {b}: {e}"));
            model[(b - 2500) as usize..(b + 2500) as usize].copy_from_slice(&across);
        }
    }
    array.flush().unwrap_or_else(|e| panic!("{tag}: flush: {e}"));
    check_model(array, &model, &format!("{tag}: final"));
    check_parity(&*array.personality, &map, &model, None, &format!("{tag}: parity after flush"));
    drop(asm);

    check_degraded_reads(tag, spec.level, &paths, &model, &[]);
    // Whole, read-only.
    let ro =
        assemble(&paths, &AssembleOptions::default()).unwrap_or_else(|e| panic!("{tag}: reassemble: {e}"));
    assert!(!ro.degraded);
    check_model(&ro.array, &model, &format!("{tag}: reassembled"));
}

/// Every read-only assembly that leaves out `already_gone` plus any set of
/// further members the level can do without reads back `model`.
fn check_degraded_reads(tag: &str, level: Level, paths: &[PathBuf], model: &[u8], already_gone: &[usize]) {
    let n = paths.len();
    let spare = max_degraded(level) - already_gone.len();
    let others: Vec<usize> = (0..n).filter(|s| !already_gone.contains(s)).collect();
    let mut checked = 0;
    for k in 1..=spare {
        for pick in subsets(others.len(), k) {
            let mut gone: Vec<usize> = already_gone.to_vec();
            gone.extend(pick.iter().map(|&i| others[i]));
            let asm = assemble(&without(paths, &gone), &AssembleOptions::default())
                .unwrap_or_else(|e| panic!("{tag}: assemble without slots {gone:?}: {e}"));
            assert!(asm.degraded, "{tag}: without {gone:?}");
            assert_eq!(asm.array.missing(), gone.len(), "{tag}: without {gone:?}");
            check_model(&asm.array, model, &format!("{tag}: read-only without slots {gone:?}"));
            checked += 1;
        }
    }
    assert!(spare == 0 || checked > 0, "{tag}: nothing checked");
}

/// Runs [`exercise`] for each member count and chunk size (4 KiB, 64 KiB,
/// 256 KiB).
fn matrix(level: Level, layout: u32, member_counts: &[usize]) {
    for &disks in member_counts {
        for chunk in [4 * KIB, 64 * KIB, 256 * KIB] {
            let spec = pspec(level, layout, disks, chunk, data_bytes_for(chunk));
            let tag = format!("{level}-l{layout}-{disks}d-{}k", chunk / KIB);
            let seed = u64::from(layout) * 1000 + disks as u64 * 10 + chunk / (4 * KIB);
            exercise(&tag, &spec, seed, 40);
        }
    }
}

#[test]
fn raid4_round_trip() {
    matrix(Level::Raid4, 0, &[3]);
}

macro_rules! layout_tests {
    ($($name:ident: $level:expr, $layout:expr, $disks:expr;)*) => {
        $(
            #[test]
            fn $name() {
                matrix($level, $layout, &$disks);
            }
        )*
    };
}

layout_tests! {
    raid5_left_asymmetric: Level::Raid5, 0, [3, 5];
    raid5_right_asymmetric: Level::Raid5, 1, [3, 5];
    raid5_left_symmetric: Level::Raid5, 2, [3, 5];
    raid5_right_symmetric: Level::Raid5, 3, [3, 5];
    raid5_parity_0: Level::Raid5, 4, [3, 5];
    raid5_parity_n: Level::Raid5, 5, [3, 5];
    raid6_left_asymmetric: Level::Raid6, 0, [4, 6];
    raid6_right_asymmetric: Level::Raid6, 1, [4, 6];
    raid6_left_symmetric: Level::Raid6, 2, [4, 6];
    raid6_right_symmetric: Level::Raid6, 3, [4, 6];
    raid6_parity_0: Level::Raid6, 4, [4, 6];
    raid6_parity_n: Level::Raid6, 5, [4, 6];
    raid6_ddf_rotating_zero_restart: Level::Raid6, 8, [4, 6];
    raid6_ddf_rotating_n_restart: Level::Raid6, 9, [4, 6];
    raid6_ddf_rotating_n_continue: Level::Raid6, 10, [4, 6];
    raid6_left_asymmetric_6: Level::Raid6, 16, [4, 6];
    raid6_right_asymmetric_6: Level::Raid6, 17, [4, 6];
    raid6_left_symmetric_6: Level::Raid6, 18, [4, 6];
    raid6_right_symmetric_6: Level::Raid6, 19, [4, 6];
    raid6_parity_0_6: Level::Raid6, 20, [4, 6];
}

/// The whole array rewritten front to back in odd-sized pieces (every
/// row's every block rewritten through partial-stripe writes), then parity.
#[test]
fn sequential_overwrite_in_odd_pieces() {
    for (level, layout, disks, piece) in [(Level::Raid5, 2, 4, 7777u64), (Level::Raid6, 2, 5, 12_345)] {
        let spec = pspec(level, layout, disks, 16 * KIB, 256 * KIB);
        let tag = format!("seq-{level}");
        let (_dir, paths, mut model) = build(&tag, &spec);
        let asm = assemble_writable(&paths, &AssembleOptions::default()).unwrap();
        let array = &asm.array;
        let mut rng = Rng::new(piece);
        let mut off = 0;
        while off < array.size() {
            let len = piece.min(array.size() - off);
            let data = rng.bytes(len as usize);
            array.write_at(off, &data).unwrap_or_else(|e| panic!("{tag}: write at {off} len {len}: {e}"));
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
            off += len;
        }
        array.flush().unwrap();
        check_model(array, &model, &tag);
        check_parity(&*array.personality, &member_map(array), &model, None, &tag);
        drop(asm);
        check_degraded_reads(&tag, level, &paths, &model, &[]);
    }
}

/// Writes that returned are on the members once the array is dropped, even
/// without `flush` (as with closing a block device): a fresh assembly reads
/// them, and parity on the images agrees.
#[test]
fn writes_survive_drop_without_flush() {
    for (level, disks) in [(Level::Raid5, 4), (Level::Raid6, 5)] {
        let spec = pspec(level, 2, disks, 16 * KIB, 256 * KIB);
        let tag = format!("noflush-{level}");
        let (_dir, paths, mut model) = build(&tag, &spec);
        let asm = assemble_writable(&paths, &AssembleOptions::default()).unwrap();
        let mut rng = Rng::new(disks as u64 + 77);
        let chunk = 16 * KIB;
        let stripe = chunk * (disks - max_degraded(level)) as u64;
        random_writes(&asm.array, &mut model, &mut rng, 20, chunk, stripe, 0, &tag);
        let pers = md::personality::build(&spec.geometry().unwrap()).unwrap();
        drop(asm);
        check_parity(&*pers, &synth_map(&paths, &spec, &[]), &model, None, &format!("{tag}: after drop"));
        let ro = assemble(&paths, &AssembleOptions::default()).unwrap();
        check_model(&ro.array, &model, &format!("{tag}: after drop"));
    }
}

/// A dirty array (`resync_offset` inside the array): rows from there on
/// are not known to be in sync, their parity may be junk, so a partial
/// write must compute their parity from the data (reconstruct-write), not
/// update junk (read-modify-write, which the member counts below would
/// otherwise favour). Rows before `resync_offset` keep consistent parity.
#[test]
fn dirty_rows_get_parity_from_data() {
    // raid5 on 5 and raid6 on 7 members: one chunk written reads fewer
    // blocks by read-modify-write, so only the dirty state forces
    // reconstruct-write.
    for (level, disks) in [(Level::Raid5, 5), (Level::Raid6, 7)] {
        let chunk = 16 * KIB;
        let spec = pspec(level, 2, disks, chunk, 256 * KIB);
        let tag = format!("dirty-{level}");
        let (_dir, paths, mut model) = build(&tag, &spec);
        let rows = 256 * KIB / chunk;
        let first_dirty = rows / 2;
        let resync_sector = first_dirty * chunk / 512;
        // Junk in P and Q of the dirty rows; the superblocks say so.
        let pers = md::personality::build(&spec.geometry().unwrap()).unwrap();
        let mut rng = Rng::new(disks as u64 + 300);
        let files: Vec<File> = paths
            .iter()
            .map(|p| std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap())
            .collect();
        for r in first_dirty..rows {
            let lay = pers.syndrome_layout(r * chunk).unwrap();
            for slot in std::iter::once(lay.p).chain(lay.q) {
                files[slot].write_all_at(&rng.bytes(chunk as usize), DATA_OFFSET + r * chunk).unwrap();
            }
        }
        common::set_resync_offset(&files, &spec, resync_sector);
        drop(files);
        let asm = assemble_writable(&paths, &AssembleOptions::default())
            .unwrap_or_else(|e| panic!("{tag}: assemble dirty array: {e}"));
        let array = &asm.array;
        assert_eq!(array.sb.resync_offset, resync_sector, "{tag}: superblock edit");
        let map = member_map(array);
        let clean_rows: Vec<u64> = (0..first_dirty).collect();
        check_parity(&*array.personality, &map, &model, Some(&clean_rows), &format!("{tag}: clean rows"));
        let stripe = chunk * (disks - max_degraded(level)) as u64;
        let mut touched = Vec::new();
        for i in 0..40 {
            // One whole chunk (every column of the row), or a few; twice on
            // every dirty row, then anywhere.
            let row = if i < 2 * (rows - first_dirty) { first_dirty + i / 2 } else { rng.below(rows) };
            let k = rng.below(disks as u64 - max_degraded(level) as u64 - 1);
            let n = if i % 3 == 0 { 2 } else { 1 };
            let (off, len) = (row * stripe + k * chunk, n * chunk);
            let data = rng.bytes(len as usize);
            array.write_at(off, &data).unwrap_or_else(|e| panic!("{tag}: write at {off} len {len}: {e}"));
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
            touched.push(row);
        }
        // Small writes into clean rows may use read-modify-write.
        for _ in 0..20 {
            let off = rng.below(first_dirty * stripe - 100);
            let n = rng.below(100) as usize + 1;
            let data = rng.bytes(n);
            array.write_at(off, &data).unwrap();
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        array.flush().unwrap();
        touched.sort_unstable();
        touched.dedup();
        assert_eq!(touched.iter().filter(|&&r| r >= first_dirty).count() as u64, rows - first_dirty);
        let mut check: Vec<u64> = clean_rows.clone();
        check.extend(touched.iter().filter(|&&r| r >= first_dirty));
        check_parity(&*array.personality, &map, &model, Some(&check), &format!("{tag}: after writes"));
        check_model(array, &model, &tag);
    }
}

/// A member whose writes fail is failed (md's `md_error`): the write that
/// hit the error, and every later one, completes without it; parity stays
/// right for the members in service and every byte reads back rebuilt. A
/// failure the level cannot survive fails the write instead and keeps the
/// member. Reads failing on another member while degraded: a write either
/// fails or is right.
#[test]
fn member_write_errors_fail_the_member_not_the_data() {
    use blockio::fault::{Faults, Ops, Rule, Trigger};
    use md::array::flags;
    use std::sync::Arc;

    for (level, disks) in [(Level::Raid5, 5), (Level::Raid6, 6)] {
        let chunk = 16 * KIB;
        let spec = pspec(level, 2, disks, chunk, 256 * KIB);
        let tag = format!("ioerr-{level}");
        let (_dir, paths, mut model) = build(&tag, &spec);
        let victim = 2;
        let faults: Vec<Arc<Faults>> = (0..disks).map(|k| Arc::new(Faults::new(9 + k as u64))).collect();
        let opts = AssembleOptions {
            faults: paths.iter().cloned().map(Some).zip(faults.iter().cloned()).collect(),
            ..Default::default()
        };
        let asm = assemble_writable(&paths, &opts).unwrap();
        let array = &asm.array;
        let pers: &dyn Personality = &*array.personality;
        let mut map = member_map(array);
        let data_disks = disks - max_degraded(level);
        let stripe = chunk * data_disks as u64;
        let rows = array.size() / stripe;
        let mut rng = Rng::new(disks as u64 + 500);
        // Warm the cache.
        random_writes(array, &mut model, &mut rng, 30, chunk, stripe, 0, &tag);

        // Writes to the victim fail: it is failed, the writes complete.
        faults[victim].add_rule(Rule::new(Ops::Write, Trigger::Always));
        let lay_row = |r: u64| pers.syndrome_layout(r * chunk).unwrap();
        let full_row = rng.below(rows);
        let data = rng.bytes(stripe as usize);
        array.write_at(full_row * stripe, &data).unwrap_or_else(|e| panic!("{tag}: full-row write: {e}"));
        model[(full_row * stripe) as usize..((full_row + 1) * stripe) as usize].copy_from_slice(&data);
        let f = array.health().flags(victim).unwrap();
        assert_eq!(
            f & (flags::FAULTY | flags::WRITE_ERROR),
            flags::FAULTY | flags::WRITE_ERROR,
            "{tag}: flags {f:#x}"
        );
        assert_eq!(array.missing(), 1, "{tag}: degraded after the failure");
        map[victim] = None;
        // Partial writes whose data chunk is on the victim, and where it
        // holds P: degraded writes now.
        for want_p in [false, true] {
            let r = (0..rows)
                .map(|i| (full_row + 1 + i) % rows)
                .find(|&r| {
                    let lay = lay_row(r);
                    if want_p {
                        lay.p == victim
                    } else {
                        lay.data.contains(&Some(victim))
                    }
                })
                .unwrap();
            let k = if want_p {
                0
            } else {
                (0..data_disks)
                    .find(|&k| pers.locate(r * stripe + k as u64 * chunk)[0].slot == victim)
                    .unwrap() as u64
            };
            let off = r * stripe + k * chunk + 1000;
            let data = rng.bytes(3000);
            array.write_at(off, &data).unwrap_or_else(|e| panic!("{tag}: write at {off}: {e}"));
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        random_writes(array, &mut model, &mut rng, 30, chunk, stripe, 0, &tag);
        array.flush().unwrap();
        check_model(array, &model, &format!("{tag}: after the failure"));
        check_parity(pers, &map, &model, None, &format!("{tag}: members in service"));

        // raid6: a second failure is survived too.
        let mut gone = vec![victim];
        if level == Level::Raid6 {
            let second = 4;
            faults[second].add_rule(Rule::new(Ops::Write, Trigger::Always));
            let data = rng.bytes(stripe as usize);
            array
                .write_at(0, &data)
                .unwrap_or_else(|e| panic!("{tag}: write with a second failing member: {e}"));
            model[..stripe as usize].copy_from_slice(&data);
            assert_ne!(
                array.health().flags(second).unwrap() & flags::FAULTY,
                0,
                "{tag}: second member failed"
            );
            map[second] = None;
            gone.push(second);
            check_model(array, &model, &format!("{tag}: after the second failure"));
        }
        // One more failure than the level survives: the write fails, the
        // member stays.
        let last = 0;
        faults[last].add_rule(Rule::new(Ops::Write, Trigger::Always));
        let e = array.write_at(stripe, &rng.bytes(stripe as usize));
        assert!(e.is_err(), "{tag}: a write the array cannot survive succeeded");
        assert_eq!(
            array.health().flags(last).unwrap() & flags::FAULTY,
            0,
            "{tag}: the last member was failed"
        );
        faults[last].clear_rules();
        let mut undefined: Vec<u64> = vec![1];

        // Reads from a member in service fail: either the write fails, or
        // it is right.
        faults[1].add_rule(Rule::new(Ops::Read, Trigger::Always));
        for _ in 0..10 {
            let r = rng.below(rows);
            let off = r * stripe + rng.below(stripe - 5000);
            let n = rng.below(5000) as usize + 1;
            let data = rng.bytes(n);
            match array.write_at(off, &data) {
                Ok(()) => model[off as usize..off as usize + data.len()].copy_from_slice(&data),
                Err(_) => undefined.extend(rows_of(off, data.len() as u64, stripe)),
            }
        }
        faults[1].clear_rules();
        undefined.sort_unstable();
        undefined.dedup();
        array.flush().unwrap();
        let defined: Vec<u64> = (0..rows).filter(|r| !undefined.contains(r)).collect();
        check_parity(pers, &map, &model, Some(&defined), &format!("{tag}: rows outside failed writes"));

        // Rewrite the undefined rows whole, then partial writes on them.
        for &r in &undefined {
            let data = rng.bytes(stripe as usize);
            array.write_at(r * stripe, &data).unwrap_or_else(|e| panic!("{tag}: rewrite row {r}: {e}"));
            model[(r * stripe) as usize..((r + 1) * stripe) as usize].copy_from_slice(&data);
        }
        for _ in 0..30 {
            let r = undefined[rng.below(undefined.len() as u64) as usize];
            let off = r * stripe + rng.below(stripe - 6000);
            let n = rng.below(6000) as usize + 1;
            let data = rng.bytes(n);
            array.write_at(off, &data).unwrap_or_else(|e| panic!("{tag}: write at {off}: {e}"));
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        array.flush().unwrap();
        check_model(array, &model, &tag);
        check_parity(pers, &map, &model, None, &format!("{tag}: after rewrites"));
        drop(asm);
        check_degraded_reads(&tag, level, &paths, &model, &gone);
    }
}

/// More member space touched by partial writes than the stripe cache may
/// hold (64 MiB): folios come and go, parity stays right.
#[test]
fn partial_writes_over_more_than_the_cache_holds() {
    let chunk = 64 * KIB;
    let spec = pspec(Level::Raid5, 2, 4, chunk, 18 * MIB);
    let tag = "bigcache";
    let (_dir, paths, mut model) = build(tag, &spec);
    let asm = assemble_writable(&paths, &AssembleOptions::default()).unwrap();
    let array = &asm.array;
    let stripe = 3 * chunk;
    let rows = array.size() / stripe;
    let mut rng = Rng::new(1234);
    // Pass p writes into data chunk (r + p) % 3 of row r: after three
    // passes every folio of every row (72 MiB) has been cached.
    for pass in 0..4 {
        for r in 0..rows {
            let len = rng.below(300) + 1;
            let off = r * stripe + (r + pass) % 3 * chunk + rng.below(chunk - len);
            let data = rng.bytes(len as usize);
            array.write_at(off, &data).unwrap_or_else(|e| panic!("{tag}: pass {pass} write at {off}: {e}"));
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
    }
    array.flush().unwrap();
    check_model(array, &model, tag);
    check_parity(&*array.personality, &member_map(array), &model, None, tag);
}

// ---------------------------------------------------------------------------
// 3. Degraded writes
// ---------------------------------------------------------------------------

/// Assembles writable without `gone`, takes random writes, checks the
/// model, the present members against the reference, and the read-only
/// assemblies without `gone` and any further members the level allows.
fn degraded_writes(tag: &str, spec: &Spec, gone: &[usize], seed: u64) {
    let (_dir, paths, mut model) = build(tag, spec);
    let asm = assemble_writable(&without(&paths, gone), &AssembleOptions::default())
        .unwrap_or_else(|e| panic!("{tag}: assemble_writable without {gone:?}: {e}"));
    let array = &asm.array;
    assert!(asm.degraded && array.writable());
    assert_eq!(array.missing(), gone.len());
    let map = member_map(array);
    assert_eq!(map, synth_map(&paths, spec, gone), "{tag}: member map");
    let absent_before = snapshot(&gone.iter().map(|&s| paths[s].clone()).collect::<Vec<_>>());
    let chunk = u64::from(spec.chunk_sectors) * 512;
    let stripe = chunk * (paths.len() - max_degraded(spec.level)) as u64;
    let mut rng = Rng::new(seed);
    random_writes(array, &mut model, &mut rng, 40, chunk, stripe, 10, tag);
    array.flush().unwrap_or_else(|e| panic!("{tag}: flush: {e}"));
    check_model(array, &model, &format!("{tag}: final"));
    check_parity(&*array.personality, &map, &model, None, &format!("{tag}: present members"));
    drop(asm);
    // The members left out were not touched.
    assert_unchanged(&absent_before, &gone.iter().map(|&s| paths[s].clone()).collect::<Vec<_>>(), tag);
    let ro = assemble(&without(&paths, gone), &AssembleOptions::default())
        .unwrap_or_else(|e| panic!("{tag}: reassemble without {gone:?}: {e}"));
    check_model(&ro.array, &model, &format!("{tag}: reassembled without {gone:?}"));
    drop(ro);
    check_degraded_reads(tag, spec.level, &paths, &model, gone);
}

#[test]
fn raid5_degraded_writes() {
    // Left-symmetric, each member missing in turn; other layouts, one
    // member each.
    for gone in 0..4 {
        let spec = pspec(Level::Raid5, 2, 4, 4 * KIB, 256 * KIB);
        degraded_writes(&format!("deg5-ls-{gone}"), &spec, &[gone], 50 + gone as u64);
    }
    for (layout, gone) in [(0u32, 1usize), (1, 2), (3, 0), (4, 0), (5, 3)] {
        let spec = pspec(Level::Raid5, layout, 4, 64 * KIB, 256 * KIB);
        degraded_writes(&format!("deg5-l{layout}-{gone}"), &spec, &[gone], 60 + u64::from(layout));
    }
    let spec = pspec(Level::Raid4, 0, 3, 16 * KIB, 256 * KIB);
    degraded_writes("deg4-p", &spec, &[2], 70);
    degraded_writes("deg4-d", &spec, &[0], 71);
}

#[test]
fn raid6_degraded_writes_one_missing() {
    for (layout, gone) in [(2u32, 0usize), (2, 3), (0, 4), (9, 1), (10, 2), (16, 4), (20, 0)] {
        let spec = pspec(Level::Raid6, layout, 5, 16 * KIB, 256 * KIB);
        degraded_writes(&format!("deg6-l{layout}-{gone}"), &spec, &[gone], 80 + u64::from(layout));
    }
}

#[test]
fn raid6_degraded_writes_two_missing() {
    for (layout, gone) in
        [(2u32, [0usize, 1]), (2, [1, 3]), (2, [0, 4]), (1, [2, 3]), (8, [0, 2]), (18, [3, 4])]
    {
        let spec = pspec(Level::Raid6, layout, 5, 16 * KIB, 256 * KIB);
        degraded_writes(
            &format!("deg6x2-l{layout}-{}{}", gone[0], gone[1]),
            &spec,
            &gone,
            90 + u64::from(layout) + gone[0] as u64,
        );
    }
}

/// More members missing than the level tolerates: no writable array, or
/// one whose writes all fail; nothing changes on any member.
#[test]
fn too_many_missing_refuses_writes() {
    for (level, disks, gone) in
        [(Level::Raid5, 4, vec![0usize, 2]), (Level::Raid4, 3, vec![0, 2]), (Level::Raid6, 5, vec![0, 1, 3])]
    {
        let spec = pspec(level, 2, disks, 16 * KIB, 256 * KIB);
        let tag = format!("toomany-{level}");
        let (_dir, paths, _model) = build(&tag, &spec);
        let before = snapshot(&paths);
        let sub = without(&paths, &gone);
        match assemble_writable(&sub, &AssembleOptions::default()) {
            Err(e) => assert!(e.to_string().contains("too few members"), "{tag}: {e}"),
            Ok(asm) => {
                for (off, len) in [(0u64, 1usize), (4096, 4096), (0, 1 << 16)] {
                    assert!(
                        asm.array.write_at(off, &vec![0xa5; len]).is_err(),
                        "{tag}: write at {off} accepted"
                    );
                }
                let _ = asm.array.flush();
            }
        }
        // Forcing does not help either.
        let force = AssembleOptions { force: true, ..AssembleOptions::default() };
        if let Ok(asm) = assemble_writable(&sub, &force) {
            assert!(asm.array.write_at(0, &[1, 2, 3]).is_err(), "{tag}: forced write accepted");
            let _ = asm.array.flush();
        }
        // An array put together by hand from a whole assembly with the
        // members taken out: `write_at` itself refuses.
        let whole = assemble_writable(&paths, &AssembleOptions::default()).unwrap().array;
        let (sb, pers, slots) = whole.into_parts();
        let mut slots = slots.expect("slots not shared before any write");
        for &g in &gone {
            slots.clear(g);
        }
        let array = Array::new(sb, pers, slots);
        assert!(array.writable());
        for (off, len) in [(0u64, 1usize), (4096, 4096), (0, 3 * 16 * 1024)] {
            let e =
                array.write_at(off, &vec![0xa5; len]).expect_err(&format!("{tag}: write at {off} accepted"));
            assert_ne!(e.raw_os_error(), Some(libc::EFBIG), "{tag}: {e}");
        }
        let _ = array.flush();
        drop(array);
        assert_unchanged(&before, &paths, &tag);
    }
}

// ---------------------------------------------------------------------------
// 4. The real kernel's raid5 arrays
// ---------------------------------------------------------------------------

/// The fixtures' geometry: raid5 left-symmetric, 4 members, 64 KiB chunk,
/// 7 MiB used per member.
const FIXTURE_BYTES: u64 = 22_020_096;

/// Writes randomly into a fixture unpacked from `name` (pattern ids from
/// `id_of`), slot `failed` (if any) left out by assembly; checks parity of
/// every row against the reference before and after, the model, untouched
/// blocks against the pattern computed afresh, and re-assemblies.
fn fixture_writes(name: &str, id_of: fn(u64) -> u64, failed: Option<usize>, seed: u64) {
    let (dir, images) = unpack_fixture(name, 4);
    drop(images);
    let paths: Vec<PathBuf> = (0..4).map(|m| dir.0.join(format!("m{m}.img"))).collect();
    let mut model = vec![0u8; FIXTURE_BYTES as usize];
    for (b, blk) in model.chunks_mut(4096).enumerate() {
        synth::pattern_block(b as u64, id_of(b as u64), blk);
    }
    let failed_before = failed.map(|f| std::fs::read(&paths[f]).unwrap());
    let asm = assemble_writable(&paths, &AssembleOptions::default())
        .unwrap_or_else(|e| panic!("{name}: assemble_writable: {e}"));
    let array = &asm.array;
    assert!(array.writable());
    assert_eq!(asm.degraded, failed.is_some(), "{name}: {:?}", asm.notes);
    assert_eq!(array.size(), FIXTURE_BYTES);
    let g = array.personality.geometry();
    assert_eq!((g.level, g.layout, g.raid_disks, g.chunk_sectors), (Level::Raid5, 2, 4, 128));
    let map = member_map(array);
    for (slot, m) in map.iter().enumerate() {
        if Some(slot) == failed {
            assert!(m.is_none(), "{name}: failed member m{slot} assembled");
        } else {
            let (p, start) = m.as_ref().expect("member present");
            // Slot k is mK (manifest), data at 2048 sectors.
            assert_eq!((p.as_path(), *start), (paths[slot].as_path(), DATA_OFFSET), "{name}: slot {slot}");
        }
    }
    // The kernel's own parity agrees with the reference (and the
    // independent left-symmetric layout) before we write.
    let pers: &dyn Personality = &*array.personality;
    check_parity(pers, &map, &model, None, &format!("{name}: as the kernel left it"));
    check_model(array, &model, &format!("{name}: before writes"));

    let chunk = 64 * KIB;
    let stripe = 3 * chunk;
    let mut rng = Rng::new(seed);
    let mut touched_blocks = vec![false; (FIXTURE_BYTES / 4096) as usize];
    let mut touched_rows = Vec::new();
    for i in 0..60 {
        let (offset, len) = random_range(&mut rng, FIXTURE_BYTES, chunk, stripe);
        let data = rng.bytes(len as usize);
        array
            .write_at(offset, &data)
            .unwrap_or_else(|e| panic!("{name}: write {i} at {offset} len {len}: {e}"));
        model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
        touched_rows.extend(rows_of(offset, len, stripe));
        for b in offset / 4096..=(offset + len - 1) / 4096 {
            touched_blocks[b as usize] = true;
        }
        if i % 20 == 19 {
            check_model(array, &model, &format!("{name}: after write {i}"));
        }
    }
    array.flush().unwrap_or_else(|e| panic!("{name}: flush: {e}"));
    touched_rows.sort_unstable();
    touched_rows.dedup();
    let n = check_parity(pers, &map, &model, Some(&touched_rows), &format!("{name}: touched rows"));
    assert!(n > 0);
    check_parity(pers, &map, &model, None, &format!("{name}: every row after writes"));
    let all = read_all(array);
    assert_same(&all, &model, &format!("{name}: after writes"));
    for (b, blk) in all.chunks(4096).enumerate() {
        if !touched_blocks[b] {
            assert!(blk == common::block(b as u64, id_of(b as u64)), "{name}: untouched block {b} changed");
        }
    }
    drop(asm);
    if let (Some(f), Some(before)) = (failed, failed_before) {
        assert_unchanged(&[before], &paths[f..=f], &format!("{name}: failed member"));
    }
    // Re-assemblies: as md would, and (healthy) without each member.
    let ro =
        assemble(&paths, &AssembleOptions::default()).unwrap_or_else(|e| panic!("{name}: reassemble: {e}"));
    check_model(&ro.array, &model, &format!("{name}: reassembled"));
    drop(ro);
    if failed.is_none() {
        check_degraded_reads(name, Level::Raid5, &paths, &model, &[]);
    }
}

#[test]
fn kernel_raid5_fixture_takes_writes() {
    fixture_writes("raid5_ls_4d_64k", |_| 1, None, 401);
}

#[test]
fn kernel_raid5_degraded_fixture_takes_writes() {
    // m2 was failed: recorded faulty, left out by assembly.
    fixture_writes("raid5_ls_4d_64k_degraded", |b| if b < 256 { 2 } else { 1 }, Some(2), 402);
}

// ---------------------------------------------------------------------------
// 5. Bad input
// ---------------------------------------------------------------------------

#[test]
fn bad_writes_change_nothing() {
    for (level, layout, disks) in [(Level::Raid4, 0, 3), (Level::Raid5, 2, 4), (Level::Raid6, 2, 5)] {
        let spec = pspec(level, layout, disks, 16 * KIB, 256 * KIB);
        let tag = format!("bad-{level}");
        let (_dir, paths, mut model) = build(&tag, &spec);
        let asm = assemble_writable(&paths, &AssembleOptions::default()).unwrap();
        let array = &asm.array;
        let size = array.size();
        // One good write first, so there is something in flight to flush.
        let mut rng = Rng::new(disks as u64);
        let d = rng.bytes(10_000);
        array.write_at(3000, &d).unwrap_or_else(|e| panic!("{tag}: good write: {e}"));
        model[3000..13_000].copy_from_slice(&d);
        array.flush().unwrap();
        // Data areas only: flushing may legitimately update superblocks.
        let before = snapshot_from(&paths, DATA_OFFSET as usize);
        for (off, len) in [
            (size - 10, 11u64),
            (size - 1, 2),
            (size, 1),
            (size + 4096, 4096),
            (size - 65536, 65537),
            (0, size + 1),
            (u64::MAX - 2, 5),
            (u64::MAX, 1),
            (u64::MAX - 4095, 8192),
        ] {
            let e =
                array.write_at(off, &vec![0xffu8; len as usize]).expect_err(&format!("{tag}: {off}+{len}"));
            assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{tag}: write at {off} len {len}: {e}");
        }
        for off in [0, 4096, size / 2 + 17, size] {
            array.write_at(off, &[]).unwrap_or_else(|e| panic!("{tag}: empty write at {off}: {e}"));
        }
        array.flush().unwrap();
        assert_unchanged_from(
            &before,
            &paths,
            DATA_OFFSET as usize,
            &format!("{tag}: refused and empty writes"),
        );
        check_model(array, &model, &tag);
        // Still takes writes.
        array.write_at(size - 1, &[0x42]).unwrap();
        model[size as usize - 1] = 0x42;
        array.flush().unwrap();
        check_model(array, &model, &tag);
        drop(asm);

        // Read-only assembly: EROFS, nothing written.
        let before = snapshot(&paths);
        let ro = assemble(&paths, &AssembleOptions::default()).unwrap();
        assert!(!ro.array.writable());
        for (off, len) in [(0u64, 3usize), (size - 4096, 4096), (0, 3 * 16 * 1024)] {
            let e = ro.array.write_at(off, &vec![7u8; len]).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{tag}: read-only write: {e}");
        }
        let _ = ro.array.flush();
        check_model(&ro.array, &model, &format!("{tag}: read-only"));
        drop(ro);
        assert_unchanged(&before, &paths, &format!("{tag}: read-only writes"));
    }
}

// ---------------------------------------------------------------------------
// 6. Concurrency
// ---------------------------------------------------------------------------

/// Four writers at once on ranges that are disjoint but share every stripe:
/// phase 1, 4 KiB pieces interleaved (piece p belongs to thread p % 4),
/// whole or partial; phase 2, thread t owns data chunk t % data_disks of
/// every row and writes runs of it. Then the model, the reference parity
/// of every row, and the degraded assemblies.
fn concurrent(tag: &str, spec: &Spec, gone: &[usize], seed: u64) {
    const THREADS: u64 = 4;
    let (_dir, paths, mut model) = build(tag, spec);
    let asm = assemble_writable(&without(&paths, gone), &AssembleOptions::default()).unwrap();
    assert_eq!(asm.array.missing(), gone.len());
    let array = &asm.array;
    let size = array.size();
    let chunk = u64::from(spec.chunk_sectors) * 512;
    let data_disks = (paths.len() - max_degraded(spec.level)) as u64;
    let stripe = chunk * data_disks;
    let run = |t: u64, phase: u32| -> Vec<(u64, Vec<u8>)> {
        let mut rng = Rng::new(seed ^ (t << 32) ^ u64::from(phase));
        let mut done = Vec::new();
        for _ in 0..150 {
            if phase == 2 && t >= data_disks {
                break;
            }
            let (off, len) = if phase == 1 {
                let pieces = size / 4096;
                let p = rng.below(pieces / THREADS) * THREADS + t;
                let start = if rng.below(2) == 0 { 0 } else { rng.below(4096) };
                let len = rng.below(4096 - start) + 1;
                (p * 4096 + start, if rng.below(3) == 0 { 4096 - start } else { len })
            } else {
                // Thread t's chunk in a random row, a random run of it.
                let k = t % data_disks;
                let row = rng.below(size / stripe);
                let base = row * stripe + k * chunk;
                let start = rng.below(chunk);
                let len = if rng.below(2) == 0 { chunk - start } else { rng.below(chunk - start) + 1 };
                (base + start, len)
            };
            let data = rng.bytes(len as usize);
            array
                .write_at(off, &data)
                .unwrap_or_else(|e| panic!("{tag}: thread {t} at {off} len {len}: {e}"));
            done.push((off, data));
        }
        done
    };
    for phase in [1, 2] {
        let results: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS).map(|t| s.spawn(move || run(t, phase))).collect();
            handles.into_iter().map(|h| h.join().expect("writer thread")).collect()
        });
        for (off, data) in results.into_iter().flatten() {
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        array.flush().unwrap();
        check_model(array, &model, &format!("{tag}: phase {phase}"));
        check_parity(&*array.personality, &member_map(array), &model, None, &format!("{tag}: phase {phase}"));
    }
    drop(asm);
    check_degraded_reads(tag, spec.level, &paths, &model, gone);
}

#[test]
fn concurrent_writers_share_stripes() {
    concurrent("conc-r5", &pspec(Level::Raid5, 2, 5, 16 * KIB, 256 * KIB), &[], 601);
    concurrent("conc-r6", &pspec(Level::Raid6, 2, 6, 16 * KIB, 256 * KIB), &[], 602);
    concurrent("conc-r5-4k", &pspec(Level::Raid5, 0, 3, 4 * KIB, 256 * KIB), &[], 603);
    concurrent("conc-r6-256k", &pspec(Level::Raid6, 17, 5, 256 * KIB, MIB), &[], 604);
}

#[test]
fn concurrent_writers_share_degraded_stripes() {
    concurrent("conc-deg-r5", &pspec(Level::Raid5, 2, 5, 16 * KIB, 256 * KIB), &[1], 611);
    concurrent("conc-deg-r6", &pspec(Level::Raid6, 2, 6, 16 * KIB, 256 * KIB), &[4], 612);
    concurrent("conc-deg2-r6", &pspec(Level::Raid6, 9, 6, 16 * KIB, 256 * KIB), &[0, 3], 613);
}

/// A degraded array: readers of data that nobody writes (the missing
/// member's chunks, rebuilt from the others and parity) always get the
/// same bytes while writers rewrite the other chunks of the same rows.
#[test]
fn degraded_reads_stay_stable_during_writes() {
    for (level, layout, disks, gone) in [(Level::Raid5, 2, 4, 0usize), (Level::Raid6, 2, 5, 1)] {
        let chunk = 16 * KIB;
        let spec = pspec(level, layout, disks, chunk, 256 * KIB);
        let tag = format!("stable-{level}");
        let (_dir, paths, mut model) = build(&tag, &spec);
        let asm = assemble_writable(&without(&paths, &[gone]), &AssembleOptions::default()).unwrap();
        let array = &asm.array;
        let pers: &dyn Personality = &*array.personality;
        let data_disks = disks - max_degraded(level);
        let stripe = chunk * data_disks as u64;
        let rows = array.size() / stripe;
        // Chunks (array offsets) on the missing member: read only; on the
        // others: written.
        let (mut ro_chunks, mut rw_chunks) = (Vec::new(), Vec::new());
        for r in 0..rows {
            for k in 0..data_disks as u64 {
                let a = r * stripe + k * chunk;
                if pers.locate(a)[0].slot == gone {
                    ro_chunks.push(a);
                } else {
                    rw_chunks.push(a);
                }
            }
        }
        assert!(!ro_chunks.is_empty() && !rw_chunks.is_empty());
        let done = std::sync::atomic::AtomicBool::new(false);
        let writers: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|s| {
            let model = &model;
            let (ro_chunks, rw_chunks, done, tag) = (&ro_chunks, &rw_chunks, &done, &tag);
            let readers: Vec<_> = (0..2u64)
                .map(|t| {
                    s.spawn(move || {
                        let mut rng = Rng::new(700 + t);
                        let mut buf = vec![0u8; chunk as usize];
                        let mut reads = 0;
                        while !done.load(std::sync::atomic::Ordering::Relaxed) || reads < 50 {
                            let a = ro_chunks[rng.below(ro_chunks.len() as u64) as usize];
                            array.read_at(a, &mut buf).unwrap();
                            let want = &model[a as usize..(a + chunk) as usize];
                            if buf != want {
                                let i = buf.iter().zip(want).position(|(x, y)| x != y).unwrap();
                                panic!(
                                    "{tag}: read {reads} of the missing member's chunk at array byte {a} \
                                     (row {}) during writes: byte {} is {:#04x}, never written, was {:#04x}",
                                    a / stripe,
                                    a + i as u64,
                                    buf[i],
                                    want[i]
                                );
                            }
                            reads += 1;
                        }
                    })
                })
                .collect();
            let writers: Vec<_> = (0..2u64)
                .map(|t| {
                    s.spawn(move || {
                        let mut rng = Rng::new(800 + t);
                        let mut done_writes = Vec::new();
                        // Thread t writes the chunks of even / odd rows.
                        let mine: Vec<u64> =
                            rw_chunks.iter().copied().filter(|a| (a / stripe) % 2 == t).collect();
                        for _ in 0..300 {
                            let a = mine[rng.below(mine.len() as u64) as usize];
                            let start = if rng.below(2) == 0 { 0 } else { rng.below(chunk) };
                            let len = rng.below(chunk - start) + 1;
                            let data = rng.bytes(len as usize);
                            array.write_at(a + start, &data).unwrap();
                            done_writes.push((a + start, data));
                        }
                        done_writes
                    })
                })
                .collect();
            let w = writers.into_iter().map(|h| h.join().expect("writer")).collect();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            for r in readers {
                r.join().expect("reader");
            }
            w
        });
        for (off, data) in writers.into_iter().flatten() {
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        array.flush().unwrap();
        check_model(array, &model, &tag);
        check_parity(pers, &member_map(array), &model, None, &tag);
    }
}
