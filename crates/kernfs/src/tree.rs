//! The tree (`struct kernfs_root` and `fs/kernfs/dir.c`): creation, naming,
//! activation, lookup and removal.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::file::{drain_open_files, OpenNode};
use crate::node::{callback, AttrNode, Body, Node, NodeRef};
use crate::sync::rcu::{Domain, RcuPtr};
use crate::sync::{lock, read, write, AtomicU64, Condvar, Mutex, MutexGuard, Ordering, RwLock, WaitWord};
use crate::{Attr, Errno};

/// Longest node name (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// Longest symlink target (`PATH_MAX` without the NUL).
const TARGET_MAX: usize = 4095;

/// State shared by the tree and every node of it (nodes hold an `Arc` of
/// it, the tree's handle does too; it never points back at nodes).
pub(crate) struct TreeShared {
    /// Reclamation domain of the open nodes.
    pub(crate) rcu: Domain<OpenNode>,
    /// The tree-wide notify generation.
    pub(crate) generation: WaitWord,
    /// `root->deactivate_waitq`: drainers wait here for active references.
    drain_lock: Mutex<()>,
    drain_cv: Condvar,
    /// `kernfs_open_file_mutex`, hashed by node id (`kernfs_open_file_mutex_ptr`).
    open_locks: Box<[Mutex<()>]>,
    open_lock_shift: u32,
}

/// Proof of holding a node's hashed open-file mutex.
pub(crate) struct OpenLock<'a> {
    _guard: MutexGuard<'a, ()>,
}

impl TreeShared {
    fn new() -> TreeShared {
        // As NR_KERNFS_LOCK_BITS: 2 * log2(min(CPUs, 32)) bits, at least 1.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(32);
        let bits = (2 * cpus.ilog2()).max(1);
        TreeShared {
            rcu: Domain::new(),
            generation: WaitWord::new(0),
            drain_lock: Mutex::new(()),
            drain_cv: Condvar::new(),
            open_locks: (0..1usize << bits).map(|_| Mutex::new(())).collect(),
            open_lock_shift: 64 - bits,
        }
    }

    /// Takes the hashed open-file mutex of node `id`.
    pub(crate) fn open_lock(&self, id: u64) -> OpenLock<'_> {
        // Fibonacci hashing: consecutive ids spread over the table.
        let slot = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.open_lock_shift) as usize;
        let m = &self.open_locks[slot % self.open_locks.len()];
        OpenLock { _guard: lock(m) }
    }

    pub(crate) fn drainers(&self) -> (&Mutex<()>, &Condvar) {
        (&self.drain_lock, &self.drain_cv)
    }

    #[cold]
    pub(crate) fn wake_drainers(&self) {
        // Taking the lock orders this wakeup after a drainer's check of the
        // count (it checks under the lock), so it cannot be lost.
        drop(lock(&self.drain_lock));
        self.drain_cv.notify_all();
    }
}

/// One attribute tree (`struct kernfs_root`).
///
/// Dropping the last handle removes the whole tree as [`Kernfs::remove`] of
/// the root does (draining open files: `release` is called for each), like
/// `kernfs_destroy_root`.
pub struct Kernfs {
    shared: Arc<TreeShared>,
    root: NodeRef,
    /// `kernfs_rwsem`, writer side: serializes structural changes (create,
    /// activate, the marking and unlinking steps of remove).
    tree: Mutex<()>,
    /// Active and inactive nodes by id; removal unlinks.
    by_id: RwLock<HashMap<u64, NodeRef>>,
    next_id: AtomicU64,
}

fn validate_name(name: &str) -> Result<(), Errno> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(libc::EINVAL);
    }
    if name.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

impl Kernfs {
    /// A new tree holding only its root directory (id 1, mode 0755, active).
    /// Allocates.
    pub fn new() -> Arc<Kernfs> {
        let shared = Arc::new(TreeShared::new());
        let root = Arc::new(Node::new(
            shared.clone(),
            1,
            "",
            0o755,
            None,
            Body::Dir(RwLock::new(Default::default())),
        ));
        root.activate_one();
        let by_id = RwLock::new(HashMap::from([(1, root.clone())]));
        Arc::new(Kernfs { shared, root, tree: Mutex::new(()), by_id, next_id: AtomicU64::new(2) })
    }

    /// The root directory. Any context.
    pub fn root(&self) -> NodeRef {
        self.root.clone()
    }

    /// Creates a directory, deactivated (see [`activate`](Self::activate)).
    /// Errors: `EINVAL` for a bad name (empty, `.`, `..`, containing `/` or
    /// NUL) or a parent of another tree, `ENAMETOOLONG` past 255 bytes,
    /// `ENOTDIR` if `parent` is not a directory, `ENOENT` if it is removed,
    /// `EEXIST` if the name is taken (by an active node or not). Takes the
    /// tree mutex; allocates. Callable from `show`/`store`/`open` callbacks,
    /// not from `release`.
    pub fn create_dir(&self, parent: &NodeRef, name: &str, mode: u32) -> Result<NodeRef, Errno> {
        self.add(parent, name, mode, Body::Dir(RwLock::new(Default::default())))
    }

    /// Creates an attribute, deactivated. Errors as for
    /// [`create_dir`](Self::create_dir). Same context.
    pub fn create_attr(&self, parent: &NodeRef, name: &str, mode: u32, attr: Attr) -> Result<NodeRef, Errno> {
        self.add(parent, name, mode, Body::Attr(AttrNode { attr, open: RcuPtr::null() }))
    }

    /// Creates a symlink (mode 0777) pointing at `target`, deactivated.
    /// Errors as for [`create_dir`](Self::create_dir), plus `EINVAL` for an
    /// empty target or one containing NUL and `ENAMETOOLONG` past 4095 bytes.
    /// Same context.
    pub fn create_symlink(&self, parent: &NodeRef, name: &str, target: &str) -> Result<NodeRef, Errno> {
        if target.is_empty() || target.contains('\0') {
            return Err(libc::EINVAL);
        }
        if target.len() > TARGET_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        self.add(parent, name, 0o777, Body::Symlink(target.into()))
    }

    fn add(&self, parent: &NodeRef, name: &str, mode: u32, body: Body) -> Result<NodeRef, Errno> {
        validate_name(name)?;
        if !Arc::ptr_eq(&parent.shared, &self.shared) {
            return Err(libc::EINVAL);
        }
        let children = parent.children().ok_or(libc::ENOTDIR)?;
        let _tree = lock(&self.tree);
        if parent.is_removed() {
            return Err(libc::ENOENT);
        }
        let node = {
            let mut ch = write(children);
            if ch.contains_key(name) {
                return Err(libc::EEXIST);
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let node = Arc::new(Node::new(self.shared.clone(), id, name, mode, Some(parent.clone()), body));
            ch.insert(name.into(), node.clone());
            node
        };
        write(&self.by_id).insert(node.id(), node.clone());
        Ok(node)
    }

    /// `kernfs_activate`: makes `node` and every node below it that is not
    /// removed visible to lookup and openable. Activate the top of a subtree
    /// after populating it, so it appears at once. Takes the tree mutex;
    /// allocates. Same context as [`create_dir`](Self::create_dir).
    pub fn activate(&self, node: &NodeRef) {
        if !Arc::ptr_eq(&node.shared, &self.shared) {
            debug_assert!(false, "kernfs: activate() of a node of another tree");
            return;
        }
        let _tree = lock(&self.tree);
        for n in subtree(node) {
            n.activate_one();
        }
    }

    /// `kernfs_remove`: removes `node` and everything below it.
    ///
    /// Steps: under the tree mutex, mark every node of the subtree removed
    /// and deactivate it (lookups, opens and new operations on open files
    /// fail from here on); then, holding no lock, deepest nodes first, wait
    /// until the operations in flight on each node (its active references)
    /// have finished, and drain its open files (each is marked drained and
    /// its `release` called once; later operations on it fail `ENODEV`,
    /// pollers are woken with `POLLERR|POLLPRI`); finally unlink the nodes
    /// under the tree mutex and bump the notify generation if a file was
    /// drained. Returns when all of that is done, also if another `remove`
    /// of an overlapping subtree runs concurrently.
    ///
    /// Blocks; allocates. Must NOT be called from an [`AttrOps`] callback of
    /// a node in the subtree (it would wait for its own active reference:
    /// a deadlock, caught by a `debug_assert` in debug builds), nor from any
    /// `release` callback. From other callbacks it is fine.
    ///
    /// [`AttrOps`]: crate::AttrOps
    pub fn remove(&self, node: &NodeRef) {
        if !Arc::ptr_eq(&node.shared, &self.shared) {
            debug_assert!(false, "kernfs: remove() of a node of another tree");
            return;
        }
        let doomed = {
            let _tree = lock(&self.tree);
            let doomed = subtree(node);
            for n in &doomed {
                n.deactivate_for_removal();
            }
            doomed
        };
        let current = callback::current();
        debug_assert!(
            current == 0 || doomed.iter().all(|n| n.id() != current),
            "kernfs: remove() called from a callback of node {current} inside the removed subtree (deadlock)"
        );
        let mut drained_files = false;
        for n in doomed.iter().rev() {
            n.drain_active();
            drained_files |= drain_open_files(n);
        }
        {
            let _tree = lock(&self.tree);
            for n in doomed.iter().rev() {
                if let Some(children) = n.parent().as_deref().and_then(Node::children) {
                    let mut ch = write(children);
                    if ch.get(n.name()).is_some_and(|c| Arc::ptr_eq(c, n)) {
                        ch.remove(n.name());
                    }
                }
            }
            let mut ids = write(&self.by_id);
            for n in &doomed {
                ids.remove(&n.id());
            }
        }
        if drained_files {
            self.shared.generation.bump();
        }
    }

    /// The active child `name` of the active directory `parent`. Takes the
    /// directory's read lock; allocation-free. Any context except under the
    /// tree mutex (never held by callers).
    pub fn lookup(&self, parent: &NodeRef, name: &str) -> Option<NodeRef> {
        if !parent.is_active() {
            return None;
        }
        let children = parent.children()?;
        let ch = read(children);
        ch.get(name).filter(|n| n.is_active()).cloned()
    }

    /// Resolves a `/`-separated path relative to the root (empty components
    /// are skipped; `""` is the root). Active nodes only; symlinks are not
    /// followed. Allocation-free. Same context as [`lookup`](Self::lookup).
    pub fn walk(&self, path: &str) -> Option<NodeRef> {
        let mut cur = self.root.clone();
        if !cur.is_active() {
            return None;
        }
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            cur = self.lookup(&cur, comp)?;
        }
        Some(cur)
    }

    /// The active children of `dir`, sorted by name (bytewise). `ENOTDIR`
    /// for a non-directory, `ENOENT` if `dir` is not active. Allocates.
    pub fn readdir(&self, dir: &NodeRef) -> Result<Vec<NodeRef>, Errno> {
        let children = dir.children().ok_or(libc::ENOTDIR)?;
        if !dir.is_active() {
            return Err(libc::ENOENT);
        }
        let ch = read(children);
        Ok(ch.values().filter(|n| n.is_active()).cloned().collect())
    }

    /// The active node with this id (FUSE inode lookups). Takes the id
    /// table's read lock; allocation-free.
    pub fn node(&self, id: u64) -> Option<NodeRef> {
        read(&self.by_id).get(&id).filter(|n| n.is_active()).cloned()
    }

    /// The tree-wide notify generation, bumped by every [`Node::notify`]
    /// (and by a removal that drained open files). Lock-free.
    pub fn notify_generation(&self) -> u32 {
        self.shared.generation.load()
    }

    /// Blocks until the notify generation differs from `seen` or `timeout`
    /// passes (a futex wait; no polling); returns the current generation.
    /// For the FUSE notifier thread: call with no lock held, never from a
    /// callback.
    pub fn wait_notify(&self, seen: u32, timeout: Duration) -> u32 {
        let deadline = Instant::now().checked_add(timeout);
        self.shared.generation.wait_until(deadline, |g| (g != seen).then_some(g)).unwrap_or_else(|g| g)
    }
}

/// `node` and its descendants, breadth first (so reversed: deepest first).
/// Call under the tree mutex.
fn subtree(node: &NodeRef) -> Vec<NodeRef> {
    let mut out = vec![node.clone()];
    let mut i = 0;
    while let Some(n) = out.get(i).cloned() {
        if let Some(children) = n.children() {
            out.extend(read(children).values().cloned());
        }
        i += 1;
    }
    out
}

impl Drop for Kernfs {
    fn drop(&mut self) {
        let root = self.root.clone();
        self.remove(&root);
    }
}

impl fmt::Debug for Kernfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernfs")
            .field("nodes", &read(&self.by_id).len())
            .field("notify_generation", &self.notify_generation())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn names() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert_eq!(validate_name(bad), Err(libc::EINVAL), "{bad:?}");
        }
        assert_eq!(validate_name(&"x".repeat(256)), Err(libc::ENAMETOOLONG));
        for good in ["a", "...", "dev-sda", "x".repeat(255).as_str()] {
            assert_eq!(validate_name(good), Ok(()), "{good:?}");
        }
    }
}
