//! md's attribute tree over the real FUSE mount (DIR/md/): values, poll
//! after a change, removal under an open file, E2BIG, garbage, and
//! `umd detail` against what `mdadm --detail` printed for the same array.

mod common;

use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A daemon serving `members` at `dir`, with the test hooks on.
fn serve(dir: &Path, members: &[PathBuf]) -> MountGuard {
    std::fs::create_dir_all(dir).expect("mkdir");
    let guard = MountGuard { dir: dir.to_path_buf(), pid: None };
    let out = run(umd()
        .env("UMD_TEST_HOOKS", "1")
        .arg("assemble")
        .arg("--readonly")
        .arg("--mount")
        .arg(dir)
        .arg("--daemon")
        .args(members));
    assert!(out.status.success(), "assemble: {}", String::from_utf8_lossy(&out.stderr));
    guard
}

fn stop(dir: &Path) {
    let out = run(umd().arg("stop").arg(dir));
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
}

fn read_attr(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn hook(dir: &Path, cmd: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).open(dir.join("umd-test-hook")).expect("open hook");
    f.write_all(cmd.as_bytes()).expect("hook write");
}

fn poll_pri(fd: i32, timeout_ms: i32) -> i16 {
    let mut p = libc::pollfd { fd, events: libc::POLLPRI, revents: 0 };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    assert!(r >= 0, "poll failed");
    if r == 0 {
        0
    } else {
        p.revents
    }
}

#[test]
fn attributes_poll_removal_e2big_and_garbage_over_fuse() {
    let s = Scratch::new("attrs");
    let fx = unpack("raid5_ls_4d_64k_degraded", &s);
    let dir = s.path("mnt");
    let _g = serve(&dir, &fx.members);
    let md = dir.join("md");
    assert_eq!(read_attr(&md.join("array_state")), "readonly\n");
    assert_eq!(read_attr(&md.join("degraded")), "1\n");
    assert_eq!(read_attr(&md.join("level")), "raid5\n");
    assert_eq!(read_attr(&md.join("chunk_size")), "65536\n");
    assert_eq!(read_attr(&md.join("sync_action")), "idle\n");
    let rd0 = std::fs::read_link(md.join("rd0")).expect("rd0");
    assert!(rd0.to_string_lossy().starts_with("dev-"), "{}", rd0.display());
    assert_eq!(read_attr(&md.join(&rd0).join("state")), "in_sync\n");

    // poll: nothing before a change; POLLPRI|POLLERR after; re-read from 0.
    let mut f = std::fs::File::open(md.join("array_state")).expect("open");
    let mut v = String::new();
    f.read_to_string(&mut v).expect("read");
    assert_eq!(poll_pri(f.as_raw_fd(), 100) & libc::POLLPRI, 0, "POLLPRI before any change");
    hook(&dir, "array_state broken");
    let ev = poll_pri(f.as_raw_fd(), 5000);
    assert_eq!(ev & (libc::POLLPRI | libc::POLLERR), libc::POLLPRI | libc::POLLERR, "revents {ev:#x}");
    f.seek(SeekFrom::Start(0)).expect("seek");
    v.clear();
    f.read_to_string(&mut v).expect("re-read");
    assert_eq!(v, "broken\n");
    // sync_action: a real store that notifies.
    let mut sa = std::fs::File::open(md.join("sync_action")).expect("open");
    let mut w = String::new();
    sa.read_to_string(&mut w).expect("read");
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("echo frozen > {}", md.join("sync_action").display()))
        .status()
        .expect("sh");
    assert!(st.success(), "echo frozen > sync_action");
    assert_ne!(poll_pri(sa.as_raw_fd(), 5000) & libc::POLLPRI, 0);
    assert_eq!(read_attr(&md.join("sync_action")), "frozen\n");

    // More than atomic_write_len: E2BIG. Garbage: EINVAL, nothing changes.
    let mut a = std::fs::OpenOptions::new().write(true).open(md.join("array_state")).expect("open rw");
    let e = a.write(&[b'x'; 5000]).expect_err("oversized write");
    assert_eq!(e.raw_os_error(), Some(libc::E2BIG), "{e}");
    // Every writable attribute of the array and of each member, found by
    // walking the mount (not a list kept here).
    let mut writable = Vec::new();
    let mut dirs = vec![md.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("readdir") {
            let e = e.expect("dirent");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                dirs.push(e.path());
            } else if ft.is_file() {
                use std::os::unix::fs::PermissionsExt;
                if e.metadata().expect("stat").permissions().mode() & 0o200 != 0 {
                    writable.push(e.path());
                }
            }
        }
    }
    assert!(writable.len() >= 10, "writable attributes: {writable:?}");
    let snapshot = |paths: &[PathBuf]| paths.iter().map(|p| read_attr(p)).collect::<Vec<_>>();
    let before = snapshot(&writable);
    for p in &writable {
        let mut f = std::fs::OpenOptions::new().write(true).open(p).expect("open rw");
        let e = f.write(b"no-such-value\n").expect_err("garbage accepted");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{}: {e}", p.display());
    }
    assert_eq!(snapshot(&writable), before, "garbage changed a value");

    // A process holding dev-X/state open while the member's directory is
    // removed gets ENODEV and no crash.
    let rd1 = std::fs::read_link(md.join("rd1")).expect("rd1");
    let held = std::fs::File::open(md.join(&rd1).join("state")).expect("open dev state");
    hook(&dir, "remove 1");
    let mut buf = [0u8; 64];
    // SAFETY: `buf` is valid for 64 bytes.
    let r = unsafe { libc::pread(held.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(r, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENODEV));
    drop(held);
    assert!(!md.join("rd1").exists(), "rd1 still there");
    // The array still serves data.
    assert_eq!(std::fs::metadata(dir.join("data")).expect("data").len(), 22_020_096);
    stop(&dir);
}

#[test]
fn detail_agrees_with_mdadm_detail_of_the_same_array() {
    let s = Scratch::new("detail");
    for name in fixture_names() {
        let fx = unpack(&name, &s);
        let dir = s.path(&format!("{name}-mnt"));
        let _g = serve(&dir, &fx.members);
        let out = run(umd().arg("detail").arg(&dir));
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ours = parse_examine(&text);
        let rec = std::fs::read_to_string(fx.dir.join("detail.txt")).expect("detail.txt");
        let theirs = parse_examine(&rec);
        let m0 = std::fs::read_to_string(fx.dir.join("examine_m0.txt")).expect("examine_m0.txt");
        let on_disk = parse_examine(&m0);
        for (k, v) in &theirs {
            match k.as_str() {
                "Creation Time" | "Update Time" => continue,
                "Name" => assert_eq!(ours[k].split("  (").next(), v.split("  (").next(), "{name}: Name"),
                // md's raid0 shows its sysfs array_state word: ours is read-only.
                "State" if name.starts_with("raid0") => assert_eq!(ours[k], "readonly", "{name}"),
                // Recorded while the kernel held the array active (its event
                // count is past the superblocks'): on disk it is clean.
                "State" if theirs.get("Events") != on_disk.get("Events") => {
                    assert_eq!(ours.get(k), on_disk.get(k), "{name}: State (on disk)")
                }
                // The degraded fixture was recorded with the failed member still
                // attached (Total 4, Failed 1); umd leaves it out at assembly.
                "Total Devices" | "Failed Devices" if name.contains("degraded") => {}
                // A running kernel array may have bumped the count past what
                // its members' superblocks hold (raid1_2d: 16 live, 15 on
                // disk); a read-only assembly shows what is on disk.
                "Events" => assert_eq!(ours.get(k), on_disk.get(k), "{name}: Events"),
                _ => assert_eq!(ours.get(k), Some(v), "{name}: {k}"),
            }
        }
        // The device table: one row per slot, removed where a member is missing.
        let rows: Vec<&str> = text.lines().skip_while(|l| !l.contains("RaidDevice State")).skip(1).collect();
        let slots = fx.members.len() - usize::from(name.contains("degraded"));
        assert_eq!(rows.iter().filter(|r| r.contains("active sync")).count(), slots, "{name}: {text}");
        if name.contains("degraded") {
            assert!(rows.iter().any(|r| r.ends_with("removed")), "{name}: {text}");
        }
        let json = run(umd().arg("detail").arg("--json").arg(&dir));
        let obj: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
        assert_eq!(obj["Raid Level"], ours["Raid Level"]);
        assert_eq!(obj["Devices"].as_array().map(|a| a.len()), Some(fx.members.len()));
        stop(&dir);
    }
}
