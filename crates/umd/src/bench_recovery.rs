//! `umd bench recovery`: md's recovery (rebuilding a failed member onto a
//! fresh one) and the time a write waits for the metadata manager when a
//! member fails under it, both end to end through real mounts (`umd
//! assemble --daemon`, its `umd mon`), each beside its baseline.
//!
//! * Recovery, on the machine's own disk (default /var/tmp, never tmpfs):
//!   a 4-member raid5 of image files (512 KiB chunks, 512 MiB members;
//!   `--quick` 128 MiB, `--full` 1 GiB) made by `umd create
//!   --assume-clean`, assembled read-write, filled through `DIR/data`
//!   (pseudo-random bytes, fsync'd, then the members' pages dropped from
//!   the kernel's cache, so recovery reads the survivors from the disk);
//!   `umd fail` of one member, wait until the manager removed it, then
//!   `md/sync_speed_max` set to 2,000,000,000 KiB/s (md's limit is not
//!   what is measured) and `umd add` of a fresh (sparse) image file of the
//!   same size; timed from the add until `md/sync_action` is `idle` with
//!   `md/degraded` 0 (md flushes the rebuilt member before it calls it
//!   in sync, so the time includes making it durable). Baseline in the
//!   same run: one member's data bytes written sequentially in 1 MiB
//!   writes into a fresh file in the same directory, then `fdatasync`. A
//!   second ratio adds an `fdatasync` of the rebuilt member after the end
//!   (≈ nothing left to flush). A third baseline is what the disk allows
//!   this recovery ([`ceiling`]): the same member traffic (three members
//!   read, one written) with no RAID in between; on one disk shared by
//!   every member that, not one member's write, bounds a recovery.
//! * Failure resume, on tmpfs (/dev/shm): per failure a fresh 4 × 8 MiB
//!   raid5 (64 KiB chunks) assembled with `UMD_TEST_HOOKS=1` and
//!   `--member-faults LAST 'disarmed,write:fail'`; a write makes it active,
//!   the same full-stripe write (192 KiB at offset 0) is timed on the
//!   healthy active array (the baseline), the faults are armed
//!   (`DIR/umd-test-hook`), and the same write is timed again: it hits the
//!   failing member (row 0's parity) and returns only after the manager
//!   recorded the failure in the survivors' superblocks. One array at a
//!   time (assembled, measured, stopped): arrays started side by side on
//!   two vCPUs measured their own start-up in the tail.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::bench::{figure, is_tmpfs, percentile};
use crate::bench_mon::{check, umd};
use crate::{CliError, CmdResult};

/// Scratch directory and the mounts in it; on drop every mount is stopped
/// and the directory removed (also on error paths).
struct Scratch {
    dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Scratch {
    fn new(dir: PathBuf) -> Result<Scratch, CliError> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
        Ok(Scratch { dir, mounts: Vec::new() })
    }

    /// Stops every mount (concurrently) and forgets them.
    fn stop_all(&mut self) {
        let children: Vec<_> = self
            .mounts
            .drain(..)
            .filter_map(|m| {
                umd()
                    .arg("stop")
                    .arg(&m)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        for mut c in children {
            let _ = c.wait();
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.stop_all();
        crate::mount::forget_run_files(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CliError {
    move |e| CliError(format!("{what}: {e}"))
}

/// An attribute opened once and re-read from offset 0.
struct Attr {
    f: File,
    buf: String,
    name: &'static str,
}

impl Attr {
    fn open(md: &Path, name: &'static str) -> Result<Attr, CliError> {
        let f = File::open(md.join(name)).map_err(err(name))?;
        Ok(Attr { f, buf: String::new(), name })
    }

    fn read(&mut self) -> Result<&str, CliError> {
        self.buf.clear();
        self.f
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.f.read_to_string(&mut self.buf))
            .map_err(err(self.name))?;
        Ok(self.buf.trim_end())
    }
}

fn store(path: &Path, word: &str) -> Result<(), CliError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(word.as_bytes()))
        .map_err(err(format!("{} <- {word}", path.display())))
}

/// A 4-member raid5 of image files in `dir` (created, not assembled).
fn create(dir: &Path, tag: &str, chunk_kib: u64, member_mib: u64) -> Result<Vec<PathBuf>, CliError> {
    let members: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("{tag}{i}.img"))).collect();
    check(
        umd()
            .args(["create", "-l", "5", "-n", "4", "--assume-clean"])
            .arg("-c")
            .arg(chunk_kib.to_string())
            .arg("-z")
            .arg(format!("{member_mib}M"))
            .args(&members),
        "umd create",
    )?;
    Ok(members)
}

/// Sequential write of `bytes` in 1 MiB writes into a fresh file, then
/// fdatasync: seconds. The file stays (removed with the scratch
/// directory, so its deletion does not overlap the recovery).
fn seqwrite(path: &Path, bytes: u64, buf: &[u8]) -> Result<f64, CliError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(err(path.display()))?;
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).map_err(err(path.display()))?;
        left -= n as u64;
    }
    f.sync_data().map_err(err(path.display()))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Pseudo-random bytes (xorshift64*), so nothing on disk is a hole or zeros.
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// What the recovery run measured.
struct Recovery {
    member_bytes: u64,
    /// Add → idle with nothing degraded.
    secs: f64,
    /// Add → `sync_action` first seen not `idle` (None: never seen).
    start_secs: Option<f64>,
    /// fdatasync of the rebuilt member after that.
    sync_secs: f64,
    baseline_secs: f64,
    /// The same member traffic with no RAID in between (see [`ceiling`]).
    ceiling_secs: f64,
}

fn recovery(parent: &Path, member_mib: u64) -> Result<Recovery, CliError> {
    let mut s = Scratch::new(parent.join(format!("umd-bench-recovery-{}", std::process::id())))?;
    let dir = s.dir.clone();
    let members = create(&dir, "m", 512, member_mib)?;
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(err(mnt.display()))?;
    check(umd().arg("assemble").arg("--mount").arg(&mnt).arg("--daemon").args(&members), "umd assemble")?;
    s.mounts.push(mnt.clone());
    let md = mnt.join("md");
    let member_bytes = std::fs::read_to_string(md.join("component_size"))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .ok_or_else(|| CliError("md/component_size unreadable".into()))?
        * 1024;

    // Fill the array in whole rows (3 × 512 KiB), then make it durable and
    // drop the members' pages so that recovery reads them from the disk.
    let row = 3 * 512 * 1024;
    let mut buf = noise(row, 0x9e37_79b9_7f4a_7c15);
    {
        let data = std::fs::OpenOptions::new().write(true).open(mnt.join("data")).map_err(err("data"))?;
        let size = 3 * member_bytes;
        let mut off = 0u64;
        while off < size {
            let n = (size - off).min(row as u64) as usize;
            buf[..8].copy_from_slice(&off.to_le_bytes());
            data.write_all_at(&buf[..n], off).map_err(err("filling DIR/data"))?;
            off += n as u64;
        }
        data.sync_all().map_err(err("fsync of DIR/data"))?;
    }
    for m in &members {
        let f = File::open(m).map_err(err(m.display()))?;
        f.sync_data().map_err(err(m.display()))?;
        // SAFETY: a valid open fd; advice only.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }

    // Fail the last member; the manager records the failure and removes it.
    let failed = &members[3];
    check(umd().arg("fail").arg(&mnt).arg(failed), "umd fail")?;
    let failed_dir = md.join(format!("dev-{}", failed.file_name().unwrap_or_default().to_string_lossy()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while failed_dir.exists() {
        if Instant::now() > deadline {
            return Err(CliError(format!(
                "{}: failed, but still not removed by the metadata manager after 10 s",
                failed.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // Baseline, same directory, same bytes.
    let baseline_secs = seqwrite(&dir.join("baseline.bin"), member_bytes, &noise(1 << 20, 7))?;

    // The fresh member, the same size as the others.
    let fresh = dir.join("n3.img");
    let len = std::fs::metadata(failed).map_err(err(failed.display()))?.len();
    File::create(&fresh).and_then(|f| f.set_len(len)).map_err(err(fresh.display()))?;
    store(&md.join("sync_speed_max"), "2000000000")?;
    let mut action = Attr::open(&md, "sync_action")?;
    let mut degraded = Attr::open(&md, "degraded")?;
    if degraded.read()? != "1" {
        return Err(CliError(format!("md/degraded is {:?} after the failure, not 1", degraded.buf.trim())));
    }
    let t = Instant::now();
    check(umd().arg("add").arg(&mnt).arg(&fresh), "umd add")?;
    let mut start_secs = None;
    let limit = Duration::from_secs(120 + member_mib / 2);
    let secs = loop {
        let a = action.read()?.to_string();
        if a != "idle" && start_secs.is_none() {
            start_secs = Some(t.elapsed().as_secs_f64());
        }
        if a == "idle" && degraded.read()? == "0" {
            break t.elapsed().as_secs_f64();
        }
        if t.elapsed() > limit {
            let done = std::fs::read_to_string(md.join("sync_completed")).unwrap_or_default();
            return Err(CliError(format!(
                "recovery not finished after {} s: sync_action {a:?}, degraded {:?}, sync_completed {:?}",
                limit.as_secs(),
                degraded.read()?,
                done.trim()
            )));
        }
        let mut p =
            libc::pollfd { fd: action.f.as_raw_fd(), events: libc::POLLPRI | libc::POLLERR, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, 5) };
    };
    let t = Instant::now();
    File::open(&fresh).and_then(|f| f.sync_data()).map_err(err(fresh.display()))?;
    let sync_secs = t.elapsed().as_secs_f64();
    drop(action);
    drop(degraded);
    let ceiling_secs = ceiling(&members[..3], &dir.join("ceiling.bin"), member_bytes)?;
    Ok(Recovery { member_bytes, secs, start_secs, sync_secs, baseline_secs, ceiling_secs })
}

/// What the disk allows this recovery: the survivors' data areas read
/// cold (`O_DIRECT`, 2 MiB reads, one thread each) while one member's
/// bytes are written to a fresh file (2 MiB writes, then `fdatasync`), all
/// at once, as a recovery must on one disk: seconds until all are done.
/// Reads whole files (superblock and all: the same bytes within 0.5 %).
fn ceiling(survivors: &[PathBuf], out: &Path, bytes: u64) -> Result<f64, CliError> {
    const IO: usize = 2 << 20;
    for m in survivors {
        let f = File::open(m).map_err(err(m.display()))?;
        // SAFETY: a valid open fd; advice only.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    let t = Instant::now();
    let results: Vec<Result<(), CliError>> = std::thread::scope(|sc| {
        let mut hs = Vec::new();
        for m in survivors {
            hs.push(sc.spawn(move || -> Result<(), CliError> {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(m)
                    .map_err(err(m.display()))?;
                // A page-aligned window of a plain buffer (O_DIRECT's rule).
                let mut v = vec![0u8; IO + 4096];
                let skip = v.as_ptr().align_offset(4096);
                let b = &mut v[skip..skip + IO];
                let mut off = 0u64;
                loop {
                    let n = f.read_at(b, off).map_err(err(m.display()))?;
                    if n == 0 {
                        return Ok(());
                    }
                    off += n as u64;
                }
            }));
        }
        hs.push(sc.spawn(move || -> Result<(), CliError> {
            let data = noise(IO, 3);
            let mut f = File::create(out).map_err(err(out.display()))?;
            let mut left = bytes;
            while left > 0 {
                let n = left.min(IO as u64) as usize;
                f.write_all(&data[..n]).map_err(err(out.display()))?;
                left -= n as u64;
            }
            f.sync_data().map_err(err(out.display()))
        }));
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(CliError("ceiling thread panicked".into()))))
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(secs)
}

/// Per failure: (the failing write, the same write on the healthy active
/// array just before), in ms.
fn failures(n: usize) -> Result<(Vec<f64>, Vec<f64>), CliError> {
    // One array at a time: ten assembled at once put their daemons' and
    // managers' start-up into the measured tail.
    const BATCH: usize = 1;
    const CHUNK: usize = 64 << 10;
    let mut s =
        Scratch::new(PathBuf::from(format!("/dev/shm/umd-bench-recovery-{}-fail", std::process::id())))?;
    let stripe = noise(3 * CHUNK, 11);
    let (mut fail, mut healthy) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut i = 0;
    while i < n {
        let batch: Vec<usize> = (i..n.min(i + BATCH)).collect();
        let mut arrays = Vec::new();
        for &k in &batch {
            let dir = s.dir.join(format!("a{k}"));
            std::fs::create_dir_all(&dir).map_err(err(dir.display()))?;
            let members = create(&dir, "m", 64, 8)?;
            let mnt = dir.join("mnt");
            std::fs::create_dir_all(&mnt).map_err(err(mnt.display()))?;
            check(
                umd()
                    .env("UMD_TEST_HOOKS", "1")
                    .arg("assemble")
                    .arg("--mount")
                    .arg(&mnt)
                    .arg("--daemon")
                    .arg("--member-faults")
                    .arg(&members[3])
                    .arg("disarmed,write:fail")
                    .args(&members),
                "umd assemble",
            )?;
            s.mounts.push(mnt.clone());
            arrays.push(mnt);
        }
        for mnt in &arrays {
            let data = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(mnt.join("data"))
                .map_err(err("data"))?;
            // Makes the array active (the write-pending handshake).
            data.write_all_at(&stripe, 0).map_err(err("write"))?;
            let t = Instant::now();
            data.write_all_at(&stripe, 0).map_err(err("write on the healthy array"))?;
            healthy.push(t.elapsed().as_secs_f64() * 1e3);
            store(&mnt.join("umd-test-hook"), "faults arm")?;
            let t = Instant::now();
            data.write_all_at(&stripe, 0).map_err(err("write hitting the failing member"))?;
            fail.push(t.elapsed().as_secs_f64() * 1e3);
            let deg = std::fs::read_to_string(mnt.join("md/degraded")).unwrap_or_default();
            if deg.trim() != "1" {
                return Err(CliError(format!(
                    "{}: after the write that hit the failing member, md/degraded is {:?}, not 1",
                    mnt.display(),
                    deg.trim()
                )));
            }
        }
        s.stop_all();
        for &k in &batch {
            let _ = std::fs::remove_dir_all(s.dir.join(format!("a{k}")));
        }
        i += batch.len();
    }
    Ok((fail, healthy))
}

/// Runs `umd bench recovery`.
pub fn run(json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    let (member_mib, n) = if quick {
        (128, 20)
    } else if full {
        (1024, 300)
    } else {
        (512, 100)
    };
    let disk = dir.unwrap_or_else(|| PathBuf::from("/var/tmp"));
    if is_tmpfs(&disk) {
        eprintln!(
            "umd: note: {} is tmpfs; the recovery figure is defined on the machine's disk",
            disk.display()
        );
    }
    let (mut fail, mut healthy) = failures(n)?;
    let r = recovery(&disk, member_mib)?;
    let mib = r.member_bytes as f64 / f64::from(1 << 20);
    let rec_bps = r.member_bytes as f64 / r.secs;
    let base_bps = r.member_bytes as f64 / r.baseline_secs;
    let synced_bps = r.member_bytes as f64 / (r.secs + r.sync_secs);
    let ceiling_bps = r.member_bytes as f64 / r.ceiling_secs;
    let ceiling_base = format!(
        "the same member traffic without RAID: the 3 survivors read cold with O_DIRECT while {mib:.0} MiB are \
         written to a fresh file and fdatasync'd, all at once, in {}",
        disk.display()
    );
    let base = format!(
        "sequential write of {mib:.0} MiB (one member's data) in 1 MiB writes + fdatasync, fresh file in {}",
        disk.display()
    );
    let healthy_base = "the same 192 KiB full-stripe write on the healthy active array".to_string();
    let fail_base = format!("{n} failures, 4 x 8 MiB raid5 on tmpfs; baseline: {healthy_base}");
    let figures = [
        ("recovery_ratio", rec_bps / base_bps, "ratio", Some(base.clone()), Some(">= 0.8")),
        ("recovery_mib_s", rec_bps / f64::from(1 << 20), "MiB/s", None, None),
        ("member_seqwrite_gbps", base_bps / 1e9, "GB/s", Some(base.clone()), None),
        (
            "recovery_synced_ratio",
            synced_bps / base_bps,
            "ratio",
            Some(format!("{base}; recovery plus an fdatasync of the rebuilt member")),
            None,
        ),
        (
            "recovery_ceiling_mib_s",
            ceiling_bps / f64::from(1 << 20),
            "MiB/s",
            Some(ceiling_base.clone()),
            None,
        ),
        ("recovery_vs_ceiling_ratio", rec_bps / ceiling_bps, "ratio", Some(ceiling_base.clone()), None),
        (
            "ceiling_vs_seqwrite_ratio",
            ceiling_bps / base_bps,
            "ratio",
            Some(format!(
                "{ceiling_base}; against {base}: the best recovery_ratio this disk allows in this run"
            )),
            None,
        ),
        (
            "recovery_start_ms",
            r.start_secs.unwrap_or(r.secs) * 1e3,
            "ms",
            Some("umd add until md/sync_action left idle".to_string()),
            None,
        ),
        ("failure_resume_p50_ms", percentile(&mut fail, 0.5), "ms", Some(fail_base.clone()), None),
        ("failure_resume_p99_ms", percentile(&mut fail, 0.99), "ms", Some(fail_base), Some("<= 5")),
        ("healthy_write_p50_ms", percentile(&mut healthy, 0.5), "ms", None, None),
        ("healthy_write_p99_ms", percentile(&mut healthy, 0.99), "ms", None, None),
    ];
    if !json {
        println!(
            "bench recovery: raid5 4 x {member_mib} MiB, 512 KiB chunks, filled, in {} ({mib:.0} MiB rebuilt in \
             {:.2} s, baseline {:.2} s, rebuilt member's fdatasync {:.2} s, the same traffic without RAID {:.2} s); \
             {n} member write failures on tmpfs",
            disk.display(),
            r.secs,
            r.baseline_secs,
            r.sync_secs,
            r.ceiling_secs
        );
    }
    for (name, value, unit, baseline, target) in figures {
        if json {
            println!("{}", figure("recovery", name, value, unit, baseline.as_deref(), target));
        } else {
            let t = target.map(|t| format!("; target {t}")).unwrap_or_default();
            println!("  {name:24} {value:10.3} {unit}{t}");
        }
    }
    Ok(())
}
