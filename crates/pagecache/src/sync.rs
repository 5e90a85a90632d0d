//! The synchronization facade: every lock, condition variable and atomic
//! of this crate comes from here. Ordinary builds use `std`; the crate's
//! own unit-test build (`cfg(test)`) uses `shuttle`'s scheduler-controlled
//! primitives, so the models in `models.rs` run the real folio locks,
//! throttle and copy loop under shuttle's schedulers.
//!
//! Poisoning is never a panic: a poisoned lock is recovered (every state
//! they protect is re-validated by its users).

use std::sync::PoisonError;

mod imp {
    #[cfg(test)]
    pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
    #[cfg(test)]
    pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
    #[cfg(not(test))]
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
    #[cfg(not(test))]
    pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
}

pub(crate) use imp::*;
pub(crate) use std::sync::atomic::Ordering;

#[inline]
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[inline]
pub(crate) fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

#[inline]
pub(crate) fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[inline]
pub(crate) fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g).unwrap_or_else(PoisonError::into_inner)
}

#[inline]
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    d: std::time::Duration,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout(g, d) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}

/// A scheduling point in the model build (none in ordinary builds).
#[inline]
pub(crate) fn yield_point() {
    #[cfg(test)]
    shuttle::thread::yield_now();
}
