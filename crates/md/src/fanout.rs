//! Member write fan-out: the member writes of one array write, issued in
//! parallel by the caller and a few persistent worker threads.
//!
//! ## Responsibility boundary
//! [`WritePool::write_all`] takes a batch of [`WriteJob`]s (slot, member
//! offset, bytes) and returns once every job has completed, with the first
//! error its failure callback did not absorb (a member write error fails
//! the member, see [`crate::array`]). It does not order jobs (md gives none among the
//! member writes of one request) and knows nothing of levels or parity.
//!
//! ## Synchronization model
//! One leaf mutex (the queue of batches) with two condition variables:
//! `work` wakes workers, `idle` wakes a caller waiting for workers to let
//! go of its batch. Jobs are claimed with an atomic counter, so the caller
//! and every worker that joined take jobs until none is left. A batch lives
//! on its caller's stack: the caller takes it off the queue (so no worker
//! can join it any more) and waits until every worker that joined has
//! left before returning; that is what makes the lifetime erasure below
//! sound.
//!
//! Jobs are claimed a slot at a time (a run of adjacent jobs for one slot)
//! and never cut smaller: two threads writing one member file contend for
//! its inode lock (measured: raid1 on tmpfs went from 0.53 to 0.8 of one
//! member's bandwidth when cutting jobs into 256 KiB pieces was dropped).
//!
//! ## Allocation
//! None per batch: the queue is preallocated to [`MAX_BATCHES`] entries and
//! a caller that finds it full runs its whole batch itself.

use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::array::Slots;

/// Batches that may wait for workers at once; more run on their callers.
pub const MAX_BATCHES: usize = 64;

/// Upper bound on worker threads per array.
pub const MAX_WORKERS: usize = 8;

/// How long an idle worker polls for the next batch before sleeping: a
/// sleeping thread takes tens of microseconds to wake on a small VM, as
/// long as a 1 MiB member write on tmpfs, so a worker that slept would
/// find the caller done with every job.
const SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// One member write.
#[derive(Clone, Copy, Debug)]
pub struct WriteJob<'a> {
    /// Member slot.
    pub slot: usize,
    /// Byte offset in the member's data area.
    pub offset: u64,
    /// The bytes.
    pub data: &'a [u8],
}

/// What a failed member write does: `true` if the failure was absorbed
/// (the member was failed, md's `md_error`), `false` if it fails the batch.
pub type FailFn<'a> = &'a (dyn Fn(usize, &io::Error) -> bool + Sync);

/// A batch on its caller's stack.
struct Batch<'a> {
    slots: &'a Slots,
    fail: FailFn<'a>,
    jobs: &'a [WriteJob<'a>],
    /// Next job to claim.
    next: AtomicUsize,
    /// Workers that joined and have not left (changed under the queue lock).
    users: AtomicUsize,
    /// The first error.
    err: Mutex<Option<io::Error>>,
}

impl Batch<'_> {
    /// Claims and runs jobs until none is left; returns how many it ran.
    /// A claim takes a whole run of adjacent jobs for one slot, so that two
    /// threads do not write one member file at once (they would queue on
    /// its inode lock).
    fn run(&self) -> u64 {
        let mut ran = 0;
        loop {
            let i = self.next.load(Ordering::Relaxed);
            let Some(first) = self.jobs.get(i) else { return ran };
            let mut end = i + 1;
            while self.jobs.get(end).is_some_and(|j| j.slot == first.slot) {
                end += 1;
            }
            if self.next.compare_exchange(i, end, Ordering::Relaxed, Ordering::Relaxed).is_err() {
                continue;
            }
            for job in &self.jobs[i..end] {
                ran += 1;
                let r =
                    catch_unwind(AssertUnwindSafe(|| self.slots.write_at(job.slot, job.offset, job.data)))
                        .unwrap_or_else(|_| Err(io::Error::other("member write panicked")));
                if let Err(e) = r {
                    if !(self.fail)(job.slot, &e) {
                        lock(&self.err).get_or_insert(e);
                    }
                }
            }
        }
    }

    fn exhausted(&self) -> bool {
        self.next.load(Ordering::Relaxed) >= self.jobs.len()
    }
}

/// A batch pointer with its lifetime erased (see the module doc).
#[derive(Clone, Copy, PartialEq, Eq)]
struct BatchPtr(*const Batch<'static>);

// SAFETY: a `Batch` is `Sync` (atomics, a mutex, shared references to
// `Sync` data); the pointer is only dereferenced while the batch's caller
// is blocked in `write_all`, which outlives every use (module doc).
unsafe impl Send for BatchPtr {}

struct Queue {
    batches: VecDeque<BatchPtr>,
    stop: bool,
}

struct Shared {
    /// Batches queued (mirrors `queue.batches.len()`, read without the lock
    /// by polling workers).
    pending: AtomicUsize,
    /// Jobs run by callers and by workers (statistics).
    caller_jobs: AtomicU64,
    worker_jobs: AtomicU64,
    queue: Mutex<Queue>,
    work: Condvar,
    idle: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The worker threads of one array.
pub struct WritePool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WritePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritePool").field("workers", &self.workers.len()).finish()
    }
}

impl WritePool {
    /// A pool with up to `workers` threads (capped at [`MAX_WORKERS`]); a
    /// thread that cannot be spawned is simply missing (its share of the
    /// work runs on callers).
    pub fn new(workers: usize) -> WritePool {
        let shared = Arc::new(Shared {
            pending: AtomicUsize::new(0),
            caller_jobs: AtomicU64::new(0),
            worker_jobs: AtomicU64::new(0),
            queue: Mutex::new(Queue { batches: VecDeque::with_capacity(MAX_BATCHES), stop: false }),
            work: Condvar::new(),
            idle: Condvar::new(),
        });
        let workers = (0..workers.min(MAX_WORKERS))
            .filter_map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new().name(format!("umd-md-write{i}")).spawn(move || worker(&s)).ok()
            })
            .collect();
        WritePool { shared, workers }
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Jobs run so far by callers and by workers.
    pub fn jobs_run(&self) -> (u64, u64) {
        (self.shared.caller_jobs.load(Ordering::Relaxed), self.shared.worker_jobs.load(Ordering::Relaxed))
    }

    /// Runs every job; returns when all have completed, with the first
    /// error that `fail` did not absorb (`fail` is called on the thread
    /// that ran the failed job). A single job, or a pool without workers, runs on the caller.
    /// Jobs for one slot should be adjacent (sorted by slot): a thread
    /// claims a slot's adjacent jobs together.
    ///
    /// Called under: nothing that the jobs' member writes could need (the
    /// stripe lock of the stripe being written is fine).
    pub fn write_all(&self, slots: &Slots, jobs: &[WriteJob<'_>], fail: FailFn<'_>) -> io::Result<()> {
        let batch = Batch {
            slots,
            fail,
            jobs,
            next: AtomicUsize::new(0),
            users: AtomicUsize::new(0),
            err: Mutex::new(None),
        };
        let ptr = BatchPtr((&batch as *const Batch<'_>).cast());
        let queued = jobs.len() > 1 && !self.workers.is_empty() && {
            let mut q = lock(&self.shared.queue);
            let room = q.batches.len() < MAX_BATCHES;
            if room {
                q.batches.push_back(ptr);
                self.shared.pending.store(q.batches.len(), Ordering::Release);
            }
            room
        };
        if queued {
            self.shared.work.notify_all();
        }
        let ran = batch.run();
        self.shared.caller_jobs.fetch_add(ran, Ordering::Relaxed);
        if queued {
            let mut q = lock(&self.shared.queue);
            q.batches.retain(|&b| b != ptr);
            self.shared.pending.store(q.batches.len(), Ordering::Release);
            while batch.users.load(Ordering::Relaxed) > 0 {
                q = self.shared.idle.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        }
        debug_assert!(batch.exhausted());
        match batch.err.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn worker(shared: &Shared) {
    let mut q = lock(&shared.queue);
    loop {
        if q.stop {
            return;
        }
        let Some(&ptr) = q.batches.front() else {
            drop(q);
            let t = std::time::Instant::now();
            while shared.pending.load(Ordering::Acquire) == 0 && t.elapsed() < SPIN {
                std::hint::spin_loop();
            }
            q = lock(&shared.queue);
            if q.batches.is_empty() && !q.stop {
                q = shared.work.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            continue;
        };
        // SAFETY: the batch is still queued, so its caller has not taken
        // it off and is not about to return; joining (users + 1) under the
        // queue lock keeps the caller waiting until we leave.
        let batch = unsafe { &*ptr.0 };
        batch.users.fetch_add(1, Ordering::Relaxed);
        drop(q);
        let ran = batch.run();
        shared.worker_jobs.fetch_add(ran, Ordering::Relaxed);
        q = lock(&shared.queue);
        if batch.exhausted() {
            q.batches.retain(|&b| b != ptr);
            shared.pending.store(q.batches.len(), Ordering::Release);
        }
        batch.users.fetch_sub(1, Ordering::Relaxed);
        shared.idle.notify_all();
    }
}

impl Drop for WritePool {
    fn drop(&mut self) {
        lock(&self.shared.queue).stop = true;
        self.shared.work.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
