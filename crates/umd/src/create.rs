//! `umd create`: a new array on member devices or image files, with
//! `mdadm --create`'s options, defaults and on-disk result (v1.2 metadata).

use std::path::PathBuf;

use md::create::{self, Request};
use md::superblock::format_uuid;

use crate::{CliError, CmdResult};

/// The options of `umd create`, as parsed (mdadm's names and short forms).
#[derive(clap::Args, Debug)]
pub struct Options {
    /// RAID level: 0, 1, 4, 5, 6, 10 (or raid0, mirror, …).
    #[arg(short, long)]
    pub level: String,
    /// Number of active devices (members listed, `missing` included).
    #[arg(short = 'n', long)]
    pub raid_devices: usize,
    /// Chunk size (K by default; K, M, G suffixes), a power of two of at
    /// least 4K; default 512K (none for raid1).
    #[arg(short, long)]
    pub chunk: Option<String>,
    /// Layout: raid5/6 left-symmetric (default), right-symmetric,
    /// left-asymmetric, right-asymmetric, parity-first, parity-last, …;
    /// raid10 nN (default n2), fN, oN; raid0 original (default), alternate.
    #[arg(short = 'p', long, visible_alias = "parity")]
    pub layout: Option<String>,
    /// Array name (stored as HOMEHOST:NAME); default "0".
    #[arg(short = 'N', long)]
    pub name: Option<String>,
    /// Home host recorded in the name (default: this host's name).
    #[arg(long)]
    pub homehost: Option<String>,
    /// Space used on each member (K by default; K, M, G, T suffixes);
    /// default: the smallest member's. Required to create image files.
    #[arg(short = 'z', long)]
    pub size: Option<String>,
    /// Metadata version: only 1.2 (the default).
    #[arg(short = 'e', long)]
    pub metadata: Option<String>,
    /// Mark the array clean (in sync) instead of needing a resync.
    #[arg(long)]
    pub assume_clean: bool,
    /// Write-intent bitmap: `internal` (md's, in the space after the
    /// superblock: after an unclean stop only regions written meanwhile
    /// are resynced) or `none` (the default).
    #[arg(short = 'b', long)]
    pub bitmap: Option<String>,
    /// Bytes of array per bitmap bit (K by default; K, M, G suffixes), a
    /// power of two of at least 4K; default 64M (more if the bits would
    /// not fit).
    #[arg(long)]
    pub bitmap_chunk: Option<String>,
    /// Overwrite members that hold md superblocks or file systems; accept
    /// members of unequal size (the smallest decides) and 1-member arrays.
    #[arg(short, long)]
    pub force: bool,
    /// Member devices or image files, in slot order; `missing` leaves a
    /// slot empty (a degraded array).
    #[arg(required = true)]
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
    let bitmap = match o.bitmap.as_deref() {
        None | Some("none") => false,
        Some("internal") => true,
        Some(other) => {
            return Err(CliError(format!("unsupported bitmap: {other} (internal or none)")));
        }
    };
    let bitmap_chunk_kib = o.bitmap_chunk.as_deref().map(|c| size_kib("bitmap chunk", c)).transpose()?;
    if bitmap_chunk_kib.is_some() && !bitmap {
        return Err(CliError("--bitmap-chunk needs --bitmap internal".into()));
    }
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
        bitmap,
        bitmap_chunk_kib,
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
        if plan.clean { "clean" } else { "needs resync (done when it is first assembled read-write)" }
    );
    Ok(())
}
