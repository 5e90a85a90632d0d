//! Semantics of the write loop and of writeback, per family:
//! * a short copy (source folio locked by another thread): in-memory
//!   commits the part copied; block-backed commits 0 into a folio that was
//!   not up to date and redoes it; the loop finishes once the source is
//!   unlocked;
//! * a source that cannot be brought in: the bytes before it are written
//!   and returned (EFAULT if none), nothing after (LTP writev07's rule);
//! * writeback errors: reported once per `fsync` cursor (errseq), never
//!   dropped silently;
//! * what else must not lose data or accounting: failed reads, truncate
//!   racing writers, dropping a dirty mapping or the cache, empty source
//!   segments, a write sourced from the folio it writes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FaultBacking, Recording, Rng, Watchdog};
use pagecache::*;

const LIMIT: Duration = Duration::from_secs(10);

fn cache(flushers: usize) -> PageCache {
    PageCache::new(CacheConfig { memory_limit: 64 << 20, dirty_limit: 16 << 20, flushers })
}

/// Poll `cond` until it holds; fails the test after 10 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn read_range(m: &AddressSpace, pos: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let n = m.read(pos, &mut v).expect("read");
    v.truncate(n);
    v
}

/// A writer thread writing `head` then `src_len` bytes of `src` (at 0) into
/// `dst` at 0 while the test holds `src`'s folio 0 locked.
fn spawn_short_writer(
    dst: Arc<AddressSpace>,
    src: Arc<AddressSpace>,
    head: Vec<u8>,
    src_len: usize,
) -> (mpsc::Receiver<Result<usize, Errno>>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let d2 = Arc::clone(&done);
    std::thread::spawn(move || {
        let segs = [Segment::Mem(&head), Segment::Cache { mapping: &src, pos: 0, len: src_len }];
        let r = generic_perform_write(&dst, 0, &mut Source::new(&segs));
        d2.store(true, Ordering::SeqCst);
        let _ = tx.send(r);
    });
    (rx, done)
}

#[test]
fn short_copy_in_memory_commits_what_was_copied() {
    let cache = cache(0);
    let src = cache.mapping(Arc::new(MemOps), 4096).expect("mapping");
    let p = Rng::new(1).bytes(4096);
    assert_eq!(write_at(&src, 0, &p), Ok(4096));
    let ops = Recording::new(MemOps);
    let dst = cache.mapping(ops.clone(), 4096).expect("mapping");
    let head = Rng::new(2).bytes(1000);

    let held = src.get_or_create(0).lock();
    let (rx, done) = spawn_short_writer(Arc::clone(&dst), Arc::clone(&src), head.clone(), 3000);
    // The part copied before the locked source is committed and visible
    // while the writer waits for the source.
    wait_until("the partial commit", || dst.size() == 1000);
    assert_eq!(read_range(&dst, 0, 4096), head);
    wait_until("the writer to come up short at the source", || ops.ends().len() >= 2);
    let ends = ops.ends();
    assert_eq!(ends[0], (0, 4000, 1000, Ok(1000)), "in-memory commits a short copy as far as it got");
    assert_eq!(ends[1], (1000, 3000, 0, Ok(0)));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!done.load(Ordering::SeqCst), "the writer cannot finish while the source is locked");
    drop(held);
    assert_eq!(rx.recv_timeout(LIMIT).expect("the writer finishes once the source is unlocked"), Ok(4000));
    let mut want = head.clone();
    want.extend_from_slice(&p[..3000]);
    assert_eq!(common::read_all(&dst), want);
}

#[test]
fn short_copy_block_backed_commits_zero_into_a_folio_not_uptodate_and_redoes_it() {
    let cache = cache(0);
    let src = cache.mapping(Arc::new(MemOps), 4096).expect("mapping");
    let p = Rng::new(3).bytes(4096);
    assert_eq!(write_at(&src, 0, &p), Ok(4096));
    // The destination's store already holds 8 KiB; nothing is cached.
    let backing = FaultBacking::new();
    let old = Rng::new(4).bytes(8192);
    *backing.data.lock().expect("lock") = old.clone();
    let ops = Recording::new(BlockOps::new(backing.clone()));
    let dst = cache.mapping(ops.clone(), 4096).expect("mapping");
    assert_eq!(dst.size(), 8192);
    let head = Rng::new(5).bytes(2048);

    let held = src.get_or_create(0).lock();
    // 4096 bytes at 0: the first step covers folio 0 whole, so write_begin
    // does not read it.
    let (rx, done) = spawn_short_writer(Arc::clone(&dst), Arc::clone(&src), head.clone(), 2048);
    wait_until("the writer to come up short at the source", || ops.ends().len() >= 3);
    let ends = ops.ends();
    assert_eq!(ends[0], (0, 4096, 2048, Ok(0)), "a short copy into a folio not up to date commits 0");
    assert_eq!(ends[1], (0, 2048, 2048, Ok(2048)), "then the loop redoes exactly what had copied");
    assert_eq!(ends[2], (2048, 2048, 0, Ok(0)));
    let mut visible = head.clone();
    visible.extend_from_slice(&old[2048..8192]);
    assert_eq!(common::read_all(&dst), visible, "the redone part, and the rest as it was");
    std::thread::sleep(Duration::from_millis(50));
    assert!(!done.load(Ordering::SeqCst), "the writer cannot finish while the source is locked");
    drop(held);
    assert_eq!(rx.recv_timeout(LIMIT).expect("the writer finishes once the source is unlocked"), Ok(4096));
    let mut want = head.clone();
    want.extend_from_slice(&p[..2048]);
    want.extend_from_slice(&old[4096..]);
    assert_eq!(common::read_all(&dst), want);
    let mut c = dst.wb_err_cursor();
    assert_eq!(dst.fsync(0, u64::MAX, &mut c), Ok(()));
    assert_eq!(backing.contents(), want);
}

/// A block-backed source whose store fails reads in [8192, 12288).
fn failing_source(cache: &PageCache) -> (Arc<AddressSpace>, Vec<u8>) {
    let b = FaultBacking::new();
    let x = Rng::new(6).bytes(32768);
    *b.data.lock().expect("lock") = x.clone();
    b.set_fail_read(Some(8192..12288));
    (cache.mapping(Arc::new(BlockOps::new(b)), 4096).expect("mapping"), x)
}

/// A destination holding `old`, nothing of it cached (block) or all of it
/// (in-memory).
fn filled_dst(cache: &PageCache, block: bool, old: &[u8]) -> (Arc<AddressSpace>, Option<Arc<FaultBacking>>) {
    if block {
        let b = FaultBacking::new();
        *b.data.lock().expect("lock") = old.to_vec();
        (cache.mapping(Arc::new(BlockOps::new(b.clone())), 4096).expect("mapping"), Some(b))
    } else {
        let m = cache.mapping(Arc::new(MemOps), 4096).expect("mapping");
        assert_eq!(write_at(&m, 0, old), Ok(old.len()));
        (m, None)
    }
}

/// After a write that returned `ret` at `pos`: bytes [pos, pos + ret) are
/// `written[..ret]`, everything else is `old` (same size).
fn check_writev07(
    dst: &AddressSpace,
    backing: Option<&FaultBacking>,
    old: &[u8],
    pos: usize,
    written: &[u8],
) {
    let mut want = old.to_vec();
    want[pos..pos + written.len()].copy_from_slice(written);
    assert_eq!(dst.size(), old.len() as u64, "nothing written past the return value");
    assert!(common::read_all(dst) == want, "bytes up to the return value written, nothing after");
    if let Some(b) = backing {
        let mut c = dst.wb_err_cursor();
        assert_eq!(dst.fsync(0, u64::MAX, &mut c), Ok(()));
        assert!(b.contents() == want, "the store agrees");
    }
}

#[test]
fn source_that_cannot_be_brought_in() {
    for block in [false, true] {
        let cache = cache(0);
        let (src, x) = failing_source(&cache);
        let old = Rng::new(7).bytes(20000);

        // The readable part of the source is written, then the loop stops.
        let (dst, b) = filled_dst(&cache, block, &old);
        let segs = [Segment::Cache { mapping: &src, pos: 4000, len: 8000 }];
        assert_eq!(generic_perform_write(&dst, 100, &mut Source::new(&segs)), Ok(4192), "block={block}");
        check_writev07(&dst, b.as_deref(), &old, 100, &x[4000..8192]);

        // Nothing readable: EFAULT, nothing written.
        let (dst, b) = filled_dst(&cache, block, &old);
        let segs = [Segment::Cache { mapping: &src, pos: 8202, len: 100 }];
        assert_eq!(generic_perform_write(&dst, 5000, &mut Source::new(&segs)), Err(libc::EFAULT));
        check_writev07(&dst, b.as_deref(), &old, 5000, &[]);

        // Memory before the bad range: written, returned; the first step
        // covers folio 1 whole (block: not up to date, so its short copy
        // commits 0 and is redone with exactly what copied).
        let (dst, b) = filled_dst(&cache, block, &old);
        let m = Rng::new(8).bytes(1000);
        let segs = [Segment::Mem(&m), Segment::Cache { mapping: &src, pos: 8192, len: 5000 }];
        assert_eq!(generic_perform_write(&dst, 4096, &mut Source::new(&segs)), Ok(1000), "block={block}");
        check_writev07(&dst, b.as_deref(), &old, 4096, &m);

        // Memory, a good cache range, then the bad one.
        let (dst, b) = filled_dst(&cache, block, &old);
        let segs = [Segment::Mem(&m), Segment::Cache { mapping: &src, pos: 7000, len: 3000 }];
        assert_eq!(generic_perform_write(&dst, 10, &mut Source::new(&segs)), Ok(1000 + 1192));
        let mut w = m.clone();
        w.extend_from_slice(&x[7000..8192]);
        check_writev07(&dst, b.as_deref(), &old, 10, &w);
    }
}

#[test]
fn writeback_errors_are_reported_once_per_cursor() {
    let cache = cache(0);
    let b = FaultBacking::new();
    let m = cache.mapping(Arc::new(BlockOps::new(b.clone())), 4096).expect("mapping");
    let mut before = m.wb_err_cursor();
    let mut opener = m.wb_err_cursor();
    b.set_fail_write(Some(8192..12288));
    let data = Rng::new(9).bytes(16384);
    assert_eq!(write_at(&m, 0, &data), Ok(16384));

    assert_eq!(m.fsync(0, u64::MAX, &mut opener), Err(libc::EIO), "the error is reported");
    assert_eq!(m.fsync(0, u64::MAX, &mut opener), Ok(()), "once to a cursor");
    assert_eq!(m.fsync(0, u64::MAX, &mut before), Err(libc::EIO), "a cursor from before sees it too");
    assert_eq!(m.fsync(0, u64::MAX, &mut before), Ok(()));
    let mut after = m.wb_err_cursor();
    assert_eq!(m.fsync(0, u64::MAX, &mut after), Ok(()), "a cursor taken after it was seen does not");
    // The folios that could be written are in the store; the one that
    // could not was reported.
    let disk = b.contents();
    assert!(disk[..8192] == data[..8192] && disk[12288..16384] == data[12288..]);

    // A new error reaches every cursor once, whatever range it fsyncs.
    assert_eq!(write_at(&m, 9000, &[1, 2, 3]), Ok(3));
    assert_eq!(m.fsync(8192, 12288, &mut after), Err(libc::EIO));
    for c in [&mut opener, &mut before] {
        assert_eq!(m.fsync(0, 4096, c), Err(libc::EIO));
        assert_eq!(m.fsync(0, u64::MAX, c), Ok(()));
    }
    assert_eq!(m.fsync(0, u64::MAX, &mut after), Ok(()));

    // An error nobody has seen yet (writeback by `sync`, not `fsync`) is
    // reported to a cursor taken afterwards (Linux's errseq_sample).
    assert_eq!(write_at(&m, 9000, &[4, 5, 6]), Ok(3));
    assert_eq!(cache.sync(), Err(libc::EIO));
    let mut late = m.wb_err_cursor();
    assert_eq!(m.fsync(0, u64::MAX, &mut late), Err(libc::EIO));
    let mut later = m.wb_err_cursor();
    assert_eq!(m.fsync(0, u64::MAX, &mut later), Ok(()));

    // Once the store works again, data written is written.
    b.set_fail_write(None);
    assert_eq!(write_at(&m, 8192, &data[8192..12288]), Ok(4096));
    assert_eq!(m.fsync(0, u64::MAX, &mut later), Ok(()));
    assert!(b.contents() == data);
    assert_eq!(cache.throttle().dirty(), 0);
}

#[test]
fn writeback_error_by_a_flusher_reaches_fsync() {
    let cache = PageCache::new(CacheConfig { memory_limit: 64 << 20, dirty_limit: 64 << 10, flushers: 1 });
    let b = FaultBacking::new();
    let m = cache.mapping(Arc::new(BlockOps::new(b.clone())), 4096).expect("mapping");
    let mut c = m.wb_err_cursor();
    b.set_fail_write(Some(0..4096));
    // More than half the dirty limit: the flusher starts writing back.
    assert_eq!(write_at(&m, 0, &vec![7u8; 48 << 10]), Ok(48 << 10));
    wait_until("the flusher to write back", || cache.throttle().dirty() == 0);
    assert!(b.failed_writes.load(Ordering::SeqCst) > 0);
    let mut fresh = m.wb_err_cursor();
    assert_eq!(m.fsync(0, u64::MAX, &mut c), Err(libc::EIO), "the flusher's error is not lost");
    assert_eq!(m.fsync(0, u64::MAX, &mut fresh), Err(libc::EIO), "unseen when that cursor was taken");
    assert_eq!(m.fsync(0, u64::MAX, &mut c), Ok(()));
}

#[test]
fn failed_reads_do_not_pin_cache_memory() {
    let limit = 8 * 4096;
    let cache = PageCache::new(CacheConfig { memory_limit: limit, dirty_limit: 4 * 4096, flushers: 0 });
    let b = FaultBacking::new();
    *b.data.lock().expect("lock") = vec![1u8; 1 << 20];
    b.set_fail_read(Some(0..(512 << 10)));
    let m = cache.mapping(Arc::new(BlockOps::new(b)), 4096).expect("mapping");
    let mut buf = vec![0u8; 100];
    for i in 0..64u64 {
        assert_eq!(m.read(i * 4096, &mut buf), Err(libc::EIO));
    }
    for i in 128..192u64 {
        assert_eq!(m.read(i * 4096, &mut buf), Ok(100));
        assert!(
            cache.cached_bytes() <= limit + 4096,
            "{} bytes cached with a limit of {limit}: folios that failed to read are never evicted",
            cache.cached_bytes()
        );
    }
}

/// Writers and truncates racing: no write may end up in a folio truncate
/// already took out of the mapping (its dirty bytes would never be written
/// back nor uncharged), and writeback must not forget a dirty folio.
#[test]
fn truncate_racing_writers_keeps_data_and_accounting() {
    let cache = PageCache::new(CacheConfig { memory_limit: 1 << 20, dirty_limit: 64 << 10, flushers: 1 });
    let b = FaultBacking::new();
    let m = cache.mapping(Arc::new(BlockOps::new(b.clone())), 4096).expect("mapping");
    let wd = Watchdog::new("truncate racing writers", LIMIT);
    let deadline = Instant::now() + Duration::from_millis(1500);
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let m = Arc::clone(&m);
            let progress = wd.progress();
            std::thread::spawn(move || {
                let mut rng = Rng::new(t + 100);
                let mut c = m.wb_err_cursor();
                while Instant::now() < deadline {
                    if t == 0 {
                        assert_eq!(m.truncate(rng.below(64 << 10)), Ok(()));
                    } else if t == 1 && rng.chance(20) {
                        let a = rng.below(64 << 10);
                        assert_eq!(m.fsync(a, a + rng.range(1, 32 << 10), &mut c), Ok(()));
                    } else {
                        let n = rng.range(1, 6000) as usize;
                        let data = vec![(t as u8) | 0x10; n];
                        assert_eq!(write_at(&m, rng.below(64 << 10), &data), Ok(n));
                    }
                    progress.tick();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker");
    }
    drop(wd);
    let mut c = m.wb_err_cursor();
    assert_eq!(m.fsync(0, u64::MAX, &mut c), Ok(()));
    assert_eq!(cache.throttle().dirty(), 0, "dirty bytes charged for folios no longer in the mapping");
    let mut disk = b.contents();
    let cached = common::read_all(&m);
    disk.resize(cached.len().max(disk.len()), 0);
    assert!(disk[..cached.len()] == cached[..], "a dirty folio was not written back by fsync");
}

#[test]
fn dropping_a_dirty_mapping_writes_it_back() {
    let cache = PageCache::new(CacheConfig { memory_limit: 64 << 20, dirty_limit: 1 << 20, flushers: 1 });
    let b = FaultBacking::new();
    let m = cache.mapping(Arc::new(BlockOps::new(b.clone())), 4096).expect("mapping");
    let data = Rng::new(10).bytes(16 << 10);
    assert_eq!(write_at(&m, 0, &data), Ok(data.len()));
    drop(m);
    assert_eq!(cache.throttle().dirty(), 0, "dirty memory of a dropped mapping stays charged forever");
    assert!(b.contents() == data, "dirty data of a dropped mapping was dropped silently");
}

#[test]
fn dropping_the_cache_writes_back() {
    let cache = PageCache::new(CacheConfig { memory_limit: 64 << 20, dirty_limit: 1 << 20, flushers: 1 });
    let b = FaultBacking::new();
    let m = cache.mapping(Arc::new(BlockOps::new(b.clone())), 4096).expect("mapping");
    let data = Rng::new(11).bytes(16 << 10);
    assert_eq!(write_at(&m, 0, &data), Ok(data.len()));
    drop(cache);
    assert!(b.contents() == data, "dropping the cache writes back everything dirty (its doc)");
    drop(m);
}

#[test]
fn empty_segments_are_skipped() {
    for block in [false, true] {
        let cache = cache(0);
        let ops: Arc<dyn AddressSpaceOps> =
            if block { Arc::new(BlockOps::new(FaultBacking::new())) } else { Arc::new(MemOps) };
        let src = cache.mapping(ops, 4096).expect("mapping");
        let x = Rng::new(12).bytes(12000);
        assert_eq!(write_at(&src, 0, &x), Ok(x.len()));
        let dst = cache.mapping(Arc::new(MemOps), 4096).expect("mapping");
        // The source folio is locked while the write starts: the copy
        // comes up short at once and the source must be brought in.
        let held = src.get_or_create(2).lock();
        let (tx, rx) = mpsc::channel();
        let (s2, d2) = (Arc::clone(&src), Arc::clone(&dst));
        std::thread::spawn(move || {
            let segs = [
                Segment::Mem(&[]),
                Segment::Cache { mapping: &s2, pos: 0, len: 0 },
                Segment::Cache { mapping: &s2, pos: 8192, len: 3000 },
                Segment::Mem(&[]),
                Segment::Mem(&[9, 9]),
            ];
            let _ = tx.send(generic_perform_write(&d2, 0, &mut Source::new(&segs)));
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        assert_eq!(rx.recv_timeout(LIMIT).expect("finishes"), Ok(3002), "block={block}");
        let mut want = x[8192..11192].to_vec();
        want.extend_from_slice(&[9, 9]);
        assert_eq!(common::read_all(&dst), want);
    }
}

/// A write whose source is a cache range of the mapping being written,
/// above the destination and overlapping its folio: the same result as
/// `memmove`, also when the destination folio is not cached yet (block:
/// the copy finds it not up to date and must bring the source in).
#[test]
fn write_sourced_from_its_own_folio() {
    for block in [false, true] {
        for (dst, src, len) in
            [(100u64, 150u64, 10_000usize), (4096, 4146, 8000), (0, 1, 4095), (4096, 8191, 9000)]
        {
            let cache = cache(1);
            let old = Rng::new(13).bytes(24_000);
            // In-memory: everything cached; block-backed: nothing cached.
            let (m, _b) = filled_dst(&cache, block, &old);
            let segs = [Segment::Cache { mapping: &m, pos: src, len }];
            assert_eq!(generic_perform_write(&m, dst, &mut Source::new(&segs)), Ok(len));
            let mut want = old.clone();
            want.copy_within(src as usize..src as usize + len, dst as usize);
            assert!(common::read_all(&m) == want, "block={block} {dst} <- {src} len {len}");
        }
    }
}

/// A store whose `set_size` is slow while `slow` is set.
struct SlowResize(Arc<FaultBacking>, AtomicBool);

impl Backing for SlowResize {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.0.read_at(pos, buf)
    }
    fn write_at(&self, pos: u64, buf: &[u8]) -> Result<(), Errno> {
        self.0.write_at(pos, buf)
    }
    fn flush(&self) -> Result<(), Errno> {
        Ok(())
    }
    fn set_size(&self, size: u64) -> Result<(), Errno> {
        if self.1.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.0.set_size(size)
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
}

/// A write past the new size while truncate is still cutting the store:
/// once both are done and fsynced, the cache and the store agree (before,
/// the write's folio was written back and then cut from the store by
/// truncate's `set_size`, while the cache kept it).
#[test]
fn truncate_and_a_write_past_the_new_size() {
    let cache = cache(0);
    let fb = FaultBacking::new();
    let m = cache
        .mapping(Arc::new(BlockOps::new(Arc::new(SlowResize(fb.clone(), AtomicBool::new(true))))), 4096)
        .expect("mapping");
    assert_eq!(write_at(&m, 0, &[1u8; 8192]), Ok(8192));
    let m2 = Arc::clone(&m);
    let t = std::thread::spawn(move || m2.truncate(100));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(write_at(&m, 5000, &[7u8; 10]), Ok(10));
    let mut c = m.wb_err_cursor();
    assert_eq!(m.fsync(0, u64::MAX, &mut c), Ok(()));
    assert_eq!(t.join().expect("truncate"), Ok(()));
    assert_eq!(m.fsync(0, u64::MAX, &mut c), Ok(()));
    let mut want = vec![1u8; 100];
    want.resize(5000, 0);
    want.extend_from_slice(&[7u8; 10]);
    assert_eq!(m.size(), 5010);
    assert!(common::read_all(&m) == want, "cache");
    assert!(fb.contents() == want, "the store has what the cache has");
}
