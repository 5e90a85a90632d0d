//! The sync thread's member I/O: the same member range read from several
//! members at once, several such batches in flight, and rebuilt bytes
//! written, straight between the devices and a registered buffer pool.
//!
//! ## Responsibility boundary
//! A [`SyncIo`] reads *batches*: for each of a fixed set of slots (the
//! sources), the same byte range of the member's data area, into its own
//! buffer. Up to `depth` batches are in flight at once through one
//! `blockio` queue (io_uring, buffers registered once) on second opens of
//! the members ([`blockio::Member::reopen`]) with `O_DIRECT` where the
//! filesystem does it. Batches come back in the order they were issued,
//! each with the caller's tag. It also writes, for a second fixed set of
//! slots (the targets: members being rebuilt), one output buffer each
//! ([`SyncIo::out`], [`SyncIo::write_out`]), the same way, and returns once
//! those writes completed (read-ahead goes on meanwhile).
//!
//! Why not the array's own (buffered) member I/O: a pass over whole
//! members through the kernel's page cache copies every byte once more,
//! and a rebuilt member's fresh cached pages cost more than the rebuild
//! itself (measured: the copy into the page cache was 45 % of the sync
//! thread's time in `umd bench recovery`); md's own sync I/O goes to the
//! devices too. The kernel keeps the two opens coherent: a direct read or
//! write first writes back the range's dirty cached pages, and a direct
//! write drops the range's cached pages.
//!
//! It knows nothing of stripes or array state. Reads issued ahead are not
//! under the rows' stripe locks, so the caller tags each batch with the
//! rows' write generation (`StripeCache::rows_gen`) taken *before* issuing
//! it, compares it again under the locks, and re-reads when it changed
//! ([`Batch::reread`]). Writes are issued and waited for under the rows'
//! locks: no array write of those rows can overlap them.
//!
//! A member whose direct-I/O alignment does not fit the batches (its data
//! offset or the batch size not a multiple of it) is read and written
//! buffered, and so is every member if io_uring cannot be set up (the
//! sync engine runs the same ops one by one): slower, the same bytes.
//!
//! ## Synchronization model
//! Owned by one thread (the sync thread); no lock.
//!
//! ## Limits and allocation
//! At creation: the ring, the second opens, and a pool of
//! `(depth + 1) × sources + targets` buffers of one batch each (`depth`
//! batches in flight, the one the caller holds, an output buffer per
//! target), the depth cut so that the pool stays within [`MAX_BYTES`].
//! Per batch: its list of buffer handles. A [`Batch`]'s buffers go back
//! to the pool when it is dropped.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use blockio::{
    Access, BufPool, Direct, Engine, EngineKind, IoBuf, IoMode, MemberOptions, Op, PoolConfig, Queue,
};

use crate::array::Slots;

/// Most bytes of buffers one [`SyncIo`] holds (in flight and in hand),
/// unless one batch of every member alone needs more.
pub const MAX_BYTES: usize = 64 << 20;

/// Most batches in flight.
pub const MAX_DEPTH: usize = 4;

/// Tag bit of a target write (the rest: its engine member index).
const WRITE: u64 = 1 << 63;

/// A batch not yet handed back.
struct Pending {
    seq: u64,
    at: u64,
    len: usize,
    tag: u64,
    bufs: Vec<Option<IoBuf>>,
    left: usize,
    /// The first failure: (engine member, errno).
    error: Option<(usize, i32)>,
}

/// Reads batches of member ranges ahead of the caller, writes rebuilt
/// ranges.
pub struct SyncIo {
    /// Declared first: dropped (drained) before the engine it serves.
    queue: Queue,
    engine: Engine,
    /// Engine member `i` is slot `slots[i]`: the sources, then the
    /// targets.
    slots: Vec<usize>,
    sources: usize,
    /// The source slots, shared with every [`Batch`].
    source_slots: Arc<[usize]>,
    /// Byte offset of each engine member's data area.
    starts: Vec<u64>,
    batch_bytes: usize,
    depth: usize,
    next_seq: u64,
    inflight: VecDeque<Pending>,
    /// Per target: its output buffer (None while its write is in flight)
    /// and the result of its last write.
    outs: Vec<(Option<IoBuf>, Result<(), i32>)>,
}

impl std::fmt::Debug for SyncIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncIo")
            .field("slots", &self.slots)
            .field("sources", &self.sources)
            .field("batch_bytes", &self.batch_bytes)
            .field("depth", &self.depth)
            .field("in_flight", &self.inflight.len())
            .field("engine", &self.engine.kind())
            .finish()
    }
}

/// A batch read: each source slot's bytes of the range.
#[derive(Debug)]
pub struct Batch {
    /// Member data-area offset of the batch's first byte.
    pub at: u64,
    /// Bytes per member.
    pub len: usize,
    /// The caller's tag, as issued.
    pub tag: u64,
    slots: Arc<[usize]>,
    bufs: Vec<IoBuf>,
    /// (slot, errno) of the first member read that failed.
    error: Option<(usize, i32)>,
}

impl Batch {
    /// Slot `slot`'s bytes (None: not a source).
    pub fn part(&self, slot: usize) -> Option<&[u8]> {
        let i = self.slots.iter().position(|&s| s == slot)?;
        self.bufs.get(i).map(|b| &b[..self.len])
    }

    /// The first member read that failed: (slot, error).
    pub fn failed(&self) -> Option<(usize, io::Error)> {
        self.error.map(|(slot, errno)| (slot, io::Error::from_raw_os_error(errno)))
    }

    /// Reads every part again through the array's own member reads, one
    /// member after another: the batch's rows were written after it was
    /// issued. Fails with (slot, error) of a member read that failed; on
    /// success the batch's earlier failure is forgotten.
    ///
    /// Called under: the stripe locks of the batch's rows.
    pub fn reread(&mut self, slots: &Slots) -> Result<(), (usize, io::Error)> {
        for (i, b) in self.bufs.iter_mut().enumerate() {
            let slot = self.slots[i];
            crate::personality::MemberRead::read_at(slots, slot, self.at, &mut b[..self.len])
                .map_err(|e| (slot, e))?;
        }
        self.error = None;
        Ok(())
    }
}

/// A second open of `slot`'s member for this I/O: `O_DIRECT` where the
/// filesystem does it and the batches fit its alignment, else buffered;
/// the member's fault injector comes along.
fn reopen(
    slots: &Slots,
    slot: usize,
    access: Access,
    batch_bytes: usize,
) -> io::Result<(blockio::Member, u64)> {
    let m = slots.get(slot).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("sync I/O: no member in slot {slot}"))
    })?;
    let opts = |direct| MemberOptions { access, direct, faults: m.dev.faults().cloned() };
    let dev = m.dev.reopen(&opts(Direct::Auto))?;
    let a = u64::from(dev.alignment().offset);
    if dev.mode() == IoMode::Direct
        && !(m.data_start.is_multiple_of(a) && (batch_bytes as u64).is_multiple_of(a))
    {
        return Ok((m.dev.reopen(&opts(Direct::Never))?, m.data_start));
    }
    Ok((dev, m.data_start))
}

impl SyncIo {
    /// I/O reading the data areas of `read` and writing those of `write`
    /// (slots of `slots`, each holding a member), batches of at most
    /// `batch_bytes` (a multiple of 4 KiB), at most `depth`
    /// (1..=[`MAX_DEPTH`]) in flight, fewer if the buffers would pass
    /// [`MAX_BYTES`].
    ///
    /// Called under: no lock (opens files, allocates).
    pub fn new(
        slots: &Slots,
        read: &[usize],
        write: &[usize],
        batch_bytes: usize,
        depth: usize,
    ) -> io::Result<SyncIo> {
        SyncIo::with_engine(EngineKind::Uring, slots, read, write, batch_bytes, depth)
    }

    /// [`SyncIo::new`] on the engine `kind` (io_uring falls back to the
    /// sync engine when no ring can be made).
    fn with_engine(
        kind: EngineKind,
        slots: &Slots,
        read: &[usize],
        write: &[usize],
        batch_bytes: usize,
        depth: usize,
    ) -> io::Result<SyncIo> {
        if read.is_empty() || batch_bytes == 0 || !batch_bytes.is_multiple_of(4096) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("sync I/O reading {} members in batches of {batch_bytes} bytes", read.len()),
            ));
        }
        let per_batch = batch_bytes.saturating_mul(read.len());
        let fixed = batch_bytes.saturating_mul(read.len() + write.len());
        let depth = depth.clamp(1, MAX_DEPTH).min(MAX_BYTES.saturating_sub(fixed) / per_batch.max(1)).max(1);
        let mut members = Vec::with_capacity(read.len() + write.len());
        let mut starts = Vec::with_capacity(read.len() + write.len());
        for &slot in read {
            let (dev, start) = reopen(slots, slot, Access::ReadOnly, batch_bytes)?;
            members.push(dev);
            starts.push(start);
        }
        for &slot in write {
            let (dev, start) = reopen(slots, slot, Access::ReadWrite, batch_bytes)?;
            members.push(dev);
            starts.push(start);
        }
        let count = (depth + 1) * read.len() + write.len();
        let pool = BufPool::new(PoolConfig { count, size: batch_bytes, huge_pages: false })?;
        let qdepth = depth * read.len() + write.len();
        let engine = Engine::new(kind, members, pool)?;
        let (engine, queue) = match engine.queue(qdepth) {
            Ok(q) => (engine, q),
            Err(_) => {
                // No io_uring here: the same ops, one at a time.
                let members = engine
                    .members()
                    .iter()
                    .map(|d| {
                        d.reopen(&MemberOptions {
                            access: d.access(),
                            direct: if d.mode() == IoMode::Direct { Direct::Require } else { Direct::Never },
                            faults: d.faults().cloned(),
                        })
                    })
                    .collect::<io::Result<Vec<_>>>()?;
                let sync = Engine::new(EngineKind::Sync, members, engine.pool().clone())?;
                let q = sync.queue(qdepth)?;
                (sync, q)
            }
        };
        let mut outs = Vec::with_capacity(write.len());
        for _ in write {
            let buf = engine.pool().take().ok_or_else(|| io::Error::other("sync I/O: out of buffers"))?;
            outs.push((Some(buf), Ok(())));
        }
        let mut all = read.to_vec();
        all.extend_from_slice(write);
        Ok(SyncIo {
            queue,
            engine,
            slots: all,
            sources: read.len(),
            source_slots: read.into(),
            starts,
            batch_bytes,
            depth,
            next_seq: 0,
            inflight: VecDeque::with_capacity(depth),
            outs,
        })
    }

    /// Bytes per member of the largest batch.
    pub fn batch_bytes(&self) -> usize {
        self.batch_bytes
    }

    /// Batches that may be in flight at once.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Whether another batch may be issued now.
    pub fn has_room(&self) -> bool {
        self.inflight.len() < self.depth
    }

    /// How the members are reached (`direct`, `buffered`, or how many are
    /// direct) and by which engine: for logs and tests.
    pub fn describe(&self) -> String {
        let direct = self.engine.members().iter().filter(|m| m.mode() == IoMode::Direct).count();
        let mode = match direct {
            0 => "buffered".to_string(),
            d if d == self.slots.len() => "direct".to_string(),
            d => format!("{d} of {} direct", self.slots.len()),
        };
        format!("{mode}, {}", self.engine.kind())
    }

    /// Issues the read of `len` bytes (at most the batch size, a multiple
    /// of 4 KiB) at data-area offset `at` of every source, tagged `tag`.
    /// Refused (InvalidInput) without room or with a bad length.
    ///
    /// Called under: any lock (it does not wait for the reads).
    pub fn issue(&mut self, at: u64, len: usize, tag: u64) -> io::Result<()> {
        if !self.has_room() || len == 0 || len > self.batch_bytes || !len.is_multiple_of(4096) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("sync I/O: batch of {len} bytes with {} in flight", self.inflight.len()),
            ));
        }
        let n = self.sources;
        if self.engine.pool().free() < n || self.queue.outstanding() + n > self.queue.depth() {
            // Cannot happen: (depth + 1) buffers per source and room for
            // depth batches, at most depth in flight and one in hand.
            return Err(io::Error::other("sync I/O: out of buffers or queue room"));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut p = Pending { seq, at, len, tag, bufs: (0..n).map(|_| None).collect(), left: 0, error: None };
        for i in 0..n {
            let buf =
                self.engine.pool().take().ok_or_else(|| io::Error::other("sync I/O: out of buffers"))?;
            let mut op = Op::read(i, self.starts[i] + at, buf, len);
            op.tag = seq;
            self.queue.push(op).map_err(|_| io::Error::other("sync I/O: queue full"))?;
            p.left += 1;
        }
        self.inflight.push_back(p);
        self.queue.submit()
    }

    /// Hands every ready completion to its batch or output buffer.
    fn reap(&mut self) {
        while let Some(c) = self.queue.pop() {
            if c.op.tag & WRITE != 0 {
                let t = c.op.member.wrapping_sub(self.sources);
                if let Some(o) = self.outs.get_mut(t) {
                    *o = (Some(c.op.buf), c.result);
                }
                continue;
            }
            // An op of no batch (one whose issue failed half way) just
            // gives its buffer back.
            let Some(p) = self.inflight.iter_mut().find(|p| p.seq == c.op.tag) else { continue };
            if let Err(errno) = c.result {
                p.error.get_or_insert((c.op.member, errno));
            }
            if let Some(slot) = p.bufs.get_mut(c.op.member) {
                *slot = Some(c.op.buf);
            }
            p.left = p.left.saturating_sub(1);
        }
    }

    /// The oldest batch issued, once all its reads completed (None: none
    /// in flight). An error here is the engine's own (the ring failed).
    ///
    /// Called under: any lock the caller needs for the batch (it waits for
    /// the batch's reads, which need no lock of the array).
    pub fn next_batch(&mut self) -> io::Result<Option<Batch>> {
        loop {
            let Some(front) = self.inflight.front() else { return Ok(None) };
            if front.left == 0 {
                break;
            }
            self.queue.wait(1)?;
            self.reap();
        }
        let Some(p) = self.inflight.pop_front() else { return Ok(None) };
        let error = p.error.map(|(i, errno)| (self.slots[i], errno));
        let bufs: Vec<IoBuf> = p.bufs.into_iter().flatten().collect();
        if bufs.len() != self.sources {
            return Err(io::Error::other("sync I/O: a batch came back without all its buffers"));
        }
        debug_assert!(p.len <= self.batch_bytes);
        let slots = Arc::clone(&self.source_slots);
        Ok(Some(Batch { at: p.at, len: p.len, tag: p.tag, slots, bufs, error }))
    }

    /// Target `slot`'s output buffer (the batch size; None: not a target).
    pub fn out(&mut self, slot: usize) -> Option<&mut [u8]> {
        let t = self.slots[self.sources..].iter().position(|&s| s == slot)?;
        self.outs.get_mut(t).and_then(|(b, _)| b.as_deref_mut())
    }

    /// Writes the first `len` bytes of the output buffers of `targets`
    /// (each a target) at data-area offset `at`, all at once, and returns
    /// once every one completed: per target, in order, its result. Batches
    /// in flight go on reading meanwhile. An `Err` is the engine's own.
    ///
    /// Called under: the stripe locks of the rows written.
    pub fn write_out(&mut self, targets: &[usize], at: u64, len: usize) -> io::Result<Vec<Result<(), i32>>> {
        if len == 0 || len > self.batch_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("sync I/O: write of {len} bytes"),
            ));
        }
        let mut issued = Vec::with_capacity(targets.len());
        for &slot in targets {
            let t = self.slots[self.sources..]
                .iter()
                .position(|&s| s == slot)
                .ok_or_else(|| io::Error::other(format!("sync I/O: slot {slot} is not a target")))?;
            let Some(buf) = self.outs[t].0.take() else {
                return Err(io::Error::other("sync I/O: output buffer already in flight"));
            };
            let i = self.sources + t;
            let mut op = Op::write(i, self.starts[i] + at, buf, len);
            op.tag = WRITE | i as u64;
            if let Err(op) = self.queue.push(op) {
                self.outs[t].0 = Some(op.buf);
                return Err(io::Error::other("sync I/O: queue full"));
            }
            issued.push(t);
        }
        self.queue.submit()?;
        while issued.iter().any(|&t| self.outs[t].0.is_none()) {
            self.queue.wait(1)?;
            self.reap();
        }
        Ok(issued.iter().map(|&t| self.outs[t].1).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::personality::Level;
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    /// A directory removed on drop (also when the test fails).
    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A 4-member raid5 on image files in a fresh directory under the
    /// crate's target directory (a disk: direct I/O), assembled writable.
    fn array(tag: &str) -> (Dir, Vec<PathBuf>, crate::Array) {
        let dir = Dir(PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target")
            .join(format!("sync-io-{tag}-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        let mut spec = crate::synth::Spec::new(Level::Raid5, 4, (1 << 20) + (4 << 20));
        spec.chunk_sectors = 32;
        let paths: Vec<PathBuf> = (0..4).map(|i| dir.0.join(format!("m{i}.img"))).collect();
        crate::synth::write_array(&spec, &paths, &mut |off, buf| crate::synth::pattern_fill(off, 1, buf))
            .expect("synthetic array");
        let asm = crate::assemble_writable(&paths, &crate::AssembleOptions::default()).expect("assemble");
        (dir, paths, asm.array)
    }

    /// Batches come back in order with each member's bytes as the image
    /// files hold them, and the output buffers reach the member, on both
    /// engines (the sync engine is the fallback without io_uring).
    #[test]
    fn batches_read_in_order_and_writes_land_on_both_engines() {
        for kind in [EngineKind::Uring, EngineKind::Sync] {
            let (_dir, paths, array) = array(&format!("{kind}"));
            let start = array.slots.get(0).expect("slot 0").data_start;
            let batch = 256 << 10;
            let mut io =
                SyncIo::with_engine(kind, &array.slots, &[0, 1, 2], &[3], batch, 3).expect("sync io");
            assert_eq!(io.depth(), 3);
            if kind == EngineKind::Sync {
                assert!(io.describe().ends_with("sync"), "{}", io.describe());
            }
            let files: Vec<std::fs::File> =
                paths.iter().map(|p| std::fs::File::open(p).expect("open")).collect();
            let n = (4 << 20) / batch as u64;
            let mut issued = 0u64;
            let mut got = 0u64;
            while got < n {
                while issued < n && io.has_room() {
                    let len = if issued.is_multiple_of(2) { batch } else { batch / 2 };
                    io.issue(issued * batch as u64, len, 100 + issued).expect("issue");
                    issued += 1;
                }
                if !io.has_room() {
                    assert!(io.issue(0, batch, 0).is_err(), "{kind}: more than depth batches in flight");
                }
                let b = io.next_batch().expect("engine").expect("a batch in flight");
                assert_eq!((b.at, b.tag), (got * batch as u64, 100 + got), "{kind}: batches in order");
                assert!(b.failed().is_none(), "{kind}");
                for (slot, f) in files.iter().enumerate().take(3) {
                    let mut want = vec![0u8; b.len];
                    f.read_exact_at(&mut want, start + b.at).expect("read image");
                    assert!(b.part(slot) == Some(&want[..]), "{kind}: slot {slot} batch {got}");
                }
                assert!(b.part(3).is_none(), "{kind}: a target is not read");
                // The target gets a pattern of the batch number.
                let out = io.out(3).expect("output buffer");
                out[..b.len].fill(got as u8 ^ 0x5a);
                let r = io.write_out(&[3], b.at, b.len).expect("write");
                assert_eq!(r, vec![Ok(())], "{kind}");
                let mut back = vec![0u8; b.len];
                files[3].read_exact_at(&mut back, start + b.at).expect("read back");
                assert!(back.iter().all(|&x| x == got as u8 ^ 0x5a), "{kind}: batch {got} written");
                got += 1;
            }
            assert!(io.next_batch().expect("engine").is_none(), "{kind}: nothing left in flight");
            assert!(io.write_out(&[1], 0, batch).is_err(), "{kind}: slot 1 is no target");
            assert!(io.issue(0, batch + 4096, 0).is_err(), "{kind}: larger than a batch");
            assert!(io.issue(0, 1000, 0).is_err(), "{kind}: not a multiple of 4 KiB");
        }
    }
}
