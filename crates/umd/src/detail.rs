//! `umd detail DIR`: what `mdadm --detail` prints for an array, read the way
//! mdadm reads it: the array's attributes under `DIR/md/` (md's sysfs names
//! and formats) and, for the fields md keeps only in the metadata (name,
//! UUID, events, times), the superblock of a member, found through
//! `DIR/md/dev-*/block`. While a sync runs, the `State` line and a
//! `Resync`/`Rebuild`/`Check Status` line say so, as mdadm reads them from
//! /proc/mdstat.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use md::examine::{
    format_time, hostname, human_size, level_name, r0_layout_name, r10_layout_text, r5_layout_name,
    r6_layout_name,
};
use md::superblock::{self, feature, format_uuid};

use crate::{CliError, CmdResult};

fn attr(dir: &Path, name: &str) -> Result<String, CliError> {
    let p = dir.join(name);
    std::fs::read_to_string(&p)
        .map(|s| s.trim_end_matches('\n').to_string())
        .map_err(|e| CliError(format!("{}: {e}", p.display())))
}

fn attr_num(dir: &Path, name: &str) -> Result<i64, CliError> {
    let v = attr(dir, name)?;
    v.parse::<i64>().map_err(|_| CliError(format!("{}: not a number: {v:?}", dir.join(name).display())))
}

/// One member as the device table shows it.
struct Dev {
    number: i64,
    major: u32,
    minor: u32,
    slot: Option<i64>,
    state: String,
    path: PathBuf,
}

/// A sync running, as mdadm shows it (from /proc/mdstat's line: md prints
/// a repair as `resync`).
struct SyncStatus {
    /// The `Status` line's key.
    key: &'static str,
    /// What the `State` line gets.
    state: &'static str,
    /// Whole percent done (mdstat's tenths, truncated).
    percent: u64,
}

/// The sync running on the array whose attributes are in `md`, if any.
fn sync_status(md: &Path) -> Option<SyncStatus> {
    let action = attr(md, "sync_action").ok()?;
    let (key, state) = match action.as_str() {
        "resync" | "repair" => ("Resync Status", ", resyncing"),
        "recover" => ("Rebuild Status", ", recovering"),
        "check" => ("Check Status", ", checking"),
        _ => return None,
    };
    let completed = attr(md, "sync_completed").ok()?;
    let (done, total) = completed.split_once('/')?;
    let (done, total): (u64, u64) = (done.trim().parse().ok()?, total.trim().parse().ok()?);
    // md's status_resync: tenths of a percent.
    let per_milli = u128::from(done.min(total)) * 1000 / (u128::from(total) + 1);
    Some(SyncStatus { key, state, percent: (per_milli / 10) as u64 })
}

/// Runs `umd detail`.
pub fn run(dir: &Path, json: bool) -> CmdResult {
    let md = dir.join("md");
    if !md.is_dir() {
        return Err(CliError(format!("{}: no array is served here (no {}/)", dir.display(), md.display())));
    }
    let level_s = attr(&md, "level")?;
    let raid_disks = attr_num(&md, "raid_disks")?;
    let chunk = attr_num(&md, "chunk_size")?;
    let layout = attr_num(&md, "layout")?;
    let version = attr(&md, "metadata_version")?;
    let component_kib = attr_num(&md, "component_size")?;
    let resync_start = attr(&md, "resync_start")?;
    let policy = attr(&md, "consistency_policy")?;
    let array_state = attr(&md, "array_state")?;
    let degraded = if md.join("degraded").exists() { attr_num(&md, "degraded")? } else { 0 };
    let sync = sync_status(&md);
    let size = std::fs::metadata(dir.join("data"))
        .map_err(|e| CliError(format!("{}/data: {e}", dir.display())))?
        .len();
    let level = match level_s.as_str() {
        "raid0" => 0,
        "raid1" => 1,
        "raid4" => 4,
        "raid5" => 5,
        "raid6" => 6,
        "raid10" => 10,
        "linear" => -1,
        _ => -1000,
    };

    let mut devs: Vec<Dev> = Vec::new();
    let mut sbs = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&md)
        .map_err(|e| CliError(format!("{}: {e}", md.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("dev-"))
        .map(|e| e.path())
        .collect();
    entries.sort();
    for d in &entries {
        let state = attr(d, "state")?;
        let slot_s = attr(d, "slot")?;
        let slot = slot_s.parse::<i64>().ok();
        let path = std::fs::read_link(d.join("block"))
            .map_err(|e| CliError(format!("{}/block: {e}", d.display())))?;
        let (major, minor) = match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_block_device() => {
                let r = m.rdev();
                (libc::major(r), libc::minor(r))
            }
            _ => (0, 0),
        };
        let found = blockio::Member::open(&path, blockio::Access::ReadOnly)
            .ok()
            .and_then(|m| superblock::load(&m, None, true).ok());
        let number = found.as_ref().map_or(-1, |f| i64::from(f.sb.dev_number));
        if let Some(f) = found {
            sbs.push(f.sb);
        }
        devs.push(Dev { number, major, minor, slot, state, path });
    }
    // The freshest superblock speaks for the array, as in mdadm.
    let sb = sbs
        .iter()
        .max_by_key(|s| s.events)
        .ok_or_else(|| CliError(format!("{}: no member superblock could be read", dir.display())))?;

    let mut f: Vec<(&'static str, String)> = Vec::new();
    let mut text = String::new();
    let put = |text: &mut String, f: &mut Vec<(&'static str, String)>, key: &'static str, v: String| {
        text.push_str(&format!("{key:>18} : {v}\n"));
        f.push((key, v));
    };
    text.push_str(&format!("{}:\n", dir.display()));
    put(&mut text, &mut f, "Version", version);
    put(&mut text, &mut f, "Creation Time", format_time(sb.ctime));
    put(&mut text, &mut f, "Raid Level", level_name(level).to_string());
    put(&mut text, &mut f, "Array Size", format!("{}{}", size >> 10, human_size(size)));
    if level >= 1 {
        let b = (component_kib as u64) << 10;
        put(&mut text, &mut f, "Used Dev Size", format!("{}{}", component_kib, human_size(b)));
    }
    put(&mut text, &mut f, "Raid Devices", raid_disks.to_string());
    put(&mut text, &mut f, "Total Devices", devs.len().to_string());
    put(&mut text, &mut f, "Persistence", "Superblock is persistent".to_string());
    text.push('\n');
    if sb.has_feature(feature::BITMAP_OFFSET) {
        put(&mut text, &mut f, "Intent Bitmap", "Internal".to_string());
        text.push('\n');
    }
    put(&mut text, &mut f, "Update Time", format_time(sb.utime));
    let arrayst = if resync_start == "none" {
        if level <= 0 {
            array_state.clone()
        } else {
            "clean".to_string()
        }
    } else {
        "active".to_string()
    };
    // md marks an array that lost more members than it tolerates broken:
    // it takes no writes (mdadm: FAILED).
    let broken = array_state == "broken";
    let arrayst = if broken { "broken".to_string() } else { arrayst };
    let st = match (degraded == 0, broken) {
        (true, false) => "",
        (false, false) => ", degraded",
        (true, true) => ", FAILED",
        (false, true) => ", degraded, FAILED",
    };
    let syncing = sync.as_ref().map_or("", |s| s.state);
    // mdadm prints a trailing space after the state.
    text.push_str(&format!("{:>18} : {arrayst}{st}{syncing} \n", "State"));
    f.push(("State", format!("{arrayst}{st}{syncing}")));
    let active = devs.iter().filter(|d| d.slot.is_some() && d.state.contains("in_sync")).count();
    let failed = devs.iter().filter(|d| d.state.contains("faulty")).count();
    let spare = devs.iter().filter(|d| d.slot.is_none() && !d.state.contains("faulty")).count();
    put(&mut text, &mut f, "Active Devices", active.to_string());
    put(&mut text, &mut f, "Working Devices", (active + spare).to_string());
    put(&mut text, &mut f, "Failed Devices", failed.to_string());
    put(&mut text, &mut f, "Spare Devices", spare.to_string());
    text.push('\n');
    let lay = layout as u32;
    let layout_s = match level {
        5 => Some(r5_layout_name(lay).to_string()),
        6 => Some(r6_layout_name(lay).to_string()),
        10 => Some(r10_layout_text(lay).trim_start().to_string()),
        0 if layout != 0 => {
            Some(if layout < 0 { "-unknown-".to_string() } else { r0_layout_name(lay).to_string() })
        }
        _ => None,
    };
    if let Some(l) = layout_s {
        put(&mut text, &mut f, "Layout", l);
    }
    if matches!(level, 0 | 4 | 5 | 6 | 10) && chunk != 0 {
        put(&mut text, &mut f, "Chunk Size", format!("{}K", chunk / 1024));
        text.push('\n');
    }
    put(&mut text, &mut f, "Consistency Policy", policy);
    text.push('\n');
    if let Some(s) = sync {
        put(&mut text, &mut f, s.key, format!("{}% complete", s.percent));
        text.push('\n');
    }
    let mut name = sb.name();
    if let Some(h) = hostname() {
        if name.len() > h.len() && name.starts_with(&h) && name.as_bytes()[h.len()] == b':' {
            name.push_str(&format!("  (local to host {h})"));
        }
    }
    put(&mut text, &mut f, "Name", name);
    put(&mut text, &mut f, "UUID", format_uuid(&sb.set_uuid));
    put(&mut text, &mut f, "Events", sb.events.to_string());
    text.push('\n');
    text.push_str("    Number   Major   Minor   RaidDevice State\n");
    let mut rows = Vec::new();
    for slot in 0..raid_disks {
        let d = devs.iter().find(|d| d.slot == Some(slot));
        match d {
            Some(d) => {
                let mut state = String::new();
                if d.state.contains("faulty") {
                    state.push_str(" faulty");
                }
                if d.state.contains("in_sync") {
                    state.push_str(" active sync");
                    let (nc, fc) = (layout & 0xff, (layout >> 8) & 0xff);
                    let copies = nc * fc;
                    if level == 10
                        && layout & !0x1ffff == 0
                        && fc == 1
                        && copies > 0
                        && raid_disks % copies == 0
                        && copies <= 26
                    {
                        state.push_str(&format!(" set-{}", (b'A' + (slot % copies) as u8) as char));
                    }
                }
                text.push_str(&format!(
                    "   {:5}   {:5}    {:5}    {:5}    {}   {}\n",
                    d.number,
                    d.major,
                    d.minor,
                    slot,
                    state,
                    d.path.display()
                ));
                rows.push(serde_json::json!({"Number": d.number, "Major": d.major, "Minor": d.minor, "RaidDevice": slot, "State": state.trim_start(), "Device": d.path.display().to_string()}));
            }
            None => {
                text.push_str(&format!("       -   {:5}    {:5}    {:5}      removed\n", 0, 0, slot));
                rows.push(serde_json::json!({"Number": null, "Major": 0, "Minor": 0, "RaidDevice": slot, "State": "removed", "Device": null}));
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        let mut obj = serde_json::Map::new();
        obj.insert("Array".into(), dir.display().to_string().into());
        for (k, v) in f {
            obj.insert(k.to_string(), v.into());
        }
        obj.insert("Devices".into(), rows.into());
        writeln!(out, "{}", serde_json::Value::Object(obj))?;
    } else {
        write!(out, "{text}")?;
    }
    Ok(())
}
