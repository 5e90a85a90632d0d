//! raid1: mirroring, read path and write mapping, as Linux `drivers/md/raid1.c` lays it out.
//!
//! ## Responsibility boundary
//! [`Raid1`] reads array ranges from any present mirror: every mirror holds
//! the array at the same offset of its data area, for `dev_sectors` sectors
//! (`raid1_size`). A mirror whose read fails is skipped for the next one.
//!
//! ## Synchronization model
//! Immutable after construction; `read` keeps its state on its stack.
//!
//! ## Performance
//! The array is cut into [`READ_BALANCE_BYTES`] regions handed round-robin to
//! the present mirrors, so a large sequential read (or readers on many
//! threads) spreads over every mirror, while each region is one `read_at`
//! straight into the caller's buffer. No allocation on the read path.

use std::io;

use super::raid0::MemberRun;
use super::{
    check_range, unrecoverable, Geometry, GeometryError, Level, Location, MemberRead, Personality, WritePiece,
};

/// Bytes in a sector.
const SECTOR: u64 = 512;

/// Size of the regions read from one mirror before turning to the next.
pub const READ_BALANCE_BYTES: u64 = 1 << 20;

/// The raid1 personality.
#[derive(Debug)]
pub struct Raid1 {
    /// The geometry it was built from.
    geom: Geometry,
    /// Array size in bytes (`dev_sectors`).
    array_bytes: u64,
}

impl Raid1 {
    /// Checks `geom` for raid1: at least one slot and a size that fits in
    /// bytes. Chunk size and layout carry no meaning for raid1.
    pub fn new(geom: Geometry) -> Result<Self, GeometryError> {
        if geom.level != Level::Raid1 {
            return Err(GeometryError(format!("raid1 personality given level {}", geom.level)));
        }
        if geom.raid_disks == 0 {
            return Err(GeometryError("raid1 with 0 raid disks".into()));
        }
        if geom.member_sectors.len() != geom.raid_disks as usize {
            return Err(GeometryError(format!(
                "raid1 member size list has {} entries for {} raid disks",
                geom.member_sectors.len(),
                geom.raid_disks
            )));
        }
        let array_bytes = geom
            .dev_sectors
            .checked_mul(SECTOR)
            .ok_or_else(|| GeometryError(format!("raid1 size of {} sectors overflows", geom.dev_sectors)))?;
        Ok(Raid1 { geom, array_bytes })
    }

    /// Number of slots.
    fn raid_disks(&self) -> usize {
        self.geom.raid_disks as usize
    }

    /// The mirror to read array byte `pos` from first: the region's turn among
    /// the present mirrors.
    fn preferred_mirror(&self, members: &dyn MemberRead, present: usize, pos: u64) -> usize {
        debug_assert!(present > 0);
        let turn = ((pos / READ_BALANCE_BYTES) % present as u64) as usize;
        (0..self.raid_disks()).filter(|&s| members.is_present(s)).nth(turn).unwrap_or(0)
    }

    /// After the read from mirror `failed` failed: reads `buf` at array
    /// byte `pos` from the first other present mirror whose read succeeds.
    fn read_others(
        &self,
        members: &dyn MemberRead,
        failed: usize,
        pos: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let n = self.raid_disks();
        let mut last_err = None;
        for slot in (1..n).map(|i| (failed + i) % n) {
            if !members.is_present(slot) {
                continue;
            }
            match members.read_at(slot, pos, buf) {
                Ok(()) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| unrecoverable("raid1 has no other present mirror")))
    }
}

impl Personality for Raid1 {
    fn geometry(&self) -> &Geometry {
        &self.geom
    }

    fn array_bytes(&self) -> u64 {
        self.array_bytes
    }

    fn readable_with(&self, present: &[bool]) -> bool {
        present.iter().take(self.raid_disks()).any(|&p| p)
    }

    fn read(&self, members: &dyn MemberRead, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.array_bytes)?;
        if buf.is_empty() {
            return Ok(());
        }
        let present = (0..self.raid_disks()).filter(|&s| members.is_present(s)).count();
        if present == 0 {
            return Err(unrecoverable(&format!("all {} raid1 mirrors are missing", self.raid_disks())));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let region_left = READ_BALANCE_BYTES - pos % READ_BALANCE_BYTES;
            let len = region_left.min((buf.len() - done) as u64) as usize;
            let first = self.preferred_mirror(members, present, pos);
            // With a single mirror present every region comes from it: read
            // the rest with one call.
            let end = if present == 1 { buf.len() } else { done + len };
            let run = MemberRun { slot: first, member_offset: pos, buf_start: done, len: end - done };
            if let Err(e) = run.read(members, buf) {
                self.read_others(members, first, pos, &mut buf[done..end]).map_err(|_| e)?;
            }
            done = end;
        }
        Ok(())
    }

    fn locate(&self, offset: u64) -> Vec<Location> {
        if offset >= self.array_bytes {
            return Vec::new();
        }
        (0..self.raid_disks()).map(|slot| Location { slot, offset }).collect()
    }

    fn map_write(&self, offset: u64, len: usize) -> io::Result<Vec<WritePiece>> {
        check_range(offset, len, self.array_bytes)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        // Every mirror holds the array at the same offset of its data area.
        Ok((0..self.raid_disks())
            .map(|slot| WritePiece { slot, member_offset: offset, buf_start: 0, len })
            .collect())
    }

    fn io_hint(&self) -> u64 {
        READ_BALANCE_BYTES * u64::from(self.geom.raid_disks.clamp(1, 4))
    }
}
