//! The cache and its address spaces.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};

use crate::folio::{Folio, LockedFolio};
use crate::ops::{AddressSpaceOps, Errno};
use crate::sync::{lock, read, write, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering, RwLock};
use crate::writeback::{ErrSeq, Throttle, WbErrCursor, FLUSH_INTERVAL};

/// The smallest folio and the unit of the copy loop's step halving.
pub const PAGE_SIZE: usize = 4096;
/// Largest folio.
pub const MAX_FOLIO: usize = 1 << 20;
const SHARDS: usize = 64;
/// One shard of a mapping's index → folio map.
type Shard = RwLock<HashMap<u64, Arc<Folio>>>;
/// Most folios one writeback call gets.
const WRITEBACK_BATCH: usize = 64;

/// Limits of a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Folios beyond this many bytes are evicted (clean, unlocked ones).
    pub memory_limit: u64,
    /// Dirty bytes at which writers are throttled (flushers start at half).
    pub dirty_limit: u64,
    /// Background flusher threads (0: writeback only by `fsync`/`sync`).
    pub flushers: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { memory_limit: 1 << 30, dirty_limit: 64 << 20, flushers: 1 }
    }
}

pub(crate) struct CacheShared {
    pub(crate) cfg: CacheConfig,
    pub(crate) throttle: Arc<Throttle>,
    cached: AtomicU64,
    mappings: Mutex<Vec<Weak<AddressSpace>>>,
    next_id: AtomicU64,
    stop: AtomicBool,
    /// Flusher threads running (none: writers past the dirty limit write
    /// back themselves).
    flushers_running: AtomicUsize,
}

impl CacheShared {
    /// Reserve one write step's dirty memory (see [`Throttle`]). While no
    /// flusher thread runs (`flushers: 0`, failed spawns, or the cache
    /// dropped under a waiting writer), the writer at the head of the
    /// throttle's queue writes every mapping back itself: otherwise nothing
    /// would ever clean what it waits for. Call with no folio lock held.
    pub(crate) fn reserve_step(self: &Arc<Self>, n: u64) {
        let help = || {
            if self.flushers_running.load(Ordering::SeqCst) == 0 {
                for m in live_mappings(self) {
                    let _ = m.writeback_range(0, u64::MAX, false);
                }
            }
        };
        self.throttle.reserve(n, Some(&help));
    }
}

/// A page cache: limits, the dirty throttle and the flusher threads shared
/// by its address spaces. Dropping it stops the flushers (after a final
/// writeback of everything dirty).
pub struct PageCache {
    shared: Arc<CacheShared>,
    flushers: Vec<std::thread::JoinHandle<()>>,
}

impl PageCache {
    /// A cache with `cfg`'s limits; starts its flusher threads.
    pub fn new(cfg: CacheConfig) -> PageCache {
        let shared = Arc::new(CacheShared {
            cfg,
            throttle: Arc::new(Throttle::new(cfg.dirty_limit)),
            cached: AtomicU64::new(0),
            mappings: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            flushers_running: AtomicUsize::new(0),
        });
        let mut flushers = Vec::new();
        for i in 0..cfg.flushers {
            let s = Arc::clone(&shared);
            shared.flushers_running.fetch_add(1, Ordering::SeqCst);
            match std::thread::Builder::new().name(format!("pagecache-flush-{i}")).spawn(move || flusher(s)) {
                Ok(h) => flushers.push(h),
                Err(_) => {
                    shared.flushers_running.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        PageCache { shared, flushers }
    }

    /// A new address space of folios of `folio_size` bytes (a power of two,
    /// 4 KiB..=1 MiB) served by `ops`.
    pub fn mapping(
        &self,
        ops: Arc<dyn AddressSpaceOps>,
        folio_size: usize,
    ) -> Result<Arc<AddressSpace>, Errno> {
        if !folio_size.is_power_of_two() || !(PAGE_SIZE..=MAX_FOLIO).contains(&folio_size) {
            return Err(libc::EINVAL);
        }
        let size = ops.initial_size();
        let m = Arc::new(AddressSpace {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            cache: Arc::clone(&self.shared),
            ops,
            shift: folio_size.trailing_zeros(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            size: AtomicU64::new(size),
            dirty: Mutex::new(BTreeSet::new()),
            wb_err: ErrSeq::new(),
            nr: AtomicUsize::new(0),
            wb_busy: Mutex::new(()),
            resize: RwLock::new(()),
        });
        lock(&self.shared.mappings).push(Arc::downgrade(&m));
        Ok(m)
    }

    /// The dirty throttle (for statistics).
    pub fn throttle(&self) -> &Throttle {
        &self.shared.throttle
    }

    /// Bytes of folios held by the cache.
    pub fn cached_bytes(&self) -> u64 {
        self.shared.cached.load(Ordering::Acquire)
    }

    /// Write back everything dirty in every mapping and wait for it.
    pub fn sync(&self) -> Result<(), Errno> {
        let mut first = Ok(());
        for m in live_mappings(&self.shared) {
            if let Err(e) = m.writeback_range(0, u64::MAX, true) {
                first = first.and(Err(e));
            }
        }
        first
    }
}

impl Drop for PageCache {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.throttle.kick.wake_all();
        for h in self.flushers.drain(..) {
            let _ = h.join();
        }
        // The final writeback the type's doc promises (errors are recorded
        // in each mapping's error sequence).
        let _ = self.sync();
    }
}

fn live_mappings(s: &CacheShared) -> Vec<Arc<AddressSpace>> {
    let mut v = lock(&s.mappings);
    v.retain(|w| w.strong_count() > 0);
    v.iter().filter_map(Weak::upgrade).collect()
}

/// A flusher thread: when dirty memory passes the background threshold (or
/// a writer waits, or every `FLUSH_INTERVAL`), write back dirty folios of
/// every mapping in ascending order.
fn flusher(s: Arc<CacheShared>) {
    /// Counts the thread out however it ends (writers then help).
    struct Running<'a>(&'a AtomicUsize);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _running = Running(&s.flushers_running);
    while !s.stop.load(Ordering::SeqCst) {
        s.throttle.kick.wait(FLUSH_INTERVAL);
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        for m in live_mappings(&s) {
            // Another flusher on this mapping: leave it to that one.
            let Ok(_busy) = m.wb_busy.try_lock() else { continue };
            let _ = m.writeback_range(0, u64::MAX, false);
        }
    }
}

/// An address space: the cached folios of one file or device, keyed by
/// folio index.
pub struct AddressSpace {
    id: u64,
    pub(crate) cache: Arc<CacheShared>,
    ops: Arc<dyn AddressSpaceOps>,
    shift: u32,
    shards: Box<[Shard]>,
    size: AtomicU64,
    /// Indexes of dirty folios (writeback walks them in ascending order).
    dirty: Mutex<BTreeSet<u64>>,
    wb_err: ErrSeq,
    nr: AtomicUsize,
    wb_busy: Mutex<()>,
    /// The kernel's `i_rwsem` for size changes: the write loop holds it
    /// shared, [`truncate`](Self::truncate) exclusively, so no write lands
    /// past the new size while truncate cuts the cache and then the store
    /// (the store's cut would drop it while the cache keeps it).
    pub(crate) resize: RwLock<()>,
}

impl Drop for AddressSpace {
    /// Nobody can reach the mapping any more, and flushers only see live
    /// ones: write its dirty folios back here, or their data would be lost
    /// and their dirty bytes stay charged to the throttle forever (a
    /// writeback error now is recorded where no cursor can see it). Don't
    /// drop the last reference while holding one of its folios locked.
    fn drop(&mut self) {
        let _ = self.writeback_range(0, u64::MAX, true);
    }
}

impl std::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpace")
            .field("id", &self.id)
            .field("folio_size", &self.folio_size())
            .field("size", &self.size())
            .field("folios", &self.nr.load(Ordering::Relaxed))
            .finish()
    }
}

impl AddressSpace {
    /// Unique id (orders mappings, identifies them).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The ops.
    pub fn ops(&self) -> &Arc<dyn AddressSpaceOps> {
        &self.ops
    }

    /// Folio size in bytes.
    pub fn folio_size(&self) -> usize {
        1 << self.shift
    }

    /// Folio index of byte `pos`.
    pub fn index_of(&self, pos: u64) -> u64 {
        pos >> self.shift
    }

    /// Size in bytes (`i_size`).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Grow the size to at least `end` (`write_end`'s `i_size_write`).
    pub fn extend_size(&self, end: u64) {
        // Rewrites inside the file (the common case) skip the atomic
        // read-modify-write.
        if self.size.load(Ordering::Acquire) < end {
            self.size.fetch_max(end, Ordering::AcqRel);
        }
    }

    /// Number of folios cached.
    pub fn nr_folios(&self) -> usize {
        self.nr.load(Ordering::Relaxed)
    }

    fn shard(&self, index: u64) -> &Shard {
        &self.shards[(index as usize) % SHARDS]
    }

    /// The cached folio at `index`, if any (one shard's read lock).
    pub fn lookup(&self, index: u64) -> Option<Arc<Folio>> {
        read(self.shard(index)).get(&index).cloned()
    }

    /// The folio at `index`, created (not up to date) if missing; may evict
    /// clean folios to stay under the memory limit.
    pub fn get_or_create(&self, index: u64) -> Arc<Folio> {
        if let Some(f) = self.lookup(index) {
            return f;
        }
        let fs = self.folio_size() as u64;
        if self.cache.cached.load(Ordering::Relaxed) + fs > self.cache.cfg.memory_limit {
            self.evict(fs);
        }
        let mut shard = write(self.shard(index));
        let f = shard.entry(index).or_insert_with(|| {
            self.nr.fetch_add(1, Ordering::Relaxed);
            self.cache.cached.fetch_add(fs, Ordering::Relaxed);
            Arc::new(Folio::new(index, fs as usize))
        });
        Arc::clone(f)
    }

    /// The folio at `index` (created if missing), locked and still in the
    /// mapping: a folio taken out (truncated) while we waited for its lock
    /// is let go and looked up again, as the kernel's `filemap_lock_folio`
    /// rechecks `folio->mapping`. Without this, a write could dirty a folio
    /// no longer in the mapping: its data never written back, its dirty
    /// bytes never uncharged. Call with no folio lock held.
    pub fn lock_folio(&self, index: u64) -> LockedFolio {
        loop {
            let f = self.get_or_create(index);
            let lf = f.lock();
            if self.is_mapped(&f) {
                return lf;
            }
        }
    }

    /// Whether `f` is the folio cached at its index (stable while `f` is
    /// locked: only a folio's lock holder or eviction of an unlocked,
    /// unreferenced folio takes it out).
    fn is_mapped(&self, f: &Arc<Folio>) -> bool {
        read(self.shard(f.index())).get(&f.index()).is_some_and(|g| Arc::ptr_eq(g, f))
    }

    /// Evict clean, unlocked, unreferenced folios (this mapping first, then
    /// the others) until `want` bytes are freed or none is left.
    fn evict(&self, want: u64) {
        let mut freed = self.evict_own(want);
        if freed < want {
            for m in live_mappings(&self.cache) {
                if m.id != self.id {
                    freed += m.evict_own(want - freed);
                    if freed >= want {
                        break;
                    }
                }
            }
        }
    }

    fn evict_own(&self, want: u64) -> u64 {
        let fs = self.folio_size() as u64;
        let mut freed = 0;
        for shard in self.shards.iter() {
            let mut s = write(shard);
            s.retain(|_, f| {
                // Clean and idle; up to date or not (a folio whose read
                // failed holds nothing), whatever a stale WAITERS bit says.
                let busy = crate::folio::LOCKED | crate::folio::DIRTY | crate::folio::WRITEBACK;
                let evictable = freed < want && Arc::strong_count(f) == 1 && f.state() & busy == 0;
                if evictable {
                    freed += fs;
                }
                !evictable
            });
            if freed >= want {
                break;
            }
        }
        let n = (freed / fs) as usize;
        self.nr.fetch_sub(n, Ordering::Relaxed);
        self.cache.cached.fetch_sub(freed, Ordering::Relaxed);
        freed
    }

    /// Mark a locked folio dirty (for `write_end`): record it for writeback
    /// and charge dirty memory, using the write step's reservation.
    pub fn folio_mark_dirty(&self, folio: &mut LockedFolio) {
        if !folio.set_dirty() {
            return;
        }
        if self.ops.accounts_dirty() {
            let n = self.folio_size() as u64;
            let r = match folio.reservation.take() {
                Some((t, r)) => {
                    if r > n {
                        t.unreserve(r - n);
                    }
                    r.min(n)
                }
                None => 0,
            };
            self.cache.throttle.dirtied(n, r);
            lock(&self.dirty).insert(folio.folio().index());
        }
    }

    /// Read `buf.len()` bytes at `pos` (fewer at the end of the mapping).
    pub fn read(&self, pos: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let size = self.size();
        if pos >= size {
            return Ok(0);
        }
        let len = buf.len().min((size - pos) as usize);
        let mut done = 0;
        while done < len {
            let p = pos + done as u64;
            let mut lf = self.lock_folio(self.index_of(p));
            if !lf.folio().is_uptodate() {
                if let Err(e) = self.ops.read_folio(self, &mut lf) {
                    return if done > 0 { Ok(done) } else { Err(e) };
                }
                lf.mark_uptodate();
            }
            let off = (p & (self.folio_size() as u64 - 1)) as usize;
            let n = (self.folio_size() - off).min(len - done);
            buf[done..done + n].copy_from_slice(&lf.data()[off..off + n]);
            done += n;
        }
        Ok(done)
    }

    /// A cursor for [`fsync`](Self::fsync) (`file->f_wb_err`): take one per
    /// opener.
    pub fn wb_err_cursor(&self) -> WbErrCursor {
        self.wb_err.cursor()
    }

    /// Record a writeback error (ops may call it; writeback does).
    pub fn set_wb_error(&self, errno: i32) {
        self.wb_err.set(errno);
    }

    /// Write back every folio dirty in `[start, end)` bytes, wait for all
    /// writeback there, flush the backing store, and report a writeback
    /// error recorded since `cursor` was sampled (once per cursor).
    pub fn fsync(&self, start: u64, end: u64, cursor: &mut WbErrCursor) -> Result<(), Errno> {
        let r = self.writeback_range(start, end, true);
        let flushed = if self.ops.accounts_dirty() { self.ops.flush(self) } else { Ok(()) };
        self.wb_err.check_and_advance(cursor)?;
        r.and(flushed)
    }

    /// Write back dirty folios with index in the byte range, ascending, in
    /// batches of contiguous folios; with `wait`, also wait for writeback
    /// already running there. Errors are recorded in the error sequence
    /// (the folio is then clean: its data is reported lost, never silently
    /// dropped) and the first is returned.
    pub(crate) fn writeback_range(&self, start: u64, end: u64, wait: bool) -> Result<(), Errno> {
        if !self.ops.accounts_dirty() {
            return Ok(());
        }
        let first = self.index_of(start);
        let last = if end == u64::MAX { u64::MAX } else { self.index_of(end.saturating_sub(1)) };
        if end <= start {
            return Ok(());
        }
        let mut result = Ok(());
        let mut next = first;
        let mut run: Vec<LockedFolio> = Vec::with_capacity(WRITEBACK_BATCH);
        loop {
            // The next batch of dirty indexes.
            let batch: Vec<u64> = {
                let d = lock(&self.dirty);
                d.range(next..=last).take(WRITEBACK_BATCH).copied().collect()
            };
            let Some(&last_taken) = batch.last() else { break };
            next = last_taken.saturating_add(1);
            for idx in batch {
                // No folio there (any more): whoever took it out took its
                // index out of the set too (truncate, under the folio
                // lock). Never remove it here: a new folio at `idx` may
                // have been dirtied since.
                let Some(f) = self.lookup(idx) else { continue };
                let lf = f.lock();
                if !self.is_mapped(&f) {
                    // Truncated while we waited: the index now belongs to
                    // another folio, if any.
                    continue;
                }
                if !f.is_dirty() {
                    lock(&self.dirty).remove(&idx);
                    continue;
                }
                f.wait_writeback();
                let contiguous = run.last().is_none_or(|p| p.folio().index() + 1 == idx);
                if !contiguous {
                    result = result.and(self.submit_run(&mut run));
                }
                lf.clear_dirty();
                lock(&self.dirty).remove(&idx);
                lf.start_writeback();
                run.push(lf);
            }
            result = result.and(self.submit_run(&mut run));
            // The range is done (also keeps `next..=last` a valid range:
            // `BTreeSet::range` panics when its start passes its end).
            if last_taken >= last {
                break;
            }
        }
        if wait {
            for shard in self.shards.iter() {
                let in_range: Vec<Arc<Folio>> = read(shard)
                    .iter()
                    .filter(|(i, _)| (first..=last).contains(*i))
                    .map(|(_, f)| Arc::clone(f))
                    .collect();
                for f in in_range {
                    f.wait_writeback();
                }
            }
        }
        result
    }

    /// Unlock the run's folios (they stay under writeback), write them,
    /// end writeback, account.
    fn submit_run(&self, run: &mut Vec<LockedFolio>) -> Result<(), Errno> {
        if run.is_empty() {
            return Ok(());
        }
        let folios: Vec<Arc<Folio>> = run.iter().map(|l| Arc::clone(l.folio())).collect();
        run.clear();
        let r = self.ops.writepages(self, &folios);
        let n = folios.len() as u64 * self.folio_size() as u64;
        for f in &folios {
            f.end_writeback();
        }
        self.cache.throttle.cleaned(n);
        if let Err(e) = r {
            self.wb_err.set(e);
        }
        r
    }

    /// Cut the mapping to `new_size` bytes: folios wholly past it are
    /// dropped (dirty data there is discarded, as truncate does), the tail
    /// of a partial last folio is zeroed, and the backing store is told.
    pub fn truncate(&self, new_size: u64) -> Result<(), Errno> {
        // No write runs meanwhile (see `resize`). Call holding no folio lock.
        let _resize = write(&self.resize);
        let fs = self.folio_size() as u64;
        let keep = new_size.div_ceil(fs);
        self.size.store(new_size, Ordering::Release);
        for shard in self.shards.iter() {
            let doomed: Vec<Arc<Folio>> =
                read(shard).iter().filter(|(i, _)| **i >= keep).map(|(_, f)| Arc::clone(f)).collect();
            for f in doomed {
                let lf = f.lock();
                if !self.is_mapped(&f) {
                    // Taken out meanwhile (a concurrent truncate): the
                    // index may hold a new folio that is not ours to touch.
                    continue;
                }
                f.wait_writeback();
                if lf.clear_dirty() && self.ops.accounts_dirty() {
                    self.cache.throttle.cleaned(fs);
                }
                lock(&self.dirty).remove(&f.index());
                lf.clear_uptodate();
                if write(shard).remove(&f.index()).is_some() {
                    self.nr.fetch_sub(1, Ordering::Relaxed);
                    self.cache.cached.fetch_sub(fs, Ordering::Relaxed);
                }
            }
        }
        if !new_size.is_multiple_of(fs) {
            if let Some(f) = self.lookup(new_size / fs) {
                let mut lf = f.lock();
                // (Not if a concurrent truncate took it out meanwhile.)
                if self.is_mapped(&f) {
                    let off = (new_size % fs) as usize;
                    lf.data_mut()[off..].fill(0);
                }
            }
        }
        self.ops.truncate(self, new_size)
    }

    /// Drop the clean, unlocked folios in `[start, end)` bytes (the backing
    /// store changed underneath); returns how many were busy (dirty,
    /// locked, under writeback) and kept.
    pub fn invalidate_range(&self, start: u64, end: u64) -> usize {
        if end <= start {
            return 0;
        }
        let (first, last) = (self.index_of(start), self.index_of(end - 1));
        let fs = self.folio_size() as u64;
        let mut busy = 0;
        for shard in self.shards.iter() {
            let mut s = write(shard);
            s.retain(|i, f| {
                if !(first..=last).contains(i) {
                    return true;
                }
                let st = f.state();
                if st & (crate::folio::DIRTY | crate::folio::LOCKED | crate::folio::WRITEBACK) != 0
                    || Arc::strong_count(f) > 1
                {
                    busy += 1;
                    return true;
                }
                self.nr.fetch_sub(1, Ordering::Relaxed);
                self.cache.cached.fetch_sub(fs, Ordering::Relaxed);
                false
            });
        }
        busy
    }
}
