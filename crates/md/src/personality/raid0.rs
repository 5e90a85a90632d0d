//! raid0: striping over members of possibly different sizes, read and write
//! mapping, laid
//! out exactly as Linux `drivers/md/raid0.c` lays it out.
//!
//! ## Responsibility boundary
//! [`Raid0`] builds md's strip zones from the members' data sizes
//! (`create_strip_zones`), maps array bytes to member bytes (`find_zone`,
//! `map_sector`, `raid0_map_submit_bio`) and reads array ranges straight
//! from the members. raid0 has no redundancy: a read touching an absent
//! member fails.
//!
//! ## Mapping, in the kernel's words
//! Every member's size is rounded down to whole chunks. Zone 0 stripes all
//! members up to the smallest size; each later zone stripes, in slot order,
//! the members larger than the previous zone's end on the members
//! (`dev_start`), up to the next smallest size. Inside a zone, the chunk
//! *in the device* is the zone-relative chunk divided by the zone's member
//! count (`nb_dev`); the member is chosen by the chunk number modulo
//! `nb_dev`, counted from the start of the array for
//! `RAID0_ORIG_LAYOUT` (pre-3.14 kernels) and from the start of the zone for
//! `RAID0_ALT_MULTIZONE_LAYOUT` (3.14 and later). With a single zone both
//! are the same.
//!
//! ## Synchronization model
//! Immutable after construction; `read` keeps its state on its stack.
//!
//! ## Performance
//! One `read_at` per chunk piece, straight into the caller's buffer, merged
//! with its neighbours when they are contiguous on the same member (zones of
//! one member). No allocation on the read path.

use std::io;

use super::{
    check_range, unrecoverable, Geometry, GeometryError, Level, Location, MemberRead, Personality, WritePiece,
};

/// Bytes in a sector.
const SECTOR: u64 = 512;

/// Target size of [`Personality::io_hint`]: whole stripes adding up to about
/// this many bytes.
const IO_HINT_TARGET: u64 = 2 << 20;

/// md's multi-zone raid0 layouts (`enum r0layout` in `drivers/md/raid0.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum R0Layout {
    /// `RAID0_ORIG_LAYOUT` (1): the member inside a zone is picked by the
    /// chunk number counted from the start of the array.
    Orig,
    /// `RAID0_ALT_MULTIZONE_LAYOUT` (2): picked by the chunk number counted
    /// from the start of the zone.
    AltMultizone,
}

/// One strip zone (`struct strip_zone`), in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Zone {
    /// First array byte of the zone (the previous zone's `zone_end`).
    zone_start: u64,
    /// First array byte after the zone (`zone_end`).
    zone_end: u64,
    /// Where the zone starts on each of its members (`dev_start`).
    dev_start: u64,
    /// The zone's members, in slot order (`nb_dev` of them).
    devs: Vec<usize>,
}

/// The raid0 personality.
#[derive(Debug)]
pub struct Raid0 {
    /// The geometry it was built from.
    geom: Geometry,
    /// Chunk size in bytes.
    chunk_bytes: u64,
    /// Strip zones in array order; zone 0 may be empty when the smallest
    /// member holds less than one chunk.
    zones: Vec<Zone>,
    /// Layout used to pick members inside a zone.
    layout: R0Layout,
    /// Array size in bytes (`raid0_size`).
    array_bytes: u64,
}

impl Raid0 {
    /// Builds md's strip zones for `geom` (`create_strip_zones`), refusing
    /// geometries md refuses: no chunk size, a multi-zone array whose
    /// superblock records no layout, an unknown layout.
    pub fn new(geom: Geometry) -> Result<Self, GeometryError> {
        if geom.level != Level::Raid0 {
            return Err(GeometryError(format!("raid0 personality given level {}", geom.level)));
        }
        let raid_disks = geom.raid_disks as usize;
        if raid_disks == 0 {
            return Err(GeometryError("raid0 with 0 raid disks".into()));
        }
        if geom.member_sectors.len() != raid_disks {
            return Err(GeometryError(format!(
                "raid0 member size list has {} entries for {} raid disks",
                geom.member_sectors.len(),
                raid_disks
            )));
        }
        let chunk_sectors = u64::from(geom.chunk_sectors);
        if chunk_sectors == 0 {
            return Err(GeometryError("raid0 chunk size is 0".into()));
        }
        let chunk_bytes = chunk_sectors * SECTOR;
        if chunk_bytes.checked_mul(geom.raid_disks.into()).is_none() {
            return Err(GeometryError(format!(
                "raid0 stripe of {} chunks of {} sectors overflows",
                raid_disks, chunk_sectors
            )));
        }

        // Round every member down to whole chunks, in bytes.
        let sizes = geom
            .member_sectors
            .iter()
            .map(|&s| (s / chunk_sectors).checked_mul(chunk_bytes))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| GeometryError("raid0 member size overflows".into()))?;

        // md counts one zone per distinct rounded size.
        let mut distinct = sizes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let nr_strip_zones = distinct.len();

        let layout = if nr_strip_zones == 1 {
            R0Layout::Orig
        } else if !geom.raid0_layout_set {
            return Err(GeometryError(format!(
                "multi-zone raid0 ({nr_strip_zones} zones) has no recorded layout; \
                 md cannot assemble multi-zone RAID0 with default_layout setting"
            )));
        } else {
            match geom.layout {
                1 => R0Layout::Orig,
                2 => R0Layout::AltMultizone,
                other => {
                    return Err(GeometryError(format!(
                        "raid0 layout {other} is unknown (multi-zone raid0 needs 1 = original \
                         or 2 = alternate)"
                    )))
                }
            }
        };

        // Zone 0 holds every member up to the smallest size; each later zone
        // the members larger than the previous zone's end on the members.
        let mut zones = Vec::with_capacity(nr_strip_zones);
        let mut zone_start = 0u64;
        let mut dev_start = 0u64;
        for (i, &zone_dev_end) in distinct.iter().enumerate() {
            let devs: Vec<usize> = if i == 0 {
                (0..raid_disks).collect()
            } else {
                (0..raid_disks).filter(|&s| sizes[s] > dev_start).collect()
            };
            debug_assert!(!devs.is_empty());
            debug_assert!(zone_dev_end >= dev_start);
            let zone_bytes = (zone_dev_end - dev_start)
                .checked_mul(devs.len() as u64)
                .ok_or_else(|| GeometryError("raid0 zone size overflows".into()))?;
            let zone_end = zone_start
                .checked_add(zone_bytes)
                .ok_or_else(|| GeometryError("raid0 array size overflows".into()))?;
            zones.push(Zone { zone_start, zone_end, dev_start, devs });
            zone_start = zone_end;
            dev_start = zone_dev_end;
        }

        // raid0_size: the sum of the rounded sizes, each masked with
        // ~(chunk_sectors - 1) as md does (a no-op for power-of-2 chunks; for
        // other chunks md exposes less than the zones hold).
        let mask = !(chunk_sectors - 1);
        let array_sectors = sizes
            .iter()
            .try_fold(0u64, |acc, &b| acc.checked_add((b / SECTOR) & mask))
            .ok_or_else(|| GeometryError("raid0 array size overflows".into()))?;
        let array_bytes = array_sectors
            .checked_mul(SECTOR)
            .ok_or_else(|| GeometryError("raid0 array size overflows".into()))?;
        debug_assert!(array_bytes <= zone_start);

        Ok(Raid0 { geom, chunk_bytes, zones, layout, array_bytes })
    }

    /// The index of the zone holding array byte `offset` (`find_zone`);
    /// `offset` must lie inside the zones.
    fn find_zone(&self, offset: u64) -> usize {
        let z = self.zones.partition_point(|z| z.zone_end <= offset);
        debug_assert!(z < self.zones.len());
        z
    }

    /// Maps array byte `offset` inside `zone` to (slot, member byte, bytes
    /// left in its chunk), as `map_sector` does plus `dev_start`.
    fn map_sector(&self, zone: &Zone, offset: u64) -> (usize, u64, u64) {
        debug_assert!(offset >= zone.zone_start && offset < zone.zone_end);
        let zone_offset = offset - zone.zone_start;
        let nb_dev = zone.devs.len() as u64;
        // The kernel passes the array sector (original layout) or the
        // zone-relative sector (alternate layout) to map_sector.
        let sector = match self.layout {
            R0Layout::Orig => offset,
            R0Layout::AltMultizone => zone_offset,
        };
        let sect_in_chunk = sector % self.chunk_bytes;
        let dev_idx = (sector / self.chunk_bytes) % nb_dev;
        let chunk = zone_offset / (self.chunk_bytes * nb_dev);
        let member_offset = zone.dev_start + chunk * self.chunk_bytes + sect_in_chunk;
        (zone.devs[dev_idx as usize], member_offset, self.chunk_bytes - sect_in_chunk)
    }

    /// Cuts array bytes `offset..offset + len` (inside the array) into
    /// chunk pieces in array order and hands each to `f` as a run with
    /// `buf_start` relative to `offset`. Reads and writes both map through
    /// here.
    fn walk(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(MemberRun) -> io::Result<()>,
    ) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let mut zone_idx = self.find_zone(offset);
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            while self.zones[zone_idx].zone_end <= pos {
                zone_idx += 1;
            }
            let (slot, member_offset, chunk_left) = self.map_sector(&self.zones[zone_idx], pos);
            let n = chunk_left.min((len - done) as u64) as usize;
            f(MemberRun { slot, member_offset, buf_start: done, len: n })?;
            done += n;
        }
        Ok(())
    }
}

impl Personality for Raid0 {
    fn geometry(&self) -> &Geometry {
        &self.geom
    }

    fn array_bytes(&self) -> u64 {
        self.array_bytes
    }

    fn readable_with(&self, present: &[bool]) -> bool {
        (0..self.geom.raid_disks as usize).all(|s| present.get(s).copied().unwrap_or(false))
    }

    fn read(&self, members: &dyn MemberRead, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.array_bytes)?;
        let mut pending: Option<MemberRun> = None;
        self.walk(offset, buf.len(), |piece| {
            if !members.is_present(piece.slot) {
                return Err(unrecoverable(&format!(
                    "raid0 member {} is missing (array byte {})",
                    piece.slot,
                    offset + piece.buf_start as u64
                )));
            }
            if !pending.as_mut().is_some_and(|run| run.try_extend(&piece)) {
                if let Some(run) = pending.replace(piece) {
                    run.read(members, buf)?;
                }
            }
            Ok(())
        })?;
        match pending {
            Some(run) => run.read(members, buf),
            None => Ok(()),
        }
    }

    fn map_write(&self, offset: u64, len: usize) -> io::Result<Vec<WritePiece>> {
        check_range(offset, len, self.array_bytes)?;
        let mut runs: Vec<MemberRun> = Vec::new();
        self.walk(offset, len, |piece| {
            if !runs.last_mut().is_some_and(|run| run.try_extend(&piece)) {
                runs.push(piece);
            }
            Ok(())
        })?;
        Ok(runs.into_iter().map(MemberRun::to_write).collect())
    }

    fn locate(&self, offset: u64) -> Vec<Location> {
        if offset >= self.array_bytes {
            return Vec::new();
        }
        let (slot, member_offset, _) = self.map_sector(&self.zones[self.find_zone(offset)], offset);
        vec![Location { slot, offset: member_offset }]
    }

    fn io_hint(&self) -> u64 {
        let stripe = self.chunk_bytes * u64::from(self.geom.raid_disks);
        stripe * (IO_HINT_TARGET / stripe).max(1)
    }
}

/// A piece of an array read that lies contiguously on one member: member
/// bytes `member_offset..+len` of `slot` go to `buf[buf_start..+len]`.
/// Shared by raid0, raid1 and raid10 to merge neighbouring pieces into one
/// `read_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MemberRun {
    /// Member slot.
    pub(super) slot: usize,
    /// Byte offset in the member's data area.
    pub(super) member_offset: u64,
    /// Where the bytes go in the caller's buffer.
    pub(super) buf_start: usize,
    /// Number of bytes.
    pub(super) len: usize,
}

impl MemberRun {
    /// Grows `self` by `next` when `next` continues it both on the member
    /// and in the buffer; says whether it did.
    pub(super) fn try_extend(&mut self, next: &MemberRun) -> bool {
        if next.slot == self.slot
            && next.buf_start == self.buf_start + self.len
            && next.member_offset == self.member_offset + self.len as u64
        {
            self.len += next.len;
            true
        } else {
            false
        }
    }

    /// The run as a member write.
    pub(super) fn to_write(self) -> WritePiece {
        WritePiece {
            slot: self.slot,
            member_offset: self.member_offset,
            buf_start: self.buf_start,
            len: self.len,
        }
    }

    /// Reads the run into its place in `buf`.
    pub(super) fn read(&self, members: &dyn MemberRead, buf: &mut [u8]) -> io::Result<()> {
        members.read_at(self.slot, self.member_offset, &mut buf[self.buf_start..self.buf_start + self.len])
    }
}
