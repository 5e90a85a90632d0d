//! # blockio — the only layer that touches member file descriptors
//!
//! ## Responsibility boundary
//! `blockio` owns the open file descriptor of every member device (a regular
//! image file or a block device): opening it (`O_DIRECT` where the
//! filesystem does direct I/O, buffered with `fdatasync` at flush where it
//! does not), discovering its size and alignment rules, and moving bytes
//! between it and buffers at absolute byte offsets. It knows nothing of md:
//! superblocks, data offsets and layouts live in the `md` crate, which
//! addresses members through this crate only.
//!
//! * [`member`]: [`Member`], its I/O mode ([`IoMode`]) and [`Alignment`],
//!   and a positional convenience API (`read_exact_at`, `write_all_at`,
//!   `flush`) for buffered members, which the read path uses today.
//! * [`pool`]: [`BufPool`], the aligned buffers every engine I/O uses,
//!   allocated once (optionally on huge pages).
//! * [`dio`]: the persistent per-member I/O descriptor (seed 002).
//! * [`engine`]: [`Engine`] and per-thread [`Queue`]s, with two engines of
//!   identical semantics: io_uring ([`uring`]) and sync `pread`/`pwrite`.
//! * [`fault`]: fault injection, attached to a member at open.
//! * [`safety`]: `mlockall` and `PR_SET_IO_FLUSHER` for daemons in the
//!   I/O path.
//!
//! ## Allocation
//! Everything is allocated at open/set-up: members (with their descriptor),
//! the pool, each queue (its ring, registrations, op tables). From then on
//! engine I/O allocates nothing, except one descriptor per slot miss (a
//! second I/O in flight on the same member), freed when that I/O ends.
//! Guarded by `tests/alloc.rs` (counting global allocator).
//!
//! ## Synchronization model
//! A [`Member`] is `Sync`: positional I/O on a shared descriptor, its
//! descriptor slot an atomic pointer. The pool's free list is a bounded
//! lock-free queue. A [`Queue`] belongs to one thread. The fault injector
//! has one mutex (its plan and undo log), taken alone, never while holding
//! anything else of this crate. Lock order: just that one.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod dio;
pub mod engine;
pub mod fault;
pub mod member;
pub mod pool;
pub mod safety;
pub mod uring;

pub use dio::OpKind;
pub use engine::{Completion, Engine, EngineKind, Op, Queue};
pub use member::{Access, Alignment, Direct, IoMode, Kind, Member, MemberOptions, SECTOR};
pub use pool::{BufPool, IoBuf, PoolConfig};
