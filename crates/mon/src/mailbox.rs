//! The manager ↔ monitor mailbox: mdmon's hand-over of prepared updates
//! (`queue_metadata_update`, `replace_array`) without the monitor ever
//! allocating or freeing.
//!
//! ## Responsibility boundary
//! A [`Ring`] is a bounded single-producer single-consumer queue of boxed
//! values, its [`RING_SLOTS`] slots made when the ring is made. The
//! manager allocates an update, pushes it to the monitor's ring and wakes
//! the monitor through a [`Wake`] (an `eventfd` the monitor polls); the
//! monitor pops it, moves its contents into place, and pushes the box back
//! (now holding whatever it replaced) to the manager's ring, which drops
//! it. The monitor therefore only moves pointers: pushing and popping are
//! allocation-free, and no box is ever freed on the monitor thread.
//!
//! ## Synchronization model
//! Each ring has exactly one producer thread and one consumer thread.
//! `tail` is written only by the producer, `head` only by the consumer;
//! a slot is written by the producer before `tail` is published
//! (release) and read by the consumer after `tail` is observed
//! (acquire), and the reverse for `head`. No lock.

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Slots of each ring: more updates than this in flight wait in the
/// producer (the manager) until the monitor has taken some.
pub const RING_SLOTS: usize = 8;

/// A bounded SPSC queue of boxes (see the module doc).
pub struct Ring<T> {
    slots: [AtomicPtr<T>; RING_SLOTS],
    /// Next slot to pop (consumer-owned).
    head: AtomicUsize,
    /// Next slot to fill (producer-owned).
    tail: AtomicUsize,
}

impl<T> Default for Ring<T> {
    fn default() -> Self {
        Ring {
            slots: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }
}

impl<T> Ring<T> {
    /// Whether a push would succeed now (producer side).
    pub fn has_room(&self) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        tail.wrapping_sub(self.head.load(Ordering::Acquire)) < RING_SLOTS
    }

    /// Queues `item`; gives it back if every slot is taken. Allocation-free.
    /// Called only by the ring's one producer thread.
    pub fn push(&self, item: Box<T>) -> Result<(), Box<T>> {
        if !self.has_room() {
            return Err(item);
        }
        let tail = self.tail.load(Ordering::Relaxed);
        let slot = &self.slots[tail % RING_SLOTS];
        debug_assert!(slot.load(Ordering::Relaxed).is_null());
        slot.store(Box::into_raw(item), Ordering::Relaxed);
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Takes the oldest item. Allocation-free (the box is handed over, not
    /// freed). Called only by the ring's one consumer thread.
    pub fn pop(&self) -> Option<Box<T>> {
        let head = self.head.load(Ordering::Relaxed);
        if head == self.tail.load(Ordering::Acquire) {
            return None;
        }
        let slot = &self.slots[head % RING_SLOTS];
        let p = slot.swap(ptr::null_mut(), Ordering::Relaxed);
        self.head.store(head.wrapping_add(1), Ordering::Release);
        debug_assert!(!p.is_null());
        // SAFETY: every non-null pointer in a slot between head and tail
        // came from `Box::into_raw` in `push` and is taken exactly once
        // (the slot is nulled before `head` moves past it).
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

// SAFETY: the ring hands `Box<T>`s from one thread to another; that is
// sound when `T` may be sent between threads. All shared state is atomic.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above; `&Ring` only exposes push/pop, whose single-producer /
// single-consumer use is the callers' contract (module doc).
unsafe impl<T: Send> Sync for Ring<T> {}

/// A wake-up signal: an `eventfd` one side writes and the other polls.
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    /// A new, unsignalled, non-blocking eventfd.
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd just returned this descriptor; nothing else owns it.
        Ok(Wake { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Signals the other side. Allocation-free.
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 initialised bytes to our eventfd.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Consumes pending signals (non-blocking). Allocation-free.
    pub fn clear(&self) {
        let mut v = [0u8; 8];
        // SAFETY: reading at most 8 bytes into `v`.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
    }

    /// The descriptor to poll (`POLLIN`).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ring_is_fifo_bounded_and_frees_leftovers() {
        let r: Ring<u32> = Ring::default();
        assert!(r.pop().is_none());
        for i in 0..RING_SLOTS as u32 {
            r.push(Box::new(i)).expect("room");
        }
        let back = r.push(Box::new(99)).expect_err("full");
        assert_eq!(*back, 99);
        for i in 0..3 {
            assert_eq!(r.pop().map(|b| *b), Some(i));
        }
        for i in 0..3 {
            r.push(Box::new(100 + i)).expect("room again");
        }
        let got: Vec<u32> = std::iter::from_fn(|| r.pop().map(|b| *b)).collect();
        let mut want: Vec<u32> = (3..RING_SLOTS as u32).collect();
        want.extend(100..103);
        assert_eq!(got, want);
        // Leftovers are freed by Drop (checked by Miri/ASan; here: no panic).
        r.push(Box::new(7)).expect("room");
    }

    #[test]
    fn ring_across_threads_loses_nothing() {
        let r: Arc<Ring<u64>> = Arc::new(Ring::default());
        let p = r.clone();
        let n = 100_000u64;
        let producer = std::thread::spawn(move || {
            let mut i = 0;
            while i < n {
                match p.push(Box::new(i)) {
                    Ok(()) => i += 1,
                    Err(_) => std::hint::spin_loop(),
                }
            }
        });
        let mut next = 0;
        while next < n {
            if let Some(v) = r.pop() {
                assert_eq!(*v, next);
                next += 1;
            }
        }
        producer.join().expect("producer");
    }

    #[test]
    fn wake_signals_and_clears() {
        let w = Wake::new().expect("eventfd");
        let mut p = libc::pollfd { fd: w.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0);
        w.signal();
        w.signal();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 1);
        w.clear();
        p.revents = 0;
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0);
    }
}
