//! md's internal write-intent bitmap ([`md::bitmap`]), on arrays made by
//! `md::create` with `--bitmap internal`:
//!
//! * the area mdadm reads: header fields, bits set for a new array that
//!   needs a resync, clear with `--assume-clean`; the real kernel's fixture
//!   `raid1_2d_bitmap` loads.
//! * writes set exactly the bits of the chunks they touch on every member
//!   before returning; two idle daemon passes clear them on disk.
//! * after an unclean stop (superblocks dirty, bits left set), the resync
//!   processes only the chunks whose bit is set (counted), makes their
//!   redundancy right, and leaves clean chunks alone — proved by a
//!   mismatch planted in a clean chunk that only a later `check` finds.
//! * while degraded, bits are not cleared.

mod common;

use common::{bitmap_area as area, dirty_chunks, mark_resync_offset, Scratch};
use md::bitmap::Bitmap;
use md::{assemble_writable, AssembleOptions, Level};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn scratch(tag: &str) -> Scratch {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("umd-md-bitmap-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    Scratch(dir)
}

/// Creates an array with an internal bitmap of `chunk_kib` on `n` image
/// files of `mib` MiB each.
fn create(s: &Scratch, level: Level, n: usize, mib: u64, chunk_kib: u64, clean: bool) -> Vec<PathBuf> {
    common::create_with_bitmap(&s.0, level, n, mib << 20, chunk_kib, clean)
}

fn wait_idle(array: &md::Array, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ctl = array.sync_ctl();
        if ctl.action() == md::sync::SyncAction::Idle && ctl.resync_cp() == md::superblock::MAX_SECTOR {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: sync not finished after 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn new_arrays_and_the_kernel_fixture() {
    let s = scratch("format");
    // Needs a resync: every bit set; the header as mdadm reads it.
    let paths = create(&s, Level::Raid5, 4, 8, 256, false);
    for p in &paths {
        let (h, bits) = area(p);
        assert_eq!(h.chunksize, 256 << 10);
        // 7 MiB used per member after the 1 MiB data offset, in 64 KiB rows.
        assert_eq!(h.sync_size, 7 * 2048);
        assert_eq!(bits.len(), 28);
        assert!(bits.iter().all(|&b| b), "{}: new array needing a resync: {bits:?}", p.display());
    }
    let sb = md::superblock::load(
        &blockio::Member::open(&paths[0], blockio::Access::ReadOnly).expect("open"),
        None,
        true,
    )
    .expect("superblock");
    assert!(sb.sb.has_feature(md::superblock::feature::BITMAP_OFFSET));
    assert_eq!(sb.sb.bitmap_offset, 8);
    let clean = scratch("format-clean");
    let paths = create(&clean, Level::Raid1, 2, 8, 64, true);
    for p in &paths {
        let (_, bits) = area(p);
        assert!(bits.iter().all(|&b| !b), "clean array: {bits:?}");
    }
    let asm = assemble_writable(&paths, &AssembleOptions::default()).expect("assemble");
    let bm = asm.array.bitmap().expect("bitmap loaded");
    assert_eq!((bm.chunks(), bm.stats().dirty), (112, 0));

    // The kernel's own: raid1, 64 MiB chunks, one bit, clear after md's
    // resync.
    let (_fx, _images) = common::unpack_fixture("raid1_2d_bitmap", 2);
    let dir = &_fx.0;
    let fx: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("m{i}.img"))).collect();
    let (h, bits) = area(&fx[0]);
    assert_eq!((h.chunksize, h.sync_size, h.daemon_sleep, h.events), (64 << 20, 14336, 5, 15));
    assert_eq!(bits, vec![false]);
    let asm = md::assemble(&fx, &AssembleOptions::default()).expect("assemble fixture");
    let bm = asm.array.bitmap().expect("fixture bitmap loaded");
    assert_eq!((bm.chunks(), bm.stats().dirty), (1, 0));
}

#[test]
fn writes_set_bits_first_and_idle_clears_them() {
    for (level, n) in [(Level::Raid5, 4), (Level::Raid1, 2), (Level::Raid6, 5), (Level::Raid10, 4)] {
        let s = scratch("set-clear");
        let paths = create(&s, level, n, 8, 64, true);
        let asm = assemble_writable(&paths, &AssembleOptions::default()).expect("assemble");
        let array = &asm.array;
        let bm = array.bitmap().expect("bitmap").clone();
        let unit_bytes: u64 = match level {
            // Per-member sectors: a bit covers 64 KiB of each member, one
            // 64 KiB chunk row.
            Level::Raid5 => 3 * (64 << 10),
            Level::Raid6 => 3 * (64 << 10),
            _ => 64 << 10,
        };
        let offsets = [0u64, 5 * unit_bytes + 100, 17 * unit_bytes + unit_bytes - 10];
        for &off in &offsets {
            array.write_at(off, &[0xab; 4000]).expect("write");
        }
        let mut want: Vec<u64> = offsets
            .iter()
            .flat_map(|&o| {
                let (a, b) = array.sync_units(o, 4000);
                let per = bm.chunk_units();
                (a / per)..b.div_ceil(per)
            })
            .collect();
        want.sort_unstable();
        want.dedup();
        for p in &paths {
            let (_, bits) = area(p);
            assert_eq!(dirty_chunks(&bits), want, "{level}: bits on {} after the writes", p.display());
        }
        // Two idle passes clear them on every member.
        let slots = &array.slots;
        bm.daemon_pass(slots, array.health(), false, true).expect("pass");
        assert_eq!(bm.stats().dirty, want.len() as u64, "{level}: cleared after one pass");
        bm.daemon_pass(slots, array.health(), false, true).expect("pass");
        for p in &paths {
            let (h, bits) = area(p);
            assert!(dirty_chunks(&bits).is_empty(), "{level}: bits left on {}: {bits:?}", p.display());
            assert_eq!(h.events_cleared, h.events, "{level}: events_cleared");
        }
        // A write between the passes keeps its bit.
        array.write_at(0, &[1; 10]).expect("write");
        bm.daemon_pass(slots, array.health(), false, true).expect("pass");
        array.write_at(0, &[2; 10]).expect("write");
        bm.daemon_pass(slots, array.health(), false, true).expect("pass");
        // The second write re-armed the idle count: one more pass needed.
        assert_eq!(bm.stats().dirty, 1, "{level}: chunk 0 written between passes");
    }
}

/// Corrupts (xors) `len` bytes at member byte `off` of the data area.
fn corrupt(path: &Path, off: u64, len: usize) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let at = (1 << 20) + off;
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, at).expect("read");
    for x in &mut b {
        *x ^= 0x5a;
    }
    f.write_all_at(&b, at).expect("write");
}

#[test]
fn unclean_stop_resyncs_only_dirty_chunks() {
    for (level, n) in [(Level::Raid5, 4), (Level::Raid1, 2)] {
        let s = scratch("unclean");
        let paths = create(&s, level, n, 8, 64, true);
        mark_resync_offset(&paths, 0);
        let dirty_writes = [0u64, 9 << 20];
        {
            let asm = assemble_writable(&paths, &AssembleOptions::default()).expect("assemble");
            for &off in &dirty_writes {
                let off = off.min(asm.array.size() - 4096);
                asm.array.write_at(off, &[0xcd; 4096]).expect("write");
            }
            asm.array.flush().expect("flush");
            // The machine stops here: no idle pass, superblocks dirty.
        }
        let (_, bits) = area(&paths[0]);
        let dirty = dirty_chunks(&bits);
        assert!(!dirty.is_empty() && dirty.len() < bits.len() / 4, "{level}: dirty chunks {dirty:?}");
        // A mismatch in a dirty chunk (the resync fixes it) and one in a
        // clean chunk (the resync must not even look at it). Member 1's
        // data, page 0 of chunk `c` (64 KiB of member space per chunk).
        let clean_chunk =
            (0..bits.len() as u64).find(|c| !dirty.contains(c) && *c > 4).expect("a clean chunk");
        corrupt(&paths[1], dirty[0] * (64 << 10), 4096);
        corrupt(&paths[1], clean_chunk * (64 << 10), 4096);

        let asm = assemble_writable(&paths, &AssembleOptions::default()).expect("assemble again");
        let array = Arc::new(asm.array);
        assert_ne!(array.sync_ctl().resync_cp(), md::superblock::MAX_SECTOR, "{level}: dirty at assembly");
        let h = md::sync::spawn(array.clone()).expect("sync thread");
        wait_idle(&array, &format!("{level} resync"));
        let per = array.bitmap().expect("bitmap").chunk_units();
        assert_eq!(
            array.sync_ctl().synced_units(),
            dirty.len() as u64 * per,
            "{level}: the resync processed other chunks than the dirty ones ({dirty:?})"
        );
        // The clean chunk was left alone: check finds exactly its page.
        array.sync_ctl().store_action(b"check").expect("check");
        let deadline = Instant::now() + Duration::from_secs(60);
        while array.sync_ctl().action() != md::sync::SyncAction::Idle
            || array.sync_ctl().completed().is_some()
        {
            assert!(Instant::now() < deadline, "{level}: check not finished");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(array.sync_ctl().mismatches(), 8, "{level}: mismatches after the bitmap resync");
        array.sync_ctl().shutdown();
        h.join().expect("sync thread");
    }
}

#[test]
fn degraded_arrays_keep_their_bits() {
    let s = scratch("degraded");
    let paths = create(&s, Level::Raid5, 4, 8, 64, true);
    let asm = assemble_writable(&paths[..3], &AssembleOptions { force: true, ..Default::default() })
        .expect("assemble degraded");
    let array = &asm.array;
    let bm: &Bitmap = array.bitmap().expect("bitmap");
    array.write_at(0, &[7; 5000]).expect("write");
    let before = bm.stats().dirty;
    assert!(before > 0);
    for _ in 0..3 {
        bm.daemon_pass(&array.slots, array.health(), array.missing() > 0, true).expect("pass");
    }
    assert_eq!(bm.stats().dirty, before, "bits cleared while degraded");
    let (_, bits) = area(&paths[0]);
    assert_eq!(dirty_chunks(&bits).len() as u64, before);
}

/// A member failed, removed, and added back (md's re-add): it returns to
/// its slot and only the chunks written while it was away (the bitmap's
/// bits) are rebuilt; then every byte is right, with any other member
/// left out too.
#[test]
fn readd_recovers_only_the_dirty_chunks() {
    for (level, n) in [(Level::Raid5, 4), (Level::Raid1, 2), (Level::Raid6, 5)] {
        let s = scratch("readd");
        let paths = create(&s, level, n, 8, 64, true);
        let asm = assemble_writable(&paths, &AssembleOptions::default()).expect("assemble");
        let array = Arc::new(asm.array);
        let size = array.size() as usize;
        let mut model = vec![0u8; size];
        array.read_at(0, &mut model).expect("read");
        let mut put = |array: &md::Array, off: u64, len: usize, byte: u8| {
            let off = off.min(size as u64 - len as u64);
            let data = vec![byte; len];
            array.write_at(off, &data).expect("write");
            model[off as usize..off as usize + len].copy_from_slice(&data);
        };
        put(&array, 0, 100_000, 1);
        put(&array, 3 << 20, 5000, 2);
        let bm = array.bitmap().expect("bitmap").clone();
        bm.daemon_pass(&array.slots, array.health(), false, true).expect("pass");
        bm.daemon_pass(&array.slots, array.health(), false, true).expect("pass");
        assert_eq!(bm.stats().dirty, 0, "{level}: clean before the failure");

        let victim = 1;
        let h = array.health();
        assert!(h.fail_request(victim), "{level}: fail");
        h.remove(victim).expect("remove");
        // Written while it is away: a few chunks.
        put(&array, 1 << 20, 3000, 3);
        put(&array, (5 << 20) + 777, 70_000, 4);
        for _ in 0..3 {
            bm.daemon_pass(&array.slots, array.health(), array.missing() > 0, true).expect("pass");
        }
        let dirty = bm.stats().dirty;
        assert!(dirty >= 2, "{level}: dirty chunks while degraded: {dirty}");

        let m = md::array::spare_from_path(&paths[victim], &array.sb, Some(&bm)).expect("spare");
        assert_eq!(m.saved_slot.load(Ordering::Relaxed), victim, "{level}: recognised as a re-add");
        let id = h.add(m).expect("add");
        h.place(id, victim).expect("place");
        assert_ne!(h.flags(victim).expect("flags") & md::array::flags::BITMAP_RECOVERY, 0);
        let t = md::sync::spawn(array.clone()).expect("sync thread");
        let deadline = Instant::now() + Duration::from_secs(60);
        while array.missing() > 0 || array.sync_ctl().action() != md::sync::SyncAction::Idle {
            assert!(Instant::now() < deadline, "{level}: recovery not finished");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            array.sync_ctl().synced_units(),
            dirty * bm.chunk_units(),
            "{level}: the re-add rebuilt more than the dirty chunks"
        );
        let mut back = vec![0u8; size];
        array.read_at(0, &mut back).expect("read back");
        assert!(back == model, "{level}: data after the re-add");
        array.sync_ctl().store_action(b"check").expect("check");
        while array.sync_ctl().action() != md::sync::SyncAction::Idle {
            assert!(Instant::now() < deadline, "{level}: check not finished");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(array.sync_ctl().mismatches(), 0, "{level}: mismatches after the re-add");
        array.sync_ctl().shutdown();
        t.join().expect("sync thread");
        drop(array);
        // The re-added member stands in for another one.
        let other = if victim == 0 { 1 } else { 0 };
        let rest: Vec<PathBuf> =
            paths.iter().enumerate().filter(|(i, _)| *i != other).map(|(_, p)| p.clone()).collect();
        let ro = md::assemble(&rest, &AssembleOptions { force: true, ..Default::default() })
            .expect("assemble without another");
        let mut back = vec![0u8; size];
        ro.array.read_at(0, &mut back).expect("read degraded");
        assert!(back == model, "{level}: data read through the re-added member");
    }
}
