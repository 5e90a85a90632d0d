//! Assembly: turning a set of member devices into an [`Array`], by md's and
//! mdadm's rules.
//!
//! * Every member must carry a valid v1.x superblock (checksum included).
//! * All members must belong to one array (same `set_uuid`).
//! * The member(s) with the highest `events` are authoritative; a member more
//!   than one event behind is stale and left out (the kernel's
//!   `super_1_validate` accepts exactly one event of slack, for the
//!   clean/dirty transition that may not have reached every member).
//! * A member whose role the freshest superblock records as faulty is left
//!   out; spares are not part of the data path.
//! * Two members claiming one slot, a member given twice, and too few members
//!   for the level are refused.
//! * Features umd cannot honour yet are refused by name.
//!
//! Assembly only reads: members are opened read-only by [`assemble`]; and
//! read-write by [`assemble_writable`], for arrays that take writes.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockio::{Access, Direct, Member, MemberOptions};

use crate::array::{Array, SlotMember, Slots};
use crate::personality::{self, Geometry, Level};
use crate::superblock::{
    self, feature, format_uuid, Found, MD_DISK_ROLE_FAULTY, MD_DISK_ROLE_JOURNAL, MD_DISK_ROLE_SPARE,
};

/// Features whose presence makes umd refuse the array, for now.
pub const UNSUPPORTED_FEATURES: u32 =
    feature::RESHAPE_ACTIVE | feature::JOURNAL | feature::PPL | feature::MULTIPLE_PPLS | feature::CLUSTERED;

/// Options for [`assemble`].
#[derive(Clone, Debug, Default)]
pub struct AssembleOptions {
    /// Start a dirty *and* degraded parity array anyway (md refuses it:
    /// parity may disagree with data, so rebuilt blocks may be wrong).
    pub force: bool,
    /// Fault injection (tests, `umd --faults`): an injector for the member
    /// opened by this path, or (path `None`) for every member without one
    /// of its own.
    pub faults: Vec<(Option<PathBuf>, Arc<blockio::fault::Faults>)>,
}

impl AssembleOptions {
    /// The injector for the member at `path`, if any.
    fn faults_for(&self, path: &Path) -> Option<Arc<blockio::fault::Faults>> {
        self.faults
            .iter()
            .find(|(p, _)| p.as_deref() == Some(path))
            .or_else(|| self.faults.iter().find(|(p, _)| p.is_none()))
            .map(|(_, f)| Arc::clone(f))
    }
}

/// Why assembly failed: one line naming the member (when one is at fault)
/// and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssembleError {
    /// The member at fault, if the failure is a member's.
    pub member: Option<PathBuf>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for AssembleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.member {
            Some(m) => write!(f, "{}: {}", m.display(), self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for AssembleError {}

fn member_err(p: &Path, reason: impl Into<String>) -> AssembleError {
    AssembleError { member: Some(p.to_path_buf()), reason: reason.into() }
}

fn array_err(reason: impl Into<String>) -> AssembleError {
    AssembleError { member: None, reason: reason.into() }
}

/// A successful assembly.
#[derive(Debug)]
pub struct Assembly {
    /// The array.
    pub array: Array,
    /// What the user must be told: members left out and why, degraded state.
    pub notes: Vec<String>,
    /// Whether slots are missing.
    pub degraded: bool,
}

struct Candidate {
    path: PathBuf,
    dev: Arc<Member>,
    found: Found,
}

/// Opens and assembles the array made of `paths`, members read-only.
pub fn assemble(paths: &[PathBuf], opts: &AssembleOptions) -> Result<Assembly, AssembleError> {
    assemble_access(paths, opts, Access::ReadOnly)
}

/// As [`assemble`], with the members opened read-write so that
/// [`Array::write_at`] accepts writes. Assembly itself still writes nothing.
pub fn assemble_writable(paths: &[PathBuf], opts: &AssembleOptions) -> Result<Assembly, AssembleError> {
    assemble_access(paths, opts, Access::ReadWrite)
}

fn assemble_access(
    paths: &[PathBuf],
    opts: &AssembleOptions,
    access: Access,
) -> Result<Assembly, AssembleError> {
    if paths.is_empty() {
        return Err(array_err("no members given"));
    }
    // A member given twice (same file by any path).
    let mut seen: HashMap<(u64, u64), &Path> = HashMap::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| member_err(p, e.to_string()))?;
        if let Some(prev) = seen.insert((meta.dev(), meta.ino()), p) {
            return Err(member_err(p, format!("given twice (same file as {})", prev.display())));
        }
    }
    let mut cands = Vec::with_capacity(paths.len());
    for p in paths {
        let dev = Member::open_with(
            p,
            &MemberOptions { access, direct: Direct::Never, faults: opts.faults_for(p) },
        )
        .map_err(|e| member_err(p, strip_path(&e.to_string(), p)))?;
        let found = superblock::load(&dev, None, true).map_err(|e| member_err(p, e.to_string()))?;
        check_features(p, &found)?;
        cands.push(Candidate { path: p.clone(), dev: Arc::new(dev), found });
    }
    // The same device (by device UUID) given twice through copies.
    for (i, a) in cands.iter().enumerate() {
        for b in &cands[..i] {
            if a.found.sb.device_uuid == b.found.sb.device_uuid && a.found.sb.set_uuid == b.found.sb.set_uuid
            {
                return Err(member_err(
                    &a.path,
                    format!(
                        "same device UUID {} as {}: the same member given twice (a copy?)",
                        format_uuid(&a.found.sb.device_uuid),
                        b.path.display()
                    ),
                ));
            }
        }
    }
    // One array: the UUID most members carry (first on a tie).
    let mut counts: Vec<([u8; 16], usize, usize)> = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        match counts.iter_mut().find(|(u, _, _)| *u == c.found.sb.set_uuid) {
            Some(e) => e.1 += 1,
            None => counts.push((c.found.sb.set_uuid, 1, i)),
        }
    }
    let (uuid, _, first) = counts.iter().fold(counts[0], |best, &x| if x.1 > best.1 { x } else { best });
    for c in &cands {
        if c.found.sb.set_uuid != uuid {
            return Err(member_err(
                &c.path,
                format!(
                    "belongs to array {} ({}), not to array {} of {}",
                    format_uuid(&c.found.sb.set_uuid),
                    c.found.sb.name(),
                    format_uuid(&uuid),
                    cands[first].path.display()
                ),
            ));
        }
    }
    // The freshest superblock is authoritative.
    let fresh_idx = cands.iter().enumerate().fold(0, |best, (i, c)| {
        if c.found.sb.events > cands[best].found.sb.events {
            i
        } else {
            best
        }
    });
    let fresh = cands[fresh_idx].found.sb.clone();
    let fresh_path = cands[fresh_idx].path.clone();
    let level = Level::from_md(fresh.level)
        .filter(|l| *l != Level::Linear)
        .ok_or_else(|| member_err(&fresh_path, format!("raid level {} is not supported", fresh.level)))?;
    let raid_disks = fresh.raid_disks as usize;
    if raid_disks == 0 || raid_disks > usize::from(superblock::MD_DISK_ROLE_MAX) {
        return Err(member_err(&fresh_path, format!("invalid raid_disks {raid_disks}")));
    }
    let mut notes = Vec::new();
    let mut slots: Vec<Option<Candidate>> = (0..raid_disks).map(|_| None).collect();
    for c in cands {
        let sb = &c.found.sb;
        let role = fresh.role_of(sb.dev_number);
        let stale = sb.events.saturating_add(1) < fresh.events;
        if role == MD_DISK_ROLE_FAULTY {
            notes.push(format!(
                "{}: recorded as faulty by the freshest superblock ({}, events {}){}: left out",
                c.path.display(),
                fresh_path.display(),
                fresh.events,
                if stale { format!(", and stale (events {})", sb.events) } else { String::new() }
            ));
            continue;
        }
        if stale {
            notes.push(format!(
                "{}: stale (events {} < {} of {}): left out",
                c.path.display(),
                sb.events,
                fresh.events,
                fresh_path.display()
            ));
            continue;
        }
        if role == MD_DISK_ROLE_SPARE {
            notes.push(format!("{}: spare, not part of the data path: left out", c.path.display()));
            continue;
        }
        if role == MD_DISK_ROLE_JOURNAL {
            return Err(member_err(&c.path, "journal device: raid5/6 journals are not supported yet"));
        }
        if !sb.same_geometry(&fresh) {
            return Err(member_err(
                &c.path,
                format!(
                    "superblock geometry (level {}, layout {}, chunk {}, raid_disks {}, size {}) disagrees with {} (level {}, layout {}, chunk {}, raid_disks {}, size {})",
                    sb.level, sb.layout, sb.chunksize, sb.raid_disks, sb.size,
                    fresh_path.display(),
                    fresh.level, fresh.layout, fresh.chunksize, fresh.raid_disks, fresh.size
                ),
            ));
        }
        let slot = usize::from(role);
        if slot >= raid_disks {
            notes.push(format!(
                "{}: role {slot} is beyond raid_disks {raid_disks}: left out",
                c.path.display()
            ));
            continue;
        }
        if level != Level::Raid0 && sb.size > sb.data_size {
            return Err(member_err(
                &c.path,
                format!(
                    "component size {} sectors exceeds the data area of {} sectors",
                    sb.size, sb.data_size
                ),
            ));
        }
        if sb.has_feature(feature::RECOVERY_OFFSET) && sb.recovery_offset < fresh.size {
            notes.push(format!(
                "{}: recovery incomplete (at sector {} of {}): left out",
                c.path.display(),
                sb.recovery_offset,
                fresh.size
            ));
            continue;
        }
        match &slots[slot] {
            None => slots[slot] = Some(c),
            Some(prev) => {
                let prev_repl = prev.found.sb.has_feature(feature::REPLACEMENT);
                let this_repl = sb.has_feature(feature::REPLACEMENT);
                if this_repl && !prev_repl {
                    notes.push(format!("{}: replacement for slot {slot}: left out", c.path.display()));
                } else if prev_repl && !this_repl {
                    notes.push(format!("{}: replacement for slot {slot}: left out", prev.path.display()));
                    slots[slot] = Some(c);
                } else {
                    return Err(member_err(
                        &c.path,
                        format!("claims slot {slot}, which {} already holds", prev.path.display()),
                    ));
                }
            }
        }
    }
    let member_sectors =
        slots.iter().map(|s| s.as_ref().map_or(fresh.data_size, |c| c.found.sb.data_size)).collect();
    let geom = Geometry {
        level,
        layout: fresh.layout,
        raid0_layout_set: fresh.has_feature(feature::RAID0_LAYOUT),
        chunk_sectors: fresh.chunksize,
        raid_disks: fresh.raid_disks,
        dev_sectors: fresh.size,
        member_sectors,
    };
    let pers = personality::build(&geom)
        .map_err(|e| array_err(format!("array {} ({}): {e}", format_uuid(&fresh.set_uuid), fresh.name())))?;
    let present: Vec<bool> = slots.iter().map(Option::is_some).collect();
    let missing: Vec<usize> = (0..raid_disks).filter(|&s| !present[s]).collect();
    let have = raid_disks - missing.len();
    if !pers.readable_with(&present) {
        let mut reason = format!(
            "array {} ({}): too few members for {level}: {have} of {raid_disks} present, missing slot(s) {}",
            format_uuid(&fresh.set_uuid),
            fresh.name(),
            list(&missing)
        );
        if !notes.is_empty() {
            reason.push_str(&format!(" ({})", notes.join("; ")));
        }
        return Err(array_err(reason));
    }
    let degraded = !missing.is_empty();
    let parity = matches!(level, Level::Raid4 | Level::Raid5 | Level::Raid6);
    if degraded && parity && !fresh.is_clean() && !opts.force {
        return Err(array_err(format!(
            "array {} ({}) is dirty (not shut down cleanly, resync_offset {}) and degraded: rebuilt data may be wrong, so md refuses to start it; use --force to read it anyway",
            format_uuid(&fresh.set_uuid),
            fresh.name(),
            fresh.resync_offset
        )));
    }
    if degraded {
        notes.push(format!(
            "DEGRADED: array {} ({}) assembled with {have} of {raid_disks} members; missing slot(s) {}; data of missing members is rebuilt from redundancy",
            format_uuid(&fresh.set_uuid),
            fresh.name(),
            list(&missing)
        ));
    }
    let slots =
        Slots::new(slots.into_iter().map(|s| s.map(|c| SlotMember::new(c.dev, c.found.sb))).collect());
    let array = Array::new(fresh, pers, slots);
    if level != Level::Raid0 {
        let bitmap = crate::bitmap::Bitmap::load(&array.sb, &array.slots, array.sync_size())
            .map_err(|e| array_err(format!("array {}: bitmap: {e}", format_uuid(&array.sb.set_uuid))))?;
        if let Some(b) = bitmap {
            array.set_bitmap(b);
        }
    }
    Ok(Assembly { array, notes, degraded })
}

fn check_features(p: &Path, f: &Found) -> Result<(), AssembleError> {
    let bad = f.sb.feature_map & UNSUPPORTED_FEATURES;
    if bad != 0 {
        return Err(member_err(
            p,
            format!(
                "array uses feature(s) umd cannot honour yet: {} (feature map {:#x})",
                f.sb.feature_names(bad).join(", "),
                f.sb.feature_map
            ),
        ));
    }
    if f.bitmap.as_ref().is_some_and(|b| b.nodes > 1) {
        return Err(member_err(p, "array uses feature umd cannot honour yet: clustered (bitmap nodes > 1)"));
    }
    Ok(())
}

fn list(v: &[usize]) -> String {
    v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
}

/// Drops a leading "PATH: " from an error text that already names the path.
fn strip_path(s: &str, p: &Path) -> String {
    let prefix = format!("{}: ", p.display());
    s.strip_prefix(&prefix).unwrap_or(s).to_string()
}
