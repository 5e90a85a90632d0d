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
//! An assembled [`Array`] is immutable (read-only arrays) and `Sync`: reads
//! from many threads proceed in parallel with no lock. The only lock is the
//! leaf mutex of [`state::StateMachine`] (no other lock is taken under it),
//! hence no lock order.
//!
//! ## Modules
//! * [`superblock`]: `struct mdp_superblock_1`: locate, validate, decode, encode.
//! * [`examine`]: the superblock in `mdadm --examine`'s words.
//! * [`create`]: `mdadm --create`'s checks and superblocks for new arrays.
//! * [`assemble`]: md's assembly rules (freshest events, stale/faulty members,
//!   slots, refusal of unsupported features).
//! * [`personality`]: the layouts of every level and degraded reads.
//! * [`array`]: the assembled array.
//! * [`state`]: md's `array_state` machine and the write-pending/active/clean
//!   handshake with an external metadata manager.

pub mod array;
pub mod assemble;
pub mod create;
pub mod examine;
pub mod personality;
pub mod state;
pub mod superblock;
pub mod synth;
pub mod sysfs;

pub use array::Array;
pub use assemble::{assemble, assemble_writable, AssembleError, AssembleOptions, Assembly};
pub use personality::{Geometry, Level, Location, MemberRead, Personality};
pub use superblock::{Superblock, SuperblockError};
