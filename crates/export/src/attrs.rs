//! Serving the attribute tree: the table of open attribute files (one
//! [`kernfs::OpenFile`] per FUSE file handle, with the file's poll
//! registration) and the notifier thread that turns kernfs notifications
//! into `FUSE_NOTIFY_POLL` messages.
//!
//! Locks: one mutex per table slot and the free-list mutex; neither is held
//! while taking the other, and no kernfs operation that can block (read,
//! write, open, release) runs under either. Under a slot mutex only
//! [`kernfs::OpenFile::poll`] is called, which is lock-free.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kernfs::{Attr, AttrOps, Kernfs, OpenFile, ShowBuf};

use crate::fs::Errno;
use crate::sys::StopSignal;

/// Most attribute files open at once through one mount; OPEN beyond fails
/// with ENFILE.
pub const MAX_OPEN_ATTRS: usize = 1024;

/// How long the notifier sleeps in [`Kernfs::wait_notify`] before looking
/// at the stop signal again: the bound on how long [`crate::Mount::wait`]
/// waits for it after the workers ended.
const NOTIFY_WAIT: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every slot is re-validated by its generation; a panic while holding
    // one leaves it consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One entry of the open-file table.
#[derive(Default)]
struct Slot {
    /// Bumped on every release, so a stale file handle finds nothing.
    gen: u32,
    file: Option<Arc<OpenFile>>,
    /// The kernel's poll handle, when it asked to be notified
    /// (`FUSE_POLL_SCHEDULE_NOTIFY`) and was not yet.
    kh: Option<u64>,
}

/// The open attribute files of a mount, indexed by FUSE file handle
/// (`gen << 32 | slot`). Allocated once at mount, bounded.
pub struct OpenTable {
    slots: Box<[Mutex<Slot>]>,
    /// Free slot indexes, lowest on top; never grows past its capacity.
    free: Mutex<Vec<u32>>,
    /// One more than the highest slot index ever handed out: the notifier
    /// scans no further.
    high: AtomicUsize,
    /// Slots with a poll registration: the notifier scans nothing while 0.
    registered: AtomicUsize,
}

fn split(fh: u64) -> (usize, u32) {
    ((fh & 0xffff_ffff) as usize, (fh >> 32) as u32)
}

impl OpenTable {
    /// A table of `capacity` slots (at most `u32::MAX`).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        let slots = (0..capacity).map(|_| Mutex::new(Slot { gen: 1, ..Slot::default() })).collect();
        let free = (0..capacity as u32).rev().collect();
        OpenTable {
            slots,
            free: Mutex::new(free),
            high: AtomicUsize::new(0),
            registered: AtomicUsize::new(0),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Store `file`; returns its file handle, never 0. ENFILE when full
    /// (the file is then closed).
    pub fn insert(&self, file: OpenFile) -> Result<u64, Errno> {
        let Some(i) = lock(&self.free).pop() else {
            drop(file);
            return Err(Errno(libc::ENFILE));
        };
        let idx = i as usize;
        self.high.fetch_max(idx + 1, Ordering::AcqRel);
        let mut s = lock(&self.slots[idx]);
        s.file = Some(Arc::new(file));
        s.kh = None;
        Ok((u64::from(s.gen) << 32) | u64::from(i))
    }

    /// The open file behind `fh`; EBADF if there is none.
    /// Allocation-free.
    pub fn get(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        let (idx, gen) = split(fh);
        let s = lock(self.slots.get(idx).ok_or(Errno(libc::EBADF))?);
        match &s.file {
            Some(f) if s.gen == gen => Ok(Arc::clone(f)),
            _ => Err(Errno(libc::EBADF)),
        }
    }

    /// Take the file behind `fh` out of the table (RELEASE). The caller
    /// drops it, outside any lock: the last reference closes the kernfs
    /// file.
    pub fn remove(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let (idx, gen) = split(fh);
        let file = {
            let mut s = lock(self.slots.get(idx)?);
            if s.gen != gen || s.file.is_none() {
                return None;
            }
            if s.kh.take().is_some() {
                self.registered.fetch_sub(1, Ordering::AcqRel);
            }
            s.gen = s.gen.wrapping_add(1).max(1);
            s.file.take()
        };
        lock(&self.free).push(idx as u32);
        file
    }

    /// FUSE_POLL: the file's poll bits. With `kh`, the kernel wants a
    /// notification when the file becomes ready: the registration is
    /// recorded *before* the bits are computed, under the slot's mutex, so
    /// that a notify racing with this poll is seen either here or by the
    /// notifier's next scan. A registration is dropped again when the
    /// bits already report the change.
    pub fn poll(&self, fh: u64, kh: Option<u64>) -> Result<i16, Errno> {
        let (idx, gen) = split(fh);
        let mut s = lock(self.slots.get(idx).ok_or(Errno(libc::EBADF))?);
        if s.gen != gen {
            return Err(Errno(libc::EBADF));
        }
        let Some(file) = s.file.clone() else { return Err(Errno(libc::EBADF)) };
        if let Some(kh) = kh {
            if s.kh.replace(kh).is_none() {
                self.registered.fetch_add(1, Ordering::AcqRel);
            }
        }
        let bits = file.poll();
        if bits & libc::POLLPRI != 0 && s.kh.take().is_some() {
            self.registered.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(bits)
    }

    /// For the notifier: copy into `out` the kernel handles of the
    /// registrations whose file now reports `POLLPRI` (changed or removed),
    /// dropping those registrations; returns how many. Each slot's mutex is
    /// held only to check and copy. Allocation-free; `out` must hold
    /// [`capacity`](Self::capacity) handles (one registration per slot).
    pub fn take_due(&self, out: &mut [u64]) -> usize {
        if self.registered.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let high = self.high.load(Ordering::Acquire).min(self.slots.len());
        let mut n = 0;
        for slot in &self.slots[..high] {
            if n == out.len() {
                break;
            }
            let mut s = lock(slot);
            let Some(kh) = s.kh else { continue };
            let due = s.file.as_ref().is_none_or(|f| f.poll() & libc::POLLPRI != 0);
            if due {
                s.kh = None;
                self.registered.fetch_sub(1, Ordering::AcqRel);
                out[n] = kh;
                n += 1;
            }
        }
        n
    }
}

/// The attribute tree of a mount and its open files.
pub struct TreeState {
    pub tree: Arc<Kernfs>,
    pub opens: OpenTable,
}

impl TreeState {
    pub fn new(tree: Arc<Kernfs>) -> Self {
        TreeState { tree, opens: OpenTable::new(MAX_OPEN_ATTRS) }
    }
}

/// Prepare the calling thread so that a `store` calling
/// [`kernfs::Node::notify`] allocates nothing on it later.
///
/// `notify` enters an RCU read section, and a thread's first one registers
/// the thread with the epoch collector (one allocation per thread, ever).
/// Calling `notify` once on an attribute of a private, throw-away tree
/// does that registration here, at worker start, without touching the
/// served tree.
pub fn prime_thread() {
    struct Nothing;
    impl AttrOps for Nothing {
        fn show(&self, _out: &mut ShowBuf) -> Result<(), kernfs::Errno> {
            Ok(())
        }
    }
    let scratch = Kernfs::new();
    if let Ok(node) = scratch.create_attr(&scratch.root(), "prime", 0o444, Attr::new(Arc::new(Nothing))) {
        node.notify();
    }
}

/// The notifier thread of a mount with a tree: it serves no request and
/// holds no lock while it writes.
pub struct Notifier {
    /// A duplicate of the session descriptor; notifications may be written
    /// to any descriptor of the connection.
    pub dev: File,
    pub state: Arc<TreeState>,
    /// Signalled (then dropped) once the thread's buffer is allocated.
    pub ready: Option<std::sync::mpsc::Sender<()>>,
}

impl Notifier {
    /// Loop until `stop` is raised: sleep in [`Kernfs::wait_notify`]; after
    /// every change of the notify generation, collect the due poll
    /// registrations ([`OpenTable::take_due`]) into a local array allocated
    /// here, once, and send one `FUSE_NOTIFY_POLL` for each. The kernel then
    /// polls again (and registers again if its caller still waits).
    pub fn run(mut self, stop: &StopSignal) {
        let mut due = vec![0u64; self.state.opens.capacity()];
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        let tree = &self.state.tree;
        let mut seen = tree.notify_generation();
        while !stop.is_raised() {
            let now = tree.wait_notify(seen, NOTIFY_WAIT);
            if now == seen {
                continue;
            }
            seen = now;
            let n = self.state.opens.take_due(&mut due);
            for &kh in &due[..n] {
                let msg = crate::abi::notify_poll_message(kh);
                // Best effort: ENODEV means the connection is gone (the stop
                // signal follows); the kernel answers an unknown kh with
                // success. Nothing else is expected of a well-formed
                // notification.
                let _ = (&self.dev).write(&msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernfs::OpenFlags;
    use std::sync::atomic::AtomicU32;

    struct Val(AtomicU32);
    impl AttrOps for Val {
        fn show(&self, out: &mut ShowBuf) -> Result<(), kernfs::Errno> {
            out.emit(format_args!("{}\n", self.0.load(Ordering::Relaxed)))
        }
    }

    #[test]
    fn table_bounds_handles_and_registrations() {
        let fs = Kernfs::new();
        let a = fs
            .create_attr(&fs.root(), "a", 0o644, Attr::new(Arc::new(Val(AtomicU32::new(1)))))
            .expect("create");
        fs.activate(&a);
        let t = OpenTable::new(2);
        let f1 = t.insert(a.open(OpenFlags::RDONLY).expect("open")).expect("slot");
        let f2 = t.insert(a.open(OpenFlags::RDONLY).expect("open")).expect("slot");
        assert_ne!(f1, 0);
        assert_ne!(f1, f2);
        assert_eq!(t.insert(a.open(OpenFlags::RDONLY).expect("open")).err(), Some(Errno(libc::ENFILE)));
        // Never read: POLLPRI at once, and no registration stays.
        assert_ne!(t.poll(f1, Some(7)).expect("poll") & libc::POLLPRI, 0);
        let mut buf = [0u8; 8];
        t.get(f1).expect("get").read(0, &mut buf).expect("read");
        assert_eq!(t.poll(f1, Some(7)).expect("poll") & libc::POLLPRI, 0);
        let mut due = [0u64; 2];
        assert_eq!(t.take_due(&mut due), 0);
        a.notify();
        assert_eq!(t.take_due(&mut due), 1);
        assert_eq!(due[0], 7);
        assert_eq!(t.take_due(&mut due), 0, "a registration is notified once");
        drop(t.remove(f1).expect("remove"));
        assert!(t.remove(f1).is_none());
        assert_eq!(t.get(f1).err(), Some(Errno(libc::EBADF)));
        let f3 = t.insert(a.open(OpenFlags::RDONLY).expect("open")).expect("slot reused");
        assert_ne!(f3, f1, "a reused slot gets a new handle");
        assert_eq!(t.get(0).err(), Some(Errno(libc::EBADF)));
        assert_eq!(t.get(u64::MAX).err(), Some(Errno(libc::EBADF)));
        drop(t.remove(f2));
        drop(t.remove(f3));
    }
}
