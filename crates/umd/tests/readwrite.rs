//! `umd assemble` without `--readonly`: every level served read-write
//! through DIR/data (random unaligned pwrites, fsync, read back against a
//! model, stop, re-assemble read-only and extract), writes past the end
//! (EFBIG, nothing changed), `array_state` during and after writes; then
//! every set of members the level can lose is left out in turn and the
//! array, rebuilt from mirrors or parity, still reads back as the model
//! (so parity and Q were written right). Parity arrays served degraded
//! take writes too, and `umd demo` (the README's first command) runs and
//! cleans up after itself.

mod common;

use common::*;
use md::synth::Rng;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn create(args: &[&str], members: &[PathBuf]) {
    let out = run(umd().arg("create").args(args).args(members));
    assert!(out.status.success(), "create: {}", String::from_utf8_lossy(&out.stderr));
}

/// A read-write daemon serving `members` at `dir`; returns its ready line.
fn serve_rw(dir: &Path, members: &[PathBuf]) -> (MountGuard, String) {
    serve_rw_with(dir, members, &[])
}

/// [`serve_rw`] with extra `umd assemble` options.
fn serve_rw_with(dir: &Path, members: &[PathBuf], opts: &[&str]) -> (MountGuard, String) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let guard = MountGuard { dir: dir.to_path_buf(), pid: None };
    let out = run(umd().arg("assemble").args(opts).arg("--mount").arg(dir).arg("--daemon").args(members));
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

/// Each single member of `n`.
fn singles(n: usize) -> Vec<Vec<usize>> {
    (0..n).map(|k| vec![k]).collect()
}

/// Each single member and each pair of `n`.
fn singles_and_pairs(n: usize) -> Vec<Vec<usize>> {
    let mut v = singles(n);
    for a in 0..n {
        for b in a + 1..n {
            v.push(vec![a, b]);
        }
    }
    v
}

/// Round trip through the mount; then, for each set in `missing`, the
/// members without that set are extracted and compared with the model.
fn write_read_back(tag: &str, create_args: &[&str], n: usize, seed: u64, missing: &[Vec<usize>]) {
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
    random_writes(&f, &mut model, &mut rng, 64, 200_000);
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

    // Every member set the level can lose, left out in turn.
    for gone in missing {
        let rest: Vec<&PathBuf> =
            members.iter().enumerate().filter(|(k, _)| !gone.contains(k)).map(|(_, m)| m).collect();
        let out = run(umd().arg("extract").arg("-o").arg(&img).args(&rest));
        assert!(
            out.status.success(),
            "{tag}: extract without {gone:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read(&img).expect("read extract");
        assert_eq!(got.len(), model.len(), "{tag}: extract without {gone:?}: size");
        if let Some(i) = got.iter().zip(&model).position(|(a, b)| a != b) {
            panic!("{tag}: extract without members {gone:?} differs from the model at byte {i}");
        }
    }
}

#[test]
fn raid1_read_write() {
    write_read_back(
        "rw-raid1",
        &["-l", "1", "-n", "2", "-z", "2M", "--assume-clean"],
        2,
        0x1234_5678,
        &singles(2),
    );
}

#[test]
fn raid0_read_write() {
    write_read_back("rw-raid0", &["-l", "0", "-n", "3", "-c", "16", "-z", "2M"], 3, 0x0bad_cafe, &[]);
}

#[test]
fn raid10_far_read_write() {
    write_read_back(
        "rw-raid10f2",
        &["-l", "10", "-n", "3", "-p", "f2", "-c", "32", "-z", "2M", "--assume-clean"],
        3,
        0x5eed_f00d,
        &singles(3),
    );
}

#[test]
fn raid10_read_write() {
    // near-2 on 4: slots 0/1 and 2/3 are mirror pairs; one of each may go.
    let mut missing = singles(4);
    missing.extend([vec![0, 2], vec![0, 3], vec![1, 2], vec![1, 3]]);
    write_read_back(
        "rw-raid10",
        &["-l", "10", "-n", "4", "-c", "64", "-z", "2M", "--assume-clean"],
        4,
        0x9abc_def0,
        &missing,
    );
}

#[test]
fn raid10_offset_read_write() {
    write_read_back(
        "rw-raid10o2",
        &["-l", "10", "-n", "4", "-p", "o2", "-c", "16", "-z", "2M", "--assume-clean"],
        4,
        0x0ff5_e7a2,
        &singles(4),
    );
}

#[test]
fn raid4_read_write() {
    write_read_back(
        "rw-raid4",
        &["-l", "4", "-n", "4", "-c", "32", "-z", "2M", "--assume-clean"],
        4,
        0x4444_0001,
        &singles(4),
    );
}

#[test]
fn raid5_left_symmetric_read_write() {
    write_read_back(
        "rw-raid5ls",
        &["-l", "5", "-n", "4", "-c", "64", "-p", "left-symmetric", "-z", "2M", "--assume-clean"],
        4,
        0x5555_0001,
        &singles(4),
    );
}

#[test]
fn raid5_right_asymmetric_read_write() {
    write_read_back(
        "rw-raid5ra",
        &["-l", "5", "-n", "3", "-c", "16", "-p", "right-asymmetric", "-z", "2M", "--assume-clean"],
        3,
        0x5555_0002,
        &singles(3),
    );
}

#[test]
fn raid6_read_write() {
    write_read_back(
        "rw-raid6",
        &["-l", "6", "-n", "5", "-c", "32", "-z", "2M", "--assume-clean"],
        5,
        0x6666_0001,
        &singles_and_pairs(5),
    );
}

/// The README's main-job command: `umd demo` (small members) succeeds,
/// leaves nothing mounted or running, and removes its scratch directory;
/// with `--keep` the member images stay.
#[test]
fn demo_round_trip_and_cleanup() {
    let s = Scratch::new("rw-demo");
    let dir = s.path("demo");
    let out = run(umd().arg("demo").arg("--dir").arg(&dir).args(["--member-mib", "4"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "mounted read-write",
        "every value seen by poll(2)",
        "without m3.img: ok",
        "DEGRADED mounted read-only",
    ] {
        assert!(text.contains(want), "demo output lacks {want:?}:\n{text}");
    }
    assert!(!dir.exists(), "demo left {} behind", dir.display());
    assert!(!is_mounted(&dir.join("mnt")));

    let out = run(umd().arg("demo").arg("--dir").arg(&dir).args(["--member-mib", "2", "--keep"]));
    assert!(out.status.success(), "demo --keep: {}", String::from_utf8_lossy(&out.stderr));
    for k in 0..4 {
        assert!(dir.join(format!("m{k}.img")).is_file(), "--keep: m{k}.img gone");
    }
    assert!(!is_mounted(&dir.join("mnt")));
    // The kept images are an array umd assembles.
    let out = run(umd().arg("examine").arg(dir.join("m0.img")));
    assert!(out.status.success(), "examine kept image: {}", String::from_utf8_lossy(&out.stderr));
}

/// A parity array served read-write with member `absent` missing: random
/// writes keep parity right for the members present, so the data reads
/// back through the mount, from the present members, and (raid6) with any
/// one more of them left out (`one_more`). The absent member's image is
/// stale afterwards (no superblock records that yet), so it is never given
/// again.
fn degraded_write_read_back(
    tag: &str,
    create_args: &[&str],
    n: usize,
    seed: u64,
    absent: usize,
    one_more: bool,
) {
    let s = Scratch::new(tag);
    let members: Vec<PathBuf> = (0..n).map(|k| s.path(&format!("m{k}.img"))).collect();
    create(create_args, &members);
    let present: Vec<PathBuf> =
        members.iter().enumerate().filter(|&(k, _)| k != absent).map(|(_, m)| m.clone()).collect();
    let dir = s.path("mnt");
    // Refused without --force (the absent member would come back stale),
    // nothing mounted.
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = run(umd().arg("assemble").arg("--mount").arg(&dir).arg("--daemon").args(&present));
    assert!(!out.status.success(), "{tag}: degraded read-write assembled without --force");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("degraded") && err.contains("--force"), "{tag}: stderr: {err}");
    assert!(!is_mounted(&dir), "{tag}: something was mounted");
    let (g, ready) = serve_rw_with(&dir, &present, &["--force"]);
    assert!(ready.contains("DEGRADED") && ready.contains("mounted read-write"), "ready line: {ready}");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(dir.join("data")).expect("open data rw");
    let size = f.metadata().expect("stat").len();
    // The array as created (--assume-clean on fresh images: zeros).
    let mut model = vec![0u8; size as usize];
    f.read_exact_at(&mut model, 0).expect("read before writing");
    let mut rng = Rng(seed);
    random_writes(&f, &mut model, &mut rng, 48, 150_000);
    f.sync_all().expect("fsync");
    let mut back = vec![0u8; size as usize];
    f.read_exact_at(&mut back, 0).expect("read back");
    assert!(back == model, "{tag}: read back through the degraded mount differs");
    drop(f);
    stop(&dir);
    drop(g);

    let img = s.path("out.img");
    let mut sets: Vec<Vec<usize>> = vec![vec![]];
    if one_more {
        sets.extend((0..n).filter(|&k| k != absent).map(|k| vec![k]));
    }
    for more in sets {
        let rest: Vec<&PathBuf> = members
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != absent && !more.contains(k))
            .map(|(_, m)| m)
            .collect();
        let out = run(umd().arg("extract").arg("-o").arg(&img).args(&rest));
        assert!(
            out.status.success(),
            "{tag}: extract without {absent} and {more:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read(&img).expect("read extract");
        if let Some(i) = got.iter().zip(&model).position(|(a, b)| a != b) {
            panic!("{tag}: extract without {absent} and {more:?} differs from the model at byte {i}");
        }
        assert_eq!(got.len(), model.len(), "{tag}: extract size");
    }
}

#[test]
fn raid5_degraded_read_write() {
    degraded_write_read_back(
        "rw-raid5-deg",
        &["-l", "5", "-n", "4", "-c", "32", "-z", "2M", "--assume-clean"],
        4,
        0xdead_0005,
        1,
        false,
    );
}

#[test]
fn raid6_degraded_read_write() {
    degraded_write_read_back(
        "rw-raid6-deg",
        &["-l", "6", "-n", "5", "-c", "16", "-p", "right-symmetric", "-z", "2M", "--assume-clean"],
        5,
        0xdead_0006,
        4,
        true,
    );
}
