//! The stripe cache and write path of raid4/5/6 (md's `raid5.c` write
//! side: `handle_stripe_dirtying`, reconstruct-write and read-modify-write).
//!
//! ## Responsibility boundary
//! [`StripeCache::write`] stores an array range on the members with the
//! parity of every touched stripe row kept right, and returns once every
//! member write it needed has completed (md completes a write bio only
//! then; nothing is held dirty here, so there is nothing to lose and
//! `fsync` has only the members to flush). It chooses, per stripe row:
//! * **full stripe** — every data chunk of the row is written: P (and Q)
//!   computed from the caller's bytes, the row written once, no reads;
//! * **cached** (partial row, every member present) — per folio column,
//!   md's choice between read-modify-write (old data + old parity) and
//!   reconstruct-write (the other data), by how many blocks each must read
//!   from the members; blocks already in the cache cost nothing;
//! * **degraded** (partial row, a member missing) — the row's data over the
//!   touched columns is read (the missing member's rebuilt from
//!   redundancy), the new bytes laid over it, P and Q recomputed and
//!   written to the members present: parity stays consistent with the
//!   data of every member present, and the missing member's data stays
//!   recoverable.
//!
//! The cache is a `pagecache` [`AddressSpace`] over *member space*: the
//! byte at `offset` of slot `s`'s data area lives at `s << 48 | offset`.
//! Its folios (min(chunk, 64 KiB)) hold member bytes, data and parity
//! alike, always equal to what the members hold: they are filled by
//! reading the member, changed only together with a member write of the
//! same bytes, and marked not up to date when a write bypasses them or
//! fails. Nothing here is ever dirty. Array reads do not use the cache;
//! they read the members, which hold the same bytes. Reads of a writable
//! degraded array take each row's stripe lock ([`StripeCache::read_rows`],
//! or `StripeCache::with_row` from `Array::read_at`), so that a block
//! rebuilt from the others never mixes a row's old and new blocks; so do
//! reads of a writable array that met a member read error, across the
//! read and the rewrite of the member ([`crate::repair`]), and a rewritten
//! row's folios are dropped.
//!
//! ## Synchronization model
//! Lock order: a **stripe lock** (hashed by row, [`STRIPE_LOCKS`] of them;
//! one held at a time, for the whole of a row's update) → **folio locks**
//! of that row's folios (the first taken with `lock`, every further one
//! with `trylock`; a failed `trylock` drops them all and starts over, so
//! this obeys `pagecache`'s rule that a thread holding a folio lock never
//! waits for another) → the [`WritePool`]'s leaf queue lock. Two writes to
//! one row are therefore serialised, as md's `STRIPE_ACTIVE` serialises
//! them; writes to different rows proceed in parallel. The sync thread
//! alone holds several stripe locks at once (a batch of rows, taken in
//! lock order); every other holder holds one and never waits for the
//! sync thread, so this cannot deadlock.
//!
//! Each stripe lock has a **write generation**, bumped under the lock when
//! a rewrite of a row's member bytes completes (or fails): the sync thread
//! reads rows ahead of their locks and compares generations under them
//! ([`StripeCache::rows_gen`], `md::sync_io`).
//!
//! ## Allocation
//! Per row written: the job and folio lists, and (first use on a thread)
//! the parity scratch buffer kept per thread. Folios are allocated when
//! first cached, up to the cache's memory limit.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pagecache::{AddressSpace, Backing, BlockOps, CacheConfig, Errno, LockedFolio, PageCache};

use crate::array::{Health, Slots};
use crate::fanout::{WriteJob, WritePool};
use crate::personality::{gf, MemberRead, ParityShape, Personality, StripeMap};

/// Member space: slot `s`'s data area starts at `s << SLOT_SHIFT`.
const SLOT_SHIFT: u32 = 48;

/// Number of hashed stripe locks.
pub const STRIPE_LOCKS: usize = 256;

/// Largest cache folio.
const MAX_FOLIO: u64 = 64 << 10;

/// Memory limit of an array's stripe cache.
pub const CACHE_BYTES: u64 = 64 << 20;

thread_local! {
    /// Parity scratch (full-stripe P/Q, degraded rows, Q deltas), kept per
    /// thread between writes.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Borrows this thread's scratch buffer, at least `len` bytes.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut v = SCRATCH.with(|c| c.take());
    if v.len() < len {
        v.resize(len, 0);
    }
    let r = f(&mut v[..len]);
    SCRATCH.with(|c| c.set(v));
    r
}

/// Counters of the write path (how rows were written), for tests and
/// benchmarks.
#[derive(Debug, Default)]
pub struct StripeStats {
    /// Rows written whole (no reads).
    pub full: AtomicU64,
    /// Folio columns written by reconstruct-write.
    pub rcw: AtomicU64,
    /// Folio columns written by read-modify-write.
    pub rmw: AtomicU64,
    /// Partial rows written with a member missing.
    pub degraded: AtomicU64,
    /// Folios read from members to fill the cache.
    pub reads: AtomicU64,
}

/// A snapshot of [`StripeStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StripeCounts {
    /// Rows written whole.
    pub full: u64,
    /// Columns written by reconstruct-write.
    pub rcw: u64,
    /// Columns written by read-modify-write.
    pub rmw: u64,
    /// Partial degraded rows.
    pub degraded: u64,
    /// Folios read from members.
    pub reads: u64,
}

impl StripeStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StripeCounts {
        StripeCounts {
            full: self.full.load(Ordering::Relaxed),
            rcw: self.rcw.load(Ordering::Relaxed),
            rmw: self.rmw.load(Ordering::Relaxed),
            degraded: self.degraded.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
        }
    }
}

/// The members as one store for the cache's `BlockOps` (member space).
struct MemberSpace {
    slots: Arc<Slots>,
    raid_disks: usize,
}

fn split(pos: u64) -> (usize, u64) {
    ((pos >> SLOT_SHIFT) as usize, pos & ((1 << SLOT_SHIFT) - 1))
}

fn errno(e: &io::Error) -> Errno {
    e.raw_os_error().filter(|&n| n > 0).unwrap_or(libc::EIO)
}

impl Backing for MemberSpace {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let (slot, off) = split(pos);
        self.slots.read_at(slot, off, buf).map_err(|e| errno(&e))
    }

    fn write_at(&self, pos: u64, buf: &[u8]) -> Result<(), Errno> {
        let (slot, off) = split(pos);
        self.slots.write_at(slot, off, buf).map_err(|e| errno(&e))
    }

    fn flush(&self) -> Result<(), Errno> {
        let mut r = Ok(());
        for m in self.slots.members() {
            if let Err(e) = m.dev.flush() {
                r = r.and(Err(errno(&e)));
            }
        }
        r
    }

    fn set_size(&self, _size: u64) -> Result<(), Errno> {
        Err(libc::EINVAL)
    }

    fn size(&self) -> u64 {
        (self.raid_disks as u64) << SLOT_SHIFT
    }
}

/// What a row update works with.
pub struct Ctx<'a> {
    /// The personality (stripe maps, degraded reads).
    pub personality: &'a dyn Personality,
    /// The members.
    pub slots: &'a Slots,
    /// Member write fan-out.
    pub pool: &'a WritePool,
    /// The superblock's `resync_offset` (member sectors): rows from there
    /// on are not known to be in sync, so they are written by
    /// reconstruct-write, which makes their parity right (md forces rcw
    /// past `recovery_cp` the same way). `u64::MAX` when clean.
    pub resync_from: u64,
    /// Member failures: a member write error fails the member.
    pub health: &'a Health,
}

/// One data chunk's part of a write, inside one row.
#[derive(Clone, Copy, Debug)]
struct Piece {
    /// Data index in the row.
    k: usize,
    /// Start inside the chunk (bytes).
    lo: u64,
    /// End inside the chunk.
    hi: u64,
    /// Where the bytes start in the caller's data.
    buf: usize,
}

impl Piece {
    /// The part of this piece inside chunk columns `[a, b)`, with the
    /// caller's bytes for it.
    fn clip<'d>(&self, a: u64, b: u64, data: &'d [u8]) -> Option<(u64, u64, &'d [u8])> {
        let (lo, hi) = (self.lo.max(a), self.hi.min(b));
        if lo >= hi {
            return None;
        }
        let start = self.buf + (lo - self.lo) as usize;
        Some((lo, hi, &data[start..start + (hi - lo) as usize]))
    }
}

/// The stripe cache of one array.
pub struct StripeCache {
    shape: ParityShape,
    folio: u64,
    mapping: Arc<AddressSpace>,
    _cache: PageCache,
    locks: Box<[Mutex<()>]>,
    /// Per stripe lock: how many times a row hashed to it had member bytes
    /// rewritten (bumped under the lock, when the rewrite is complete).
    /// The sync thread reads ahead of its locks and checks these to know
    /// whether what it read is still what the members hold.
    gens: Box<[AtomicU64]>,
    stats: StripeStats,
}

/// A row's stripe lock held by a writer: the row's write generation is
/// bumped when it is let go (the member writes done or failed), before the
/// lock itself is released.
struct WriteLock<'a> {
    gen: &'a AtomicU64,
    _row: std::sync::MutexGuard<'a, ()>,
}

impl Drop for WriteLock<'_> {
    fn drop(&mut self) {
        self.gen.fetch_add(1, Ordering::Release);
    }
}

impl std::fmt::Debug for StripeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeCache")
            .field("shape", &self.shape)
            .field("folio", &self.folio)
            .field("cached_folios", &self.mapping.nr_folios())
            .finish_non_exhaustive()
    }
}

impl StripeCache {
    /// The cache of a parity array (`None` for other levels).
    pub fn new(personality: &dyn Personality, slots: Arc<Slots>) -> Option<StripeCache> {
        let shape = personality.parity_shape()?;
        let folio = shape.chunk_bytes.min(MAX_FOLIO);
        let cache = PageCache::new(CacheConfig { memory_limit: CACHE_BYTES, dirty_limit: 0, flushers: 0 });
        let ops = Arc::new(BlockOps::new(Arc::new(MemberSpace { slots, raid_disks: shape.raid_disks })));
        // A power of two between 4 KiB (md's smallest chunk) and 64 KiB.
        let mapping = cache.mapping(ops, folio as usize).ok()?;
        Some(StripeCache {
            shape,
            folio,
            mapping,
            _cache: cache,
            locks: (0..STRIPE_LOCKS).map(|_| Mutex::new(())).collect(),
            gens: (0..STRIPE_LOCKS).map(|_| AtomicU64::new(0)).collect(),
            stats: StripeStats::default(),
        })
    }

    /// How rows have been written so far.
    pub fn stats(&self) -> StripeCounts {
        self.stats.snapshot()
    }

    /// Folios cached now.
    pub fn cached_folios(&self) -> usize {
        self.mapping.nr_folios()
    }

    /// Writes `data` at array byte `offset` (inside the array: the caller
    /// checked), row by row; returns when every member write has completed.
    /// A failed member write fails the call (rows before it are written,
    /// the failing row is undefined on the members, its cache dropped).
    ///
    /// Called under: no lock.
    pub fn write(&self, ctx: &Ctx<'_>, offset: u64, data: &[u8]) -> io::Result<()> {
        let sb = self.shape.stripe_bytes();
        let chunk = self.shape.chunk_bytes;
        let end = offset + data.len() as u64;
        let mut pos = offset;
        let mut pieces = Vec::with_capacity(self.shape.data_disks);
        let mut map = StripeMap::default();
        while pos < end {
            let stripe = pos / sb;
            let row_start = stripe * sb;
            let row_end = end.min(row_start + sb);
            let full = pos == row_start && row_end == row_start + sb;
            pieces.clear();
            while pos < row_end {
                let in_row = pos - row_start;
                let lo = in_row % chunk;
                let len = (chunk - lo).min(row_end - pos);
                pieces.push(Piece {
                    k: (in_row / chunk) as usize,
                    lo,
                    hi: lo + len,
                    buf: (pos - offset) as usize,
                });
                pos += len;
            }
            if !ctx.personality.stripe_map(stripe, &mut map) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("stripe row {stripe} is past the end of the array"),
                ));
            }
            let _row = self.lock_for_write(stripe);
            let degraded = (0..self.shape.raid_disks).any(|s| !ctx.slots.is_present(s));
            if full {
                self.full_row(ctx, stripe, &map, &pieces, data)?;
            } else if degraded {
                self.degraded_row(ctx, stripe, &map, &pieces, data)?;
            } else {
                self.cached_row(ctx, stripe, &map, &pieces, data)?;
            }
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at array byte `offset` (inside the array:
    /// the caller checked) holding each row's stripe lock while that row's
    /// part is read. For degraded arrays: a block rebuilt from the others
    /// must not mix old and new blocks of a row being written (md sends
    /// such reads through the stripe cache, under the row's lock, too).
    /// Healthy reads need no lock.
    ///
    /// Called under: no lock.
    pub fn read_rows(&self, ctx: &Ctx<'_>, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let sb = self.shape.stripe_bytes();
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let stripe = pos / sb;
            let row_end = end.min((stripe + 1) * sb);
            let part = &mut buf[(pos - offset) as usize..(row_end - offset) as usize];
            let _row =
                self.locks[(stripe % STRIPE_LOCKS as u64) as usize].lock().unwrap_or_else(|p| p.into_inner());
            ctx.personality.read(ctx.slots, pos, part)?;
            pos = row_end;
        }
        Ok(())
    }

    /// Runs `f` holding stripe row `stripe`'s lock (the read-error repair
    /// of [`crate::repair`]: a row's read and rewrite are not interleaved
    /// with a write of the row).
    ///
    /// Called under: no lock.
    pub(crate) fn with_row<R>(&self, stripe: u64, f: impl FnOnce() -> R) -> R {
        let _row =
            self.locks[(stripe % STRIPE_LOCKS as u64) as usize].lock().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// Runs `f` holding the stripe locks of every row in `rows` (taken in
    /// lock order, each once): a batch of rows read and rewritten by the
    /// sync thread. Writers hold one row lock at a time, so this cannot
    /// deadlock with them.
    ///
    /// Called under: no lock.
    pub(crate) fn with_rows<R>(&self, rows: std::ops::Range<u64>, f: impl FnOnce() -> R) -> R {
        let mut idx: Vec<usize> = rows.map(|r| (r % STRIPE_LOCKS as u64) as usize).collect();
        idx.sort_unstable();
        idx.dedup();
        let _held: Vec<_> =
            idx.iter().map(|&i| self.locks[i].lock().unwrap_or_else(|p| p.into_inner())).collect();
        f()
    }

    /// Drops what the cache holds of row `stripe`'s chunk columns
    /// `[lo, hi)` on every member (a member was rewritten underneath), and
    /// bumps the row's write generation ([`Self::rows_gen`]).
    ///
    /// Called under: the row's stripe lock (inside [`Self::with_row`]), no
    /// folio lock.
    pub(crate) fn forget_columns(&self, stripe: u64, lo: u64, hi: u64) {
        self.forget(stripe, lo, hi);
        self.gens[(stripe % STRIPE_LOCKS as u64) as usize].fetch_add(1, Ordering::Release);
    }

    /// Row `stripe`'s stripe lock, for a writer of its member bytes.
    fn lock_for_write(&self, stripe: u64) -> WriteLock<'_> {
        let i = (stripe % STRIPE_LOCKS as u64) as usize;
        WriteLock { gen: &self.gens[i], _row: self.locks[i].lock().unwrap_or_else(|p| p.into_inner()) }
    }

    /// The write generation of rows `rows`: a number that changes whenever
    /// a write of any of their member bytes completes (every rewrite of a
    /// row's member bytes ends under the row's stripe lock by bumping the
    /// counter of that lock; this sums those counters, one per row).
    ///
    /// The sync thread reads rows ahead of holding their locks: it takes
    /// the generation before its reads are issued and again under the
    /// locks; equal, no write completed or was in progress in between
    /// (one in progress at the first look bumps before it unlocks), so the
    /// bytes read are the members' current ones. Different rows sharing a
    /// lock can only make it re-read needlessly.
    ///
    /// Called under: any lock, or none.
    pub(crate) fn rows_gen(&self, rows: std::ops::Range<u64>) -> u64 {
        rows.map(|r| self.gens[(r % STRIPE_LOCKS as u64) as usize].load(Ordering::Acquire))
            .fold(0u64, u64::wrapping_add)
    }

    /// The cache index of `slot`'s member byte `offset`.
    fn index(&self, slot: usize, offset: u64) -> u64 {
        self.mapping.index_of(((slot as u64) << SLOT_SHIFT) | offset)
    }

    /// Marks the cached folios of every slot over row `stripe`'s chunk
    /// columns `[lo, hi)` not up to date (the members changed underneath).
    /// Called under the row's stripe lock, with no folio lock held.
    fn forget(&self, stripe: u64, lo: u64, hi: u64) {
        let base = stripe * self.shape.chunk_bytes;
        let (a, b) = (lo & !(self.folio - 1), hi.div_ceil(self.folio) * self.folio);
        for slot in 0..self.shape.raid_disks {
            let mut col = a;
            while col < b {
                if let Some(f) = self.mapping.lookup(self.index(slot, base + col)) {
                    f.lock().clear_uptodate();
                }
                col += self.folio;
            }
        }
    }

    /// A whole row: parity from the caller's bytes, one write per member.
    fn full_row(
        &self,
        ctx: &Ctx<'_>,
        stripe: u64,
        map: &StripeMap,
        pieces: &[Piece],
        data: &[u8],
    ) -> io::Result<()> {
        let shape = &self.shape;
        let chunk = shape.chunk_bytes as usize;
        let base = stripe * shape.chunk_bytes;
        debug_assert_eq!(pieces.len(), shape.data_disks);
        StripeStats::bump(&self.stats.full);
        self.forget(stripe, 0, shape.chunk_bytes);
        let srcs: Vec<&[u8]> = pieces.iter().map(|p| &data[p.buf..p.buf + chunk]).collect();
        let nparity = 1 + usize::from(shape.raid6);
        with_scratch(nparity * chunk, |scratch| {
            let (p, q) = scratch.split_at_mut(chunk);
            gen_parity(shape, map, &srcs, p, q);
            let mut jobs: Vec<WriteJob<'_>> = Vec::with_capacity(shape.raid_disks);
            for (k, s) in srcs.iter().enumerate() {
                jobs.push(WriteJob { slot: map.data[k], offset: base, data: s });
            }
            jobs.push(WriteJob { slot: map.p, offset: base, data: p });
            if let Some(qs) = map.q {
                jobs.push(WriteJob { slot: qs, offset: base, data: q });
            }
            submit(ctx, &mut jobs)
        })
    }

    /// A partial row with a member missing: read the row's data over the
    /// touched columns (rebuilding the missing), lay the new bytes over it,
    /// recompute P and Q, write the members present.
    fn degraded_row(
        &self,
        ctx: &Ctx<'_>,
        stripe: u64,
        map: &StripeMap,
        pieces: &[Piece],
        data: &[u8],
    ) -> io::Result<()> {
        let shape = &self.shape;
        let dd = shape.data_disks;
        let lo = pieces.iter().map(|p| p.lo).min().unwrap_or(0);
        let hi = pieces.iter().map(|p| p.hi).max().unwrap_or(0);
        let len = (hi - lo) as usize;
        let base = stripe * shape.chunk_bytes;
        let row_start = stripe * shape.stripe_bytes();
        StripeStats::bump(&self.stats.degraded);
        self.forget(stripe, lo, hi);
        with_scratch((dd + 2) * len, |scratch| {
            let (cols, parity) = scratch.split_at_mut(dd * len);
            let (p, q) = parity.split_at_mut(len);
            for (k, col) in cols.chunks_exact_mut(len).enumerate() {
                let piece = pieces.iter().find(|pc| pc.k == k);
                let covered = piece.is_some_and(|pc| pc.lo == lo && pc.hi == hi);
                if !covered {
                    let at = row_start + k as u64 * shape.chunk_bytes + lo;
                    ctx.personality.read(ctx.slots, at, col)?;
                }
                if let Some((a, b, new)) = piece.and_then(|pc| pc.clip(lo, hi, data)) {
                    col[(a - lo) as usize..(b - lo) as usize].copy_from_slice(new);
                }
            }
            let cols: Vec<&[u8]> = cols.chunks_exact(len).collect();
            gen_parity(shape, map, &cols, p, q);
            let mut jobs: Vec<WriteJob<'_>> = Vec::with_capacity(shape.raid_disks);
            for pc in pieces {
                let (a, b) = ((pc.lo - lo) as usize, (pc.hi - lo) as usize);
                jobs.push(WriteJob { slot: map.data[pc.k], offset: base + pc.lo, data: &cols[pc.k][a..b] });
            }
            jobs.push(WriteJob { slot: map.p, offset: base + lo, data: p });
            if let Some(qs) = map.q {
                jobs.push(WriteJob { slot: qs, offset: base + lo, data: q });
            }
            submit(ctx, &mut jobs)
        })
    }

    /// Whether `slot`'s folio holding member byte `offset` is cached and up
    /// to date.
    fn cached(&self, slot: usize, offset: u64) -> bool {
        self.mapping.lookup(self.index(slot, offset)).is_some_and(|f| f.is_uptodate())
    }

    /// A partial row with every member present, through the cache, column
    /// by column: md's rmw-or-rcw choice by blocks to read.
    fn cached_row(
        &self,
        ctx: &Ctx<'_>,
        stripe: u64,
        map: &StripeMap,
        pieces: &[Piece],
        data: &[u8],
    ) -> io::Result<()> {
        let shape = &self.shape;
        let dd = shape.data_disks;
        let f = self.folio;
        let base = stripe * shape.chunk_bytes;
        let lo = pieces.iter().map(|p| p.lo).min().unwrap_or(0) & !(f - 1);
        let hi = pieces.iter().map(|p| p.hi).max().unwrap_or(0).div_ceil(f) * f;
        let ncols = ((hi - lo) / f) as usize;
        // Roles of a column: data 0..dd, then P, then Q.
        let roles = dd + 1 + usize::from(shape.raid6);
        let slot_of = |role: usize| -> usize {
            if role < dd {
                map.data[role]
            } else if role == dd {
                map.p
            } else {
                map.q.unwrap_or(map.p)
            }
        };
        let piece_of = |k: usize| pieces.iter().find(|p| p.k == k);
        // Choose per column, before taking any folio lock.
        let mut rmw = vec![false; ncols];
        for (c, choice) in rmw.iter_mut().enumerate() {
            let (a, b) = (lo + c as u64 * f, lo + (c as u64 + 1) * f);
            let (mut rcw_reads, mut rmw_reads) = (0, 0);
            for k in 0..dd {
                let cached = self.cached(map.data[k], base + a);
                match piece_of(k).and_then(|p| p.clip(a, b, data)) {
                    Some((x, y, _)) if x == a && y == b => rmw_reads += usize::from(!cached),
                    Some(_) => {
                        rmw_reads += usize::from(!cached);
                        rcw_reads += usize::from(!cached);
                    }
                    None => rcw_reads += usize::from(!cached),
                }
            }
            for role in dd..roles {
                rmw_reads += usize::from(!self.cached(slot_of(role), base + a));
            }
            // md: read-modify-write only when it reads strictly less, and
            // never on a row not known to be in sync (old parity is junk).
            let in_sync = (base + a) / 512 < ctx.resync_from;
            *choice = in_sync && rmw_reads < rcw_reads;
        }
        let needed = |c: usize, role: usize| -> bool {
            if role >= dd || !rmw[c] {
                return true;
            }
            let (a, b) = (lo + c as u64 * f, lo + (c as u64 + 1) * f);
            piece_of(role).and_then(|p| p.clip(a, b, data)).is_some()
        };
        // Lock the folios: the first waited for, the rest only tried.
        let mut locked: Vec<Option<LockedFolio>> = Vec::with_capacity(ncols * roles);
        loop {
            locked.clear();
            let mut ok = true;
            'take: for c in 0..ncols {
                for role in 0..roles {
                    if !needed(c, role) {
                        locked.push(None);
                        continue;
                    }
                    let folio =
                        self.mapping.get_or_create(self.index(slot_of(role), base + lo + c as u64 * f));
                    let lf =
                        if locked.iter().all(Option::is_none) { Some(folio.lock()) } else { folio.trylock() };
                    match lf {
                        Some(lf) => locked.push(Some(lf)),
                        None => {
                            ok = false;
                            break 'take;
                        }
                    }
                }
            }
            if ok {
                break;
            }
            locked.clear();
            std::thread::yield_now();
        }
        let result = self.update_columns(ctx, map, pieces, data, base, lo, &rmw, &mut locked);
        if result.is_err() {
            for lf in locked.iter().flatten() {
                lf.clear_uptodate();
            }
        }
        result
    }

    /// The body of [`Self::cached_row`] once its folios are locked:
    /// `locked[c * roles + role]`.
    #[allow(clippy::too_many_arguments)]
    fn update_columns(
        &self,
        ctx: &Ctx<'_>,
        map: &StripeMap,
        pieces: &[Piece],
        data: &[u8],
        base: u64,
        lo: u64,
        rmw: &[bool],
        locked: &mut [Option<LockedFolio>],
    ) -> io::Result<()> {
        let shape = &self.shape;
        let dd = shape.data_disks;
        let f = self.folio;
        let roles = dd + 1 + usize::from(shape.raid6);
        let slot_of = |role: usize| {
            if role < dd {
                map.data[role]
            } else if role == dd {
                map.p
            } else {
                map.q.unwrap_or(map.p)
            }
        };
        // Fill what must be read.
        for (c, &is_rmw) in rmw.iter().enumerate() {
            let (a, b) = (lo + c as u64 * f, lo + (c as u64 + 1) * f);
            for role in 0..roles {
                let Some(lf) = locked[c * roles + role].as_mut() else { continue };
                if lf.folio().is_uptodate() {
                    continue;
                }
                let must_read = if role < dd {
                    let whole = pieces
                        .iter()
                        .find(|p| p.k == role)
                        .and_then(|p| p.clip(a, b, data))
                        .is_some_and(|(x, y, _)| x == a && y == b);
                    is_rmw || !whole
                } else {
                    is_rmw
                };
                if must_read {
                    ctx.slots.read_at(slot_of(role), base + a, lf.data_mut())?;
                    lf.mark_uptodate();
                    StripeStats::bump(&self.stats.reads);
                }
            }
        }
        // Compute new data and parity in the folios.
        for (c, &is_rmw) in rmw.iter().enumerate() {
            let (a, b) = (lo + c as u64 * f, lo + (c as u64 + 1) * f);
            let col = &mut locked[c * roles..(c + 1) * roles];
            let (datas, parity) = col.split_at_mut(dd);
            let (pslot, qslot) = parity.split_at_mut(1);
            let (Some(p), mut q) = (pslot[0].as_mut(), qslot.first_mut().and_then(Option::as_mut)) else {
                return Err(io::Error::other("stripe cache: parity folio not locked"));
            };
            if is_rmw {
                StripeStats::bump(&self.stats.rmw);
                for pc in pieces {
                    let Some((x, y, new)) = pc.clip(a, b, data) else { continue };
                    let Some(d) = datas[pc.k].as_mut() else {
                        return Err(io::Error::other("stripe cache: data folio not locked"));
                    };
                    let r = (x - a) as usize..(y - a) as usize;
                    gf::xor_into(&mut p.data_mut()[r.clone()], &d.data()[r.clone()]);
                    gf::xor_into(&mut p.data_mut()[r.clone()], new);
                    if let Some(q) = q.as_deref_mut() {
                        with_scratch(new.len(), |delta| {
                            delta.copy_from_slice(&d.data()[r.clone()]);
                            gf::xor_into(delta, new);
                            gf::mul_in_place(delta, gf::exp2(map.pos[pc.k]));
                            gf::xor_into(&mut q.data_mut()[r.clone()], delta);
                        });
                    }
                    d.data_mut()[r].copy_from_slice(new);
                }
            } else {
                StripeStats::bump(&self.stats.rcw);
                for pc in pieces {
                    let Some((x, y, new)) = pc.clip(a, b, data) else { continue };
                    let Some(d) = datas[pc.k].as_mut() else {
                        return Err(io::Error::other("stripe cache: data folio not locked"));
                    };
                    d.data_mut()[(x - a) as usize..(y - a) as usize].copy_from_slice(new);
                    d.mark_uptodate();
                }
                let mut srcs: Vec<&[u8]> = Vec::with_capacity(dd);
                for d in datas.iter() {
                    match d {
                        Some(d) => srcs.push(d.data()),
                        None => return Err(io::Error::other("stripe cache: data folio not locked")),
                    }
                }
                match q {
                    Some(q) => {
                        gen_parity(shape, map, &srcs, p.data_mut(), q.data_mut());
                        q.mark_uptodate();
                    }
                    None => gen_parity(shape, map, &srcs, p.data_mut(), &mut []),
                }
                p.mark_uptodate();
            }
        }
        // The member writes: the new bytes of each data folio, and P/Q over
        // the columns' touched span.
        let mut jobs: Vec<WriteJob<'_>> = Vec::with_capacity(ncols_jobs(rmw.len(), pieces.len(), roles));
        for c in 0..rmw.len() {
            let (a, b) = (lo + c as u64 * f, lo + (c as u64 + 1) * f);
            let (mut span_lo, mut span_hi) = (b, a);
            for pc in pieces {
                let Some((x, y, _)) = pc.clip(a, b, data) else { continue };
                let Some(d) = locked[c * roles + pc.k].as_ref() else { continue };
                jobs.push(WriteJob {
                    slot: map.data[pc.k],
                    offset: base + x,
                    data: &d.data()[(x - a) as usize..(y - a) as usize],
                });
                span_lo = span_lo.min(x);
                span_hi = span_hi.max(y);
            }
            if span_lo < span_hi {
                for role in dd..roles {
                    if let Some(pf) = locked[c * roles + role].as_ref() {
                        jobs.push(WriteJob {
                            slot: slot_of(role),
                            offset: base + span_lo,
                            data: &pf.data()[(span_lo - a) as usize..(span_hi - a) as usize],
                        });
                    }
                }
            }
        }
        submit(ctx, &mut jobs)
    }
}

/// P (and for raid6 Q) of a row's data blocks `srcs` (data order), all
/// as long as `p`; `q` is not touched for raid4/5.
pub(crate) fn gen_parity(shape: &ParityShape, map: &StripeMap, srcs: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    if shape.raid6 {
        let mut by_pos: Vec<Option<&[u8]>> = vec![None; shape.syndrome_disks];
        for (k, s) in srcs.iter().enumerate() {
            by_pos[map.pos[k]] = Some(s);
        }
        gf::gen_syndrome(&by_pos, p, q);
    } else {
        gf::xor_blocks(p, srcs);
    }
}

/// Issues a row's member writes (those of members present), a member's
/// writes adjacent so one thread takes them all.
fn submit(ctx: &Ctx<'_>, jobs: &mut Vec<WriteJob<'_>>) -> io::Result<()> {
    // A member being recovered is written too (it is not read).
    jobs.retain(|j| ctx.slots.takes_writes(j.slot));
    jobs.sort_unstable_by_key(|j| (j.slot, j.offset));
    ctx.pool.write_all(ctx.slots, jobs, &|slot, e| ctx.health.absorb(slot, e))
}

/// Capacity for a row's job list.
fn ncols_jobs(ncols: usize, pieces: usize, roles: usize) -> usize {
    ncols * (pieces + roles)
}
