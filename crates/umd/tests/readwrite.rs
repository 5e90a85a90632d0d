//! `umd assemble` without `--readonly`: raid1 and raid10 served read-write
//! through DIR/data (unaligned pwrite, fsync, read back, stop, re-assemble
//! read-only and extract), writes past the end (EFBIG), `array_state`
//! during and after writes, and parity levels refused.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn create(args: &[&str], members: &[PathBuf]) {
    let out = run(umd().arg("create").args(args).args(members));
    assert!(out.status.success(), "create: {}", String::from_utf8_lossy(&out.stderr));
}

/// A read-write daemon serving `members` at `dir`; returns its ready line.
fn serve_rw(dir: &Path, members: &[PathBuf]) -> (MountGuard, String) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let guard = MountGuard { dir: dir.to_path_buf(), pid: None };
    let out = run(umd().arg("assemble").arg("--mount").arg(dir).arg("--daemon").args(members));
    assert!(out.status.success(), "assemble: {}", String::from_utf8_lossy(&out.stderr));
    (guard, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn stop(dir: &Path) {
    let out = run(umd().arg("stop").arg(dir));
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
}

fn array_state(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("md/array_state")).expect("array_state")
}

/// xorshift64*: reproducible test data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn write_read_back(tag: &str, create_args: &[&str], n: usize, seed: u64) {
    let s = Scratch::new(tag);
    let members: Vec<PathBuf> = (0..n).map(|k| s.path(&format!("m{k}.img"))).collect();
    create(create_args, &members);
    let dir = s.path("mnt");
    let (g, ready) = serve_rw(&dir, &members);
    assert!(ready.contains("mounted read-write"), "ready line: {ready}");
    let state = array_state(&dir);
    assert!(state == "clean\n" || state == "active-idle\n", "initial array_state {state:?}");

    let data = dir.join("data");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&data).expect("open data rw");
    let size = f.metadata().expect("stat").len();
    assert!(size > 0);
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng(seed);
    for _ in 0..64 {
        let len = 1 + rng.below(200_000.min(size)) as usize;
        let off = rng.below(size - len as u64 + 1);
        let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        f.write_all_at(&buf, off).expect("pwrite");
        model[off as usize..off as usize + len].copy_from_slice(&buf);
    }
    f.sync_all().expect("fsync");
    let state = array_state(&dir);
    assert!(
        ["active\n", "active-idle\n", "clean\n"].contains(&state.as_str()),
        "array_state after writes {state:?}"
    );
    // Safe mode: idle for safe_mode_delay, acknowledged back to clean.
    let deadline = Instant::now() + Duration::from_secs(10);
    while array_state(&dir) != "clean\n" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(array_state(&dir), "clean\n", "array_state after idle");

    // Read back through the mount.
    let mut back = vec![0u8; size as usize];
    f.read_exact_at(&mut back, 0).expect("read back");
    assert!(back == model, "{tag}: read back differs");

    // Past the end: EFBIG, nothing changed.
    let e = f.write_at(&[0xaa; 100], size - 10).expect_err("write past end");
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
    let e = f.write_at(&[0xaa; 1], size).expect_err("write at end");
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
    // Truncation is refused.
    let e = f.set_len(size - 1).expect_err("truncate");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let mut tail = vec![0u8; 100];
    f.read_exact_at(&mut tail, size - 100).expect("read tail");
    assert_eq!(tail, model[size as usize - 100..]);
    drop(f);
    stop(&dir);
    drop(g);

    // Re-assembled read-only and extracted: the same bytes.
    let img = s.path("out.img");
    let out = run(umd().arg("extract").arg("-o").arg(&img).args(&members));
    assert!(out.status.success(), "extract: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&img).expect("read extract") == model, "{tag}: extract differs");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _g = MountGuard { dir: dir.clone(), pid: None };
    let out =
        run(umd().arg("assemble").arg("--readonly").arg("--mount").arg(&dir).arg("--daemon").args(&members));
    assert!(out.status.success(), "assemble ro: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mounted read-only"));
    assert!(std::fs::read(dir.join("data")).expect("read ro") == model, "{tag}: read-only mount differs");
    stop(&dir);
}

#[test]
fn raid1_read_write() {
    write_read_back("rw-raid1", &["-l", "1", "-n", "2", "-z", "2M", "--assume-clean"], 2, 0x1234_5678);
}

#[test]
fn raid0_read_write() {
    write_read_back("rw-raid0", &["-l", "0", "-n", "3", "-c", "16", "-z", "2M"], 3, 0x0bad_cafe);
}

#[test]
fn raid10_far_read_write() {
    write_read_back(
        "rw-raid10f2",
        &["-l", "10", "-n", "3", "-p", "f2", "-c", "32", "-z", "2M", "--assume-clean"],
        3,
        0x5eed_f00d,
    );
}

#[test]
fn raid10_read_write() {
    write_read_back(
        "rw-raid10",
        &["-l", "10", "-n", "4", "-c", "64", "-z", "2M", "--assume-clean"],
        4,
        0x9abc_def0,
    );
}

#[test]
fn raid5_read_write_refused() {
    let s = Scratch::new("rw-raid5");
    let members: Vec<PathBuf> = (0..3).map(|k| s.path(&format!("m{k}.img"))).collect();
    create(&["-l", "5", "-n", "3", "-c", "64", "-z", "2M", "--assume-clean"], &members);
    let dir = s.path("mnt");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _g = MountGuard { dir: dir.clone(), pid: None };
    let out = run(umd().arg("assemble").arg("--mount").arg(&dir).arg("--daemon").args(&members));
    assert!(!out.status.success(), "raid5 read-write assembled");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.contains("raid5 writes are not supported yet; use --readonly"), "stderr: {err}");
    assert!(!is_mounted(&dir), "something was mounted");
}
