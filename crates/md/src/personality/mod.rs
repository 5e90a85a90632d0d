//! md personalities: how an array's bytes are laid out on its members.
//!
//! ## Responsibility boundary
//! A personality maps array byte offsets to (member slot, byte offset inside
//! that member's *data area*) and reads array ranges, rebuilding the bytes of
//! missing members from mirrors or parity where the level allows it; for
//! raid0/1/10 it also lists the member writes of an array write
//! ([`Personality::map_write`]), with the same address math. It never
//! sees files, superblocks or `data_offset`: members are reached through
//! [`MemberRead`], whose offsets start at the member's data area.
//!
//! ## Synchronization model
//! A personality is immutable after construction (`Send + Sync`); reads from
//! many threads run concurrently with no lock.

use std::fmt;
use std::io;

pub mod gf;
pub mod raid0;
pub mod raid1;
pub mod raid10;
pub mod raid5;
pub mod simd;

/// The RAID level, with md's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// `-1`, concatenation (not supported for reading yet).
    Linear,
    /// `0`, striping.
    Raid0,
    /// `1`, mirroring.
    Raid1,
    /// `4`, dedicated parity disk.
    Raid4,
    /// `5`, rotating parity.
    Raid5,
    /// `6`, P and Q syndromes.
    Raid6,
    /// `10`, striped mirrors (near, far, offset).
    Raid10,
}

impl Level {
    /// From md's on-disk level number.
    pub fn from_md(level: i32) -> Option<Level> {
        Some(match level {
            -1 => Level::Linear,
            0 => Level::Raid0,
            1 => Level::Raid1,
            4 => Level::Raid4,
            5 => Level::Raid5,
            6 => Level::Raid6,
            10 => Level::Raid10,
            _ => return None,
        })
    }

    /// md's on-disk level number.
    pub fn to_md(self) -> i32 {
        match self {
            Level::Linear => -1,
            Level::Raid0 => 0,
            Level::Raid1 => 1,
            Level::Raid4 => 4,
            Level::Raid5 => 5,
            Level::Raid6 => 6,
            Level::Raid10 => 10,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Linear => "linear",
            Level::Raid0 => "raid0",
            Level::Raid1 => "raid1",
            Level::Raid4 => "raid4",
            Level::Raid5 => "raid5",
            Level::Raid6 => "raid6",
            Level::Raid10 => "raid10",
        })
    }
}

/// Everything a personality needs to know about an array's shape, taken from
/// the authoritative superblock (and, for raid0, from every member's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// RAID level.
    pub level: Level,
    /// md's raw `layout` number (raid5/6 algorithm, raid10 near/far/offset
    /// encoding, raid0 multi-zone layout).
    pub layout: u32,
    /// Whether the superblock's `RAID0_LAYOUT` feature bit is set (raid0 only:
    /// without it `layout` carries no meaning).
    pub raid0_layout_set: bool,
    /// Chunk size in 512-byte sectors (0 for raid1).
    pub chunk_sectors: u32,
    /// Number of slots (`raid_disks`).
    pub raid_disks: u32,
    /// Per-member component size in sectors that the array uses (`size` in
    /// the superblock). raid0 ignores it and uses `member_sectors`.
    pub dev_sectors: u64,
    /// For every slot, the size of that member's data area in sectors
    /// (`data_size` of its superblock); raid0 builds its zones from these.
    /// Other levels may ignore it.
    pub member_sectors: Vec<u64>,
}

impl Geometry {
    /// A geometry whose members all have `dev_sectors` of data area and use
    /// all of it (no raid0 multi-zone layout recorded).
    pub fn uniform(
        level: Level,
        layout: u32,
        raid_disks: u32,
        chunk_sectors: u32,
        dev_sectors: u64,
    ) -> Geometry {
        Geometry {
            level,
            layout,
            raid0_layout_set: false,
            chunk_sectors,
            raid_disks,
            dev_sectors,
            member_sectors: vec![dev_sectors; raid_disks as usize],
        }
    }
}

/// One place an array byte is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Member slot (`raid_disk`, 0-based).
    pub slot: usize,
    /// Byte offset inside that member's data area.
    pub offset: u64,
}

/// Why a geometry cannot be turned into a personality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeometryError(pub String);

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GeometryError {}

/// How a personality reaches member data.
///
/// Offsets are bytes from the start of the member's data area (the member's
/// `data_offset` is applied by the implementor). Implementations must allow
/// concurrent calls from many threads.
pub trait MemberRead: Sync {
    /// Whether the member in `slot` is present. Reads of an absent member are
    /// a bug in the personality.
    fn is_present(&self, slot: usize) -> bool;

    /// Reads exactly `buf.len()` bytes at `offset` of `slot`'s data area.
    fn read_at(&self, slot: usize, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// An md personality's read path.
pub trait Personality: Send + Sync + fmt::Debug {
    /// The geometry it was built from.
    fn geometry(&self) -> &Geometry;

    /// Size of the array in bytes.
    fn array_bytes(&self) -> u64;

    /// Whether the array's every byte can be read with only the slots whose
    /// `present[slot]` is true (`present.len() == raid_disks`).
    fn readable_with(&self, present: &[bool]) -> bool;

    /// Reads `buf.len()` bytes at array byte `offset`, rebuilding data of
    /// absent members from redundancy. The range must lie inside the array
    /// (`offset + buf.len() <= array_bytes()`), else `InvalidInput`.
    /// Missing members beyond what the level tolerates give an error,
    /// never zeros.
    fn read(&self, members: &dyn MemberRead, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Every place where the data byte at array `offset` is stored (one for
    /// striped levels, each copy for mirrors), in slot order. Parity is not
    /// listed. Used by tests and tools; not on the I/O path.
    fn locate(&self, offset: u64) -> Vec<Location>;

    /// A good size (bytes) for large sequential reads: a multiple of the
    /// stripe width, so a reader that aligns to it touches every member
    /// with whole chunks.
    fn io_hint(&self) -> u64;

    /// For parity levels (raid4/5/6): how the stripe row holding member byte
    /// `member_offset` computes its syndromes. `None` for levels without
    /// parity. Used by tools that lay out whole arrays; not on the I/O path.
    fn syndrome_layout(&self, member_offset: u64) -> Option<SyndromeLayout> {
        let _ = member_offset;
        None
    }

    /// For parity levels (raid4/5/6): the shape of a stripe row, for the
    /// stripe cache's write path. `None` for levels without parity.
    fn parity_shape(&self) -> Option<ParityShape> {
        None
    }

    /// For parity levels: fills `out` with where stripe row `stripe`
    /// keeps each data index, its Q coefficient position, P and Q (reusing
    /// `out`'s vectors). Returns false for levels without parity and for a
    /// stripe past the end of the array.
    fn stripe_map(&self, stripe: u64, out: &mut StripeMap) -> bool {
        let _ = (stripe, out);
        false
    }

    /// The member writes that store `len` bytes at array byte `offset`:
    /// every copy of every piece (one for striped levels, each mirror or
    /// copy for raid1/raid10), computed with the same address math as
    /// [`Personality::read`]. The range must lie inside the array, else
    /// `InvalidInput`. Copies of one piece share `buf_start` and `len`.
    /// Parity levels answer `Unsupported` (EOPNOTSUPP): their writes need
    /// the stripe cache.
    fn map_write(&self, offset: u64, len: usize) -> io::Result<Vec<WritePiece>> {
        let _ = (offset, len);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{} writes come with the stripe cache (not supported yet)", self.geometry().level),
        ))
    }
}

/// One member write of an array write: bytes `buf_start..buf_start + len`
/// of the caller's data go to `slot` at byte `member_offset` of its data
/// area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WritePiece {
    /// Member slot.
    pub slot: usize,
    /// Byte offset in the member's data area.
    pub member_offset: u64,
    /// Where the bytes start in the caller's data.
    pub buf_start: usize,
    /// Number of bytes.
    pub len: usize,
}

/// The shape of every stripe row of a raid4/5/6 array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParityShape {
    /// Chunk size in bytes (a whole number of pages).
    pub chunk_bytes: u64,
    /// Data chunks per stripe row.
    pub data_disks: usize,
    /// Number of slots.
    pub raid_disks: usize,
    /// Whether the row has Q as well as P (raid6).
    pub raid6: bool,
    /// Number of positions Q is computed over (`syndrome_disks`: the data
    /// disks, or every disk for DDF layouts whose P/Q positions are zero
    /// blocks).
    pub syndrome_disks: usize,
    /// Stripe rows in the array.
    pub stripes: u64,
}

impl ParityShape {
    /// Data bytes of one stripe row.
    pub fn stripe_bytes(&self) -> u64 {
        self.chunk_bytes * self.data_disks as u64
    }
}

/// Where one stripe row keeps its blocks, in array order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StripeMap {
    /// `data[k]`: the slot holding data index `k` (array order).
    pub data: Vec<usize>,
    /// `pos[k]`: data index `k`'s Q coefficient position (`g^pos`); for
    /// raid4/5 simply `k`.
    pub pos: Vec<usize>,
    /// Slot holding P.
    pub p: usize,
    /// Slot holding Q (raid6 only).
    pub q: Option<usize>,
}

/// Where a stripe row's data, P and Q live, in md's syndrome order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyndromeLayout {
    /// Syndrome position `z` (Q coefficient g^z) → the slot whose data block
    /// sits there, or `None` for a zero block (DDF layouts count the P and
    /// Q disks as zero positions). For raid4/5 the order is the data order.
    pub data: Vec<Option<usize>>,
    /// Slot holding P.
    pub p: usize,
    /// Slot holding Q (raid6 only).
    pub q: Option<usize>,
}

/// Builds the personality for `geom`, or says why the geometry is invalid or
/// unsupported (naming the level, layout or number at fault).
pub fn build(geom: &Geometry) -> Result<Box<dyn Personality>, GeometryError> {
    if geom.raid_disks == 0 {
        return Err(GeometryError("raid_disks is 0".into()));
    }
    if geom.member_sectors.len() != geom.raid_disks as usize {
        return Err(GeometryError(format!(
            "member size list has {} entries for {} raid disks",
            geom.member_sectors.len(),
            geom.raid_disks
        )));
    }
    match geom.level {
        Level::Linear => Err(GeometryError("level linear is not supported".into())),
        Level::Raid0 => Ok(Box::new(raid0::Raid0::new(geom.clone())?)),
        Level::Raid1 => Ok(Box::new(raid1::Raid1::new(geom.clone())?)),
        Level::Raid10 => Ok(Box::new(raid10::Raid10::new(geom.clone())?)),
        Level::Raid4 | Level::Raid5 | Level::Raid6 => Ok(Box::new(raid5::Raid5::new(geom.clone())?)),
    }
}

/// Checks that `offset..offset+len` lies within `array_bytes`.
pub(crate) fn check_range(offset: u64, len: usize, array_bytes: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= array_bytes => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("I/O of {len} bytes at {offset} reaches past the end of the array ({array_bytes} bytes)"),
        )),
    }
}

/// The error for data that no present member can supply.
pub(crate) fn unrecoverable(what: &str) -> io::Error {
    io::Error::other(format!("data unavailable: {what}"))
}
