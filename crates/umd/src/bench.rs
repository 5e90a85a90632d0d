//! `umd bench NAME`: performance figures measured side by side with their
//! baselines in one run (see `shared/docs/benchmarks.md`).
//!
//! * `extract`: `umd extract -o /dev/null` of a 4-member raid5 with 256 MiB
//!   members on tmpfs, against `cat` of the same four members to /dev/null.
//!   Both run as child processes, alternately, several times; the figure is
//!   the ratio of the medians.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use md::synth::{self, Spec};
use md::Level;

use crate::{CliError, CmdResult};

/// Runs benchmark `name`.
pub fn run(name: &str, json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    match name {
        "extract" => extract(json, quick, full, dir),
        other => Err(CliError(format!("unknown benchmark {other:?} (available: extract)"))),
    }
}

const TMPFS_MAGIC: i64 = 0x0102_1994;

fn is_tmpfs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs is plain data; the call fills it for a valid C path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == TMPFS_MAGIC
}

/// Removes the scratch directory when dropped, also on error paths.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time_cmd(cmd: &mut Command) -> Result<f64, CliError> {
    let t = Instant::now();
    let st = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| CliError(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    let secs = t.elapsed().as_secs_f64();
    if !st.success() {
        return Err(CliError(format!("{:?} failed: {st}", cmd.get_program())));
    }
    Ok(secs)
}

fn extract(json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    let base = dir.unwrap_or_else(|| PathBuf::from("/dev/shm"));
    if which("cat").is_none() {
        return Err(CliError("baseline tool `cat` not found".into()));
    }
    let on_tmpfs = is_tmpfs(&base);
    let member_mib: u64 = if quick { 64 } else { 256 };
    let rounds = if full {
        7
    } else if quick {
        3
    } else {
        5
    };
    let scratch = Scratch(base.join(format!("umd-bench-extract-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| CliError(format!("{}: {e}", scratch.0.display())))?;
    let paths: Vec<PathBuf> = (0..4).map(|i| scratch.0.join(format!("m{i}.img"))).collect();
    let mut spec = Spec::new(Level::Raid5, 4, member_mib << 20);
    spec.name = "umd:bench".into();
    spec.stamp_now();
    synth::write_array(&spec, &paths, &mut |off, buf| synth::pattern_fill(off, 1, buf))
        .map_err(|e| CliError(format!("building the bench array: {e}")))?;
    let exe = std::env::current_exe().map_err(|e| CliError(format!("current_exe: {e}")))?;
    let (mut t_umd, mut t_cat) = (Vec::new(), Vec::new());
    // One warm-up of each, not counted.
    time_cmd(Command::new("cat").args(&paths))?;
    time_cmd(Command::new(&exe).arg("extract").arg("-o").arg("/dev/null").args(&paths))?;
    for _ in 0..rounds {
        t_cat.push(time_cmd(Command::new("cat").args(&paths))?);
        t_umd.push(time_cmd(Command::new(&exe).arg("extract").arg("-o").arg("/dev/null").args(&paths))?);
    }
    let (mu, mc) = (median(&mut t_umd), median(&mut t_cat));
    let ratio = mu / mc;
    let baseline = format!("cat of the 4 members to /dev/null ({member_mib} MiB each)");
    if json {
        let fig = |figure: &str, value: f64, unit: &str, base: Option<&str>, target: Option<&str>| {
            serde_json::json!({
                "bench": "extract", "figure": figure, "value": (value * 10000.0).round() / 10000.0,
                "unit": unit, "baseline": base, "target": target,
            })
        };
        println!("{}", fig("extract_vs_cat_time_ratio", ratio, "ratio", Some(&baseline), Some("<= 1.25")));
        println!("{}", fig("extract_s", mu, "s", None, None));
        println!("{}", fig("cat_s", mc, "s", None, None));
    } else {
        println!("bench extract: raid5, 4 members x {member_mib} MiB, 512 KiB chunks, in {}", base.display());
        println!("  baseline: {baseline}");
        println!("  rounds: {rounds} (median), umd extract {mu:.3} s, cat {mc:.3} s");
        println!("  extract_vs_cat_time_ratio = {ratio:.3} (target <= 1.25)");
    }
    if !on_tmpfs {
        eprintln!("umd: note: {} is not tmpfs; the extract figure is defined on tmpfs", base.display());
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.exists())
}
