//! `examine`: a member's superblock in the words and format of
//! `mdadm --examine` (mdadm's `examine_super1`), field for field.
//!
//! The report is a list of [`Entry`]s so that the text form (mdadm's exact
//! layout, blank lines included) and the JSON form (same keys, same values)
//! come from one source.

use crate::superblock::{
    feature, format_uuid, Found, Superblock, FAIL_FAST_1, MD_DISK_ROLE_FAULTY, MD_DISK_ROLE_JOURNAL,
    MD_DISK_ROLE_MAX, WRITE_MOSTLY_1,
};

/// One line of an examine report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `key : value`, with the key padded as mdadm pads it.
    Field {
        /// The key exactly as mdadm prints it, leading spaces included.
        padded_key: &'static str,
        /// The value text.
        value: String,
    },
    /// A free-form line (mdadm's warnings).
    Line(String),
    /// An empty line.
    Blank,
}

impl Entry {
    /// The key without padding, for JSON and lookups.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            Entry::Field { padded_key, .. } => Some(padded_key.trim_start()),
            _ => None,
        }
    }
}

/// The examine report of one member.
#[derive(Clone, Debug)]
pub struct Report {
    /// Lines in mdadm's order.
    pub entries: Vec<Entry>,
}

impl Report {
    /// The value of `key` (unpadded), if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find_map(|e| match e {
            Entry::Field { padded_key, value } if padded_key.trim_start() == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// mdadm's text form (without the leading "DEVICE:" line).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            match e {
                Entry::Field { padded_key, value } => {
                    out.push_str(padded_key);
                    out.push_str(" : ");
                    out.push_str(value);
                    out.push('\n');
                }
                Entry::Line(l) => {
                    out.push_str(l);
                    out.push('\n');
                }
                Entry::Blank => out.push('\n'),
            }
        }
        out
    }
}

/// mdadm's `human_size`: " (x.yy MiB x.yy MB)" style suffix, empty below
/// 5000 KiB.
pub fn human_size(bytes: u64) -> String {
    let b = bytes as i128;
    if b < 5000 * 1024 {
        String::new()
    } else if b < 2 * (1 << 30) {
        let cmib = (b * 200 / (1 << 20) + 1) / 2;
        let cmb = (b / (1_000_000 / 200) + 1) / 2;
        format!(" ({}.{:02} MiB {}.{:02} MB)", cmib / 100, cmib % 100, cmb / 100, cmb % 100)
    } else if b < 2 * (1 << 40) {
        let cgib = (b * 200 / (1 << 30) + 1) / 2;
        let cgb = (b / (1_000_000_000 / 200) + 1) / 2;
        format!(" ({}.{:02} GiB {}.{:02} GB)", cgib / 100, cgib % 100, cgb / 100, cgb % 100)
    } else {
        let ctib = (b * 200 / (1 << 40) + 1) / 2;
        let ctb = (b / (1_000_000_000_000 / 200) + 1) / 2;
        format!(" ({}.{:02} TiB {}.{:02} TB)", ctib / 100, ctib % 100, ctb / 100, ctb % 100)
    }
}

/// mdadm's name of a level (`pers` map).
pub fn level_name(level: i32) -> &'static str {
    match level {
        -1 => "linear",
        0 => "raid0",
        1 => "raid1",
        4 => "raid4",
        5 => "raid5",
        -4 => "multipath",
        6 => "raid6",
        10 => "raid10",
        -5 => "faulty",
        -100 => "container",
        _ => "-unknown-",
    }
}

/// mdadm's name of a raid5 layout (`r5layout`, first match).
pub fn r5_layout_name(layout: u32) -> &'static str {
    match layout {
        0 => "left-asymmetric",
        1 => "right-asymmetric",
        2 => "left-symmetric",
        3 => "right-symmetric",
        4 => "parity-first",
        5 => "parity-last",
        _ => "-unknown-",
    }
}

/// mdadm's name of a raid6 layout (`r6layout`, first match).
pub fn r6_layout_name(layout: u32) -> &'static str {
    match layout {
        0..=5 => r5_layout_name(layout),
        8 => "ddf-zero-restart",
        9 => "ddf-N-restart",
        10 => "ddf-N-continue",
        16 => "left-asymmetric-6",
        17 => "right-asymmetric-6",
        18 => "left-symmetric-6",
        19 => "right-symmetric-6",
        20 => "parity-first-6",
        _ => "-unknown-",
    }
}

/// mdadm's name of a raid0 layout (`r0layout`, first match).
pub fn r0_layout_name(layout: u32) -> &'static str {
    match layout {
        1 => "original",
        2 => "alternate",
        255 => "dangerous",
        _ => "-unknown-",
    }
}

/// mdadm's `print_r10_layout`, including its leading space.
pub fn r10_layout_text(layout: u32) -> String {
    let near = layout & 255;
    let far = (layout >> 8) & 255;
    let offset = layout & 0x10000 != 0;
    let mut s = String::new();
    let mut sep = "";
    if near != 1 {
        s.push_str(&format!("{sep} near={near}"));
        sep = ",";
    }
    if far != 1 {
        s.push_str(&format!("{sep} {}={far}", if offset { "offset" } else { "far" }));
    }
    if near * far == 1 {
        s.push_str("NO REDUNDANCY");
    }
    s
}

/// `ctime(3)` of an md timestamp (low 40 bits are seconds), in local time,
/// without the trailing newline: "Mon Nov 23 03:41:01 2026".
pub fn format_time(md_time: u64) -> String {
    let secs = (md_time & 0xff_ffff_ffff) as libc::time_t;
    // SAFETY: `tm` is a plain C struct for which all-zero bytes is a valid
    // value; localtime_r only writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call;
    // localtime_r is the thread-safe variant.
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return format!("@{secs}");
    }
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS.get(tm.tm_wday as usize).copied().unwrap_or("???"),
        MONTHS.get(tm.tm_mon as usize).copied().unwrap_or("???"),
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        i64::from(tm.tm_year) + 1900
    )
}

/// The local host name, as mdadm uses it for "(local to host …)".
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its full length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Unused space before and after the data area, as mdadm's
/// `getinfo_super1` computes it (sectors; `after` may wrap when the device
/// is too small, exactly as in mdadm).
fn unused_space(f: &Found) -> (u64, u64) {
    let sb = &f.sb;
    let super_offset = sb.super_offset;
    let bitmap_offset: i64 =
        if sb.has_feature(feature::BITMAP_OFFSET) { i64::from(sb.bitmap_offset) } else { 0 };
    let any_ppl = sb.feature_map & (feature::PPL | feature::MULTIPLE_PPLS) != 0;
    let (ppl_offset, ppl_size): (i64, i64) = if !sb.has_feature(feature::BITMAP_OFFSET) && any_ppl {
        let p = sb.ppl();
        (i64::from(p.offset), i64::from(p.size))
    } else {
        (0, 0)
    };
    let data_size = if sb.level <= 0 { sb.data_size } else { sb.size };
    let data_offset = sb.data_offset;
    let (before, mut after);
    if data_offset < super_offset {
        before = data_offset;
        let mut end = super_offset;
        if sb.bblog_offset != 0 && sb.bblog_size != 0 {
            let bb = (super_offset as i64).wrapping_add(i64::from(sb.bblog_offset)) as u64;
            if bb < end {
                end = bb;
            }
        }
        let meta = (super_offset as i64).wrapping_add(bitmap_offset).wrapping_add(ppl_offset) as u64;
        if meta < end {
            end = meta;
        }
        after = if data_offset + data_size < end { end - data_size - data_offset } else { 0 };
    } else {
        let mut earliest = super_offset + (32 + 4) * 2;
        if bitmap_offset > 0 {
            let bm_bytes = f.bitmap.as_ref().map(bitmap_bytes).unwrap_or(0);
            let bmend = bitmap_offset as u64 + bm_bytes / 512;
            if bmend > earliest {
                earliest = bmend;
            }
        } else if ppl_offset > 0 {
            let pplend = (ppl_offset + ppl_size) as u64;
            if pplend > earliest {
                earliest = pplend;
            }
        }
        if sb.bblog_offset != 0 && sb.bblog_size != 0 {
            let bbend = (super_offset as i64)
                .wrapping_add(i64::from(sb.bblog_offset))
                .wrapping_add(i64::from(sb.bblog_size)) as u64;
            if bbend > earliest {
                earliest = bbend;
            }
        }
        before = data_offset.saturating_sub(earliest);
        after = f.dev_sectors.wrapping_sub(data_size).wrapping_sub(data_offset);
    }
    if before == 0 && after == 0 {
        after = 1;
    }
    (before, after)
}

/// mdadm's `calc_bitmap_size(bms, 4096)`: header plus bits, rounded to 4 KiB.
fn bitmap_bytes(bms: &crate::superblock::BitmapSuper) -> u64 {
    if bms.chunksize == 0 {
        return 0;
    }
    let chunk_sectors = u64::from(bms.chunksize >> 9).max(1);
    let bits = bms.sync_size.div_ceil(chunk_sectors);
    let bytes = bits.div_ceil(8) + 256;
    bytes.div_ceil(4096) * 4096
}

/// Builds the examine report of a found superblock. `homehost` is the name
/// that earns "(local to host …)".
pub fn report(f: &Found, homehost: Option<&str>) -> Report {
    let sb = &f.sb;
    let mut e = Vec::new();
    let mut field = |k: &'static str, v: String| e.push(Entry::Field { padded_key: k, value: v });
    // mdadm clears BITMAP_OFFSET in memory when the bitmap superblock is not
    // valid, so the feature map it prints lacks the bit.
    let mut feature_map = sb.feature_map;
    if sb.has_feature(feature::BITMAP_OFFSET) && f.bitmap.is_none() {
        feature_map &= !feature::BITMAP_OFFSET;
    }
    let has = |bit: u32| feature_map & bit != 0;
    field("          Magic", format!("{:08x}", sb.magic));
    field(
        "        Version",
        crate::superblock::Minor::from_super_offset(sb.super_offset).as_str().to_string(),
    );
    field("    Feature Map", format!("{feature_map:#x}"));
    field("     Array UUID", format_uuid(&sb.set_uuid));
    let name = sb.name();
    let mut name_v = name.clone();
    if let Some(h) = homehost {
        let l = h.len();
        if l > 0 && l < 32 && name.len() > l && name.as_bytes()[l] == b':' && name.starts_with(h) {
            name_v.push_str(&format!("  (local to host {h})"));
        }
    }
    field("           Name", name_v);
    field("  Creation Time", format_time(sb.ctime));
    field("     Raid Level", level_name(sb.level).to_string());
    field("   Raid Devices", sb.raid_disks.to_string());
    e.push(Entry::Blank);
    let mut field = |k: &'static str, v: String| e.push(Entry::Field { padded_key: k, value: v });
    field(" Avail Dev Size", format!("{} sectors{}", sb.data_size, human_size(sb.data_size << 9)));
    if sb.level > 0 {
        let (ddsks, denom): (u64, u64) = match sb.level {
            1 => (1, 1),
            4 | 5 => (u64::from(sb.raid_disks).saturating_sub(1), 1),
            6 => (u64::from(sb.raid_disks).saturating_sub(2), 1),
            10 => (u64::from(sb.raid_disks), u64::from(sb.layout & 255) * u64::from((sb.layout >> 8) & 255)),
            _ => (0, 1),
        };
        if ddsks != 0 && denom != 0 {
            let asize = (sb.size << 9).wrapping_mul(ddsks) / denom;
            field("     Array Size", format!("{} KiB{}", asize >> 10, human_size(asize)));
        }
        if sb.size != sb.data_size {
            field("  Used Dev Size", format!("{} sectors{}", sb.size, human_size(sb.size << 9)));
        }
    }
    if sb.data_offset != 0 {
        field("    Data Offset", format!("{} sectors", sb.data_offset));
    }
    if sb.new_offset != 0 && has(feature::NEW_OFFSET) {
        let off = (sb.data_offset as i64).wrapping_add(i64::from(sb.new_offset));
        field("     New Offset", format!("{off} sectors"));
    }
    field("   Super Offset", format!("{} sectors", sb.super_offset));
    if has(feature::RECOVERY_OFFSET) {
        field("Recovery Offset", format!("{} sectors", sb.recovery_offset));
    }
    let (before, after) = unused_space(f);
    if after != 1 && !has(feature::NEW_OFFSET) {
        let after_s = if after < i64::MAX as u64 {
            format!("after={after} sectors")
        } else {
            format!("after=-{} sectors DEVICE TOO SMALL", u64::MAX - after)
        };
        field("   Unused Space", format!("before={before} sectors, {after_s}"));
    }
    let truncated = if after > i64::MAX as u64 { " TRUNCATED DEVICE" } else { "" };
    field(
        "          State",
        format!("{}{truncated}", if sb.resync_offset.wrapping_add(1) != 0 { "active" } else { "clean" }),
    );
    field("    Device UUID", format_uuid(&sb.device_uuid));
    e.push(Entry::Blank);
    let mut field = |k: &'static str, v: String| e.push(Entry::Field { padded_key: k, value: v });
    if has(feature::BITMAP_OFFSET) {
        field("Internal Bitmap", format!("{} sectors from superblock", sb.bitmap_offset));
    } else if feature_map & (feature::PPL | feature::MULTIPLE_PPLS) != 0 {
        let p = sb.ppl();
        field(
            "            PPL",
            format!("{} sectors at offset {} sectors from superblock", p.size, p.offset),
        );
    }
    let mut delta_extra: u32 = 0;
    if has(feature::RESHAPE_ACTIVE) {
        field(
            "  Reshape pos'n",
            format!("{}{}", sb.reshape_position / 2, human_size(sb.reshape_position << 9)),
        );
        if sb.delta_disks != 0 {
            field(
                "  Delta Devices",
                format!(
                    "{} ({}->{})",
                    sb.delta_disks,
                    i64::from(sb.raid_disks) - i64::from(sb.delta_disks),
                    sb.raid_disks
                ),
            );
            if sb.delta_disks < 0 {
                delta_extra = sb.delta_disks.unsigned_abs();
            }
        }
        if sb.new_level as i32 != sb.level {
            field("      New Level", level_name(sb.new_level as i32).to_string());
        }
        if sb.new_layout != sb.layout {
            match sb.level {
                5 => field("     New Layout", r5_layout_name(sb.new_layout).to_string()),
                6 => field("     New Layout", r6_layout_name(sb.new_layout).to_string()),
                10 => field("     New Layout", r10_layout_text(sb.new_layout).trim_start().to_string()),
                _ => {}
            }
        }
        if sb.new_chunk != sb.chunksize {
            field("  New Chunksize", format!("{}K", sb.new_chunk / 2));
        }
        e.push(Entry::Blank);
    }
    let mut field = |k: &'static str, v: String| e.push(Entry::Field { padded_key: k, value: v });
    if sb.devflags != 0 {
        let mut v = String::new();
        if sb.devflags & WRITE_MOSTLY_1 != 0 {
            v.push_str(" write-mostly");
        }
        if sb.devflags & FAIL_FAST_1 != 0 {
            v.push_str(" failfast");
        }
        field("          Flags", v.trim_start().to_string());
    }
    field("    Update Time", format_time(sb.utime));
    if sb.bblog_size != 0 && sb.bblog_offset != 0 {
        let mut v = format!(
            "{} entries available at offset {} sectors",
            u32::from(sb.bblog_size) * 512 / 8,
            sb.bblog_offset
        );
        if has(feature::BAD_BLOCKS) {
            v.push_str(" - bad blocks present.");
        }
        field("  Bad Block Log", v);
    }
    if f.checksum_ok {
        field("       Checksum", format!("{:x} - correct", sb.sb_csum));
    } else {
        field("       Checksum", format!("{:x} - expected {:x}", sb.sb_csum, sb.compute_checksum()));
    }
    field("         Events", sb.events.to_string());
    e.push(Entry::Blank);
    let mut field = |k: &'static str, v: String| e.push(Entry::Field { padded_key: k, value: v });
    match sb.level {
        0 if has(feature::RAID0_LAYOUT) => field("         Layout", r0_layout_name(sb.layout).to_string()),
        5 => field("         Layout", r5_layout_name(sb.layout).to_string()),
        6 => field("         Layout", r6_layout_name(sb.layout).to_string()),
        10 => field("         Layout", r10_layout_text(sb.layout).trim_start().to_string()),
        _ => {}
    }
    match sb.level {
        0 | 4 | 5 | 6 | 10 => field("     Chunk Size", format!("{}K", sb.chunksize / 2)),
        -1 => field("       Rounding", format!("{}K", sb.chunksize / 2)),
        _ => {}
    }
    e.push(Entry::Blank);
    let role = sb.role();
    let role_v = if role >= MD_DISK_ROLE_FAULTY {
        "spare".to_string()
    } else if role == MD_DISK_ROLE_JOURNAL {
        "Journal".to_string()
    } else if has(feature::REPLACEMENT) {
        format!("Replacement device {role}")
    } else {
        format!("Active device {role}")
    };
    e.push(Entry::Field { padded_key: "   Device Role", value: role_v });
    let (state, inconsistent) = array_state(sb, delta_extra);
    e.push(Entry::Field {
        padded_key: "   Array State",
        value: format!("{state} ('A' == active, '.' == missing, 'R' == replacing)"),
    });
    if inconsistent {
        e.push(Entry::Line(
            "WARNING Array state is inconsistent - each number should appear only once".to_string(),
        ));
        let mut l = String::new();
        for (d, &r) in sb.dev_roles.iter().enumerate() {
            if r >= MD_DISK_ROLE_FAULTY {
                l.push_str(&format!(" {d}:-"));
            } else {
                l.push_str(&format!(" {d}:{r}"));
            }
        }
        e.push(Entry::Line(l));
    }
    Report { entries: e }
}

/// mdadm's "Array State" letters: per slot, 'A' one device, 'R' two (a
/// replacement, levels > 0), '.' none, '?' more. Also whether the roles are
/// inconsistent.
pub fn array_state(sb: &Superblock, delta_extra: u32) -> (String, bool) {
    let mut s = String::new();
    let mut inconsistent = false;
    let slots = u64::from(sb.raid_disks) + u64::from(delta_extra);
    for d in 0..slots.min(u64::from(MD_DISK_ROLE_MAX)) {
        let cnt = sb.dev_roles.iter().filter(|&&r| u64::from(r) == d).count();
        match cnt {
            2 if sb.level > 0 => s.push('R'),
            1 => s.push('A'),
            0 => s.push('.'),
            _ => {
                s.push('?');
                inconsistent = true;
            }
        }
    }
    if sb.dev_roles.iter().any(|&r| r <= MD_DISK_ROLE_MAX && u64::from(r) > slots) {
        inconsistent = true;
    }
    (s, inconsistent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_match_mdadm() {
        assert_eq!(human_size(14336 << 9), " (7.00 MiB 7.34 MB)");
        assert_eq!(human_size(21504 << 10), " (21.00 MiB 22.02 MB)");
        assert_eq!(human_size(4096), "");
        assert_eq!(human_size(3 << 30), " (3.00 GiB 3.22 GB)");
    }

    #[test]
    fn r10_layouts() {
        assert_eq!(r10_layout_text(258), " near=2");
        assert_eq!(r10_layout_text(0x201), " far=2");
        assert_eq!(r10_layout_text(0x10201), " offset=2");
        assert_eq!(r10_layout_text(0x202), " near=2, far=2");
        assert_eq!(r10_layout_text(0x101), "NO REDUNDANCY");
    }
}
