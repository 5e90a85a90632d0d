//! Creating an array the way `mdadm --create` (4.2, v1.2 metadata) does.
//!
//! [`plan`] checks everything first — levels, member counts, layouts, chunk
//! sizes, member sizes, existing content — and computes every superblock
//! without touching any member; [`Plan::write`] then creates missing image
//! files and writes the superblocks. Nothing is written when planning fails.
//!
//! The numbers follow mdadm's `Create.c` and `super1.c`:
//! * data offset (`validate_geometry1`): `12*2 + bitmap space + headroom`
//!   rounded up to 1 MiB, where headroom is 128 MiB halved while `headroom
//!   * 1024` exceeds the first member and it stays at least two chunks;
//! * bitmap space (`choose_bm_space`): 0 / 4 KiB / 64 KiB / 128 KiB by size;
//! * per-member size: the smallest member's space after the data offset, in
//!   KiB rounded down to whole chunks (raid1: to 64 KiB); raid0 records 0;
//! * bad-block log: 8 sectors right after the bitmap space
//!   (`write_init_super1`); events 0; `max_dev` rounds the roles table up
//!   to 512 bytes; the superblock is written as `ROUND_UP(256 + 2*max_dev,
//!   512)` bytes at sector 8 and nothing else is written.
//! * clean (`resync_offset` = MaxSector) with `--assume-clean`, for raid0,
//!   for raid4/5 with a `missing` member and raid6 with two; otherwise
//!   `resync_offset` 0 (needs resync). mdadm's trick of turning raid4/5's
//!   last member into a spare that is then recovered (done without
//!   `--force`) is not used: umd marks the array for resync instead, as
//!   `mdadm --create --force` does.
//!
//! An internal bitmap is written only with `--bitmap internal` (mdadm adds
//! one by default for members over 100 GiB; umd does not): 8 sectors after
//! the superblock, in the space above, md's version-4 header then the bits,
//! all set unless the array is created clean ([`crate::bitmap`]).

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use blockio::{Access, Member};

use crate::personality::{self, Geometry, Level};
use crate::superblock::{
    self, feature, Minor, Superblock, SuperblockError, MAX_SECTOR, MD_DISK_ROLE_SPARE, MD_SB_MAGIC,
    SB_FIXED_SIZE,
};

/// mdadm's default chunk size in KiB.
pub const DEFAULT_CHUNK_KIB: u64 = 512;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Request {
    /// RAID level.
    pub level: Level,
    /// `--raid-devices`.
    pub raid_devices: usize,
    /// `--chunk` in KiB (`None`: 512 KiB, or none for raid1).
    pub chunk_kib: Option<u64>,
    /// `--layout` as given.
    pub layout: Option<String>,
    /// `--name` (default "0", what `mdadm --create /dev/md0` records).
    pub name: Option<String>,
    /// Home host for the name ("host:name"); default this host's name.
    pub homehost: Option<String>,
    /// `--size` per member in KiB.
    pub size_kib: Option<u64>,
    /// `--assume-clean`.
    pub assume_clean: bool,
    /// `--bitmap internal`: md's write-intent bitmap in the space mdadm
    /// reserves after the superblock.
    pub bitmap: bool,
    /// `--bitmap-chunk` in KiB (`None`: mdadm's default, 64 MiB, larger if
    /// the bits would not fit).
    pub bitmap_chunk_kib: Option<u64>,
    /// `--force`: overwrite members holding md superblocks or file systems,
    /// accept members of unequal size and single-member arrays.
    pub force: bool,
    /// Members in slot order; `None` is `missing`.
    pub members: Vec<Option<PathBuf>>,
}

/// Why an array cannot be created: one line, naming the member at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateError {
    /// The member at fault, if one is.
    pub member: Option<PathBuf>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.member {
            Some(m) => write!(f, "{}: {}", m.display(), self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for CreateError {}

fn err(reason: impl Into<String>) -> CreateError {
    CreateError { member: None, reason: reason.into() }
}

fn member_err(p: &Path, reason: impl Into<String>) -> CreateError {
    CreateError { member: Some(p.to_path_buf()), reason: reason.into() }
}

/// Parses an mdadm level name ("raid5", "5", "mirror", "stripe", …).
pub fn parse_level(s: &str) -> Option<Level> {
    Some(match s.to_ascii_lowercase().as_str() {
        "raid0" | "0" | "stripe" => Level::Raid0,
        "raid1" | "1" | "mirror" => Level::Raid1,
        "raid4" | "4" => Level::Raid4,
        "raid5" | "5" => Level::Raid5,
        "raid6" | "6" => Level::Raid6,
        "raid10" | "10" => Level::Raid10,
        _ => return None,
    })
}

/// mdadm's `parse_size`: a number with an optional K, M, G, T or s
/// (sectors) suffix, K when none; returns sectors.
pub fn parse_size_sectors(s: &str) -> Option<u64> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok().filter(|&n| n > 0)?;
    let mult: u64 = match &s[digits..] {
        "" | "K" | "k" => 2,
        "M" | "m" => 2 << 10,
        "G" | "g" => 2 << 20,
        "T" | "t" => 2 << 30,
        "s" => 1,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The md layout number of layout name `name` at `level` (mdadm's
/// `r0layout`, `r5layout`, `r6layout` and `parse_layout_10`).
pub fn parse_layout(level: Level, name: &str) -> Result<u32, String> {
    let r5 = |n: &str| -> Option<u32> {
        Some(match n {
            "left-asymmetric" | "la" | "ddf-N-restart" => 0,
            "right-asymmetric" | "ra" | "ddf-zero-restart" => 1,
            "left-symmetric" | "ls" | "default" | "ddf-N-continue" => 2,
            "right-symmetric" | "rs" => 3,
            "parity-first" => 4,
            "parity-last" => 5,
            _ => return None,
        })
    };
    let bad = || format!("layout {name} not understood for {level}");
    match level {
        Level::Raid0 => match name {
            "original" | "1" => Ok(1),
            "alternate" | "2" => Ok(2),
            "dangerous" => Ok(0),
            _ => Err(bad()),
        },
        Level::Raid5 => r5(name).ok_or_else(bad),
        Level::Raid6 => {
            let v = match name {
                "ddf-zero-restart" => Some(8),
                "ddf-N-restart" => Some(9),
                "ddf-N-continue" => Some(10),
                "left-asymmetric-6" => Some(16),
                "right-asymmetric-6" => Some(17),
                "left-symmetric-6" => Some(18),
                "right-symmetric-6" => Some(19),
                "parity-first-6" => Some(20),
                _ => r5(name),
            };
            v.ok_or_else(bad)
        }
        Level::Raid10 => {
            let kind = name.chars().next();
            let copies: Option<u32> =
                name.get(1..).and_then(|c| c.parse().ok()).filter(|&c| (1..=200).contains(&c));
            match (kind, copies) {
                (Some('n'), Some(c)) => Ok(256 + c),
                (Some('o'), Some(c)) => Ok(0x10000 + (c << 8) + 1),
                (Some('f'), Some(c)) => Ok(1 + (c << 8)),
                _ => Err(format!(
                    "layout for raid10 must be 'nNN', 'oNN' or 'fNN' where NN is a number, not {name}"
                )),
            }
        }
        Level::Raid1 | Level::Raid4 | Level::Linear => {
            Err(format!("layout not meaningful for {level} arrays"))
        }
    }
}

/// mdadm's default layout for `level` (`default_layout`).
pub fn default_layout(level: Level) -> u32 {
    match level {
        Level::Raid0 => 1,
        Level::Raid5 | Level::Raid6 => 2,
        Level::Raid10 => 0x102,
        _ => 0,
    }
}

/// mdadm's `choose_bm_space` (sectors).
pub fn choose_bm_space(devsize: u64) -> u64 {
    if devsize < 64 * 2 {
        0
    } else if devsize - 64 * 2 >= 200 * 1024 * 1024 * 2 {
        128 * 2
    } else if devsize - 4 * 2 > 8 * 1024 * 1024 * 2 {
        64 * 2
    } else {
        4 * 2
    }
}

/// mdadm's default v1.2 data offset (sectors) for a first member of
/// `devsize` sectors and chunks of `chunk_kib` (0 for raid1).
pub fn default_data_offset(devsize: u64, chunk_kib: u64) -> u64 {
    let bmspace = choose_bm_space(devsize);
    let mut headroom: u64 = 128 * 1024 * 2;
    while (headroom << 10) > devsize && (chunk_kib == 0 || headroom / 2 >= chunk_kib * 2 * 2) {
        headroom >>= 1;
    }
    (12 * 2 + bmspace + headroom).div_ceil(2048) * 2048
}

/// One member of a plan.
#[derive(Clone, Debug)]
pub struct PlannedMember {
    /// Its path.
    pub path: PathBuf,
    /// Image file to create with this length (bytes), when it does not exist.
    pub create_bytes: Option<u64>,
    /// Its superblock.
    pub sb: Superblock,
    /// Locations of old md superblocks to wipe (sector offsets; `--force`).
    pub wipe: Vec<u64>,
}

/// Everything [`Plan::write`] will do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Present members, in slot order (missing slots are absent).
    pub members: Vec<PlannedMember>,
    /// Raid devices.
    pub raid_disks: usize,
    /// Data offset in sectors.
    pub data_offset: u64,
    /// Per-member used size in sectors (0 for raid0).
    pub dev_sectors: u64,
    /// Array size in bytes.
    pub array_bytes: u64,
    /// Whether the array is marked clean.
    pub clean: bool,
    /// Array UUID.
    pub uuid: [u8; 16],
    /// The bitmap area written on every member (`--bitmap internal`):
    /// header and bits, at `super_offset + bitmap_offset`.
    pub bitmap_area: Option<Vec<u8>>,
}

fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom").and_then(|f| {
        f.read_exact_at(&mut b, 0).or_else(|_| {
            use std::io::Read;
            let mut f = f;
            f.read_exact(&mut b)
        })
    });
    if ok.is_err() {
        let mut s = crate::synth::Spec::new(Level::Raid1, 2, 1 << 20);
        s.stamp_now();
        b = s.uuid;
    }
    b
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a member already holds that creating would destroy, if anything.
fn existing_content(m: &Member) -> Option<String> {
    for minor in Minor::ALL {
        match superblock::load(m, Some(minor), false) {
            Ok(f) => {
                return Some(format!(
                    "already holds an md {} superblock (array {}, {}, name {})",
                    minor,
                    superblock::format_uuid(&f.sb.set_uuid),
                    Level::from_md(f.sb.level).map_or_else(|| f.sb.level.to_string(), |l| l.to_string()),
                    f.sb.name()
                ))
            }
            Err(SuperblockError::NotFound) | Err(SuperblockError::TooSmall { .. }) => {}
            Err(e) => return Some(format!("holds what looks like an md {minor} superblock ({e})")),
        }
    }
    let probe = |at: u64, magic: &[u8]| -> bool {
        let mut b = vec![0u8; magic.len()];
        at + magic.len() as u64 <= m.size() && m.read_exact_at(&mut b, at).is_ok() && b == magic
    };
    let fs = if probe(1080, &[0x53, 0xef]) {
        Some("an ext2/ext3/ext4 file system")
    } else if probe(0, b"XFSB") {
        Some("an XFS file system")
    } else if probe(65600, b"_BHRfS_M") {
        Some("a btrfs file system")
    } else if probe(4086, b"SWAPSPACE2") {
        Some("swap space")
    } else {
        None
    };
    fs.map(|f| format!("appears to contain {f}"))
}

/// Identity of a member path for duplicate detection.
fn identity(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let parent = p.parent().filter(|x| !x.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (std::fs::canonicalize(parent), p.file_name()) {
        (Ok(d), Some(n)) => d.join(n),
        _ => p.to_path_buf(),
    }
}

/// Checks the request and computes every superblock; touches nothing.
pub fn plan(req: &Request) -> Result<Plan, CreateError> {
    let level = req.level;
    let n = req.raid_devices;
    if level == Level::Linear {
        return Err(err("level linear is not supported"));
    }
    if n == 0 {
        return Err(err("invalid number of raid devices: 0"));
    }
    if req.members.len() != n {
        return Err(err(format!(
            "--raid-devices is {n} but {} member(s) given (real or missing); spares are not supported",
            req.members.len()
        )));
    }
    if n > 256 && level == Level::Raid6 {
        return Err(err("no more than 256 raid-devices supported for level 6"));
    }
    let min = match level {
        Level::Raid6 => 4,
        _ => 2,
    };
    if n < min && !(n == 1 && req.force && matches!(level, Level::Raid0 | Level::Raid1)) {
        return Err(err(format!(
            "at least {min} raid-devices needed for {level}, {n} given{}",
            if n == 1 && matches!(level, Level::Raid0 | Level::Raid1) { " (use --force for 1)" } else { "" }
        )));
    }
    // Chunk.
    let chunk_kib = match (level, req.chunk_kib) {
        (Level::Raid1, Some(_)) => return Err(err("specifying chunk size is forbidden for raid1")),
        (Level::Raid1, None) => 0,
        (_, None) => DEFAULT_CHUNK_KIB,
        (_, Some(c)) => {
            if c < 4 {
                return Err(err(format!("invalid chunk size {c}K: at least 4K needed")));
            }
            if !c.is_power_of_two() {
                return Err(err(format!("invalid chunk size {c}K: not a power of two")));
            }
            if c > (1 << 21) {
                return Err(err(format!("invalid chunk size {c}K: too large")));
            }
            c
        }
    };
    // Layout.
    let layout = match &req.layout {
        Some(l) => parse_layout(level, l).map_err(err)?,
        None => default_layout(level),
    };
    if level == Level::Raid10 {
        let copies = (layout & 255) * ((layout >> 8) & 255);
        if copies as usize > n {
            return Err(err(format!("that layout requires at least {copies} devices")));
        }
    }
    // Size.
    let mut size_kib = match req.size_kib {
        Some(s) if s < 4 => return Err(err(format!("invalid size: {s}K"))),
        s => s.unwrap_or(0),
    };
    if size_kib != 0 && chunk_kib != 0 {
        size_kib &= !(chunk_kib - 1);
        if size_kib == 0 {
            return Err(err("size cannot be smaller than chunk"));
        }
    }
    // Missing members.
    let missing = req.members.iter().filter(|m| m.is_none()).count();
    if missing == n {
        return Err(err("members can't be all missing"));
    }
    if missing > 0 && level == Level::Raid0 {
        return Err(err("raid0 does not support missing devices"));
    }
    // Duplicates.
    let mut seen: Vec<(PathBuf, &Path)> = Vec::new();
    for p in req.members.iter().flatten() {
        let id = identity(p);
        if let Some((_, first)) = seen.iter().find(|(i, _)| *i == id) {
            return Err(member_err(p, format!("given twice (also as {})", first.display())));
        }
        seen.push((id, p));
    }
    // Open the existing members, read-only; refuse content unless --force.
    struct Seen {
        path: PathBuf,
        dev_sectors: Option<u64>,
        wipe: Vec<u64>,
    }
    let mut present = Vec::new();
    for p in req.members.iter().flatten() {
        let exists = std::fs::symlink_metadata(p).is_ok();
        if !exists {
            if req.size_kib.is_none() {
                return Err(member_err(p, "does not exist (give --size to create image files)"));
            }
            present.push(Seen { path: p.clone(), dev_sectors: None, wipe: Vec::new() });
            continue;
        }
        let m = Member::open(p, Access::ReadOnly).map_err(|e| member_err(p, e.to_string()))?;
        if let Some(what) = existing_content(&m) {
            if !req.force {
                return Err(member_err(p, format!("{what}; use --force to overwrite it")));
            }
        }
        let dev = m.size() / 512;
        let wipe = Minor::ALL
            .iter()
            .filter(|&&mi| mi != Minor::V2 && superblock::load(&m, Some(mi), false).is_ok())
            .filter_map(|mi| mi.sb_offset(dev))
            .collect();
        present.push(Seen { path: p.clone(), dev_sectors: Some(dev), wipe });
    }
    // Data offset: from the first member, as mdadm's validate_geometry1.
    let size_sectors = size_kib * 2;
    let data_offset = match present.first().and_then(|s| s.dev_sectors) {
        Some(dev) => default_data_offset(dev, chunk_kib),
        None => {
            // A new image: the offset mdadm would choose for a device just
            // big enough for the offset plus the requested size.
            let mut off = 2048;
            for _ in 0..16 {
                let next = default_data_offset(size_sectors + off, chunk_kib);
                if next == off {
                    break;
                }
                off = next;
            }
            off
        }
    };
    let new_len = (data_offset + size_sectors) * 512;
    // Per-member free space, mdadm's freesize (KiB, whole chunks).
    let mut min_kib = u64::MAX;
    let mut max_kib = 0;
    let mut dev_sectors_of = Vec::new();
    for s in &present {
        let dev = s.dev_sectors.unwrap_or(new_len / 512);
        dev_sectors_of.push(dev);
        if dev < 24 || dev <= data_offset {
            return Err(member_err(
                &s.path,
                format!("too small ({}K) for the metadata: data starts at {}K", dev / 2, data_offset / 2),
            ));
        }
        let mut free = (dev - data_offset) / 2;
        if chunk_kib != 0 {
            free &= !(chunk_kib - 1);
        }
        if free == 0 {
            return Err(member_err(&s.path, "no free space left after the metadata for one chunk"));
        }
        if size_kib != 0 && free < size_kib {
            return Err(member_err(
                &s.path,
                format!("is smaller than given size: {free}K < {size_kib}K + metadata"),
            ));
        }
        min_kib = min_kib.min(free);
        max_kib = max_kib.max(free);
    }
    if size_kib == 0 && level != Level::Raid0 {
        size_kib = min_kib;
        if level == Level::Raid1 {
            size_kib &= !63;
            if size_kib == 0 {
                return Err(err("members too small: less than 64K of data space"));
            }
        }
        if (max_kib - size_kib) * 100 > max_kib && !req.force {
            let small = present
                .iter()
                .zip(&dev_sectors_of)
                .min_by_key(|(_, &d)| d)
                .map_or_else(PathBuf::new, |(s, _)| s.path.clone());
            return Err(member_err(
                &small,
                format!(
                    "smaller than the other members ({min_kib}K vs {max_kib}K of data space); give --size, or --force to use {size_kib}K of each"
                ),
            ));
        }
    }
    // Superblocks.
    let uuid = random_bytes();
    let time = now();
    let homehost = req.homehost.clone().or_else(crate::examine::hostname);
    let name = req.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "0".into());
    let mut set_name = [0u8; 32];
    let full = match &homehost {
        Some(h) if !name.contains(':') && h.len() + 1 + name.len() < 32 => format!("{h}:{name}"),
        _ => name.clone(),
    };
    let k = full.len().min(31);
    set_name[..k].copy_from_slice(&full.as_bytes()[..k]);
    // raid0 records 0 unless --size was given (mdadm's s->size).
    let sb_size_field = size_kib * 2;
    let sbsize = (SB_FIXED_SIZE + 2 * n).div_ceil(512) * 512;
    let max_dev = ((sbsize - SB_FIXED_SIZE) / 2) as u32;
    let chunksize = (chunk_kib * 2) as u32;
    let raid0_need_layout = level == Level::Raid0
        && layout != 0
        && dev_sectors_of
            .iter()
            .any(|&d| d * 512 / u64::from(chunksize) != dev_sectors_of[0] * 512 / u64::from(chunksize));
    let clean = req.assume_clean
        || level == Level::Raid0
        || (matches!(level, Level::Raid4 | Level::Raid5) && missing >= 1)
        || (level == Level::Raid6 && missing >= 2);
    let bm_space = choose_bm_space(sb_size_field);
    let mut dev_roles = vec![MD_DISK_ROLE_SPARE; max_dev as usize];
    for (slot, m) in req.members.iter().enumerate() {
        if m.is_some() {
            dev_roles[slot] = slot as u16;
        }
    }
    let mut members = Vec::new();
    let mut member_sectors = Vec::new();
    let mut pi = 0;
    for (slot, m) in req.members.iter().enumerate() {
        if m.is_none() {
            member_sectors.push(dev_sectors_of[0] - data_offset);
            continue;
        }
        let s = &present[pi];
        let dev = dev_sectors_of[pi];
        pi += 1;
        let (bblog_size, bblog_offset) = if data_offset >= 8 + 8 + bm_space + 8 {
            (8, (8 + bm_space) as i32)
        } else {
            (8, (data_offset - 8 - 8) as i32)
        };
        let mut sb = Superblock {
            magic: MD_SB_MAGIC,
            major_version: 1,
            feature_map: if raid0_need_layout { feature::RAID0_LAYOUT } else { 0 },
            pad0: 0,
            set_uuid: uuid,
            set_name,
            ctime: time,
            level: level.to_md(),
            layout,
            size: sb_size_field,
            chunksize,
            raid_disks: n as u32,
            bitmap_offset: 0,
            new_level: 0,
            reshape_position: 0,
            delta_disks: 0,
            new_layout: 0,
            new_chunk: 0,
            new_offset: 0,
            data_offset,
            data_size: dev - data_offset,
            super_offset: 8,
            recovery_offset: 0,
            dev_number: slot as u32,
            cnt_corrected_read: 0,
            device_uuid: random_bytes(),
            devflags: 0,
            bblog_shift: 0,
            bblog_size,
            bblog_offset,
            utime: time,
            events: 0,
            resync_offset: if clean { MAX_SECTOR } else { 0 },
            sb_csum: 0,
            max_dev,
            pad3: [0; 32],
            dev_roles: dev_roles.clone(),
        };
        sb.update_checksum();
        member_sectors.push(sb.data_size);
        members.push(PlannedMember {
            path: s.path.clone(),
            create_bytes: s.dev_sectors.is_none().then_some(new_len),
            sb,
            wipe: s.wipe.clone(),
        });
    }
    // The personality must accept the geometry, and the members present
    // must be enough to read it.
    let geom = Geometry {
        level,
        layout,
        raid0_layout_set: raid0_need_layout,
        chunk_sectors: chunksize,
        raid_disks: n as u32,
        dev_sectors: sb_size_field,
        member_sectors,
    };
    let pers = personality::build(&geom).map_err(|e| err(format!("invalid geometry: {e}")))?;
    let have: Vec<bool> = req.members.iter().map(Option::is_some).collect();
    if !pers.readable_with(&have) {
        return Err(err(format!("too many members missing for {level}: {missing} of {n}")));
    }
    let bitmap_area = if req.bitmap {
        if level == Level::Raid0 {
            return Err(err("--bitmap internal needs a level with redundancy (not raid0)"));
        }
        if bm_space == 0 {
            return Err(err("members too small for an internal bitmap"));
        }
        // md's sync space: per-member sectors of whole rows, or array
        // sectors for raid10.
        let sync_size = match pers.parity_shape() {
            Some(shape) => shape.stripes * (shape.chunk_bytes / 512),
            None => pers.array_bytes() / 512,
        };
        let want = match req.bitmap_chunk_kib {
            Some(k) => {
                Some(u32::try_from(k * 1024).map_err(|_| err(format!("bitmap chunk {k}K too large")))?)
            }
            None => None,
        };
        let space = (bm_space * 512) as usize;
        let chunk = crate::bitmap::choose_chunk(sync_size, space, want).ok_or_else(|| {
            err(format!(
                "bitmap chunk {}K does not fit: {sync_size} sectors need more than the {}K reserved (a power of two, at least 4K)",
                req.bitmap_chunk_kib.unwrap_or(0),
                space / 1024
            ))
        })?;
        let h = crate::bitmap::BitmapHeader {
            uuid,
            events: 0,
            events_cleared: 0,
            sync_size,
            chunksize: chunk,
            daemon_sleep: crate::bitmap::DEFAULT_DAEMON_SLEEP,
        };
        for m in &mut members {
            m.sb.feature_map |= feature::BITMAP_OFFSET;
            m.sb.bitmap_offset = 8;
            m.sb.update_checksum();
        }
        Some(crate::bitmap::format_area(&h, !clean, space))
    } else {
        None
    };
    Ok(Plan {
        array_bytes: pers.array_bytes(),
        members,
        raid_disks: n,
        data_offset,
        dev_sectors: sb_size_field,
        clean,
        uuid,
        bitmap_area,
    })
}

impl Plan {
    /// Creates the image files that do not exist yet, wipes old md
    /// superblocks at the v1.0/v1.1 locations (what mdadm's `Kill` does),
    /// and writes each member's superblock, then syncs each member.
    pub fn write(&self) -> io::Result<()> {
        for m in &self.members {
            let annotate = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", m.path.display()));
            let mut opts = OpenOptions::new();
            opts.read(true).write(true);
            if m.create_bytes.is_some() {
                opts.create_new(true);
            }
            let f = opts.open(&m.path).map_err(annotate)?;
            if let Some(len) = m.create_bytes {
                f.set_len(len).map_err(annotate)?;
            }
            for &at in &m.wipe {
                f.write_all_at(&[0u8; 512], at * 512).map_err(annotate)?;
            }
            let bytes = (SB_FIXED_SIZE + 2 * m.sb.max_dev as usize).div_ceil(512) * 512;
            let mut block = vec![0u8; superblock::MAX_SB_SIZE.max(bytes)];
            m.sb.encode(&mut block);
            f.write_all_at(&block[..bytes], m.sb.super_offset * 512).map_err(annotate)?;
            if let Some(area) = &self.bitmap_area {
                let at = (m.sb.super_offset as i64 + i64::from(m.sb.bitmap_offset)) as u64 * 512;
                f.write_all_at(area, at).map_err(annotate)?;
            }
            f.sync_all().map_err(annotate)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_offsets_match_mdadm() {
        // 8 MiB members (the fixtures): 2048 sectors whatever the chunk.
        assert_eq!(default_data_offset(16384, 64), 2048);
        assert_eq!(default_data_offset(16384, 0), 2048);
        // Big disks: 128 MiB headroom + bitmap space, rounded to 1 MiB.
        assert_eq!(default_data_offset(2 * 1024 * 1024 * 1024 * 2, 512), 264192);
        // 4 GiB: headroom 8192 sectors (8192 << 10 is the device size).
        assert_eq!(default_data_offset(4 * 1024 * 1024 * 2, 512), 10240);
        assert_eq!(choose_bm_space(0), 0);
        assert_eq!(choose_bm_space(14336), 8);
    }

    #[test]
    fn sizes_and_layouts_parse_like_mdadm() {
        assert_eq!(parse_size_sectors("64"), Some(128));
        assert_eq!(parse_size_sectors("1M"), Some(2048));
        assert_eq!(parse_size_sectors("2G"), Some(4 << 20));
        assert_eq!(parse_size_sectors("x"), None);
        assert_eq!(parse_size_sectors("0"), None);
        assert_eq!(parse_layout(Level::Raid10, "n2"), Ok(0x102));
        assert_eq!(parse_layout(Level::Raid10, "f2"), Ok(0x201));
        assert_eq!(parse_layout(Level::Raid10, "o2"), Ok(0x10201));
        assert_eq!(parse_layout(Level::Raid5, "ra"), Ok(1));
        assert_eq!(parse_layout(Level::Raid6, "left-symmetric-6"), Ok(18));
        assert!(parse_layout(Level::Raid5, "left-symmetric-6").is_err());
        assert!(parse_layout(Level::Raid4, "ls").is_err());
    }

    /// The raid0 fixture's superblock was written by mdadm and never
    /// rewritten by the kernel (events 0): ours must equal it in every field
    /// but the random and time-dependent ones.
    #[test]
    fn raid0_superblock_equals_mdadms() {
        let dir = std::env::temp_dir().join(format!("md-create-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let members: Vec<Option<PathBuf>> = (0..4).map(|k| Some(dir.join(format!("m{k}")))).collect();
        for m in members.iter().flatten() {
            std::fs::File::create(m).and_then(|f| f.set_len(8 << 20)).expect("image");
        }
        let req = Request {
            level: Level::Raid0,
            raid_devices: 4,
            chunk_kib: Some(64),
            layout: None,
            name: Some("raid0_4d_64k".into()),
            homehost: Some("mdgen".into()),
            size_kib: None,
            assume_clean: false,
            bitmap: false,
            bitmap_chunk_kib: None,
            force: false,
            members,
        };
        let p = plan(&req).expect("plan");
        assert_eq!(p.data_offset, 2048);
        assert_eq!(p.members[0].create_bytes, None);
        let mut ours = p.members[0].sb.clone();
        // Recorded from shared/fixtures/md/raid0_4d_64k/m0 (mdadm 4.2).
        ours.set_uuid =
            [0x5f, 0x3a, 0x74, 0xac, 0x78, 0x05, 0x8d, 0x91, 0x13, 0xf9, 0x27, 0xb1, 0x90, 0xfb, 0x68, 0x13];
        ours.device_uuid =
            [0xd5, 0x8d, 0x37, 0x3a, 0x5d, 0x58, 0x2b, 0x36, 0x73, 0xf0, 0xa5, 0x7c, 0xb7, 0xf9, 0xa2, 0xbe];
        ours.ctime = 0x6b03_b57f;
        ours.utime = 0x6b03_b57f;
        ours.update_checksum();
        assert_eq!(ours.sb_csum, 0x89e6_d29a, "checksum differs from mdadm's: {ours:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
