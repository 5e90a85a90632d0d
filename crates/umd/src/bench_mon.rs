//! `umd bench mon`: how long a write that hits a `clean` array waits for the
//! metadata manager (write-pending → every member's superblock written
//! dirty with O_DIRECT and flushed → `active` stored → the write goes on),
//! measured end to end through the FUSE mount, on tmpfs members and on
//! files on the machine's own disk; beside it the same write on an array
//! already `active` (no handshake), and the manager's monitor-thread
//! allocation count.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{figure, percentile};
use crate::{CliError, CmdResult};

/// A running array for the bench; stopped and removed on drop.
struct Bench {
    dir: PathBuf,
    mnt: PathBuf,
    mounted: bool,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umd().arg("stop").arg(&self.mnt).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        crate::mount::forget_run_files(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn umd() -> Command {
    Command::new(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("umd")))
}

pub(crate) fn check(cmd: &mut Command, what: &str) -> Result<String, CliError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| CliError(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(CliError(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn reread(f: &mut std::fs::File, buf: &mut String) -> Result<(), CliError> {
    buf.clear();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_to_string(buf))
        .map_err(|e| CliError(format!("array_state: {e}")))?;
    Ok(())
}

/// Waits (poll on `array_state`) until it reads `want`.
fn wait_for(f: &mut std::fs::File, want: &str, limit: Duration) -> Result<(), CliError> {
    let deadline = Instant::now() + limit;
    let mut s = String::new();
    loop {
        reread(f, &mut s)?;
        if s.trim_end() == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError(format!("array_state stayed {:?}, never {want}", s.trim_end())));
        }
        let mut p = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLPRI | libc::POLLERR, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, 50) };
    }
}

/// Per cycle: wait for `clean`, time a 4 KiB write (the handshake), then
/// time a second one (array active: no handshake). Returns (handshake µs,
/// active µs, monitor allocations).
fn cycles(parent: &Path, tag: &str, n: usize) -> Result<(Vec<f64>, Vec<f64>, u64), CliError> {
    let dir = parent.join(format!("umd-bench-mon-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
    let mut b = Bench { mnt: dir.join("mnt"), dir: dir.clone(), mounted: false };
    let members: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("m{i}.img"))).collect();
    check(
        umd()
            .args(["create", "-l", "5", "-n", "4", "-c", "64", "-z", "16M", "--assume-clean"])
            .args(&members),
        "create",
    )?;
    std::fs::create_dir_all(&b.mnt).map_err(|e| CliError(format!("{}: {e}", b.mnt.display())))?;
    check(umd().arg("assemble").arg("--mount").arg(&b.mnt).arg("--daemon").args(&members), "assemble")?;
    b.mounted = true;
    std::fs::write(b.mnt.join("md/safe_mode_delay"), "0.002")
        .map_err(|e| CliError(format!("safe_mode_delay: {e}")))?;
    let mut state = std::fs::File::open(b.mnt.join("md/array_state"))
        .map_err(|e| CliError(format!("array_state: {e}")))?;
    let data = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.mnt.join("data"))
        .map_err(|e| CliError(format!("data: {e}")))?;
    let buf = vec![0xa5u8; 4096];
    let (mut hs, mut act) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        wait_for(&mut state, "clean", Duration::from_secs(10))?;
        let off = (i as u64 * 7919 % 4096) * 4096;
        let t = Instant::now();
        data.write_all_at(&buf, off).map_err(|e| CliError(format!("write: {e}")))?;
        hs.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        data.write_all_at(&buf, off + 4096).map_err(|e| CliError(format!("write: {e}")))?;
        act.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let status = check(umd().arg("mon").arg("--status").arg(&b.mnt), "umd mon --status")?;
    let allocs = status
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("monitor_allocs="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CliError(format!("umd mon --status said {status:?}")))?;
    let acks: usize = status
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("acks="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if acks < n {
        return Err(CliError(format!(
            "{acks} acknowledgements for {n} cycles: the array did not go clean between them"
        )));
    }
    drop(data);
    drop(state);
    Ok((hs, act, allocs))
}

/// Runs `umd bench mon`.
pub fn run(json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    let n = if quick {
        200
    } else if full {
        3000
    } else {
        1000
    };
    let tmpfs = PathBuf::from("/dev/shm");
    let disk = dir.unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let (mut t_hs, mut t_act, t_allocs) = cycles(&tmpfs, "tmpfs", n)?;
    let (mut d_hs, mut d_act, d_allocs) = cycles(&disk, "disk", n)?;
    let base = |what: &str| {
        format!("{n} cycles, 4 KiB write through the FUSE mount onto a clean 4-member raid5 ({what})")
    };
    let figures = [
        ("ack_p50_us_tmpfs", percentile(&mut t_hs, 0.5), "us", Some(base("tmpfs members")), None),
        ("ack_p99_us_tmpfs", percentile(&mut t_hs, 0.99), "us", Some(base("tmpfs members")), Some("<= 2000")),
        (
            "ack_p50_us_disk",
            percentile(&mut d_hs, 0.5),
            "us",
            Some(base(&format!("members in {}", disk.display()))),
            None,
        ),
        (
            "ack_p99_us_disk",
            percentile(&mut d_hs, 0.99),
            "us",
            Some(base(&format!("members in {}", disk.display()))),
            None,
        ),
        (
            "active_write_p50_us_tmpfs",
            percentile(&mut t_act, 0.5),
            "us",
            Some("the same write on the array already active (no handshake)".to_string()),
            None,
        ),
        (
            "active_write_p50_us_disk",
            percentile(&mut d_act, 0.5),
            "us",
            Some("the same write on the array already active (no handshake)".to_string()),
            None,
        ),
        (
            "monitor_allocs",
            (t_allocs + d_allocs) as f64,
            "count",
            Some("allocations by the monitor thread of umd mon, both runs".to_string()),
            Some("== 0"),
        ),
    ];
    for (name, value, unit, baseline, target) in figures {
        if json {
            println!("{}", figure("mon", name, value, unit, baseline.as_deref(), target));
        } else {
            let t = target.map(|t| format!("; target {t}")).unwrap_or_default();
            println!("  {name:28} {value:10.1} {unit}{t}");
        }
    }
    Ok(())
}
