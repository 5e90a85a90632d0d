//! An assembled array: the personality plus the members in their slots.

use std::io;
use std::sync::Arc;

use blockio::{Access, Member};

use crate::personality::{MemberRead, Personality, WritePiece};
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
    pub slots: Slots,
}

impl Array {
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
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.personality.read(&self.slots, offset, buf)
    }

    /// Whether the array takes writes: every present member was opened
    /// read-write (see [`crate::assemble_writable`]).
    pub fn writable(&self) -> bool {
        self.slots.0.iter().flatten().all(|m| m.dev.access() == Access::ReadWrite)
    }

    /// Writes all of `data` at array byte `offset`: every copy of every
    /// piece, mapped as reads are. Any alignment is accepted. Returns once
    /// every member write has completed (not flushed: see [`Array::flush`]).
    ///
    /// Refused, with nothing written: a read-only array (`EROFS`), a range
    /// past the end of the array (`EFBIG`), parity levels (`EOPNOTSUPP`:
    /// their writes come with the stripe cache), and a piece with no
    /// present copy. Copies on missing slots are skipped (a degraded
    /// mirror takes writes). A member write that fails fails the whole
    /// write; the other copies may already hold the new data (until
    /// members can be marked faulty, the caller must treat the range as
    /// undefined).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.writable() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > self.size()) {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
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
        for WritePiece { slot, member_offset, buf_start, len } in pieces {
            if self.slots.is_present(slot) {
                self.slots.write_at(slot, member_offset, &data[buf_start..buf_start + len])?;
            }
        }
        Ok(())
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
