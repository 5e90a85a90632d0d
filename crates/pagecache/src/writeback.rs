//! Dirty memory: the throttle every write step passes, the flusher threads
//! that write dirty folios back, and the error sequence (`errseq`) that
//! reports writeback errors to `fsync`.
//!
//! ## Throttle
//! One counter, `charged` = dirty bytes + bytes reserved by write steps in
//! progress. A step is admitted while `charged < limit` and then reserves
//! one folio (`charged += folio size`); when its `write_end` dirties a
//! clean folio the reservation becomes that folio's dirty bytes, otherwise
//! it is returned. Hence dirty memory never exceeds the limit plus one
//! step. Writers that find `charged >= limit` queue in ticket order (FIFO:
//! none is starved) and are admitted as writeback completes; the first
//! waiter kicks the flushers.
//!
//! ## errseq
//! The kernel's rule: a mapping keeps (counter, errno, seen); each
//! [`WbErrCursor`] (one per "open file") samples it; `fsync` through a
//! cursor reports an error recorded since the cursor's sample exactly once
//! to that cursor, and every cursor sees it once.
//!
//! Locks: the throttle mutex and the flusher mutex, each taken alone.

use std::time::Duration;

use crate::sync::{lock, wait_timeout, AtomicBool, AtomicU64, Condvar, Mutex, Ordering};

struct Queue {
    next: u64,
    serving: u64,
}

/// The dirty-memory throttle shared by every mapping of a cache.
pub struct Throttle {
    limit: u64,
    charged: AtomicU64,
    dirty: AtomicU64,
    max_dirty: AtomicU64,
    waiting: AtomicU64,
    queue: Mutex<Queue>,
    cv: Condvar,
    pub(crate) kick: Kick,
}

impl Throttle {
    pub(crate) fn new(limit: u64) -> Throttle {
        Throttle {
            limit: limit.max(1),
            charged: AtomicU64::new(0),
            dirty: AtomicU64::new(0),
            max_dirty: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            queue: Mutex::new(Queue { next: 0, serving: 0 }),
            cv: Condvar::new(),
            kick: Kick::new(),
        }
    }

    /// The dirty limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Dirty bytes now.
    pub fn dirty(&self) -> u64 {
        self.dirty.load(Ordering::Acquire)
    }

    /// The most dirty bytes ever seen.
    pub fn max_dirty(&self) -> u64 {
        self.max_dirty.load(Ordering::Acquire)
    }

    fn try_reserve(&self, n: u64) -> bool {
        let mut cur = self.charged.load(Ordering::SeqCst);
        loop {
            if cur >= self.limit {
                return false;
            }
            match self.charged.compare_exchange_weak(cur, cur + n, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Block until `n` bytes may be reserved, then reserve them (FIFO among
    /// waiters). The waiter at the head of the queue, when it cannot be
    /// admitted, calls `help` (holding no lock of the throttle) before it
    /// sleeps: a writer writing dirty memory back itself when no flusher
    /// would. Call with no folio lock held.
    pub(crate) fn reserve(&self, n: u64, help: Option<&dyn Fn()>) {
        if self.waiting.load(Ordering::SeqCst) == 0 && self.try_reserve(n) {
            return;
        }
        let mut q = lock(&self.queue);
        let ticket = q.next;
        q.next += 1;
        self.waiting.fetch_add(1, Ordering::SeqCst);
        loop {
            if q.serving == ticket {
                let mut admitted = self.try_reserve(n);
                if !admitted {
                    if let Some(help) = help {
                        drop(q);
                        help();
                        q = lock(&self.queue);
                        admitted = self.try_reserve(n);
                    }
                }
                if admitted {
                    q.serving += 1;
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    self.cv.notify_all();
                    return;
                }
            }
            self.kick.kick();
            q = wait_timeout(&self.cv, q, Duration::from_millis(100));
        }
    }

    /// Return `n` reserved bytes.
    pub(crate) fn unreserve(&self, n: u64) {
        self.charged.fetch_sub(n, Ordering::SeqCst);
        self.wake();
    }

    /// A clean folio of `n` bytes became dirty: consume `reservation`
    /// bytes of the step's reservation (0 if the dirtying comes from
    /// elsewhere: then it is charged now, unthrottled).
    pub(crate) fn dirtied(&self, n: u64, reservation: u64) {
        if reservation < n {
            self.charged.fetch_add(n - reservation, Ordering::SeqCst);
        }
        let d = self.dirty.fetch_add(n, Ordering::SeqCst) + n;
        self.max_dirty.fetch_max(d, Ordering::AcqRel);
        if d > self.limit / 2 {
            self.kick.kick();
        }
    }

    /// `n` dirty bytes were cleaned (written back, truncated, invalidated).
    pub(crate) fn cleaned(&self, n: u64) {
        self.dirty.fetch_sub(n, Ordering::SeqCst);
        self.charged.fetch_sub(n, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _q = lock(&self.queue);
            self.cv.notify_all();
        }
    }
}

/// Wakes the flusher threads.
pub(crate) struct Kick {
    flag: AtomicBool,
    m: Mutex<()>,
    cv: Condvar,
}

impl Kick {
    fn new() -> Kick {
        Kick { flag: AtomicBool::new(false), m: Mutex::new(()), cv: Condvar::new() }
    }

    pub(crate) fn kick(&self) {
        if !self.flag.swap(true, Ordering::SeqCst) {
            let _g = lock(&self.m);
            self.cv.notify_all();
        }
    }

    /// Sleep until kicked or `timeout`; clears the kick.
    pub(crate) fn wait(&self, timeout: Duration) {
        let g = lock(&self.m);
        if !self.flag.load(Ordering::SeqCst) {
            drop(wait_timeout(&self.cv, g, timeout));
        }
        self.flag.store(false, Ordering::SeqCst);
    }

    pub(crate) fn wake_all(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _g = lock(&self.m);
        self.cv.notify_all();
    }
}

/// A mapping's writeback error sequence.
pub struct ErrSeq {
    /// counter << 16 | seen << 15 | errno (15 bits).
    word: AtomicU64,
}

const SEEN: u64 = 1 << 15;
const ERRNO_MASK: u64 = SEEN - 1;

impl ErrSeq {
    pub(crate) fn new() -> ErrSeq {
        ErrSeq { word: AtomicU64::new(0) }
    }

    /// Record a writeback error.
    pub(crate) fn set(&self, errno: i32) {
        let e = (errno.clamp(1, ERRNO_MASK as i32)) as u64;
        let mut cur = self.word.load(Ordering::SeqCst);
        loop {
            let counter = (cur >> 16) + 1;
            let new = (counter << 16) | e;
            match self.word.compare_exchange_weak(cur, new, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// A cursor that will see errors recorded from now on (and one
    /// recorded before that nobody has seen yet, as Linux does).
    pub fn cursor(&self) -> WbErrCursor {
        let cur = self.word.load(Ordering::SeqCst);
        let since = if cur & SEEN == 0 && cur & ERRNO_MASK != 0 { 0 } else { cur & !SEEN };
        WbErrCursor { since }
    }

    /// The errno recorded since `c`'s sample, once; advances `c`.
    pub(crate) fn check_and_advance(&self, c: &mut WbErrCursor) -> Result<(), i32> {
        let cur = self.word.load(Ordering::SeqCst);
        if cur & !SEEN == c.since {
            return Ok(());
        }
        // Mark exactly the value reported as seen: an error recorded since
        // the load is a new, unseen one (a blind fetch_or would mark it
        // seen and hide it from cursors sampled afterwards).
        if cur & SEEN == 0 {
            let _ = self.word.compare_exchange(cur, cur | SEEN, Ordering::SeqCst, Ordering::SeqCst);
        }
        c.since = cur & !SEEN;
        Err((cur & ERRNO_MASK) as i32)
    }
}

/// One opener's view of a mapping's writeback errors (`file->f_wb_err`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WbErrCursor {
    since: u64,
}

/// How often an idle flusher looks for old dirty data.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
