//! The io_uring engine: one ring per [`Queue`](crate::Queue), that is per
//! thread.
//!
//! ## What it owns
//! A [`UringQueue`] owns its ring, the ring's registrations (every member's
//! descriptor as fixed file `i` = member index `i`; every pool buffer as
//! fixed buffer `i` = [`IoBuf::index`](crate::IoBuf::index)), a handle on
//! the pool (so the registered memory outlives the ring), and the in-flight
//! table: one slot per op the queue can hold, each slot the op (owning its
//! pool buffer) and the member's I/O descriptor ([`crate::dio`]) it took.
//! An SQE's `user_data` is its op's slot index; a flush's carries
//! [`FSYNC`] and a sequence number. Every op has at most one SQE in the
//! ring (queued or in the kernel) at a time: a short transfer is resumed
//! with a new SQE only after the CQE of the previous one.
//!
//! ## Allocation
//! Everything is allocated in [`UringQueue::new`]: the ring (SQ of `depth`
//! rounded up to a power of two, CQ twice that, so it cannot overflow with
//! at most `depth` ops and a flush in flight), the registrations, the
//! in-flight table and its free list (`depth` entries each). `submit`,
//! `wait`, `flush` and `drain` allocate nothing except a descriptor on a
//! [`DioSlot::take`](crate::dio::DioSlot::take) miss; the queues they are
//! handed (`pending`, `done`) never grow past `depth`, their capacity,
//! because the engine never has more than `depth` ops outstanding.
//!
//! ## Synchronization
//! A `UringQueue` belongs to the one thread using its [`Queue`] (it is
//! `Send`, never shared). The ring's SQ and CQ are shared with the kernel
//! through the `io-uring` crate's atomics; everything else is plain data.
//! The members' descriptor slots are lock-free. No lock.
//!
//! [`Queue`]: crate::Queue

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

use crate::dio::{Dio, DioGuard, OpKind};
use crate::engine::{check_op, Completion, Op, Shared};
use crate::pool::BufPool;

/// `user_data` bit of a flush's SQE (op SQEs carry a table index < 4096).
const FSYNC: u64 = 1 << 63;

/// Longest transfer asked of one SQE: a multiple of every power-of-two
/// alignment up to 1 GiB, below the kernel's `MAX_RW_COUNT`; a longer op
/// goes as several SQEs through the short-transfer path.
const MAX_SQE_LEN: usize = 1 << 30;

/// `EINTR`/`EAGAIN` results resubmitted in a row before the op fails with
/// that errno (io_uring retries `EAGAIN` internally: one that reaches us
/// repeatedly is a stuck device, not a transient).
const MAX_RETRIES: u32 = 64;

/// One op in flight.
struct Flight {
    op: Op,
    /// The member's descriptor, held until the op completes.
    dio: DioGuard<'static>,
    /// `EINTR`/`EAGAIN` resubmissions since the last progress.
    retries: u32,
}

/// One thread's ring and its ops in flight (see the module doc).
pub(crate) struct UringQueue {
    /// Declared before `_pool`: the ring (and its buffer registration) goes
    /// first, the registered memory after.
    ring: IoUring,
    /// Keeps the registered pool mapping alive for the ring's life.
    _pool: BufPool,
    /// Address of the engine's `Shared` this queue was made for (and whose
    /// descriptors it registered): every call must pass that one.
    shared_addr: usize,
    /// `table[i]`: the op whose SQE carries `user_data` i.
    table: Vec<Option<Flight>>,
    /// Free slots of `table` (a stack; capacity `depth`).
    free: Vec<u32>,
    /// Occupied slots of `table`.
    in_flight: usize,
    /// Number of the last flush, for its `user_data`.
    fsync_seq: u64,
    /// `user_data` of the flush being waited for (0: none).
    fsync_tag: u64,
    /// Its result, once reaped.
    fsync_result: Option<i32>,
}

/// What to do with an op after one of its CQEs.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Finished: every byte moved, or the errno that stopped it.
    Done(Result<(), i32>),
    /// Resubmit the rest (`dio.done` already advanced).
    Again,
}

/// Applies one CQE result `res` to `dio`.
fn advance(dio: &mut Dio, retries: &mut u32, res: i32) -> Step {
    if res < 0 {
        let errno = res.saturating_neg();
        if (errno == libc::EINTR || errno == libc::EAGAIN) && *retries < MAX_RETRIES {
            *retries += 1;
            return Step::Again;
        }
        return Step::Done(Err(errno));
    }
    if res == 0 {
        // End of file inside the member's size (the file shrank), or a
        // device that takes no more: the sync engine's answer too.
        return Step::Done(Err(libc::EIO));
    }
    *retries = 0;
    let left = dio.len.saturating_sub(dio.done);
    dio.done += (res.unsigned_abs() as usize).min(left);
    if dio.done >= dio.len {
        Step::Done(Ok(()))
    } else {
        Step::Again
    }
}

/// What is left of `dio`: (buffer address, length, member offset), the
/// length capped at [`MAX_SQE_LEN`].
fn remainder(dio: &Dio) -> (usize, u32, u64) {
    let left = dio.len.saturating_sub(dio.done).min(MAX_SQE_LEN);
    // MAX_SQE_LEN fits in u32.
    (dio.addr.wrapping_add(dio.done), left as u32, dio.offset.wrapping_add(dio.done as u64))
}

/// The SQE moving what is left of `dio` on fixed file `member`: buffer
/// address, length and member offset advanced by `dio.done`.
fn rw_sqe(member: u32, dio: &Dio, user_data: u64) -> squeue::Entry {
    let (addr, len, offset) = remainder(dio);
    let fd = types::Fixed(member);
    let sqe = match dio.kind {
        OpKind::Read => {
            opcode::ReadFixed::new(fd, addr as *mut u8, len, dio.buf_index).offset(offset).build()
        }
        OpKind::Write => {
            opcode::WriteFixed::new(fd, addr as *const u8, len, dio.buf_index).offset(offset).build()
        }
    };
    sqe.user_data(user_data)
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn setup_error(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("io_uring: {what}: {e}"))
}

impl UringQueue {
    /// A ring for `depth` ops (1..=4096) over `shared`'s members and pool:
    /// makes the ring, registers the members' descriptors and the whole
    /// pool, and allocates the in-flight table. All of this queue's
    /// allocation happens here.
    pub(crate) fn new(shared: &Shared, depth: usize) -> io::Result<Self> {
        let depth = depth.clamp(1, 4096);
        // depth <= 4096: the power of two fits in u32.
        let entries = depth.next_power_of_two() as u32;
        let ring = match IoUring::builder().setup_coop_taskrun().build(entries) {
            Ok(r) => r,
            // Before Linux 5.19: no IORING_SETUP_COOP_TASKRUN.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(entries)
                .map_err(|e| setup_error(&format!("making a ring of {entries} entries"), e))?,
            Err(e) => {
                return Err(setup_error(
                    &format!(
                        "making a ring of {entries} entries (disabled by kernel.io_uring_disabled \
                         or a seccomp filter?)"
                    ),
                    e,
                ))
            }
        };
        let fds: Vec<RawFd> = shared.members.iter().map(|m| m.file().as_raw_fd()).collect();
        if !fds.is_empty() {
            ring.submitter()
                .register_files(&fds)
                .map_err(|e| setup_error(&format!("registering {} member descriptors", fds.len()), e))?;
        }
        let pool = shared.pool.clone();
        let iovecs = pool.iovecs();
        // SAFETY: each iovec is one buffer of the pool's mapping, which
        // stays mapped while `_pool` (a handle on the pool) lives, and
        // `_pool` is dropped after `ring`, which closes the ring and with
        // it the registration. The kernel pins the pages it registers.
        unsafe { ring.submitter().register_buffers(&iovecs) }.map_err(|e| {
            setup_error(
                &format!(
                    "registering {} pool buffers of {} bytes (at most 16384 buffers of at most \
                     1 GiB; pinned memory counts against RLIMIT_MEMLOCK without CAP_IPC_LOCK)",
                    pool.count(),
                    pool.buf_size()
                ),
                e,
            )
        })?;
        drop(iovecs);
        let mut table = Vec::with_capacity(depth);
        table.resize_with(depth, || None);
        // depth <= 4096: every index fits in u32. Reversed: slot 0 first.
        let free: Vec<u32> = (0..depth as u32).rev().collect();
        Ok(UringQueue {
            ring,
            _pool: pool,
            shared_addr: shared as *const Shared as usize,
            table,
            free,
            in_flight: 0,
            fsync_seq: 0,
            fsync_tag: 0,
            fsync_result: None,
        })
    }

    /// Ops in flight (in the ring or being resumed).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Moves every op of `pending` into flight (refused ones to `done`) and
    /// starts them with one `io_uring_enter` for the batch (more only if
    /// the SQ fills). Ops left queued by a transient `EAGAIN`/`EBUSY` of the
    /// kernel start at the next `submit`/`wait`. Allocation-free but for
    /// descriptor slot misses.
    pub(crate) fn submit(
        &mut self,
        shared: &Shared,
        pending: &mut VecDeque<Op>,
        done: &mut VecDeque<Completion>,
    ) -> io::Result<()> {
        self.admit(shared, pending, done)?;
        self.submit_sq()
    }

    /// Submits, then blocks until `done` holds at least `min` completions
    /// (or nothing is left in flight). Allocation-free but for descriptor
    /// slot misses.
    pub(crate) fn wait(
        &mut self,
        shared: &Shared,
        min: usize,
        pending: &mut VecDeque<Op>,
        done: &mut VecDeque<Completion>,
    ) -> io::Result<()> {
        loop {
            self.admit(shared, pending, done)?;
            self.reap(&mut |c| done.push_back(c), false);
            if done.len() >= min || self.in_flight == 0 {
                break;
            }
            // Each op still to complete needs at least one more CQE.
            let want = (min - done.len()).min(self.in_flight);
            self.enter(want)?;
        }
        // Resumptions queued by the last reap.
        self.submit_sq()
    }

    /// `fdatasync` of `member` through the ring (fixed file, data-sync
    /// flag), waited for; completions of other ops reaped meanwhile go to
    /// `done`. Allocation-free.
    pub(crate) fn flush(
        &mut self,
        shared: &Shared,
        member: usize,
        done: &mut VecDeque<Completion>,
    ) -> Result<(), i32> {
        if member >= shared.members.len() || !self.same_shared(shared) {
            return Err(libc::EINVAL);
        }
        let fixed = u32::try_from(member).map_err(|_| libc::EINVAL)?;
        self.fsync_seq = self.fsync_seq.wrapping_add(1);
        // Never 0 (FSYNC is set), so never confused with "none awaited".
        let tag = FSYNC | (self.fsync_seq & !FSYNC);
        let sqe =
            opcode::Fsync::new(types::Fixed(fixed)).flags(types::FsyncFlags::DATASYNC).build().user_data(tag);
        self.fsync_tag = tag;
        self.fsync_result = None;
        let mut retries = 0;
        let r = 'outer: loop {
            if let Err(e) = self.push_sqe(&sqe) {
                break Err(errno_of(&e));
            }
            loop {
                if let Err(e) = self.enter(1) {
                    // The fsync may still complete: its CQE is ignored then.
                    break 'outer Err(errno_of(&e));
                }
                self.reap(&mut |c| done.push_back(c), false);
                if let Some(res) = self.fsync_result.take() {
                    if res >= 0 {
                        break 'outer Ok(());
                    }
                    let errno = res.saturating_neg();
                    if (errno == libc::EINTR || errno == libc::EAGAIN) && retries < MAX_RETRIES {
                        retries += 1;
                        continue 'outer;
                    }
                    break 'outer Err(errno);
                }
            }
        };
        self.fsync_tag = 0;
        // Resumptions queued by the last reap; on failure they stay queued
        // and go with the next io_uring_enter.
        let _ = self.submit_sq();
        r
    }

    /// Waits for every op in flight (the kernel may be using their buffers)
    /// and releases their descriptors; their completions are dropped, short
    /// transfers not resumed. If the ring fails, the ops still in flight
    /// are abandoned: their buffers leaked (never reused while the kernel
    /// may write them), their descriptors given back.
    pub(crate) fn drain(&mut self, shared: &Shared) {
        debug_assert!(self.same_shared(shared), "drain with another engine's members");
        loop {
            self.reap(&mut drop, true);
            if self.in_flight == 0 {
                return;
            }
            if self.enter(1).is_err() {
                break;
            }
        }
        for slot in self.table.iter_mut() {
            if let Some(Flight { op, dio, .. }) = slot.take() {
                std::mem::forget(op);
                drop(dio);
            }
        }
        self.in_flight = 0;
    }

    fn same_shared(&self, shared: &Shared) -> bool {
        shared as *const Shared as usize == self.shared_addr
    }

    /// Moves ops from `pending` into flight, pushing their SQEs (submitting
    /// only when the SQ is full). Refused ops go to `done`.
    fn admit(
        &mut self,
        shared: &Shared,
        pending: &mut VecDeque<Op>,
        done: &mut VecDeque<Completion>,
    ) -> io::Result<()> {
        if !self.same_shared(shared) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        while let Some(op) = pending.pop_front() {
            if let Err(errno) = check_op(shared, &op) {
                done.push_back(Completion { op, result: Err(errno) });
                continue;
            }
            // check_op found the member: its index is < 65536.
            let Ok(fixed) = u32::try_from(op.member) else {
                done.push_back(Completion { op, result: Err(libc::EINVAL) });
                continue;
            };
            if self.free.is_empty() || !self.sq_room() {
                // Table full (the engine never lets that happen) or the
                // kernel takes no more now: start it later.
                pending.push_front(op);
                break;
            }
            let Some(idx) = self.free.pop() else { break };
            let guard = shared.members[op.member].slot.take();
            // SAFETY: only the lifetime changes. The guard borrows the
            // member's DioSlot inside `shared`, the engine's `Shared`, which
            // lives in an Arc that the Queue owning this UringQueue holds
            // for its whole life (checked above: `shared` is the one this
            // queue was made for), and no one mutates it. Every guard
            // leaves the table before that Arc can go: an op completes in
            // reap, or is abandoned by drain, and Queue::drop calls drain
            // before its fields (the Arc among them) are dropped; this
            // queue's own Drop forgets, never drops, any guard left.
            let mut dio: DioGuard<'static> = unsafe { std::mem::transmute::<DioGuard<'_>, _>(guard) };
            *dio = Dio::for_op(&op);
            let sqe = rw_sqe(fixed, &dio, u64::from(idx));
            self.table[idx as usize] = Some(Flight { op, dio, retries: 0 });
            self.in_flight += 1;
            // SAFETY: the SQE names bytes `start..start + len` of the op's
            // buffer (check_op: in the buffer, from this pool, so inside
            // fixed buffer `buf_index`) and the op's member's registered
            // descriptor. The op owns that buffer and stays in the table
            // until this SQE's CQE is reaped (or drain abandons it, leaking
            // the buffer), so the memory is valid and not otherwise used
            // for the whole operation. sq_room() made room.
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_err() {
                // Not reachable (room was made); undo rather than lose it.
                if let Some(f) = self.table[idx as usize].take() {
                    self.free.push(idx);
                    self.in_flight -= 1;
                    drop(f.dio);
                    pending.push_front(f.op);
                }
                break;
            }
        }
        Ok(())
    }

    /// Whether the SQ has room for one more SQE, submitting once if full.
    fn sq_room(&mut self) -> bool {
        if !self.ring.submission().is_full() {
            return true;
        }
        let _ = self.submit_sq();
        !self.ring.submission().is_full()
    }

    /// Pushes `sqe` (which references no memory of ours, or memory kept
    /// valid by the caller until its CQE), submitting first if the SQ is
    /// full.
    fn push_sqe(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        if !self.sq_room() {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        // SAFETY: the callers push a flush (it references no memory, only a
        // registered descriptor) or an op's next SQE, whose buffer range
        // the op, owning that buffer, keeps valid and unused in the table
        // until the SQE's CQE is reaped (or drain leaks the buffer).
        unsafe { self.ring.submission().push(sqe) }.map_err(|_| io::Error::from_raw_os_error(libc::EAGAIN))
    }

    /// One `io_uring_enter` for whatever the SQ holds, if anything (retried
    /// on `EINTR`). `EAGAIN`/`EBUSY` leave the SQEs queued for the next
    /// enter and are not errors.
    fn submit_sq(&mut self) -> io::Result<()> {
        loop {
            if self.ring.submission().is_empty() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN | libc::EBUSY) => return Ok(()),
                    _ => return Err(e),
                },
            }
        }
    }

    /// Submits the SQ and blocks for at least `want` CQEs. An interrupted
    /// or transiently refused enter returns Ok: the caller reaps and
    /// decides again.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Reaps every CQE ready: ops that finish go to `sink`, short transfers
    /// (and `EINTR`/`EAGAIN`) are resumed, unless `draining`, where any CQE
    /// finishes its op.
    fn reap(&mut self, sink: &mut impl FnMut(Completion), draining: bool) {
        loop {
            let Some(cqe) = self.ring.completion().next() else { return };
            let (user_data, res) = (cqe.user_data(), cqe.result());
            if user_data & FSYNC != 0 {
                // A stale flush (its wait failed) is dropped.
                if user_data == self.fsync_tag {
                    self.fsync_result = Some(res);
                }
                continue;
            }
            self.on_cqe(user_data, res, sink, draining);
        }
    }

    fn on_cqe(&mut self, user_data: u64, res: i32, sink: &mut impl FnMut(Completion), draining: bool) {
        let Ok(idx) = usize::try_from(user_data) else { return };
        let Some(Some(flight)) = self.table.get_mut(idx) else {
            debug_assert!(false, "CQE for empty in-flight slot {idx}");
            return;
        };
        let result = match advance(&mut flight.dio, &mut flight.retries, res) {
            Step::Done(r) => r,
            // Nobody will see the result: don't resume.
            Step::Again if draining => Err(libc::EINTR),
            Step::Again => {
                // check_op found the member when the op was admitted.
                let fixed = flight.op.member as u32;
                let sqe = rw_sqe(fixed, &flight.dio, user_data);
                // The op's one SQE has completed; this is its next. Its
                // buffer stays owned by the table entry, as in admit().
                match self.push_sqe(&sqe) {
                    Ok(()) => return,
                    Err(e) => Err(errno_of(&e)),
                }
            }
        };
        if let Some(Flight { op, mut dio, .. }) = self.table[idx].take() {
            // No SQE of this op is in the ring: its buffer is free again.
            if let Err(e) = result {
                dio.error = e;
            }
            drop(dio);
            // idx < depth <= 4096.
            self.free.push(idx as u32);
            self.in_flight -= 1;
            sink(Completion { op, result });
        }
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // drain() has emptied the table (Queue::drop calls it). Anything
        // still here may be in the kernel and its guard may outlive its
        // slot: forget both rather than reuse the buffer or touch the slot.
        for slot in self.table.iter_mut() {
            if let Some(Flight { op, dio, .. }) = slot.take() {
                std::mem::forget(op);
                std::mem::forget(dio);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Access, BufPool, Direct, Engine, EngineKind, IoMode, Member, MemberOptions, PoolConfig};
    use std::path::{Path, PathBuf};

    /// A scratch directory under `base`, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(base: &str, name: &str) -> Scratch {
            let d = Path::new(base).join(format!("blockio-uring-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&d).expect("mkdir");
            Scratch(d)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const SIZE: usize = 1 << 20;
    const IO: usize = 16 << 10;

    fn rw() -> MemberOptions {
        MemberOptions { access: Access::ReadWrite, ..Default::default() }
    }

    /// A file of SIZE bytes of `fill` and an io_uring engine over it.
    fn engine(s: &Scratch, opts: &MemberOptions, count: usize) -> (PathBuf, Engine) {
        let p = s.0.join("m.img");
        std::fs::write(&p, vec![0xeeu8; SIZE]).expect("image");
        let m = Member::open_with(&p, opts).expect("open");
        let pool = BufPool::new(PoolConfig { count, size: IO, huge_pages: false }).expect("pool");
        (p, Engine::new(EngineKind::Uring, vec![m], pool).expect("engine"))
    }

    fn pattern(i: usize, j: usize) -> u8 {
        (i * 31 + j * 7 + j / 4096) as u8
    }

    fn round_trip(base: &str, mode: IoMode) {
        let s = Scratch::new(base, "roundtrip");
        let (path, e) = engine(&s, &rw(), 8);
        assert_eq!(e.members()[0].mode(), mode, "{base}");
        let mut q = e.queue(8).expect("queue");
        assert_eq!(q.depth(), 8);
        // 8 writes in one batch, at scattered offsets.
        for i in 0..8 {
            let mut b = e.pool().take().expect("buf");
            for (j, x) in b[..IO].iter_mut().enumerate() {
                *x = pattern(i, j);
            }
            let op = Op { tag: 100 + i as u64, ..Op::write(0, (7 - i as u64) * 65536, b, IO) };
            q.push(op).expect("room");
        }
        q.wait(8).expect("wait");
        let mut bufs = Vec::new();
        while let Some(c) = q.pop() {
            assert_eq!(c.result, Ok(()), "write tag {}", c.op.tag);
            bufs.push(c.op.buf);
        }
        assert_eq!((bufs.len(), q.outstanding()), (8, 0));
        assert_eq!(q.flush(0), Ok(()));
        // Read them back into zeroed buffers, again one batch.
        for (i, mut b) in bufs.drain(..).enumerate() {
            b.fill(0);
            q.push(Op { tag: i as u64, ..Op::read(0, (7 - i as u64) * 65536, b, IO) }).expect("room");
        }
        q.wait(8).expect("wait");
        let mut n = 0;
        while let Some(c) = q.pop() {
            assert_eq!(c.result, Ok(()));
            let i = c.op.tag as usize;
            assert!(c.op.buf[..IO].iter().enumerate().all(|(j, &x)| x == pattern(i, j)), "read {i}");
            n += 1;
        }
        assert_eq!(n, 8);
        drop(q);
        // And the file itself holds them, untouched around them.
        let data = std::fs::read(&path).expect("read image");
        for i in 0..8 {
            let at = (7 - i) * 65536;
            assert!(data[at..at + IO].iter().enumerate().all(|(j, &x)| x == pattern(i, j)));
            assert!(data[at + IO..at + 65536].iter().all(|&x| x == 0xee));
        }
        assert_eq!(e.pool().free(), 8, "every buffer back");
    }

    #[test]
    fn round_trip_direct() {
        round_trip("/var/tmp", IoMode::Direct);
    }

    #[test]
    fn round_trip_buffered() {
        round_trip("/dev/shm", IoMode::Buffered);
    }

    /// The member shrinks under an open engine: a read across the new end
    /// moves the bytes before it (a short transfer), is resumed at the end,
    /// gets 0 there and fails with EIO.
    fn short_then_eof(base: &str) {
        let s = Scratch::new(base, "short");
        let (path, e) = engine(&s, &rw(), 2);
        let f = std::fs::OpenOptions::new().write(true).open(&path).expect("reopen");
        f.set_len(40 << 10).expect("truncate");
        drop(f);
        let mut q = e.queue(2).expect("queue");
        let mut b = e.pool().take().expect("buf");
        b.fill(0x55);
        let c = q.run(Op::read(0, 32 << 10, b, IO)).expect("room");
        assert_eq!(c.result, Err(libc::EIO), "{base}");
        assert!(c.op.buf[..8 << 10].iter().all(|&x| x == 0xee), "{base}: bytes before the end moved");
        assert_eq!(q.outstanding(), 0);
    }

    #[test]
    fn short_transfer_resumed() {
        short_then_eof("/var/tmp");
        short_then_eof("/dev/shm");
    }

    #[test]
    fn advance_resumes_the_rest() {
        let mut dio = Dio {
            kind: OpKind::Read,
            offset: 8192,
            len: 3 * 4096,
            addr: 0x10000,
            buf_index: 3,
            ..Dio::default()
        };
        let mut retries = 0;
        assert_eq!(advance(&mut dio, &mut retries, 4096), Step::Again);
        assert_eq!(dio.done, 4096);
        // The rest: one block on in the buffer and on the member.
        assert_eq!(remainder(&dio), (0x10000 + 4096, 8192, 8192 + 4096));
        assert_eq!(rw_sqe(2, &dio, 5).get_user_data(), 5);
        assert_eq!(advance(&mut dio, &mut retries, -libc::EINTR), Step::Again);
        assert_eq!(dio.done, 4096, "EINTR moves nothing");
        assert_eq!(advance(&mut dio, &mut retries, 8192), Step::Done(Ok(())));
        let mut dio = Dio { len: 4096, ..Dio::default() };
        assert_eq!(remainder(&Dio { len: 3 << 30, done: 4096, ..Dio::default() }).1, 1 << 30);
        assert_eq!(advance(&mut dio, &mut retries, 0), Step::Done(Err(libc::EIO)));
        assert_eq!(advance(&mut dio, &mut retries, -libc::ENOSPC), Step::Done(Err(libc::ENOSPC)));
        assert_eq!(advance(&mut dio, &mut retries, i32::MIN), Step::Done(Err(i32::MAX)));
        let mut retries = 0;
        for _ in 0..MAX_RETRIES {
            assert_eq!(advance(&mut dio, &mut retries, -libc::EAGAIN), Step::Again);
        }
        assert_eq!(advance(&mut dio, &mut retries, -libc::EAGAIN), Step::Done(Err(libc::EAGAIN)));
    }

    #[test]
    fn refused_ops_touch_nothing() {
        let s = Scratch::new("/var/tmp", "refused");
        let (path, e) = engine(&s, &rw(), 4);
        let align = e.members()[0].alignment().offset as u64;
        let mut q = e.queue(4).expect("queue");
        let take = || {
            let mut b = e.pool().take().expect("buf");
            b.fill(0x11);
            b
        };
        let ops = [
            (Op::write(0, align / 2, take(), 4096), libc::EINVAL),
            (Op::write(0, SIZE as u64, take(), 4096), libc::ENXIO),
            (Op::write(1, 0, take(), 4096), libc::EINVAL),
            (Op { start: 1, ..Op::write(0, 0, take(), 4096) }, libc::EINVAL),
        ];
        let mut want = Vec::new();
        for (i, (op, errno)) in ops.into_iter().enumerate() {
            want.push(errno);
            q.push(Op { tag: i as u64, ..op }).expect("room");
        }
        q.wait(4).expect("wait");
        assert_eq!(q.outstanding(), 4);
        while let Some(c) = q.pop() {
            assert_eq!(c.result, Err(want[c.op.tag as usize]), "op {}", c.op.tag);
        }
        // Past the end by one block, read: ENXIO too; and an unaligned length.
        let c = q.run(Op::read(0, SIZE as u64 - 4096, take(), 8192)).expect("room");
        assert_eq!(c.result, Err(libc::ENXIO));
        drop(c);
        let c = q.run(Op::read(0, 0, take(), 100)).expect("room");
        assert_eq!(c.result, Err(libc::EINVAL));
        drop(c);
        drop(q);
        assert!(std::fs::read(&path).expect("read").iter().all(|&x| x == 0xee), "nothing written");
        let (hits, misses) = e.members()[0].dio_stats();
        assert_eq!((hits, misses), (0, 0), "refused ops take no descriptor");

        // A read-only member: writes EROFS, reads fine.
        let m = Member::open_with(
            &path,
            &MemberOptions { access: Access::ReadOnly, direct: Direct::Auto, faults: None },
        )
        .expect("open ro");
        let pool = BufPool::new(PoolConfig { count: 2, size: IO, huge_pages: false }).expect("pool");
        let e = Engine::new(EngineKind::Uring, vec![m], pool).expect("engine");
        let mut q = e.queue(2).expect("queue");
        let c = q.run(Op::write(0, 0, e.pool().take().expect("buf"), 4096)).expect("room");
        assert_eq!(c.result, Err(libc::EROFS));
        let c = q.run(Op::read(0, 0, c.op.buf, 4096)).expect("room");
        assert_eq!(c.result, Ok(()));
        assert!(c.op.buf[..4096].iter().all(|&x| x == 0xee));
    }

    #[test]
    fn flush_ok_and_bad_member() {
        for base in ["/var/tmp", "/dev/shm"] {
            let s = Scratch::new(base, "flush");
            let (_path, e) = engine(&s, &rw(), 2);
            let mut q = e.queue(2).expect("queue");
            let c = q.run(Op::write(0, 4096, e.pool().take().expect("buf"), 4096)).expect("room");
            assert_eq!(c.result, Ok(()));
            // A flush with an op in flight: its completion is kept.
            q.push(Op { tag: 9, ..Op::write(0, 0, c.op.buf, 4096) }).expect("room");
            q.submit().expect("submit");
            assert_eq!(q.flush(0), Ok(()), "{base}");
            assert_eq!(q.flush_all(), Ok(()));
            assert_eq!(q.flush(1), Err(libc::EINVAL));
            q.wait(1).expect("wait");
            let c = q.pop().expect("the write");
            assert_eq!((c.op.tag, c.result), (9, Ok(())));
        }
    }

    #[test]
    fn full_queue_gives_the_op_back() {
        let s = Scratch::new("/var/tmp", "full");
        let (_path, e) = engine(&s, &rw(), 4);
        let mut q = e.queue(3).expect("queue");
        for i in 0..3u64 {
            q.push(Op::read(0, i * 4096, e.pool().take().expect("buf"), 4096)).expect("room");
        }
        let extra = e.pool().take().expect("buf");
        let id = extra.index();
        let op = q.push(Op::read(0, 0, extra, 4096)).expect_err("full");
        assert_eq!(op.buf.index(), id);
        q.submit().expect("submit");
        assert_eq!(q.outstanding(), 3);
        let op = q.run(op).expect_err("still full");
        assert_eq!(op.buf.index(), id);
        q.wait(3).expect("wait");
        let mut n = 0;
        while let Some(c) = q.pop() {
            assert_eq!(c.result, Ok(()));
            n += 1;
        }
        assert_eq!(n, 3);
        let c = q.run(op).expect("room now");
        assert_eq!(c.result, Ok(()));
    }

    /// Dropping a queue with ops in flight waits for them: every buffer
    /// and descriptor is back afterwards.
    #[test]
    fn drop_drains() {
        let s = Scratch::new("/var/tmp", "drain");
        let (_path, e) = engine(&s, &rw(), 8);
        let mut q = e.queue(8).expect("queue");
        for i in 0..8u64 {
            q.push(Op::write(0, i * IO as u64, e.pool().take().expect("buf"), IO)).expect("room");
        }
        q.submit().expect("submit");
        drop(q);
        assert_eq!(e.pool().free(), 8);
        let (hits, misses) = e.members()[0].dio_stats();
        assert_eq!(hits + misses, 8);
        // The persistent descriptor is back in its slot: the next op hits.
        let mut q = e.queue(1).expect("queue");
        let c = q.run(Op::read(0, 0, e.pool().take().expect("buf"), 4096)).expect("room");
        assert_eq!(c.result, Ok(()));
        assert_eq!(e.members()[0].dio_stats(), (hits + 1, misses));
    }

    #[test]
    fn queue_is_send() {
        fn send<T: Send>() {}
        send::<UringQueue>();
        send::<crate::Queue>();
    }
}
