//! Allocation counts on the hot paths, with a counting global allocator
//! (this binary's own; counts are per thread, so the test harness's other
//! threads cannot disturb them).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kernfs::{Attr, AttrOps, Errno, Kernfs, OpenFlags, ShowBuf};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: allocations during thread teardown are simply not counted.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: every method forwards to `System` with the same arguments; the
// counter is a const-initialized thread-local without destructor, which
// never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
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

struct State(AtomicU32);

impl AttrOps for State {
    fn show(&self, out: &mut ShowBuf) -> Result<(), Errno> {
        out.emit(format_args!("{}\n", self.0.load(Ordering::Relaxed)))
    }
    fn store(&self, data: &[u8]) -> Result<usize, Errno> {
        let v =
            data.iter().take_while(|b| b.is_ascii_digit()).fold(0u32, |v, b| v * 10 + u32::from(b - b'0'));
        self.0.store(v, Ordering::Relaxed);
        Ok(data.len())
    }
}

const N: u64 = 10_000;

#[test]
fn hot_paths_allocate_nothing() {
    let fs = Kernfs::new();
    let ops = Arc::new(State(AtomicU32::new(7)));
    let md = fs.create_dir(&fs.root(), "md", 0o755).unwrap();
    let pre =
        fs.create_attr(&md, "array_state", 0o644, Attr { prealloc: true, ..Attr::new(ops.clone()) }).unwrap();
    let awl = fs
        .create_attr(
            &md,
            "awl",
            0o644,
            Attr { prealloc: true, atomic_write_len: 16, ..Attr::new(ops.clone()) },
        )
        .unwrap();
    fs.activate(&md);
    let f = pre.open(OpenFlags::RDWR).unwrap();
    let g = awl.open(OpenFlags::WRONLY).unwrap();
    let mut buf = [0u8; 32];

    // Warm up: the thread's first RCU read section registers it with the
    // epoch collector (one allocation per thread, ever).
    f.write(0, b"1\n").unwrap();
    f.read(0, &mut buf).unwrap();
    pre.notify();

    let before = allocs();
    for i in 0..N {
        let data: &[u8] = if i % 2 == 0 { b"12\n" } else { b"345\n" };
        assert_eq!(f.write(0, data), Ok(data.len()));
        assert_eq!(g.write(0, data), Ok(data.len()));
    }
    assert_eq!(allocs() - before, 0, "prealloc stores allocated");

    let before = allocs();
    for _ in 0..N {
        assert_eq!(f.read(0, &mut buf), Ok(4));
    }
    assert_eq!(&buf[..4], b"345\n");
    assert_eq!(allocs() - before, 0, "offset-0 reads allocated");

    let before = allocs();
    for _ in 0..N {
        pre.notify();
    }
    assert_eq!(allocs() - before, 0, "notify allocated");

    let before = allocs();
    for _ in 0..N {
        assert_ne!(f.poll(), 0);
        assert_ne!(f.poll_wait(Duration::ZERO), 0);
        assert!(fs.lookup(&md, "array_state").is_some());
        assert!(fs.walk("md/awl").is_some());
        assert!(fs.node(pre.id()).is_some());
    }
    assert_eq!(allocs() - before, 0, "poll/lookup allocated");

    // The bench entry point reports the same.
    let figures = kernfs::bench::run_inprocess_iters(&allocs, 20_000);
    assert_eq!(figures.store_prealloc_allocs, 0);
    assert_eq!(figures.show_allocs, 0);
    assert!(figures.show_ns > 0.0 && figures.store_prealloc_ns > 0.0);
}
