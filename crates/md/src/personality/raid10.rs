//! raid10: striped mirrors with md's near, far and offset layouts, read path
//! and write mapping,
//! laid out exactly as Linux `drivers/md/raid10.c` lays it out.
//!
//! ## Responsibility boundary
//! [`Raid10`] decodes the layout (`setup_geo`), sizes the array and the
//! members' used area (`calc_sectors`, `raid10_size`), maps every array chunk
//! to all its copies (`__raid10_find_phys`) and reads array ranges from a
//! present copy of each chunk. Reshapes (`conf->prev`) are not handled.
//!
//! ## Mapping, in the kernel's words
//! The layout number holds `near_copies` (bits 0-7), `far_copies` (bits
//! 8-15), `far_offset` (bit 16) and the far-set variant (bits 17-18). Array
//! chunk `c` becomes device chunk `c * near_copies`, i.e. `dev` and
//! `stripe` on a row of `raid_disks`; its near copies follow it on the next
//! devices (wrapping to the next row). Each near copy has `far_copies - 1`
//! far copies, each `near_copies` devices further inside its far set and
//! `stride` further down the device: `stride` is the device's used size
//! divided by `far_copies` for the far layout, one chunk for the offset
//! layout (whose stripes are then spread `far_copies` rows apart).
//!
//! ## Synchronization model
//! Immutable after construction; `read` keeps its state on its stack.
//!
//! ## Performance
//! One `read_at` per chunk piece, straight into the caller's buffer, merged
//! with its neighbours when contiguous on one member. Near copies are taken
//! in turn by 1 MiB region so that sequential reads spread over the
//! mirrors; far copies prefer the lowest address (the raid0-like first
//! section), as md does. No allocation on the read path.

use std::io;

use super::raid0::MemberRun;
use super::{
    check_range, unrecoverable, Geometry, GeometryError, Level, Location, MemberRead, Personality, WritePiece,
};

/// Bytes in a sector.
const SECTOR: u64 = 512;

/// The smallest chunk md accepts for raid10: one (4 KiB) page.
const MIN_CHUNK_SECTORS: u32 = 4096 / 512;

/// Layout bit: the far copies are `stride` = one chunk apart (offset layout).
const FAR_OFFSET: u32 = 1 << 16;

/// Size of the regions over which the preferred near copy stays the same.
const READ_BALANCE_BYTES: u64 = 1 << 20;

/// Target size of [`Personality::io_hint`]: whole stripes adding up to about
/// this many bytes.
const IO_HINT_TARGET: u64 = 2 << 20;

/// The raid10 personality.
#[derive(Debug)]
pub struct Raid10 {
    /// The geometry it was built from.
    geom: Geometry,
    /// Number of slots (`geo->raid_disks`).
    raid_disks: u64,
    /// Copies of each chunk on consecutive devices (`near_copies`).
    near_copies: u64,
    /// Copies of each chunk in separate device sections (`far_copies`).
    far_copies: u64,
    /// Whether far copies sit in the next rows (`far_offset`).
    far_offset: bool,
    /// Devices whose far copies stay among themselves (`far_set_size`).
    far_set_size: u64,
    /// First device of the last, possibly larger, far set.
    last_far_set_start: u64,
    /// Devices in the last far set.
    last_far_set_size: u64,
    /// Chunk size in bytes (a power of 2).
    chunk_bytes: u64,
    /// Distance in chunk rows between far copies (`stride` / chunk).
    stride_chunks: u64,
    /// Used size of each member in bytes (`conf->dev_sectors`).
    dev_bytes: u64,
    /// Number of chunks in the array.
    array_chunks: u64,
    /// Array size in bytes (`raid10_size`).
    array_bytes: u64,
}

impl Raid10 {
    /// Decodes `geom` as md's `setup_geo`, `setup_conf` and `calc_sectors`
    /// do, refusing what they refuse: layouts with unknown bits or far-set
    /// variant 3, zero or too many copies, chunks that are not a power of 2
    /// of at least 4 KiB. Sizes that overflow are refused too.
    pub fn new(geom: Geometry) -> Result<Self, GeometryError> {
        if geom.level != Level::Raid10 {
            return Err(GeometryError(format!("raid10 personality given level {}", geom.level)));
        }
        let layout = geom.layout;
        if geom.member_sectors.len() != geom.raid_disks as usize {
            return Err(GeometryError(format!(
                "raid10 member size list has {} entries for {} raid disks",
                geom.member_sectors.len(),
                geom.raid_disks
            )));
        }
        if layout >> 19 != 0 {
            return Err(GeometryError(format!("raid10 layout {layout:#x} has unknown bits set")));
        }
        let chunk_sectors = geom.chunk_sectors;
        if chunk_sectors < MIN_CHUNK_SECTORS || !chunk_sectors.is_power_of_two() {
            return Err(GeometryError(format!(
                "raid10 chunk size of {chunk_sectors} sectors is not a power of 2 of at least 4 KiB"
            )));
        }
        let raid_disks = u64::from(geom.raid_disks);
        let near_copies = u64::from(layout & 0xff);
        let far_copies = u64::from((layout >> 8) & 0xff);
        let far_offset = layout & FAR_OFFSET != 0;
        if near_copies == 0 || far_copies == 0 {
            return Err(GeometryError(format!(
                "raid10 layout {layout:#x} has {near_copies} near and {far_copies} far copies"
            )));
        }
        let far_set_size = match layout >> 17 {
            // The original layout: far copies rotate over every device.
            0 => raid_disks,
            // "Improved" layout, buggy; md still reads it.
            1 => raid_disks / far_copies,
            // Far sets of near_copies * far_copies devices.
            2 => far_copies * near_copies,
            _ => {
                return Err(GeometryError(format!(
                    "raid10 layout {layout:#x} has an unknown far-set variant"
                )))
            }
        };
        let copies = near_copies * far_copies;
        if copies < 2 || copies > raid_disks {
            return Err(GeometryError(format!(
                "unsupported raid10 layout {layout:#x}: {copies} copies on {raid_disks} raid disks"
            )));
        }
        debug_assert!(far_set_size >= 1 && far_set_size <= raid_disks);
        let last_far_set_start = (raid_disks / far_set_size - 1) * far_set_size;
        let last_far_set_size = far_set_size + raid_disks % far_set_size;

        let overflow = || GeometryError("raid10 size overflows".into());
        let chunk_shift = chunk_sectors.trailing_zeros();
        let chunk_bytes = u64::from(chunk_sectors) * SECTOR;
        chunk_bytes.checked_mul(raid_disks).ok_or_else(overflow)?;

        // calc_sectors(conf, mddev->dev_sectors): chunks in the array, then
        // the used chunks per device, rounded up, and the far stride.
        let array_chunks =
            ((geom.dev_sectors >> chunk_shift) / far_copies).checked_mul(raid_disks).ok_or_else(overflow)?
                / near_copies;
        let dev_chunks = array_chunks.checked_mul(copies).ok_or_else(overflow)?.div_ceil(raid_disks);
        let stride_chunks = if far_offset { 1 } else { dev_chunks / far_copies };
        // raid10_size(mddev, 0, 0) with sectors = conf->dev_sectors.
        let array_chunks =
            (dev_chunks / far_copies).checked_mul(raid_disks).ok_or_else(overflow)? / near_copies;
        let array_bytes = array_chunks.checked_mul(chunk_bytes).ok_or_else(overflow)?;
        let dev_bytes = dev_chunks.checked_mul(chunk_bytes).ok_or_else(overflow)?;
        // Device chunk numbers must fit: c * near_copies for every chunk.
        array_chunks.checked_mul(near_copies).ok_or_else(overflow)?;

        Ok(Raid10 {
            geom,
            raid_disks,
            near_copies,
            far_copies,
            far_offset,
            far_set_size,
            last_far_set_start,
            last_far_set_size,
            chunk_bytes,
            stride_chunks,
            dev_bytes,
            array_chunks,
            array_bytes,
        })
    }

    /// The device holding the next far copy after one on `d` (the inner step
    /// of `__raid10_find_phys`): `near_copies` devices on inside `d`'s far
    /// set, the last set taking the remainder devices.
    fn next_far_dev(&self, d: u64) -> u64 {
        let set = d / self.far_set_size;
        let d = d + self.near_copies;
        // The last set is larger exactly when raid_disks is not a multiple
        // of far_set_size.
        if self.last_far_set_size != self.far_set_size && d > self.last_far_set_start {
            (d - self.last_far_set_start) % self.last_far_set_size + self.last_far_set_start
        } else {
            d % self.far_set_size + self.far_set_size * set
        }
    }

    /// Where copy (`near`, `far`) of array chunk `chunk` lives: (slot,
    /// device chunk row), as `__raid10_find_phys` places it.
    fn find_phys(&self, chunk: u64, near: u64, far: u64) -> (usize, u64) {
        debug_assert!(near < self.near_copies && far < self.far_copies);
        let vchunk = chunk * self.near_copies;
        let mut dev = vchunk % self.raid_disks;
        let mut stripe = vchunk / self.raid_disks;
        if self.far_offset {
            stripe *= self.far_copies;
        }
        // Near copies take the next devices, wrapping onto the next row.
        dev += near;
        if dev >= self.raid_disks {
            dev -= self.raid_disks;
            stripe += 1;
        }
        for _ in 0..far {
            dev = self.next_far_dev(dev);
            stripe += self.stride_chunks;
        }
        debug_assert!(dev < self.raid_disks);
        (dev as usize, stripe)
    }

    /// Where copy (`near`, `far`) of array byte `pos` lives: (slot, byte
    /// offset in the member's data area). Reads, writes and `locate` all map
    /// through here.
    fn copy_location(&self, pos: u64, near: u64, far: u64) -> (usize, u64) {
        let (slot, row) = self.find_phys(pos / self.chunk_bytes, near, far);
        (slot, row * self.chunk_bytes + pos % self.chunk_bytes)
    }

    /// Every copy of a chunk as (near, far) indices, near-major.
    fn all_copies(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.near_copies).flat_map(move |near| (0..self.far_copies).map(move |far| (near, far)))
    }

    /// Cuts array bytes `offset..offset + len` into chunk pieces and hands
    /// each to `f` as (array byte, start relative to `offset`, length).
    fn walk(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let n = (self.chunk_bytes - pos % self.chunk_bytes).min((len - done) as u64) as usize;
            f(pos, done, n)?;
            done += n;
        }
        Ok(())
    }

    /// Reads the chunk piece `buf` at array byte `pos` from the first present
    /// copy that reads without error, in read-preference order, skipping
    /// `skip` (a copy already found failing); the last error if none works.
    fn read_piece(
        &self,
        members: &dyn MemberRead,
        pos: u64,
        buf: &mut [u8],
        skip: Option<usize>,
    ) -> io::Result<()> {
        let chunk = pos / self.chunk_bytes;
        let mut last_err = None;
        for (near, far) in self.copy_order(pos) {
            let (slot, member_offset) = self.copy_location(pos, near, far);
            if Some(slot) == skip || !members.is_present(slot) {
                continue;
            }
            match members.read_at(slot, member_offset, buf) {
                Ok(()) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            unrecoverable(&format!("raid10 chunk {chunk} (array byte {pos}) has no readable copy"))
        }))
    }

    /// The copies of the chunk at array byte `pos` as (near, far) indices,
    /// in read-preference order: far copy 0 first (lowest address), near
    /// copies in turn by region.
    fn copy_order(&self, pos: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = (pos / READ_BALANCE_BYTES) % self.near_copies;
        (0..self.far_copies)
            .flat_map(move |far| (0..self.near_copies).map(move |i| ((first + i) % self.near_copies, far)))
    }

    /// The member piece to read for the chunk piece at array byte `pos`:
    /// the first present copy in read-preference order.
    fn choose_copy(&self, members: &dyn MemberRead, pos: u64) -> Option<(usize, u64)> {
        self.copy_order(pos)
            .map(|(near, far)| self.copy_location(pos, near, far))
            .find(|&(slot, _)| members.is_present(slot))
    }

    /// Reads a merged run; when it fails, reads its chunk pieces one by one
    /// from the other copies, and gives the run's error if one of them has
    /// no other readable copy.
    fn read_run(
        &self,
        members: &dyn MemberRead,
        offset: u64,
        run: &MemberRun,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let Err(err) = run.read(members, buf) else {
            return Ok(());
        };
        let start = offset + run.buf_start as u64;
        self.walk(start, run.len, |pos, rel, len| {
            let at = run.buf_start + rel;
            self.read_piece(members, pos, &mut buf[at..at + len], Some(run.slot))
        })
        .map_err(|_| err)
    }
}

impl Personality for Raid10 {
    fn geometry(&self) -> &Geometry {
        &self.geom
    }

    fn array_bytes(&self) -> u64 {
        self.array_bytes
    }

    fn readable_with(&self, present: &[bool]) -> bool {
        // The devices of a chunk's copies depend only on its first device,
        // chunk * near_copies mod raid_disks, which repeats within
        // raid_disks chunks.
        let is_present = |slot: usize| present.get(slot).copied().unwrap_or(false);
        (0..self.array_chunks.min(self.raid_disks)).all(|chunk| {
            (0..self.near_copies)
                .any(|near| (0..self.far_copies).any(|far| is_present(self.find_phys(chunk, near, far).0)))
        })
    }

    fn read(&self, members: &dyn MemberRead, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.array_bytes)?;
        let mut pending: Option<MemberRun> = None;
        self.walk(offset, buf.len(), |pos, done, len| {
            let Some((slot, member_offset)) = self.choose_copy(members, pos) else {
                return Err(unrecoverable(&format!(
                    "raid10 chunk {} (array byte {pos}) has no present copy",
                    pos / self.chunk_bytes
                )));
            };
            debug_assert!(member_offset + len as u64 <= self.dev_bytes);
            let piece = MemberRun { slot, member_offset, buf_start: done, len };
            if !pending.as_mut().is_some_and(|run| run.try_extend(&piece)) {
                if let Some(run) = pending.replace(piece) {
                    self.read_run(members, offset, &run, buf)?;
                }
            }
            Ok(())
        })?;
        match pending {
            Some(run) => self.read_run(members, offset, &run, buf),
            None => Ok(()),
        }
    }

    fn locate(&self, offset: u64) -> Vec<Location> {
        if offset >= self.array_bytes {
            return Vec::new();
        }
        let mut copies: Vec<Location> = self
            .all_copies()
            .map(|(near, far)| {
                let (slot, offset) = self.copy_location(offset, near, far);
                Location { slot, offset }
            })
            .collect();
        copies.sort_unstable();
        copies
    }

    fn map_write(&self, offset: u64, len: usize) -> io::Result<Vec<WritePiece>> {
        check_range(offset, len, self.array_bytes)?;
        // Every copy of every chunk piece, unmerged: copies of one piece
        // share `buf_start`, which is how the caller tells them apart.
        let copies = (self.near_copies * self.far_copies) as usize;
        let mut pieces = Vec::with_capacity((len as u64 / self.chunk_bytes + 2) as usize * copies);
        self.walk(offset, len, |pos, buf_start, len| {
            for (near, far) in self.all_copies() {
                let (slot, member_offset) = self.copy_location(pos, near, far);
                debug_assert!(member_offset + len as u64 <= self.dev_bytes);
                pieces.push(WritePiece { slot, member_offset, buf_start, len });
            }
            Ok(())
        })?;
        Ok(pieces)
    }

    fn io_hint(&self) -> u64 {
        let stripe = self.chunk_bytes * self.raid_disks;
        stripe * (IO_HINT_TARGET / stripe).max(1)
    }
}
