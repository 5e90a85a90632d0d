//! `umd status`, `umd wait` and `umd check`: mdadm's habits around md's
//! sync thread (`cat /proc/mdstat`, `mdadm --wait`, `echo check >
//! md/sync_action`), for the arrays umd serves.
//!
//! ## Responsibility boundary
//! This module reads an array's attributes (`DIR/md/`, md's sysfs names and
//! formats) and stores md's words into `DIR/md/sync_action`; md (the
//! serving process) runs resync, check and repair. Arrays are found in
//! /proc/mounts: FUSE mounts whose source is `umd:NAME`, served at DIR.
//!
//! ## Waiting
//! A wait polls `sync_action` and `sync_completed` (both notify) for
//! `POLLPRI`, with a short timeout (a lost notification costs 250 ms). md
//! shows `sync_completed` as `none` once a run ends, so whether a check or
//! repair reached its end is decided from what was seen last: the end
//! itself (`DONE == TOTAL`), or the remaining part against md's speed and
//! the time since the last look (polled every 50 ms near the end). A
//! resync's end is certain: `resync_start` reads `none` only after a
//! complete one.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::mount::absolute;
use crate::progress::Progress;
use crate::{CliError, CmdResult};

// ---------------------------------------------------------------------------
// Finding arrays.

/// A umd array in /proc/mounts.
struct Mounted {
    /// The mount point (DIR).
    dir: PathBuf,
    /// The array's name (the mount source after `umd:`).
    name: String,
}

/// Undoes /proc/mounts' octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The umd arrays mounted now, one per mount point (the topmost mount).
fn umd_mounts() -> Vec<Mounted> {
    let Ok(text) = std::fs::read_to_string("/proc/mounts") else { return Vec::new() };
    let mut out: Vec<Mounted> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() < 3 {
            continue;
        }
        let dir = PathBuf::from(OsString::from_vec(unescape(f[1])));
        // A later line mounts over an earlier one.
        out.retain(|m| m.dir != dir);
        if !f[2].starts_with("fuse") {
            continue;
        }
        let src = String::from_utf8_lossy(&unescape(f[0])).into_owned();
        if let Some(name) = src.strip_prefix("umd:") {
            out.push(Mounted { dir, name: name.to_string() });
        }
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

/// Whether a umd array is mounted at `dir` (absolute).
fn is_umd_mount(dir: &Path) -> bool {
    umd_mounts().iter().any(|m| m.dir == dir)
}

/// The array served at `dir`: its absolute mount point and `md` directory.
fn target(dir: &Path) -> Result<(PathBuf, PathBuf), CliError> {
    let abs = absolute(dir);
    if !is_umd_mount(&abs) {
        return Err(CliError(format!("{}: not a umd array (no umd mount here)", dir.display())));
    }
    let md = abs.join("md");
    if std::fs::read_to_string(md.join("array_state")).is_err() {
        return Err(CliError(format!("{}: not a umd array (no md/array_state)", dir.display())));
    }
    Ok((abs, md))
}

// ---------------------------------------------------------------------------
// Attributes.

/// An attribute's value without its newline.
fn attr(md: &Path, name: &str) -> std::io::Result<String> {
    std::fs::read_to_string(md.join(name)).map(|s| s.trim_end_matches('\n').to_string())
}

fn attr_num<T: std::str::FromStr>(md: &Path, name: &str) -> Option<T> {
    attr(md, name).ok()?.trim().parse().ok()
}

/// The value of an attribute file held open, read from offset 0 (which
/// also acknowledges its notifications).
fn read_open(f: &File) -> std::io::Result<String> {
    let mut b = [0u8; 256];
    let n = f.read_at(&mut b, 0)?;
    Ok(String::from_utf8_lossy(&b[..n]).trim().to_string())
}

/// `sync_completed`: `DONE / TOTAL` in sectors, or `none`.
fn parse_completed(s: &str) -> Option<(u64, u64)> {
    let (d, t) = s.split_once('/')?;
    Some((d.trim().parse().ok()?, t.trim().parse().ok()?))
}

/// `sync_speed` in KiB/s (`none` when idle).
fn speed_kib(md: &Path) -> Option<u64> {
    attr_num(md, "sync_speed")
}

/// Whether `sync_action`'s word means a run (not `idle`, `frozen`).
fn is_running(action: &str) -> bool {
    !matches!(action, "idle" | "frozen" | "")
}

/// md's tenths of a percent (`status_resync`: `done * 1000 / (total + 1)`).
fn per_milli(done: u64, total: u64) -> u64 {
    (u128::from(done.min(total)) * 1000 / (u128::from(total) + 1)) as u64
}

/// Seconds left at `kib_s` for `total - done` sectors.
fn eta_secs(done: u64, total: u64, kib_s: u64) -> Option<u64> {
    (kib_s > 0).then(|| total.saturating_sub(done) / 2 / kib_s)
}

/// `finish=1.2min speed=123K/sec` as in /proc/mdstat.
fn finish_speed(done: u64, total: u64, kib_s: Option<u64>) -> String {
    let kib_s = kib_s.unwrap_or(0);
    match eta_secs(done, total, kib_s) {
        Some(rt) => format!("finish={}.{}min speed={kib_s}K/sec", rt / 60, (rt % 60) / 6),
        None => format!("speed={kib_s}K/sec"),
    }
}

/// The word /proc/mdstat prints for a running `sync_action`.
fn mdstat_word(action: &str) -> &str {
    match action {
        "recover" => "recovery",
        a => a,
    }
}

// ---------------------------------------------------------------------------
// `umd status`.

/// A member, as `DIR/md/dev-*` shows it.
struct Member {
    name: String,
    path: PathBuf,
    slot: Option<u64>,
    state: String,
}

impl Member {
    fn faulty(&self) -> bool {
        self.state.split(',').any(|w| w == "faulty")
    }
    fn in_sync(&self) -> bool {
        self.state.split(',').any(|w| w == "in_sync")
    }
}

/// A running sync: `sync_action`, `sync_completed`, `sync_speed`.
struct SyncInfo {
    action: String,
    completed: Option<(u64, u64)>,
    speed: Option<u64>,
}

/// What `umd status` shows of one array.
struct ArrayInfo {
    dir: PathBuf,
    name: String,
    level: String,
    array_state: String,
    metadata: String,
    raid_disks: u64,
    chunk: u64,
    layout: i64,
    size_kib: u64,
    degraded: Option<u64>,
    members: Vec<Member>,
    /// `None` for levels without redundancy (no `sync_action`).
    sync: Option<SyncInfo>,
    mismatch_cnt: Option<u64>,
    resync_start: Option<String>,
}

fn members(md: &Path) -> Vec<Member> {
    let Ok(rd) = std::fs::read_dir(md) else { return Vec::new() };
    let mut out: Vec<Member> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("dev-"))
        .filter_map(|e| {
            let d = e.path();
            let path = std::fs::read_link(d.join("block")).ok()?;
            let name = path.file_name().map_or_else(
                || e.file_name().to_string_lossy()[4..].to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let slot = attr_num(&d, "slot");
            let state = attr(&d, "state").unwrap_or_default();
            Some(Member { name, path, slot, state })
        })
        .collect();
    out.sort_by_key(|m| (m.slot.is_none(), m.slot, m.name.clone()));
    out
}

/// Reads the array at `m`; `None` if its `array_state` cannot be read.
fn read_info(m: &Mounted) -> Option<ArrayInfo> {
    let md = m.dir.join("md");
    let array_state = attr(&md, "array_state").ok()?;
    let sync = attr(&md, "sync_action").ok().map(|action| SyncInfo {
        completed: attr(&md, "sync_completed").ok().and_then(|c| parse_completed(&c)),
        speed: speed_kib(&md),
        action,
    });
    Some(ArrayInfo {
        dir: m.dir.clone(),
        name: m.name.clone(),
        level: attr(&md, "level").unwrap_or_default(),
        metadata: attr(&md, "metadata_version").unwrap_or_default(),
        raid_disks: attr_num(&md, "raid_disks").unwrap_or(0),
        chunk: attr_num(&md, "chunk_size").unwrap_or(0),
        layout: attr_num(&md, "layout").unwrap_or(0),
        size_kib: std::fs::metadata(m.dir.join("data")).map_or(0, |d| d.len() >> 10),
        degraded: attr_num(&md, "degraded"),
        members: members(&md),
        sync,
        mismatch_cnt: attr_num(&md, "mismatch_cnt"),
        resync_start: attr(&md, "resync_start").ok(),
        array_state,
    })
}

impl ArrayInfo {
    fn active(&self) -> bool {
        !matches!(self.array_state.as_str(), "inactive" | "clear")
    }

    /// md's `[UU_U]` and the number of members in service.
    fn slot_map(&self) -> (String, u64) {
        let map: String = (0..self.raid_disks)
            .map(|s| {
                let up = self.members.iter().any(|m| m.slot == Some(s) && m.in_sync() && !m.faulty());
                if up {
                    'U'
                } else {
                    '_'
                }
            })
            .collect();
        let up = map.chars().filter(|&c| c == 'U').count() as u64;
        let working = self.degraded.map_or(up, |d| self.raid_disks.saturating_sub(d));
        (map, working)
    }

    /// What the personality's `status` prints after `super ...`.
    fn level_status(&self) -> String {
        let ck = self.chunk / 1024;
        let mut s = match self.level.as_str() {
            "raid0" => format!(" {ck}k chunks"),
            "linear" => format!(" {ck}k rounding"),
            "raid4" | "raid5" | "raid6" => {
                format!(" level {}, {ck}k chunk, algorithm {}", &self.level[4..], self.layout)
            }
            "raid10" => {
                let (near, far, offset) =
                    (self.layout & 0xff, (self.layout >> 8) & 0xff, self.layout & 0x10000);
                let mut s = format!(" {ck}K chunks");
                if near > 1 {
                    s.push_str(&format!(" {near} near-copies"));
                }
                if far > 1 {
                    let kind = if offset != 0 { "offset" } else { "far" };
                    s.push_str(&format!(" {far} {kind}-copies"));
                }
                s
            }
            _ => String::new(),
        };
        if self.sync.is_some() {
            let (map, working) = self.slot_map();
            s.push_str(&format!(" [{}/{working}] [{map}]", self.raid_disks));
        }
        s
    }

    /// The array's lines in /proc/mdstat's format.
    fn mdstat(&self) -> String {
        let mut t = format!("{} : ", self.dir.display());
        t.push_str(match self.array_state.as_str() {
            "inactive" | "clear" => "inactive",
            "readonly" => "active (read-only)",
            "read-auto" => "active (auto-read-only)",
            // Lost more members than the level tolerates: no writes.
            "broken" => "active (broken, FAILED)",
            _ => "active",
        });
        if self.active() && !self.level.is_empty() {
            t.push_str(&format!(" {}", self.level));
        }
        for m in &self.members {
            match m.slot {
                Some(s) => t.push_str(&format!(" {}[{s}]", m.name)),
                None => t.push_str(&format!(" {}[-]", m.name)),
            }
            if m.faulty() {
                t.push_str("(F)");
            } else if m.slot.is_none() {
                t.push_str("(S)");
            }
        }
        let sup = match self.metadata.as_str() {
            "none" => "non-persistent".to_string(),
            v => v.to_string(),
        };
        t.push_str(&format!("\n      {} blocks super {sup}", self.size_kib));
        if self.active() {
            t.push_str(&self.level_status());
        }
        t.push_str("\n      ");
        if let Some(s) = &self.sync {
            match s.completed {
                Some((done, total)) if is_running(&s.action) => {
                    let pm = per_milli(done, total);
                    let x = (pm / 50) as usize;
                    t.push_str(&format!(
                        "[{}>{}]  {} ={:3}.{}% ({}/{}) {}\n      ",
                        "=".repeat(x),
                        ".".repeat(20 - x.min(20)),
                        mdstat_word(&s.action),
                        pm / 10,
                        pm % 10,
                        done / 2,
                        total / 2,
                        finish_speed(done, total, s.speed)
                    ));
                }
                _ if self.resync_start.as_deref().is_some_and(|r| r != "none") => {
                    t.push_str("\tresync=PENDING\n      ");
                }
                _ => {}
            }
        }
        t.push('\n');
        t
    }

    fn json(&self) -> serde_json::Value {
        let members: Vec<serde_json::Value> = self
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "device": m.path.display().to_string(),
                    "slot": m.slot,
                    "state": m.state,
                    "faulty": m.faulty(),
                })
            })
            .collect();
        let sync = self.sync.as_ref().map(|s| {
            let running = is_running(&s.action);
            serde_json::json!({
                "action": s.action,
                "done": s.completed.filter(|_| running).map(|c| c.0),
                "total": s.completed.filter(|_| running).map(|c| c.1),
                "percent": s.completed.filter(|_| running).map(|(d, t)| per_milli(d, t) as f64 / 10.0),
                "speed": s.speed.filter(|_| running),
            })
        });
        let (map, working) = self.slot_map();
        serde_json::json!({
            "dir": self.dir.display().to_string(),
            "name": self.name,
            "level": self.level,
            "state": if self.active() { "active" } else { "inactive" },
            "array_state": self.array_state,
            "readonly": matches!(self.array_state.as_str(), "readonly" | "read-auto"),
            "metadata_version": self.metadata,
            "size_kib": self.size_kib,
            "raid_disks": self.raid_disks,
            "working_disks": working,
            "slots": map,
            "degraded": self.degraded,
            "chunk_size": self.chunk,
            "layout": self.layout,
            "members": members,
            "sync": sync,
            "mismatch_cnt": self.mismatch_cnt,
            "resync_start": self.resync_start,
        })
    }
}

/// Runs `umd status`.
pub fn status(json: bool) -> CmdResult {
    let arrays: Vec<ArrayInfo> = umd_mounts().iter().filter_map(read_info).collect();
    let mut out = std::io::stdout().lock();
    if json {
        for a in &arrays {
            writeln!(out, "{}", a.json())?;
        }
        return Ok(());
    }
    let mut levels: Vec<&str> = Vec::new();
    for a in arrays.iter().filter(|a| a.active() && !a.level.is_empty()) {
        if !levels.contains(&a.level.as_str()) {
            levels.push(&a.level);
        }
    }
    let mut text = String::from("Personalities : ");
    for l in &levels {
        text.push_str(&format!("[{l}] "));
    }
    text.push('\n');
    for a in &arrays {
        text.push_str(&a.mdstat());
    }
    text.push_str("unused devices: <none>\n");
    out.write_all(text.as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Waiting for a run.

/// How a watched run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finished,
    /// Stopped before its end (`idle`/`frozen` stored, or a member
    /// failed); the last progress seen.
    Interrupted {
        done: u64,
        total: u64,
    },
}

/// A run that was watched.
struct Outcome {
    action: String,
    end: End,
}

/// What was seen of the run being watched.
struct Seen {
    action: String,
    /// Last `(done, total)` and when it was read.
    last: Option<(u64, u64, Instant)>,
    /// First `(done, when)`: the rate we saw.
    first: Option<(u64, Instant)>,
    reached_end: bool,
    speed: u64,
}

impl Seen {
    fn new(action: &str) -> Seen {
        Seen { action: action.to_string(), last: None, first: None, reached_end: false, speed: 0 }
    }

    /// Sectors per second: md's speed, or what we saw, whichever is higher.
    fn rate(&self) -> f64 {
        let md = self.speed as f64 * 2.0;
        let ours = match (self.first, self.last) {
            (Some((d0, t0)), Some((d1, _, t1))) if t1 > t0 && d1 > d0 => {
                (d1 - d0) as f64 / (t1 - t0).as_secs_f64()
            }
            _ => 0.0,
        };
        md.max(ours)
    }

    /// Seconds the run still needs, as far as we can tell.
    fn left(&self) -> Option<f64> {
        let (d, t, _) = self.last?;
        let r = self.rate();
        (r > 0.0).then(|| t.saturating_sub(d) as f64 / r)
    }

    /// Whether the run reached its end, judged when it was seen ending at
    /// `ended` (see the module doc).
    fn end(&self, md: &Path, ended: Instant) -> End {
        let Some((done, total, at)) = self.last else { return End::Finished };
        if self.reached_end || done >= total {
            return End::Finished;
        }
        if self.action == "recover" {
            return if recovering(md) { End::Interrupted { done, total } } else { End::Finished };
        }
        if self.action == "resync" {
            return match attr(md, "resync_start").as_deref() {
                Ok("none") => End::Finished,
                _ => End::Interrupted { done, total },
            };
        }
        let rate = self.rate();
        if rate <= 0.0 {
            return End::Finished;
        }
        let since = ended.saturating_duration_since(at).as_secs_f64();
        if total.saturating_sub(done) as f64 <= rate * (since * 1.5 + 0.1) {
            End::Finished
        } else {
            End::Interrupted { done, total }
        }
    }
}

/// Prints progress: a bar on a terminal, else a line every 5 s.
struct Reporter {
    dir: PathBuf,
    bar: Progress,
    last_line: Option<Instant>,
}

impl Reporter {
    fn new(dir: &Path) -> Reporter {
        Reporter { dir: dir.to_path_buf(), bar: Progress::new("", 0), last_line: None }
    }

    fn show(&mut self, action: &str, done: u64, total: u64, speed: u64) {
        if self.bar.enabled() {
            let label = format!("umd: {}: {}", self.dir.display(), mdstat_word(action));
            self.bar.update_at(&label, done * 512, total * 512, speed as f64 * 1024.0);
            return;
        }
        if self.last_line.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return;
        }
        self.last_line = Some(Instant::now());
        let pm = per_milli(done, total);
        eprintln!(
            "umd: {}: {} {}.{}% ({}/{}K) {}",
            self.dir.display(),
            mdstat_word(action),
            pm / 10,
            pm % 10,
            done / 2,
            total / 2,
            finish_speed(done, total, Some(speed))
        );
    }

    fn finish(&mut self) {
        self.bar.finish();
    }
}

/// `sync_action` and `sync_completed` of the array at `dir`, held open for
/// polling.
struct Watch {
    /// DIR as the user gave it (for messages).
    shown: PathBuf,
    /// DIR, absolute.
    dir: PathBuf,
    md: PathBuf,
    action: File,
    completed: File,
}

/// Whether the array at `dir` has stopped (unmounted, or its attributes
/// gone or `inactive`).
fn gone(dir: &Path) -> bool {
    !is_umd_mount(dir)
        || attr(&dir.join("md"), "array_state").map_or(true, |s| matches!(s.as_str(), "inactive" | "clear"))
}

/// Waits up to `limit` for the array at `dir` to stop: whether it did.
fn stops_within(dir: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if gone(dir) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stopped(dir: &Path) -> CliError {
    CliError(format!("{}: the array stopped while waiting", dir.display()))
}

/// Waits for `fd` to notify (`POLLPRI`) or `timeout`; whether it notified.
fn poll_pri(fds: &[&File], timeout: Duration) -> bool {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLPRI | libc::POLLERR, revents: 0 })
        .collect();
    // SAFETY: `p` holds valid pollfds for the duration of the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout.as_millis() as i32) };
    r > 0 && p.iter().any(|p| p.revents & libc::POLLPRI != 0)
}

impl Watch {
    /// Opens the attributes of the array at `dir` (from [`target`]); `None`
    /// for a level without redundancy (no `sync_action`). Their current
    /// values are read, so that a later notification means a change.
    fn open(shown: &Path, dir: &Path, md: &Path) -> Result<Option<Watch>, CliError> {
        let open = |name: &str| File::open(md.join(name));
        let action = match open("sync_action") {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(CliError(format!("{}/sync_action: {e}", md.display()))),
        };
        let completed =
            open("sync_completed").map_err(|e| CliError(format!("{}/sync_completed: {e}", md.display())))?;
        let w = Watch {
            shown: shown.to_path_buf(),
            dir: dir.to_path_buf(),
            md: md.to_path_buf(),
            action,
            completed,
        };
        w.read_action()?;
        w.read_completed()?;
        Ok(Some(w))
    }

    fn read_action(&self) -> Result<String, CliError> {
        read_open(&self.action).map_err(|e| self.read_error("sync_action", e))
    }

    fn read_completed(&self) -> Result<Option<(u64, u64)>, CliError> {
        read_open(&self.completed)
            .map(|s| parse_completed(&s))
            .map_err(|e| self.read_error("sync_completed", e))
    }

    fn read_error(&self, name: &str, e: std::io::Error) -> CliError {
        if gone(&self.dir) {
            stopped(&self.shown)
        } else {
            CliError(format!("{}/{name}: {e}", self.md.display()))
        }
    }

    /// Waits while a run goes on, showing its progress; returns how it
    /// ended, or `None` if nothing ran. `expect`: a run that should start
    /// (a request just stored, `ours`, or one md starts by itself) —
    /// waited for up to 10 s (then an error if `ours`, else nothing ran);
    /// it may also have run and ended already, which `sync_completed`'s
    /// notification tells.
    fn wait(&self, expect: Option<&str>, ours: bool) -> Result<Option<Outcome>, CliError> {
        let begin = Instant::now();
        let mut rep = Reporter::new(&self.shown);
        let mut seen: Option<Seen> = None;
        let r = loop {
            let action = self.read_action()?;
            let now = Instant::now();
            if !is_running(&action) {
                if let Some(s) = &seen {
                    break Ok(Some(Outcome { action: s.action.clone(), end: s.end(&self.md, now) }));
                }
                let Some(want) = expect else { break Ok(None) };
                if action == "frozen" {
                    break Ok(None);
                }
                let done_already = match want {
                    "resync" => attr(&self.md, "resync_start").is_ok_and(|r| r == "none"),
                    "recover" => !recovering(&self.md),
                    _ => false,
                };
                if done_already {
                    break Ok(Some(Outcome { action: want.to_string(), end: End::Finished }));
                }
                // A run started (and ended) since we looked?
                if poll_pri(&[&self.completed], Duration::ZERO) {
                    if is_running(&self.read_action()?) {
                        continue;
                    }
                    break Ok(Some(Outcome { action: want.to_string(), end: End::Finished }));
                }
                if begin.elapsed() > Duration::from_secs(10) {
                    if !ours {
                        break Ok(None);
                    }
                    break Err(CliError(format!(
                        "{}: the {want} did not start within 10 s (sync_action still reads {action})",
                        self.shown.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if let Some(s) = &seen {
                if s.action != action {
                    // The run we watched ended and another began.
                    if expect.is_some_and(|w| w == s.action) {
                        break Ok(Some(Outcome { action: s.action.clone(), end: s.end(&self.md, now) }));
                    }
                    seen = None;
                }
            }
            let s = seen.get_or_insert_with(|| Seen::new(&action));
            if let Some((done, total)) = self.read_completed()? {
                let at = Instant::now();
                s.last = Some((done, total, at));
                if s.first.is_none() {
                    s.first = Some((done, at));
                }
                s.reached_end |= done >= total;
                s.speed = speed_kib(&self.md).unwrap_or(s.speed);
                rep.show(&action, done, total, s.speed);
            }
            let step = if s.left().is_some_and(|l| l < 1.5) { 50 } else { 250 };
            poll_pri(&[&self.action, &self.completed], Duration::from_millis(step));
        };
        rep.finish();
        let r = r?;
        // A run cut short may be the array stopping: say so.
        if let Some(Outcome { end: End::Interrupted { .. }, .. }) = &r {
            if stops_within(&self.dir, Duration::from_secs(1)) {
                return Err(stopped(&self.shown));
            }
        }
        Ok(r)
    }
}

/// `done/total` as a percentage with one decimal.
fn percent(done: u64, total: u64) -> String {
    let pm = per_milli(done, total);
    format!("{}.{}%", pm / 10, pm % 10)
}

/// Whether a member in a slot is not in sync yet (md shows it as
/// `spare`): md recovers it.
fn recovering(md: &Path) -> bool {
    members(md).iter().any(|m| m.slot.is_some() && m.state.split(',').any(|w| w == "spare"))
}

/// The run md starts by itself on the array at `md` when idle (md's
/// `md_check_recovery`): a recovery of members not in sync, else the
/// resync of a dirty array (`resync=PENDING`); none on a frozen or
/// read-only array.
fn due(md: &Path) -> Option<&'static str> {
    let state = attr(md, "array_state").unwrap_or_default();
    if matches!(state.as_str(), "readonly" | "read-auto" | "inactive" | "clear")
        || attr(md, "sync_action").is_ok_and(|a| a == "frozen")
    {
        return None;
    }
    if recovering(md) {
        return Some("recover");
    }
    let dirty = attr(md, "resync_start").is_ok_and(|r| r != "none");
    (dirty && attr_num::<u64>(md, "degraded").unwrap_or(0) == 0).then_some("resync")
}

/// Runs `umd wait DIR`.
pub fn wait(dir: &Path) -> CmdResult {
    let (abs, md) = target(dir)?;
    let shown = dir.display();
    let Some(w) = Watch::open(dir, &abs, &md)? else {
        let level = attr(&md, "level").unwrap_or_default();
        println!("umd: {shown}: nothing to wait for ({level} has no redundancy)");
        return Ok(());
    };
    let report = |o: &Outcome| match o {
        Outcome { action, end: End::Finished } => {
            if matches!(action.as_str(), "check" | "repair") {
                let n = attr(&md, "mismatch_cnt").unwrap_or_default();
                println!("umd: {shown}: {action} finished: mismatch_cnt {n}");
            } else {
                println!("umd: {shown}: {} finished", mdstat_word(action));
            }
        }
        Outcome { action, end: End::Interrupted { done, total } } => {
            let a = attr(&md, "sync_action").unwrap_or_default();
            println!(
                "umd: {shown}: {} interrupted at {} (sync_action {a})",
                mdstat_word(action),
                percent(*done, *total)
            );
        }
    };
    let Some(first) = w.wait(due(&md), false)? else {
        let a = attr(&md, "sync_action").unwrap_or_default();
        println!("umd: {shown}: nothing to wait for (sync_action {a})");
        return Ok(());
    };
    report(&first);
    // Runs md starts by itself follow one another (a recovery, then a
    // resync): wait for the next one that is due.
    if first.end == End::Finished && due(&md).is_some() {
        if let Some(next) = w.wait(due(&md), false)? {
            report(&next);
        }
    }
    Ok(())
}

/// Runs `umd check DIR [--repair] [--no-wait]`.
pub fn check(dir: &Path, repair: bool, no_wait: bool) -> CmdResult {
    let word = if repair { "repair" } else { "check" };
    let (abs, md) = target(dir)?;
    let shown = dir.display();
    let Some(w) = Watch::open(dir, &abs, &md)? else {
        let level = attr(&md, "level").unwrap_or_default();
        return Err(CliError(format!("{shown}: {level} has no redundancy: nothing to {word}")));
    };
    let state = attr(&md, "array_state").unwrap_or_default();
    let readonly =
        || CliError(format!("{shown}: the array is read-only (assembled with --readonly): cannot {word} it"));
    if matches!(state.as_str(), "readonly" | "read-auto") {
        return Err(readonly());
    }
    if let Some(n) = attr_num::<u64>(&md, "degraded").filter(|&n| n > 0) {
        return Err(CliError(format!(
            "{shown}: the array is degraded ({n} member{} missing): a {word} needs every member",
            if n == 1 { "" } else { "s" }
        )));
    }
    let stored = std::fs::OpenOptions::new()
        .write(true)
        .open(md.join("sync_action"))
        .and_then(|mut f| f.write_all(word.as_bytes()));
    if let Err(e) = stored {
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => {
                let now = attr(&md, "sync_action").unwrap_or_default();
                if is_running(&now) {
                    CliError(format!(
                        "{shown}: cannot start a {word}: a {now} is running (wait for it with `umd wait {shown}`, \
                         or interrupt it: echo idle > {shown}/md/sync_action)"
                    ))
                } else {
                    CliError(format!("{shown}: cannot start a {word}: another sync is about to start"))
                }
            }
            Some(libc::EROFS) => readonly(),
            _ if gone(&abs) => stopped(dir),
            _ => CliError(format!("{shown}: storing {word} into md/sync_action: {e}")),
        });
    }
    if no_wait {
        println!("umd: {shown}: {word} started (follow it with `umd status`, wait with `umd wait {shown}`)");
        return Ok(());
    }
    let mismatches = || attr(&md, "mismatch_cnt").unwrap_or_default();
    match w.wait(Some(word), true)? {
        Some(Outcome { end: End::Finished, .. }) => {
            println!("umd: {shown}: {word} finished: mismatch_cnt {}", mismatches());
            Ok(())
        }
        Some(Outcome { end: End::Interrupted { done, total }, .. }) => Err(CliError(format!(
            "{shown}: {word} interrupted at {} ({}/{}K; sync_action {}): mismatch_cnt {} so far",
            percent(done, total),
            done / 2,
            total / 2,
            attr(&md, "sync_action").unwrap_or_default(),
            mismatches()
        ))),
        None => Err(CliError(format!("{shown}: the {word} did not start"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_unescape() {
        assert_eq!(unescape(r"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(unescape(r"a\134b\011"), b"a\\b\t");
        assert_eq!(unescape(r"x\04"), b"x\\04");
    }

    #[test]
    fn completed_and_percent() {
        assert_eq!(parse_completed("6720 / 24576"), Some((6720, 24576)));
        assert_eq!(parse_completed("none"), None);
        assert_eq!(per_milli(0, 100), 0);
        assert_eq!(per_milli(273, 1000), 272);
        assert_eq!(percent(50, 99), "50.0%");
        assert_eq!(finish_speed(0, 24000, Some(100)), "finish=2.0min speed=100K/sec");
        assert_eq!(finish_speed(0, 24000, None), "speed=0K/sec");
    }

    fn info(level: &str, sync: Option<SyncInfo>) -> ArrayInfo {
        ArrayInfo {
            dir: PathBuf::from("/mnt/a"),
            name: "h:a".into(),
            level: level.into(),
            array_state: "clean".into(),
            metadata: "external:1.2".into(),
            raid_disks: 4,
            chunk: 65536,
            layout: if level == "raid10" { 0x102 } else { 2 },
            size_kib: 73728,
            degraded: Some(1),
            members: (0..4)
                .filter(|&s| s != 2)
                .map(|s| Member {
                    name: format!("m{s}.img"),
                    path: PathBuf::from(format!("/x/m{s}.img")),
                    slot: Some(s),
                    state: if s == 3 { "faulty".into() } else { "in_sync".into() },
                })
                .collect(),
            sync,
            mismatch_cnt: Some(0),
            resync_start: Some("none".into()),
        }
    }

    #[test]
    fn mdstat_lines() {
        let s = SyncInfo { action: "resync".into(), completed: Some((13440, 49152)), speed: Some(20000) };
        let a = info("raid5", Some(s));
        assert_eq!(
            a.mdstat(),
            "/mnt/a : active raid5 m0.img[0] m1.img[1] m3.img[3](F)\n      73728 blocks super external:1.2 \
             level 5, 64k chunk, algorithm 2 [4/3] [UU__]\n      [=====>...............]  resync = 27.3% \
             (6720/24576) finish=0.0min speed=20000K/sec\n      \n"
        );
        let a = info("raid10", Some(SyncInfo { action: "idle".into(), completed: None, speed: None }));
        assert!(a.mdstat().contains(" 64K chunks 2 near-copies [4/3] [UU__]\n      \n"), "{}", a.mdstat());
        let a = info("raid0", None);
        assert!(a.mdstat().contains("blocks super external:1.2 64k chunks\n      \n"), "{}", a.mdstat());
    }
}
