//! Prints the in-process kernfs figures (`cargo run --release -p kernfs
//! --example bench`), with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the same arguments; the
// counter is a static atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let f = kernfs::bench::run_inprocess(&|| ALLOCS.load(Ordering::Relaxed));
    println!("show_ns               {:8.1}", f.show_ns);
    println!("store_prealloc_ns     {:8.1}", f.store_prealloc_ns);
    println!(
        "store_prealloc_allocs {:8}  (per {} stores)",
        f.store_prealloc_allocs,
        kernfs::bench::STORES_COUNTED
    );
    println!("show_allocs           {:8}  (per {} reads)", f.show_allocs, kernfs::bench::STORES_COUNTED);
    println!("notify_ns             {:8.1}", f.notify_ns);
}
