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
//! * `blockio`: umd's io_uring engine against `fio --ioengine=io_uring
//!   --direct=1` on the same scratch file on the machine's disk (never
//!   tmpfs): 4 KiB random writes at queue depth 32 and 1 MiB sequential
//!   writes at queue depth 8, both tools in each round (alternating which
//!   goes first), several rounds; the figures are the medians of the
//!   per-round ratios. Also the allocations of 10,000 engine ops
//!   with one in flight, after warm-up (counting global allocator).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use blockio::{
    Access, BufPool, Direct, Engine, EngineKind, IoBuf, Member, MemberOptions, Op, PoolConfig, Queue,
};
use md::synth::{self, Spec};
use md::Level;

use crate::{CliError, CmdResult};

/// Runs benchmark `name`.
pub fn run(name: &str, json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    match name {
        "extract" => extract(json, quick, full, dir),
        "kernfs" => kernfs_bench(json, quick, full, dir),
        "blockio" => blockio_bench(json, quick, full, dir),
        other => Err(CliError(format!("unknown benchmark {other:?} (available: extract, kernfs, blockio)"))),
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

// ---------------------------------------------------------------- blockio

/// The engine measured (the io_uring one; the sync engine runs the same
/// plumbing, one op at a time).
const BLOCKIO_ENGINE: EngineKind = EngineKind::Uring;
/// Ops run for `steady_state_allocs`, after `ALLOC_WARMUP` not counted.
const ALLOC_OPS: u64 = 10_000;
const ALLOC_WARMUP: u64 = 1_000;

/// Removes the scratch file when dropped, also on error paths.
struct ScratchFile(PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One workload, run the same way by umd and by fio.
struct Workload {
    /// Random (uniform, with repeats) or sequential (wrapping) offsets.
    random: bool,
    /// Bytes per write.
    bs: usize,
    /// Writes in flight.
    depth: usize,
}

const RANDWRITE: Workload = Workload { random: true, bs: 4096, depth: 32 };
const SEQWRITE: Workload = Workload { random: false, bs: 1 << 20, depth: 8 };

/// xorshift64*: the bench's seeded offset generator.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// One timed run: bytes written and seconds taken.
#[derive(Clone, Copy)]
struct Run {
    bytes: f64,
    secs: f64,
}

impl Run {
    fn bytes_per_sec(&self) -> f64 {
        self.bytes / self.secs
    }
}

fn errno_msg(e: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(e)
}

/// Writes with umd's engine, `w.depth` writes in flight continuously, until
/// `deadline` (then drains) or after `max_ops` writes. Buffers come back
/// with their completions and are reused; nothing allocates in the loop
/// but the engine's own descriptor slot misses.
fn umd_writes(
    q: &mut Queue,
    pool: &BufPool,
    w: &Workload,
    size: u64,
    deadline: Option<std::time::Duration>,
    max_ops: u64,
    seed: u64,
) -> Result<Run, CliError> {
    let blocks = size / w.bs as u64;
    let mut rng = XorShift::new(seed);
    let mut seq = 0u64;
    let mut next_offset = || {
        let b = if w.random {
            rng.below(blocks)
        } else {
            let b = seq;
            seq = if seq + 1 == blocks { 0 } else { seq + 1 };
            b
        };
        b * w.bs as u64
    };
    let queue_full = |_| CliError("umd engine: queue full".into());
    let t0 = Instant::now();
    let end = deadline.map(|d| t0 + d);
    let (mut issued, mut completed) = (0u64, 0u64);
    while issued < max_ops && (issued as usize) < w.depth {
        let buf = pool.take().ok_or_else(|| CliError("umd engine: buffer pool exhausted".into()))?;
        q.push(Op::write(0, next_offset(), buf, w.bs)).map_err(queue_full)?;
        issued += 1;
    }
    let mut stopping = false;
    while completed < issued {
        q.wait(1).map_err(|e| CliError(format!("umd engine: wait: {e}")))?;
        while let Some(c) = q.pop() {
            if let Err(e) = c.result {
                return Err(CliError(format!(
                    "umd engine: write of {} bytes at {}: {}",
                    c.op.len,
                    c.op.offset,
                    errno_msg(e)
                )));
            }
            completed += 1;
            if !stopping && issued < max_ops {
                q.push(Op::write(0, next_offset(), c.op.buf, w.bs)).map_err(queue_full)?;
                issued += 1;
                // Each refill goes to the kernel at once, as fio does by
                // default (iodepth_batch_submit=1): the device never waits
                // for the rest of the reaped batch.
                q.submit().map_err(|e| CliError(format!("umd engine: submit: {e}")))?;
            }
        }
        if let Some(end) = end {
            stopping = stopping || Instant::now() >= end;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(Run { bytes: (completed * w.bs as u64) as f64, secs })
}

/// Escapes `:` in a path for fio's `--filename` (where it separates files).
fn fio_filename(p: &Path) -> String {
    p.to_string_lossy().replace(':', "\\:")
}

/// The fio command line for `w` (without the file), as the baseline names it.
fn fio_args(w: &Workload, size: u64, secs: u64) -> Vec<String> {
    let mut a: Vec<String> = [
        "--name=umd-bench",
        "--ioengine=io_uring",
        "--direct=1",
        "--fixedbufs=1",
        "--registerfiles=1",
        "--time_based=1",
        "--output-format=json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("--rw={}", if w.random { "randwrite" } else { "write" }));
    if w.random {
        // umd's offsets are uniform with repeats, not a random map.
        a.push("--norandommap".into());
    }
    a.push(format!("--bs={}", w.bs));
    a.push(format!("--iodepth={}", w.depth));
    a.push(format!("--size={size}"));
    a.push(format!("--runtime={secs}"));
    a
}

/// Runs fio on `path` and reads its write bandwidth from its JSON report.
fn fio_writes(fio: &Path, path: &Path, w: &Workload, size: u64, secs: u64) -> Result<Run, CliError> {
    let out = Command::new(fio)
        .args(fio_args(w, size, secs))
        .arg(format!("--filename={}", fio_filename(path)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CliError(format!("cannot run {}: {e}", fio.display())))?;
    if !out.status.success() {
        return Err(CliError(format!(
            "fio failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text.find('{').map(|i| &text[i..]).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| CliError(format!("fio's JSON report: {e}")))?;
    let job = &v["jobs"][0];
    match job["error"].as_i64() {
        Some(0) => {}
        e => return Err(CliError(format!("fio reported error {e:?}"))),
    }
    let wr = &job["write"];
    let (Some(bw), Some(ms)) = (wr["bw_bytes"].as_f64(), wr["runtime"].as_f64()) else {
        return Err(CliError("fio's JSON report has no write bandwidth".into()));
    };
    if bw <= 0.0 || ms <= 0.0 {
        return Err(CliError(format!("fio wrote nothing (bw {bw} B/s, runtime {ms} ms)")));
    }
    Ok(Run { bytes: bw * ms / 1000.0, secs: ms / 1000.0 })
}

/// Allocations (counting global allocator) during `ALLOC_OPS` 4 KiB random
/// writes with one op in flight (`Queue::run`), after a warm-up.
fn umd_steady_allocs(q: &mut Queue, pool: &BufPool, size: u64) -> Result<u64, CliError> {
    let blocks = size / 4096;
    let mut rng = XorShift::new(0xA110C);
    let mut buf = pool.take().ok_or_else(|| CliError("umd engine: buffer pool exhausted".into()))?;
    let mut before = crate::alloc_count::allocations();
    for i in 0..ALLOC_WARMUP + ALLOC_OPS {
        if i == ALLOC_WARMUP {
            before = crate::alloc_count::allocations();
        }
        let op = Op { len: 4096, tag: i, ..Op::write(0, rng.below(blocks) * 4096, buf, 4096) };
        let c = q.run(op).map_err(|_| CliError("umd engine: queue full".into()))?;
        if let Err(e) = c.result {
            return Err(CliError(format!("umd engine: write at {}: {}", c.op.offset, errno_msg(e))));
        }
        buf = c.op.buf;
    }
    Ok(crate::alloc_count::allocations() - before)
}

/// Reserves `size` bytes for `f` (fallocate; a plain length where the
/// filesystem cannot preallocate).
fn preallocate(f: &std::fs::File, size: u64) -> Result<(), CliError> {
    use std::os::unix::io::AsRawFd;
    let len = libc::off_t::try_from(size).map_err(|_| CliError("scratch file too large".into()))?;
    // SAFETY: fallocate on a descriptor we own.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        f.set_len(size)?;
        return Ok(());
    }
    Err(CliError(format!("fallocate of {size} bytes: {e}")))
}

fn flush(q: &mut Queue) -> Result<(), CliError> {
    q.flush(0).map_err(|e| CliError(format!("umd engine: flush: {}", errno_msg(e))))
}

fn blockio_bench(json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    let Some(fio) = which("fio") else {
        return Err(CliError("fio not found: run scripts/setup.sh".into()));
    };
    let base = dir.unwrap_or_else(|| PathBuf::from("/var/tmp"));
    if is_tmpfs(&base) {
        return Err(CliError(format!(
            "{} is on tmpfs: the blockio bench needs the machine's disk (give --dir on a disk filesystem)",
            base.display()
        )));
    }
    let size: u64 = if quick { 256 << 20 } else { 1 << 30 };
    // Several short rounds rather than a few long ones: the disk's speed
    // drifts (a virtual disk's host cache), and the median of more rounds
    // resists that better.
    let (secs, rounds): (u64, usize) = if full {
        (5, 7)
    } else if quick {
        (1, 3)
    } else {
        (2, 5)
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = base.join(format!("umd-bench-blockio-{}-{nonce:08x}.img", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    let _scratch = ScratchFile(path.clone());
    preallocate(&file, size)?;
    drop(file);

    let member = Member::open_with(
        &path,
        &MemberOptions { access: Access::ReadWrite, direct: Direct::Require, faults: None },
    )?;
    let pool = BufPool::new(PoolConfig { count: 64, size: 1 << 20, huge_pages: false })?;
    {
        // Data that is not all zeros, as fio's is not.
        let mut rng = XorShift::new(0xDA7A);
        let mut bufs: Vec<IoBuf> = std::iter::from_fn(|| pool.take()).collect();
        for b in &mut bufs {
            for chunk in b.chunks_exact_mut(8) {
                chunk.copy_from_slice(&rng.next().to_ne_bytes());
            }
        }
    }
    let engine = Engine::new(BLOCKIO_ENGINE, vec![member], pool.clone())?;
    let mut q = engine
        .queue(RANDWRITE.depth.max(SEQWRITE.depth))
        .map_err(|e| CliError(format!("umd {BLOCKIO_ENGINE} engine: making a queue: {e}")))?;
    // Write the whole file once, so both tools overwrite allocated blocks.
    umd_writes(&mut q, &pool, &SEQWRITE, size, None, size / SEQWRITE.bs as u64, 0)?;
    flush(&mut q)?;

    let limit = Some(std::time::Duration::from_secs(secs));
    let (miss0_hits, miss0) = engine.members()[0].dio_stats();
    // Each round runs both tools back to back (alternating which goes
    // first); the ratio is the median of the per-round ratios, so a drift
    // of the disk's speed between rounds cancels out.
    let mut measure = |w: &Workload| -> Result<(f64, f64, f64), CliError> {
        let (mut u, mut f, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            let seed = r as u64 + 1;
            if r % 2 == 0 {
                u.push(umd_writes(&mut q, &pool, w, size, limit, u64::MAX, seed)?.bytes_per_sec());
                flush(&mut q)?;
                f.push(fio_writes(&fio, &path, w, size, secs)?.bytes_per_sec());
                flush(&mut q)?;
            } else {
                f.push(fio_writes(&fio, &path, w, size, secs)?.bytes_per_sec());
                flush(&mut q)?;
                u.push(umd_writes(&mut q, &pool, w, size, limit, u64::MAX, seed)?.bytes_per_sec());
                flush(&mut q)?;
            }
            if let (Some(a), Some(b)) = (u.last(), f.last()) {
                ratios.push(a / b);
            }
        }
        Ok((median(&mut u), median(&mut f), median(&mut ratios)))
    };
    let (rand_umd, rand_fio, rand_ratio) = measure(&RANDWRITE)?;
    let (seq_umd, seq_fio, seq_ratio) = measure(&SEQWRITE)?;
    let (hits, misses) = engine.members()[0].dio_stats();
    let (timed_ops, timed_misses) = (hits + misses - miss0_hits - miss0, misses - miss0);
    let allocs = umd_steady_allocs(&mut q, &pool, size)?;
    flush(&mut q)?;
    drop(q);
    drop(engine);

    let mib = |bps: f64| bps / f64::from(1u32 << 20);
    let iops = |bps: f64| bps / RANDWRITE.bs as f64;
    let rand_base = format!(
        "fio io_uring direct fixedbufs registerfiles, randwrite bs=4k iodepth={} norandommap, same file",
        RANDWRITE.depth
    );
    let seq_base = format!(
        "fio io_uring direct fixedbufs registerfiles, write bs=1m iodepth={}, same file",
        SEQWRITE.depth
    );
    if json {
        let lines = [
            figure(
                "blockio",
                "randwrite_4k_qd32_ratio",
                rand_ratio,
                "ratio",
                Some(&rand_base),
                Some(">= 0.9"),
            ),
            figure("blockio", "seqwrite_1m_ratio", seq_ratio, "ratio", Some(&seq_base), Some(">= 0.9")),
            figure("blockio", "steady_state_allocs", allocs as f64, "allocs/10000", None, Some("0")),
            figure("blockio", "randwrite_4k_qd32_umd_iops", iops(rand_umd), "IOPS", None, None),
            figure("blockio", "randwrite_4k_qd32_fio_iops", iops(rand_fio), "IOPS", None, None),
            figure("blockio", "seqwrite_1m_umd_mibps", mib(seq_umd), "MiB/s", None, None),
            figure("blockio", "seqwrite_1m_fio_mibps", mib(seq_fio), "MiB/s", None, None),
        ];
        for l in lines {
            println!("{l}");
        }
    } else {
        println!(
            "bench blockio: umd {BLOCKIO_ENGINE} engine vs fio ({}), {} MiB scratch file in {}, O_DIRECT",
            fio.display(),
            size >> 20,
            base.display()
        );
        println!("  rounds: {rounds} x {secs} s per tool and workload, alternating (median)");
        println!(
            "  randwrite_4k_qd32_ratio {rand_ratio:8.3} (umd {:.0} IOPS / fio {:.0} IOPS; target >= 0.9)",
            iops(rand_umd),
            iops(rand_fio)
        );
        println!("    baseline: {rand_base}");
        println!(
            "  seqwrite_1m_ratio       {seq_ratio:8.3} (umd {:.1} MiB/s / fio {:.1} MiB/s, qd{}; target >= 0.9)",
            mib(seq_umd),
            mib(seq_fio),
            SEQWRITE.depth
        );
        println!("    baseline: {seq_base}");
        println!(
            "  steady_state_allocs     {allocs:8} per {ALLOC_OPS} 4 KiB writes, one in flight (target 0)"
        );
        println!("  descriptor slot misses in the timed runs: {timed_misses} of {timed_ops} ops");
    }
    Ok(())
}
