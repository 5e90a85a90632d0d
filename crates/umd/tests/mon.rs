//! `umd mon`, the metadata manager, over real read-write mounts: the
//! superblocks on the members' image files are read back directly (and
//! with `umd examine` and the real `mdadm --examine`) while writes go
//! through `DIR/data`.
//!
//! * 1,000 write → idle cycles on a raid5: right after each write returns
//!   the superblocks on disk say dirty (`resync_offset` 0, `events` + 1);
//!   after the idle time (`array_state` back to `clean`) they say clean
//!   (`resync_offset` `u64::MAX`, `events` + 1 again); the monitor thread
//!   made no allocation and logged no error.
//! * The manager killed with SIGKILL: a write to the clean array stalls
//!   (nothing acknowledged without metadata, the superblocks unchanged);
//!   `umd mon DIR` started by hand takes over, the write completes with the
//!   superblocks dirty, idle makes them clean, `umd stop` ends the
//!   hand-started manager too. Killed while the array is active: writes
//!   go on (the superblocks already say dirty), idle leaves them dirty,
//!   a manager started by hand cleans them.
//! * Bad input: not a umd mount, a second manager, `--status` without a
//!   manager, a read-only mount (no manager, and none can be started).
//! * A degraded array: the present members are marked, the absent one's
//!   image is not touched.

mod common;

use common::*;
use md::synth::Rng;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Byte offset of the v1.2 superblock on a member.
const SB_OFFSET: u64 = 4096;
/// `resync_offset` of a clean (in sync) array.
const CLEAN: u64 = u64::MAX;

// ---------------------------------------------------------------------------
// Superblocks, read from the image files.

/// `events` and `resync_offset` of a member's superblock, read directly
/// from its image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sb {
    events: u64,
    resync: u64,
}

impl Sb {
    fn clean(self) -> bool {
        self.resync == CLEAN
    }
    fn dirty(self) -> bool {
        self.resync == 0
    }
}

fn read_sb(f: &std::fs::File) -> Sb {
    let mut b = [0u8; 256];
    f.read_exact_at(&mut b, SB_OFFSET).expect("read superblock");
    assert_eq!(&b[..4], &0xa92b_4efcu32.to_le_bytes(), "superblock magic");
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    Sb { events: u64_at(200), resync: u64_at(208) }
}

/// The members' image files, opened for reading their superblocks.
struct Images {
    paths: Vec<PathBuf>,
    files: Vec<std::fs::File>,
}

impl Images {
    fn open(paths: &[PathBuf]) -> Images {
        let files = paths.iter().map(|p| std::fs::File::open(p).expect("open member image")).collect();
        Images { paths: paths.to_vec(), files }
    }
    fn sb(&self, k: usize) -> Sb {
        read_sb(&self.files[k])
    }
    fn all(&self) -> Vec<Sb> {
        (0..self.files.len()).map(|k| self.sb(k)).collect()
    }
    /// The raw superblock block of every member.
    fn raw(&self) -> Vec<Vec<u8>> {
        self.files
            .iter()
            .map(|f| {
                let mut b = vec![0u8; 4096];
                f.read_exact_at(&mut b, SB_OFFSET).expect("read superblock block");
                b
            })
            .collect()
    }
    /// Asserts every member says clean with `events` (any events if None);
    /// returns the events.
    fn assert_all_clean(&self, events: Option<u64>, what: &str) -> u64 {
        let all = self.all();
        let e = events.unwrap_or(all[0].events);
        for (k, sb) in all.iter().enumerate() {
            assert!(
                sb.clean() && sb.events == e,
                "{what}: member {} reads {sb:?}, want clean with events {e} (all: {all:?})",
                self.paths[k].display()
            );
        }
        e
    }
    /// Polls until every member says clean (the manager stores `clean`
    /// first and writes the superblocks after it); `timeout` at most.
    fn wait_all_clean(&self, timeout: Duration, what: &str) -> Vec<Sb> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.all();
            if all.iter().all(|s| s.clean()) {
                return all;
            }
            assert!(Instant::now() < deadline, "{what}: superblocks not clean after {timeout:?}: {all:?}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

// ---------------------------------------------------------------------------
// Arrays, mounts and processes.

fn create(args: &[&str], members: &[PathBuf]) {
    let out = run(umd().arg("create").args(args).args(members));
    assert!(out.status.success(), "create: {}", String::from_utf8_lossy(&out.stderr));
}

/// `/run/umd/<escaped dir>` + `ext`, as `umd` names its files.
fn run_file(dir: &Path, ext: &str) -> PathBuf {
    let s = dir.to_string_lossy();
    let mut name = String::new();
    for c in s.chars() {
        match c {
            '/' => name.push('_'),
            '_' => name.push_str("__"),
            c if c.is_ascii_alphanumeric() || c == '-' || c == '.' => name.push(c),
            c => name.push_str(&format!("%{:x}", c as u32)),
        }
    }
    PathBuf::from("/run/umd").join(format!("{name}.{ext}"))
}

fn lock_file(dir: &Path) -> PathBuf {
    run_file(dir, "mon.lock")
}

fn sock_file(dir: &Path) -> PathBuf {
    run_file(dir, "mon.sock")
}

/// The PID recorded in `p`, if any.
fn pid_in(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Whether `pid` has exited (gone, or a zombie not yet reaped).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Whether `pid` is a live `umd` process whose arguments contain `word`.
fn live_umd(pid: i32, word: &str) -> bool {
    if exited(pid) {
        return false;
    }
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmd.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    args.first().is_some_and(|a| a.ends_with("umd")) && args.iter().any(|a| a == word)
}

/// A read-write (or read-only) array served at `dir` by a `umd assemble
/// --daemon`. On drop (also when a test fails): `umd stop` if still
/// mounted, then SIGKILL for a serving process or a manager still alive,
/// then a lazy unmount ([`MountGuard`]).
struct Served {
    dir: PathBuf,
    daemon: Option<i32>,
    _mount: MountGuard,
}

impl Served {
    fn assemble(dir: &Path, members: &[PathBuf], opts: &[&str]) -> (Served, String) {
        Served::assemble_hooks(dir, members, opts, false)
    }

    /// [`Served::assemble`], with `UMD_TEST_HOOKS=1` when `hooks` (the
    /// daemon then serves `DIR/umd-test-hook`).
    fn assemble_hooks(dir: &Path, members: &[PathBuf], opts: &[&str], hooks: bool) -> (Served, String) {
        std::fs::create_dir_all(dir).expect("mkdir");
        let parent = std::fs::canonicalize(dir.parent().expect("parent")).expect("canonicalize");
        let dir = parent.join(dir.file_name().expect("name"));
        let mount = MountGuard { dir: dir.clone(), pid: None };
        let mut cmd = umd();
        if hooks {
            cmd.env("UMD_TEST_HOOKS", "1");
        }
        let out = run(cmd.arg("assemble").args(opts).arg("--mount").arg(&dir).arg("--daemon").args(members));
        let served = Served { daemon: pid_in(&run_file(&dir, "pid")), dir, _mount: mount };
        assert!(out.status.success(), "assemble: {}", String::from_utf8_lossy(&out.stderr));
        assert!(served.daemon.is_some(), "no PID file for {}", served.dir.display());
        (served, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn md(&self, attr: &str) -> PathBuf {
        self.dir.join("md").join(attr)
    }

    fn stop(&self) {
        let out = run(umd().arg("stop").arg(&self.dir));
        assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!is_mounted(&self.dir), "still mounted after umd stop");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new(env!("CARGO_BIN_EXE_umd"))
                .arg("stop")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(p) = self.daemon.filter(|&p| live_umd(p, "assemble")) {
            // SAFETY: plain kill(2) of the serving process this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if let Some(p) = pid_in(&lock_file(&self.dir)).filter(|&p| live_umd(p, "mon")) {
            // SAFETY: plain kill(2) of the manager of this test's array.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// A `umd mon DIR` started by the test; killed on drop if still running.
struct MonChild {
    child: Option<Child>,
}

impl MonChild {
    /// Starts `umd mon dir` and waits (20 s at most) for its ready line,
    /// which it returns.
    fn start(dir: &Path, stderr: &Path) -> (MonChild, String) {
        let err = std::fs::File::create(stderr).expect("mon stderr file");
        let mut child = umd()
            .arg("mon")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn umd mon");
        let out = child.stdout.take().expect("mon stdout");
        let guard = MonChild { child: Some(child) };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the manager never blocks on a full pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        assert!(
            line.starts_with("umd mon: managing"),
            "umd mon ready line {line:?}; stderr: {}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
        (guard, line)
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits up to `limit` for the manager to exit by itself.
    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = c.try_wait().expect("try_wait umd mon") {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for MonChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Attributes and the manager's status.

fn write_attr(p: &Path, value: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).open(p).expect("open attribute for writing");
    f.write_all(value.as_bytes()).unwrap_or_else(|e| panic!("store {value:?} into {}: {e}", p.display()));
}

fn read_attr(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `array_state`, opened once and polled the way a manager does.
struct StateWatch(std::fs::File);

impl StateWatch {
    fn open(p: &Path) -> StateWatch {
        StateWatch(std::fs::File::open(p).expect("open array_state"))
    }

    fn read(&self) -> String {
        let mut b = [0u8; 64];
        let n = self.0.read_at(&mut b, 0).expect("re-read array_state");
        String::from_utf8_lossy(&b[..n]).trim_end().to_string()
    }

    /// Waits (POLLPRI, re-reading from offset 0 on each wake-up) until
    /// `array_state` reads `want`; panics after `timeout`.
    fn wait_for(&self, want: &str, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.read();
            if now == want {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}: array_state still {now:?} after {timeout:?}, want {want:?}");
            let mut p =
                libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLPRI | libc::POLLERR, revents: 0 };
            // Bounded, so a lost notification costs 100 ms, not the test.
            let ms = left.as_millis().min(100) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut p, 1, ms) };
            assert!(r >= 0, "poll array_state: {}", std::io::Error::last_os_error());
        }
    }
}

/// `umd mon --status dir`: the parsed fields, or the error output.
fn mon_status(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let out = run(umd().arg("mon").arg("--status").arg(dir));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(line.lines().count(), 1, "status output {line:?}");
    let mut m = BTreeMap::new();
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("status field {kv:?} in {line:?}"));
        m.insert(k.to_string(), v.to_string());
    }
    for k in ["state", "dirty", "events", "acks", "cleans", "sb_writes", "errors", "monitor_allocs"] {
        assert!(m.contains_key(k), "status line {line:?} lacks {k}");
    }
    Ok(m)
}

/// Polls `umd mon --status dir` until `done` holds for its fields (the
/// manager updates its counters after the action they count: a write may
/// return, or a superblock read clean, a moment before): the last status.
/// Panics after 5 s.
fn status_until(
    dir: &Path,
    what: &str,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = mon_status(dir).unwrap_or_else(|e| panic!("umd mon --status: {e}"));
        if done(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "manager status not {what} after 5 s: {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`status_until`] the manager has seen `clean`, says its superblocks are
/// clean and has marked them clean `cleans` times at least.
fn settled_status(dir: &Path, cleans: u64) -> BTreeMap<String, String> {
    status_until(dir, "settled clean", |st| {
        st["state"] == "clean" && st["dirty"] == "0" && num(st, "cleans") >= cleans
    })
}

fn num(m: &BTreeMap<String, String>, k: &str) -> u64 {
    m[k].parse().unwrap_or_else(|_| panic!("status {k}={} is not a number", m[k]))
}

/// The real `mdadm --examine` (and `umd examine`) of `member`: state clean,
/// checksum correct, `events`.
fn examine_clean(member: &Path, events: u64, what: &str) {
    assert!(have_tool("mdadm"), "mdadm is not installed (scripts/setup.sh installs it)");
    let out = run(Command::new("mdadm").arg("--examine").arg(member));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: mdadm --examine: {}{text}", String::from_utf8_lossy(&out.stderr));
    let m = parse_examine(&text);
    assert_eq!(m.get("State").map(String::as_str), Some("clean"), "{what}: mdadm --examine:\n{text}");
    assert_eq!(m.get("Events"), Some(&events.to_string()), "{what}: mdadm --examine:\n{text}");
    let csum = m.get("Checksum").cloned().unwrap_or_default();
    assert!(csum.ends_with("- correct"), "{what}: mdadm --examine checksum {csum:?}:\n{text}");

    let out = run(umd().arg("examine").arg(member));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: umd examine: {}{text}", String::from_utf8_lossy(&out.stderr));
    let m = parse_examine(&text);
    assert_eq!(m.get("State").map(String::as_str), Some("clean"), "{what}: umd examine:\n{text}");
    assert_eq!(m.get("Events"), Some(&events.to_string()), "{what}: umd examine:\n{text}");
    let csum = m.get("Checksum").cloned().unwrap_or_default();
    assert!(csum.ends_with("- correct"), "{what}: umd examine checksum {csum:?}:\n{text}");
}

/// A 4 KiB write through `data` in a thread; its result arrives on the
/// returned channel.
fn write_in_thread(data: &Path, off: u64, byte: u8) -> mpsc::Receiver<std::io::Result<()>> {
    let data = data.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .and_then(|f| f.write_all_at(&[byte; 4096], off));
        let _ = tx.send(r);
    });
    rx
}

const RAID5: [&str; 9] = ["-l", "5", "-n", "4", "-c", "64", "-z", "4M", "--assume-clean"];

fn members(s: &Scratch, n: usize) -> Vec<PathBuf> {
    (0..n).map(|k| s.path(&format!("m{k}.img"))).collect()
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn write_burst_idle_cycles() {
    const CYCLES: usize = 1000;
    /// `safe_mode_delay`.
    const DELAY: Duration = Duration::from_millis(20);
    let t_start = Instant::now();
    let s = Scratch::new("mon-cycles");
    let members = members(&s, 4);
    create(&RAID5, &members);
    let img = Images::open(&members);
    let e0 = img.assert_all_clean(None, "after create");
    let (a, ready) = Served::assemble(&s.path("mnt"), &members, &[]);
    assert!(ready.contains("mounted read-write"), "ready line: {ready}");
    let st = mon_status(&a.dir).expect("a read-write mount has a manager");
    assert_eq!((st["state"].as_str(), st["dirty"].as_str()), ("clean", "0"), "status {st:?}");
    assert_eq!(num(&st, "events"), e0, "status {st:?}");

    write_attr(&a.md("safe_mode_delay"), &format!("0.{:03}\n", DELAY.as_millis()));
    assert_eq!(read_attr(&a.md("safe_mode_delay")), "0.020\n");
    let watch = StateWatch::open(&a.md("array_state"));
    assert_eq!(watch.read(), "clean");
    let data =
        std::fs::OpenOptions::new().read(true).write(true).open(a.dir.join("data")).expect("open data");
    let blocks = data.metadata().expect("stat data").len() / 4096;
    let mut rng = Rng(0x6d6f_6e5f_6379_636c);
    let mut buf = [0u8; 4096];
    let mut last_clean = e0;
    // Writes whose dirty superblocks were already clean again when read:
    // (cycle, time from the write's start to the read's end). Allowed only
    // when that time exceeds the idle time (the machine was busy): the
    // clean mark cannot come earlier than `DELAY` after the write began.
    let mut missed = Vec::new();
    for i in 0..CYCLES {
        let full = i % 100 == 0 || i == CYCLES - 1;
        let what = format!("cycle {i}");
        buf.fill(i as u8);
        let t_write = Instant::now();
        data.write_all_at(&buf, rng.below(blocks) * 4096).expect("pwrite");
        let dirty = img.sb(0);
        let t_read = t_write.elapsed();
        let others = if full { img.all() } else { Vec::new() };
        if dirty.dirty() {
            assert_eq!(
                dirty.events,
                last_clean + 1,
                "{what}: dirty superblock's events (last clean {last_clean})"
            );
            for (k, sb) in others.iter().enumerate() {
                // Member 0 was read first: the others can only have gone
                // on to clean since.
                assert!(
                    *sb == dirty || (sb.clean() && sb.events == dirty.events + 1),
                    "{what}: member {k} reads {sb:?}, member 0 {dirty:?}"
                );
            }
        } else {
            assert!(
                dirty.clean() && dirty.events == last_clean + 2,
                "{what}: superblock right after the write returned: {dirty:?} (last clean {last_clean}): \
                 neither dirty nor dirty-then-clean"
            );
            assert!(
                t_read >= DELAY,
                "{what}: superblock clean again {t_read:?} after the write began, before the idle time \
                 ({DELAY:?}) could pass: {dirty:?}"
            );
            missed.push((i, t_read.as_millis()));
        }
        watch.wait_for("clean", Duration::from_secs(5), &what);
        let clean = if full {
            let all = img.wait_all_clean(Duration::from_secs(5), &what);
            assert!(all.iter().all(|sb| sb.events == all[0].events), "{what}: events differ: {all:?}");
            all[0]
        } else {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let sb = img.sb(0);
                if sb.clean() {
                    break sb;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: superblock not clean 5 s after array_state: {sb:?}"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        assert_eq!(clean.events, last_clean + 2, "{what}: clean superblock's events (dirty {dirty:?})");
        last_clean = clean.events;
        if full {
            examine_clean(&members[(i / 100) % members.len()], last_clean, &what);
        }
    }
    let elapsed = t_start.elapsed();
    eprintln!(
        "write_burst_idle_cycles: {CYCLES} cycles in {elapsed:?}; events {e0} -> {last_clean}; dirty \
         missed (already clean again when read) in {} cycles: (cycle, ms) {missed:?}",
        missed.len()
    );
    // The dirty state must have been seen in most cycles, or this test
    // checks little (a busy machine lets the idle time pass now and then).
    assert!(missed.len() <= CYCLES / 2, "dirty superblocks observed in too few cycles: missed {missed:?}");
    assert_eq!(last_clean, e0 + 2 * CYCLES as u64);

    let st = settled_status(&a.dir, CYCLES as u64);
    eprintln!("write_burst_idle_cycles: {st:?}");
    assert!(num(&st, "acks") >= CYCLES as u64, "status {st:?}");
    assert!(num(&st, "cleans") >= CYCLES as u64, "status {st:?}");
    assert_eq!(num(&st, "errors"), 0, "status {st:?}");
    assert_eq!(num(&st, "monitor_allocs"), 0, "status {st:?}");
    assert_eq!(num(&st, "events"), last_clean, "status {st:?}");
    assert_eq!(num(&st, "sb_writes"), 4 * 2 * CYCLES as u64, "status {st:?}");
    assert_eq!((st["state"].as_str(), st["dirty"].as_str()), ("clean", "0"), "status {st:?}");
    drop(data);
    drop(watch);
    a.stop();
    img.assert_all_clean(Some(last_clean), "after umd stop");
    for m in &members {
        examine_clean(m, last_clean, "after umd stop");
    }
    assert!(!lock_file(&a.dir).exists(), "manager's lock file left behind");
    assert!(!sock_file(&a.dir).exists(), "manager's socket left behind");
}

#[test]
fn monitor_killed_writes_stall_then_resume() {
    let s = Scratch::new("mon-kill");
    let members = members(&s, 4);
    create(&RAID5, &members);
    let img = Images::open(&members);
    let (a, _) = Served::assemble(&s.path("mnt"), &members, &[]);
    // Long enough to read the dirty superblocks after the write returns.
    write_attr(&a.md("safe_mode_delay"), "2.000\n");
    let watch = StateWatch::open(&a.md("array_state"));
    assert_eq!(watch.read(), "clean");
    let e0 = img.assert_all_clean(None, "before");
    let raw0 = img.raw();

    // The automatic manager, killed.
    kill_manager(&a.dir);
    let e = mon_status(&a.dir).expect_err("status answered with the manager dead");
    assert!(e.contains("no umd mon answers"), "status without a manager: {e}");

    // A write stalls: nobody acknowledges write-pending.
    let data = a.dir.join("data");
    let done = write_in_thread(&data, 1 << 20, 0xa5);
    match done.recv_timeout(Duration::from_millis(700)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("a write completed without a manager: {other:?}"),
    }
    assert_eq!(watch.read(), "write-pending", "array_state while the write stalls");
    assert!(img.raw() == raw0, "superblocks changed without a manager");
    match done.recv_timeout(Duration::from_millis(300)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("a write completed without a manager: {other:?}"),
    }

    // Taken over by hand.
    let (mut mon, ready) = MonChild::start(&a.dir, &s.path("mon.err"));
    assert!(ready.contains("superblocks clean"), "ready line {ready:?}");
    let r = done
        .recv_timeout(Duration::from_secs(10))
        .expect("the stalled write did not complete after takeover");
    r.expect("the stalled write failed");
    let after = img.all();
    for (k, sb) in after.iter().enumerate() {
        assert!(sb.dirty() && sb.events == e0 + 1, "member {k} after the write: {sb:?} (events before {e0})");
    }
    assert_eq!(pid_in(&lock_file(&a.dir)), Some(mon.pid()), "lock file names the new manager");
    let mut back = [0u8; 4096];
    std::fs::File::open(&data).expect("open data").read_exact_at(&mut back, 1 << 20).expect("read back");
    assert!(back.iter().all(|&b| b == 0xa5), "the stalled write's data");

    // Idle: clean.
    watch.wait_for("clean", Duration::from_secs(10), "after the takeover");
    let all = img.wait_all_clean(Duration::from_secs(5), "after the takeover");
    assert!(all.iter().all(|sb| sb.events == e0 + 2), "after idle: {all:?} (events before {e0})");
    let st = settled_status(&a.dir, 1);
    assert_eq!(
        (num(&st, "acks"), num(&st, "cleans"), num(&st, "errors"), num(&st, "monitor_allocs")),
        (1, 1, 0, 0),
        "status {st:?}"
    );
    examine_clean(&members[0], e0 + 2, "after the takeover");

    drop(watch);
    a.stop();
    let st = mon.wait(Duration::from_secs(10)).expect("the hand-started umd mon did not exit after umd stop");
    assert!(
        st.success(),
        "umd mon exited with {st}: {}",
        std::fs::read_to_string(s.path("mon.err")).unwrap_or_default()
    );
    img.assert_all_clean(Some(e0 + 2), "after umd stop");
    assert!(!lock_file(&a.dir).exists(), "manager's lock file left behind");
}

/// Kills the manager of `dir` (its PID from the lock file) with SIGKILL and
/// waits until it is gone; returns the PID.
fn kill_manager(dir: &Path) -> i32 {
    let pid = pid_in(&lock_file(dir)).expect("manager PID in its lock file");
    assert!(live_umd(pid, "mon"), "PID {pid} from the lock file is not a running umd mon");
    // SAFETY: plain kill(2) of the manager of this test's array.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill -9 {pid}");
    // A killed multi-threaded process shows as a zombie while its other
    // threads still exit (holding its descriptors): gone is when its lock
    // is free too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(exited(pid) && lock_free(&lock_file(dir))) {
        assert!(Instant::now() < deadline, "umd mon {pid} still alive 5 s after SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
    }
    pid
}

/// Whether nobody holds the `flock` of lock file `p` (taken and released
/// at once; true if the file is gone).
fn lock_free(p: &Path) -> bool {
    let Ok(f) = std::fs::File::open(p) else { return true };
    // SAFETY: flock on a descriptor we own.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if free {
        // SAFETY: as above.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    }
    free
}

/// The manager killed while the array is active (superblocks dirty):
/// writes go on without it (md asks no handshake while the metadata says
/// dirty), idle leaves the array `active-idle` and the superblocks dirty
/// (nobody may store `clean` before the metadata can follow); a manager
/// started by hand takes over from the dirty superblocks and cleans them.
#[test]
fn monitor_killed_while_dirty_takeover_cleans() {
    let s = Scratch::new("mon-kill-dirty");
    let members = members(&s, 4);
    create(&RAID5, &members);
    let img = Images::open(&members);
    let e0 = img.assert_all_clean(None, "before");
    let (a, _) = Served::assemble(&s.path("mnt"), &members, &[]);
    write_attr(&a.md("safe_mode_delay"), "1.000\n");
    let watch = StateWatch::open(&a.md("array_state"));
    let data = a.dir.join("data");
    let done = write_in_thread(&data, 0, 7);
    done.recv_timeout(Duration::from_secs(10)).expect("first write").expect("first write failed");
    let dirty = img.all();
    assert!(
        dirty.iter().all(|sb| sb.dirty() && sb.events == e0 + 1),
        "after the write: {dirty:?} (before {e0})"
    );
    assert_eq!(watch.read(), "active");
    kill_manager(&a.dir);

    // Writes go on: the superblocks already say dirty.
    for k in 1..=10u64 {
        let done = write_in_thread(&data, k * 4096, k as u8);
        done.recv_timeout(Duration::from_secs(10))
            .expect("a write to an active array stalled without a manager")
            .expect("write failed");
    }
    // Idle: active-idle, and it stays so; the superblocks stay dirty.
    watch.wait_for("active-idle", Duration::from_secs(10), "idle without a manager");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(watch.read(), "active-idle", "idle without a manager");
    assert_eq!(img.all(), dirty, "superblocks changed without a manager");

    // Taken over by hand, from the dirty superblocks.
    let (mut mon, ready) = MonChild::start(&a.dir, &s.path("mon.err"));
    assert!(
        ready.contains(&format!("events {}, superblocks dirty", e0 + 1)),
        "ready line {ready:?} (events before {e0})"
    );
    watch.wait_for("clean", Duration::from_secs(10), "after the takeover");
    let all = img.wait_all_clean(Duration::from_secs(5), "after the takeover");
    assert!(all.iter().all(|sb| sb.events == e0 + 2), "after the takeover: {all:?} (before {e0})");
    let st = settled_status(&a.dir, 1);
    assert_eq!(
        (num(&st, "acks"), num(&st, "cleans"), num(&st, "errors"), num(&st, "monitor_allocs")),
        (0, 1, 0, 0),
        "status {st:?}"
    );
    let mut back = [0u8; 4096];
    let f = std::fs::File::open(&data).expect("open data");
    for k in 0..=10u64 {
        f.read_exact_at(&mut back, k * 4096).expect("read back");
        assert!(back.iter().all(|&b| b == if k == 0 { 7 } else { k as u8 }), "block {k}");
    }
    drop(f);
    drop(watch);
    a.stop();
    let st = mon.wait(Duration::from_secs(10)).expect("the hand-started umd mon did not exit after umd stop");
    assert!(st.success(), "umd mon exited with {st}");
    img.assert_all_clean(Some(e0 + 2), "after umd stop");
}

#[test]
fn bad_input() {
    let s = Scratch::new("mon-bad");
    // Not a umd mount.
    let plain = s.path("plain");
    std::fs::create_dir_all(&plain).expect("mkdir");
    let out = run(umd().arg("mon").arg(&plain));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "umd mon on a plain directory succeeded");
    assert!(err.contains("no umd array is mounted") && err.lines().count() == 1, "stderr: {err:?}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", String::from_utf8_lossy(&out.stdout));
    let out = run(umd().arg("mon").arg(s.path("does-not-exist")));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("no umd array is mounted"), "stderr: {err:?}");
    // --status without a manager.
    let e = mon_status(&plain).expect_err("status of a plain directory");
    assert!(e.contains("no umd mon answers") && e.lines().count() == 1, "stderr: {e:?}");

    // A second manager is refused; the first keeps working.
    let members = members(&s, 4);
    create(&RAID5, &members);
    let (a, _) = Served::assemble(&s.path("mnt"), &members, &[]);
    let pid = pid_in(&lock_file(&a.dir)).expect("manager PID");
    let out = run(umd().arg("mon").arg(&a.dir));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a second umd mon started");
    assert!(
        err.contains("another umd mon") && err.contains(&format!("pid {pid}")) && err.lines().count() == 1,
        "stderr: {err:?}"
    );
    assert_eq!(pid_in(&lock_file(&a.dir)), Some(pid), "the refused manager changed the lock file");
    assert!(live_umd(pid, "mon"), "the first manager died");
    let done = write_in_thread(&a.dir.join("data"), 0, 1);
    done.recv_timeout(Duration::from_secs(10))
        .expect("write after the refused manager")
        .expect("write failed");
    let st = status_until(&a.dir, "acknowledging", |st| num(st, "acks") >= 1);
    assert_eq!(num(&st, "errors"), 0, "status {st:?}");
    a.stop();
    drop(a);
    assert!(!lock_file(&s.path("mnt")).exists(), "lock file left behind");

    // A read-only mount: no manager, and none can be started.
    let img = Images::open(&members);
    let raw = img.raw();
    let (r, ready) = Served::assemble(&s.path("ro"), &members, &["--readonly"]);
    assert!(ready.contains("mounted read-only"), "ready line: {ready}");
    assert_eq!(read_attr(&r.md("metadata_version")), "1.2\n");
    let e = mon_status(&r.dir).expect_err("a read-only mount has a manager");
    assert!(e.contains("no umd mon answers"), "stderr: {e:?}");
    assert!(!lock_file(&r.dir).exists(), "a read-only mount has a manager lock");
    let out = run(umd().arg("mon").arg(&r.dir));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "umd mon on a read-only mount started");
    assert!(
        err.contains("metadata_version is \"1.2\", not external:1.x") && err.lines().count() == 1,
        "stderr: {err:?}"
    );
    assert!(out.stdout.is_empty(), "stdout: {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(!lock_file(&r.dir).exists(), "the refused manager left its lock file");
    assert!(!sock_file(&r.dir).exists(), "the refused manager left a socket");
    assert!(img.raw() == raw, "superblocks changed on a read-only mount");
    r.stop();
}

#[test]
fn degraded_array_marks_present_members() {
    let s = Scratch::new("mon-degraded");
    let all = members(&s, 4);
    create(&RAID5, &all);
    let absent = all[2].clone();
    let absent_hash = file_hash(&absent);
    let present: Vec<PathBuf> = all.iter().filter(|m| **m != absent).cloned().collect();
    let img = Images::open(&present);
    let e0 = img.assert_all_clean(None, "before");
    let (a, ready) = Served::assemble(&s.path("mnt"), &present, &["--force"]);
    assert!(ready.contains("DEGRADED") && ready.contains("read-write"), "ready line: {ready}");
    write_attr(&a.md("safe_mode_delay"), "1.000\n");
    let watch = StateWatch::open(&a.md("array_state"));
    assert_eq!(watch.read(), "clean");

    let data =
        std::fs::OpenOptions::new().read(true).write(true).open(a.dir.join("data")).expect("open data");
    // Chunks on every member, the absent one's included (raid5, 64 KiB
    // chunks, 4 members: 3 data chunks per stripe).
    for k in 0..8u64 {
        data.write_all_at(&[0x3c; 4096], k * (64 << 10)).expect("pwrite");
    }
    let sbs = img.all();
    for (k, sb) in sbs.iter().enumerate() {
        assert!(
            sb.dirty() && sb.events == e0 + 1,
            "present member {k} after the writes: {sb:?} (before {e0})"
        );
    }
    watch.wait_for("clean", Duration::from_secs(10), "after idle");
    let sbs = img.wait_all_clean(Duration::from_secs(5), "after idle");
    assert!(sbs.iter().all(|sb| sb.events == e0 + 2), "after idle: {sbs:?} (before {e0})");
    let mut back = [0u8; 4096];
    for k in 0..8u64 {
        data.read_exact_at(&mut back, k * (64 << 10)).expect("read back");
        assert!(back.iter().all(|&b| b == 0x3c), "read back at chunk {k}");
    }
    let st = settled_status(&a.dir, 1);
    assert_eq!((num(&st, "errors"), num(&st, "monitor_allocs")), (0, 0), "status {st:?}");
    assert_eq!(num(&st, "sb_writes"), 2 * present.len() as u64, "status {st:?}");
    drop(data);
    drop(watch);
    a.stop();
    img.assert_all_clean(Some(e0 + 2), "after umd stop");
    examine_clean(&present[0], e0 + 2, "after umd stop");
    assert_eq!(file_hash(&absent), absent_hash, "the absent member's image changed");
}

/// A lazily detached mount (what a crashed test's guard or `umount -l`
/// does) stays alive while files are open on it: the manager notices that
/// its directory is no longer the mount, lets go, and both the manager and
/// the serving process end.
#[test]
fn lazy_unmount_ends_manager_and_daemon() {
    let s = Scratch::new("mon-lazy");
    let all = members(&s, 4);
    create(&RAID5, &all);
    let (a, _) = Served::assemble(&s.path("mnt"), &all, &[]);
    let data =
        std::fs::OpenOptions::new().read(true).write(true).open(a.dir.join("data")).expect("open data");
    data.write_all_at(&[7u8; 4096], 0).expect("pwrite");
    drop(data);
    let mon = pid_in(&lock_file(&a.dir)).expect("manager PID");
    let daemon = a.daemon.expect("daemon PID");
    let c = std::ffi::CString::new(a.dir.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }, 0, "umount -l");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(exited(mon) && exited(daemon)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(exited(mon), "the manager outlived its lazily detached mount");
    assert!(exited(daemon), "the serving process outlived its lazily detached mount");
}

/// An `array_state` answering text that is no md word: the manager logs,
/// counts an error and does nothing — a write to the clean array stays
/// blocked and the superblocks untouched — rather than guessing; once the
/// attribute answers md's words again, the write goes through.
#[test]
fn garbage_array_state_keeps_writes_blocked() {
    let s = Scratch::new("mon-garbage");
    let members = members(&s, 4);
    create(&RAID5, &members);
    let img = Images::open(&members);
    let (a, _) = Served::assemble_hooks(&s.path("mnt"), &members, &[], true);
    write_attr(&a.md("safe_mode_delay"), "2.000\n");
    let watch = StateWatch::open(&a.md("array_state"));
    assert_eq!(watch.read(), "clean");
    let e0 = img.assert_all_clean(None, "before");
    let raw0 = img.raw();
    let hook = a.dir.join("umd-test-hook");

    write_attr(&hook, "array_state_garbage on");
    watch.wait_for("?garbled?", Duration::from_secs(5), "garbled");
    let done = write_in_thread(&a.dir.join("data"), 3 << 20, 0x5c);
    match done.recv_timeout(Duration::from_millis(800)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("a write completed while array_state answered garbage: {other:?}"),
    }
    assert!(img.raw() == raw0, "superblocks changed while array_state answered garbage");
    let st = status_until(&a.dir, "an error counted", |m| num(m, "errors") >= 1);
    assert_eq!(num(&st, "acks"), 0, "acknowledged while array_state answered garbage: {st:?}");
    assert_eq!(st.get("state").map(String::as_str), Some("unknown"), "status {st:?}");

    write_attr(&hook, "array_state_garbage off");
    let r = done
        .recv_timeout(Duration::from_secs(10))
        .expect("the write did not complete once array_state recovered");
    r.expect("the write failed");
    let after = img.all();
    for (k, sb) in after.iter().enumerate() {
        assert!(sb.dirty() && sb.events == e0 + 1, "member {k} after the write: {sb:?} (events before {e0})");
    }
    drop(watch);
    a.stop();
    img.assert_all_clean(Some(e0 + 2), "after umd stop");
}
