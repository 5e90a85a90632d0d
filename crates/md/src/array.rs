//! An assembled array: the personality plus the members in their slots.

use std::io;
use std::sync::Arc;

use blockio::Member;

use crate::personality::{MemberRead, Personality};
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

    /// A good size for large sequential reads.
    pub fn io_hint(&self) -> u64 {
        self.personality.io_hint().max(4096)
    }
}
