//! The synchronization facade: every lock, atomic, futex and RCU operation of
//! this crate goes through this module.
//!
//! In ordinary builds it maps to `std`, raw `futex(2)` and `crossbeam-epoch`.
//! In the crate's own unit-test build (`cfg(test)`) it maps to `shuttle`'s
//! scheduler-controlled primitives, a futex emulated with a shuttle mutex and
//! condition variable, a chunked copy that yields to the scheduler, and a
//! *checking* RCU ([`rcu`]) that retires objects at the earliest moment the
//! RCU rules allow and fails the model on any later access. The concurrency
//! models in `models.rs` therefore drive the very code paths of `node.rs`,
//! `tree.rs` and `file.rs`.
//!
//! Lock poisoning is never a panic here: a poisoned lock is recovered (the
//! state every lock of this crate protects stays consistent across an
//! unwinding `AttrOps` callback, because each operation re-validates it).

use std::sync::PoisonError;
use std::time::{Duration, Instant};

#[cfg(not(test))]
mod imp {
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64};
    pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
}

#[cfg(test)]
mod imp {
    pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64};
    pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
}

pub(crate) use imp::*;
pub(crate) use std::sync::atomic::Ordering;

/// Locks `m`, recovering the guard if a previous holder panicked.
#[inline]
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `l`, recovering from poisoning.
#[inline]
pub(crate) fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `l`, recovering from poisoning.
#[inline]
pub(crate) fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv`, recovering from poisoning.
#[inline]
pub(crate) fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g).unwrap_or_else(PoisonError::into_inner)
}

/// Copies user data into a kernfs buffer (`copy_from_user`).
///
/// In the model build the copy is cut into small pieces with a scheduling
/// point between them, so that a model can observe two writers interleaving
/// inside one buffer if the locking ever allowed it.
#[inline]
pub(crate) fn copy_in(dst: &mut [u8], src: &[u8]) {
    #[cfg(not(test))]
    dst.copy_from_slice(src);
    #[cfg(test)]
    for (d, s) in dst.chunks_mut(4).zip(src.chunks(4)) {
        d.copy_from_slice(s);
        shuttle::thread::yield_now();
    }
}

/// A 32-bit event word that threads can sleep on (a futex), with a count of
/// sleepers so that [`WaitWord::bump`] makes no system call when nobody
/// waits.
///
/// Protocol (Dekker style, every access `SeqCst`): a waiter increments
/// `waiters`, then reads `word`; a bumper increments `word`, then reads
/// `waiters`. In the single total order of these operations either the waiter
/// sees the new word (and does not sleep) or the bumper sees the waiter (and
/// wakes it); the futex itself re-checks the word atomically against the
/// value the waiter last saw, closing the window between the check and the
/// sleep.
pub(crate) struct WaitWord {
    word: AtomicU32,
    waiters: AtomicU32,
    #[cfg(test)]
    park: (Mutex<()>, Condvar),
    /// Model build: set when the object holding this word passes its RCU
    /// grace period; every later use fails the model.
    #[cfg(test)]
    poisoned: std::sync::atomic::AtomicBool,
}

impl WaitWord {
    pub(crate) fn new(initial: u32) -> Self {
        WaitWord {
            word: AtomicU32::new(initial),
            waiters: AtomicU32::new(0),
            #[cfg(test)]
            park: (Mutex::new(()), Condvar::new()),
            #[cfg(test)]
            poisoned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Model build: marks the word dead (its owner was reclaimed).
    #[cfg(test)]
    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    #[inline(always)]
    fn assert_alive(&self) {
        #[cfg(test)]
        assert!(
            !self.poisoned.load(Ordering::SeqCst),
            "kernfs model: wait word used after its owner's RCU grace period"
        );
    }

    /// Current value. Lock-free, allocation-free.
    #[inline]
    pub(crate) fn load(&self) -> u32 {
        self.assert_alive();
        self.word.load(Ordering::SeqCst)
    }

    /// Increments the word and wakes every sleeper, if there is any.
    /// Lock-free and allocation-free; a `futex(FUTEX_WAKE)` system call only
    /// when a sleeper is registered.
    #[inline]
    pub(crate) fn bump(&self) {
        self.assert_alive();
        self.word.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.wake_all();
        }
    }

    /// Sleeps until `check(word)` returns `Some` (returned as `Ok`) or
    /// `deadline` passes (`Err` with the last value seen). `None` as the
    /// deadline waits forever. `check` is called with no lock held.
    pub(crate) fn wait_until<R>(
        &self,
        deadline: Option<Instant>,
        mut check: impl FnMut(u32) -> Option<R>,
    ) -> Result<R, u32> {
        struct Registered<'a>(&'a AtomicU32);
        impl Drop for Registered<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _registered = Registered(&self.waiters);
        loop {
            self.assert_alive();
            let seen = self.word.load(Ordering::SeqCst);
            if let Some(r) = check(seen) {
                return Ok(r);
            }
            let timeout = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(seen),
                },
            };
            self.sleep(seen, timeout);
        }
    }

    #[cfg(not(test))]
    fn sleep(&self, seen: u32, timeout: Option<Duration>) {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            // Always < 1e9, fits every c_long.
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `word` is a live, aligned u32 for the whole call (we hold
        // `&self`); FUTEX_WAIT only reads it and compares it with `seen`; the
        // timespec pointer is null or points at `ts`, alive across the call.
        // Every outcome (woken, EAGAIN, ETIMEDOUT, EINTR) is handled by the
        // caller's re-check loop, so the return value is not needed.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                seen,
                ts_ptr,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    #[cfg(not(test))]
    #[cold]
    fn wake_all(&self) {
        // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is live.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    /// Model futex: the compare-and-sleep is made atomic by `park`. Shuttle's
    /// condition variable never times out, so a lost wakeup is a deadlock the
    /// model reports.
    #[cfg(test)]
    fn sleep(&self, seen: u32, _timeout: Option<Duration>) {
        let g = lock(&self.park.0);
        if self.word.load(Ordering::SeqCst) == seen {
            drop(wait(&self.park.1, g));
        }
    }

    #[cfg(test)]
    fn wake_all(&self) {
        drop(lock(&self.park.0));
        self.park.1.notify_all();
    }
}

/// Read-copy-update for the open-node pointer: `crossbeam-epoch` in ordinary
/// builds, a checking model in the test build.
///
/// The rules the rest of the crate follows, and which both implementations
/// enforce or check:
/// * lockless readers access the object only inside a read section
///   ([`Domain::read`]), through [`RcuPtr::load`], whose result cannot
///   outlive the section;
/// * writers publish and retire only while holding the writers' lock (the
///   node's hashed open-file mutex);
/// * a retired object is freed after every read section that could have seen
///   it has ended (`Guard::defer_destroy`);
/// * [`RcuPtr::load_unguarded`] is for holders of the writers' lock and for
///   open files still linked on the object's list, which keeps it alive.
pub(crate) mod rcu {
    #[cfg(not(test))]
    pub(crate) use prod::*;

    #[cfg(test)]
    pub(crate) use model::*;

    #[cfg(not(test))]
    mod prod {
        use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};
        use std::marker::PhantomData;

        use super::super::Ordering;

        /// A reference obtained from an [`RcuPtr`].
        pub(crate) type RcuRef<'a, T> = &'a T;

        /// The reclamation domain: crossbeam's process-wide default collector.
        pub(crate) struct Domain<T>(PhantomData<fn(T)>);

        /// An RCU read section (a pinned epoch guard).
        pub(crate) struct ReadGuard<'d, T> {
            guard: Guard,
            _domain: PhantomData<&'d Domain<T>>,
        }

        impl<T> Domain<T> {
            pub(crate) fn new() -> Self {
                Domain(PhantomData)
            }

            /// Enters a read section. Lock-free; allocation-free once the
            /// calling thread has pinned before (its first pin registers the
            /// thread with the collector). Every 128th pin on a thread also
            /// frees garbage whose grace period has ended (deallocation only).
            #[inline]
            pub(crate) fn read(&self) -> ReadGuard<'_, T> {
                ReadGuard { guard: epoch::pin(), _domain: PhantomData }
            }
        }

        /// A pointer readable inside read sections without locks.
        pub(crate) struct RcuPtr<T> {
            ptr: Atomic<T>,
        }

        impl<T> RcuPtr<T> {
            pub(crate) fn null() -> Self {
                RcuPtr { ptr: Atomic::null() }
            }

            /// Lockless read inside a read section.
            #[inline]
            pub(crate) fn load<'a>(&'a self, g: &'a ReadGuard<'_, T>) -> Option<RcuRef<'a, T>> {
                let p = self.ptr.load(Ordering::Acquire, &g.guard);
                // SAFETY: `p` is null or was published by `publish` and is
                // freed only through `retire`, which unlinks it first and then
                // defers the destruction past every guard pinned at that time,
                // including `g`; the returned reference outlives neither `g`
                // nor this pointer (whose drop frees without deferring).
                unsafe { p.as_ref() }
            }

            /// Read without a read section.
            ///
            /// # Safety
            /// The caller must guarantee that the object currently published
            /// is not retired while the returned reference lives: it holds the
            /// writers' lock (and does not retire while using the
            /// reference), or it is an open file linked on the object's list
            /// (the object is retired only once that list is empty).
            #[inline]
            pub(crate) unsafe fn load_unguarded(&self) -> Option<RcuRef<'_, T>> {
                // SAFETY: the unprotected guard is only used to load; nothing
                // is deferred through it.
                let g = unsafe { epoch::unprotected() };
                let p = self.ptr.load(Ordering::Acquire, g);
                // SAFETY: liveness is the caller's guarantee (see above).
                unsafe { p.as_ref() }
            }

            /// Publishes `value`. Call with the writers' lock held.
            pub(crate) fn publish(&self, _domain: &Domain<T>, value: T) {
                let g = epoch::pin();
                let old = self.ptr.swap(Owned::new(value), Ordering::AcqRel, &g);
                debug_assert!(old.is_null(), "kernfs: open node published twice");
                if !old.is_null() {
                    // SAFETY: `old` is unlinked (swapped out) and freed after
                    // the grace period.
                    unsafe { g.defer_destroy(old) };
                }
            }

            /// Unlinks the published object and frees it after a grace
            /// period. Call with the writers' lock held. May allocate (it
            /// queues the object on the thread's garbage bag).
            pub(crate) fn retire(&self, _domain: &Domain<T>) {
                let g = epoch::pin();
                let old = self.ptr.swap(Shared::null(), Ordering::AcqRel, &g);
                if !old.is_null() {
                    // SAFETY: `old` is no longer reachable through this
                    // pointer, the only place readers find it; lockless
                    // readers that loaded it are pinned and the destruction
                    // waits for them; lock holders and linked open files no
                    // longer use it (the caller holds the lock and the list
                    // is empty).
                    unsafe { g.defer_destroy(old) };
                }
            }
        }

        impl<T> Drop for RcuPtr<T> {
            fn drop(&mut self) {
                // SAFETY: `&mut self`: no reader can hold a reference derived
                // from this pointer any more.
                let g = unsafe { epoch::unprotected() };
                let p = self.ptr.swap(Shared::null(), Ordering::Relaxed, g);
                if !p.is_null() {
                    // SAFETY: exclusive access (above); `p` came from
                    // `Owned::new` in `publish`.
                    drop(unsafe { p.into_owned() });
                }
            }
        }
    }

    /// The checking RCU of the model build. Objects are not really freed
    /// before the domain is dropped; instead "freeing" marks them dead at the
    /// earliest moment the rules allow (when no read section is active), and
    /// every dereference asserts the object is alive. A use after the grace
    /// period therefore fails the model deterministically instead of being
    /// undefined behaviour. Its bookkeeping takes a shuttle mutex, which makes
    /// read-section entry and exit scheduling points.
    #[cfg(test)]
    mod model {
        use std::marker::PhantomData;
        use std::ops::Deref;
        use std::sync::atomic::AtomicBool as StdAtomicBool;
        use std::sync::Arc;

        use super::super::{lock, Mutex, Ordering};
        use shuttle::sync::atomic::AtomicPtr;

        /// Lets the model mark the parts of a reclaimed object that are
        /// used through plain references (such as a futex word a poller
        /// sleeps on) dead too.
        pub(crate) trait Poison {
            fn poison(&self);
        }

        pub(crate) struct Cell<T> {
            dead: StdAtomicBool,
            value: T,
        }

        /// A checked reference: every dereference asserts liveness.
        pub(crate) struct RcuRef<'a, T> {
            cell: &'a Cell<T>,
        }

        impl<T> Deref for RcuRef<'_, T> {
            type Target = T;
            fn deref(&self) -> &T {
                assert!(
                    !self.cell.dead.load(Ordering::SeqCst),
                    "kernfs model: RCU object used after its grace period"
                );
                &self.cell.value
            }
        }

        struct State<T> {
            readers: usize,
            pending: Vec<Arc<Cell<T>>>,
            dead: Vec<Arc<Cell<T>>>,
        }

        pub(crate) struct Domain<T> {
            state: Mutex<State<T>>,
        }

        pub(crate) struct ReadGuard<'d, T: Poison> {
            domain: &'d Domain<T>,
        }

        impl<T: Poison> Drop for ReadGuard<'_, T> {
            fn drop(&mut self) {
                let mut s = lock(&self.domain.state);
                s.readers -= 1;
                if s.readers == 0 {
                    let pending = std::mem::take(&mut s.pending);
                    for c in pending {
                        c.dead.store(true, Ordering::SeqCst);
                        c.value.poison();
                        s.dead.push(c);
                    }
                }
            }
        }

        impl<T: Poison> Domain<T> {
            pub(crate) fn new() -> Self {
                Domain { state: Mutex::new(State { readers: 0, pending: Vec::new(), dead: Vec::new() }) }
            }

            pub(crate) fn read(&self) -> ReadGuard<'_, T> {
                lock(&self.state).readers += 1;
                ReadGuard { domain: self }
            }

            fn retire_cell(&self, cell: Arc<Cell<T>>) {
                let mut s = lock(&self.state);
                if s.readers == 0 {
                    cell.dead.store(true, Ordering::SeqCst);
                    cell.value.poison();
                    s.dead.push(cell);
                } else {
                    s.pending.push(cell);
                }
            }
        }

        /// Published cells are owned by the pointer (one `Arc` turned raw);
        /// retired cells by their domain, which outlives every node and thus
        /// every pointer and reference of its tree.
        pub(crate) struct RcuPtr<T> {
            ptr: AtomicPtr<Cell<T>>,
            _owns: PhantomData<Arc<Cell<T>>>,
        }

        impl<T: Poison> RcuPtr<T> {
            pub(crate) fn null() -> Self {
                RcuPtr { ptr: AtomicPtr::new(std::ptr::null_mut()), _owns: PhantomData }
            }

            fn get<'a>(&'a self) -> Option<RcuRef<'a, T>> {
                let p = self.ptr.load(Ordering::SeqCst);
                // SAFETY: non-null pointers come from `Arc::into_raw`; that
                // `Arc` is held by this pointer or, once retired, by the
                // domain until the domain drops, after every node of the
                // tree (nodes own an `Arc` of the tree that owns the domain).
                let cell = unsafe { p.as_ref() }?;
                Some(RcuRef { cell })
            }

            pub(crate) fn load<'a>(&'a self, _g: &'a ReadGuard<'_, T>) -> Option<RcuRef<'a, T>> {
                self.get()
            }

            /// # Safety
            /// As the production version: the caller keeps the object from
            /// being retired while the reference lives (here a violation
            /// fails the model instead of being undefined behaviour).
            pub(crate) unsafe fn load_unguarded(&self) -> Option<RcuRef<'_, T>> {
                self.get()
            }

            pub(crate) fn publish(&self, _domain: &Domain<T>, value: T) {
                let raw = Arc::into_raw(Arc::new(Cell { dead: StdAtomicBool::new(false), value }));
                let old = self.ptr.swap(raw.cast_mut(), Ordering::SeqCst);
                assert!(old.is_null(), "kernfs model: open node published twice");
            }

            pub(crate) fn retire(&self, domain: &Domain<T>) {
                let old = self.ptr.swap(std::ptr::null_mut(), Ordering::SeqCst);
                if !old.is_null() {
                    // SAFETY: `old` came from `Arc::into_raw` in `publish`
                    // and this pointer owned that reference until the swap.
                    domain.retire_cell(unsafe { Arc::from_raw(old) });
                }
            }
        }

        impl<T> Drop for RcuPtr<T> {
            fn drop(&mut self) {
                let p = self.ptr.swap(std::ptr::null_mut(), Ordering::SeqCst);
                if !p.is_null() {
                    // SAFETY: as in `retire`; no reader remains (`&mut self`).
                    drop(unsafe { Arc::from_raw(p) });
                }
            }
        }
    }
}
