//! # kernfs — md's attribute tree (Linux `fs/kernfs`) in userspace
//!
//! ## Responsibility boundary
//! `kernfs` owns the tree of directories, attributes and symlinks through
//! which md is controlled and observed (`md/array_state`,
//! `md/dev-sda/state`, …), and everything the kernel's `fs/kernfs` does for
//! them: naming, deactivated creation and activation, lookup, removal that
//! waits for operations in flight and drains open files, open files with
//! their show/store buffers (including md's `PREALLOC` write buffers, so
//! that a metadata manager's writes allocate nothing), and poll/notify.
//! It knows nothing of md's attributes themselves (`md` implements
//! [`AttrOps`]) nor of FUSE (`export` maps nodes to inodes by
//! [`Node::id`], checks permissions against [`Node::mode`], and forwards
//! reads, writes and polls to [`OpenFile`]; its notifier thread sleeps in
//! [`Kernfs::wait_notify`]).
//!
//! ## Reference model
//! * [`NodeRef`] (`Arc<Node>`) is the kernel's `kernfs_get/put`: it keeps a
//!   node's memory alive, never its visibility. The tree holds each linked
//!   node from its parent's child map and from the id table; a node holds
//!   its parent (even after removal, as the kernel does). Removal unlinks
//!   every node of the subtree, so no cycle survives it; dropping the last
//!   [`Kernfs`] handle removes the whole tree.
//! * An **active reference** (`kernfs_get_active`/`kernfs_put_active`) is
//!   what every operation on a node's callbacks holds. It is a count biased
//!   by `i32::MIN` while the node is deactivated: nodes are created
//!   deactivated, [`Kernfs::activate`] removes the bias, getting a
//!   reference increments the count unless it is negative, and removal
//!   re-adds the bias and waits (condition variable, no polling) until the
//!   count falls back to exactly the bias.
//! * The **open node** (`kernfs_open_node`) of an attribute exists while the
//!   attribute has open files: it holds the `event` counter that
//!   [`Node::notify`] bumps, the poll wait word, and the list of open files
//!   for the drain. It has no reference count. It is published through an
//!   RCU pointer (`crossbeam-epoch`): `notify` reads it in an epoch read
//!   section without any lock; writers (first open, last close) hold the
//!   node's hashed open-file mutex; the last close unlinks it and defers its
//!   destruction until every read section that could have seen it has
//!   ended. An open file still on the list may use it without a read
//!   section, because the list is non-empty while it is on it. Hence
//!   `notify` never takes a lock and never touches freed memory. As in the
//!   kernel, the event counter lives in the open node and restarts at 1
//!   whenever a first file is opened: a new open file has seen event 0, so
//!   polling before the first read reports `POLLPRI`.
//! * An [`OpenFile`] is the kernel's `kernfs_open_file` plus its `struct
//!   file`: it owns a page for `show` (allocated at open), the prealloc
//!   write buffer if any, and its place on the open list. `AttrOps::release`
//!   runs exactly once per successful open: at close, or when removal
//!   drains the file first (`of->released`).
//!
//! ## Synchronization model
//! Lock order, outermost first; a lock is only taken while holding locks
//! above it on its own path (gVisor's kernfs style). Nodes of the tree that
//! are not nested are never held together. "[active]" is an active
//! reference: not a lock, but removal waits for it like one.
//!
//! ```text
//! OpenFile prealloc mutex (of->prealloc_mutex)       write() of a prealloc attribute
//!   OpenFile state mutex (of->mutex)                  read(), write()
//!     [active] of the file's node
//!       AttrOps::show / seq_show / store            may take anything below this line, and the
//!                                                   two mutexes above of *other* open files
//! [active] of the node being opened                  Node::open()
//!   node's hashed open-file mutex                    link on the open list (also close, drain)
//!     OpenNode::files mutex                          leaf, uncontended
//!     AttrOps::release                               takes no kernfs lock, opens/closes nothing
//!   AttrOps::open                                    after the hashed mutex is dropped
//! Kernfs tree mutex (kernfs_rwsem, writer side)      create, activate, remove's mark/unlink steps
//!   directory children RwLock                        lookup()/readdir() take only this
//!   Kernfs id table RwLock                           node() takes only this
//! drain mutex + condvar (root->deactivate_waitq)     leaf: last put_active's wakeup, drain wait
//! ```
//!
//! Not locks: [`Node::notify`] is an RCU read section plus atomic increments
//! (a futex wake only when somebody sleeps); [`OpenFile::poll`] is atomic
//! loads; [`OpenFile::poll_wait`] and [`Kernfs::wait_notify`] sleep on futex
//! words holding nothing. [`Kernfs::remove`] holds no lock while it waits
//! for active references or drains, so a callback of one subtree may create
//! and remove nodes of another. As in the kernel, a callback removing a
//! subtree that contains its own node waits for itself (a deadlock,
//! `debug_assert`ed in debug builds; defer such removals to another
//! thread), and two callbacks removing each other's subtrees deadlock.
//!
//! Poisoned locks are recovered, never turned into panics: every lock here
//! guards state that each operation re-validates.
//!
//! ## Allocation
//! Allocation-free: [`Node::notify`] (after the thread's first RCU read
//! section), [`OpenFile::write`] of a prealloc attribute, [`OpenFile::read`]
//! of a non-seq attribute (given an allocation-free `show`),
//! [`OpenFile::poll`], [`OpenFile::poll_wait`], [`Kernfs::lookup`],
//! [`Kernfs::walk`], [`Kernfs::node`]. Everything that creates, opens,
//! closes or removes allocates.
//!
//! ## Testing
//! All locks, atomics, futex waits and RCU operations go through the
//! crate-private `sync` facade, which the crate's unit-test build maps to
//! `shuttle`; the concurrency models (module `models`, unit tests) run the
//! real `Node`/`OpenFile`/`Kernfs` code under shuttle's randomized and PCT
//! schedulers with a checking RCU that fails on any use after a grace
//! period. Functional and allocation tests are integration tests.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod bench;
mod file;
#[cfg(test)]
mod models;
mod node;
mod sync;
mod tree;

pub use file::{OpenFile, OpenFlags, ShowBuf};
pub use node::{Attr, AttrOps, Node, NodeKind, NodeRef};
pub use tree::Kernfs;

/// A positive `libc` errno value (`libc::EINVAL`, …).
pub type Errno = i32;

/// The page size of attribute values and writes.
pub const PAGE_SIZE: usize = 4096;
