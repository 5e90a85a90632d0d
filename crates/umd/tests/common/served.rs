//! Arrays served by `umd assemble --daemon` and their metadata manager,
//! for tests: the guards that stop, kill and unmount whatever a test
//! started (also when it fails), the superblocks read straight from the
//! member images, the manager's status.

use super::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
/// Byte offset of the v1.2 superblock on a member.
pub const SB_OFFSET: u64 = 4096;
/// `resync_offset` of a clean (in sync) array.
pub const CLEAN: u64 = u64::MAX;

// ---------------------------------------------------------------------------
// Superblocks, read from the image files.

/// `events` and `resync_offset` of a member's superblock, read directly
/// from its image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sb {
    pub events: u64,
    pub resync: u64,
}

impl Sb {
    pub fn clean(self) -> bool {
        self.resync == CLEAN
    }
    pub fn dirty(self) -> bool {
        self.resync == 0
    }
}

pub fn read_sb(f: &std::fs::File) -> Sb {
    let mut b = [0u8; 256];
    f.read_exact_at(&mut b, SB_OFFSET).expect("read superblock");
    assert_eq!(&b[..4], &0xa92b_4efcu32.to_le_bytes(), "superblock magic");
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    Sb { events: u64_at(200), resync: u64_at(208) }
}

/// The members' image files, opened for reading their superblocks.
pub struct Images {
    pub paths: Vec<PathBuf>,
    pub files: Vec<std::fs::File>,
}

impl Images {
    pub fn open(paths: &[PathBuf]) -> Images {
        let files = paths.iter().map(|p| std::fs::File::open(p).expect("open member image")).collect();
        Images { paths: paths.to_vec(), files }
    }
    pub fn sb(&self, k: usize) -> Sb {
        read_sb(&self.files[k])
    }
    pub fn all(&self) -> Vec<Sb> {
        (0..self.files.len()).map(|k| self.sb(k)).collect()
    }
    /// The raw superblock block of every member.
    pub fn raw(&self) -> Vec<Vec<u8>> {
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
    pub fn assert_all_clean(&self, events: Option<u64>, what: &str) -> u64 {
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
    pub fn wait_all_clean(&self, timeout: Duration, what: &str) -> Vec<Sb> {
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

pub fn create(args: &[&str], members: &[PathBuf]) {
    let out = run(umd().arg("create").args(args).args(members));
    assert!(out.status.success(), "create: {}", String::from_utf8_lossy(&out.stderr));
}

/// `/run/umd/<escaped dir>` + `ext`, as `umd` names its files.
pub fn run_file(dir: &Path, ext: &str) -> PathBuf {
    PathBuf::from("/run/umd").join(format!("{}.{ext}", run_name(dir)))
}

/// `dir` escaped as `umd` names its files in /run/umd.
pub fn run_name(dir: &Path) -> String {
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
    name
}

/// Removes what /run/umd keeps for mount directories below `scratch`
/// (daemon logs; files a killed daemon left): a test's daemons leave
/// nothing behind.
pub fn forget_run_files(scratch: &Path) {
    let Ok(abs) = std::fs::canonicalize(scratch) else { return };
    let prefix = format!("{}_", run_name(&abs));
    let Ok(entries) = std::fs::read_dir("/run/umd") else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

pub fn lock_file(dir: &Path) -> PathBuf {
    run_file(dir, "mon.lock")
}

pub fn sock_file(dir: &Path) -> PathBuf {
    run_file(dir, "mon.sock")
}

/// The PID recorded in `p`, if any.
pub fn pid_in(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Whether `pid` has exited (gone, or a zombie not yet reaped).
pub fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Whether `pid` is a live `umd` process whose arguments contain `word`.
pub fn live_umd(pid: i32, word: &str) -> bool {
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
pub struct Served {
    pub dir: PathBuf,
    pub daemon: Option<i32>,
    pub _mount: MountGuard,
}

impl Served {
    pub fn assemble(dir: &Path, members: &[PathBuf], opts: &[&str]) -> (Served, String) {
        Served::assemble_hooks(dir, members, opts, false)
    }

    /// [`Served::assemble`], with `UMD_TEST_HOOKS=1` when `hooks` (the
    /// daemon then serves `DIR/umd-test-hook`).
    pub fn assemble_hooks(dir: &Path, members: &[PathBuf], opts: &[&str], hooks: bool) -> (Served, String) {
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

    pub fn md(&self, attr: &str) -> PathBuf {
        self.dir.join("md").join(attr)
    }

    pub fn stop(&self) {
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
pub struct MonChild {
    pub child: Option<Child>,
}

impl MonChild {
    /// Starts `umd mon dir` and waits (20 s at most) for its ready line,
    /// which it returns.
    pub fn start(dir: &Path, stderr: &Path) -> (MonChild, String) {
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

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits up to `limit` for the manager to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
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

pub fn write_attr(p: &Path, value: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).open(p).expect("open attribute for writing");
    f.write_all(value.as_bytes()).unwrap_or_else(|e| panic!("store {value:?} into {}: {e}", p.display()));
}

pub fn read_attr(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `array_state`, opened once and polled the way a manager does.
pub struct StateWatch(pub std::fs::File);

impl StateWatch {
    pub fn open(p: &Path) -> StateWatch {
        StateWatch(std::fs::File::open(p).expect("open array_state"))
    }

    pub fn read(&self) -> String {
        let mut b = [0u8; 64];
        let n = self.0.read_at(&mut b, 0).expect("re-read array_state");
        String::from_utf8_lossy(&b[..n]).trim_end().to_string()
    }

    /// Waits (POLLPRI, re-reading from offset 0 on each wake-up) until
    /// `array_state` reads `want`; panics after `timeout`.
    pub fn wait_for(&self, want: &str, timeout: Duration, what: &str) {
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
pub fn mon_status(dir: &Path) -> Result<BTreeMap<String, String>, String> {
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
pub fn status_until(
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
pub fn settled_status(dir: &Path, cleans: u64) -> BTreeMap<String, String> {
    status_until(dir, "settled clean", |st| {
        st["state"] == "clean" && st["dirty"] == "0" && num(st, "cleans") >= cleans
    })
}

pub fn num(m: &BTreeMap<String, String>, k: &str) -> u64 {
    m[k].parse().unwrap_or_else(|_| panic!("status {k}={} is not a number", m[k]))
}

/// The real `mdadm --examine` (and `umd examine`) of `member`: state clean,
/// checksum correct, `events`.
pub fn examine_clean(member: &Path, events: u64, what: &str) {
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
pub fn write_in_thread(data: &Path, off: u64, byte: u8) -> mpsc::Receiver<std::io::Result<()>> {
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

pub const RAID5: [&str; 9] = ["-l", "5", "-n", "4", "-c", "64", "-z", "4M", "--assume-clean"];

pub fn members(s: &Scratch, n: usize) -> Vec<PathBuf> {
    (0..n).map(|k| s.path(&format!("m{k}.img"))).collect()
}

/// Kills the manager of `dir` (its PID from the lock file) with SIGKILL and
/// waits until it is gone; returns the PID.
pub fn kill_manager(dir: &Path) -> i32 {
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
pub fn lock_free(p: &Path) -> bool {
    let Ok(f) = std::fs::File::open(p) else { return true };
    // SAFETY: flock on a descriptor we own.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if free {
        // SAFETY: as above.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    }
    free
}
