//! md's v1.x superblock (`struct mdp_superblock_1`), byte-compatible with
//! Linux `include/uapi/linux/raid/md_p.h` and mdadm's `super1.c`.
//!
//! All fields are little-endian. The fixed part is 256 bytes; `dev_roles`
//! (one `le16` per device number, `max_dev` of them) follows it. The
//! checksum covers `256 + 2 * max_dev` bytes.
//!
//! Where the superblock sits depends on the minor version:
//! * 1.0: at `(device_sectors - 16) & !7`, i.e. 8–12 KiB from the end;
//! * 1.1: at sector 0;
//! * 1.2: at sector 8 (4 KiB from the start).
//!
//! [`Superblock::decode`] validates a 4 KiB block the way the kernel's
//! `super_1_load` does (magic, major version, `super_offset`, `max_dev`,
//! checksum, padding, known feature bits) and decodes every field;
//! [`Superblock::encode`] writes it back byte for byte.

use std::fmt;
use std::io;

use blockio::Member;

/// `MD_SB_MAGIC`.
pub const MD_SB_MAGIC: u32 = 0xa92b_4efc;
/// `BITMAP_MAGIC` of the write-intent bitmap superblock ("bitm").
pub const BITMAP_MAGIC: u32 = 0x6d74_6962;
/// Bytes read for a superblock: the largest one md writes.
pub const MAX_SB_SIZE: usize = 4096;
/// Size of the fixed part of the superblock.
pub const SB_FIXED_SIZE: usize = 256;
/// Largest `max_dev` that fits in [`MAX_SB_SIZE`].
pub const MAX_DEVS: u32 = ((MAX_SB_SIZE - SB_FIXED_SIZE) / 2) as u32;
/// `resync_offset` of an array that is in sync (`MaxSector`).
pub const MAX_SECTOR: u64 = u64::MAX;

/// Role of a spare device.
pub const MD_DISK_ROLE_SPARE: u16 = 0xffff;
/// Role of a faulty device.
pub const MD_DISK_ROLE_FAULTY: u16 = 0xfffe;
/// Role of a journal device.
pub const MD_DISK_ROLE_JOURNAL: u16 = 0xfffd;
/// Largest role number that is an active slot.
pub const MD_DISK_ROLE_MAX: u16 = 0xff00;

/// `devflags` bit: write-mostly.
pub const WRITE_MOSTLY_1: u8 = 1;
/// `devflags` bit: fail fast.
pub const FAIL_FAST_1: u8 = 2;

/// Feature bits of `feature_map`, with md's names.
pub mod feature {
    /// `bitmap_offset` is meaningful: an internal write-intent bitmap exists.
    pub const BITMAP_OFFSET: u32 = 1;
    /// `recovery_offset` is meaningful: this device is partially recovered.
    pub const RECOVERY_OFFSET: u32 = 2;
    /// A reshape is in progress (`reshape_position`, `new_*` are meaningful).
    pub const RESHAPE_ACTIVE: u32 = 4;
    /// A bad-block log exists.
    pub const BAD_BLOCKS: u32 = 8;
    /// This device is a replacement for the one in the same slot.
    pub const REPLACEMENT: u32 = 16;
    /// The reshape runs backwards.
    pub const RESHAPE_BACKWARDS: u32 = 32;
    /// `new_offset` is meaningful.
    pub const NEW_OFFSET: u32 = 64;
    /// Recovery uses the bitmap.
    pub const RECOVERY_BITMAP: u32 = 128;
    /// Clustered md.
    pub const CLUSTERED: u32 = 256;
    /// A raid5/6 journal device exists.
    pub const JOURNAL: u32 = 512;
    /// Partial parity log.
    pub const PPL: u32 = 1024;
    /// Several partial parity logs.
    pub const MULTIPLE_PPLS: u32 = 2048;
    /// raid0 `layout` is meaningful (multi-zone layout recorded).
    pub const RAID0_LAYOUT: u32 = 4096;
    /// Every bit md knows.
    pub const ALL: u32 = 0x1fff;

    /// md's name of each bit.
    pub const NAMES: [(u32, &str); 13] = [
        (BITMAP_OFFSET, "bitmap"),
        (RECOVERY_OFFSET, "recovery offset"),
        (RESHAPE_ACTIVE, "active reshape"),
        (BAD_BLOCKS, "bad block log"),
        (REPLACEMENT, "replacement"),
        (RESHAPE_BACKWARDS, "backwards reshape"),
        (NEW_OFFSET, "new data offset"),
        (RECOVERY_BITMAP, "recovery bitmap"),
        (CLUSTERED, "clustered"),
        (JOURNAL, "journal"),
        (PPL, "partial parity log"),
        (MULTIPLE_PPLS, "multiple partial parity logs"),
        (RAID0_LAYOUT, "raid0 layout"),
    ];
}

/// Superblock minor version: where on the device it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Minor {
    /// 1.0: near the end of the device.
    V0,
    /// 1.1: at the start of the device.
    V1,
    /// 1.2: 4 KiB from the start of the device.
    V2,
}

impl Minor {
    /// All minor versions, in mdadm's probing order.
    pub const ALL: [Minor; 3] = [Minor::V0, Minor::V1, Minor::V2];

    /// The sector where this version's superblock sits on a device of
    /// `dev_sectors` sectors, or `None` when the device is too small for md
    /// (mdadm requires 24 sectors).
    pub fn sb_offset(self, dev_sectors: u64) -> Option<u64> {
        if dev_sectors < 24 {
            return None;
        }
        Some(match self {
            Minor::V0 => (dev_sectors - 16) & !7,
            Minor::V1 => 0,
            Minor::V2 => 8,
        })
    }

    /// The minor version implied by a superblock's `super_offset`, as mdadm
    /// prints it: up to 4 sectors is 1.1, up to 8 is 1.2, beyond is 1.0.
    pub fn from_super_offset(super_offset: u64) -> Minor {
        if super_offset <= 4 {
            Minor::V1
        } else if super_offset <= 8 {
            Minor::V2
        } else {
            Minor::V0
        }
    }

    /// "1.0", "1.1" or "1.2".
    pub fn as_str(self) -> &'static str {
        match self {
            Minor::V0 => "1.0",
            Minor::V1 => "1.1",
            Minor::V2 => "1.2",
        }
    }
}

impl fmt::Display for Minor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a block is not a usable md v1.x superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuperblockError {
    /// No superblock magic at any v1.x location.
    NotFound,
    /// The device is smaller than md's minimum (24 sectors).
    TooSmall {
        /// Device size in sectors.
        sectors: u64,
    },
    /// Magic found but `major_version` is not 1.
    BadMajor(u32),
    /// `super_offset` does not match where the superblock was found.
    BadSuperOffset {
        /// What the superblock says.
        recorded: u64,
        /// Where it was read from.
        actual: u64,
    },
    /// `max_dev` is beyond what fits in 4 KiB.
    BadMaxDev(u32),
    /// The checksum does not match.
    BadChecksum {
        /// Stored `sb_csum`.
        stored: u32,
        /// Computed over the superblock.
        computed: u32,
    },
    /// Reserved padding is not zero (a feature this version cannot know).
    NonZeroPadding,
    /// Feature bits md does not define.
    UnknownFeatures(u32),
    /// The data area overlaps the superblock or lies beyond the device.
    BadDataArea(String),
}

impl fmt::Display for SuperblockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuperblockError::NotFound => write!(
                f,
                "no md superblock found (magic {MD_SB_MAGIC:08x} not at the v1.0, v1.1 or v1.2 location)"
            ),
            SuperblockError::TooSmall { sectors } => {
                write!(f, "too small for md: {sectors} sectors (at least 24 needed)")
            }
            SuperblockError::BadMajor(v) => write!(f, "md superblock has major version {v}, only 1 is supported"),
            SuperblockError::BadSuperOffset { recorded, actual } => write!(
                f,
                "md superblock records super_offset {recorded} but was found at sector {actual}"
            ),
            SuperblockError::BadMaxDev(n) => write!(f, "md superblock max_dev {n} exceeds {MAX_DEVS}"),
            SuperblockError::BadChecksum { stored, computed } => write!(
                f,
                "md superblock checksum mismatch (stored {stored:08x}, computed {computed:08x}): corrupt superblock"
            ),
            SuperblockError::NonZeroPadding => {
                write!(f, "md superblock has non-zero reserved padding (unknown feature)")
            }
            SuperblockError::UnknownFeatures(bits) => {
                write!(f, "md superblock has unknown feature bits {bits:#x}")
            }
            SuperblockError::BadDataArea(why) => write!(f, "md superblock data area invalid: {why}"),
        }
    }
}

impl std::error::Error for SuperblockError {}

/// The `ppl` view of the `bitmap_offset` union.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ppl {
    /// Sectors from the start of the superblock where the PPL starts.
    pub offset: i16,
    /// PPL size in sectors.
    pub size: u16,
}

/// A decoded md v1.x superblock: every field of `struct mdp_superblock_1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// `magic` (always [`MD_SB_MAGIC`] after decode).
    pub magic: u32,
    /// `major_version` (always 1).
    pub major_version: u32,
    /// `feature_map`.
    pub feature_map: u32,
    /// `pad0`.
    pub pad0: u32,
    /// `set_uuid`: the array UUID.
    pub set_uuid: [u8; 16],
    /// `set_name`: NUL-padded "homehost:name".
    pub set_name: [u8; 32],
    /// `ctime`: low 40 bits seconds, high 24 bits microseconds.
    pub ctime: u64,
    /// `level`: -1 linear, 0, 1, 4, 5, 6, 10 (also -4 multipath, -5 faulty).
    pub level: i32,
    /// `layout`.
    pub layout: u32,
    /// `size`: used sectors per device (component size).
    pub size: u64,
    /// `chunksize` in sectors.
    pub chunksize: u32,
    /// `raid_disks`.
    pub raid_disks: u32,
    /// `bitmap_offset` (signed sectors from the superblock); shares storage
    /// with [`Superblock::ppl`].
    pub bitmap_offset: i32,
    /// `new_level` (reshape).
    pub new_level: u32,
    /// `reshape_position` in sectors.
    pub reshape_position: u64,
    /// `delta_disks` (signed).
    pub delta_disks: i32,
    /// `new_layout`.
    pub new_layout: u32,
    /// `new_chunk` in sectors.
    pub new_chunk: u32,
    /// `new_offset` (signed sectors relative to `data_offset`).
    pub new_offset: i32,
    /// `data_offset`: sector where this device's data area starts.
    pub data_offset: u64,
    /// `data_size`: sectors available for data on this device.
    pub data_size: u64,
    /// `super_offset`: sector where this superblock sits.
    pub super_offset: u64,
    /// `recovery_offset` (or `journal_tail`) in sectors.
    pub recovery_offset: u64,
    /// `dev_number`: index of this device in `dev_roles`.
    pub dev_number: u32,
    /// `cnt_corrected_read`.
    pub cnt_corrected_read: u32,
    /// `device_uuid`.
    pub device_uuid: [u8; 16],
    /// `devflags` ([`WRITE_MOSTLY_1`], [`FAIL_FAST_1`]).
    pub devflags: u8,
    /// `bblog_shift`.
    pub bblog_shift: u8,
    /// `bblog_size` in sectors.
    pub bblog_size: u16,
    /// `bblog_offset` (signed sectors from the superblock).
    pub bblog_offset: i32,
    /// `utime`, encoded like `ctime`.
    pub utime: u64,
    /// `events`.
    pub events: u64,
    /// `resync_offset`: [`MAX_SECTOR`] when clean.
    pub resync_offset: u64,
    /// `sb_csum` as stored.
    pub sb_csum: u32,
    /// `max_dev`: number of `dev_roles` entries.
    pub max_dev: u32,
    /// `pad3`.
    pub pad3: [u8; 32],
    /// `dev_roles[max_dev]`.
    pub dev_roles: Vec<u16>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// md's superblock checksum over `block[..256 + 2 * max_dev]`, with the
/// `sb_csum` field taken as zero: the sum of little-endian u32 words (and a
/// trailing u16) in 64 bits, folded to 32 (`calc_sb_1_csum`).
pub fn checksum(block: &[u8], max_dev: u32) -> u32 {
    let size = SB_FIXED_SIZE + 2 * max_dev as usize;
    debug_assert!(size <= block.len());
    let mut sum: u64 = 0;
    let mut at = 0;
    while at + 4 <= size {
        if at != 216 {
            sum += u64::from(le32(block, at));
        }
        at += 4;
    }
    if size - at == 2 {
        sum += u64::from(le16(block, at));
    }
    ((sum & 0xffff_ffff) + (sum >> 32)) as u32
}

impl Superblock {
    /// Decodes and validates a superblock read from sector `found_at` of a
    /// device of `dev_sectors` sectors. `block` must hold at least
    /// [`MAX_SB_SIZE`] bytes (the kernel's and mdadm's read size).
    ///
    /// When `verify_checksum` is false a checksum mismatch is not an error
    /// (`examine` shows it the way mdadm does); every other check applies.
    pub fn decode(
        block: &[u8],
        found_at: u64,
        dev_sectors: u64,
        verify_checksum: bool,
    ) -> Result<Superblock, SuperblockError> {
        if block.len() < MAX_SB_SIZE {
            return Err(SuperblockError::NotFound);
        }
        let b = block;
        if le32(b, 0) != MD_SB_MAGIC {
            return Err(SuperblockError::NotFound);
        }
        let major = le32(b, 4);
        if major != 1 {
            return Err(SuperblockError::BadMajor(major));
        }
        let super_offset = le64(b, 144);
        if super_offset != found_at {
            return Err(SuperblockError::BadSuperOffset { recorded: super_offset, actual: found_at });
        }
        let max_dev = le32(b, 220);
        if max_dev > MAX_DEVS {
            return Err(SuperblockError::BadMaxDev(max_dev));
        }
        let stored = le32(b, 216);
        let computed = checksum(b, max_dev);
        if verify_checksum && stored != computed {
            return Err(SuperblockError::BadChecksum { stored, computed });
        }
        let mut set_uuid = [0u8; 16];
        set_uuid.copy_from_slice(&b[16..32]);
        let mut set_name = [0u8; 32];
        set_name.copy_from_slice(&b[32..64]);
        let mut device_uuid = [0u8; 16];
        device_uuid.copy_from_slice(&b[168..184]);
        let mut pad3 = [0u8; 32];
        pad3.copy_from_slice(&b[224..256]);
        let dev_roles = (0..max_dev as usize).map(|i| le16(b, SB_FIXED_SIZE + 2 * i)).collect();
        let sb = Superblock {
            magic: MD_SB_MAGIC,
            major_version: major,
            feature_map: le32(b, 8),
            pad0: le32(b, 12),
            set_uuid,
            set_name,
            ctime: le64(b, 64),
            level: le32(b, 72) as i32,
            layout: le32(b, 76),
            size: le64(b, 80),
            chunksize: le32(b, 88),
            raid_disks: le32(b, 92),
            bitmap_offset: le32(b, 96) as i32,
            new_level: le32(b, 100),
            reshape_position: le64(b, 104),
            delta_disks: le32(b, 112) as i32,
            new_layout: le32(b, 116),
            new_chunk: le32(b, 120),
            new_offset: le32(b, 124) as i32,
            data_offset: le64(b, 128),
            data_size: le64(b, 136),
            super_offset,
            recovery_offset: le64(b, 152),
            dev_number: le32(b, 160),
            cnt_corrected_read: le32(b, 164),
            device_uuid,
            devflags: b[184],
            bblog_shift: b[185],
            bblog_size: le16(b, 186),
            bblog_offset: le32(b, 188) as i32,
            utime: le64(b, 192),
            events: le64(b, 200),
            resync_offset: le64(b, 208),
            sb_csum: stored,
            max_dev,
            pad3,
            dev_roles,
        };
        sb.validate(dev_sectors)?;
        Ok(sb)
    }

    /// The kernel's sanity checks beyond magic/version/offset/checksum.
    fn validate(&self, dev_sectors: u64) -> Result<(), SuperblockError> {
        if self.pad0 != 0 || self.pad3.iter().any(|&x| x != 0) {
            return Err(SuperblockError::NonZeroPadding);
        }
        let unknown = self.feature_map & !feature::ALL;
        if unknown != 0 {
            return Err(SuperblockError::UnknownFeatures(unknown));
        }
        let sb_sectors = (SB_FIXED_SIZE as u64 + 2 * u64::from(self.max_dev)).div_ceil(512);
        let data_end = self
            .data_offset
            .checked_add(self.data_size)
            .ok_or_else(|| SuperblockError::BadDataArea("data_offset + data_size overflows".into()))?;
        if self.super_offset < self.data_offset {
            // 1.1 / 1.2: the data area follows the superblock.
            if self.data_offset < self.super_offset + sb_sectors {
                return Err(SuperblockError::BadDataArea(format!(
                    "data_offset {} overlaps the superblock at {}",
                    self.data_offset, self.super_offset
                )));
            }
        } else if data_end > self.super_offset {
            // 1.0: the data area ends before the superblock.
            return Err(SuperblockError::BadDataArea(format!(
                "data area {}..{} overlaps the superblock at {}",
                self.data_offset, data_end, self.super_offset
            )));
        }
        if data_end > dev_sectors {
            return Err(SuperblockError::BadDataArea(format!(
                "data area ends at sector {data_end} but the device has {dev_sectors} sectors (truncated device?)"
            )));
        }
        Ok(())
    }

    /// Encodes the superblock into `block` (at least 256 + 2 * max_dev
    /// bytes), byte-identical to what md writes. The stored `sb_csum` is
    /// written as is; call [`Superblock::update_checksum`] first to refresh it.
    pub fn encode(&self, block: &mut [u8]) {
        let size = self.sb_bytes();
        assert!(block.len() >= size, "superblock buffer too small");
        assert_eq!(self.dev_roles.len(), self.max_dev as usize);
        let b = block;
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.major_version.to_le_bytes());
        b[8..12].copy_from_slice(&self.feature_map.to_le_bytes());
        b[12..16].copy_from_slice(&self.pad0.to_le_bytes());
        b[16..32].copy_from_slice(&self.set_uuid);
        b[32..64].copy_from_slice(&self.set_name);
        b[64..72].copy_from_slice(&self.ctime.to_le_bytes());
        b[72..76].copy_from_slice(&self.level.to_le_bytes());
        b[76..80].copy_from_slice(&self.layout.to_le_bytes());
        b[80..88].copy_from_slice(&self.size.to_le_bytes());
        b[88..92].copy_from_slice(&self.chunksize.to_le_bytes());
        b[92..96].copy_from_slice(&self.raid_disks.to_le_bytes());
        b[96..100].copy_from_slice(&self.bitmap_offset.to_le_bytes());
        b[100..104].copy_from_slice(&self.new_level.to_le_bytes());
        b[104..112].copy_from_slice(&self.reshape_position.to_le_bytes());
        b[112..116].copy_from_slice(&self.delta_disks.to_le_bytes());
        b[116..120].copy_from_slice(&self.new_layout.to_le_bytes());
        b[120..124].copy_from_slice(&self.new_chunk.to_le_bytes());
        b[124..128].copy_from_slice(&self.new_offset.to_le_bytes());
        b[128..136].copy_from_slice(&self.data_offset.to_le_bytes());
        b[136..144].copy_from_slice(&self.data_size.to_le_bytes());
        b[144..152].copy_from_slice(&self.super_offset.to_le_bytes());
        b[152..160].copy_from_slice(&self.recovery_offset.to_le_bytes());
        b[160..164].copy_from_slice(&self.dev_number.to_le_bytes());
        b[164..168].copy_from_slice(&self.cnt_corrected_read.to_le_bytes());
        b[168..184].copy_from_slice(&self.device_uuid);
        b[184] = self.devflags;
        b[185] = self.bblog_shift;
        b[186..188].copy_from_slice(&self.bblog_size.to_le_bytes());
        b[188..192].copy_from_slice(&self.bblog_offset.to_le_bytes());
        b[192..200].copy_from_slice(&self.utime.to_le_bytes());
        b[200..208].copy_from_slice(&self.events.to_le_bytes());
        b[208..216].copy_from_slice(&self.resync_offset.to_le_bytes());
        b[216..220].copy_from_slice(&self.sb_csum.to_le_bytes());
        b[220..224].copy_from_slice(&self.max_dev.to_le_bytes());
        b[224..256].copy_from_slice(&self.pad3);
        for (i, r) in self.dev_roles.iter().enumerate() {
            let at = SB_FIXED_SIZE + 2 * i;
            b[at..at + 2].copy_from_slice(&r.to_le_bytes());
        }
    }

    /// Bytes covered by the checksum: `256 + 2 * max_dev`.
    pub fn sb_bytes(&self) -> usize {
        SB_FIXED_SIZE + 2 * self.max_dev as usize
    }

    /// The checksum this superblock's contents call for.
    pub fn compute_checksum(&self) -> u32 {
        let mut block = vec![0u8; self.sb_bytes().max(MAX_SB_SIZE)];
        self.encode(&mut block);
        checksum(&block, self.max_dev)
    }

    /// Sets `sb_csum` to the computed checksum.
    pub fn update_checksum(&mut self) {
        self.sb_csum = self.compute_checksum();
    }

    /// The minor version implied by `super_offset`.
    pub fn minor(&self) -> Minor {
        Minor::from_super_offset(self.super_offset)
    }

    /// The array name as stored ("homehost:name"), up to the first NUL.
    pub fn name(&self) -> String {
        let end = self.set_name.iter().position(|&c| c == 0).unwrap_or(self.set_name.len());
        String::from_utf8_lossy(&self.set_name[..end]).into_owned()
    }

    /// This device's role in its own superblock's `dev_roles`: a slot
    /// number, or one of the `MD_DISK_ROLE_*` values. A `dev_number` beyond
    /// `max_dev` reads as spare (mdadm's `role_from_sb`).
    pub fn role(&self) -> u16 {
        self.role_of(self.dev_number)
    }

    /// The role recorded here for device number `dev_number`.
    pub fn role_of(&self, dev_number: u32) -> u16 {
        self.dev_roles.get(dev_number as usize).copied().unwrap_or(MD_DISK_ROLE_SPARE)
    }

    /// Whether the array was shut down cleanly (`resync_offset == MaxSector`).
    pub fn is_clean(&self) -> bool {
        self.resync_offset == MAX_SECTOR
    }

    /// Whether `feature_map` has `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.feature_map & bit != 0
    }

    /// md's names of the features set in `mask` that are present.
    pub fn feature_names(&self, mask: u32) -> Vec<&'static str> {
        feature::NAMES.iter().filter(|(bit, _)| self.feature_map & mask & bit != 0).map(|(_, n)| *n).collect()
    }

    /// The `ppl` view of the `bitmap_offset` union.
    pub fn ppl(&self) -> Ppl {
        let raw = self.bitmap_offset as u32;
        Ppl { offset: (raw & 0xffff) as u16 as i16, size: (raw >> 16) as u16 }
    }

    /// Whether `other` describes the same array shape (UUID, level, layout,
    /// chunk, raid_disks, component size).
    pub fn same_geometry(&self, other: &Superblock) -> bool {
        self.set_uuid == other.set_uuid
            && self.level == other.level
            && self.layout == other.layout
            && self.chunksize == other.chunksize
            && self.raid_disks == other.raid_disks
            && self.size == other.size
    }
}

/// Formats a 16-byte UUID the way mdadm does: four groups of 8 hex digits
/// separated by colons.
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    let mut s = String::with_capacity(35);
    for (i, b) in uuid.iter().enumerate() {
        if i % 4 == 0 && i != 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A superblock found on a member, with where it was found.
#[derive(Clone, Debug)]
pub struct Found {
    /// The decoded superblock.
    pub sb: Superblock,
    /// Minor version (location) it was found at.
    pub minor: Minor,
    /// Device size in sectors.
    pub dev_sectors: u64,
    /// Whether the stored checksum matches.
    pub checksum_ok: bool,
    /// The raw 4 KiB block (for examine and byte-exact checks).
    pub raw: Vec<u8>,
    /// The internal bitmap's superblock header, when the `BITMAP_OFFSET`
    /// feature is set and a valid one (magic and UUID match) is present.
    pub bitmap: Option<BitmapSuper>,
}

/// The header of md's internal write-intent bitmap (`bitmap_super_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapSuper {
    /// `version`.
    pub version: u32,
    /// `uuid`.
    pub uuid: [u8; 16],
    /// `events`.
    pub events: u64,
    /// `events_cleared`.
    pub events_cleared: u64,
    /// `sync_size` in sectors.
    pub sync_size: u64,
    /// `state`.
    pub state: u32,
    /// `chunksize` in bytes.
    pub chunksize: u32,
    /// `daemon_sleep` in seconds.
    pub daemon_sleep: u32,
    /// `write_behind`.
    pub write_behind: u32,
    /// `sectors_reserved`.
    pub sectors_reserved: u32,
    /// `nodes` (clustered md).
    pub nodes: u32,
}

impl BitmapSuper {
    /// Decodes a bitmap superblock; `None` unless the magic is right.
    pub fn decode(b: &[u8]) -> Option<BitmapSuper> {
        if b.len() < 256 || le32(b, 0) != BITMAP_MAGIC {
            return None;
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[8..24]);
        Some(BitmapSuper {
            version: le32(b, 4),
            uuid,
            events: le64(b, 24),
            events_cleared: le64(b, 32),
            sync_size: le64(b, 40),
            state: le32(b, 48),
            chunksize: le32(b, 52),
            daemon_sleep: le32(b, 56),
            write_behind: le32(b, 60),
            sectors_reserved: le32(b, 64),
            nodes: le32(b, 68),
        })
    }
}

/// Looks for a v1.x superblock on `member`, at `minor` if given, else at
/// every location, choosing the one with the latest `ctime` when several are
/// valid (mdadm's rule).
///
/// With `verify_checksum` a bad checksum is an error; without it the
/// superblock is returned with `checksum_ok == false`.
pub fn load(member: &Member, minor: Option<Minor>, verify_checksum: bool) -> Result<Found, SuperblockError> {
    let dev_sectors = member.size() / 512;
    if dev_sectors < 24 {
        return Err(SuperblockError::TooSmall { sectors: dev_sectors });
    }
    let candidates: &[Minor] = match minor {
        Some(ref m) => std::slice::from_ref(m),
        None => &Minor::ALL,
    };
    let mut best: Option<Found> = None;
    // The most telling failure, reported when no location holds a superblock.
    let mut first_error: Option<SuperblockError> = None;
    for &m in candidates {
        let Some(at) = m.sb_offset(dev_sectors) else { continue };
        let mut raw = vec![0u8; MAX_SB_SIZE];
        let avail = (member.size() - at * 512).min(MAX_SB_SIZE as u64) as usize;
        if member.read_exact_at(&mut raw[..avail], at * 512).is_err() {
            continue;
        }
        match Superblock::decode(&raw, at, dev_sectors, verify_checksum) {
            Ok(sb) => {
                let checksum_ok = sb.sb_csum == checksum(&raw, sb.max_dev);
                let bitmap = load_bitmap(member, &sb);
                let better = best.as_ref().is_none_or(|b| b.sb.ctime < sb.ctime);
                if better {
                    best = Some(Found { sb, minor: m, dev_sectors, checksum_ok, raw, bitmap });
                }
            }
            Err(SuperblockError::NotFound) => {}
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    best.ok_or_else(|| first_error.unwrap_or(SuperblockError::NotFound))
}

fn load_bitmap(member: &Member, sb: &Superblock) -> Option<BitmapSuper> {
    if !sb.has_feature(feature::BITMAP_OFFSET) {
        return None;
    }
    let at = (sb.super_offset as i64).checked_add(i64::from(sb.bitmap_offset))?;
    let at = u64::try_from(at).ok()?.checked_mul(512)?;
    let mut buf = [0u8; 512];
    member.read_exact_at(&mut buf, at).ok()?;
    let bms = BitmapSuper::decode(&buf)?;
    (bms.uuid == sb.set_uuid).then_some(bms)
}

/// Reads a member's superblock, mapping I/O failures into `io::Error`s that
/// name the member. Convenience for callers that only want one error type.
pub fn load_io(member: &Member, verify_checksum: bool) -> io::Result<Found> {
    load(member, None, verify_checksum)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", member.path().display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        let mut sb = Superblock {
            magic: MD_SB_MAGIC,
            major_version: 1,
            feature_map: 0,
            pad0: 0,
            set_uuid: [7; 16],
            set_name: [0; 32],
            ctime: 1_700_000_000,
            level: 5,
            layout: 2,
            size: 14336,
            chunksize: 128,
            raid_disks: 4,
            bitmap_offset: 0,
            new_level: 0,
            reshape_position: 0,
            delta_disks: 0,
            new_layout: 0,
            new_chunk: 0,
            new_offset: 0,
            data_offset: 2048,
            data_size: 14336,
            super_offset: 8,
            recovery_offset: 0,
            dev_number: 1,
            cnt_corrected_read: 0,
            device_uuid: [9; 16],
            devflags: 0,
            bblog_shift: 9,
            bblog_size: 8,
            bblog_offset: 16,
            utime: 1_700_000_100,
            events: 18,
            resync_offset: MAX_SECTOR,
            sb_csum: 0,
            max_dev: 129,
            pad3: [0; 32],
            dev_roles: (0..129).map(|i| if i < 4 { i } else { MD_DISK_ROLE_SPARE }).collect(),
        };
        sb.set_name[..5].copy_from_slice(b"h:arr");
        sb.update_checksum();
        sb
    }

    #[test]
    fn encode_decode_roundtrip_odd_max_dev() {
        let sb = sample();
        let mut block = vec![0u8; MAX_SB_SIZE];
        sb.encode(&mut block);
        let back = Superblock::decode(&block, 8, 16384, true).expect("decode");
        assert_eq!(back, sb);
        assert_eq!(back.name(), "h:arr");
        assert_eq!(back.role(), 1);
    }

    #[test]
    fn every_single_bit_flip_in_checksummed_area_is_caught() {
        let sb = sample();
        let mut block = vec![0u8; MAX_SB_SIZE];
        sb.encode(&mut block);
        for byte in 0..sb.sb_bytes() {
            for bit in 0..8 {
                let mut b = block.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    Superblock::decode(&b, 8, 16384, true).is_err(),
                    "flip of byte {byte} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn rejects_wrong_location_and_unknown_features() {
        let mut sb = sample();
        let mut block = vec![0u8; MAX_SB_SIZE];
        sb.encode(&mut block);
        assert!(matches!(
            Superblock::decode(&block, 0, 16384, true),
            Err(SuperblockError::BadSuperOffset { .. })
        ));
        sb.feature_map = 1 << 20;
        sb.update_checksum();
        sb.encode(&mut block);
        assert_eq!(
            Superblock::decode(&block, 8, 16384, true),
            Err(SuperblockError::UnknownFeatures(1 << 20))
        );
    }

    #[test]
    fn rejects_truncated_device() {
        let sb = sample();
        let mut block = vec![0u8; MAX_SB_SIZE];
        sb.encode(&mut block);
        assert!(matches!(Superblock::decode(&block, 8, 10000, true), Err(SuperblockError::BadDataArea(_))));
    }

    #[test]
    fn minor_locations() {
        assert_eq!(Minor::V0.sb_offset(16384), Some(16368));
        assert_eq!(Minor::V0.sb_offset(16387), Some(16368));
        assert_eq!(Minor::V1.sb_offset(16384), Some(0));
        assert_eq!(Minor::V2.sb_offset(16384), Some(8));
        assert_eq!(Minor::V2.sb_offset(23), None);
        assert_eq!(Minor::from_super_offset(16368), Minor::V0);
    }

    #[test]
    fn uuid_format() {
        let u =
            [0xcf, 0x22, 0xb5, 0xcb, 0x14, 0xd7, 0x44, 0xba, 0x78, 0xd2, 0x91, 0xc8, 0x8b, 0x91, 0x47, 0xcf];
        assert_eq!(format_uuid(&u), "cf22b5cb:14d744ba:78d291c8:8b9147cf");
    }
}
