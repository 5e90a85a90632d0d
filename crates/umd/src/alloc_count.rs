//! A global allocator that counts allocations (and forwards to the system
//! allocator), so benchmarks can report allocations on paths that must not
//! allocate. One relaxed atomic increment per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Allocations (alloc, alloc_zeroed, realloc) since start.
static ALLOCS: AtomicU64 = AtomicU64::new(0);

/// Allocations made by guarded threads (see [`guard_this_thread`]).
static GUARDED_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread is under the allocation guard; `REPORTING`
    /// while it prints the backtrace of its first violation.
    static GUARDED: Cell<u8> = const { Cell::new(OFF) };
}

const OFF: u8 = 0;
const ON: u8 = 1;
const REPORTING: u8 = 2;

/// Puts the calling thread under the allocation guard: from now on each of
/// its allocations is counted in [`guarded_allocations`], and the first
/// one prints its backtrace to stderr (a violation of an allocation-free
/// path: the tests fail on the count, the log shows where).
pub fn guard_this_thread() {
    GUARDED.with(|g| g.set(ON));
}

/// Allocations made by guarded threads so far.
pub fn guarded_allocations() -> u64 {
    GUARDED_ALLOCS.load(Ordering::Relaxed)
}

/// Counts an allocation of a guarded thread; reports the first one.
fn on_alloc() {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    // `try_with`: the thread-local may be gone while a thread exits.
    let _ = GUARDED.try_with(|g| {
        if g.get() == ON {
            let first = GUARDED_ALLOCS.fetch_add(1, Ordering::Relaxed) == 0;
            if first {
                // Allocating here is fine: the guard is off meanwhile.
                g.set(REPORTING);
                let bt = std::backtrace::Backtrace::force_capture();
                eprintln!("umd: allocation on an allocation-free thread:\n{bt}");
                g.set(ON);
            }
        }
    });
}

/// The counting allocator.
pub struct Counting;

// SAFETY: every method forwards to `System` with the same arguments and
// contract; the counter is a static atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        on_alloc();
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        on_alloc();
        // SAFETY: the caller upholds GlobalAlloc::alloc_zeroed's contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        on_alloc();
        // SAFETY: the caller upholds GlobalAlloc::realloc's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds GlobalAlloc::dealloc's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations so far, process-wide.
pub fn allocations() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_the_guarded_thread_only() {
        let before = guarded_allocations();
        let v: Vec<u8> = Vec::with_capacity(64);
        std::hint::black_box(&v);
        assert_eq!(guarded_allocations(), before, "an unguarded thread was counted");
        std::thread::spawn(|| {
            guard_this_thread();
            let v = vec![1u8; 100];
            std::hint::black_box(&v);
        })
        .join()
        .expect("guarded thread");
        assert!(guarded_allocations() > before, "the guarded thread's allocation was not counted");
    }
}
