//! `umd create`: a new array on member devices or image files, with
//! `mdadm --create`'s options, defaults and on-disk result (v1.2 metadata).

use std::path::PathBuf;

use md::create::{self, Request};
use md::superblock::format_uuid;

use crate::{CliError, CmdResult};

/// The options of `umd create`, as parsed.
pub struct Options {
    /// `--level`.
    pub level: String,
    /// `--raid-devices`.
    pub raid_devices: usize,
    /// `--chunk` (mdadm size syntax, K by default).
    pub chunk: Option<String>,
    /// `--layout` / `--parity`.
    pub layout: Option<String>,
    /// `--name`.
    pub name: Option<String>,
    /// `--homehost`.
    pub homehost: Option<String>,
    /// `--size` per member (mdadm size syntax).
    pub size: Option<String>,
    /// `--metadata`.
    pub metadata: Option<String>,
    /// `--assume-clean`.
    pub assume_clean: bool,
    /// `--force`.
    pub force: bool,
    /// Members; `missing` for an empty slot.
    pub members: Vec<PathBuf>,
}

fn size_kib(what: &str, s: &str) -> Result<u64, CliError> {
    create::parse_size_sectors(s)
        .filter(|&sectors| sectors >= 8 && sectors % 2 == 0)
        .map(|sectors| sectors / 2)
        .ok_or_else(|| {
            CliError(format!(
                "invalid {what}: {s} (a number with an optional K, M, G or T suffix, at least 4K)"
            ))
        })
}

/// Runs `umd create`.
pub fn run(o: Options) -> CmdResult {
    let level = create::parse_level(&o.level)
        .ok_or_else(|| CliError(format!("invalid raid level: {} (0, 1, 4, 5, 6 or 10)", o.level)))?;
    if let Some(m) = &o.metadata {
        if !matches!(m.as_str(), "1.2" | "1" | "default") {
            return Err(CliError(format!("unsupported metadata version: {m} (umd creates 1.2)")));
        }
    }
    let chunk_kib = o.chunk.as_deref().map(|c| size_kib("chunk size", c)).transpose()?;
    let size_kib = o.size.as_deref().map(|s| size_kib("size", s)).transpose()?;
    let members =
        o.members.iter().map(|m| if m.as_os_str() == "missing" { None } else { Some(m.clone()) }).collect();
    let req = Request {
        level,
        raid_devices: o.raid_devices,
        chunk_kib,
        layout: o.layout,
        name: o.name,
        homehost: o.homehost,
        size_kib,
        assume_clean: o.assume_clean,
        force: o.force,
        members,
    };
    let plan = create::plan(&req)?;
    plan.write()?;
    let sb = &plan.members[0].sb;
    println!(
        "umd: created {level} array {} (name {}) on {} of {} member(s): data offset {} sectors, {}K used per member, array size {}K, {}",
        format_uuid(&plan.uuid),
        sb.name(),
        plan.members.len(),
        plan.raid_disks,
        plan.data_offset,
        plan.dev_sectors / 2,
        plan.array_bytes / 1024,
        if plan.clean { "clean" } else { "needs resync (not done yet: umd reads it as is)" }
    );
    Ok(())
}
