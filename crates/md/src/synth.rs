//! Whole-array image writer for demos, benchmarks and tests.
//!
//! [`write_array`] lays out a complete, consistent md array on image files
//! the way the kernel would have: a v1.x superblock on each member, data
//! placed by the personality's own map ([`Personality::locate`]), and parity
//! (P, and Q for raid6) computed over each stripe row in md's syndrome order
//! ([`Personality::syndrome_layout`]). It writes every member front to back in
//! one pass and is not the array's write path (that is a stripe cache over
//! `pagecache`, in its own issue).
//!
//! It also provides the fixtures' data pattern ([`pattern_block`]), so tests
//! and the demo can check every byte they read back.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::personality::{self, gf, Geometry, Level, Personality};
use crate::superblock::{
    feature, Minor, Superblock, MAX_SB_SIZE, MAX_SECTOR, MD_DISK_ROLE_SPARE, MD_SB_MAGIC,
};

/// What to build.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Level.
    pub level: Level,
    /// md layout number.
    pub layout: u32,
    /// raid0 multi-zone layout to record (sets the `RAID0_LAYOUT` feature).
    pub raid0_layout: Option<u32>,
    /// Chunk size in sectors (0 for raid1).
    pub chunk_sectors: u32,
    /// Size of each member image in bytes (one entry per slot; raid0 may
    /// mix sizes).
    pub member_bytes: Vec<u64>,
    /// Superblock version.
    pub minor: Minor,
    /// Data offset in sectors for 1.1/1.2 (1.0 always uses 0).
    pub data_offset: u64,
    /// Array name (stored as "host:name" when it has no colon).
    pub name: String,
    /// Array UUID.
    pub uuid: [u8; 16],
    /// Creation and update time (seconds since the epoch).
    pub time: u64,
    /// Event count written to every member.
    pub events: u64,
}

impl Spec {
    /// A spec with md's usual defaults for `level` on `disks` members of
    /// `member_bytes` each: v1.2, 1 MiB data offset, left-symmetric / near=2,
    /// 512 KiB chunks.
    pub fn new(level: Level, disks: usize, member_bytes: u64) -> Spec {
        let layout = match level {
            Level::Raid5 | Level::Raid6 => 2,
            Level::Raid10 => 0x102,
            _ => 0,
        };
        let chunk_sectors = if level == Level::Raid1 { 0 } else { 1024 };
        Spec {
            level,
            layout,
            raid0_layout: None,
            chunk_sectors,
            member_bytes: vec![member_bytes; disks],
            minor: Minor::V2,
            data_offset: 2048,
            name: "umd:synth".into(),
            uuid: *b"umd-synth-array!",
            time: 1_700_000_000,
            events: 1,
        }
    }

    /// Stamps the spec with the current time and a UUID derived from it and
    /// the process ID, so that two arrays built by separate runs differ.
    pub fn stamp_now(&mut self) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.time = now.as_secs();
        let seed = (u128::from(now.as_secs()) << 64)
            ^ u128::from(now.subsec_nanos())
            ^ (u128::from(std::process::id()) << 32);
        // A splitmix-style scramble: the UUID needs to be unique, not secret.
        let mut x = seed ^ 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        for _ in 0..3 {
            x ^= x >> 61;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9_94d0_49bb_1331_11eb);
        }
        self.uuid = x.to_le_bytes();
    }

    fn data_offset(&self) -> u64 {
        if self.minor == Minor::V0 {
            0
        } else {
            self.data_offset
        }
    }

    /// Data-area size (sectors) of the member in `slot`.
    fn data_sectors(&self, slot: usize) -> io::Result<u64> {
        let dev = self.member_bytes[slot] / 512;
        let sb_at = self
            .minor
            .sb_offset(dev)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "member too small"))?;
        let end = if self.minor == Minor::V0 { sb_at } else { dev };
        end.checked_sub(self.data_offset()).filter(|&s| s > 0).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "member too small for its data offset")
        })
    }

    /// The per-member component size (`size`): the smallest data area,
    /// rounded down to whole chunks. 0 for raid0.
    fn component_sectors(&self) -> io::Result<u64> {
        if self.level == Level::Raid0 {
            return Ok(0);
        }
        let mut min = u64::MAX;
        for s in 0..self.member_bytes.len() {
            min = min.min(self.data_sectors(s)?);
        }
        let chunk = u64::from(self.chunk_sectors.max(1));
        Ok(min / chunk * chunk)
    }

    /// The geometry this spec describes.
    pub fn geometry(&self) -> io::Result<Geometry> {
        let member_sectors =
            (0..self.member_bytes.len()).map(|s| self.data_sectors(s)).collect::<io::Result<Vec<_>>>()?;
        Ok(Geometry {
            level: self.level,
            layout: self.raid0_layout.unwrap_or(self.layout),
            raid0_layout_set: self.raid0_layout.is_some(),
            chunk_sectors: self.chunk_sectors,
            raid_disks: self.member_bytes.len() as u32,
            dev_sectors: self.component_sectors()?,
            member_sectors,
        })
    }

    /// The superblock of the member in `slot`.
    pub fn superblock(&self, slot: usize) -> io::Result<Superblock> {
        let raid_disks = self.member_bytes.len();
        let dev = self.member_bytes[slot] / 512;
        let super_offset = self
            .minor
            .sb_offset(dev)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "member too small"))?;
        let mut set_name = [0u8; 32];
        let name = if self.name.contains(':') { self.name.clone() } else { format!("umd:{}", self.name) };
        let n = name.len().min(32);
        set_name[..n].copy_from_slice(&name.as_bytes()[..n]);
        let max_dev = raid_disks.max(128) as u32;
        let mut device_uuid = self.uuid;
        device_uuid[15] ^= slot as u8 + 1;
        device_uuid[0] ^= 0x5a;
        let mut sb = Superblock {
            magic: MD_SB_MAGIC,
            major_version: 1,
            feature_map: if self.raid0_layout.is_some() { feature::RAID0_LAYOUT } else { 0 },
            pad0: 0,
            set_uuid: self.uuid,
            set_name,
            ctime: self.time,
            level: self.level.to_md(),
            layout: self.raid0_layout.unwrap_or(self.layout),
            size: self.component_sectors()?,
            chunksize: self.chunk_sectors,
            raid_disks: raid_disks as u32,
            bitmap_offset: 0,
            new_level: 0,
            reshape_position: 0,
            delta_disks: 0,
            new_layout: 0,
            new_chunk: 0,
            new_offset: 0,
            data_offset: self.data_offset(),
            data_size: self.data_sectors(slot)?,
            super_offset,
            recovery_offset: 0,
            dev_number: slot as u32,
            cnt_corrected_read: 0,
            device_uuid,
            devflags: 0,
            bblog_shift: 0,
            bblog_size: 0,
            bblog_offset: 0,
            utime: self.time,
            events: self.events,
            resync_offset: MAX_SECTOR,
            sb_csum: 0,
            max_dev,
            pad3: [0; 32],
            dev_roles: (0..max_dev)
                .map(|i| if (i as usize) < raid_disks { i as u16 } else { MD_DISK_ROLE_SPARE })
                .collect(),
        };
        sb.update_checksum();
        Ok(sb)
    }
}

/// The fixtures' data pattern for 4096-byte logical block `b` with pattern
/// `id`: bytes 0..8 are `b` (LE), 8..16 `id` (LE), byte i ≥ 16 is
/// `(i + 7b + 0x35 id) mod 256`.
pub fn pattern_block(b: u64, id: u64, out: &mut [u8]) {
    debug_assert_eq!(out.len(), 4096);
    out[..8].copy_from_slice(&b.to_le_bytes());
    out[8..16].copy_from_slice(&id.to_le_bytes());
    let base = (b.wrapping_mul(7).wrapping_add(id.wrapping_mul(0x35))) as u8;
    for (i, x) in out.iter_mut().enumerate().skip(16) {
        *x = (i as u8).wrapping_add(base);
    }
}

/// Fills `buf`, which starts at array byte `offset` (4 KiB aligned), with
/// the pattern of id `id`.
pub fn pattern_fill(offset: u64, id: u64, buf: &mut [u8]) {
    debug_assert_eq!(offset % 4096, 0);
    for (i, blk) in buf.chunks_mut(4096).enumerate() {
        let b = offset / 4096 + i as u64;
        if blk.len() == 4096 {
            pattern_block(b, id, blk);
        } else {
            let mut full = [0u8; 4096];
            pattern_block(b, id, &mut full);
            let n = blk.len();
            blk.copy_from_slice(&full[..n]);
        }
    }
}

/// Creates (or overwrites) the member images `paths` (one per slot) holding
/// the array `spec` describes, with content from `fill(array_offset, buf)`.
/// Returns the array size in bytes.
pub fn write_array(spec: &Spec, paths: &[PathBuf], fill: &mut dyn FnMut(u64, &mut [u8])) -> io::Result<u64> {
    if paths.len() != spec.member_bytes.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "one path per member needed"));
    }
    let geom = spec.geometry()?;
    let pers =
        personality::build(&geom).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let files = paths
        .iter()
        .zip(&spec.member_bytes)
        .map(|(p, &len)| {
            let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(p)?;
            f.set_len(len)?;
            Ok(f)
        })
        .collect::<io::Result<Vec<_>>>()?;
    for (slot, f) in files.iter().enumerate() {
        let sb = spec.superblock(slot)?;
        let mut block = vec![0u8; MAX_SB_SIZE];
        sb.encode(&mut block);
        f.write_all_at(&block[..sb.sb_bytes().div_ceil(512) * 512], sb.super_offset * 512)?;
    }
    let data_start: Vec<u64> = (0..files.len()).map(|_| spec.data_offset() * 512).collect();
    let write = |slot: usize, off: u64, buf: &[u8]| files[slot].write_all_at(buf, data_start[slot] + off);
    let total = pers.array_bytes();
    let parity = matches!(spec.level, Level::Raid4 | Level::Raid5 | Level::Raid6);
    if parity {
        write_parity_array(&*pers, spec, total, fill, &write)?;
    } else {
        let unit = if spec.chunk_sectors == 0 { 1 << 20 } else { u64::from(spec.chunk_sectors) * 512 };
        let mut buf = vec![0u8; unit as usize];
        let mut off = 0;
        while off < total {
            let len = (total - off).min(unit) as usize;
            fill(off, &mut buf[..len]);
            for loc in pers.locate(off) {
                write(loc.slot, loc.offset, &buf[..len])?;
            }
            off += len as u64;
        }
    }
    for f in &files {
        f.sync_all()?;
    }
    Ok(total)
}

/// Writes `buf` at `offset` of a slot's data area.
type WriteFn<'a> = dyn Fn(usize, u64, &[u8]) -> io::Result<()> + 'a;

fn write_parity_array(
    pers: &dyn Personality,
    spec: &Spec,
    total: u64,
    fill: &mut dyn FnMut(u64, &mut [u8]),
    write: &WriteFn<'_>,
) -> io::Result<()> {
    let chunk = u64::from(spec.chunk_sectors) * 512;
    let disks = spec.member_bytes.len();
    let data_disks = match spec.level {
        Level::Raid6 => disks - 2,
        _ => disks - 1,
    };
    let row = chunk * data_disks as u64;
    let mut blocks: Vec<Vec<u8>> = (0..disks).map(|_| vec![0u8; chunk as usize]).collect();
    let mut p = vec![0u8; chunk as usize];
    let mut q = vec![0u8; chunk as usize];
    let mut off = 0;
    while off < total {
        // Data chunks of this row, by slot.
        let mut member_off = 0;
        for d in 0..data_disks as u64 {
            let a = off + d * chunk;
            let loc = pers
                .locate(a)
                .into_iter()
                .next()
                .ok_or_else(|| io::Error::other("personality located no data"))?;
            member_off = loc.offset;
            fill(a, &mut blocks[loc.slot]);
        }
        let lay = pers.syndrome_layout(member_off).ok_or_else(|| io::Error::other("no syndrome layout"))?;
        let data: Vec<Option<&[u8]>> = lay.data.iter().map(|s| s.map(|s| blocks[s].as_slice())).collect();
        match lay.q {
            Some(qd) => {
                gf::gen_syndrome(&data, &mut p, &mut q);
                write(qd, member_off, &q)?;
            }
            None => {
                let present: Vec<&[u8]> = data.iter().flatten().copied().collect();
                gf::xor_blocks(&mut p, &present);
            }
        }
        write(lay.p, member_off, &p)?;
        for s in lay.data.iter().flatten() {
            write(*s, member_off, &blocks[*s])?;
        }
        off += row;
    }
    Ok(())
}

/// A small deterministic generator (xorshift64*) for test data, demos and
/// benchmarks: the same seed gives the same bytes on every run. Not for
/// anything that needs real randomness. A seed of 0 stays 0: use
/// [`Rng::new`] to mix any seed into a usable state.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator from any seed (0 included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Fills `buf` with generated bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            c.copy_from_slice(&x[..c.len()]);
        }
    }

    /// `len` generated bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}
