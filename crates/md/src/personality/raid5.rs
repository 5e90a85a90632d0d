//! raid4, raid5 and raid6: striping with rotating (or fixed) parity, read
//! path, laid out exactly as Linux `drivers/md/raid5.c` lays it out.
//!
//! ## Responsibility boundary
//! [`Raid5`] maps array bytes to member bytes with the kernel's
//! `raid5_compute_sector` rules for every md and DDF algorithm, and reads
//! array ranges: healthy data straight from the members into the caller's
//! buffer; data of absent members rebuilt from P (xor) or, for raid6, from P
//! and/or Q with md's GF(2^8) syndrome ([`super::gf`]). It never writes and
//! never checks parity of healthy stripes. Reshapes (`previous` geometry)
//! are not handled: the geometry is the single current one.
//!
//! ## Mapping, in the kernel's words
//! An array sector splits into `chunk_number` and `chunk_offset`;
//! `chunk_number` splits into `stripe` (the chunk row on every member) and the
//! data index `dd_idx` inside the stripe. The `algorithm` (md's `layout`)
//! places P (`pd_idx`), Q (`qd_idx`, raid6 only) and turns the data index
//! into a member slot. For raid6, Q's coefficient for a data block is its
//! *syndrome slot*: for md layouts the data disks are counted from the disk
//! after Q (`raid6_d0`) upward with wrap-around, for DDF layouts the slot is
//! the disk index itself (`raid6_idx_to_slot`, `set_syndrome_sources`).
//!
//! ## Synchronization model
//! Immutable after construction; `read` keeps all its state on its stack,
//! plus, for degraded stripes, a scratch buffer borrowed from a per-thread
//! cache, so concurrent reads need no lock.
//!
//! ## Performance
//! A read with every member present does one `read_at` per chunk piece (runs
//! that are contiguous on one member are merged), straight into the caller's
//! buffer, with no allocation and no parity I/O. Degraded stripes read the
//! surviving blocks of the requested byte span into a scratch buffer in
//! segments of bounded size and rebuild with vectorisable loops.

use std::io;

use super::{
    check_range, gf, unrecoverable, Geometry, GeometryError, Level, Location, MemberRead, ParityShape,
    Personality, StripeMap, SyndromeLayout,
};

/// Sectors per page: md requires raid4/5/6 chunks to be a whole number of
/// (4 KiB) pages.
const PAGE_SECTORS: u32 = 4096 / 512;

/// Target size of [`Personality::io_hint`]: whole stripes adding up to at
/// least this many bytes.
const IO_HINT_TARGET: u64 = 4 << 20;

/// Upper bound on the scratch buffer of a degraded read (all members'
/// segments together).
const SCRATCH_BUDGET: usize = 2 << 20;

/// md's raid5/6 `algorithm` (the superblock `layout`), `ALGORITHM_*` in
/// `drivers/md/raid5.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    /// `ALGORITHM_LEFT_ASYMMETRIC` (0): parity rotates down from the last
    /// disk; data restarts at disk 0.
    LeftAsymmetric,
    /// `ALGORITHM_RIGHT_ASYMMETRIC` (1): parity rotates up from disk 0; data
    /// restarts at disk 0.
    RightAsymmetric,
    /// `ALGORITHM_LEFT_SYMMETRIC` (2): parity rotates down; data continues
    /// after parity.
    LeftSymmetric,
    /// `ALGORITHM_RIGHT_SYMMETRIC` (3): parity rotates up; data continues
    /// after parity.
    RightSymmetric,
    /// `ALGORITHM_PARITY_0` (4): P (and Q) on the first disk(s).
    Parity0,
    /// `ALGORITHM_PARITY_N` (5): P (and Q) on the last disk(s); raid4's layout.
    ParityN,
    /// `ALGORITHM_ROTATING_ZERO_RESTART` (8, DDF PRL=6 RLQ=1).
    RotatingZeroRestart,
    /// `ALGORITHM_ROTATING_N_RESTART` (9, DDF PRL=6 RLQ=2).
    RotatingNRestart,
    /// `ALGORITHM_ROTATING_N_CONTINUE` (10, DDF PRL=6 RLQ=3).
    RotatingNContinue,
    /// `ALGORITHM_LEFT_ASYMMETRIC_6` (16): raid5 left-asymmetric over the
    /// first `raid_disks - 1` disks, Q on the last.
    LeftAsymmetric6,
    /// `ALGORITHM_RIGHT_ASYMMETRIC_6` (17).
    RightAsymmetric6,
    /// `ALGORITHM_LEFT_SYMMETRIC_6` (18).
    LeftSymmetric6,
    /// `ALGORITHM_RIGHT_SYMMETRIC_6` (19).
    RightSymmetric6,
    /// `ALGORITHM_PARITY_0_6` (20).
    Parity06,
}

impl Algorithm {
    /// The algorithm for md's `layout` at `level`, if the kernel accepts it
    /// (`algorithm_valid_raid5` / `algorithm_valid_raid6`).
    fn from_md(level: Level, layout: u32) -> Option<Algorithm> {
        use Algorithm::*;
        let raid5 = match layout {
            0 => Some(LeftAsymmetric),
            1 => Some(RightAsymmetric),
            2 => Some(LeftSymmetric),
            3 => Some(RightSymmetric),
            4 => Some(Parity0),
            5 => Some(ParityN),
            _ => None,
        };
        match level {
            // raid5_compute_sector's `case 4` ignores the algorithm: parity on
            // the last disk, data in order, i.e. ALGORITHM_PARITY_N.
            Level::Raid4 => Some(ParityN),
            Level::Raid5 => raid5,
            Level::Raid6 => raid5.or(match layout {
                8 => Some(RotatingZeroRestart),
                9 => Some(RotatingNRestart),
                10 => Some(RotatingNContinue),
                16 => Some(LeftAsymmetric6),
                17 => Some(RightAsymmetric6),
                18 => Some(LeftSymmetric6),
                19 => Some(RightSymmetric6),
                20 => Some(Parity06),
                _ => None,
            }),
            _ => None,
        }
    }

    /// `algorithm_is_DDF`: Q's coefficients follow disk order from disk 0.
    fn is_ddf(self) -> bool {
        matches!(
            self,
            Algorithm::RotatingZeroRestart | Algorithm::RotatingNRestart | Algorithm::RotatingNContinue
        )
    }
}

/// Where one stripe keeps its parity (`sh->pd_idx`, `sh->qd_idx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StripeHead {
    /// Slot of P.
    pd_idx: usize,
    /// Slot of Q (raid6 only).
    qd_idx: Option<usize>,
}

/// The raid4/5/6 personality (kernel `raid456`).
#[derive(Debug)]
pub struct Raid5 {
    /// The geometry it was built from.
    geom: Geometry,
    /// Placement rule (raid4 uses [`Algorithm::ParityN`]).
    algorithm: Algorithm,
    /// Whether this is raid6 (P and Q) rather than raid4/5 (P only).
    raid6: bool,
    /// Number of slots.
    raid_disks: usize,
    /// Data chunks per stripe (`raid_disks - max_degraded`).
    data_disks: usize,
    /// Members that may be missing (1 for raid4/5, 2 for raid6).
    max_degraded: usize,
    /// Chunk size in bytes.
    chunk_bytes: u64,
    /// Data bytes per stripe (`data_disks * chunk_bytes`).
    stripe_bytes: u64,
    /// Array size in bytes.
    array_bytes: u64,
    /// Whether Q uses the DDF disk order (`sh->ddf_layout`).
    ddf_layout: bool,
}

thread_local! {
    /// A degraded read's scratch buffer, kept per thread between reads so
    /// that streaming a degraded array does not allocate and zero megabytes
    /// per call.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Per-read state of a degraded read.
#[derive(Debug, Default)]
struct Degraded {
    /// `present[slot]`: whether that member can be read.
    present: Vec<bool>,
    /// Segment buffers, one per slot, allocated at the first rebuild.
    scratch: Vec<u8>,
}

/// One requested piece of a stripe whose member is absent.
#[derive(Clone, Copy, Debug)]
struct Piece {
    /// Slot of the absent member holding this data.
    disk: usize,
    /// Start of the piece inside the chunk, in bytes.
    lo: usize,
    /// End of the piece inside the chunk, in bytes.
    hi: usize,
    /// Where the piece goes in the caller's buffer.
    buf_off: usize,
}

/// A pending direct read, grown while consecutive pieces are contiguous on
/// the same member and in the caller's buffer.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    /// Member slot.
    slot: usize,
    /// Offset in the member's data area.
    dev_off: u64,
    /// Start in the caller's buffer.
    buf_off: usize,
    /// Length in bytes (0: nothing pending).
    len: usize,
}

impl Run {
    /// Adds a piece, issuing the pending read first if the piece does not
    /// extend it.
    fn add(
        &mut self,
        members: &dyn MemberRead,
        buf: &mut [u8],
        slot: usize,
        dev_off: u64,
        buf_off: usize,
        len: usize,
    ) -> io::Result<()> {
        let extends = self.len != 0
            && self.slot == slot
            && self.dev_off + self.len as u64 == dev_off
            && self.buf_off + self.len == buf_off;
        if extends {
            self.len += len;
            return Ok(());
        }
        self.flush(members, buf)?;
        *self = Run { slot, dev_off, buf_off, len };
        Ok(())
    }

    /// Issues the pending read, if any.
    fn flush(&mut self, members: &dyn MemberRead, buf: &mut [u8]) -> io::Result<()> {
        if self.len != 0 {
            debug_assert!(members.is_present(self.slot));
            members.read_at(self.slot, self.dev_off, &mut buf[self.buf_off..self.buf_off + self.len])?;
            self.len = 0;
        }
        Ok(())
    }
}

impl Raid5 {
    /// Validates `geom` as md's `setup_conf` does (level, layout, chunk size,
    /// number of disks) and sizes the array as `raid5_size` does.
    pub fn new(geom: Geometry) -> Result<Self, GeometryError> {
        let level = geom.level;
        let (raid6, min_disks) = match level {
            Level::Raid4 | Level::Raid5 => (false, 2u32),
            Level::Raid6 => (true, 4u32),
            other => return Err(GeometryError(format!("{other} is not a raid4/5/6 level"))),
        };
        let algorithm = Algorithm::from_md(level, geom.layout).ok_or_else(|| {
            let accepted = if raid6 { "0..=5, 8..=10 or 16..=20" } else { "0..=5" };
            GeometryError(format!("{level} layout {} is not supported (md accepts {accepted})", geom.layout))
        })?;
        if geom.raid_disks < min_disks {
            return Err(GeometryError(format!(
                "{level} needs at least {min_disks} raid disks, not {}",
                geom.raid_disks
            )));
        }
        let chunk_sectors = geom.chunk_sectors;
        // A power of two is a multiple of the (power of two) page iff it is at least a page.
        if !chunk_sectors.is_power_of_two() || chunk_sectors < PAGE_SECTORS {
            return Err(GeometryError(format!(
                "{level} chunk size of {chunk_sectors} sectors is invalid (md needs a power of two \
                 multiple of {PAGE_SECTORS} sectors)"
            )));
        }
        let raid_disks = usize::try_from(geom.raid_disks)
            .map_err(|_| GeometryError(format!("{} raid disks is too many", geom.raid_disks)))?;
        let max_degraded = if raid6 { 2 } else { 1 };
        let data_disks = raid_disks - max_degraded;
        let ddf_layout = algorithm.is_ddf();
        if raid6 {
            // Q's coefficients g^slot must be distinct: slots stay below 255.
            let syndrome_disks = if ddf_layout { raid_disks } else { data_disks };
            if syndrome_disks > 255 {
                return Err(GeometryError(format!(
                    "raid6 with {raid_disks} raid disks exceeds the 255 syndrome slots of GF(2^8)"
                )));
            }
        }
        let chunk_bytes = u64::from(chunk_sectors) * 512;
        // raid5_size: dev_sectors rounded down to whole chunks, times data disks.
        let dev_sectors = geom.dev_sectors & !(u64::from(chunk_sectors) - 1);
        let too_big =
            || GeometryError(format!("{level} array of {} sectors per member overflows", geom.dev_sectors));
        let stripe_bytes = chunk_bytes.checked_mul(data_disks as u64).ok_or_else(too_big)?;
        let array_bytes =
            (dev_sectors / u64::from(chunk_sectors)).checked_mul(stripe_bytes).ok_or_else(too_big)?;
        Ok(Raid5 {
            geom,
            algorithm,
            raid6,
            raid_disks,
            data_disks,
            max_degraded,
            chunk_bytes,
            stripe_bytes,
            array_bytes,
            ddf_layout,
        })
    }

    /// P and Q placement of `stripe` (the `pd_idx`/`qd_idx` half of
    /// `raid5_compute_sector`).
    fn stripe_head(&self, stripe: u64) -> StripeHead {
        use Algorithm::*;
        let n = self.raid_disks;
        let data_disks = self.data_disks;
        // `stripe % m` for m <= raid_disks always fits in usize.
        let rot = |m: usize| (stripe % m as u64) as usize;
        let sh = if !self.raid6 {
            let pd_idx = match self.algorithm {
                LeftAsymmetric | LeftSymmetric => data_disks - rot(n),
                RightAsymmetric | RightSymmetric => rot(n),
                Parity0 => 0,
                _ => data_disks,
            };
            StripeHead { pd_idx, qd_idx: None }
        } else {
            let (pd_idx, qd_idx) = match self.algorithm {
                LeftAsymmetric | LeftSymmetric => {
                    let pd = n - 1 - rot(n);
                    (pd, (pd + 1) % n)
                }
                RightAsymmetric | RightSymmetric | RotatingZeroRestart => {
                    let pd = rot(n);
                    (pd, (pd + 1) % n)
                }
                Parity0 => (0, 1),
                ParityN => (data_disks, data_disks + 1),
                RotatingNRestart => {
                    // Like left-asymmetric, but the first stripe is D..D P Q.
                    let pd = n - 1 - ((stripe % n as u64 + 1) % n as u64) as usize;
                    (pd, (pd + 1) % n)
                }
                RotatingNContinue => {
                    // Like left-symmetric, but Q comes before P.
                    let pd = n - 1 - rot(n);
                    (pd, (pd + n - 1) % n)
                }
                LeftAsymmetric6 | LeftSymmetric6 => (data_disks - rot(n - 1), n - 1),
                RightAsymmetric6 | RightSymmetric6 => (rot(n - 1), n - 1),
                Parity06 => (0, n - 1),
            };
            StripeHead { pd_idx, qd_idx: Some(qd_idx) }
        };
        debug_assert!(sh.pd_idx < n && sh.qd_idx.iter().all(|&q| q < n && q != sh.pd_idx));
        sh
    }

    /// The slot holding data index `k` (`0..data_disks`) of a stripe (the
    /// `dd_idx` half of `raid5_compute_sector`).
    fn dd_idx(&self, sh: StripeHead, k: usize) -> usize {
        use Algorithm::*;
        debug_assert!(k < self.data_disks);
        let n = self.raid_disks;
        let pd_idx = sh.pd_idx;
        let disk = if !self.raid6 {
            match self.algorithm {
                LeftAsymmetric | RightAsymmetric => k + usize::from(k >= pd_idx),
                LeftSymmetric | RightSymmetric => (pd_idx + 1 + k) % n,
                Parity0 => k + 1,
                _ => k,
            }
        } else {
            match self.algorithm {
                LeftAsymmetric | RightAsymmetric | RotatingZeroRestart | RotatingNRestart => {
                    if pd_idx == n - 1 {
                        k + 1 // Q is on disk 0
                    } else if k >= pd_idx {
                        k + 2 // skip P and Q
                    } else {
                        k
                    }
                }
                LeftSymmetric | RightSymmetric => (pd_idx + 2 + k) % n,
                Parity0 => k + 2,
                ParityN => k,
                RotatingNContinue => (pd_idx + 1 + k) % n,
                LeftAsymmetric6 | RightAsymmetric6 => k + usize::from(k >= pd_idx),
                LeftSymmetric6 | RightSymmetric6 => (pd_idx + 1 + k) % (n - 1),
                Parity06 => k + 1,
            }
        };
        debug_assert!(disk < n && disk != pd_idx && Some(disk) != sh.qd_idx);
        disk
    }

    /// Number of blocks Q is computed over (`syndrome_disks`): the data
    /// disks for md layouts, every disk (P and Q positions as zero blocks)
    /// for DDF.
    fn syndrome_disks(&self) -> usize {
        if self.ddf_layout {
            self.raid_disks
        } else {
            self.data_disks
        }
    }

    /// Q's coefficient exponent for data `disk` of a raid6 stripe
    /// (`raid6_idx_to_slot` while walking from `raid6_d0`).
    fn syndrome_slot(&self, sh: StripeHead, disk: usize) -> usize {
        if self.ddf_layout {
            return disk;
        }
        let n = self.raid_disks;
        let qd_idx = sh.qd_idx.unwrap_or(n - 1);
        // raid6_d0: the disk after Q, so Q is the last disk of the walk and
        // only P can come before `disk`.
        let d0 = (qd_idx + 1) % n;
        let rel = (disk + n - d0) % n;
        let p_rel = (sh.pd_idx + n - d0) % n;
        let slot = rel - usize::from(p_rel < rel);
        debug_assert!(slot < self.data_disks);
        slot
    }

    /// Bytes per scratch segment for a degraded read: bounded by the chunk
    /// and by [`SCRATCH_BUDGET`] over all members, in whole pages.
    fn segment_bytes(&self) -> usize {
        let per_disk = (SCRATCH_BUDGET / self.raid_disks) & !4095;
        let chunk = usize::try_from(self.chunk_bytes).unwrap_or(usize::MAX);
        per_disk.max(4096).min(chunk)
    }

    /// Fills the `pieces` of `stripe` whose members are absent, rebuilding
    /// them from the surviving blocks of the stripe (`present[slot]` tells
    /// which members can be read).
    fn rebuild(
        &self,
        members: &dyn MemberRead,
        degraded: &mut Degraded,
        stripe: u64,
        sh: StripeHead,
        pieces: &[Piece],
        buf: &mut [u8],
    ) -> io::Result<()> {
        let n = self.raid_disks;
        let Degraded { present, scratch } = degraded;
        let present = &present[..];
        let seg_cap = self.segment_bytes();
        if scratch.len() < n * seg_cap {
            scratch.resize(n * seg_cap, 0);
        }
        // Classify the stripe: absent data slots, and whether P and Q survive.
        let mut lost = [(0usize, 0usize); 2]; // (disk, syndrome slot)
        let mut nlost = 0;
        for k in 0..self.data_disks {
            let disk = self.dd_idx(sh, k);
            if !present[disk] {
                if nlost == lost.len() {
                    return Err(unrecoverable("more than two data blocks of a stripe are missing"));
                }
                let slot = if self.raid6 { self.syndrome_slot(sh, disk) } else { k };
                lost[nlost] = (disk, slot);
                nlost += 1;
            }
        }
        let lost = &lost[..nlost];
        let p_ok = present[sh.pd_idx];
        let q_ok = sh.qd_idx.is_some_and(|q| present[q]);
        enum Method {
            /// Xor of P and the surviving data.
            Xor,
            /// From Q and the surviving data.
            DataQ,
            /// Two data blocks from P, Q and the surviving data.
            TwoData,
        }
        let method = match (nlost, p_ok, q_ok) {
            (1, true, _) => Method::Xor,
            (1, false, true) => Method::DataQ,
            (2, true, true) if self.raid6 => Method::TwoData,
            _ => {
                return Err(unrecoverable(&format!(
                    "{} stripe {stripe} has {nlost} missing data blocks and P {}, Q {}",
                    self.geom.level,
                    if p_ok { "present" } else { "missing" },
                    if q_ok { "present" } else { "missing" }
                )))
            }
        };
        // Which members to read: surviving data, plus P and/or Q.
        let need = |disk: usize| -> bool {
            if !present[disk] {
                return false;
            }
            if disk == sh.pd_idx {
                return matches!(method, Method::Xor | Method::TwoData);
            }
            if Some(disk) == sh.qd_idx {
                return matches!(method, Method::DataQ | Method::TwoData);
            }
            true
        };
        let lo = pieces.iter().map(|p| p.lo).min().unwrap_or(0);
        let hi = pieces.iter().map(|p| p.hi).max().unwrap_or(0);
        let stripe_dev_off = stripe * self.chunk_bytes;
        let mut seg = lo;
        while seg < hi {
            let seg_end = hi.min(seg + seg_cap);
            let len = seg_end - seg;
            let mut regions: Vec<&mut [u8]> =
                scratch[..n * seg_cap].chunks_exact_mut(seg_cap).map(|r| &mut r[..len]).collect();
            debug_assert_eq!(regions.len(), n);
            for (disk, region) in regions.iter_mut().enumerate() {
                if need(disk) {
                    members.read_at(disk, stripe_dev_off + seg as u64, region)?;
                }
            }
            match method {
                Method::Xor => {
                    let target = lost[0].0;
                    let out = std::mem::take(&mut regions[target]);
                    let srcs: Vec<&[u8]> =
                        regions.iter().enumerate().filter(|&(d, _)| need(d)).map(|(_, r)| &**r).collect();
                    gf::xor_blocks(out, &srcs);
                    regions[target] = out;
                }
                Method::DataQ => {
                    let (target, slot) = lost[0];
                    let out = std::mem::take(&mut regions[target]);
                    let q = sh.qd_idx.unwrap_or(target);
                    let data = self.syndrome_sources(sh, present, &regions);
                    gf::raid6_datap_recov(&data, slot, &regions[q][..], out);
                    drop(data);
                    regions[target] = out;
                }
                Method::TwoData => {
                    let ((da_disk, faila), (db_disk, failb)) = (lost[0], lost[1]);
                    let da = std::mem::take(&mut regions[da_disk]);
                    let db = std::mem::take(&mut regions[db_disk]);
                    let q = sh.qd_idx.unwrap_or(da_disk);
                    let data = self.syndrome_sources(sh, present, &regions);
                    gf::raid6_2data_recov(
                        &data,
                        faila,
                        failb,
                        &regions[sh.pd_idx][..],
                        &regions[q][..],
                        da,
                        db,
                    );
                    drop(data);
                    regions[da_disk] = da;
                    regions[db_disk] = db;
                }
            }
            for piece in pieces {
                let (a, b) = (piece.lo.max(seg), piece.hi.min(seg_end));
                if a < b {
                    let dst = piece.buf_off + (a - piece.lo);
                    buf[dst..dst + (b - a)].copy_from_slice(&regions[piece.disk][a - seg..b - seg]);
                }
            }
            seg = seg_end;
        }
        Ok(())
    }

    /// The body of [`Personality::read`] once the range and the number of
    /// absent members are checked: `degraded.present` is empty when every
    /// member is present, else it says which are.
    fn read_stripes(
        &self,
        members: &dyn MemberRead,
        offset: u64,
        buf: &mut [u8],
        degraded: &mut Degraded,
    ) -> io::Result<()> {
        let chunk = self.chunk_bytes;
        let end = offset + buf.len() as u64;
        let mut run = Run::default();
        let mut pos = offset;
        while pos < end {
            let stripe = pos / self.stripe_bytes;
            let stripe_start = stripe * self.stripe_bytes;
            let stripe_end = end.min(stripe_start + self.stripe_bytes);
            let sh = self.stripe_head(stripe);
            let mut lost = [Piece { disk: 0, lo: 0, hi: 0, buf_off: 0 }; 2];
            let mut nlost = 0;
            while pos < stripe_end {
                let in_stripe = pos - stripe_start;
                let k = (in_stripe / chunk) as usize;
                let chunk_offset = in_stripe % chunk;
                let len = (chunk - chunk_offset).min(stripe_end - pos);
                let disk = self.dd_idx(sh, k);
                let buf_off = (pos - offset) as usize;
                // Both bounded by the chunk, which fits in the buffer's span.
                let (lo, len) = (chunk_offset as usize, len as usize);
                if degraded.present.is_empty() || degraded.present[disk] {
                    run.add(members, buf, disk, stripe * chunk + chunk_offset, buf_off, len)?;
                } else {
                    if nlost == lost.len() {
                        return Err(unrecoverable("more than two data blocks of a stripe are missing"));
                    }
                    lost[nlost] = Piece { disk, lo, hi: lo + len, buf_off };
                    nlost += 1;
                }
                pos += len as u64;
            }
            if nlost > 0 {
                run.flush(members, buf)?;
                self.rebuild(members, degraded, stripe, sh, &lost[..nlost], buf)?;
            }
        }
        run.flush(members, buf)
    }

    /// The data blocks of a raid6 stripe in syndrome-slot order (what
    /// `set_syndrome_sources` builds): `regions[disk]` for present data disks,
    /// `None` (zero) for absent ones and for DDF's P/Q positions.
    fn syndrome_sources<'a>(
        &self,
        sh: StripeHead,
        present: &[bool],
        regions: &'a [&mut [u8]],
    ) -> Vec<Option<&'a [u8]>> {
        let mut data = vec![None; self.syndrome_disks()];
        for k in 0..self.data_disks {
            let disk = self.dd_idx(sh, k);
            if present[disk] {
                data[self.syndrome_slot(sh, disk)] = Some(&*regions[disk]);
            }
        }
        data
    }
}

impl Personality for Raid5 {
    fn geometry(&self) -> &Geometry {
        &self.geom
    }

    fn array_bytes(&self) -> u64 {
        self.array_bytes
    }

    fn readable_with(&self, present: &[bool]) -> bool {
        let absent = (0..self.raid_disks).filter(|&i| !present.get(i).copied().unwrap_or(false)).count();
        absent <= self.max_degraded
    }

    fn read(&self, members: &dyn MemberRead, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.array_bytes)?;
        let absent = (0..self.raid_disks).filter(|&s| !members.is_present(s)).count();
        if absent > self.max_degraded {
            return Err(unrecoverable(&format!(
                "{} of {} {} members are missing (at most {} can be)",
                absent, self.raid_disks, self.geom.level, self.max_degraded
            )));
        }
        if absent == 0 {
            return self.read_stripes(members, offset, buf, &mut Degraded::default());
        }
        let mut degraded = Degraded {
            present: (0..self.raid_disks).map(|s| members.is_present(s)).collect(),
            scratch: SCRATCH.with(|c| c.take()),
        };
        let result = self.read_stripes(members, offset, buf, &mut degraded);
        SCRATCH.with(|c| c.set(degraded.scratch));
        result
    }

    fn locate(&self, offset: u64) -> Vec<Location> {
        if offset >= self.array_bytes {
            return Vec::new();
        }
        let chunk_number = offset / self.chunk_bytes;
        let chunk_offset = offset % self.chunk_bytes;
        let stripe = chunk_number / self.data_disks as u64;
        let k = (chunk_number % self.data_disks as u64) as usize;
        let slot = self.dd_idx(self.stripe_head(stripe), k);
        vec![Location { slot, offset: stripe * self.chunk_bytes + chunk_offset }]
    }

    fn io_hint(&self) -> u64 {
        let stripes = IO_HINT_TARGET.div_ceil(self.stripe_bytes).max(1);
        self.stripe_bytes.saturating_mul(stripes)
    }

    fn parity_shape(&self) -> Option<ParityShape> {
        Some(ParityShape {
            chunk_bytes: self.chunk_bytes,
            data_disks: self.data_disks,
            raid_disks: self.raid_disks,
            raid6: self.raid6,
            syndrome_disks: if self.raid6 { self.syndrome_disks() } else { self.data_disks },
            stripes: self.array_bytes / self.stripe_bytes,
        })
    }

    fn stripe_map(&self, stripe: u64, out: &mut StripeMap) -> bool {
        if stripe >= self.array_bytes / self.stripe_bytes {
            return false;
        }
        let sh = self.stripe_head(stripe);
        out.data.clear();
        out.pos.clear();
        for k in 0..self.data_disks {
            let disk = self.dd_idx(sh, k);
            out.data.push(disk);
            out.pos.push(if self.raid6 { self.syndrome_slot(sh, disk) } else { k });
        }
        out.p = sh.pd_idx;
        out.q = sh.qd_idx;
        true
    }

    /// The stripe row's syndrome order: for raid6 each data slot at its Q
    /// coefficient position (`set_syndrome_sources`; DDF's P and Q positions
    /// are zero blocks), for raid4/5 the data slots in data order.
    fn syndrome_layout(&self, member_offset: u64) -> Option<SyndromeLayout> {
        let stripe = member_offset / self.chunk_bytes;
        match stripe.checked_mul(self.stripe_bytes) {
            Some(start) if start < self.array_bytes => {}
            _ => return None,
        }
        let sh = self.stripe_head(stripe);
        let data = if self.raid6 {
            let mut data = vec![None; self.syndrome_disks()];
            for k in 0..self.data_disks {
                let disk = self.dd_idx(sh, k);
                data[self.syndrome_slot(sh, disk)] = Some(disk);
            }
            data
        } else {
            (0..self.data_disks).map(|k| Some(self.dd_idx(sh, k))).collect()
        };
        Some(SyndromeLayout { data, p: sh.pd_idx, q: sh.qd_idx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(level: Level, layout: u32, raid_disks: u32, chunk_sectors: u32, dev_sectors: u64) -> Geometry {
        Geometry::uniform(level, layout, raid_disks, chunk_sectors, dev_sectors)
    }

    /// Every data disk of every stripe maps to a distinct slot, different
    /// from P and Q, and syndrome slots are a permutation.
    #[test]
    fn stripe_maps_are_permutations() {
        let layouts: &[(Level, &[u32], u32)] = &[
            (Level::Raid4, &[0, 5], 2),
            (Level::Raid5, &[0, 1, 2, 3, 4, 5], 2),
            (Level::Raid6, &[0, 1, 2, 3, 4, 5, 8, 9, 10, 16, 17, 18, 19, 20], 4),
        ];
        for &(level, los, min) in layouts {
            for &layout in los {
                for n in min..=9 {
                    let r = Raid5::new(geom(level, layout, n, 8, 8 * 64)).expect("valid geometry");
                    for stripe in 0..(2 * n as u64) {
                        let sh = r.stripe_head(stripe);
                        let mut used = vec![false; n as usize];
                        used[sh.pd_idx] = true;
                        if let Some(q) = sh.qd_idx {
                            assert!(!used[q]);
                            used[q] = true;
                        }
                        let mut slots = vec![false; r.syndrome_disks()];
                        for k in 0..r.data_disks {
                            let d = r.dd_idx(sh, k);
                            assert!(!used[d], "{level} layout {layout} n {n} stripe {stripe}");
                            used[d] = true;
                            if r.raid6 {
                                let z = r.syndrome_slot(sh, d);
                                assert!(!slots[z]);
                                slots[z] = true;
                            }
                        }
                        assert!(used.iter().all(|&u| u));
                    }
                }
            }
        }
    }

    #[test]
    fn io_hint_is_whole_stripes() {
        let r = Raid5::new(geom(Level::Raid5, 2, 4, 128, 14336)).expect("valid geometry");
        assert_eq!(r.io_hint() % (3 * 65536), 0);
        assert!(r.io_hint() >= IO_HINT_TARGET && r.io_hint() <= 2 * IO_HINT_TARGET);
    }
}
