//! The real md fixtures (`shared/fixtures/md`, beside the repository) for
//! the personality tests: unpacking, member images as [`MemberRead`], and a
//! whole-array check against the fixtures' data pattern.
#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use md::personality::{MemberRead, Personality};
use md::synth::pattern_block;
use md::synth::Spec;
use md::{Array, Level};

/// Every fixture member's data_offset: 2048 sectors.
pub const DATA_OFFSET: u64 = 2048 * 512;

/// `shared/fixtures/md`, beside the repository. Missing fixtures fail the
/// test: they are part of the suite.
pub fn fixtures_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/md");
    assert!(p.is_dir(), "fixtures not found at {} (shared/ must sit beside the repository)", p.display());
    p
}

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the synthetic array `spec` on fresh images in a unique temp
/// directory (`prefix`, `tag`, the process ID), filled with the fixtures'
/// pattern (id 1); returns the directory, the member paths and the
/// array's content.
pub fn build_synth(prefix: &str, tag: &str, spec: &md::synth::Spec) -> (Scratch, Vec<PathBuf>, Vec<u8>) {
    let dir = Scratch(std::env::temp_dir().join(format!("{prefix}-{}-{tag}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("create temp dir");
    let paths: Vec<PathBuf> = (0..spec.member_bytes.len()).map(|i| dir.0.join(format!("m{i}.img"))).collect();
    let fill = &mut |off, buf: &mut [u8]| md::synth::pattern_fill(off, 1, buf);
    let size = md::synth::write_array(spec, &paths, fill).expect("write synthetic array");
    let mut model = vec![0u8; size as usize];
    md::synth::pattern_fill(0, 1, &mut model);
    (dir, paths, model)
}

/// Member image files, reached past their data offset.
pub struct Images {
    pub files: Vec<File>,
    pub present: Vec<bool>,
}

impl MemberRead for Images {
    fn is_present(&self, slot: usize) -> bool {
        self.present[slot]
    }

    fn read_at(&self, slot: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        assert!(self.present[slot], "read of absent member {slot}");
        self.files[slot].read_exact_at(buf, DATA_OFFSET + offset)
    }
}

/// Unpacks fixture `name`'s `members` images with `xz` into a unique temp
/// directory.
pub fn unpack_fixture(name: &str, members: usize) -> (Scratch, Images) {
    let src = fixtures_dir().join(name);
    let dir = Scratch(std::env::temp_dir().join(format!("umd-md-fixture-{}-{name}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("create temp dir");
    let mut files = Vec::with_capacity(members);
    for m in 0..members {
        let out = dir.0.join(format!("m{m}.img"));
        let status = Command::new("xz")
            .arg("-dc")
            .arg(src.join(format!("m{m}.img.xz")))
            .stdout(File::create(&out).expect("create image"))
            .status()
            .expect("run xz");
        assert!(status.success(), "xz -dc {name}/m{m}.img.xz failed");
        files.push(File::open(&out).expect("open image"));
    }
    (dir, Images { files, present: vec![true; members] })
}

/// The fixtures' logical block `b` with pattern `id`.
pub fn block(b: u64, id: u64) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    pattern_block(b, id, &mut v);
    v
}

/// Reads the whole array in `io_hint` pieces and checks every 4 KiB block
/// (`id_of(b)` gives block `b`'s pattern id), then a few unaligned reads
/// across chunk boundaries against aligned ones.
pub fn check_fixture(
    p: &dyn Personality,
    m: &Images,
    array_bytes: u64,
    id_of: impl Fn(u64) -> u64,
    what: &str,
) {
    assert_eq!(p.array_bytes(), array_bytes, "{what}: array size");
    let hint = p.io_hint() as usize;
    let mut buf = vec![0u8; hint];
    let mut off = 0u64;
    while off < array_bytes {
        let len = hint.min((array_bytes - off) as usize);
        p.read(m, off, &mut buf[..len]).unwrap_or_else(|e| panic!("{what}: read at {off}: {e}"));
        for (i, blk) in buf[..len].chunks(4096).enumerate() {
            let b = off / 4096 + i as u64;
            assert!(blk == block(b, id_of(b)), "{what}: block {b} differs");
        }
        off += len as u64;
    }
    for start in [65536 - 10, 5 * 65536 - 3000, array_bytes - 70000] {
        let mut small = vec![0u8; 9000];
        p.read(m, start, &mut small).unwrap_or_else(|e| panic!("{what}: read at {start}: {e}"));
        let b0 = start / 4096;
        let mut whole = vec![0u8; 4 * 4096];
        p.read(m, b0 * 4096, &mut whole).unwrap_or_else(|e| panic!("{what}: read at {}: {e}", b0 * 4096));
        let skip = (start - b0 * 4096) as usize;
        assert_eq!(&small[..], &whole[skip..skip + 9000], "{what}: unaligned at {start}");
    }
}

// ---------------------------------------------------------------------------
// Synthetic parity arrays: the model, member images, and a parity reference
// (xor for P; GF(2^8) over 0x11d with generator 2 for Q, written here, not
// md's).
// ---------------------------------------------------------------------------

/// A parity-level spec whose members hold `data_bytes` of data area each
/// behind md's default 1 MiB data offset.
pub fn pspec(level: Level, layout: u32, disks: usize, chunk: u64, data_bytes: u64) -> Spec {
    let mut s = Spec::new(level, disks, (1 << 20) + data_bytes);
    s.chunk_sectors = (chunk / 512) as u32;
    s.layout = layout;
    assert_eq!(s.data_offset * 512, DATA_OFFSET, "synthetic members keep md's 1 MiB data offset");
    s
}

pub fn read_all(array: &Array) -> Vec<u8> {
    let mut v = vec![0u8; array.size() as usize];
    array.read_at(0, &mut v).expect("read whole array");
    v
}

/// Panics naming the first differing byte (and how many differ) instead of
/// dumping megabytes.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
    let last = got.iter().zip(want).rposition(|(a, b)| a != b).unwrap();
    let count = got.iter().zip(want).filter(|(a, b)| a != b).count();
    panic!(
        "{what}: {count} byte(s) differ in {first}..={last}; first at {first}: got {:#04x}, want {:#04x}",
        got[first], want[first]
    );
}

pub fn check_model(array: &Array, model: &[u8], what: &str) {
    assert_eq!(array.size(), model.len() as u64, "{what}: size");
    assert_same(&read_all(array), model, what);
}

/// Every member image's whole content, by path.
pub fn snapshot(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    snapshot_from(paths, 0)
}

/// Every member image's content from byte `from` on (`DATA_OFFSET`: the
/// data areas, leaving out superblocks a writable array may update).
pub fn snapshot_from(paths: &[PathBuf], from: usize) -> Vec<Vec<u8>> {
    paths.iter().map(|p| std::fs::read(p).expect("read member image")[from..].to_vec()).collect()
}

pub fn assert_unchanged(before: &[Vec<u8>], paths: &[PathBuf], what: &str) {
    assert_unchanged_from(before, paths, 0, what);
}

pub fn assert_unchanged_from(before: &[Vec<u8>], paths: &[PathBuf], from: usize, what: &str) {
    for (i, (b, p)) in before.iter().zip(paths).enumerate() {
        let now = std::fs::read(p).expect("read member image");
        assert_same(&now[from..], b, &format!("{what}: member image {i} ({}) from byte {from}", p.display()));
    }
}

/// Where each slot's member lives: its image path and the byte offset of its
/// data area (`data_offset * 512` from its own superblock). `None` for
/// missing slots.
pub type MemberMap = Vec<Option<(PathBuf, u64)>>;

/// The same map for a synthetic array built by [`build`] (slot = index).
pub fn synth_map(paths: &[PathBuf], spec: &Spec, absent: &[usize]) -> MemberMap {
    paths
        .iter()
        .enumerate()
        .map(|(s, p)| (!absent.contains(&s)).then(|| (p.clone(), spec.data_offset * 512)))
        .collect()
}

/// Multiplication by the generator {02} in GF(2^8) modulo x^8+x^4+x^3+x^2+1.
pub fn gf_mul2(x: u8) -> u8 {
    (x << 1) ^ if x & 0x80 != 0 { 0x1d } else { 0 }
}

/// P (xor of every block) and Q (sum of g^z * D_z, Horner's rule from the
/// highest position down; `None` positions are zero blocks) of one row.
pub fn reference_pq(blocks: &[Option<&[u8]>], len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut p = vec![0u8; len];
    let mut q = vec![0u8; len];
    for b in blocks.iter().rev() {
        for x in q.iter_mut() {
            *x = gf_mul2(*x);
        }
        if let Some(b) = b {
            for ((p, q), d) in p.iter_mut().zip(q.iter_mut()).zip(b.iter()) {
                *p ^= d;
                *q ^= d;
            }
        }
    }
    (p, q)
}

/// An independently written md layout for stripe `s` of `n` members, where
/// this file knows one: (slot of each data index, P slot, Q slot, syndrome
/// position of each data index).
#[allow(clippy::type_complexity)]
pub fn independent_layout(
    level: Level,
    layout: u32,
    n: usize,
    s: u64,
) -> Option<(Vec<usize>, usize, Option<usize>, Vec<usize>)> {
    match (level, layout) {
        // raid4: parity on the last disk, data in order.
        (Level::Raid4, _) => Some(((0..n - 1).collect(), n - 1, None, (0..n - 1).collect())),
        // raid5 left-symmetric: pd_idx = data_disks - s % raid_disks; data
        // index k on (pd_idx + 1 + k) % raid_disks.
        (Level::Raid5, 2) => {
            let pd = (n - 1) - (s % n as u64) as usize;
            Some(((0..n - 1).map(|k| (pd + 1 + k) % n).collect(), pd, None, (0..n - 1).collect()))
        }
        // raid6 left-symmetric: P rotates down from the last disk, Q right
        // after it (wrapping to 0), data continues after Q; Q's walk starts
        // after Q, so data index k has syndrome position k.
        (Level::Raid6, 2) => {
            let pd = (n - 1) - (s % n as u64) as usize;
            let qd = (pd + 1) % n;
            Some(((0..n - 2).map(|k| (pd + 2 + k) % n).collect(), pd, Some(qd), (0..n - 2).collect()))
        }
        _ => None,
    }
}

/// Checks the member images of every stripe row in `rows` (all rows when
/// `None`) against `model`: each present data block equals the model's
/// bytes, P equals the xor of the model's data, Q (raid6) equals the GF sum
/// of the model's data at md's syndrome positions. Slots missing from `map`
/// are skipped. Returns the number of member blocks compared.
pub fn check_parity(
    pers: &dyn Personality,
    map: &MemberMap,
    model: &[u8],
    rows: Option<&[u64]>,
    what: &str,
) -> usize {
    let g = pers.geometry();
    let level = g.level;
    let n = g.raid_disks as usize;
    let chunk = u64::from(g.chunk_sectors) * 512;
    let raid6 = level == Level::Raid6;
    let data_disks = n - if raid6 { 2 } else { 1 };
    let stripe_bytes = chunk * data_disks as u64;
    assert_eq!(pers.array_bytes(), model.len() as u64, "{what}: array size");
    assert_eq!(model.len() as u64 % stripe_bytes, 0, "{what}: whole stripes");
    let nrows = model.len() as u64 / stripe_bytes;
    let files: Vec<Option<(File, u64)>> = map
        .iter()
        .map(|m| m.as_ref().map(|(p, start)| (File::open(p).expect("open member image"), *start)))
        .collect();
    let all: Vec<u64>;
    let rows = match rows {
        Some(r) => r,
        None => {
            all = (0..nrows).collect();
            &all
        }
    };
    let mut disk = vec![0u8; chunk as usize];
    let mut compared = 0;
    for &s in rows {
        assert!(s < nrows, "{what}: row {s} of {nrows}");
        let member_off = s * chunk;
        // Data index k → slot, by the personality's own map.
        let slots: Vec<usize> = (0..data_disks)
            .map(|k| {
                let a = s * stripe_bytes + k as u64 * chunk;
                let loc = pers.locate(a);
                assert_eq!(loc.len(), 1, "{what}: locate({a})");
                assert_eq!(loc[0].offset, member_off, "{what}: row {s} data {k} member offset");
                loc[0].slot
            })
            .collect();
        let lay = pers.syndrome_layout(member_off).expect("parity level has a syndrome layout");
        // The layout is a permutation: data slots, P and Q all distinct.
        let mut seen = vec![false; n];
        for &d in slots.iter().chain(std::iter::once(&lay.p)).chain(lay.q.iter()) {
            assert!(d < n && !seen[d], "{what}: row {s}: slot {d} used twice ({slots:?}, {lay:?})");
            seen[d] = true;
        }
        assert!(seen.iter().all(|&x| x), "{what}: row {s}: slots not all used ({slots:?}, {lay:?})");
        assert_eq!(lay.q.is_some(), raid6, "{what}: Q only for raid6");
        let present_in_lay: Vec<usize> = lay.data.iter().flatten().copied().collect();
        assert_eq!(present_in_lay.len(), data_disks, "{what}: row {s}: {lay:?}");
        if !raid6 {
            // raid4/5 list the data slots in data order.
            let order: Vec<usize> = lay.data.iter().map(|d| d.expect("raid5 has no zero blocks")).collect();
            assert_eq!(order, slots, "{what}: row {s}: syndrome order vs locate");
        }
        // Syndrome position of each data index.
        let z_of: Vec<usize> = slots
            .iter()
            .map(|&sl| lay.data.iter().position(|d| *d == Some(sl)).expect("data slot in syndrome layout"))
            .collect();
        if let Some((dslots, p, q, z)) = independent_layout(level, g.layout, n, s) {
            assert_eq!(slots, dslots, "{what}: row {s}: data slots vs independent layout");
            assert_eq!(lay.p, p, "{what}: row {s}: P slot vs independent layout");
            assert_eq!(lay.q, q, "{what}: row {s}: Q slot vs independent layout");
            assert_eq!(z_of, z, "{what}: row {s}: syndrome positions vs independent layout");
        }
        // Expected blocks from the model.
        let data: Vec<&[u8]> = (0..data_disks)
            .map(|k| {
                let a = (s * stripe_bytes + k as u64 * chunk) as usize;
                &model[a..a + chunk as usize]
            })
            .collect();
        let mut by_pos: Vec<Option<&[u8]>> = vec![None; lay.data.len()];
        for k in 0..data_disks {
            by_pos[z_of[k]] = Some(data[k]);
        }
        let (p, q) = reference_pq(&by_pos, chunk as usize);
        let mut expect: Vec<(usize, &[u8], String)> =
            slots.iter().enumerate().map(|(k, &sl)| (sl, data[k], format!("data {k}"))).collect();
        expect.push((lay.p, &p, "P".into()));
        if let Some(qs) = lay.q {
            expect.push((qs, &q, "Q".into()));
        }
        for (slot, want, role) in expect {
            let Some((f, start)) = &files[slot] else { continue };
            f.read_exact_at(&mut disk, start + member_off).expect("read member image");
            if disk != want {
                let i = disk.iter().zip(want).position(|(a, b)| a != b).unwrap();
                panic!(
                    "{what}: row {s} (member offset {member_off}), slot {slot} ({role}): byte {i} of the chunk \
                     is {:#04x} on disk, reference says {:#04x} (array bytes {}..{})",
                    disk[i],
                    want[i],
                    s * stripe_bytes,
                    (s + 1) * stripe_bytes
                );
            }
            compared += 1;
        }
    }
    compared
}

/// Rewrites the superblock of every member (`files`, slot order) of the
/// synthetic array `spec` with `resync_offset` = `sector` (`MAX_SECTOR`:
/// clean; anything else: a dirty array, not in sync from there on).
pub fn set_resync_offset(files: &[File], spec: &Spec, sector: u64) {
    for (slot, f) in files.iter().enumerate() {
        let mut sb = spec.superblock(slot).unwrap();
        sb.resync_offset = sector;
        sb.update_checksum();
        let mut block = vec![0u8; md::superblock::MAX_SB_SIZE];
        sb.encode(&mut block);
        f.write_all_at(&block[..sb.sb_bytes().div_ceil(512) * 512], sb.super_offset * 512).unwrap();
        f.sync_all().unwrap();
    }
}

// ---------------------------------------------------------------------------
// Arrays with md's internal write-intent bitmap, made by `md::create` (the
// synthetic builder makes none): the bitmap area and the superblock read
// and marked straight on the member images.
// ---------------------------------------------------------------------------

/// Byte offset of the bitmap area on a v1.2 member made by `md::create`
/// (superblock at sector 8, bitmap 8 sectors after it).
pub const BITMAP_AREA: u64 = 8192;
/// Byte offset of the v1.2 superblock.
pub const SB_OFFSET: u64 = 4096;

/// Creates an array (`md::create`, v1.2, chunk 64 KiB, none for raid1,
/// the level's default layout) with an internal bitmap of
/// `bitmap_chunk_kib` on `n` new image files `m<i>.img` of `image_bytes`
/// each in `dir`; `clean`: `--assume-clean` (bits clear), else every bit
/// set (needs a resync). Returns the member paths.
pub fn create_with_bitmap(
    dir: &Path,
    level: Level,
    n: usize,
    image_bytes: u64,
    bitmap_chunk_kib: u64,
    clean: bool,
) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("m{i}.img"))).collect();
    for p in &paths {
        File::create(p).and_then(|f| f.set_len(image_bytes)).expect("create member image");
    }
    let req = md::create::Request {
        level,
        raid_devices: n,
        chunk_kib: (level != Level::Raid1).then_some(64),
        layout: None,
        name: Some("bm".into()),
        homehost: Some("test".into()),
        size_kib: None,
        assume_clean: clean,
        bitmap: true,
        bitmap_chunk_kib: Some(bitmap_chunk_kib),
        force: false,
        members: paths.iter().cloned().map(Some).collect(),
    };
    md::create::plan(&req).expect("plan the array").write().expect("write the array");
    paths
}

/// The bitmap header and bits of `member`'s area, as on its image.
pub fn bitmap_area(member: &Path) -> (md::bitmap::BitmapHeader, Vec<bool>) {
    let f = File::open(member).expect("open member image");
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, BITMAP_AREA).expect("read the bitmap area");
    let h = md::bitmap::BitmapHeader::decode(&b).expect("bitmap header");
    let base = md::bitmap::HEADER_BYTES;
    let bits = (0..h.chunks()).map(|i| b[base + (i / 8) as usize] & (1 << (i % 8)) != 0).collect();
    (h, bits)
}

/// The indices of the set bits.
pub fn dirty_chunks(bits: &[bool]) -> Vec<u64> {
    bits.iter().enumerate().filter(|(_, &b)| b).map(|(i, _)| i as u64).collect()
}

/// Rewrites every member's v1.2 superblock (read from its image) with
/// `resync_offset` = `sector` (0: dirty, as the metadata manager marks it
/// before the first write; `u64::MAX`: clean), checksum recomputed.
pub fn mark_resync_offset(paths: &[PathBuf], sector: u64) {
    for p in paths {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(p).expect("open member image");
        let mut b = vec![0u8; 4096];
        f.read_exact_at(&mut b, SB_OFFSET).expect("read superblock");
        b[208..216].copy_from_slice(&sector.to_le_bytes());
        let max_dev = u32::from_le_bytes(b[220..224].try_into().expect("4 bytes"));
        let csum = md::superblock::checksum(&b, max_dev);
        b[216..220].copy_from_slice(&csum.to_le_bytes());
        f.write_all_at(&b, SB_OFFSET).expect("write superblock");
        f.sync_all().expect("sync member image");
    }
}

/// Every slot of `paths` (slot order) with its data area at byte `data_offset`.
pub fn member_map(paths: &[PathBuf], data_offset: u64) -> MemberMap {
    paths.iter().map(|p| Some((p.clone(), data_offset))).collect()
}
