//! Nodes (`struct kernfs_node`), attribute operations (`struct kernfs_ops`)
//! and active references.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::file::{OpenFile, OpenFlags, OpenNode, ShowBuf};
use crate::sync::rcu::RcuPtr;
use crate::sync::{lock, wait, AtomicBool, AtomicI32, Ordering, RwLock};
use crate::tree::TreeShared;
use crate::{Errno, PAGE_SIZE};

/// A counted reference to a node. Holding one keeps the node's memory (and
/// its name, parent and operations) alive; it does not keep the node active.
pub type NodeRef = Arc<Node>;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A directory (`KERNFS_DIR`).
    Dir,
    /// An attribute file (`KERNFS_FILE`).
    Attr,
    /// A symbolic link (`KERNFS_LINK`).
    Symlink,
}

/// The operations behind an attribute (`struct kernfs_ops` with sysfs'
/// show/store shape).
///
/// Calling context, for every method: never under a lock of the tree's
/// structure, never under the node's hashed open-file mutex except
/// [`release`](AttrOps::release). A callback may create, activate and remove
/// *other* subtrees, call [`Node::notify`] on anything, and use *other* open
/// files; it must not remove a subtree containing its own node (that waits
/// for the callback's own active reference: a deadlock, `debug_assert`ed in
/// debug builds) and must not use its own open file (the per-open mutex is
/// held). Removal of the calling node must be deferred to another thread,
/// as md defers `rdev` removal to a work queue.
pub trait AttrOps: Send + Sync + 'static {
    /// Formats the value into `out` (one page at most; pushing past the page
    /// fails with `EFBIG`). Called under the open file's mutex and an active
    /// reference. Should not allocate (the read path is otherwise
    /// allocation-free).
    fn show(&self, out: &mut ShowBuf) -> Result<(), Errno>;

    /// Parses `data` and applies it. `data` excludes the terminating NUL that
    /// the buffer holds just past its end (`data.len()` bytes are the
    /// caller's, clamped to `PAGE_SIZE` or bounded by `atomic_write_len`).
    /// Returns the bytes consumed (values above `data.len()` are clamped).
    /// Called under the open file's mutex (and the prealloc buffer's mutex,
    /// for prealloc attributes) and an active reference; never with empty
    /// `data`. Default: `EINVAL`, what kernfs answers for a missing `->write`.
    fn store(&self, data: &[u8]) -> Result<usize, Errno> {
        let _ = data;
        Err(libc::EINVAL)
    }

    /// Output larger than one page (seq_file style), used instead of
    /// [`show`](AttrOps::show) when [`Attr::seq`] is set. `out` arrives
    /// empty; it may grow (allocate). Called under the open file's mutex and
    /// an active reference.
    fn seq_show(&self, out: &mut Vec<u8>) -> Result<(), Errno> {
        let _ = out;
        Err(libc::ENOSYS)
    }

    /// Called once per open, under an active reference, after the open file
    /// is linked on the node's open list and before `Node::open` returns. An
    /// error fails the open (and then [`release`](AttrOps::release) is not
    /// called).
    fn open(&self) -> Result<(), Errno> {
        Ok(())
    }

    /// Called exactly once per successful open: at close, or earlier when the
    /// node's removal drains its open files. Called under the node's hashed
    /// open-file mutex and *without* an active reference: it must not open or
    /// close kernfs files, nor remove nodes.
    fn release(&self) {}
}

/// An attribute's definition (`struct kernfs_ops` flags plus its ops).
#[derive(Clone)]
pub struct Attr {
    /// The operations.
    pub ops: Arc<dyn AttrOps>,
    /// Allocate the write buffer at open, so that writes allocate nothing
    /// (`__ATTR_PREALLOC`). Incompatible with `seq` (`EINVAL` at open).
    pub prealloc: bool,
    /// Writes longer than this fail with `E2BIG`; 0: no limit (writes are
    /// clamped to `PAGE_SIZE`).
    pub atomic_write_len: usize,
    /// Read through [`AttrOps::seq_show`] (output may exceed a page).
    pub seq: bool,
    /// Documentation: the attribute calls [`Node::notify`] when its value
    /// changes, so polling it is meaningful.
    pub notify: bool,
}

impl Attr {
    /// A plain attribute: no prealloc, no atomic write length, not seq, not
    /// notifying. Adjust the public fields with struct update syntax.
    pub fn new(ops: Arc<dyn AttrOps>) -> Attr {
        Attr { ops, prealloc: false, atomic_write_len: 0, seq: false, notify: false }
    }
}

impl fmt::Debug for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attr")
            .field("prealloc", &self.prealloc)
            .field("atomic_write_len", &self.atomic_write_len)
            .field("seq", &self.seq)
            .field("notify", &self.notify)
            .finish_non_exhaustive()
    }
}

/// The active-reference count of a deactivated node (`KN_DEACTIVATED_BIAS`):
/// a deactivated node's count is `DEACTIVATED_BIAS + in-flight users`, always
/// negative, so [`Node::get_active`] (increment unless negative) fails.
pub(crate) const DEACTIVATED_BIAS: i32 = i32::MIN;

pub(crate) struct AttrNode {
    pub(crate) attr: Attr,
    /// `kn->attr.open`: the open node, present while at least one file is
    /// open. Readers: see `sync::rcu`; writers hold the node's hashed
    /// open-file mutex.
    pub(crate) open: RcuPtr<OpenNode>,
}

pub(crate) enum Body {
    /// Children by name. Written under the tree mutex; read under this lock
    /// alone.
    Dir(RwLock<BTreeMap<Box<str>, NodeRef>>),
    Attr(AttrNode),
    Symlink(Box<str>),
}

/// One node of the tree (`struct kernfs_node`).
pub struct Node {
    id: u64,
    name: Box<str>,
    mode: u32,
    parent: Option<NodeRef>,
    pub(crate) shared: Arc<TreeShared>,
    /// Active references, biased by `DEACTIVATED_BIAS` while deactivated.
    active: AtomicI32,
    /// Written under the tree mutex.
    activated: AtomicBool,
    /// Written under the tree mutex; set once, first step of removal.
    removed: AtomicBool,
    pub(crate) body: Body,
}

impl Node {
    pub(crate) fn new(
        shared: Arc<TreeShared>,
        id: u64,
        name: &str,
        mode: u32,
        parent: Option<NodeRef>,
        body: Body,
    ) -> Node {
        Node {
            id,
            name: name.into(),
            mode: mode & 0o7777,
            parent,
            shared,
            active: AtomicI32::new(DEACTIVATED_BIAS),
            activated: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            body,
        }
    }

    /// Unique, stable id, never reused within its tree (FUSE inode number);
    /// the root is 1. Any context.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The node's name (empty for the root). Any context.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Permission bits (`mode & 0o7777`). Any context.
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// What the node is. Any context.
    pub fn kind(&self) -> NodeKind {
        match self.body {
            Body::Dir(_) => NodeKind::Dir,
            Body::Attr(_) => NodeKind::Attr,
            Body::Symlink(_) => NodeKind::Symlink,
        }
    }

    /// The parent directory (kept even after removal); `None` for the root.
    /// Any context.
    pub fn parent(&self) -> Option<NodeRef> {
        self.parent.clone()
    }

    /// The link target of a symlink. Any context.
    pub fn symlink_target(&self) -> Option<&str> {
        match &self.body {
            Body::Symlink(t) => Some(t),
            _ => None,
        }
    }

    /// Whether the node is active: activated and not (being) removed.
    /// Lock-free; any context.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire) >= 0
    }

    /// `st_size` to report: `PAGE_SIZE` for attributes (as sysfs does), 0
    /// otherwise. Any context.
    pub fn size_hint(&self) -> u64 {
        match self.body {
            Body::Attr(_) => PAGE_SIZE as u64,
            _ => 0,
        }
    }

    /// `kernfs_notify`: the attribute's value changed. Bumps the event
    /// counter of the node's open node, if any file is open (inside an RCU
    /// read section, no lock), wakes in-process pollers of it (a futex wake
    /// only if one sleeps), and bumps the tree's notify generation (waking
    /// [`Kernfs::wait_notify`](crate::Kernfs::wait_notify) callers if any).
    ///
    /// Lock-free and allocation-free (once the calling thread has entered one
    /// RCU read section before; see `sync::rcu`). Callable from any thread
    /// and any context, with any lock held, including the data path and
    /// `AttrOps` callbacks. Does nothing for directories and symlinks.
    pub fn notify(&self) {
        let Body::Attr(a) = &self.body else { return };
        {
            let guard = self.shared.rcu.read();
            if let Some(on) = a.open.load(&guard) {
                on.event.bump();
            }
        }
        self.shared.generation.bump();
    }

    /// Opens the attribute (`kernfs_fop_open`). `EISDIR` for directories,
    /// `ELOOP` for symlinks, `ENOENT` if the node is not active, `EINVAL` for
    /// an attribute that is both `prealloc` and `seq`, or the error of
    /// [`AttrOps::open`]. Allocates (the open file, its page buffer when
    /// opened for reading, its prealloc buffer when opened for writing).
    /// Must not be called from [`AttrOps::release`].
    pub fn open(self: &Arc<Self>, flags: OpenFlags) -> Result<OpenFile, Errno> {
        OpenFile::open(self, flags)
    }

    pub(crate) fn attr_node(&self) -> Option<&AttrNode> {
        match &self.body {
            Body::Attr(a) => Some(a),
            _ => None,
        }
    }

    pub(crate) fn children(&self) -> Option<&RwLock<BTreeMap<Box<str>, NodeRef>>> {
        match &self.body {
            Body::Dir(c) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// `kernfs_get_active`: increment unless negative. Lock-free,
    /// allocation-free.
    #[inline]
    pub(crate) fn get_active(&self) -> Option<ActiveRef<'_>> {
        let mut v = self.active.load(Ordering::Relaxed);
        loop {
            if v < 0 {
                return None;
            }
            match self.active.compare_exchange_weak(
                v,
                v.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(ActiveRef { node: self }),
                Err(now) => v = now,
            }
        }
    }

    /// `kernfs_put_active`: the last reference of a deactivated node wakes
    /// the drainers (the only time this takes a lock).
    #[inline]
    fn put_active(&self) {
        let prev = self.active.fetch_sub(1, Ordering::Release);
        if prev.wrapping_sub(1) == DEACTIVATED_BIAS {
            self.shared.wake_drainers();
        }
    }

    /// `kernfs_activate_one`. Call under the tree mutex.
    pub(crate) fn activate_one(&self) {
        if self.removed.load(Ordering::Relaxed) || self.activated.load(Ordering::Relaxed) {
            return;
        }
        self.activated.store(true, Ordering::Relaxed);
        // Adds -DEACTIVATED_BIAS (2^31, wrapping): the count becomes the
        // number of references in flight, >= 0.
        self.active.fetch_sub(DEACTIVATED_BIAS, Ordering::Release);
    }

    /// First step of removal: mark removed, deactivate. Call under the tree
    /// mutex. Idempotent.
    pub(crate) fn deactivate_for_removal(&self) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.activated.load(Ordering::Relaxed) {
            self.active.fetch_add(DEACTIVATED_BIAS, Ordering::SeqCst);
        }
    }

    /// `kernfs_drain`, active half: waits until every active reference taken
    /// before deactivation is put. Call with no lock held, after
    /// [`deactivate_for_removal`](Self::deactivate_for_removal).
    pub(crate) fn drain_active(&self) {
        let (m, cv) = self.shared.drainers();
        let mut g = lock(m);
        while self.active.load(Ordering::Acquire) != DEACTIVATED_BIAS {
            g = wait(cv, g);
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind())
            .field("mode", &format_args!("{:o}", self.mode))
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

/// An active reference (RAII): while held, the node cannot finish removal,
/// so its operations may be called.
pub(crate) struct ActiveRef<'a> {
    node: &'a Node,
}

impl Drop for ActiveRef<'_> {
    #[inline]
    fn drop(&mut self) {
        self.node.put_active();
    }
}

/// Debug-build tracking of the node whose callback the current thread runs,
/// to catch `remove()` of a subtree from inside one of its own callbacks
/// (which would wait for itself forever). Compiled out of release builds and
/// of the model build (where shuttle threads share one OS thread).
pub(crate) mod callback {
    #[cfg(all(debug_assertions, not(test)))]
    mod imp {
        use std::cell::Cell;

        thread_local! {
            static CURRENT: Cell<u64> = const { Cell::new(0) };
        }

        pub(crate) struct Scope(u64);

        impl Scope {
            pub(crate) fn enter(id: u64) -> Scope {
                Scope(CURRENT.with(|c| c.replace(id)))
            }
        }

        impl Drop for Scope {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }

        pub(crate) fn current() -> u64 {
            CURRENT.with(Cell::get)
        }
    }

    #[cfg(not(all(debug_assertions, not(test))))]
    mod imp {
        pub(crate) struct Scope;

        impl Scope {
            #[inline(always)]
            pub(crate) fn enter(_id: u64) -> Scope {
                Scope
            }
        }

        #[inline(always)]
        pub(crate) fn current() -> u64 {
            0
        }
    }

    pub(crate) use imp::{current, Scope};
}
