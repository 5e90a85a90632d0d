//! Concurrency models under shuttle (the crate's unit-test build maps every
//! lock, condvar and atomic to shuttle's, see `sync.rs`): the real copy
//! loop, folio locks and throttle, run under shuttle's random and PCT
//! schedulers. A deadlock (every thread blocked) fails the model.
//!
//! * two crossed copies over two folios (A→B while B→A), in-memory and
//!   block-backed;
//! * a write whose source is the folio being written, racing a copy into
//!   that folio;
//! * writers against a tiny dirty limit with writeback by `fsync` from a
//!   third thread (the throttle's queue must always be served).

use std::sync::Arc;

use shuttle::thread;

use crate::mapping::{CacheConfig, PageCache};
use crate::ops::{Backing, BlockOps, Errno, MemOps};
use crate::write::{copy_range, write_at};

const ITERATIONS: usize = 300;

fn check(f: impl Fn() + Send + Sync + 'static) {
    let f = Arc::new(f);
    let g = Arc::clone(&f);
    shuttle::check_random(move || f(), ITERATIONS);
    shuttle::check_pct(move || g(), ITERATIONS, 3);
}

/// A store in memory (std mutex: held only across non-yielding code).
struct MemStore(std::sync::Mutex<Vec<u8>>);

impl Backing for MemStore {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let v = self.0.lock().map_err(|_| libc::EIO)?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = v.get(pos as usize + i).copied().unwrap_or(0);
        }
        Ok(())
    }
    fn write_at(&self, pos: u64, buf: &[u8]) -> Result<(), Errno> {
        let mut v = self.0.lock().map_err(|_| libc::EIO)?;
        let end = pos as usize + buf.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[pos as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), Errno> {
        Ok(())
    }
    fn set_size(&self, size: u64) -> Result<(), Errno> {
        self.0.lock().map_err(|_| libc::EIO)?.resize(size as usize, 0);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.lock().map(|v| v.len() as u64).unwrap_or(0)
    }
}

fn cache(dirty_limit: u64) -> PageCache {
    PageCache::new(CacheConfig { memory_limit: 1 << 20, dirty_limit, flushers: 0 })
}

fn crossed(block: bool) {
    let cache = cache(1 << 20);
    let ops: Arc<dyn crate::AddressSpaceOps> = if block {
        Arc::new(BlockOps::new(Arc::new(MemStore(std::sync::Mutex::new(Vec::new())))))
    } else {
        Arc::new(MemOps)
    };
    let m = cache.mapping(ops, 4096).expect("mapping");
    let a = vec![0xaa_u8; 4096];
    let b = vec![0xbb_u8; 4096];
    assert_eq!(write_at(&m, 0, &a), Ok(4096));
    assert_eq!(write_at(&m, 4096, &b), Ok(4096));
    let m1 = Arc::clone(&m);
    let t = thread::spawn(move || copy_range(&m1, 0, &m1, 4096, 4096));
    let r2 = copy_range(&m, 4096, &m, 0, 4096);
    let r1 = t.join().expect("thread");
    assert_eq!((r1, r2), (Ok(4096), Ok(4096)));
    // Each folio holds one value throughout, or a mix of the two: never
    // anything else.
    let mut all = vec![0u8; 8192];
    assert_eq!(m.read(0, &mut all), Ok(8192));
    assert!(all.iter().all(|&x| x == 0xaa || x == 0xbb));
}

#[test]
fn crossed_copies_in_memory_never_deadlock() {
    check(|| crossed(false));
}

#[test]
fn crossed_copies_block_backed_never_deadlock() {
    check(|| crossed(true));
}

#[test]
fn write_sourced_from_its_own_folio() {
    check(|| {
        let cache = cache(1 << 20);
        let m = cache.mapping(Arc::new(MemOps), 4096).expect("mapping");
        let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        assert_eq!(write_at(&m, 0, &data), Ok(8192));
        let m1 = Arc::clone(&m);
        // Shift a range inside folio 0 onto itself; meanwhile copy folio 1
        // over folio 0's tail.
        let t = thread::spawn(move || copy_range(&m1, 0, &m1, 100, 3000));
        let r = copy_range(&m, 4096, &m, 3500, 500);
        assert_eq!(t.join().expect("thread"), Ok(3000));
        assert_eq!(r, Ok(500));
    });
}

#[test]
fn throttled_writers_are_all_served() {
    check(|| {
        // Limit of one folio: every writer waits for writeback by fsync.
        let cache = Arc::new(cache(4096));
        let store = Arc::new(MemStore(std::sync::Mutex::new(Vec::new())));
        let m = cache.mapping(Arc::new(BlockOps::new(store)), 4096).expect("mapping");
        let mut ts = Vec::new();
        for w in 0..2u8 {
            let m = Arc::clone(&m);
            ts.push(thread::spawn(move || {
                for i in 0..2u64 {
                    assert_eq!(write_at(&m, (u64::from(w) * 2 + i) * 4096, &[w + 1; 4096]), Ok(4096));
                }
            }));
        }
        let m2 = Arc::clone(&m);
        let done = Arc::new(crate::sync::AtomicBool::new(false));
        let done2 = Arc::clone(&done);
        let syncer = thread::spawn(move || {
            let mut c = m2.wb_err_cursor();
            while !done2.load(crate::sync::Ordering::SeqCst) {
                m2.fsync(0, u64::MAX, &mut c).expect("fsync");
                thread::yield_now();
            }
        });
        for t in ts {
            t.join().expect("writer");
        }
        done.store(true, crate::sync::Ordering::SeqCst);
        let mut c = m.wb_err_cursor();
        m.fsync(0, u64::MAX, &mut c).expect("fsync");
        syncer.join().expect("syncer");
        assert!(cache.throttle().max_dirty() <= 4096 + 4096);
    });
}
