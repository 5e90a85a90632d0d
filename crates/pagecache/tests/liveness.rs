//! Liveness (not speed): crossed copies inside one mapping, ranges copied
//! onto themselves shifted by less than a folio, and writes whose source
//! is the folio being written, from several threads at once; writers
//! against a small dirty limit and a slow store. A watchdog aborts the
//! test with a message when no operation completes for 10 s.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FaultBacking, Rng, TempDir, Watchdog};
use pagecache::*;

const THREADS: usize = 6;
const STALL: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Family {
    Mem,
    Block,
}

/// Six threads for `run_for` over a region of `folios` folios:
/// * threads 0/1: crossed copies A→B and B→A of the same overlapping
///   ranges (same PRNG seed, so they pick the same A and B);
/// * threads 2/3: a range copied onto itself shifted up / down by less
///   than a folio;
/// * threads 4/5: `generic_perform_write` whose source is a cache range
///   of the same mapping overlapping the destination folio (memory
///   before and after it), plus reads and fsyncs.
///
/// Every byte ever written is nonzero, so a zero byte in the region at the
/// end is data lost or a folio used without being read.
fn crossed(family: Family, fs: usize, folios: u64, run_for: Duration) {
    let dir = TempDir::new("crossed");
    let cache = PageCache::new(CacheConfig {
        memory_limit: (folios / 2).max(2) * fs as u64,
        dirty_limit: 4 * fs as u64,
        flushers: 1,
    });
    let (ops, path): (Arc<dyn AddressSpaceOps>, _) = match family {
        Family::Mem => (Arc::new(MemOps), None),
        Family::Block => {
            let (p, f) = dir.file("crossed");
            (Arc::new(BlockOps::new(Arc::new(FileBacking(f)))), Some(p))
        }
    };
    let m = cache.mapping(ops, fs).expect("mapping");
    let region = folios * fs as u64;
    let mut rng = Rng::new(fs as u64 ^ folios);
    let init: Vec<u8> = rng.bytes(region as usize).into_iter().map(|b| b | 1).collect();
    assert_eq!(write_at(&m, 0, &init), Ok(init.len()));

    let wd = Watchdog::new(&format!("crossed copies {family:?} fs={fs}"), STALL);
    let deadline = Instant::now() + run_for;
    let total = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let m = Arc::clone(&m);
            let progress = wd.progress();
            let total = Arc::clone(&total);
            std::thread::spawn(move || {
                // Pairs share a seed: both sides of a crossed copy pick the
                // same ranges.
                let mut rng = Rng::new(1000 + (t / 2) as u64);
                let mut own = Rng::new(2000 + t as u64);
                let fs64 = fs as u64;
                let mut cursor = m.wb_err_cursor();
                while Instant::now() < deadline {
                    match t {
                        0 | 1 => {
                            let len = rng.range(1, 3 * fs64).min(region / 2);
                            let a = rng.below(region - len);
                            let d = rng.range(1, len);
                            let b = if a + d + len <= region { a + d } else { a.saturating_sub(d) };
                            let (s, dst) = if t == 0 { (a, b) } else { (b, a) };
                            assert_eq!(copy_range(&m, s, &m, dst, len as usize), Ok(len as usize));
                        }
                        2 | 3 => {
                            let shift = own.range(1, fs64 - 1);
                            let len = own.range(1, 2 * fs64).min(region - shift - 1);
                            let x = own.below(region - len - shift);
                            let (s, dst) = if t == 2 { (x, x + shift) } else { (x + shift, x) };
                            assert_eq!(copy_range(&m, s, &m, dst, len as usize), Ok(len as usize));
                        }
                        _ => {
                            if own.chance(10) {
                                let mut buf = vec![0u8; own.range(1, 2 * fs64) as usize];
                                let pos = own.below(region - buf.len() as u64);
                                assert_eq!(m.read(pos, &mut buf), Ok(buf.len()));
                                assert!(!buf.contains(&0), "read a zero byte: lost data or a folio not read");
                            } else if own.chance(5) {
                                assert_eq!(m.fsync(0, u64::MAX, &mut cursor), Ok(()));
                            } else {
                                // Destination in [fs, region - 2 fs); at most
                                // fs + 70 bytes, so it stays in the region.
                                // The cache source lies within a folio of the
                                // destination position, either side.
                                let pos = own.range(fs64, region - 2 * fs64);
                                let hl = own.below(64) as usize;
                                let head: Vec<u8> = own.bytes(hl).into_iter().map(|b| b | 1).collect();
                                let off = own.range(0, 2 * fs64 - 2) as i64 - (fs64 as i64 - 1);
                                let spos = (pos as i64 + off).clamp(0, (region - fs64) as i64) as u64;
                                let slen = own.range(1, fs64) as usize;
                                let tail = [0x5au8; 7];
                                let segs = [
                                    Segment::Mem(&head),
                                    Segment::Cache { mapping: &m, pos: spos, len: slen },
                                    Segment::Mem(&tail),
                                ];
                                let want = head.len() + slen + tail.len();
                                let w = generic_perform_write(&m, pos, &mut Source::new(&segs));
                                assert_eq!(w, Ok(want));
                            }
                        }
                    }
                    progress.tick();
                    total.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker");
    }
    drop(wd);
    assert!(total.load(Ordering::Relaxed) >= THREADS, "too few operations");
    assert_eq!(m.size(), region, "no operation may change the size");
    let mut cursor = m.wb_err_cursor();
    assert_eq!(m.fsync(0, u64::MAX, &mut cursor), Ok(()));
    let all = common::read_all(&m);
    assert_eq!(all.len() as u64, region);
    if let Some(z) = all.iter().position(|&b| b == 0) {
        panic!("{family:?} fs={fs}: zero byte at {z}: lost data or a folio used without being read");
    }
    if let Some(p) = path {
        let disk = std::fs::read(p).expect("read");
        assert!(disk == all, "{family:?} fs={fs}: file differs from the cache after fsync");
        assert_eq!(cache.throttle().dirty(), 0);
    }
}

#[test]
fn crossed_copies_mem_4k() {
    crossed(Family::Mem, 4096, 8, Duration::from_millis(1500));
}

#[test]
fn crossed_copies_block_4k() {
    crossed(Family::Block, 4096, 8, Duration::from_millis(1500));
}

#[test]
fn crossed_copies_mem_64k() {
    crossed(Family::Mem, 64 << 10, 4, Duration::from_millis(1500));
}

#[test]
fn crossed_copies_block_64k() {
    crossed(Family::Block, 64 << 10, 4, Duration::from_millis(1500));
}

/// A whole region copied onto itself shifted by a few bytes (far less than
/// a folio), up and down, in both families: correct (memmove) and done in
/// reasonable time.
#[test]
fn long_copy_shifted_by_a_few_bytes() {
    let dir = TempDir::new("shift");
    let cache = PageCache::new(CacheConfig { memory_limit: 1 << 20, dirty_limit: 256 << 10, flushers: 1 });
    let (_, f) = dir.file("shift");
    let wd = Watchdog::new("long shifted copy", STALL);
    let progress = wd.progress();
    for ops in
        [Arc::new(MemOps) as Arc<dyn AddressSpaceOps>, Arc::new(BlockOps::new(Arc::new(FileBacking(f))))]
    {
        let m = cache.mapping(ops, 16384).expect("mapping");
        let mut model = Rng::new(5).bytes(600_000);
        assert_eq!(write_at(&m, 0, &model), Ok(model.len()));
        for (src, dst, len) in
            [(0u64, 3u64, 599_000usize), (3, 0, 599_000), (100, 101, 500_000), (7, 1, 500_000)]
        {
            assert_eq!(copy_range(&m, src, &m, dst, len), Ok(len));
            model.copy_within(src as usize..src as usize + len, dst as usize);
            progress.tick();
        }
        assert!(common::read_all(&m) == model, "shifted copies");
    }
}

/// Writers against a small dirty limit and a slow store: dirty memory
/// never above the limit plus one step, and every writer finishes.
fn throttled(flushers: usize) {
    const WRITERS: usize = 6;
    const PER_WRITER: u64 = 384 << 10;
    let limit: u64 = 64 << 10;
    let cache = PageCache::new(CacheConfig { memory_limit: 1 << 20, dirty_limit: limit, flushers });
    let backing = FaultBacking::new();
    backing.set_write_delay(Duration::from_micros(300));
    let small = cache.mapping(Arc::new(BlockOps::new(backing.clone())), 4096).expect("mapping");
    let backing2 = FaultBacking::new();
    backing2.set_write_delay(Duration::from_micros(300));
    let big = cache.mapping(Arc::new(BlockOps::new(backing2.clone())), 16384).expect("mapping");
    let wd = Watchdog::new(&format!("throttled writers (flushers={flushers})"), STALL);
    let finished = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let m = Arc::clone(if w % 2 == 0 { &small } else { &big });
            let progress = wd.progress();
            let finished = Arc::clone(&finished);
            std::thread::spawn(move || {
                let mut rng = Rng::new(w as u64 + 77);
                let base = (w as u64 / 2) * PER_WRITER;
                let data = rng.bytes(PER_WRITER as usize);
                let mut done = 0u64;
                while done < PER_WRITER {
                    let n = rng.range(1, 20_000).min(PER_WRITER - done);
                    let piece = &data[done as usize..(done + n) as usize];
                    assert_eq!(write_at(&m, base + done, piece), Ok(n as usize));
                    done += n;
                    progress.tick();
                }
                finished.fetch_add(1, Ordering::SeqCst);
                (base, data)
            })
        })
        .collect();
    let results: Vec<(u64, Vec<u8>)> = handles.into_iter().map(|h| h.join().expect("writer")).collect();
    drop(wd);
    assert_eq!(finished.load(Ordering::SeqCst), WRITERS, "every writer finishes");
    let max = cache.throttle().max_dirty();
    assert!(max <= limit + 16384, "dirty memory reached {max}, limit {limit} + one 16 KiB step");
    assert!(max > limit / 2, "the throttle was never exercised ({max})");
    for m in [&small, &big] {
        let mut c = m.wb_err_cursor();
        assert_eq!(m.fsync(0, u64::MAX, &mut c), Ok(()));
    }
    let (s, b) = (backing.contents(), backing2.contents());
    for (w, (base, data)) in results.iter().enumerate() {
        let disk = if w % 2 == 0 { &s } else { &b };
        let got = &disk[*base as usize..*base as usize + data.len()];
        assert!(got == &data[..], "writer {w}'s data");
    }
    assert_eq!(cache.throttle().dirty(), 0);
}

#[test]
fn throttled_writers_bounded_and_all_finish() {
    throttled(1);
}

#[test]
fn throttled_writers_two_flushers() {
    throttled(2);
}

/// `flushers: 0` means "writeback only by fsync/sync": a writer that goes
/// past the dirty limit must then write back itself, not wait forever.
#[test]
fn throttled_writer_without_flushers_makes_progress() {
    let limit: u64 = 64 << 10;
    let cache =
        Arc::new(PageCache::new(CacheConfig { memory_limit: 1 << 20, dirty_limit: limit, flushers: 0 }));
    let backing = FaultBacking::new();
    let m = cache.mapping(Arc::new(BlockOps::new(backing.clone())), 4096).expect("mapping");
    let data = Rng::new(3).bytes(1 << 20);
    let (m2, d2) = (Arc::clone(&m), data.clone());
    let r =
        common::within("writer with flushers: 0 past the dirty limit", STALL, move || write_at(&m2, 0, &d2));
    assert_eq!(r, Ok(data.len()));
    assert!(cache.throttle().max_dirty() <= limit + 4096);
    let mut c = m.wb_err_cursor();
    assert_eq!(m.fsync(0, u64::MAX, &mut c), Ok(()));
    assert!(backing.contents() == data);
}
