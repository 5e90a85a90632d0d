//! `umd demo`: umd's main job on a built-in example.
//!
//! In a scratch directory: creates a 4-member raid5 of image files with
//! `umd create --assume-clean` (the same code), examines a member, serves
//! the array read-write through FUSE with `umd assemble --mount` (this very
//! executable, run as a child process: the real serving process), writes
//! data through `DIR/data` (whole-stripe writes, then small unaligned ones),
//! fsyncs, reads everything back and checks every byte, shows
//! `DIR/md/array_state` going `clean` → `active` → (after `safe_mode_delay`
//! without writes) `clean` again, prints `umd detail`, stops the array with
//! `umd stop`, then checks the member images: extracted whole, extracted
//! with each member missing in turn (rebuilt from parity), and read through
//! a read-only mount with one member missing.
//!
//! Everything it made is undone at the end, also when a step fails: the
//! serving process is stopped (killed if `umd stop` fails), the mount
//! removed, the scratch directory deleted (unless `--keep`, which keeps the
//! image files).

use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use md::{assemble, AssembleOptions};

use crate::{CliError, CmdResult};
use md::synth::Rng;

/// Pattern id of the data the demo writes (the fixtures use 1).
const PATTERN: u64 = 2;
/// Unaligned writes after the whole-array fill.
const SMALL_WRITES: usize = 256;
/// How long the serving process gets to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the array must hold: the pattern, then the small writes in order.
struct Expected {
    overwrites: Vec<(u64, Vec<u8>)>,
}

impl Expected {
    /// The expected bytes at array offset `off` (any alignment).
    fn fill(&self, off: u64, out: &mut [u8]) {
        let start = off & !4095;
        let skip = (off - start) as usize;
        let mut tmp = vec![0u8; skip + out.len()];
        md::synth::pattern_fill(start, PATTERN, &mut tmp);
        out.copy_from_slice(&tmp[skip..]);
        let end = off + out.len() as u64;
        for (o, data) in &self.overwrites {
            let oend = o + data.len() as u64;
            if *o >= end || oend <= off {
                continue;
            }
            let a = (*o).max(off);
            let b = oend.min(end);
            out[(a - off) as usize..(b - off) as usize]
                .copy_from_slice(&data[(a - o) as usize..(b - o) as usize]);
        }
    }
}

/// Compares everything written to it with [`Expected`], from offset 0.
struct Verifier<'a> {
    want: &'a Expected,
    offset: u64,
    scratch: Vec<u8>,
    mismatch: Option<u64>,
}

impl<'a> Verifier<'a> {
    fn new(want: &'a Expected) -> Self {
        Verifier { want, offset: 0, scratch: Vec::new(), mismatch: None }
    }

    fn check(&self, what: &str, size: u64) -> Result<u64, CliError> {
        if let Some(off) = self.mismatch {
            return Err(CliError(format!("{what}: data mismatch at array byte {off}")));
        }
        if self.offset != size {
            return Err(CliError(format!("{what}: {} bytes, expected {size}", self.offset)));
        }
        Ok(self.offset)
    }
}

impl Write for Verifier<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.mismatch.is_none() {
            self.scratch.resize(buf.len(), 0);
            self.want.fill(self.offset, &mut self.scratch);
            if let Some(i) = buf.iter().zip(&self.scratch).position(|(a, b)| a != b) {
                self.mismatch = Some(self.offset + i as u64);
            }
        }
        self.offset += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What an interrupted demo (SIGINT, SIGTERM, SIGHUP) must undo, kept up
/// to date by the steps; [`on_interrupt`]'s thread undoes it and exits.
struct Interrupt {
    /// The serving process and its mount directory.
    serving: Option<(u32, PathBuf)>,
    /// The scratch directory, when the demo made it and removes it whole.
    dir: Option<PathBuf>,
    /// What the demo made in a directory that existed before.
    files: Vec<PathBuf>,
}

/// Set by the signal thread before it cleans up: the steps' own cleanup
/// then stands aside, and [`run`] waits for the process to exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

static INTERRUPT: Mutex<Interrupt> = Mutex::new(Interrupt { serving: None, dir: None, files: Vec::new() });

fn interrupt() -> std::sync::MutexGuard<'static, Interrupt> {
    INTERRUPT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes SIGINT, SIGTERM and SIGHUP in a dedicated thread: on one, the
/// serving process is stopped (killed if it does not unmount within 10 s),
/// what the demo made is removed, and the process exits with 128 + the
/// signal. Must run before any other thread exists (the mask is
/// inherited; child processes start with an empty one).
fn on_interrupt() -> CmdResult {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::Builder::new()
        .name("umd-demo-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised set; `sig` a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            INTERRUPTED.store(true, Ordering::SeqCst);
            let g = interrupt();
            eprintln!("umd: demo: interrupted (signal {sig}); cleaning up");
            if let Some((pid, mnt)) = &g.serving {
                let pid = *pid as libc::pid_t;
                // SAFETY: plain kill(2) on the serving process this demo started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while crate::mount::is_mounted(mnt) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if crate::mount::is_mounted(mnt) {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    if let Ok(c) = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()) {
                        // SAFETY: `c` is a valid NUL-terminated path.
                        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                    }
                }
                // Reap it (it is our child), so that no zombie is left.
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut status = 0;
                // SAFETY: waitpid on our own child with a valid status pointer.
                while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if let Some(dir) = &g.dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            for f in &g.files {
                let _ = std::fs::remove_file(f).or_else(|_| std::fs::remove_dir(f));
            }
            std::process::exit(128 + sig);
        })
        .map_err(|e| CliError(format!("signal thread: {e}")))?;
    Ok(())
}

/// Removes the scratch directory on drop (unless `--keep`). Declared
/// before every [`Served`], so it is dropped after them: nothing is
/// mounted inside it any more when it goes.
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep && !INTERRUPTED.load(Ordering::SeqCst) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A `umd assemble --mount` child process. Dropping it without
/// [`Served::stop`] (a failed step) still ends it: `umd stop`, then SIGKILL
/// by PID, then a lazy unmount of whatever is left.
struct Served {
    child: Child,
    mnt: PathBuf,
    stopped: bool,
}

impl Served {
    /// Runs `umd assemble [--readonly] --mount MNT MEMBER...` (this
    /// executable) and waits for its ready line, which it prints.
    fn start(mnt: &Path, members: &[PathBuf], readonly: bool) -> Result<Served, CliError> {
        let exe = std::env::current_exe().map_err(|e| CliError(format!("finding umd's executable: {e}")))?;
        std::fs::create_dir_all(mnt).map_err(|e| CliError(format!("{}: {e}", mnt.display())))?;
        let mut cmd = Command::new(exe);
        cmd.arg("assemble");
        if readonly {
            cmd.arg("--readonly");
        }
        cmd.arg("--mount").arg(mnt).args(["--threads", "4"]).args(members);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| CliError(format!("starting umd assemble: {e}")))?;
        let stdout = child.stdout.take();
        interrupt().serving = Some((child.id(), mnt.to_path_buf()));
        let mut served = Served { child, mnt: mnt.to_path_buf(), stopped: false };
        let Some(stdout) = stdout else {
            return Err(CliError("umd assemble: no standard output".into()));
        };
        // The first line is the ready line; the rest is drained until the
        // process exits, so that it never writes into a closed pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("umd-demo-ready".into())
            .spawn(move || {
                let mut lines = io::BufReader::new(stdout).lines();
                if let Some(Ok(line)) = lines.next() {
                    let _ = tx.send(line);
                }
                for _ in lines {}
            })
            .map_err(|e| CliError(format!("reader thread: {e}")))?;
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => {
                println!("   {line}");
                Ok(served)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = served.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                served.stopped = true;
                Err(CliError(format!("umd assemble --mount {} failed ({status})", mnt.display())))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(CliError(format!(
                "umd assemble --mount {}: not ready after {} s",
                mnt.display(),
                READY_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Runs `umd stop MNT` (this executable) and waits for it and for the
    /// serving process to end. The serving process is our child: it is
    /// reaped here meanwhile, or `umd stop` would wait for a zombie.
    fn stop(mut self) -> CmdResult {
        let r = self.stop_inner(Duration::from_secs(30));
        if r.is_ok() {
            self.stopped = true;
            interrupt().serving = None;
        }
        r
    }

    fn stop_inner(&mut self, limit: Duration) -> CmdResult {
        let exe = std::env::current_exe().map_err(|e| CliError(format!("finding umd's executable: {e}")))?;
        let mut stopper = Command::new(exe)
            .arg("stop")
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| CliError(format!("starting umd stop: {e}")))?;
        let deadline = Instant::now() + limit;
        let mut served: Option<std::process::ExitStatus> = None;
        let mut stop_status: Option<std::process::ExitStatus> = None;
        while served.is_none() || stop_status.is_none() {
            if served.is_none() {
                served =
                    self.child.try_wait().map_err(|e| CliError(format!("waiting for umd assemble: {e}")))?;
            }
            if stop_status.is_none() {
                stop_status =
                    stopper.try_wait().map_err(|e| CliError(format!("waiting for umd stop: {e}")))?;
            }
            if Instant::now() > deadline {
                let _ = stopper.kill();
                let _ = stopper.wait();
                return Err(CliError(format!(
                    "{}: the array did not stop within {} s",
                    self.mnt.display(),
                    limit.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match (stop_status, served) {
            (Some(st), _) if !st.success() => {
                Err(CliError(format!("umd stop {} failed ({st})", self.mnt.display())))
            }
            (_, Some(st)) if !st.success() => {
                Err(CliError(format!("the serving process (umd assemble) exited with {st}")))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Served {
    /// A failed step: stop the array anyway; kill the serving process by
    /// PID if `umd stop` does not end it; detach whatever stays mounted.
    fn drop(&mut self) {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return;
        }
        if self.stopped {
            interrupt().serving = None;
            return;
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Err(e) = self.stop_inner(Duration::from_secs(10)) {
                eprintln!("umd: demo: {e}; killing the serving process {}", self.child.id());
            }
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if crate::mount::is_mounted(&self.mnt) {
            if let Ok(c) = std::ffi::CString::new(self.mnt.as_os_str().as_encoded_bytes()) {
                // SAFETY: `c` is a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        interrupt().serving = None;
    }
}

/// Records every value of `DIR/md/array_state` seen with poll(2) (POLLPRI)
/// until dropped.
struct StateWatch {
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn read_word(f: &mut std::fs::File) -> io::Result<String> {
    let mut s = String::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_string(&mut s)?;
    Ok(s.trim_end().to_string())
}

impl StateWatch {
    fn start(path: &Path) -> Result<StateWatch, CliError> {
        let mut f = std::fs::File::open(path).map_err(|e| CliError(format!("{}: {e}", path.display())))?;
        let first = read_word(&mut f).map_err(|e| CliError(format!("{}: {e}", path.display())))?;
        let seen = Arc::new(Mutex::new(vec![first]));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("umd-demo-state".into())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) {
                    let mut p = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
                    // SAFETY: one valid pollfd for the duration of the call.
                    let r = unsafe { libc::poll(&mut p, 1, 50) };
                    if r <= 0 {
                        continue;
                    }
                    let Ok(w) = read_word(&mut f) else { return };
                    let mut v = seen2.lock().unwrap_or_else(|p| p.into_inner());
                    if v.last() != Some(&w) {
                        v.push(w);
                    }
                }
            })
            .map_err(|e| CliError(format!("watcher thread: {e}")))?;
        Ok(StateWatch { seen, stop, thread: Some(thread) })
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for StateWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn array_state(mnt: &Path) -> Result<String, CliError> {
    let p = mnt.join("md/array_state");
    std::fs::read_to_string(&p)
        .map(|s| s.trim_end().to_string())
        .map_err(|e| CliError(format!("{}: {e}", p.display())))
}

fn mib_s(bytes: u64, d: Duration) -> String {
    format!("{:.0} MiB/s", bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64().max(1e-6))
}

/// Reads all of `DIR/data` and checks it against `want`.
fn verify_mount(mnt: &Path, want: &Expected, size: u64, what: &str) -> Result<u64, CliError> {
    let data = mnt.join("data");
    let mut f = std::fs::File::open(&data).map_err(|e| CliError(format!("{}: {e}", data.display())))?;
    let mut v = Verifier::new(want);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| CliError(format!("{what}: {e}")))?;
        if n == 0 {
            break;
        }
        v.write_all(&buf[..n])?;
    }
    v.check(what, size)
}

/// Assembles `members` read-only in this process and checks every byte.
fn verify_extract(members: &[PathBuf], want: &Expected, what: &str) -> Result<u64, CliError> {
    let asm = assemble(members, &AssembleOptions::default())?;
    // That members are missing is the point here; any other note is shown.
    for n in asm.notes.iter().filter(|n| !n.starts_with("DEGRADED")) {
        println!("   note: {n}");
    }
    let mut v = Verifier::new(want);
    crate::extract::copy_out(&asm.array, &mut v, 2, what)?;
    v.check(what, asm.array.size())
}

/// Writes the demo's data through `DIR/data`: the pattern over the whole
/// array in 1 MiB writes, then [`SMALL_WRITES`] unaligned writes of 1 byte
/// to 64 KiB, then fsync. Returns what the array must now hold and when
/// the last write returned.
fn write_data(mnt: &Path, size: u64) -> Result<(Expected, Instant), CliError> {
    let data = mnt.join("data");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .map_err(|e| CliError(format!("{}: {e}", data.display())))?;
    let werr = |off: u64, e: io::Error| CliError(format!("{}: write at byte {off}: {e}", data.display()));
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        md::synth::pattern_fill(off, PATTERN, &mut buf[..n]);
        f.write_all_at(&buf[..n], off).map_err(|e| werr(off, e))?;
        if off == 0 {
            println!("   after the first write: array_state {}", array_state(mnt)?);
        }
        off += n as u64;
    }
    let big = t.elapsed();
    let mut rng = Rng(0x5eed_0000_0000_0001 ^ size);
    let mut overwrites = Vec::with_capacity(SMALL_WRITES);
    let mut small_bytes = 0u64;
    for _ in 0..SMALL_WRITES {
        let len = 1 + rng.below((64u64 << 10).min(size)) as usize;
        let off = rng.below(size - len as u64 + 1);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        f.write_all_at(&bytes, off).map_err(|e| werr(off, e))?;
        small_bytes += len as u64;
        overwrites.push((off, bytes));
    }
    let small = t.elapsed() - big;
    let last = Instant::now();
    f.sync_all().map_err(|e| CliError(format!("{}: fsync: {e}", data.display())))?;
    println!("   {} MiB in 1 MiB writes: {:.2} s ({})", size >> 20, big.as_secs_f64(), mib_s(size, big));
    println!(
        "   {SMALL_WRITES} unaligned writes of 1 B to 64 KiB ({small_bytes} bytes): {:.2} s; fsync: ok",
        small.as_secs_f64()
    );
    Ok((Expected { overwrites }, last))
}

/// Runs the demo.
pub fn run(dir: Option<PathBuf>, keep: bool, member_mib: u64) -> CmdResult {
    if !(2..=1 << 20).contains(&member_mib) {
        return Err(CliError("--member-mib must be between 2 and 1048576".into()));
    }
    on_interrupt()?;
    let r = steps(dir, keep, member_mib);
    if INTERRUPTED.load(Ordering::SeqCst) {
        // The signal thread is cleaning up and ends the process.
        loop {
            std::thread::park();
        }
    }
    r
}

/// The demo's steps; everything they made is undone when this returns.
fn steps(dir: Option<PathBuf>, keep: bool, member_mib: u64) -> CmdResult {
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("umd-demo-{}", std::process::id())));
    let existed = dir.exists();
    std::fs::create_dir_all(&dir).map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
    if !keep && !existed {
        interrupt().dir = Some(dir.clone());
    }
    // A directory the user named and that already existed is not removed,
    // only what the demo put into it.
    let members: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("m{i}.img"))).collect();
    let mnt = dir.join("mnt");
    let _scratch = Scratch { dir: dir.clone(), keep: keep || existed };
    // Activated once `create` made the images (never for files it refused).
    let mut files = DemoFiles { members: members.clone(), mnt: mnt.clone(), keep, active: false };
    let t0 = Instant::now();
    println!("umd demo, in {}", dir.display());

    println!(
        "1. umd create --level 5 --raid-devices 4 --name demo --size {member_mib}M --assume-clean m0.img m1.img m2.img m3.img"
    );
    crate::create::run(crate::create::Options {
        level: "5".into(),
        raid_devices: 4,
        chunk: None,
        layout: None,
        name: Some("demo".into()),
        homehost: None,
        size: Some(format!("{member_mib}M")),
        metadata: None,
        assume_clean: true,
        bitmap: None,
        bitmap_chunk: None,
        force: false,
        members: members.clone(),
    })?;
    files.active = existed;
    if existed && !keep {
        let mut made = members.clone();
        made.push(mnt.clone());
        interrupt().files = made;
    }

    println!("2. umd examine m0.img");
    let f = {
        let m = blockio::Member::open(&members[0], blockio::Access::ReadOnly)?;
        md::superblock::load(&m, None, true)
            .map_err(|e| CliError(format!("{}: {e}", members[0].display())))?
    };
    for line in md::examine::report(&f, md::examine::hostname().as_deref()).to_text().lines() {
        println!("   {line}");
    }

    println!("3. umd assemble --mount {} m0.img m1.img m2.img m3.img", mnt.display());
    let served = Served::start(&mnt, &members, false)?;
    let size = std::fs::metadata(mnt.join("data"))
        .map_err(|e| CliError(format!("{}/data: {e}", mnt.display())))?
        .len();
    let delay = std::fs::read_to_string(mnt.join("md/safe_mode_delay")).unwrap_or_default();
    println!("   {}/md/array_state: {}", mnt.display(), array_state(&mnt)?);

    println!("4. writing {} MiB through {}/data, then fsync", size >> 20, mnt.display());
    let watch = StateWatch::start(&mnt.join("md/array_state"))?;
    let (want, idle) = write_data(&mnt, size)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut state = array_state(&mnt)?;
    println!("   after fsync: array_state {state}");
    while state != "clean" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        state = array_state(&mnt)?;
    }
    if state != "clean" {
        return Err(CliError(format!("array_state is still {state} 10 s after the last write")));
    }
    let clean_after = idle.elapsed();
    // Let the watcher see the last change before it is read.
    std::thread::sleep(Duration::from_millis(100));
    println!(
        "   array_state clean again {} ms after the last write (safe_mode_delay {} s)",
        clean_after.as_millis(),
        delay.trim_end()
    );
    println!("   every value seen by poll(2) on md/array_state: {}", watch.seen().join(" → "));
    drop(watch);

    println!("5. reading {}/data back", mnt.display());
    let t = Instant::now();
    let n = verify_mount(&mnt, &want, size, "read back through the mount")?;
    println!("   ok: all {n} bytes match ({})", mib_s(n, t.elapsed()));

    println!("6. umd detail {}", mnt.display());
    let exe = std::env::current_exe().map_err(|e| CliError(format!("finding umd's executable: {e}")))?;
    let out = Command::new(exe)
        .arg("detail")
        .arg(&mnt)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| CliError(format!("umd detail: {e}")))?;
    if !out.status.success() {
        return Err(CliError(format!("umd detail {} failed ({})", mnt.display(), out.status)));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }

    println!("7. umd stop {}", mnt.display());
    served.stop()?;

    println!(
        "8. umd extract m0.img m1.img m2.img m3.img, then with each member left out (rebuilt from parity)"
    );
    let n = verify_extract(&members, &want, "extract")?;
    println!("   all members: ok, {n} bytes match");
    for k in 0..members.len() {
        let rest: Vec<PathBuf> =
            members.iter().enumerate().filter(|&(i, _)| i != k).map(|(_, m)| m.clone()).collect();
        let n = verify_extract(&rest, &want, &format!("extract without m{k}.img"))?;
        println!("   without m{k}.img: ok, {n} bytes match");
    }

    println!("9. umd assemble --readonly --mount {} m0.img m1.img m3.img (m2.img missing)", mnt.display());
    let degraded = [members[0].clone(), members[1].clone(), members[3].clone()];
    let served = Served::start(&mnt, &degraded, true)?;
    let n = verify_mount(&mnt, &want, size, "degraded read through the mount")?;
    println!(
        "   ok: all {n} bytes read through the mount match; md/degraded {}, md/array_state {}",
        std::fs::read_to_string(mnt.join("md/degraded")).unwrap_or_default().trim_end(),
        array_state(&mnt)?
    );
    served.stop()?;

    if keep {
        println!("done in {:.1} s; image files kept in {}", t0.elapsed().as_secs_f64(), dir.display());
    } else {
        println!("done in {:.1} s; everything the demo made is removed", t0.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The demo's files inside a directory that existed before (and so is not
/// removed as a whole): removed one by one on drop, unless `--keep`.
struct DemoFiles {
    members: Vec<PathBuf>,
    mnt: PathBuf,
    keep: bool,
    active: bool,
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        if !self.active || self.keep || INTERRUPTED.load(Ordering::SeqCst) {
            return;
        }
        for m in &self.members {
            let _ = std::fs::remove_file(m);
        }
        let _ = std::fs::remove_dir(&self.mnt);
    }
}
