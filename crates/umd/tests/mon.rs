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

use common::served::*;
use common::*;
use md::synth::Rng;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
