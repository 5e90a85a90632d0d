//! `umd fail` and `umd remove`: mdadm's `--fail` and `--remove` for an
//! array served at DIR, done through its attributes (`md/dev-*/state`), as
//! mdadm does through sysfs.
//!
//! ## Responsibility boundary
//! This module finds the member the user named and stores md's word into
//! its `state`; md (the serving process) and the metadata manager (`umd
//! mon`) do the rest. It never writes a superblock.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{CliError, CmdResult};

/// A member of the array at DIR, as its attributes show it.
struct DevDir {
    /// `DIR/md/dev-NAME`.
    path: PathBuf,
    /// The member's file (`block` link).
    block: PathBuf,
    slot: String,
}

fn md_dir(dir: &Path) -> Result<PathBuf, CliError> {
    let md = dir.join("md");
    if !md.join("array_state").exists() {
        return Err(CliError(format!("{}: not an array served by umd (no md/array_state)", dir.display())));
    }
    Ok(md)
}

fn members(md: &Path) -> Result<Vec<DevDir>, CliError> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(md).map_err(|e| CliError(format!("{}: {e}", md.display())))?;
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("dev-") {
            continue;
        }
        let path = e.path();
        let Ok(block) = std::fs::read_link(path.join("block")) else { continue };
        let slot = std::fs::read_to_string(path.join("slot")).unwrap_or_default().trim().to_string();
        out.push(DevDir { path, block, slot });
    }
    Ok(out)
}

/// The member named `member`: its file (as given to `umd assemble`), or
/// `dev-NAME` as under DIR/md/.
fn find(md: &Path, member: &Path) -> Result<Option<DevDir>, CliError> {
    let want = std::fs::canonicalize(member).ok();
    let by_name = member.to_string_lossy();
    Ok(members(md)?.into_iter().find(|d| {
        want.as_deref() == Some(d.block.as_path())
            || d.path.file_name().is_some_and(|n| n.to_string_lossy() == by_name)
    }))
}

fn read_state(d: &DevDir) -> String {
    std::fs::read_to_string(d.path.join("state")).unwrap_or_default().trim().to_string()
}

fn store_state(d: &DevDir, word: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(d.path.join("state"))?.write_all(word.as_bytes())
}

/// Whether `member`'s own superblock says it belongs to the array at DIR
/// (compared with another member's): for a member already removed.
fn was_member(md: &Path, member: &Path) -> bool {
    let uuid_of = |p: &Path| {
        let m = blockio::Member::open(p, blockio::Access::ReadOnly).ok()?;
        md::superblock::load(&m, None, true).ok().map(|f| f.sb.set_uuid)
    };
    let Some(theirs) = uuid_of(member) else { return false };
    members(md).ok().into_iter().flatten().any(|d| uuid_of(&d.block) == Some(theirs))
}

/// `umd fail DIR MEMBER`: md's `echo faulty > md/dev-X/state`. Waits (up
/// to 10 s) until the metadata manager has recorded the failure (the
/// member is no longer `blocked`) and says what happened.
pub fn fail(dir: &Path, member: &Path) -> CmdResult {
    let md = md_dir(dir)?;
    let Some(d) = find(&md, member)? else {
        return Err(CliError(format!(
            "{}: not a member of the array at {}",
            member.display(),
            dir.display()
        )));
    };
    let before = read_state(&d);
    if before.split(',').any(|w| w == "faulty") {
        println!("umd: {} is already faulty in {}", member.display(), dir.display());
        return Ok(());
    }
    store_state(&d, "faulty").map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => CliError(format!(
            "{}: cannot fail it: the array at {} would lose data ({} tolerates no more failed members)",
            member.display(),
            dir.display(),
            std::fs::read_to_string(md.join("level")).unwrap_or_default().trim()
        )),
        _ => CliError(format!("{}: storing faulty: {e}", member.display())),
    })?;
    println!("umd: set {} faulty in {} (slot {})", member.display(), dir.display(), d.slot);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = read_state(&d);
        // Gone (removed by the manager) or unblocked: recorded.
        if st.is_empty() || !st.split(',').any(|w| w == "blocked") {
            let readonly = std::fs::read_to_string(md.join("array_state"))
                .is_ok_and(|s| matches!(s.trim(), "readonly" | "read-auto"));
            if !readonly {
                println!("umd: the failure is recorded in the superblocks of the members in service");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError(format!(
                "{}: failed, but the metadata manager has not recorded it after 10 s (writes wait until it \
                 does): is `umd mon {}` running? (`umd mon --status {}`)",
                member.display(),
                dir.display(),
                dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `umd remove DIR MEMBER`: md's `echo remove > md/dev-X/state` (a failed
/// member only). The metadata manager removes failed members by itself; a
/// member it already removed is reported as such, not as an error.
pub fn remove(dir: &Path, member: &Path) -> CmdResult {
    let md = md_dir(dir)?;
    let Some(d) = find(&md, member)? else {
        if was_member(&md, member) {
            println!("umd: {} is not in the array at {} (already removed)", member.display(), dir.display());
            return Ok(());
        }
        return Err(CliError(format!(
            "{}: not a member of the array at {}",
            member.display(),
            dir.display()
        )));
    };
    match store_state(&d, "remove") {
        Ok(()) => {
            println!("umd: hot removed {} from {}", member.display(), dir.display());
            Ok(())
        }
        // Removed meanwhile (by the manager).
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT)) => {
            println!("umd: {} is not in the array at {} (already removed)", member.display(), dir.display());
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let st = read_state(&d);
            let why = if st.split(',').any(|w| w == "faulty") {
                "its failure is not recorded in the superblocks yet (is `umd mon` running?)".to_string()
            } else {
                format!("it is in service ({st}); fail it first (`umd fail {} ...`)", dir.display())
            };
            Err(CliError(format!("{}: cannot remove: {why}", member.display())))
        }
        Err(e) => Err(CliError(format!("{}: storing remove: {e}", member.display()))),
    }
}

/// `umd add DIR MEMBER`: mdadm's `--add`. The member (a device or an image
/// file at least as large as the others' data offset plus component size)
/// is added as a spare through `DIR/md/new_dev`; the metadata manager
/// gives it the first empty slot and writes its superblock, and md
/// recovers it there. Waits (up to 10 s) until it holds a slot, unless
/// the array has none empty (then it stays a spare).
pub fn add(dir: &Path, member: &Path) -> CmdResult {
    let md = md_dir(dir)?;
    let canon = std::fs::canonicalize(member).map_err(|e| CliError(format!("{}: {e}", member.display())))?;
    if let Some(d) = find(&md, member)? {
        return Err(CliError(format!(
            "{}: already a member of the array at {} (slot {}, {})",
            member.display(),
            dir.display(),
            d.slot,
            read_state(&d)
        )));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(md.join("new_dev"))
        .and_then(|mut f| f.write_all(canon.to_string_lossy().as_bytes()))
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) if !md.join("new_dev").exists() => {
                CliError(format!("{}: the array is read-only: members cannot be added", dir.display()))
            }
            Some(libc::ENOSPC) => CliError(format!(
                "{}: too small for the array at {} (it needs the data offset plus the component size)",
                member.display(),
                dir.display()
            )),
            Some(libc::EEXIST) => {
                CliError(format!("{}: already a member of the array at {}", member.display(), dir.display()))
            }
            _ => CliError(format!("{}: adding to {}: {e}", member.display(), dir.display())),
        })?;
    println!("umd: added {} to {} as a spare", member.display(), dir.display());
    // The manager gives it a slot now rather than at its next look.
    crate::mount::ping_mon(dir);
    let degraded =
        std::fs::read_to_string(md.join("degraded")).ok().and_then(|t| t.trim().parse::<u64>().ok());
    if degraded == Some(0) {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(d) = find(&md, member)? {
            if d.slot != "none" && !d.slot.is_empty() {
                println!(
                    "umd: {} takes slot {}; recovery runs (`umd wait {}`)",
                    member.display(),
                    d.slot,
                    dir.display()
                );
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(CliError(format!(
                "{}: added as a spare, but no slot after 10 s: is `umd mon {}` running?",
                member.display(),
                dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
