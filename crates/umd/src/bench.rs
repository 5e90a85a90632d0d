//! `umd bench NAME`: performance figures measured side by side with their
//! baselines in one run (see `shared/docs/benchmarks.md`).
//!
//! * `extract`: `umd extract -o /dev/null` of a 4-member raid5 with 256 MiB
//!   members on tmpfs, against `cat` of the same four members to /dev/null.
//!   Both run as child processes, alternately, several times; the figure is
//!   the ratio of the medians.
//! * `kernfs`: in-process `show` and prealloc `store` (ns/op, allocations
//!   per 10,000 stores, counted by umd's counting global allocator); over
//!   FUSE, `pread` of an open attribute against `pread` of a null file served
//!   by the same daemon; notify→poll wake-up latency over FUSE (p50, p99).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use md::synth::{self, Spec};
use md::Level;

use crate::{CliError, CmdResult};

/// Runs benchmark `name`.
pub fn run(name: &str, json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    match name {
        "extract" => extract(json, quick, full, dir),
        "kernfs" => kernfs_bench(json, quick, full, dir),
        other => Err(CliError(format!("unknown benchmark {other:?} (available: extract, kernfs)"))),
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

/// One JSON figure line.
fn figure(
    bench: &str,
    figure: &str,
    value: f64,
    unit: &str,
    baseline: Option<&str>,
    target: Option<&str>,
) -> String {
    serde_json::json!({
        "bench": bench, "figure": figure, "value": (value * 1000.0).round() / 1000.0,
        "unit": unit, "baseline": baseline, "target": target,
    })
    .to_string()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn kernfs_bench(json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    let iters: u32 = if quick {
        200_000
    } else if full {
        5_000_000
    } else {
        1_000_000
    };
    let inproc = kernfs::bench::run_inprocess_iters(&crate::alloc_count::allocations, iters);
    let fuse = fuse_attr_bench(quick, dir)?;
    let lines = [
        figure("kernfs", "show_ns", inproc.show_ns, "ns", None, Some("<= 100")),
        figure("kernfs", "store_prealloc_ns", inproc.store_prealloc_ns, "ns", None, Some("<= 100")),
        figure(
            "kernfs",
            "store_prealloc_allocs",
            inproc.store_prealloc_allocs as f64,
            "allocs/10000",
            None,
            Some("0"),
        ),
        figure(
            "kernfs",
            "fuse_pread_ratio",
            fuse.ratio,
            "ratio",
            Some("pread of DIR/null (null FUSE file, same daemon)"),
            Some("<= 1.2"),
        ),
        figure("kernfs", "notify_wake_p50_us", fuse.wake_p50_us, "us", None, None),
        figure("kernfs", "notify_wake_p99_us", fuse.wake_p99_us, "us", None, Some("<= 100")),
    ];
    if json {
        for l in lines {
            println!("{l}");
        }
    } else {
        println!(
            "bench kernfs ({iters} in-process iterations; FUSE: {} preads each, {} wake-ups)",
            fuse.preads, fuse.wakes
        );
        println!("  show_ns               {:8.1} (target <= 100)", inproc.show_ns);
        println!("  store_prealloc_ns     {:8.1} (target <= 100)", inproc.store_prealloc_ns);
        println!("  store_prealloc_allocs {:8} per 10,000 stores (target 0)", inproc.store_prealloc_allocs);
        println!(
            "  fuse_pread_ratio      {:8.3} (attribute {:.0} ns / null file {:.0} ns; target <= 1.2)",
            fuse.ratio, fuse.attr_ns, fuse.null_ns
        );
        println!("  notify_wake_p50_us    {:8.1}", fuse.wake_p50_us);
        println!("  notify_wake_p99_us    {:8.1} (target <= 100)", fuse.wake_p99_us);
    }
    Ok(())
}

struct FuseFigures {
    ratio: f64,
    attr_ns: f64,
    null_ns: f64,
    wake_p50_us: f64,
    wake_p99_us: f64,
    preads: usize,
    wakes: usize,
}

fn pread_ns(fd: i32, n: usize) -> Result<f64, CliError> {
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: `buf` is valid for 4096 bytes of writes.
        let r = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if r < 0 {
            return Err(CliError(format!("pread: {}", std::io::Error::last_os_error())));
        }
    }
    Ok(t.elapsed().as_nanos() as f64 / n as f64)
}

fn fuse_attr_bench(quick: bool, dir: Option<PathBuf>) -> Result<FuseFigures, CliError> {
    use std::os::unix::io::AsRawFd;
    let base = dir.unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let scratch = Scratch(base.join(format!("umd-bench-kernfs-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| CliError(format!("{}: {e}", scratch.0.display())))?;
    let paths: Vec<PathBuf> = (0..2).map(|i| scratch.0.join(format!("m{i}.img"))).collect();
    let mut spec = Spec::new(Level::Raid1, 2, 4 << 20);
    spec.name = "umd:bench-kernfs".into();
    spec.stamp_now();
    synth::write_array(&spec, &paths, &mut |off, buf| synth::pattern_fill(off, 1, buf))
        .map_err(|e| CliError(format!("building the bench array: {e}")))?;
    let asm = md::assemble(&paths, &md::AssembleOptions::default())?;
    let tree = kernfs::Kernfs::new();
    let sys = Arc::new(
        md::sysfs::publish(&tree, &tree.root(), &asm.array, true)
            .map_err(|e| CliError(format!("publishing attributes: errno {e}")))?,
    );
    let mnt = scratch.0.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| CliError(format!("{}: {e}", mnt.display())))?;
    let mount = export::mount(
        &mnt,
        Arc::new(crate::mount::ArrayAdapter(asm.array)),
        export::MountOptions {
            threads: 2,
            read_only: true,
            fsname: "umd:bench".into(),
            allow_other: false,
            tree: Some(tree.clone()),
            null_file: true,
        },
    )
    .map_err(|e| CliError(format!("{}: mount failed: {e}", mnt.display())))?;
    let unmounter = mount.unmounter();
    let result = (|| -> Result<FuseFigures, CliError> {
        let attr = std::fs::File::open(mnt.join("md/array_state"))?;
        let null = std::fs::File::open(mnt.join("null"))?;
        // Short interleaved rounds (alternating which goes first), so that
        // both files see the same scheduling weather; the ratio is the
        // median of the per-round ratios.
        let n = if quick { 4_000 } else { 20_000 };
        let rounds = 40;
        let (mut a, mut z, mut r) = (Vec::new(), Vec::new(), Vec::new());
        pread_ns(attr.as_raw_fd(), 200)?;
        pread_ns(null.as_raw_fd(), 200)?;
        for i in 0..rounds {
            let (x, y) = if i % 2 == 0 {
                let x = pread_ns(attr.as_raw_fd(), n / rounds)?;
                (x, pread_ns(null.as_raw_fd(), n / rounds)?)
            } else {
                let y = pread_ns(null.as_raw_fd(), n / rounds)?;
                (pread_ns(attr.as_raw_fd(), n / rounds)?, y)
            };
            a.push(x);
            z.push(y);
            r.push(x / y);
        }
        let (attr_ns, null_ns, ratio) = (median(&mut a), median(&mut z), median(&mut r));
        // Wake-up latency: a poller thread reads array_state, then polls
        // for POLLPRI; the main thread flips the state (which notifies) and
        // the poller records when poll returned.
        let wakes = if quick { 100 } else { 400 };
        let fd = attr.as_raw_fd();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let (woke_tx, woke_rx) = std::sync::mpsc::channel::<Instant>();
        let poller = std::thread::spawn(move || -> Result<(), String> {
            let mut buf = [0u8; 64];
            for _ in 0..wakes {
                // SAFETY: `buf` is valid for 64 bytes of writes.
                unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if ready_tx.send(()).is_err() {
                    return Ok(());
                }
                let mut p = libc::pollfd { fd, events: libc::POLLPRI, revents: 0 };
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut p, 1, 5000) };
                if r <= 0 {
                    return Err("poll timed out: no wake-up within 5 s".into());
                }
                if woke_tx.send(Instant::now()).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut lat = Vec::with_capacity(wakes);
        let states = [md::sysfs::ArrayState::ReadAuto, md::sysfs::ArrayState::Readonly];
        for i in 0..wakes {
            ready_rx.recv().map_err(|_| CliError("poller ended early".into()))?;
            // Let the poller enter poll(2) and the kernel register it.
            std::thread::sleep(std::time::Duration::from_millis(2));
            let t = Instant::now();
            sys.set_array_state(states[i % 2]);
            let woke = woke_rx.recv().map_err(|_| CliError("poller ended early".into()))?;
            lat.push(woke.duration_since(t).as_secs_f64() * 1e6);
        }
        poller.join().map_err(|_| CliError("poller panicked".into()))?.map_err(CliError)?;
        Ok(FuseFigures {
            ratio,
            attr_ns,
            null_ns,
            wake_p50_us: percentile(&mut lat, 0.50),
            wake_p99_us: percentile(&mut lat, 0.99),
            preads: n,
            wakes,
        })
    })();
    unmounter.unmount();
    mount.wait().map_err(|e| CliError(format!("unmount: {e}")))?;
    result
}
