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
//! * `pagecache`: buffered writes into an in-memory (`MemOps`) mapping of
//!   1 GiB against the kernel's page cache doing the same with `pwrite` to
//!   a 1 GiB tmpfs file (in /dev/shm); both populated first, so both sides
//!   overwrite cached data. 1 MiB sequential writes (1 GiB per round) and
//!   4 KiB random aligned writes (seeded xorshift, 200,000 per round), both
//!   sides in each round (alternating which goes first); the figures are
//!   the medians of the per-round ratios. Also memcpy bandwidth (a 256 MiB
//!   buffer into another, warm) as the physical limit.
//! * `array`: md's parity kernels (`gf::gen_syndrome`, `gf::xor_blocks`,
//!   SIMD chosen at run time) against ISA-L's `pq_gen`/`xor_gen` (libisal,
//!   loaded with `dlopen`) on the same 64-byte aligned buffers, 6 data
//!   blocks of 64 KiB: batches of about 10 ms, both sides in each round
//!   (alternating which goes first); the figures are the medians of the
//!   per-round throughput ratios.

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

#[path = "bench_recovery.rs"]
mod bench_recovery;

/// Runs benchmark `name`.
pub fn run(name: &str, json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    match name {
        "extract" => extract(json, quick, full, dir),
        "kernfs" => kernfs_bench(json, quick, full, dir),
        "blockio" => blockio_bench(json, quick, full, dir),
        "pagecache" => pagecache_bench(json, quick, full, dir),
        "array" => array_bench(json, quick, full, dir),
        "mon" => crate::bench_mon::run(json, quick, full, dir),
        "recovery" => bench_recovery::run(json, quick, full, dir),
        other => Err(CliError(format!(
            "unknown benchmark {other:?} (available: extract, kernfs, blockio, pagecache, array, mon, recovery)"
        ))),
    }
}

const TMPFS_MAGIC: i64 = 0x0102_1994;

pub(crate) fn is_tmpfs(p: &Path) -> bool {
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
pub(crate) fn figure(
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

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
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
        Arc::new(crate::mount::ArrayAdapter { array: Arc::new(asm.array), state: None }),
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

// ---------------------------------------------------------------- pagecache

/// Folio size of the mapping the 1 MiB sequential writes go to.
const PC_SEQ_FOLIO: usize = 1 << 20;
/// Folio size of the mapping the 4 KiB random writes go to.
const PC_RAND_FOLIO: usize = 1 << 20;
/// Bytes per sequential write and per random write.
const PC_SEQ_BS: usize = 1 << 20;
const PC_RAND_BS: usize = 4096;
/// Bytes of each buffer of the memcpy figure.
const PC_MEMCPY_BYTES: usize = 256 << 20;

/// One side of the pagecache bench: a write of `data` at byte `pos`, all
/// of it or an error.
type WriteFn<'a> = dyn FnMut(u64, &[u8]) -> Result<(), CliError> + 'a;

/// `pwrite` all of `data` at `pos` (a short write is continued).
fn pwrite_all(fd: i32, mut pos: u64, mut data: &[u8]) -> Result<(), CliError> {
    while !data.is_empty() {
        let off = libc::off_t::try_from(pos).map_err(|_| CliError("offset too large".into()))?;
        // SAFETY: `data` is valid for `data.len()` bytes of reads.
        let r = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CliError(format!("kernel pwrite of {} bytes at {pos}: {e}", data.len())));
        }
        if r == 0 {
            return Err(CliError(format!("kernel pwrite at {pos} wrote nothing")));
        }
        data = &data[r as usize..];
        pos += r as u64;
    }
    Ok(())
}

/// `pagecache::write_at` all of `data` at `pos`.
fn umd_write_all(m: &pagecache::AddressSpace, pos: u64, data: &[u8]) -> Result<(), CliError> {
    match pagecache::write_at(m, pos, data) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(n) => Err(CliError(format!("umd write_at of {} bytes at {pos} wrote {n}", data.len()))),
        Err(e) => Err(CliError(format!("umd write_at of {} bytes at {pos}: {}", data.len(), errno_msg(e)))),
    }
}

/// Sequential `bs`-byte writes over `[0, size)` from `src` (`src.len() ==
/// bs`), or `ops` uniformly random `bs`-aligned ones (seeded).
fn pc_writes(
    write: &mut WriteFn<'_>,
    src: &[u8],
    size: u64,
    random: Option<(u64, u64)>,
) -> Result<Run, CliError> {
    let bs = src.len() as u64;
    let t0 = Instant::now();
    let mut bytes = 0u64;
    match random {
        None => {
            let mut pos = 0;
            while pos + bs <= size {
                write(pos, src)?;
                pos += bs;
                bytes += bs;
            }
        }
        Some((ops, seed)) => {
            let blocks = size / bs;
            let mut rng = XorShift::new(seed);
            for _ in 0..ops {
                write(rng.below(blocks) * bs, src)?;
                bytes += bs;
            }
        }
    }
    Ok(Run { bytes: bytes as f64, secs: t0.elapsed().as_secs_f64() })
}

/// Bytes of memory available (`MemAvailable`), if known.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// One workload of the pagecache bench: medians of umd's and the kernel's
/// bytes/s and of their per-round ratios.
struct PcResult {
    umd: f64,
    kernel: f64,
    ratio: f64,
}

/// Runs `rounds` rounds of one workload, umd and the kernel back to back in
/// each (alternating which goes first), on a fresh mapping of `folio`-byte
/// folios populated over `[0, size)` first (the tmpfs file is populated
/// already).
#[allow(clippy::too_many_arguments)]
fn pc_workload(
    cache: &pagecache::PageCache,
    fd: i32,
    folio: usize,
    size: u64,
    src: &[u8],
    random: Option<u64>,
    rounds: usize,
    fill: &[u8],
) -> Result<PcResult, CliError> {
    let mapping = cache
        .mapping(Arc::new(pagecache::MemOps), folio)
        .map_err(|e| CliError(format!("pagecache: mapping of {folio}-byte folios: {}", errno_msg(e))))?;
    // Populate, so that both sides overwrite data that is there.
    let mut umd = |pos: u64, data: &[u8]| umd_write_all(&mapping, pos, data);
    pc_writes(&mut umd, fill, size, None)?;
    let mut kernel = |pos: u64, data: &[u8]| pwrite_all(fd, pos, data);
    // One untimed pass of each (warm-up: code, TLB, allocator).
    let warm = random.map(|n| (n / 4, 0));
    pc_writes(&mut umd, src, size, warm)?;
    pc_writes(&mut kernel, src, size, warm)?;
    let (mut u, mut k, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let w = random.map(|n| (n, r as u64 + 1));
        let (a, b) = if r % 2 == 0 {
            let a = pc_writes(&mut umd, src, size, w)?;
            (a, pc_writes(&mut kernel, src, size, w)?)
        } else {
            let b = pc_writes(&mut kernel, src, size, w)?;
            (pc_writes(&mut umd, src, size, w)?, b)
        };
        u.push(a.bytes_per_sec());
        k.push(b.bytes_per_sec());
        ratios.push(a.bytes_per_sec() / b.bytes_per_sec());
    }
    Ok(PcResult { umd: median(&mut u), kernel: median(&mut k), ratio: median(&mut ratios) })
}

/// memcpy bandwidth: one buffer copied into another, both warm; the median
/// of several copies, in bytes/s.
fn memcpy_bandwidth(bytes: usize, reps: usize) -> f64 {
    let mut rng = XorShift::new(0x3E3C);
    let mut src = vec![0u8; bytes];
    for c in src.chunks_exact_mut(8) {
        c.copy_from_slice(&rng.next().to_ne_bytes());
    }
    let mut dst = vec![0u8; bytes];
    dst.copy_from_slice(&src);
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(&mut dst).copy_from_slice(std::hint::black_box(&src));
        v.push(bytes as f64 / t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    median(&mut v)
}

fn pagecache_bench(json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    use std::os::unix::io::AsRawFd;
    let base = dir.unwrap_or_else(|| PathBuf::from("/dev/shm"));
    if !is_tmpfs(&base) {
        return Err(CliError(format!(
            "{} is not tmpfs: the pagecache bench's baseline is the kernel's page cache of a tmpfs file",
            base.display()
        )));
    }
    let size: u64 = if quick { 256 << 20 } else { 1 << 30 };
    let (rounds, rand_ops): (usize, u64) = if full {
        (9, 500_000)
    } else if quick {
        (3, 50_000)
    } else {
        (5, 200_000)
    };
    // The mapping and the tmpfs file, plus slack.
    let need = 2 * size + (256 << 20);
    if let Some(avail) = mem_available() {
        if avail < need {
            return Err(CliError(format!(
                "the pagecache bench needs {} MiB of free memory, {} MiB available",
                need >> 20,
                avail >> 20
            )));
        }
    }
    let mut rng = XorShift::new(0xDA7A);
    let mut fill = vec![0u8; PC_SEQ_BS];
    for c in fill.chunks_exact_mut(8) {
        c.copy_from_slice(&rng.next().to_ne_bytes());
    }
    let mut seq_src = vec![0u8; PC_SEQ_BS];
    for c in seq_src.chunks_exact_mut(8) {
        c.copy_from_slice(&rng.next().to_ne_bytes());
    }
    let rand_src = seq_src[..PC_RAND_BS].to_vec();

    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = base.join(format!("umd-bench-pagecache-{}-{nonce:08x}.img", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    let scratch = ScratchFile(path.clone());
    let fd = file.as_raw_fd();
    // Populate the tmpfs file (written once, like the mapping).
    pc_writes(&mut |pos, data| pwrite_all(fd, pos, data), &fill, size, None)?;

    // Room for the mapping and some; MemOps folios are never evicted, and
    // never count as dirty.
    let cache = pagecache::PageCache::new(pagecache::CacheConfig {
        memory_limit: size + (1 << 30),
        dirty_limit: 64 << 20,
        flushers: 0,
    });
    let seq = pc_workload(&cache, fd, PC_SEQ_FOLIO, size, &seq_src, None, rounds, &fill)?;
    let rand = pc_workload(&cache, fd, PC_RAND_FOLIO, size, &rand_src, Some(rand_ops), rounds, &fill)?;
    drop(cache);
    drop(file);
    drop(scratch);
    let memcpy_reps = if quick { 3 } else { 5 };
    let memcpy = memcpy_bandwidth(PC_MEMCPY_BYTES, memcpy_reps);
    let memcpy_base = format!(
        "memcpy of a {} MiB buffer into another, both warm (median of {memcpy_reps})",
        PC_MEMCPY_BYTES >> 20
    );

    let gbps = |bps: f64| bps / 1e9;
    let iops = |bps: f64| bps / PC_RAND_BS as f64;
    let seq_base = format!(
        "kernel pwrite bs=1m, sequential, to a populated {} MiB tmpfs file; umd: MemOps mapping, {} KiB folios",
        size >> 20,
        PC_SEQ_FOLIO >> 10
    );
    let rand_base = format!(
        "kernel pwrite bs=4k, uniformly random (aligned), to a populated {} MiB tmpfs file; umd: MemOps mapping, {} KiB folios",
        size >> 20,
        PC_RAND_FOLIO >> 10
    );
    if json {
        let lines = [
            figure("pagecache", "seqwrite_1m_ratio", seq.ratio, "ratio", Some(&seq_base), Some(">= 2")),
            figure("pagecache", "randwrite_4k_ratio", rand.ratio, "ratio", Some(&rand_base), Some(">= 3")),
            figure("pagecache", "memcpy_gbps", gbps(memcpy), "GB/s", Some(&memcpy_base), None),
            figure("pagecache", "seqwrite_1m_umd_gbps", gbps(seq.umd), "GB/s", None, None),
            figure("pagecache", "seqwrite_1m_kernel_gbps", gbps(seq.kernel), "GB/s", None, None),
            figure("pagecache", "randwrite_4k_umd_iops", iops(rand.umd), "IOPS", None, None),
            figure("pagecache", "randwrite_4k_kernel_iops", iops(rand.kernel), "IOPS", None, None),
        ];
        for l in lines {
            println!("{l}");
        }
    } else {
        println!(
            "bench pagecache: umd in-memory mapping vs the kernel's page cache (pwrite to a tmpfs file in {}), {} MiB each, populated",
            base.display(),
            size >> 20
        );
        println!(
            "  rounds: {rounds} per workload, both sides in each, alternating (median of per-round ratios); \
             1 MiB: {} MiB per round, 4 KiB: {rand_ops} writes per round",
            size >> 20
        );
        println!(
            "  seqwrite_1m_ratio  {:8.3} (umd {:.2} GB/s / kernel {:.2} GB/s; target >= 2)",
            seq.ratio,
            gbps(seq.umd),
            gbps(seq.kernel)
        );
        println!("    baseline: {seq_base}");
        println!(
            "  randwrite_4k_ratio {:8.3} (umd {:.0} IOPS / kernel {:.0} IOPS; target >= 3)",
            rand.ratio,
            iops(rand.umd),
            iops(rand.kernel)
        );
        println!("    baseline: {rand_base}");
        println!("  memcpy_gbps        {:8.2} (the physical limit)", gbps(memcpy));
        println!("    baseline: {memcpy_base}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// array: whole-array figures. So far the parity kernels against ISA-L; the
// raid5/raid1 sequential-write figures join `array_bench`'s list later.

#[path = "isal.rs"]
mod isal;

/// Data blocks per stripe in the parity figures (an 8-disk raid6, a 7-disk
/// raid5) and the bytes per block (md's default chunk is 512 KiB; 64 KiB
/// keeps a stripe in L2 so the kernels, not DRAM, are measured).
const PARITY_DATA: usize = 6;
const PARITY_BLOCK: usize = 64 << 10;

/// One figure of the array bench, for both output formats.
struct ArrayFigure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    baseline: Option<String>,
    target: Option<&'static str>,
}

/// A `len`-byte, 64-byte aligned window into `buf` (allocated with 64
/// bytes of slack).
fn aligned64(buf: &mut [u8], len: usize) -> &mut [u8] {
    let off = buf.as_ptr().align_offset(64);
    &mut buf[off..off + len]
}

/// Times `batch` calls of `f`, in seconds.
fn time_batch(batch: usize, f: &mut dyn FnMut() -> Result<(), String>) -> Result<f64, CliError> {
    let t = Instant::now();
    for _ in 0..batch {
        f().map_err(CliError)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Runs `umd` and `base` alternately (which goes first alternates) for
/// `rounds` rounds of batches sized to about 10 ms; returns (median umd
/// bytes/s, median baseline bytes/s, median per-round umd/baseline
/// throughput ratio), counting `bytes` per call.
fn side_by_side(
    rounds: usize,
    bytes: usize,
    umd: &mut dyn FnMut() -> Result<(), String>,
    base: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(f64, f64, f64), CliError> {
    // Warm up both and size the batch from the slower side.
    time_batch(50, umd)?;
    time_batch(50, base)?;
    let per_call = time_batch(200, umd)?.max(time_batch(200, base)?) / 200.0;
    let batch = ((0.010 / per_call.max(1e-9)) as usize).clamp(10, 1_000_000);
    let (mut u, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (tu, tb) = if round % 2 == 0 {
            let tu = time_batch(batch, umd)?;
            (tu, time_batch(batch, base)?)
        } else {
            let tb = time_batch(batch, base)?;
            (time_batch(batch, umd)?, tb)
        };
        let total = (batch * bytes) as f64;
        u.push(total / tu);
        b.push(total / tb);
        r.push(tb / tu);
    }
    Ok((median(&mut u), median(&mut b), median(&mut r)))
}

/// `pq_gen_vs_isal_ratio` and `xor_gen_vs_isal_ratio`: md's
/// `gf::gen_syndrome` / `gf::xor_blocks` (the dispatching SIMD kernels)
/// against ISA-L's `pq_gen` / `xor_gen` on the same buffers.
fn parity_figures(quick: bool, full: bool) -> Result<Vec<ArrayFigure>, CliError> {
    use md::personality::{gf, simd};
    let lib = isal::Isal::load().map_err(CliError)?;
    let rounds = if full {
        61
    } else if quick {
        7
    } else {
        21
    };
    let len = PARITY_BLOCK;
    let mut rng = XorShift::new(0x9A41_7E57);
    let mut backing: Vec<Vec<u8>> = (0..PARITY_DATA + 2).map(|_| vec![0u8; len + 64]).collect();
    let (data_bufs, out_bufs) = backing.split_at_mut(PARITY_DATA);
    let mut data: Vec<&[u8]> = Vec::with_capacity(PARITY_DATA);
    for b in data_bufs.iter_mut() {
        let w = aligned64(b, len);
        for c in w.chunks_exact_mut(8) {
            c.copy_from_slice(&rng.next().to_ne_bytes());
        }
        data.push(w);
    }
    let (pb, qb) = out_bufs.split_at_mut(1);
    let p = aligned64(&mut pb[0], len);
    let q = aligned64(&mut qb[0], len);
    let slots: Vec<Option<&[u8]>> = data.iter().map(|d| Some(*d)).collect();

    // Both sides must compute the same parity (md's Q = Σ g^i·D_i is ISA-L's).
    let (mut p_umd, mut q_umd) = (vec![0u8; len], vec![0u8; len]);
    gf::gen_syndrome(&slots, &mut p_umd, &mut q_umd);
    lib.pq_gen(&data, p, q).map_err(CliError)?;
    if p_umd[..] != p[..] || q_umd[..] != q[..] {
        return Err(CliError("ISA-L pq_gen and umd gen_syndrome disagree".into()));
    }
    let mut x_umd = vec![0u8; len];
    gf::xor_blocks(&mut x_umd, &data);
    lib.xor_gen(&data, p).map_err(CliError)?;
    if x_umd[..] != p[..] {
        return Err(CliError("ISA-L xor_gen and umd xor_blocks disagree".into()));
    }

    let imp = simd::Impl::best().name();
    let bytes = PARITY_DATA * len;
    // umd writes into the same aligned P/Q buffers as ISA-L (one at a time).
    let cell = std::cell::RefCell::new((p, q));
    let (pq_u, pq_b, pq_r) = side_by_side(
        rounds,
        bytes,
        &mut || {
            let (p, q) = &mut *cell.borrow_mut();
            gf::gen_syndrome(std::hint::black_box(&slots), p, q);
            Ok(())
        },
        &mut || {
            let (p, q) = &mut *cell.borrow_mut();
            lib.pq_gen(std::hint::black_box(&data), p, q)
        },
    )?;
    let (x_u, x_b, x_r) = side_by_side(
        rounds,
        bytes,
        &mut || {
            let (p, _) = &mut *cell.borrow_mut();
            gf::xor_blocks(p, std::hint::black_box(&data));
            Ok(())
        },
        &mut || {
            let (p, _) = &mut *cell.borrow_mut();
            lib.xor_gen(std::hint::black_box(&data), p)
        },
    )?;
    let shape = format!(
        "{PARITY_DATA} data blocks x {} KiB, 64-byte aligned, warm; {rounds} rounds alternating, median; umd kernel {imp}",
        len >> 10
    );
    let gb = |v: f64| v / 1e9;
    Ok(vec![
        ArrayFigure {
            name: "pq_gen_vs_isal_ratio",
            value: pq_r,
            unit: "ratio",
            baseline: Some(format!("ISA-L pq_gen (libisal), {shape}")),
            target: Some(">= 1.0"),
        },
        ArrayFigure {
            name: "xor_gen_vs_isal_ratio",
            value: x_r,
            unit: "ratio",
            baseline: Some(format!("ISA-L xor_gen (libisal), {shape}")),
            target: Some(">= 1.0"),
        },
        ArrayFigure { name: "pq_gen_umd_gbps", value: gb(pq_u), unit: "GB/s", baseline: None, target: None },
        ArrayFigure { name: "pq_gen_isal_gbps", value: gb(pq_b), unit: "GB/s", baseline: None, target: None },
        ArrayFigure { name: "xor_gen_umd_gbps", value: gb(x_u), unit: "GB/s", baseline: None, target: None },
        ArrayFigure { name: "xor_gen_isal_gbps", value: gb(x_b), unit: "GB/s", baseline: None, target: None },
    ])
}

/// Sequential 1 MiB writes through `md::Array::write_at` onto `level`
/// built of `disks` tmpfs files of `member_mib` MiB each, side by side with
/// the same 1 MiB writes straight to one tmpfs file of a member's size;
/// returns (array bytes/s, one member's bytes/s, per-round ratio array /
/// member).
fn seqwrite_side_by_side(
    dir: &Path,
    level: md::Level,
    disks: usize,
    member_mib: u64,
    rounds: usize,
) -> Result<(f64, f64, f64), CliError> {
    use std::os::unix::io::AsRawFd;
    let tag = format!("{level}");
    let paths: Vec<PathBuf> = (0..disks).map(|i| dir.join(format!("{tag}-m{i}.img"))).collect();
    let spec = md::synth::Spec::new(level, disks, member_mib << 20);
    md::synth::write_array(&spec, &paths, &mut |_, buf| buf.fill(0))
        .map_err(|e| CliError(format!("building the {tag} bench array: {e}")))?;
    let asm = md::assemble_writable(&paths, &md::AssembleOptions::default())
        .map_err(|e| CliError(format!("assembling the {tag} bench array: {e}")))?;
    let array = asm.array;
    // The baseline file: one member's size, written once so tmpfs holds its pages.
    let base_path = dir.join(format!("{tag}-one-member.img"));
    let base = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&base_path)
        .map_err(|e| CliError(format!("{}: {e}", base_path.display())))?;
    let member_bytes = member_mib << 20;
    const W: usize = 1 << 20;
    let mut rng = XorShift::new(0x5E0_57A1);
    let mut data = vec![0u8; W];
    for c in data.chunks_exact_mut(8) {
        c.copy_from_slice(&rng.next().to_ne_bytes());
    }
    for off in (0..member_bytes).step_by(W) {
        pwrite_all(base.as_raw_fd(), off, &data)?;
    }
    let array_end = array.size() / W as u64 * W as u64;
    let base_end = member_bytes / W as u64 * W as u64;
    if array_end == 0 || base_end == 0 {
        return Err(CliError("bench members too small".into()));
    }
    let (mut a_off, mut b_off) = (0u64, 0u64);
    let fd = base.as_raw_fd();
    let r = side_by_side(
        rounds,
        W,
        &mut || {
            array.write_at(a_off, &data).map_err(|e| format!("{tag} write at {a_off}: {e}"))?;
            a_off = (a_off + W as u64) % array_end;
            Ok(())
        },
        &mut || {
            pwrite_all(fd, b_off, &data).map_err(|e| e.0)?;
            b_off = (b_off + W as u64) % base_end;
            Ok(())
        },
    );
    if std::env::var_os("UMD_BENCH_VERBOSE").is_some() {
        eprintln!(
            "{tag}: member writes by caller/workers {:?}, rows {:?}",
            array.write_jobs(),
            array.stripe_stats()
        );
    }
    r
}

/// Total bytes/s of two threads writing 1 MiB sequentially, each to its
/// own tmpfs file, at the same time (about 1 s): what parallel member
/// writes can reach on this machine, whatever the RAID code does.
fn parallel_write_ceiling(dir: &Path, member_mib: u64) -> Result<f64, CliError> {
    use std::os::unix::io::AsRawFd;
    const W: usize = 1 << 20;
    let size = (member_mib << 20) / W as u64 * W as u64;
    let data = vec![0x5au8; W];
    let files = (0..2)
        .map(|i| {
            let p = dir.join(format!("ceiling-{i}.img"));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .map_err(|e| CliError(format!("{}: {e}", p.display())))?;
            for off in (0..size).step_by(W) {
                pwrite_all(f.as_raw_fd(), off, &data)?;
            }
            Ok(f)
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let t = Instant::now();
    let results: Vec<Result<u64, CliError>> = std::thread::scope(|s| {
        let hs: Vec<_> = files
            .iter()
            .map(|f| {
                let data = &data;
                s.spawn(move || -> Result<u64, CliError> {
                    let (mut n, mut off) = (0u64, 0u64);
                    while t.elapsed().as_secs_f64() < 1.0 {
                        pwrite_all(f.as_raw_fd(), off, data)?;
                        off = (off + W as u64) % size;
                        n += W as u64;
                    }
                    Ok(n)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(CliError("writer panicked".into())))).collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok(total as f64 / secs)
}

/// `raid5_seqwrite_ratio` (4 members, vs 3 × one member) and
/// `raid1_seqwrite_ratio` (2 members, vs one member), members on tmpfs.
fn seqwrite_figures(quick: bool, full: bool, dir: Option<PathBuf>) -> Result<Vec<ArrayFigure>, CliError> {
    let parent = dir.unwrap_or_else(|| PathBuf::from("/dev/shm"));
    if !is_tmpfs(&parent) {
        return Err(CliError(format!(
            "{}: not tmpfs (the array bench puts its members on tmpfs)",
            parent.display()
        )));
    }
    let scratch = Scratch(parent.join(format!("umd-bench-array-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| CliError(format!("{}: {e}", scratch.0.display())))?;
    let (rounds, member_mib) = if full {
        (41, 192)
    } else if quick {
        (9, 48)
    } else {
        (21, 96)
    };
    let ceiling = parallel_write_ceiling(&scratch.0, member_mib)?;
    let (r5_u, r5_b, r5_r) = seqwrite_side_by_side(&scratch.0, md::Level::Raid5, 4, member_mib, rounds)?;
    let (r1_u, r1_b, r1_r) = seqwrite_side_by_side(&scratch.0, md::Level::Raid1, 2, member_mib, rounds)?;
    let gb = |v: f64| v / 1e9;
    let shape = |what: &str| {
        format!("{what}: 1 MiB sequential pwrite to one {member_mib} MiB tmpfs file; {rounds} rounds alternating, median")
    };
    Ok(vec![
        ArrayFigure {
            name: "raid5_seqwrite_ratio",
            value: r5_r / 3.0,
            unit: "ratio",
            baseline: Some(shape("3 x one member's write bandwidth")),
            target: Some(">= 0.8"),
        },
        ArrayFigure {
            name: "raid1_seqwrite_ratio",
            value: r1_r,
            unit: "ratio",
            baseline: Some(shape("one member's write bandwidth")),
            target: Some(">= 0.9"),
        },
        ArrayFigure {
            name: "raid5_seqwrite_gbps",
            value: gb(r5_u),
            unit: "GB/s",
            baseline: None,
            target: None,
        },
        ArrayFigure {
            name: "raid1_seqwrite_gbps",
            value: gb(r1_u),
            unit: "GB/s",
            baseline: None,
            target: None,
        },
        ArrayFigure {
            name: "two_members_parallel_gbps",
            value: gb(ceiling),
            unit: "GB/s",
            baseline: Some("two threads, 1 MiB sequential pwrite each to its own tmpfs file, at once: the machine's ceiling for member writes in parallel".into()),
            target: None,
        },
        ArrayFigure {
            name: "member_seqwrite_gbps",
            value: gb((r5_b + r1_b) / 2.0),
            unit: "GB/s",
            baseline: None,
            target: None,
        },
    ])
}

fn array_bench(json: bool, quick: bool, full: bool, dir: Option<PathBuf>) -> CmdResult {
    let mut figures = seqwrite_figures(quick, full, dir)?;
    figures.extend(parity_figures(quick, full)?);
    if json {
        for f in &figures {
            println!("{}", figure("array", f.name, f.value, f.unit, f.baseline.as_deref(), f.target));
        }
    } else {
        println!("bench array: data throughput counts data bytes in (parity out not counted)");
        for f in &figures {
            let target = f.target.map(|t| format!("; target {t}")).unwrap_or_default();
            println!("  {:24} {:8.3} {}{target}", f.name, f.value, f.unit);
            if let Some(b) = &f.baseline {
                println!("    baseline: {b}");
            }
        }
    }
    Ok(())
}
