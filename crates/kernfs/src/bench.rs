//! In-process figures for `umd bench kernfs`: `show_ns`, `store_prealloc_ns`
//! and `store_prealloc_allocs` (see `shared/docs/benchmarks.md`).
//!
//! The caller passes an allocation counter (its `#[global_allocator]` is the
//! only thing that can count), read before and after the measured stores.
//! Runs single-threaded on the calling thread, in well under a second in a
//! release build.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::{Attr, AttrOps, Errno, Kernfs, OpenFlags, ShowBuf};

/// Stores over which allocations are counted (the figure is "per 10,000").
pub const STORES_COUNTED: u64 = 10_000;

/// The figures of [`run_inprocess`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InprocessFigures {
    /// `OpenFile::read` at offset 0 of a small attribute (`show` of
    /// `"clean\n"`), ns per read.
    pub show_ns: f64,
    /// `OpenFile::write` of `"active\n"` to a prealloc attribute, ns per
    /// write.
    pub store_prealloc_ns: f64,
    /// Heap allocations over [`STORES_COUNTED`] prealloc writes (target 0).
    pub store_prealloc_allocs: u64,
    /// Heap allocations over [`STORES_COUNTED`] offset-0 reads (target 0).
    pub show_allocs: u64,
    /// `Node::notify` with one file open and nobody polling, ns per call.
    pub notify_ns: f64,
}

/// An md-like `array_state`: shows a word, stores one of a few words.
struct ArrayState {
    state: AtomicU32,
}

const WORDS: [&[u8]; 3] = [b"clean", b"active", b"write-pending"];

impl AttrOps for ArrayState {
    fn show(&self, out: &mut ShowBuf) -> Result<(), Errno> {
        let w = WORDS.get(self.state.load(Ordering::Relaxed) as usize).copied().unwrap_or(b"?");
        out.push_bytes(w)?;
        out.push_bytes(b"\n")
    }

    fn store(&self, data: &[u8]) -> Result<usize, Errno> {
        let word = data.strip_suffix(b"\n").unwrap_or(data);
        let i = WORDS.iter().position(|w| *w == word).ok_or(libc::EINVAL)?;
        self.state.store(i as u32, Ordering::Relaxed);
        Ok(data.len())
    }
}

/// Times `iters` calls of `op` in 5 rounds; returns the best round's ns/op.
fn time(iters: u32, mut op: impl FnMut()) -> f64 {
    let per_round = (iters / 5).max(1);
    for _ in 0..per_round.min(10_000) {
        op();
    }
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..per_round {
            op();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(per_round));
    }
    best
}

/// Runs the in-process measurements with the default iteration count
/// (about 0.1 s in a release build). `count_allocs` returns a monotonic
/// count of heap allocations (of the calling thread or the process). Call
/// from an ordinary thread holding no kernfs lock; builds and destroys its
/// own tree; allocates outside the counted loops.
pub fn run_inprocess(count_allocs: &dyn Fn() -> u64) -> InprocessFigures {
    run_inprocess_iters(count_allocs, 500_000)
}

/// [`run_inprocess`] with `iters` timed operations per figure. Same
/// context.
pub fn run_inprocess_iters(count_allocs: &dyn Fn() -> u64, iters: u32) -> InprocessFigures {
    let fs = Kernfs::new();
    let ops = Arc::new(ArrayState { state: AtomicU32::new(0) });
    let md = fs.create_dir(&fs.root(), "md", 0o755).expect("kernfs bench: create md/");
    let show_node = fs
        .create_attr(&md, "array_state", 0o644, Attr { notify: true, ..Attr::new(ops.clone()) })
        .expect("kernfs bench: create md/array_state");
    let store_node = fs
        .create_attr(&md, "array_state_prealloc", 0o644, Attr { prealloc: true, ..Attr::new(ops) })
        .expect("kernfs bench: create md/array_state_prealloc");
    fs.activate(&md);
    let reader = show_node.open(OpenFlags::RDONLY).expect("kernfs bench: open for read");
    let writer = store_node.open(OpenFlags::WRONLY).expect("kernfs bench: open for write");

    let mut buf = [0u8; 64];
    let show_ns = time(iters, || {
        let n = reader.read(0, black_box(&mut buf)).unwrap_or(0);
        black_box(n);
    });
    let store_prealloc_ns = time(iters, || {
        let n = writer.write(0, black_box(b"clean\n")).unwrap_or(0);
        black_box(n);
    });
    let notify_ns = time(iters, || show_node.notify());

    let before = count_allocs();
    for _ in 0..STORES_COUNTED {
        black_box(writer.write(0, black_box(b"active\n")).ok());
    }
    let store_prealloc_allocs = count_allocs().saturating_sub(before);

    let before = count_allocs();
    for _ in 0..STORES_COUNTED {
        black_box(reader.read(0, &mut buf).ok());
    }
    let show_allocs = count_allocs().saturating_sub(before);

    InprocessFigures { show_ns, store_prealloc_ns, store_prealloc_allocs, show_allocs, notify_ns }
}
