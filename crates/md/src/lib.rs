//! # md — Linux md software RAID, in userspace
//!
//! ## Responsibility boundary
//! `md` owns everything that is md's own: the v1.x superblock (byte-compatible
//! with mdadm and the kernel), assembly of members into an array by md's
//! rules, and the personalities (raid0/1/4/5/6/10 with md's layouts) that map
//! array bytes onto members and rebuild missing data from redundancy. Member
//! bytes are reached only through `blockio`; the export layers above reach the
//! array only through [`Array`].
//!
//! ## Synchronization model
//! An assembled [`Array`] is `Sync`: reads from many threads proceed in
//! parallel with no lock. Writes take, in this order and never the other
//! way round:
//! 1. a **stripe lock** of [`stripe::StripeCache`] (raid4/5/6 only; one at a
//!    time, for one stripe row's update),
//! 2. **folio locks** of that row's cached folios (`pagecache`'s rule: the
//!    first waited for, the rest only tried),
//! 3. the leaf queue lock of [`fanout::WritePool`] (member writes in
//!    parallel).
//!
//! The mutex of [`state::StateMachine`] is a leaf taken alone (callers run
//! `write_start` before and `write_end` after an array write, holding none
//! of the above).
//!
//! ## Modules
//! * [`superblock`]: `struct mdp_superblock_1`: locate, validate, decode, encode.
//! * [`examine`]: the superblock in `mdadm --examine`'s words.
//! * [`create`]: `mdadm --create`'s checks and superblocks for new arrays.
//! * [`assemble`]: md's assembly rules (freshest events, stale/faulty members,
//!   slots, refusal of unsupported features).
//! * [`personality`]: the layouts of every level and degraded reads.
//! * [`array`]: the assembled array: reads, and writes routed by level.
//! * [`repair`]: md's read-error handling: answer from redundancy, rewrite, count, fail.
//! * [`stripe`]: the raid4/5/6 stripe cache (a `pagecache` address space
//!   over member space) and md's full-stripe / read-modify-write /
//!   reconstruct-write / degraded write paths.
//! * [`fanout`]: member writes of one array write, in parallel.
//! * [`bitmap`]: md's internal write-intent bitmap (format, set before writes, lazy clearing).
//! * [`sync`]: md's sync thread: resync, check, repair (`sync_action`).
//! * [`sync_io`]: the sync thread's member I/O: batches read ahead, rebuilt bytes written, O_DIRECT.
//! * [`state`]: md's `array_state` machine and the write-pending/active/clean
//!   handshake with an external metadata manager.

pub mod array;
pub mod assemble;
pub mod bitmap;
pub mod create;
pub mod examine;
pub mod fanout;
pub mod personality;
pub mod repair;
pub mod state;
pub mod stripe;
pub mod superblock;
pub mod sync;
pub mod sync_io;
pub mod synth;
pub mod sysfs;

pub use array::Array;
pub use assemble::{assemble, assemble_writable, AssembleError, AssembleOptions, Assembly};
pub use personality::{Geometry, Level, Location, MemberRead, Personality};
pub use superblock::{Superblock, SuperblockError};
