//! Folios: one power-of-two run of a mapping's bytes, with the kernel's
//! state bits and a sleeping lock.
//!
//! State (one atomic word): `LOCKED`, `UPTODATE`, `DIRTY`, `WRITEBACK`,
//! and `WAITERS` (someone sleeps on the folio's wait queue). The lock is a
//! bit: [`Folio::trylock`] never blocks; [`Folio::lock`] sleeps on the
//! folio's own mutex/condvar pair while the bit is taken. A locked folio is
//! represented by a [`LockedFolio`] guard (unlocks on drop), which is what
//! `write_begin` returns and `write_end` consumes.
//!
//! Data access rules (what makes the `unsafe` below sound):
//! * the bytes are written only by the holder of the folio lock, and only
//!   while `WRITEBACK` is clear (writers wait for writeback: stable pages);
//! * they are read by the lock holder, or by writeback while `WRITEBACK`
//!   is set (no writer can run then; concurrent readers only read).

use std::sync::Arc;

use crate::sync::{lock, wait, AtomicU32, Condvar, Mutex, Ordering};

/// A folio's bytes: one zeroed, page-aligned allocation (whole pages and
/// cache lines per aligned write; direct-I/O ready).
struct FolioBuf {
    ptr: *mut u8,
    len: usize,
}

impl FolioBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        // Folio sizes are validated (4 KiB..=1 MiB) when a mapping is made.
        match std::alloc::Layout::from_size_align(len.max(1), crate::mapping::PAGE_SIZE) {
            Ok(l) => l,
            Err(_) => panic!("folio of {len} bytes is not a valid allocation"),
        }
    }

    fn new(len: usize) -> FolioBuf {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        FolioBuf { ptr, len }
    }
}

impl Drop for FolioBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this same layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.len)) };
    }
}

pub const LOCKED: u32 = 1;
pub const UPTODATE: u32 = 2;
pub const DIRTY: u32 = 4;
pub const WRITEBACK: u32 = 8;
const WAITERS: u32 = 16;

/// One folio.
pub struct Folio {
    index: u64,
    state: AtomicU32,
    /// `len` bytes, page aligned, owned (freed on drop).
    data: FolioBuf,
    wq_lock: Mutex<()>,
    wq: Condvar,
}

// SAFETY: the bytes behind `data` are accessed only under the rules in the
// module doc (the folio lock, or WRITEBACK for readers), which exclude a
// write racing with any other access.
unsafe impl Sync for Folio {}
// SAFETY: as above; the box is owned.
unsafe impl Send for Folio {}

impl Folio {
    /// A new, unlocked, not up-to-date folio of `size` zero bytes.
    pub(crate) fn new(index: u64, size: usize) -> Folio {
        Folio {
            index,
            state: AtomicU32::new(0),
            data: FolioBuf::new(size),
            wq_lock: Mutex::new(()),
            wq: Condvar::new(),
        }
    }

    /// Folio index in its mapping (byte position >> folio shift).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.data.len
    }

    /// The current state bits.
    pub fn state(&self) -> u32 {
        self.state.load(Ordering::Acquire)
    }

    pub fn is_uptodate(&self) -> bool {
        self.state() & UPTODATE != 0
    }
    pub fn is_dirty(&self) -> bool {
        self.state() & DIRTY != 0
    }
    pub fn is_locked(&self) -> bool {
        self.state() & LOCKED != 0
    }
    pub fn is_writeback(&self) -> bool {
        self.state() & WRITEBACK != 0
    }

    /// Take the lock if it is free; never blocks.
    pub fn trylock(self: &Arc<Self>) -> Option<LockedFolio> {
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            if cur & LOCKED != 0 {
                return None;
            }
            match self.state.compare_exchange_weak(cur, cur | LOCKED, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(LockedFolio { folio: Arc::clone(self), reservation: None }),
                Err(now) => cur = now,
            }
        }
    }

    /// Take the lock, sleeping while another holds it. Call holding no
    /// folio lock (or only locks of folios ordered before this one).
    pub fn lock(self: &Arc<Self>) -> LockedFolio {
        loop {
            if let Some(l) = self.trylock() {
                return l;
            }
            let g = lock(&self.wq_lock);
            self.state.fetch_or(WAITERS, Ordering::SeqCst);
            if let Some(l) = self.trylock() {
                return l;
            }
            drop(wait(&self.wq, g));
        }
    }

    /// Sleep until `bit` is clear.
    fn wait_clear(&self, bit: u32) {
        loop {
            if self.state() & bit == 0 {
                return;
            }
            let g = lock(&self.wq_lock);
            self.state.fetch_or(WAITERS, Ordering::SeqCst);
            if self.state.load(Ordering::SeqCst) & bit == 0 {
                return;
            }
            drop(wait(&self.wq, g));
        }
    }

    /// Sleep until writeback of this folio ends.
    pub fn wait_writeback(&self) {
        self.wait_clear(WRITEBACK);
    }

    /// Clear `bits` and wake sleepers if any.
    fn clear_and_wake(&self, bits: u32) {
        let old = self.state.fetch_and(!(bits | WAITERS), Ordering::SeqCst);
        if old & WAITERS != 0 {
            let _g = lock(&self.wq_lock);
            self.wq.notify_all();
        }
    }

    /// End writeback (the folio need not be locked).
    pub(crate) fn end_writeback(&self) {
        self.clear_and_wake(WRITEBACK);
    }

    /// The bytes, for writeback: the caller set `WRITEBACK` on this folio
    /// and has not ended it.
    ///
    /// # Safety
    /// `WRITEBACK` must be set by the caller for the lifetime of the slice.
    pub(crate) unsafe fn data_under_writeback(&self) -> &[u8] {
        debug_assert!(self.is_writeback());
        // SAFETY: by the caller's contract no writer runs (writers wait for
        // writeback) while the slice lives.
        unsafe { std::slice::from_raw_parts(self.data.ptr, self.data.len) }
    }

    fn set_bits(&self, bits: u32) -> u32 {
        self.state.fetch_or(bits, Ordering::AcqRel)
    }

    fn clear_bits(&self, bits: u32) -> u32 {
        self.state.fetch_and(!bits, Ordering::AcqRel)
    }
}

impl std::fmt::Debug for Folio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Folio").field("index", &self.index).field("state", &self.state()).finish()
    }
}

/// A folio whose lock the holder owns; unlocks on drop. It may carry the
/// dirty-throttle reservation of the write step that locked it (see
/// [`crate::AddressSpace::folio_mark_dirty`]), released on drop if unused.
pub struct LockedFolio {
    folio: Arc<Folio>,
    /// A write step's reservation of dirty memory, if not yet consumed.
    pub(crate) reservation: Option<(Arc<crate::writeback::Throttle>, u64)>,
}

impl LockedFolio {
    /// The folio.
    pub fn folio(&self) -> &Arc<Folio> {
        &self.folio
    }

    /// The folio's bytes.
    pub fn data(&self) -> &[u8] {
        // SAFETY: we hold the lock: no writer but us.
        unsafe { std::slice::from_raw_parts(self.folio.data.ptr, self.folio.data.len) }
    }

    /// The folio's bytes, for writing. Waits for writeback first (stable
    /// pages: writeback reads the bytes without the lock).
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.folio.wait_writeback();
        // SAFETY: we hold the lock and writeback is not running: nothing
        // else touches the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.folio.data.ptr, self.folio.data.len) }
    }

    pub fn mark_uptodate(&self) {
        self.folio.set_bits(UPTODATE);
    }

    pub fn clear_uptodate(&self) {
        self.folio.clear_bits(UPTODATE);
    }

    /// Set DIRTY; whether it was clean before.
    pub(crate) fn set_dirty(&self) -> bool {
        // Already dirty (the common rewrite): no atomic read-modify-write.
        if self.folio.state() & DIRTY != 0 {
            return false;
        }
        self.folio.set_bits(DIRTY) & DIRTY == 0
    }

    /// Clear DIRTY; whether it was dirty.
    pub(crate) fn clear_dirty(&self) -> bool {
        self.folio.clear_bits(DIRTY) & DIRTY != 0
    }

    /// Start writeback: the caller clears DIRTY, sets WRITEBACK, then
    /// unlocks; writeback reads the bytes until `end_writeback`.
    pub(crate) fn start_writeback(&self) {
        self.folio.set_bits(WRITEBACK);
    }
}

impl Drop for LockedFolio {
    fn drop(&mut self) {
        self.folio.clear_and_wake(LOCKED);
        if let Some((t, n)) = self.reservation.take() {
            t.unreserve(n);
        }
    }
}

impl std::fmt::Debug for LockedFolio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedFolio").field("folio", &self.folio).finish()
    }
}
