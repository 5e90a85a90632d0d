//! Open files (`fs/kernfs/file.c`): the open node, per-open state, read,
//! write, poll, release and the removal drain.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::node::{callback, AttrNode, Body, Node, NodeRef};
use crate::sync::rcu::RcuRef;
use crate::sync::{copy_in, lock, AtomicBool, AtomicU32, Mutex, Ordering, WaitWord};
use crate::tree::OpenLock;
use crate::{AttrOps, Errno, PAGE_SIZE};

/// `poll` bits of a readable attribute (the kernel adds `POLLOUT|POLLWRNORM`).
const POLL_DEFAULT: i16 = libc::POLLIN | libc::POLLRDNORM;
/// Added when the value changed since the last read (or the file is gone).
const POLL_CHANGED: i16 = libc::POLLERR | libc::POLLPRI;

/// How a file is opened (`FMODE_READ`, `FMODE_WRITE`). Permission checks
/// against [`Node::mode`] are the caller's (the FUSE layer's
/// `default_permissions`); here the flags only decide which operations the
/// open file allows (`EBADF` otherwise) and which buffers it allocates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OpenFlags {
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
}

impl OpenFlags {
    /// `O_RDONLY`.
    pub const RDONLY: OpenFlags = OpenFlags { read: true, write: false };
    /// `O_WRONLY`.
    pub const WRONLY: OpenFlags = OpenFlags { read: false, write: true };
    /// `O_RDWR`.
    pub const RDWR: OpenFlags = OpenFlags { read: true, write: true };
}

/// The page an attribute's [`AttrOps::show`] formats into: fixed capacity
/// (`PAGE_SIZE`), owned by the open file, allocated once at open. Writing
/// into it never allocates; output past the page is cut off and reported as
/// an error (`EFBIG`, or `fmt::Error` through `core::fmt::Write`).
pub struct ShowBuf {
    buf: Box<[u8]>,
    len: usize,
}

impl ShowBuf {
    /// An empty page. Allocates `PAGE_SIZE` bytes (for testing `AttrOps`
    /// implementations; open files allocate their own). Any context.
    pub fn new() -> ShowBuf {
        ShowBuf { buf: vec![0; PAGE_SIZE].into_boxed_slice(), len: 0 }
    }

    /// Appends `bytes`; past the page, appends what fits and fails with
    /// `EFBIG`. Allocation-free; any context (typically `show`).
    #[inline]
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<(), Errno> {
        let room = self.buf.len() - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        if n == bytes.len() {
            Ok(())
        } else {
            Err(libc::EFBIG)
        }
    }

    /// `sysfs_emit`: appends formatted text; `EFBIG` past the page.
    /// Allocation-free (unless a `Display` implementation allocates).
    pub fn emit(&mut self, args: fmt::Arguments<'_>) -> Result<(), Errno> {
        fmt::Write::write_fmt(self, args).map_err(|_| libc::EFBIG)
    }

    /// The bytes formatted so far. Allocation-free; any context.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Bytes formatted so far. Any context.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was formatted. Any context.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes still free. Any context.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    #[inline]
    fn clear(&mut self) {
        self.len = 0;
    }
}

impl Default for ShowBuf {
    fn default() -> Self {
        ShowBuf::new()
    }
}

impl fmt::Write for ShowBuf {
    #[inline]
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

impl fmt::Debug for ShowBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShowBuf").field("text", &String::from_utf8_lossy(self.as_bytes())).finish()
    }
}

/// `struct kernfs_open_node`: exists exactly while the node has open files,
/// and is freed after an RCU grace period once the last one closes.
///
/// Readers: [`Node::notify`] inside an RCU read section (no lock); holders of
/// the node's hashed open-file mutex; open files linked on `files` (their
/// membership keeps it alive). Writers (publish, retire, list changes) hold
/// the hashed open-file mutex.
pub(crate) struct OpenNode {
    /// The event counter (`on->event`, starts at 1) and poll wait queue
    /// (`on->poll`): a futex word with a sleeper count.
    pub(crate) event: WaitWord,
    /// `on->files`. Only touched under the hashed open-file mutex; this
    /// inner mutex is therefore uncontended and exists for safe interior
    /// mutability (a leaf of the lock order).
    files: Mutex<Vec<Arc<OfShared>>>,
}

impl OpenNode {
    fn new(first: Arc<OfShared>) -> OpenNode {
        OpenNode { event: WaitWord::new(1), files: Mutex::new(vec![first]) }
    }
}

#[cfg(test)]
impl crate::sync::rcu::Poison for OpenNode {
    fn poison(&self) {
        self.event.poison();
    }
}

/// Per-open state protected by the per-open mutex (`of->mutex`).
struct OfState {
    /// The generated value for non-seq reads (allocated at open when opened
    /// for reading).
    page: Option<ShowBuf>,
    /// The generated value for seq reads (grows as needed).
    seq: Vec<u8>,
    /// Whether `page`/`seq` holds a generated value to continue from.
    valid: bool,
}

/// `struct kernfs_open_file`: shared between the [`OpenFile`] handle and the
/// node's open list (for the drain).
struct OfShared {
    node: NodeRef,
    ops: Arc<dyn AttrOps>,
    flags: OpenFlags,
    atomic_write_len: usize,
    seq: bool,
    /// `of->mutex`: serializes the operations of this open file.
    state: Mutex<OfState>,
    /// `of->prealloc_buf` under `of->prealloc_mutex`: (atomic_write_len or
    /// PAGE_SIZE) + 1 bytes, when the attribute is prealloc and the file was
    /// opened for writing.
    prealloc: Option<Mutex<Box<[u8]>>>,
    /// `of->event`: the open node's event counter at the last offset-0 read.
    /// Written under `state`, read locklessly by poll.
    event: AtomicU32,
    /// `of->released`: changed only under the node's hashed open-file mutex.
    released: AtomicBool,
    /// Set by the removal drain.
    drained: AtomicBool,
}

impl OfShared {
    fn attr_node(&self) -> Option<&AttrNode> {
        self.node.attr_node()
    }

    /// The open node this file is linked on. Lock-free, allocation-free.
    #[inline]
    fn open_node(&self) -> Option<RcuRef<'_, OpenNode>> {
        let a = self.attr_node()?;
        // SAFETY: this file is on the open node's list from `OpenFile::open`
        // until `OpenFile`'s drop (which needs ownership, so cannot overlap
        // `&self` of the handle that owns this), and the open node is
        // retired only when its list is empty; the drain marks files but
        // leaves them linked.
        unsafe { a.open.load_unguarded() }
    }

    /// `kernfs_release_file`: `AttrOps::release` exactly once. Call under the
    /// node's hashed open-file mutex.
    fn release_once(&self, _held: &OpenLock<'_>) {
        if !self.released.swap(true, Ordering::AcqRel) {
            let _cb = callback::Scope::enter(self.node.id());
            self.ops.release();
        }
    }

    #[inline]
    fn bits_for(&self, event: u32) -> i16 {
        if self.event.load(Ordering::Relaxed) != event {
            POLL_DEFAULT | POLL_CHANGED
        } else {
            POLL_DEFAULT
        }
    }

    /// `kernfs_fop_write_iter` after the copy: per-open mutex, active
    /// reference, `store`.
    #[inline]
    fn store(&self, data: &[u8]) -> Result<usize, Errno> {
        let _state = lock(&self.state);
        let _active = self.node.get_active().ok_or(libc::ENODEV)?;
        if data.is_empty() {
            return Ok(0);
        }
        let _cb = callback::Scope::enter(self.node.id());
        match self.ops.store(data) {
            Ok(n) => Ok(n.min(data.len())),
            Err(e) => Err(sanitize(e)),
        }
    }
}

/// Errors from callbacks must be positive errno values.
#[inline]
fn sanitize(e: Errno) -> Errno {
    if e > 0 {
        e
    } else {
        libc::EIO
    }
}

fn alloc_zeroed(len: usize) -> Result<Box<[u8]>, Errno> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| libc::ENOMEM)?;
    v.resize(len, 0);
    Ok(v.into_boxed_slice())
}

/// Links `of` on the node's open node, creating it if needed
/// (`kernfs_get_open_node`). Takes the hashed open-file mutex; allocates.
fn link(node: &Node, a: &AttrNode, of: &Arc<OfShared>) {
    let _held = node.shared.open_lock(node.id());
    // SAFETY: we hold the writers' lock, so the open node cannot be retired
    // while `on` lives (this scope, which retires nothing).
    match unsafe { a.open.load_unguarded() } {
        Some(on) => lock(&on.files).push(of.clone()),
        None => a.open.publish(&node.shared.rcu, OpenNode::new(of.clone())),
    }
}

/// Unlinks `of`; retires the open node when its list becomes empty
/// (`kernfs_unlink_open_file`). Call under the node's hashed open-file mutex.
fn unlink(node: &Node, a: &AttrNode, of: &Arc<OfShared>, _held: &OpenLock<'_>) {
    // SAFETY: we hold the writers' lock; `on` is not used after the retire
    // below (its scope ends first).
    let empty = match unsafe { a.open.load_unguarded() } {
        Some(on) => {
            let mut files = lock(&on.files);
            if let Some(i) = files.iter().position(|f| Arc::ptr_eq(f, of)) {
                files.swap_remove(i);
            }
            files.is_empty()
        }
        None => false,
    };
    if empty {
        a.open.retire(&node.shared.rcu);
    }
}

/// `kernfs_drain_open_files`: marks every open file of `node` drained, calls
/// its `release` once, and wakes its pollers. Call with no lock held, after
/// the node's active references drained (so no file can be linked any more).
/// Returns whether there was a file. Takes the hashed open-file mutex;
/// allocates.
pub(crate) fn drain_open_files(node: &Node) -> bool {
    let Some(a) = node.attr_node() else { return false };
    {
        let guard = node.shared.rcu.read();
        if a.open.load(&guard).is_none() {
            return false;
        }
    }
    let held = node.shared.open_lock(node.id());
    // SAFETY: we hold the writers' lock and retire nothing in this scope.
    let Some(on) = (unsafe { a.open.load_unguarded() }) else { return false };
    let files: Vec<Arc<OfShared>> = lock(&on.files).clone();
    for f in &files {
        f.drained.store(true, Ordering::Release);
        f.release_once(&held);
    }
    on.event.bump();
    !files.is_empty()
}

/// An open attribute (`struct kernfs_open_file` plus the `struct file`).
/// `Send + Sync`: operations from several threads on one open file are
/// serialized by its mutexes, as in the kernel.
pub struct OpenFile {
    inner: Arc<OfShared>,
}

impl OpenFile {
    pub(crate) fn open(node: &NodeRef, flags: OpenFlags) -> Result<OpenFile, Errno> {
        let a = match &node.body {
            Body::Dir(_) => return Err(libc::EISDIR),
            Body::Symlink(_) => return Err(libc::ELOOP),
            Body::Attr(a) => a,
        };
        let _active = node.get_active().ok_or(libc::ENOENT)?;
        let attr = &a.attr;
        // seq output is built in a growing buffer: it cannot honour prealloc.
        if attr.prealloc && attr.seq {
            return Err(libc::EINVAL);
        }
        let prealloc = if attr.prealloc && flags.write {
            let len = if attr.atomic_write_len != 0 { attr.atomic_write_len } else { PAGE_SIZE };
            Some(Mutex::new(alloc_zeroed(len.checked_add(1).ok_or(libc::ENOMEM)?)?))
        } else {
            None
        };
        let page = (flags.read && !attr.seq).then(ShowBuf::new);
        let inner = Arc::new(OfShared {
            node: node.clone(),
            ops: attr.ops.clone(),
            flags,
            atomic_write_len: attr.atomic_write_len,
            seq: attr.seq,
            state: Mutex::new(OfState { page, seq: Vec::new(), valid: false }),
            prealloc,
            event: AtomicU32::new(0),
            released: AtomicBool::new(false),
            drained: AtomicBool::new(false),
        });
        link(node, a, &inner);
        let opened = {
            let _cb = callback::Scope::enter(node.id());
            attr.ops.open()
        };
        if let Err(e) = opened {
            // Not released: `release` is owed only to successful opens.
            let held = node.shared.open_lock(node.id());
            unlink(node, a, &inner, &held);
            return Err(sanitize(e));
        }
        Ok(OpenFile { inner })
    }

    /// The attribute node. Any context.
    pub fn node(&self) -> &NodeRef {
        &self.inner.node
    }

    /// The flags the file was opened with. Any context.
    pub fn flags(&self) -> OpenFlags {
        self.inner.flags
    }

    /// Whether the node's removal drained this file (every operation but
    /// release now fails). Lock-free.
    pub fn is_drained(&self) -> bool {
        self.inner.drained.load(Ordering::Acquire)
    }

    /// Reads the attribute at `offset` into `buf`; returns the bytes copied
    /// (0 at or past the end).
    ///
    /// At offset 0, or when nothing was generated yet, the value is
    /// (re)generated: the open node's event counter is recorded (for
    /// [`poll`](Self::poll)) and `show` formats into the open file's own page
    /// (`seq_show` into its growing buffer for seq attributes). Other
    /// offsets continue from the value generated last. Takes the per-open
    /// mutex and an active reference.
    ///
    /// Errors: `EBADF` if not opened for reading, `ENODEV` once the node is
    /// removed (also for continued reads), or the callback's error.
    /// Allocation-free for non-seq attributes (as long as `show` is).
    /// Must not be called from this file's own callbacks.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let f = &*self.inner;
        if !f.flags.read {
            return Err(libc::EBADF);
        }
        let mut guard = lock(&f.state);
        let st = &mut *guard;
        {
            let _active = f.node.get_active().ok_or(libc::ENODEV)?;
            if offset == 0 || !st.valid {
                st.valid = false;
                if let Some(on) = f.open_node() {
                    f.event.store(on.event.load(), Ordering::Relaxed);
                }
                let _cb = callback::Scope::enter(f.node.id());
                if f.seq {
                    st.seq.clear();
                    f.ops.seq_show(&mut st.seq).map_err(sanitize)?;
                } else {
                    let page = st.page.as_mut().ok_or(libc::EBADF)?;
                    page.clear();
                    f.ops.show(page).map_err(sanitize)?;
                }
                st.valid = true;
            }
        }
        let data: &[u8] = if f.seq { &st.seq } else { st.page.as_ref().map_or(&[], ShowBuf::as_bytes) };
        let Some(rest) = usize::try_from(offset).ok().and_then(|o| data.get(o..)) else { return Ok(0) };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    /// Writes `data` to the attribute (`offset` is ignored: sysfs attributes
    /// take the whole value in one write); returns the bytes `store`
    /// consumed.
    ///
    /// A write longer than `atomic_write_len` (when non-zero) fails with
    /// `E2BIG`; otherwise it is clamped to `PAGE_SIZE`. For a prealloc
    /// attribute the buffer allocated at open is used under its own mutex
    /// for the whole write, copy included, and the write performs **zero
    /// heap allocations**; otherwise a buffer is allocated per write. Lock
    /// order: prealloc mutex → copy in (+ NUL) → per-open mutex → active
    /// reference → `store`.
    ///
    /// Errors: `EBADF` if not opened for writing, `E2BIG`, `ENODEV` once the
    /// node is removed, `ENOMEM`, or the callback's error. An empty write
    /// returns 0 without calling `store`. Must not be called from this
    /// file's own callbacks.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let _ = offset;
        let f = &*self.inner;
        if !f.flags.write {
            return Err(libc::EBADF);
        }
        let len = if f.atomic_write_len != 0 {
            if data.len() > f.atomic_write_len {
                return Err(libc::E2BIG);
            }
            data.len()
        } else {
            data.len().min(PAGE_SIZE)
        };
        let data = &data[..len];
        match &f.prealloc {
            Some(prealloc) => {
                let mut buf = lock(prealloc);
                // Sized at open for the longest write allowed, plus the NUL.
                let Some(dst) = buf.get_mut(..=len) else { return Err(libc::EIO) };
                let (body, nul) = dst.split_at_mut(len);
                copy_in(body, data);
                nul.fill(0);
                f.store(&buf[..len])
            }
            None => {
                let mut buf = Vec::new();
                buf.try_reserve_exact(len + 1).map_err(|_| libc::ENOMEM)?;
                buf.extend_from_slice(data);
                buf.push(0);
                f.store(&buf[..len])
            }
        }
    }

    /// Non-blocking poll (`kernfs_fop_poll`): `POLLIN|POLLRDNORM`, plus
    /// `POLLERR|POLLPRI` when the node's event counter moved since this
    /// file's last offset-0 read — which includes a file never read, as in
    /// the kernel (read first, then poll) — and always once the node is
    /// removed. Lock-free, allocation-free, no system call.
    pub fn poll(&self) -> i16 {
        let f = &*self.inner;
        let Some(_active) = f.node.get_active() else { return POLL_DEFAULT | POLL_CHANGED };
        match f.open_node() {
            Some(on) => f.bits_for(on.event.load()),
            None => POLL_DEFAULT | POLL_CHANGED,
        }
    }

    /// Blocking poll for in-process users: waits (futex, no lock held) until
    /// [`poll`](Self::poll) would report `POLLPRI` — a notify after the last
    /// offset-0 read, or the node's removal — or until `timeout` passes;
    /// returns the poll bits. Allocation-free. Never call it from a callback
    /// or with a lock held that a notifier or remover might need.
    pub fn poll_wait(&self, timeout: Duration) -> i16 {
        let f = &*self.inner;
        let Some(on) = f.open_node() else { return POLL_DEFAULT | POLL_CHANGED };
        let bits = |event: u32| {
            if f.node.is_active() {
                f.bits_for(event)
            } else {
                POLL_DEFAULT | POLL_CHANGED
            }
        };
        let deadline = Instant::now().checked_add(timeout);
        let waited = on.event.wait_until(deadline, |event| {
            let b = bits(event);
            (b & libc::POLLPRI != 0).then_some(b)
        });
        waited.unwrap_or_else(bits)
    }

    /// Closes the file (`kernfs_fop_release`); the same as dropping it.
    /// Calls [`AttrOps::release`] unless the removal drain already did, and
    /// unlinks the file from the open node (freeing that after a grace
    /// period when it was the last). Takes the node's hashed open-file
    /// mutex; may allocate (RCU garbage queue). Must not be called from a
    /// `release` callback.
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        let f = &self.inner;
        let Some(a) = f.attr_node() else { return };
        let node = &*f.node;
        let held = node.shared.open_lock(node.id());
        f.release_once(&held);
        unlink(node, a, f, &held);
    }
}

impl fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenFile")
            .field("node", &self.inner.node.id())
            .field("flags", &self.inner.flags)
            .field("drained", &self.is_drained())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    #[test]
    fn showbuf_is_bounded() {
        let mut b = ShowBuf::new();
        assert!(writeln!(b, "{}", 42).is_ok());
        assert_eq!(b.as_bytes(), b"42\n");
        let big = [b'x'; PAGE_SIZE];
        assert_eq!(b.push_bytes(&big), Err(libc::EFBIG));
        assert_eq!(b.len(), PAGE_SIZE);
        assert_eq!(b.remaining(), 0);
        assert!(b.emit(format_args!("y")).is_err());
        b.clear();
        assert!(b.is_empty());
    }
}
