//! The persistent I/O descriptor: seed 002's cached `struct dio`, per open
//! member.
//!
//! Every engine I/O needs a control block ([`Dio`]): what is being done,
//! where, how far it got, and its result. Each [`Member`](crate::Member)
//! keeps one preallocated `Dio` in a lock-free slot. An I/O takes it with a
//! compare-and-swap (a *hit*) and gives it back when done. Only when the
//! slot is empty, because another I/O on the same member holds it, is a
//! `Dio` allocated (a *miss*), and that one is freed after its I/O. So a
//! member with at most one I/O in flight at a time allocates nothing; with
//! more, allocations equal the misses counted. The slot's `Dio` is freed
//! when the member is closed, never leaked (the slot owns it while no I/O
//! does, an I/O's [`DioGuard`] while one does).
//!
//! Lock-free; no lock order.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// What an I/O does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OpKind {
    /// Read from the member into the buffer.
    #[default]
    Read,
    /// Write the buffer to the member.
    Write,
}

/// The control block of one I/O in flight.
#[derive(Debug, Default)]
pub struct Dio {
    pub kind: OpKind,
    /// Byte offset on the member where the I/O started.
    pub offset: u64,
    /// Total bytes asked for.
    pub len: usize,
    /// Bytes completed so far (a short transfer is resumed from here).
    pub done: usize,
    /// Buffer address (for resuming).
    pub addr: usize,
    /// Registered buffer index, for fixed-buffer engines.
    pub buf_index: u16,
    /// The caller's tag, returned with the completion.
    pub tag: u64,
    /// 0, or the errno the I/O failed with.
    pub error: i32,
}

impl Dio {
    /// The descriptor of `op`, nothing done yet.
    pub(crate) fn for_op(op: &crate::engine::Op) -> Dio {
        Dio {
            kind: op.kind,
            offset: op.offset,
            len: op.len,
            done: 0,
            addr: op.buf.as_ptr() as usize + op.start,
            buf_index: op.buf.index(),
            tag: op.tag,
            error: 0,
        }
    }
}

/// One member's slot for its persistent descriptor, with hit/miss counters.
pub struct DioSlot {
    slot: AtomicPtr<Dio>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl DioSlot {
    /// A slot holding a freshly allocated descriptor (allocated here, at
    /// member open).
    pub fn new() -> Self {
        DioSlot {
            slot: AtomicPtr::new(Box::into_raw(Box::default())),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Take the slot's descriptor (compare-and-swap to empty), or allocate
    /// one if another I/O holds it. Allocation-free on a hit.
    pub fn take(&self) -> DioGuard<'_> {
        let p = self.slot.swap(ptr::null_mut(), Ordering::Acquire);
        if p.is_null() {
            self.misses.fetch_add(1, Ordering::Relaxed);
            DioGuard { slot: self, dio: Box::into_raw(Box::default()), persistent: false }
        } else {
            self.hits.fetch_add(1, Ordering::Relaxed);
            DioGuard { slot: self, dio: p, persistent: true }
        }
    }

    /// (hits, misses).
    pub fn stats(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }
}

impl Default for DioSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DioSlot {
    fn drop(&mut self) {
        let p = *self.slot.get_mut();
        if !p.is_null() {
            // SAFETY: the slot owns a descriptor it holds: it came from
            // Box::into_raw and no guard refers to it (guards borrow the
            // slot, so none outlives it).
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// A descriptor held by one I/O. Dropping it gives the slot's own
/// descriptor back to the slot and frees an allocated one.
pub struct DioGuard<'a> {
    slot: &'a DioSlot,
    dio: *mut Dio,
    persistent: bool,
}

// SAFETY: the guard owns its descriptor exclusively until dropped.
unsafe impl Send for DioGuard<'_> {}

impl DioGuard<'_> {
    /// Whether this is the member's persistent descriptor (a hit).
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }
}

impl std::ops::Deref for DioGuard<'_> {
    type Target = Dio;
    fn deref(&self) -> &Dio {
        // SAFETY: `dio` is a live descriptor owned by this guard.
        unsafe { &*self.dio }
    }
}

impl std::ops::DerefMut for DioGuard<'_> {
    fn deref_mut(&mut self) -> &mut Dio {
        // SAFETY: `dio` is a live descriptor owned exclusively by this guard.
        unsafe { &mut *self.dio }
    }
}

impl Drop for DioGuard<'_> {
    fn drop(&mut self) {
        if self.persistent {
            // SAFETY: as in deref_mut.
            unsafe { *self.dio = Dio::default() };
            // Only the holder of the persistent descriptor returns it, and
            // the slot is empty while it is held.
            let prev = self.slot.slot.swap(self.dio, Ordering::Release);
            debug_assert!(prev.is_null(), "persistent descriptor slot was refilled while held");
        } else {
            // SAFETY: allocated by take() with Box::into_raw, owned by us.
            drop(unsafe { Box::from_raw(self.dio) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_then_miss_while_held_then_hit_again() {
        let s = DioSlot::new();
        {
            let mut a = s.take();
            assert!(a.is_persistent());
            a.offset = 4096;
            let b = s.take();
            assert!(!b.is_persistent());
            assert_eq!(s.stats(), (1, 1));
        }
        let c = s.take();
        assert!(c.is_persistent());
        assert_eq!(c.offset, 0, "a returned descriptor is reset");
        assert_eq!(s.stats(), (2, 1));
    }
}
