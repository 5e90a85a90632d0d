//! `copy_file_range(2)` within `DIR/data` of a read-write mount, served by
//! umd's copy cache (`pagecache::copy_range`): unaligned copies, copies
//! longer than one copy step and crossing chunks, a source range crossing
//! the end (short count) or starting there (0), a destination past the end
//! (EFBIG), overlapping ranges (EINVAL), copies interleaved with direct
//! writes (no stale cached data) and racing writes next to the destination
//! (none lost), an attribute as the source (the kernel's fallback). The
//! whole array is compared with a model through the mount, and again after
//! `umd stop` on a read-only re-assembly, where `copy_file_range` fails
//! without changing anything. The daemons run with `UMD_TEST_HOOKS=1`, whose
//! `DIR/umd-test-copies` counts the copies the copy cache served: proof that
//! the kernel sent `FUSE_COPY_FILE_RANGE(_64)` rather than copying by
//! reading and writing.

mod common;

use common::*;
use md::synth::Rng;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn create(args: &[&str], members: &[PathBuf]) {
    let out = run(umd().arg("create").args(args).args(members));
    assert!(out.status.success(), "create: {}", String::from_utf8_lossy(&out.stderr));
}

/// A daemon serving `members` at `dir` (with the test hooks).
fn assemble(dir: &Path, members: &[PathBuf], readonly: bool) -> MountGuard {
    std::fs::create_dir_all(dir).expect("mkdir");
    let guard = MountGuard { dir: dir.to_path_buf(), pid: None };
    let mut cmd = umd();
    cmd.env("UMD_TEST_HOOKS", "1").arg("assemble");
    if readonly {
        cmd.arg("--readonly");
    }
    let out = run(cmd.arg("--mount").arg(dir).arg("--daemon").args(members));
    assert!(out.status.success(), "assemble: {}", String::from_utf8_lossy(&out.stderr));
    let ready = String::from_utf8_lossy(&out.stdout);
    let want = if readonly { "mounted read-only" } else { "mounted read-write" };
    assert!(ready.contains(want), "ready line: {ready}");
    guard
}

fn stop(dir: &Path) {
    let out = run(umd().arg("stop").arg(dir));
    assert!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!is_mounted(dir), "still mounted after stop");
}

/// `copy_file_range(src@off_in → dst@off_out, len)`.
fn copy(src: &File, off_in: u64, dst: &File, off_out: u64, len: usize) -> io::Result<usize> {
    let mut oi = off_in as libc::loff_t;
    let mut oo = off_out as libc::loff_t;
    // SAFETY: both descriptors are open for the call's duration; the offset
    // pointers point at live locals.
    let r = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut oi, dst.as_raw_fd(), &mut oo, len, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// The copy cache's counters: (calls, bytes).
fn copies(dir: &Path) -> (u64, u64) {
    let s = std::fs::read_to_string(dir.join("umd-test-copies")).expect("umd-test-copies");
    let mut it = s.split_whitespace().map(|w| w.parse::<u64>().expect("number"));
    (it.next().expect("calls"), it.next().expect("bytes"))
}

/// Compares the whole file with `model`, naming the first differing byte.
fn check(f: &File, model: &[u8], what: &str) {
    let mut back = vec![0u8; model.len()];
    for (k, piece) in back.chunks_mut(1 << 20).enumerate() {
        f.read_exact_at(piece, (k << 20) as u64).expect("pread");
    }
    if let Some(i) = back.iter().zip(model).position(|(a, b)| a != b) {
        panic!("{what}: byte {i} is {:#x}, the model has {:#x}", back[i], model[i]);
    }
}

/// Copy through the mount and into the model; asserts the whole range was
/// copied (ranges inside the file, not overlapping).
struct Copier<'a> {
    model: &'a mut Vec<u8>,
    calls: u64,
    bytes: u64,
}

impl Copier<'_> {
    fn copy(&mut self, src: &File, off_in: u64, dst: &File, off_out: u64, len: usize) {
        let n = copy(src, off_in, dst, off_out, len)
            .unwrap_or_else(|e| panic!("copy_file_range({off_in} -> {off_out}, {len}): {e}"));
        assert_eq!(n, len, "copy_file_range({off_in} -> {off_out}, {len}) copied {n}");
        let (i, o) = (off_in as usize, off_out as usize);
        self.model.copy_within(i..i + len, o);
        self.calls += 1;
        self.bytes += len as u64;
    }
}

fn copy_round_trip(tag: &str, create_args: &[&str], n: usize, chunk: u64, seed: u64) {
    let s = Scratch::new(tag);
    let members: Vec<PathBuf> = (0..n).map(|k| s.path(&format!("m{k}.img"))).collect();
    create(create_args, &members);
    let dir = s.path("mnt");
    let g = assemble(&dir, &members, false);

    let data = dir.join("data");
    let open_rw = || std::fs::OpenOptions::new().read(true).write(true).open(&data).expect("open data rw");
    let (f, h) = (open_rw(), open_rw());
    let size = f.metadata().expect("stat").len();
    assert!(size >= 20 << 20, "array of {size} bytes: too small for this test");
    let mut rng = Rng(seed);
    let mut model = vec![0u8; size as usize];
    rng.fill(&mut model);
    for (k, piece) in model.chunks(1 << 20).enumerate() {
        f.write_all_at(piece, (k << 20) as u64).expect("pwrite");
    }
    f.sync_all().expect("fsync");
    let mut c = Copier { model: &mut model, calls: 0, bytes: 0 };

    // Unaligned, across chunks, between two descriptors and within one.
    c.copy(&f, 3, &h, size / 2 + 5, (3 * chunk + 777) as usize);
    c.copy(&h, size - 3 * chunk - 1, &h, 4097, (2 * chunk + 1) as usize);
    // Longer than one copy step (8 MiB), from below to above and back.
    let long = (10 << 20) + 12_345;
    c.copy(&f, 1001, &h, size - long as u64 - 4099, long);
    c.copy(&h, size - long as u64 - 1, &f, 7, long);

    // A source range crossing the end: cut there; at the end: 0.
    let n = copy(&f, size - 1000, &h, 4096, 5000).expect("copy across the end");
    assert_eq!(n, 1000);
    c.model.copy_within(size as usize - 1000.., 4096);
    c.calls += 1;
    c.bytes += 1000;
    assert_eq!(copy(&f, size, &h, 0, 10).expect("copy at the end"), 0);
    assert_eq!(copy(&f, size + 4096, &h, 0, 10).expect("copy past the end"), 0);
    // A destination past the end: EFBIG. Overlapping: EINVAL. Nothing written.
    for (off_in, off_out, len, errno) in [
        (0, size - 10, 100, libc::EFBIG),
        (0, size, 1, libc::EFBIG),
        (1000, 1500, 1000, libc::EINVAL),
        (1500, 1000, 1000, libc::EINVAL),
        (4096, 4096, 10, libc::EINVAL),
    ] {
        let e = copy(&f, off_in, &h, off_out, len).expect_err("refused copy");
        assert_eq!(e.raw_os_error(), Some(errno), "copy {off_in} -> {off_out} ({len}): {e}");
    }
    check(&f, c.model, &format!("{tag} after the first copies"));

    // Direct writes between copies: no copy reads stale cached data, no
    // write is undone by a copy.
    let a = size / 3 + 1234;
    for round in 0..3u8 {
        let buf = vec![0xa0 + round; 70_000];
        h.write_all_at(&buf, a).expect("pwrite");
        c.model[a as usize..a as usize + buf.len()].copy_from_slice(&buf);
        c.copy(&f, a - 10, &h, 1_000_000 + 100_000 * u64::from(round), 70_020);
    }
    check(&f, c.model, &format!("{tag} after copies between writes"));

    // Random copies.
    for _ in 0..24 {
        let len = 1 + rng.below(1 << 20);
        let (src, dst) = loop {
            let src = rng.below(size - len + 1);
            let dst = rng.below(size - len + 1);
            if src + len <= dst || dst + len <= src {
                break (src, dst);
            }
        };
        let (from, to) = if rng.below(2) == 0 { (&f, &h) } else { (&h, &f) };
        c.copy(from, src, to, dst, len as usize);
    }
    check(&f, c.model, &format!("{tag} after random copies"));

    // Writes racing copies right next to the destination (in the folios a
    // copy reads, patches and writes back whole): none is lost. (The kernel
    // also serializes them on the inode lock; umd does not rely on that:
    // its unit tests race them without it.)
    let (d, len) = (5 * chunk + 2049, 200_001usize);
    std::thread::scope(|sc| {
        let h = &h;
        let writer = sc.spawn(move || {
            for k in 1..=200u8 {
                h.write_all_at(&[k; 100], d - 100).expect("pwrite before");
                h.write_all_at(&[k; 100], d + len as u64).expect("pwrite after");
            }
        });
        for _ in 0..20 {
            let n = copy(&f, size / 2, &f, d, len).expect("copy racing writes");
            assert_eq!(n, len);
        }
        writer.join().expect("writer");
    });
    c.model.copy_within(size as usize / 2..size as usize / 2 + len, d as usize);
    c.model[d as usize - 100..d as usize].fill(200);
    c.model[d as usize + len..d as usize + len + 100].fill(200);
    c.calls += 20;
    c.bytes += 20 * len as u64;
    check(&f, c.model, &format!("{tag} after copies racing writes"));

    // Every copy so far was served by the copy cache.
    assert_eq!(copies(&dir), (c.calls, c.bytes), "copies served by the copy cache");

    // An attribute as the source: not served by the copy cache (the kernel
    // copies by reading and writing, or the caller gets EOPNOTSUPP/EXDEV).
    let state = File::open(dir.join("md/array_state")).expect("open array_state");
    let at = size / 4 + 3;
    match copy(&state, 0, &h, at, 64) {
        Ok(n) => {
            let mut word = vec![0u8; n];
            h.read_exact_at(&mut word, at).expect("pread");
            let w = String::from_utf8_lossy(&word);
            assert!(
                ["clean\n", "active\n", "active-idle\n", "write-pending\n"].contains(&&*w),
                "copied from array_state: {w:?}"
            );
            c.model[at as usize..at as usize + n].copy_from_slice(&word);
        }
        Err(e) => assert!(
            [Some(libc::EOPNOTSUPP), Some(libc::EXDEV)].contains(&e.raw_os_error()),
            "copy from array_state: {e}"
        ),
    }
    assert_eq!(copies(&dir), (c.calls, c.bytes), "an attribute copy went to the copy cache");
    check(&f, c.model, &format!("{tag} after the attribute copy"));
    // data → data still served (the attribute's EOPNOTSUPP did not switch
    // copy_file_range off for the connection).
    c.copy(&f, 0, &h, size - 4096, 4096);
    assert_eq!(copies(&dir), (c.calls, c.bytes));

    f.sync_all().expect("fsync");
    drop((f, h, state));
    stop(&dir);
    drop(g);

    // Re-assembled read-only: the same bytes; copy_file_range fails and
    // changes nothing.
    let hashes: Vec<u64> = members.iter().map(|m| file_hash(m)).collect();
    let _g = assemble(&dir, &members, true);
    let ro = File::open(&data).expect("open data ro");
    check(&ro, &model, &format!("{tag} read-only"));
    let e = std::fs::OpenOptions::new().write(true).open(&data).expect_err("opened for writing");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let ro2 = File::open(&data).expect("open data ro");
    let e = copy(&ro, 0, &ro2, size / 2, 4096).expect_err("copy on a read-only mount");
    assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
    check(&ro, &model, &format!("{tag} read-only after the refused copy"));
    drop((ro, ro2));
    stop(&dir);
    assert_eq!(hashes, members.iter().map(|m| file_hash(m)).collect::<Vec<_>>(), "members changed");
}

#[test]
fn raid1_copy_file_range() {
    copy_round_trip(
        "copy-raid1",
        &["-l", "1", "-n", "2", "-z", "24M", "--assume-clean"],
        2,
        64 << 10,
        0x1357_9bdf,
    );
}

#[test]
fn raid10_copy_file_range() {
    copy_round_trip(
        "copy-raid10",
        &["-l", "10", "-n", "4", "-c", "64", "-z", "12M", "--assume-clean"],
        4,
        64 << 10,
        0x2468_ace0,
    );
}

#[test]
fn raid5_copy_file_range() {
    copy_round_trip(
        "copy-raid5",
        &["-l", "5", "-n", "3", "-c", "64", "-z", "12M", "--assume-clean"],
        3,
        64 << 10,
        0x0f1e_2d3c,
    );
}
