//! An assembled array: the personality plus the members in their slots.

use std::io;
use std::sync::{Arc, OnceLock};

use blockio::{Access, Member};

use crate::fanout::{WriteJob, WritePool};
use crate::personality::{MemberRead, Personality, WritePiece};
use crate::stripe::{Ctx, StripeCache, StripeCounts};
use crate::superblock::Superblock;

/// A member placed in its slot.
#[derive(Debug)]
pub struct SlotMember {
    /// The open member.
    pub dev: Arc<Member>,
    /// Byte offset of the data area on the member (`data_offset * 512`).
    pub data_start: u64,
    /// Bytes of the data area that may be read (`data_size * 512`).
    pub data_bytes: u64,
    /// The member's own superblock.
    pub sb: Superblock,
}

/// Members by slot (`None`: missing).
#[derive(Debug)]
pub struct Slots(pub Vec<Option<SlotMember>>);

impl MemberRead for Slots {
    fn is_present(&self, slot: usize) -> bool {
        matches!(self.0.get(slot), Some(Some(_)))
    }

    fn read_at(&self, slot: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let Some(Some(m)) = self.0.get(slot) else {
            return Err(io::Error::other(format!("slot {slot} has no member")));
        };
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > m.data_bytes) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "read of {} bytes at {offset} beyond the data area ({} bytes) of {}",
                    buf.len(),
                    m.data_bytes,
                    m.dev.path().display()
                ),
            ));
        }
        m.dev.read_exact_at(buf, m.data_start + offset)
    }
}

impl Slots {
    /// Writes all of `data` at `offset` of `slot`'s data area, refusing
    /// writes outside the data area.
    pub fn write_at(&self, slot: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        let Some(Some(m)) = self.0.get(slot) else {
            return Err(io::Error::other(format!("slot {slot} has no member")));
        };
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > m.data_bytes) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "write of {} bytes at {offset} beyond the data area ({} bytes) of {}",
                    data.len(),
                    m.data_bytes,
                    m.dev.path().display()
                ),
            ));
        }
        m.dev.write_all_at(data, m.data_start + offset)
    }
}

/// An assembled array.
#[derive(Debug)]
pub struct Array {
    /// The authoritative (freshest) superblock.
    pub sb: Superblock,
    /// The personality serving reads.
    pub personality: Box<dyn Personality>,
    /// The members by slot.
    pub slots: Arc<Slots>,
    /// The write side, made at the first write.
    writer: OnceLock<Writer>,
}

/// What writes need: the member write fan-out and, for parity levels, the
/// stripe cache.
#[derive(Debug)]
struct Writer {
    pool: WritePool,
    stripes: Option<StripeCache>,
}

impl Array {
    /// An array of `slots` laid out by `personality`.
    pub fn new(sb: Superblock, personality: Box<dyn Personality>, slots: Slots) -> Array {
        Array { sb, personality, slots: Arc::new(slots), writer: OnceLock::new() }
    }

    fn writer(&self) -> &Writer {
        self.writer.get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let members = self.slots.0.iter().flatten().count();
            Writer {
                pool: WritePool::new(members.saturating_sub(1).min(cpus)),
                stripes: StripeCache::new(self.personality.as_ref(), Arc::clone(&self.slots)),
            }
        })
    }

    /// Member writes run so far by writing threads and by the write
    /// workers (`(0, 0)` before the first write).
    pub fn write_jobs(&self) -> (u64, u64) {
        self.writer.get().map_or((0, 0), |w| w.pool.jobs_run())
    }

    /// How the stripe cache has written rows (parity levels; `None` for
    /// other levels or before the first write).
    pub fn stripe_stats(&self) -> Option<StripeCounts> {
        self.writer.get()?.stripes.as_ref().map(StripeCache::stats)
    }

    /// Array size in bytes.
    pub fn size(&self) -> u64 {
        self.personality.array_bytes()
    }

    /// Number of slots without a member.
    pub fn missing(&self) -> usize {
        self.slots.0.iter().filter(|s| s.is_none()).count()
    }

    /// Reads exactly `buf.len()` bytes at `offset`. Fails for ranges outside
    /// the array and for data no present member can supply.
    ///
    /// A writable degraded raid4/5/6 array reads row by row under the rows'
    /// stripe locks (see [`StripeCache::read_rows`]): rebuilt data is never
    /// torn by a concurrent write of the same row.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.missing() > 0 && self.personality.parity_shape().is_some() && self.writable() {
            crate::personality::check_range(offset, buf.len(), self.size())?;
            let writer = self.writer();
            if let Some(stripes) = &writer.stripes {
                return stripes.read_rows(&self.ctx(writer), offset, buf);
            }
        }
        self.personality.read(self.slots.as_ref(), offset, buf)
    }

    fn ctx<'a>(&'a self, writer: &'a Writer) -> Ctx<'a> {
        Ctx {
            personality: self.personality.as_ref(),
            slots: &self.slots,
            pool: &writer.pool,
            resync_from: self.sb.resync_offset,
        }
    }

    /// Whether the array takes writes: every present member was opened
    /// read-write (see [`crate::assemble_writable`]).
    pub fn writable(&self) -> bool {
        self.slots.0.iter().flatten().all(|m| m.dev.access() == Access::ReadWrite)
    }

    /// Writes all of `data` at array byte `offset`: every copy of every
    /// piece (raid0/1/10, mapped as reads are), or through the stripe cache
    /// with the parity of every touched row kept right (raid4/5/6, see
    /// [`crate::stripe`]). Any alignment is accepted. Returns once every
    /// member write has completed (not flushed: see [`Array::flush`]); the
    /// member writes of one call run in parallel.
    ///
    /// Refused, with nothing written: a read-only array (`EROFS`), a range
    /// past the end of the array (`EFBIG`), more members missing than the
    /// level tolerates, and a piece with no present copy. Copies on
    /// missing slots are skipped (a degraded mirror takes writes; a
    /// degraded parity row keeps its parity right for the members
    /// present). A member write that fails fails the whole write; the
    /// other members may already hold the new data (until members can be
    /// marked faulty, the caller must treat the range as undefined).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.writable() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > self.size()) {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        if data.is_empty() {
            return Ok(());
        }
        let present: Vec<bool> = (0..self.slots.0.len()).map(|s| self.slots.is_present(s)).collect();
        if !self.personality.readable_with(&present) {
            return Err(crate::personality::unrecoverable(&format!(
                "{} of {} members are missing, more than {} tolerates",
                present.iter().filter(|p| !**p).count(),
                present.len(),
                self.personality.geometry().level
            )));
        }
        let writer = self.writer();
        if let Some(stripes) = &writer.stripes {
            return stripes.write(&self.ctx(writer), offset, data);
        }
        let pieces = self.personality.map_write(offset, data.len())?;
        // Every piece needs a present copy; copies share `buf_start`.
        let mut starts: Vec<(usize, bool)> =
            pieces.iter().map(|p| (p.buf_start, self.slots.is_present(p.slot))).collect();
        starts.sort_unstable();
        for group in starts.chunk_by(|a, b| a.0 == b.0) {
            if !group.iter().any(|&(_, present)| present) {
                return Err(crate::personality::unrecoverable(&format!(
                    "no present member holds array byte {}",
                    offset + group[0].0 as u64
                )));
            }
        }
        let mut jobs: Vec<WriteJob<'_>> = pieces
            .iter()
            .filter(|p| self.slots.is_present(p.slot))
            .map(|&WritePiece { slot, member_offset, buf_start, len }| WriteJob {
                slot,
                offset: member_offset,
                data: &data[buf_start..buf_start + len],
            })
            .collect();
        jobs.sort_unstable_by_key(|j| (j.slot, j.offset));
        writer.pool.write_all(&self.slots, &jobs)
    }

    /// Makes every completed write durable on every present member;
    /// flushes them all and reports the first error.
    pub fn flush(&self) -> io::Result<()> {
        let mut first = None;
        for m in self.slots.0.iter().flatten() {
            if let Err(e) = m.dev.flush() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// A good size for large sequential reads.
    pub fn io_hint(&self) -> u64 {
        self.personality.io_hint().max(4096)
    }
}
