//! Engines: how I/O reaches the members. Two with identical semantics,
//! chosen per array: [`EngineKind::Uring`] (io_uring, per-thread rings with
//! the members' descriptors and the whole buffer pool registered once,
//! fixed-buffer reads and writes, batched submission) and
//! [`EngineKind::Sync`] (plain `pread`/`pwrite`/`fdatasync`).
//!
//! An [`Engine`] is shared by the threads of an array; each thread makes its
//! own [`Queue`] (its ring, for io_uring) with [`Engine::queue`]. A queue
//! takes owned [`Op`]s (each carrying its pool buffer), runs them, and hands
//! back [`Completion`]s; [`Queue::run`] does one op start to finish.
//!
//! Semantics, both engines:
//! * offset and length multiples of the member's
//!   [`Alignment::offset`](crate::Alignment), the buffer range inside the
//!   op's [`IoBuf`] and from the queue's pool: else `EINVAL`; a range past
//!   the member's end: `ENXIO`; a write to a read-only member: `EROFS`. A
//!   refused op completes with its error and touches nothing.
//! * An op completes only when all its bytes moved (a short transfer is
//!   resumed) or with the error that stopped it.
//! * [`Queue::flush`] makes every write completed before it durable
//!   (`fdatasync`, in direct mode too: the device may cache), and reports
//!   the member's error; [`Queue::flush_all`] flushes every member and
//!   reports the first error, having tried them all.
//! * Every op takes its member's persistent I/O descriptor
//!   ([`crate::dio`]) for its time in flight.
//!
//! Allocation: after [`Engine::queue`] returns, `push`, `submit`, `wait`,
//! `pop`, `run` and `flush` allocate nothing, except one descriptor per
//! slot miss (two ops in flight on one member at once).
//!
//! Synchronization: a `Queue` belongs to one thread (`Send`, not `Sync`).
//! The engine's shared parts (members, pool) are lock-free. No lock.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use crate::dio::{Dio, OpKind};
use crate::member::Member;
use crate::pool::{BufPool, IoBuf};

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// `pread`/`pwrite`/`fdatasync`, one op at a time.
    Sync,
    /// io_uring with registered files and fixed buffers.
    #[default]
    Uring,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Sync => "sync",
            EngineKind::Uring => "io_uring",
        })
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(EngineKind::Sync),
            "uring" | "io_uring" => Ok(EngineKind::Uring),
            _ => Err(format!("unknown I/O engine {s:?} (sync or uring)")),
        }
    }
}

/// One I/O: `len` bytes at `offset` on member `member`, to or from
/// `buf[start..start + len]`.
#[derive(Debug)]
pub struct Op {
    pub kind: OpKind,
    /// Index of the member in the engine.
    pub member: usize,
    /// Byte offset on the member.
    pub offset: u64,
    pub buf: IoBuf,
    /// Where in `buf` the data starts.
    pub start: usize,
    pub len: usize,
    /// The caller's, returned with the completion.
    pub tag: u64,
}

impl Op {
    /// A read of `len` bytes at `offset` into the start of `buf`.
    pub fn read(member: usize, offset: u64, buf: IoBuf, len: usize) -> Op {
        Op { kind: OpKind::Read, member, offset, buf, start: 0, len, tag: 0 }
    }

    /// A write of the first `len` bytes of `buf` at `offset`.
    pub fn write(member: usize, offset: u64, buf: IoBuf, len: usize) -> Op {
        Op { kind: OpKind::Write, member, offset, buf, start: 0, len, tag: 0 }
    }
}

/// A finished op and its result: `Ok` when every byte moved, else the errno.
#[derive(Debug)]
pub struct Completion {
    pub op: Op,
    pub result: Result<(), i32>,
}

pub(crate) struct Shared {
    pub(crate) members: Vec<Member>,
    pub(crate) pool: BufPool,
}

/// The members of an array and their buffer pool, served by one engine.
#[derive(Clone)]
pub struct Engine {
    kind: EngineKind,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("kind", &self.kind)
            .field("members", &self.shared.members.len())
            .finish()
    }
}

impl Engine {
    /// An engine of `kind` over `members` (at most 65536) using `pool`.
    pub fn new(kind: EngineKind, members: Vec<Member>, pool: BufPool) -> io::Result<Engine> {
        if members.len() > 1 << 16 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many members for one engine"));
        }
        Ok(Engine { kind, shared: Arc::new(Shared { members, pool }) })
    }

    /// Which engine.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The members, by index.
    pub fn members(&self) -> &[Member] {
        &self.shared.members
    }

    /// The buffer pool.
    pub fn pool(&self) -> &BufPool {
        &self.shared.pool
    }

    /// A queue for the calling thread, with room for `depth` ops in flight
    /// (1..=4096). Allocates (and, for io_uring, makes the ring and
    /// registers files and buffers) here, once.
    pub fn queue(&self, depth: usize) -> io::Result<Queue> {
        let depth = depth.clamp(1, 4096);
        let backend = match self.kind {
            EngineKind::Sync => Backend::Sync,
            EngineKind::Uring => {
                Backend::Uring(Box::new(crate::uring::UringQueue::new(&self.shared, depth)?))
            }
        };
        Ok(Queue {
            shared: Arc::clone(&self.shared),
            backend,
            depth,
            pending: VecDeque::with_capacity(depth),
            done: VecDeque::with_capacity(depth),
        })
    }
}

enum Backend {
    Sync,
    Uring(Box<crate::uring::UringQueue>),
}

/// One thread's queue of I/O to an engine's members.
pub struct Queue {
    /// Declared first so that it is dropped first: the ring goes before the
    /// members and pool it registered (Drop drains it before either).
    backend: Backend,
    shared: Arc<Shared>,
    depth: usize,
    /// Pushed, not yet submitted.
    pending: VecDeque<Op>,
    /// Completed, not yet popped.
    done: VecDeque<Completion>,
}

impl Queue {
    /// Most ops pushed and not yet popped.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Ops pushed and not yet popped (pending, in flight, or done).
    pub fn outstanding(&self) -> usize {
        self.pending.len() + self.in_flight() + self.done.len()
    }

    fn in_flight(&self) -> usize {
        match &self.backend {
            Backend::Sync => 0,
            Backend::Uring(u) => u.in_flight(),
        }
    }

    /// Queue `op` for the next [`submit`](Self::submit); gives it back when
    /// `depth` ops are outstanding. Allocation-free.
    pub fn push(&mut self, op: Op) -> Result<(), Op> {
        if self.outstanding() >= self.depth {
            return Err(op);
        }
        self.pending.push_back(op);
        Ok(())
    }

    /// Start every pushed op (io_uring: one `io_uring_enter` for the
    /// batch; sync: nothing, ops run in [`wait`](Self::wait)).
    /// Allocation-free but for descriptor slot misses.
    pub fn submit(&mut self) -> io::Result<()> {
        match &mut self.backend {
            Backend::Sync => Ok(()),
            Backend::Uring(u) => u.submit(&self.shared, &mut self.pending, &mut self.done),
        }
    }

    /// Submit, then block until at least `min` completions (at most the
    /// number outstanding) are ready to [`pop`](Self::pop).
    pub fn wait(&mut self, min: usize) -> io::Result<()> {
        let min = min.min(self.outstanding());
        // Each backend submits what is pending itself (io_uring: in the same
        // io_uring_enter that waits).
        match &mut self.backend {
            Backend::Sync => {
                while self.done.len() < min {
                    let Some(op) = self.pending.pop_front() else { break };
                    let result = sync_op(&self.shared, &op);
                    self.done.push_back(Completion { op, result });
                }
                Ok(())
            }
            Backend::Uring(u) => u.wait(&self.shared, min, &mut self.pending, &mut self.done),
        }
    }

    /// The oldest ready completion, if any (never blocks).
    pub fn pop(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }

    /// Run one op start to finish (other outstanding ops may complete too
    /// and stay queued). Fails with the op back when the queue is full.
    /// Allocation-free but for descriptor slot misses.
    pub fn run(&mut self, op: Op) -> Result<Completion, Op> {
        // Each outstanding op owns a distinct pool buffer: its index names
        // the op.
        let id = op.buf.index();
        self.push(op)?;
        let mut failures = 0u32;
        loop {
            if let Some(pos) = self.done.iter().position(|c| c.op.buf.index() == id) {
                if let Some(c) = self.done.remove(pos) {
                    return Ok(c);
                }
            }
            let want = self.done.len() + 1;
            if let Err(e) = self.wait(want) {
                // The engine itself failed; an op not yet started completes
                // with that error, one in flight is waited for again (the
                // kernel owns its buffer), backing off after a while.
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                if let Some(pos) = self.pending.iter().position(|o| o.buf.index() == id) {
                    if let Some(op) = self.pending.remove(pos) {
                        return Ok(Completion { op, result: Err(errno) });
                    }
                }
                failures = failures.saturating_add(1);
                if failures > 16 {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    }

    /// Make every write to `member` completed so far durable; its error if
    /// that fails. Allocation-free.
    pub fn flush(&mut self, member: usize) -> Result<(), i32> {
        let m = self.shared.members.get(member).ok_or(libc::EINVAL)?;
        if let Some(f) = m.faults() {
            f.on_flush()?;
        }
        let r = match &mut self.backend {
            Backend::Sync => {
                // SAFETY: fdatasync on a descriptor the member keeps open.
                if unsafe { libc::fdatasync(m.file().as_raw_fd()) } < 0 {
                    Err(last_errno())
                } else {
                    Ok(())
                }
            }
            Backend::Uring(u) => u.flush(&self.shared, member, &mut self.done),
        };
        if r.is_ok() {
            if let Some(f) = m.faults() {
                f.flushed();
            }
        }
        r
    }

    /// [`flush`](Self::flush) every member; all are tried, the first error
    /// (member index, errno) is returned.
    pub fn flush_all(&mut self) -> Result<(), (usize, i32)> {
        let mut first = Ok(());
        for i in 0..self.shared.members.len() {
            if let Err(e) = self.flush(i) {
                if first.is_ok() {
                    first = Err((i, e));
                }
            }
        }
        first
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Ops in flight own kernel references to their buffers: wait them
        // out before the buffers go back to the pool.
        if let Backend::Uring(u) = &mut self.backend {
            u.drain(&self.shared);
        }
    }
}

pub(crate) fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Checks an op against its member and pool; the errno it completes with
/// if refused. Allocation-free.
pub(crate) fn check_op(shared: &Shared, op: &Op) -> Result<(), i32> {
    let m = shared.members.get(op.member).ok_or(libc::EINVAL)?;
    if !op.buf.is_from(&shared.pool) || op.start.checked_add(op.len).is_none_or(|end| end > op.buf.len()) {
        return Err(libc::EINVAL);
    }
    let addr = op.buf.as_ptr() as usize + op.start;
    m.check_io(op.kind == OpKind::Write, op.offset, op.len, addr)?;
    if let Some(f) = m.faults() {
        f.on_io(op.kind, m.file(), op.offset, op.len)?;
    }
    Ok(())
}

/// The sync engine's whole op: check, take the descriptor, move every
/// byte (resuming short transfers), give the descriptor back.
fn sync_op(shared: &Shared, op: &Op) -> Result<(), i32> {
    check_op(shared, op)?;
    let m = &shared.members[op.member];
    let mut dio = m.slot.take();
    *dio = Dio::for_op(op);
    let fd = m.file().as_raw_fd();
    while dio.done < dio.len {
        let addr = dio.addr + dio.done;
        let left = dio.len - dio.done;
        let off = dio.offset + dio.done as u64;
        let off = libc::off_t::try_from(off).map_err(|_| libc::EINVAL)?;
        // SAFETY: addr..addr+left lies inside the op's buffer (checked by
        // check_op), which the op owns for the call.
        let n = unsafe {
            match dio.kind {
                OpKind::Read => libc::pread(fd, addr as *mut libc::c_void, left, off),
                OpKind::Write => libc::pwrite(fd, addr as *const libc::c_void, left, off),
            }
        };
        if n < 0 {
            let e = last_errno();
            if e == libc::EINTR {
                continue;
            }
            dio.error = e;
            break;
        }
        if n == 0 {
            // End of file inside the member's size: the file shrank.
            dio.error = libc::EIO;
            break;
        }
        dio.done += n as usize;
    }
    match dio.error {
        0 => Ok(()),
        e => Err(e),
    }
}
