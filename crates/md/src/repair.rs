//! md's read-error handling: a member read that fails is answered from
//! redundancy, the good bytes are written back over the member (md's
//! `fix_read_error` for raid1/10, `R5_ReadError` → `R5_ReWrite` →
//! `R5_ReRead` for raid4/5/6), and the member's read-error count rises;
//! past md's limit the member is failed (`md_error`).
//!
//! ## Responsibility boundary
//! [`Array::read_at`](crate::Array::read_at) decides *when* (which path,
//! which locks); this module does the work:
//! * `Excluding` is the [`MemberRead`] the personalities read through:
//!   it hides the slots already found failing in this read and logs every
//!   member read that fails with an I/O error (`Failure`);
//! * `Repair::read_recovering` retries a read with each failing slot
//!   excluded in turn (at most `raid_disks + 1` attempts), so the
//!   personality rebuilds that member's bytes from mirrors or parity; a
//!   read no combination of members answers fails with `EIO` (never
//!   zeros, never stale bytes);
//! * `Repair::repair_mirrors` (raid1/10) and `Repair::repair_row`
//!   (raid4/5/6, one stripe row) count the corrected error against each
//!   failing member and rewrite the bytes that belong there.
//!
//! ## What is rewritten
//! Only the failing member, only over the member range its failed read
//! covered, and only with bytes the array already holds:
//! * **mirrors**: the copies on the failing slot of the range just read
//!   ([`Personality::map_write`]'s pieces for that slot), from the caller's
//!   buffer (the good copy just read);
//! * **parity levels**, per stripe row, by the failing member's role in
//!   the row ([`Personality::stripe_map`]): a *data* block is read again
//!   through the personality with the member excluded (rebuilt from the
//!   others, so bytes outside the caller's range are right too); a *P or
//!   Q* block (read to rebuild another, absent, member) is recomputed from
//!   the row's data over the failed columns. If those bytes cannot be had
//!   (too many members out), nothing is written; the error is still
//!   counted.
//!
//! Each rewrite is re-read (md's verify: the re-read must succeed; the
//! bytes are not compared). A rewrite that fails fails the member as a
//! write error (`write_error`); a verify that fails fails it as a read
//! error.
//!
//! ## Counting
//! One corrected error per failing member per array read (md counts per
//! failed request too), into
//! [`SlotMember::read_errors`](crate::array::SlotMember::read_errors)
//! (`dev-*/errors`). When the count exceeds [`MAX_CORRECTED_READ_ERRORS`] (md's default
//! `max_corrected_read_errors`), the member is failed and not rewritten.
//! umd keeps one counter where md keeps two (`read_errors`, which decays
//! by half per hour of quiet and meets the limit, and `corrected_errors`,
//! which `errors` shows); there is no decay. Errors a read could not
//! correct (it fails `EIO`) are not counted and fail no member: md would
//! record a bad block there, which umd has no list for.
//!
//! A read-only array (members opened read-only) counts and applies the
//! limit but never rewrites.
//!
//! ## Allocation
//! None while no member read fails (the exclusion list is made at the
//! first failure); the error path allocates its lists and rewrite buffers.
//!
//! ## Synchronization model
//! Everything here runs on the reading thread. `Excluding`'s log is a
//! leaf mutex taken only when a member read fails. The caller holds, for a
//! writable raid4/5/6 array, the row's stripe lock across
//! `Repair::read_recovering` and `Repair::repair_row`, so no write of
//! the row can interleave with the read and the rewrite. For a writable
//! raid1/10 array the caller reads the range again holding its write
//! windows exclusively (mirror writes hold theirs shared) and repairs from
//! that read, so a write of the range cannot land between the read and
//! the rewrite (md freezes the array for `fix_read_error`).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use crate::array::{Health, Slots};
use crate::personality::{MemberRead, ParityShape, Personality, StripeMap};
use crate::stripe::gen_parity;

/// md's `MD_DEFAULT_MAX_CORRECTED_READ_ERRORS`: a member whose corrected
/// read errors exceed this is failed.
pub const MAX_CORRECTED_READ_ERRORS: u32 = 20;

/// A member read that failed with an I/O error: `len` bytes at `offset`
/// of `slot`'s data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    /// Member slot.
    pub slot: usize,
    /// Byte offset in the member's data area.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Failure {
    /// The part of this failure inside member bytes `[lo, hi)`, if any.
    pub fn clip(&self, lo: u64, hi: u64) -> Option<(u64, u64)> {
        let (a, b) = (self.offset.max(lo), self.offset.saturating_add(self.len).min(hi));
        (a < b).then_some((a, b))
    }
}

/// The members as a personality reads them during one attempt: `excluded`
/// slots count as absent, and every member read failing with an I/O
/// error is logged.
pub(crate) struct Excluding<'a> {
    slots: &'a Slots,
    excluded: &'a [bool],
    log: Mutex<Vec<Failure>>,
}

impl<'a> Excluding<'a> {
    /// Reads `slots`, hiding the slots whose `excluded` entry is true.
    pub fn new(slots: &'a Slots, excluded: &'a [bool]) -> Excluding<'a> {
        Excluding { slots, excluded, log: Mutex::new(Vec::new()) }
    }

    /// The failures logged so far.
    pub fn into_failures(self) -> Vec<Failure> {
        self.log.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    fn excluded(&self, slot: usize) -> bool {
        self.excluded.get(slot).copied().unwrap_or(false)
    }
}

impl MemberRead for Excluding<'_> {
    fn is_present(&self, slot: usize) -> bool {
        !self.excluded(slot) && self.slots.is_present(slot)
    }

    /// Reads through [`Slots::read_at`]. An error of a member in service
    /// other than `InvalidInput` (a request outside the data area: a bug,
    /// not the medium) is logged as a `Failure`.
    fn read_at(&self, slot: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if !self.is_present(slot) {
            return Err(io::Error::other(format!("read of slot {slot}, which is not in service")));
        }
        let r = self.slots.read_at(slot, offset, buf);
        if let Err(e) = &r {
            if e.kind() != io::ErrorKind::InvalidInput {
                let f = Failure { slot, offset, len: buf.len() as u64 };
                self.log.lock().unwrap_or_else(|p| p.into_inner()).push(f);
            }
        }
        r
    }
}

/// Marks the slots of `failures` in `excluded` (made `n` long first if
/// it is empty and there is something to mark).
fn exclude(excluded: &mut Vec<bool>, n: usize, failures: &[Failure]) {
    if failures.is_empty() {
        return;
    }
    if excluded.is_empty() {
        excluded.resize(n, false);
    }
    for f in failures {
        if let Some(e) = excluded.get_mut(f.slot) {
            *e = true;
        }
    }
}

/// The error of a read that redundancy cannot answer.
pub(crate) fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// Which members one array read has counted an error against, and which
/// of them it gave up on (failed past the limit).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    counted: Vec<usize>,
    gave_up: Vec<usize>,
}

/// The read-error handling of one array.
pub(crate) struct Repair<'a> {
    /// The layout.
    pub personality: &'a dyn Personality,
    /// The members.
    pub slots: &'a Slots,
    /// Member failures (`md_error`).
    pub health: &'a Health,
    /// Whether good bytes are written back (the array is writable).
    pub rewrite: bool,
}

impl Repair<'_> {
    /// Reads `buf.len()` bytes at array byte `offset` (inside the array),
    /// starting with the slots of `seed` excluded, and excluding every slot
    /// whose read fails before trying again, until a read succeeds or one
    /// fails with no new member failing. Returns every failure (`seed`
    /// included): the members to repair for this range. Fails with `EIO`
    /// when no combination of members answers, `InvalidInput` for a bug.
    ///
    /// Called under: for a writable raid4/5/6 array, the stripe lock of the
    /// one row `offset..offset + buf.len()` lies in; else no lock.
    pub fn read_recovering(
        &self,
        offset: u64,
        buf: &mut [u8],
        seed: Vec<Failure>,
    ) -> io::Result<Vec<Failure>> {
        let n = self.slots.len();
        let mut failures = seed;
        // Empty: nothing excluded (the common case allocates nothing).
        let mut excluded: Vec<bool> = Vec::new();
        exclude(&mut excluded, n, &failures);
        // Each retry excludes at least one more slot.
        for _ in 0..=n {
            let reader = Excluding::new(self.slots, &excluded);
            let r = self.personality.read(&reader, offset, buf);
            let new = reader.into_failures();
            // `Excluding` refuses excluded slots: a new failure is a new slot.
            let progressed = !new.is_empty();
            exclude(&mut excluded, n, &new);
            failures.extend(new);
            match r {
                Ok(()) => return Ok(failures),
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Err(e),
                Err(_) if progressed => continue,
                Err(_) => return Err(eio()),
            }
        }
        Err(eio())
    }

    /// Counts one corrected read error against `slot` (once per array
    /// read, through `tally`); fails the member when its count exceeds
    /// [`MAX_CORRECTED_READ_ERRORS`]. Returns whether its bytes should be
    /// rewritten (the array is writable, the member still in service).
    ///
    /// Called under: any lock of the read path (a stripe lock is fine).
    pub fn note(&self, tally: &mut Tally, slot: usize) -> bool {
        let Some(m) = self.slots.get(slot) else { return false };
        if !tally.counted.contains(&slot) {
            tally.counted.push(slot);
            let count = m.read_errors.fetch_add(1, Ordering::AcqRel).saturating_add(1);
            if count > MAX_CORRECTED_READ_ERRORS {
                // Whether or not the array can lose it, do not rewrite a
                // member given up on.
                self.health.fail(slot, false);
                tally.gave_up.push(slot);
            }
        }
        self.rewrite && !tally.gave_up.contains(&slot) && self.slots.in_service(slot).is_some()
    }

    /// Writes `data` at `offset` of `slot`'s data area and reads it back.
    /// A failed write fails the member as a write error, a failed re-read
    /// as a read error; a request outside the data area (a bug) fails
    /// nothing. Returns whether both succeeded.
    ///
    /// Called under: any lock of the read path (a stripe lock is fine).
    fn rewrite(&self, slot: usize, offset: u64, data: &[u8]) -> bool {
        if let Err(e) = self.slots.write_at(slot, offset, data) {
            if e.kind() != io::ErrorKind::InvalidInput {
                self.health.fail(slot, true);
            }
            return false;
        }
        let mut check = vec![0u8; data.len()];
        if let Err(e) = self.slots.read_at(slot, offset, &mut check) {
            if e.kind() != io::ErrorKind::InvalidInput {
                self.health.fail(slot, false);
            }
            return false;
        }
        true
    }

    /// raid1/raid10: after `buf` was read at array byte `offset` with the
    /// member reads `failures` failing, counts the error against each
    /// failing member and rewrites, from `buf`, its copies of the range
    /// that lie over its failed reads.
    ///
    /// Called under: no lock.
    pub fn repair_mirrors(&self, offset: u64, buf: &[u8], failures: &[Failure], tally: &mut Tally) {
        let mut done: Vec<usize> = Vec::new();
        for f in failures {
            if done.contains(&f.slot) {
                continue;
            }
            done.push(f.slot);
            if !self.note(tally, f.slot) {
                continue;
            }
            let Ok(pieces) = self.personality.map_write(offset, buf.len()) else { continue };
            'pieces: for p in pieces.iter().filter(|p| p.slot == f.slot) {
                let end = p.member_offset + p.len as u64;
                for g in failures.iter().filter(|g| g.slot == f.slot) {
                    let Some((a, b)) = g.clip(p.member_offset, end) else { continue };
                    let start = p.buf_start + (a - p.member_offset) as usize;
                    let bytes = &buf[start..start + (b - a) as usize];
                    if !self.rewrite(f.slot, a, bytes) {
                        break 'pieces;
                    }
                }
            }
        }
    }

    /// raid4/5/6: after a read inside stripe row `stripe` with the member
    /// reads `failures` failing, counts the error against each failing
    /// member and rewrites its block of this row over the failed columns:
    /// a data block rebuilt through the personality with the failing
    /// members excluded, P or Q recomputed from the row's data (see the
    /// module doc). Returns the member-byte columns `[lo, hi)` (inside the
    /// chunk) rewritten, for the caller to drop from the stripe cache.
    ///
    /// Called under: the row's stripe lock (no folio lock).
    pub fn repair_row(
        &self,
        shape: &ParityShape,
        map: &StripeMap,
        stripe: u64,
        failures: &[Failure],
        tally: &mut Tally,
    ) -> Option<(u64, u64)> {
        let chunk = shape.chunk_bytes;
        let base = stripe * chunk;
        let row_start = stripe * shape.stripe_bytes();
        let mut excluded = vec![false; self.slots.len()];
        // Per failing slot: the span of its failed reads in this row.
        let mut spans: Vec<(usize, u64, u64)> = Vec::new();
        for f in failures {
            let Some((a, b)) = f.clip(base, base + chunk) else { continue };
            if let Some(e) = excluded.get_mut(f.slot) {
                *e = true;
            }
            match spans.iter_mut().find(|s| s.0 == f.slot) {
                Some(s) => {
                    s.1 = s.1.min(a - base);
                    s.2 = s.2.max(b - base);
                }
                None => spans.push((f.slot, a - base, b - base)),
            }
        }
        let mut touched: Option<(u64, u64)> = None;
        for &(slot, lo, hi) in &spans {
            if !self.note(tally, slot) {
                continue;
            }
            let len = (hi - lo) as usize;
            let reader = Excluding::new(self.slots, &excluded);
            let bytes = if let Some(k) = map.data.iter().position(|&s| s == slot) {
                let mut bytes = vec![0u8; len];
                let at = row_start + k as u64 * chunk + lo;
                if self.personality.read(&reader, at, &mut bytes).is_err() {
                    continue;
                }
                bytes
            } else if slot == map.p || map.q == Some(slot) {
                let mut cols = vec![0u8; shape.data_disks * len];
                let mut ok = true;
                for (k, col) in cols.chunks_exact_mut(len).enumerate() {
                    let at = row_start + k as u64 * chunk + lo;
                    if self.personality.read(&reader, at, col).is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    continue;
                }
                let srcs: Vec<&[u8]> = cols.chunks_exact(len).collect();
                let mut p = vec![0u8; len];
                let mut q = vec![0u8; if shape.raid6 { len } else { 0 }];
                gen_parity(shape, map, &srcs, &mut p, &mut q);
                if slot == map.p {
                    p
                } else {
                    q
                }
            } else {
                continue;
            };
            touched = Some(touched.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
            self.rewrite(slot, base + lo, &bytes);
        }
        touched
    }
}
