//! # pagecache — address spaces, folios, and the buffered write path
//!
//! ## Responsibility boundary
//! This crate owns cached bytes: [`AddressSpace`]s of [`Folio`]s (a
//! power-of-two size per mapping, 4 KiB..=1 MiB) with the kernel's
//! locked/uptodate/dirty/writeback state, lookup by folio index (sharded:
//! no global lock), eviction of clean unlocked folios under a memory limit,
//! invalidation and truncation; the address-space operations
//! ([`AddressSpaceOps`]: `read_folio`, `write_begin`, `write_end`,
//! `writepages`) with an in-memory and a block-backed family; the write
//! loop [`generic_perform_write`] over [`Source`]s (memory and cache
//! ranges, including the mapping being written) and [`copy_range`] on top
//! of it; writeback by flusher threads, dirty throttling, `fsync` and the
//! errseq rule. It knows nothing of md: md's raid4/5/6 stripe cache
//! (`md::stripe`) is one of its mappings, `BlockOps` over the members.
//!
//! ## Synchronization model
//! Locks, in the only order they are ever nested:
//! 0. a mapping's **resize** lock (`i_rwsem` for size changes): shared by
//!    the write loop on its destination, exclusive by `truncate`; taken
//!    with no folio lock held, one mapping's at a time;
//! 1. a **folio lock** (a state bit with its own sleep queue). At most one
//!    is *waited for* at a time, and only with no other folio lock held;
//!    a second folio is taken only with `trylock` (the copy loop), so no
//!    two threads can wait on each other through folio locks. The one
//!    exception is writeback, which waits for folio locks of one mapping
//!    in ascending index order while holding lower ones (a run being
//!    built); no other holder of a folio lock waits for anything but that
//!    folio's own writeback, which needs no lock to end;
//! 2. a mapping's **shard** lock (index → folio map) or its **dirty set**
//!    lock, taken under a folio lock or alone, never one under the other;
//! 3. leaf locks taken alone: the throttle queue, the flusher kick, the
//!    cache's mapping registry, a folio's sleep-queue mutex.
//!
//! Folio bytes are written only under the folio lock with writeback ended
//! (stable pages) and read under the lock or by writeback (see [`folio`]).
//! Reference model: the shard map holds one `Arc` per cached folio; users
//! hold more while they work, and eviction takes only folios nobody else
//! holds.
//!
//! ## Allocation
//! Folios are allocated when first cached; a [`Source`] allocates its
//! bounce page when made. The write loop itself allocates nothing.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod folio;
pub mod mapping;
pub mod ops;
mod sync;
pub mod write;
pub mod writeback;

#[cfg(test)]
mod models;

pub use folio::{Folio, LockedFolio};
pub use mapping::{AddressSpace, CacheConfig, PageCache, MAX_FOLIO, PAGE_SIZE};
pub use ops::{AddressSpaceOps, Backing, BlockOps, Errno, FileBacking, MemOps};
pub use write::{copy_range, generic_perform_write, write_at, Segment, Source};
pub use writeback::{Throttle, WbErrCursor};
