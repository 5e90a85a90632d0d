//! md's `array_state` machine observed over the real FUSE mount, the way a
//! metadata manager observes it: `DIR/md/array_state` opened once, read,
//! `poll(2)` for POLLPRI|POLLERR, and on every wake-up re-read from offset
//! 0. One thread records every value seen while another writes a burst
//! through `DIR/data` and then stays idle. md's rules are checked on the
//! record: `clean` at first, `active` during the burst (`write-pending`, if
//! seen at all, before it), `clean` again after `safe_mode_delay` without
//! writes, consecutive values distinct (a wake-up without a change only
//! rarely, never a storm), no `write-pending` once the last write returned.
//! Also: words md refuses to store into `array_state` fail with EINVAL and
//! change nothing.

mod common;

use common::*;
use md::synth::Rng;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The safe-mode delay the test sets through `md/safe_mode_delay`.
const DELAY: Duration = Duration::from_millis(250);

fn create(args: &[&str], members: &[PathBuf]) {
    let out = run(umd().arg("create").args(args).args(members));
    assert!(out.status.success(), "create: {}", String::from_utf8_lossy(&out.stderr));
}

/// A read-write daemon serving `members` at `dir`.
fn serve_rw(dir: &Path, members: &[PathBuf]) -> MountGuard {
    std::fs::create_dir_all(dir).expect("mkdir");
    let guard = MountGuard { dir: dir.to_path_buf(), pid: None };
    let out = run(umd().arg("assemble").arg("--mount").arg(dir).arg("--daemon").args(members));
    assert!(out.status.success(), "assemble: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mounted read-write"), "not read-write");
    guard
}

fn stop(dir: &Path) {
    let out = run(umd().arg("stop").arg(dir));
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
}

fn read_attr(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn write_attr(p: &Path, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(p)?;
    f.write_all(value.as_bytes())
}

fn reread(f: &mut std::fs::File) -> String {
    f.seek(SeekFrom::Start(0)).expect("seek array_state");
    let mut s = String::new();
    f.read_to_string(&mut s).expect("re-read array_state");
    s.trim_end().to_string()
}

/// One value read from `array_state`, when the read started (relative to
/// the test's start), and whether it followed a poll wake-up.
#[derive(Clone, Debug)]
struct Seen {
    at: Duration,
    /// When the read returned (under load a read can wait behind the
    /// writes' FUSE requests for a long time).
    done: Duration,
    value: String,
}

/// What the observer thread recorded.
struct Record {
    /// Every read, in order (the first is the initial read, then one per
    /// wake-up).
    reads: Vec<Seen>,
    /// poll(2) returns with events (timeouts excluded).
    wakeups: usize,
}

/// Watches `array_state` with poll until `stop`; returns every read.
fn observe(path: PathBuf, t0: Instant, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Record> {
    let mut f = std::fs::File::open(&path).expect("open array_state");
    let at = t0.elapsed();
    let first = reread(&mut f);
    let done = t0.elapsed();
    std::thread::spawn(move || {
        let mut rec = Record { reads: vec![Seen { at, done, value: first }], wakeups: 0 };
        while !stop.load(Ordering::Acquire) {
            let mut p = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLPRI | libc::POLLERR, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut p, 1, 100) };
            assert!(r >= 0, "poll: {}", std::io::Error::last_os_error());
            if r == 0 {
                continue;
            }
            assert_ne!(p.revents & libc::POLLPRI, 0, "poll woke without POLLPRI: {:#x}", p.revents);
            rec.wakeups += 1;
            // A storm would never end: stop recording it, the checks fail.
            if rec.wakeups > 10_000 {
                break;
            }
            let at = t0.elapsed();
            let value = reread(&mut f);
            rec.reads.push(Seen { at, done: t0.elapsed(), value });
        }
        rec
    })
}

/// Creates an array with `create_args` on `n` members, serves it
/// read-write, and checks the array_state sequence of a write burst and of
/// the idle time after it, then the refused stores.
fn burst_and_idle(tag: &str, create_args: &[&str], n: usize) {
    let s = Scratch::new(tag);
    let members: Vec<PathBuf> = (0..n).map(|k| s.path(&format!("m{k}.img"))).collect();
    create(create_args, &members);
    let dir = s.path("mnt");
    let _g = serve_rw(&dir, &members);
    let md = dir.join("md");
    let state_p = md.join("array_state");
    assert_eq!(read_attr(&state_p), "clean\n", "{tag}: a new writable array");

    // safe_mode_delay, set as md takes it (seconds, up to 3 decimals).
    write_attr(&md.join("safe_mode_delay"), &format!("0.{:03}\n", DELAY.as_millis())).expect("set delay");
    assert_eq!(read_attr(&md.join("safe_mode_delay")), format!("0.{:03}\n", DELAY.as_millis()));

    let t0 = Instant::now();
    let stop_flag = Arc::new(AtomicBool::new(false));
    let observer = observe(state_p.clone(), t0, stop_flag.clone());
    // Stops the observer also when an assertion below fails.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _stop_guard = StopOnDrop(stop_flag.clone());

    // The burst: 64 KiB writes at random offsets, back to back.
    let data = std::fs::OpenOptions::new().read(true).write(true).open(dir.join("data")).expect("open data");
    let size = data.metadata().expect("stat").len();
    let buf = vec![0x5au8; 64 << 10];
    let mut rng = Rng(0xfeed_beef ^ n as u64);
    let burst_start = t0.elapsed();
    let mut during = Vec::new();
    for i in 0..200 {
        let off = (rng.next() % (size - buf.len() as u64)) & !511;
        data.write_all_at(&buf, off).expect("burst write");
        if i % 50 == 49 {
            during.push(read_attr(&state_p));
        }
    }
    let last_write = t0.elapsed();
    data.sync_all().expect("fsync");
    // Idle: safe mode, acknowledged back to clean.
    std::thread::sleep(Duration::from_secs(1));
    let settled = t0.elapsed();
    stop_flag.store(true, Ordering::Release);
    let rec = observer.join().expect("observer thread panicked");
    let values: Vec<&str> = rec.reads.iter().map(|s| s.value.as_str()).collect();
    let what = format!("{tag}: reads {:?} (burst {burst_start:?}..{last_write:?})", rec.reads);
    eprintln!("{tag}: array_state seen: {} ({} wake-ups)", values.join(" → "), rec.wakeups);

    // Reads between the writes show a running, written array.
    for v in &during {
        assert!(["active\n", "write-pending\n"].contains(&v.as_str()), "{what}: read during the burst {v:?}");
    }
    // Only the words of a running read-write array.
    for v in &values {
        assert!(["clean", "write-pending", "active", "active-idle"].contains(v), "{what}: unexpected {v:?}");
    }
    assert_eq!(values[0], "clean", "{what}: first value");
    let first_active = values.iter().position(|&v| v == "active");
    let Some(first_active) = first_active else { panic!("{what}: active never observed") };
    if let Some(wp) = values.iter().position(|&v| v == "write-pending") {
        assert!(wp < first_active, "{what}: write-pending after active");
    }
    // clean again after the idle time, observed by poll, not before
    // safe_mode_delay after the last write.
    assert_eq!(values.last().copied(), Some("clean"), "{what}: last value");
    assert_eq!(read_attr(&state_p), "clean\n", "{what}: after the idle time");
    let clean_again = rec
        .reads
        .iter()
        .find(|s| s.done > last_write && s.value == "clean")
        .unwrap_or_else(|| panic!("{what}: clean not observed after the burst"));
    assert!(
        clean_again.done + Duration::from_millis(60) >= last_write + DELAY,
        "{what}: clean read by {:?}, less than safe_mode_delay after the last write",
        clean_again.done
    );
    assert!(clean_again.at < settled, "{what}");
    // Nothing pending once the last write returned.
    for s in rec.reads.iter().filter(|s| s.at > last_write) {
        // (`at`: a read that began after the last write returned.)
        assert_ne!(s.value, "write-pending", "{what}: write-pending after the last write returned");
    }
    // Consecutive values distinct; a wake-up without a change is allowed
    // now and then (a notify whose change was already read), never a storm.
    let repeats = values.windows(2).filter(|w| w[0] == w[1]).count();
    let changes = values.len() - 1 - repeats;
    assert!(repeats <= changes + 1, "{what}: {repeats} wake-ups without a change for {changes} changes");
    assert!(rec.wakeups <= 40, "{what}: {} wake-ups for one burst and one idle time", rec.wakeups);

    // Idle and clean: poll does not wake at all.
    let mut f = std::fs::File::open(&state_p).expect("open");
    assert_eq!(reread(&mut f), "clean");
    let mut p = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLPRI | libc::POLLERR, revents: 0 };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, 300) };
    assert_eq!(r, 0, "{tag}: poll woke on an idle array (revents {:#x})", p.revents);

    // Words md refuses: EINVAL, nothing changes, nobody is woken.
    for bad in [
        "garbage",
        "write-pending",
        "active-idle",
        "broken",
        "suspended",
        "Clean",
        "clean active",
        "active\n\n",
    ] {
        let e = write_attr(&state_p, bad).expect_err(bad);
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{tag}: storing {bad:?}: {e}");
        assert_eq!(read_attr(&state_p), "clean\n", "{tag}: state after storing {bad:?}");
    }
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    assert_eq!(r, 0, "{tag}: a refused store notified (revents {:#x})", p.revents);
    // The array still takes writes (the refused stores changed nothing).
    data.write_all_at(&buf[..4096], 0).expect("write after refused stores");
    drop(data);
    drop(f);
    stop(&dir);
}

#[test]
fn raid1_burst_and_idle() {
    burst_and_idle("state-raid1", &["-l", "1", "-n", "2", "-z", "4M", "--assume-clean"], 2);
}

#[test]
fn raid5_burst_and_idle() {
    burst_and_idle("state-raid5", &["-l", "5", "-n", "3", "-c", "64", "-z", "4M", "--assume-clean"], 3);
}
