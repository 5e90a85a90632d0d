//! The WRITE path of a prealloc attribute allocates nothing: from the
//! worker's read of the request to its reply (and the notifier's wakeup
//! that the store's notify causes), zero heap allocations.
//!
//! This binary installs a counting global allocator that, while armed,
//! counts every allocation of every thread of the process. During the
//! measured loop the only threads that run are the FUSE workers, the
//! notifier, and the test thread itself, which only calls `libc::pwrite`
//! on a raw descriptor with a static buffer (the harness threads are
//! blocked in channel receives armed before the window opens). So the
//! count is the allocations of the server's request path, which must be 0.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicU64 = AtomicU64::new(0);
/// Size of the last allocation counted (a hint when the test fails).
static LAST_SIZE: AtomicUsize = AtomicUsize::new(0);

#[inline]
fn count(layout: Layout) {
    if ARMED.load(Ordering::Relaxed) {
        COUNT.fetch_add(1, Ordering::Relaxed);
        LAST_SIZE.store(layout.size(), Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the same arguments; the
// counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout);
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout);
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

const WRITES: usize = 1_000;
static CLEAN: &[u8] = b"clean\n";
static ACTIVE: &[u8] = b"active\n";

#[test]
fn prealloc_write_path_allocates_nothing() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        // Several workers: any of them may take a request, and each must
        // be allocation-free from its first WRITE on.
        let m = mount_on(&dir, Arc::new(PatternFile::new(MIB)), tree_options(&t.tree));
        let f = OpenOptions::new().write(true).open(dir.path.join("md/array_state")).expect("open");
        let fd = f.as_raw_fd();

        COUNT.store(0, Ordering::SeqCst);
        ARMED.store(true, Ordering::SeqCst);
        let mut failed = 0usize;
        for i in 0..WRITES {
            let w = if i % 2 == 0 { CLEAN } else { ACTIVE };
            // SAFETY: a valid descriptor and a static buffer of w.len() bytes.
            let n = unsafe { libc::pwrite(fd, w.as_ptr().cast(), w.len(), 0) };
            if n != w.len() as isize {
                failed += 1;
            }
        }
        ARMED.store(false, Ordering::SeqCst);
        let allocs = COUNT.load(Ordering::SeqCst);

        assert_eq!(failed, 0, "some writes failed");
        assert_eq!(t.array_state.get(), "active");
        assert_eq!(
            allocs,
            0,
            "{allocs} allocations during {WRITES} FUSE writes (last of {} bytes)",
            LAST_SIZE.load(Ordering::SeqCst)
        );
        drop(f);

        // Control: the same loop on a non-prealloc attribute allocates a
        // buffer per write (kernfs), which the counter must see: it does
        // count the worker threads.
        let g = OpenOptions::new().write(true).open(dir.path.join("md/bytes")).expect("open");
        let fd = g.as_raw_fd();
        COUNT.store(0, Ordering::SeqCst);
        ARMED.store(true, Ordering::SeqCst);
        for _ in 0..WRITES {
            // SAFETY: as above.
            let n = unsafe { libc::pwrite(fd, CLEAN.as_ptr().cast(), CLEAN.len(), 0) };
            if n != CLEAN.len() as isize {
                failed += 1;
            }
        }
        ARMED.store(false, Ordering::SeqCst);
        let control = COUNT.load(Ordering::SeqCst);
        assert_eq!(failed, 0, "some control writes failed");
        assert!(control >= WRITES as u64, "control loop counted only {control} allocations");
        drop(g);
        m.unmounter().unmount();
        m.wait().expect("wait");
    });
}
