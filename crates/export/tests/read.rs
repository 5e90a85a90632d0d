//! Reading `DIR/data` through a real FUSE mount (needs /dev/fuse; run as
//! root, or with fusermount3 available).

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;

use common::*;

/// 64 MiB: the main test array.
const SIZE: u64 = 64 * MIB;
/// Not a multiple of 4096 (nor of 512).
const ODD_SIZE: u64 = 10 * MIB + 12_345;

#[test]
fn ls_shows_data_with_right_size() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let m = mount_on(&dir, Arc::new(PatternFile::new(ODD_SIZE)), options());
        let names: Vec<String> = std::fs::read_dir(&dir.path)
            .expect("readdir")
            .map(|e| e.expect("dirent").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["data".to_string()]);
        let entry =
            std::fs::read_dir(&dir.path).expect("readdir").next().expect("one entry").expect("dirent");
        assert!(entry.file_type().expect("file type").is_file());
        let out = std::process::Command::new("ls").arg("-ln").arg(&dir.path).output().expect("run ls");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ls failed: {text}");
        let line = text.lines().find(|l| l.ends_with(" data")).expect("ls lists data");
        assert!(line.starts_with("-r--r--r--"), "{line}");
        assert!(line.contains(&format!(" {ODD_SIZE} ")), "{line}");
        assert_eq!(std::fs::metadata(dir.path.join("data")).expect("stat").len(), ODD_SIZE);
        let mounts = mounts_line(&dir.path).expect("listed in /proc/mounts");
        assert!(mounts.starts_with("umd:test "), "{mounts}");
        assert!(mounts.contains(" fuse.umd ro,"), "{mounts}");
        drop(m);
        assert!(!is_mounted(&dir.path));
    });
}

#[test]
fn stat_is_read_only_regular_file() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let _m = mount_on(&dir, Arc::new(PatternFile::new(ODD_SIZE)), options());
        let md = std::fs::metadata(dir.path.join("data")).expect("stat data");
        assert!(md.file_type().is_file());
        assert_eq!(md.permissions().mode() & 0o7777, 0o444);
        assert!(md.permissions().readonly());
        assert_eq!(md.len(), ODD_SIZE);
        assert_eq!(md.nlink(), 1);
        assert!(md.blksize() >= 4096, "blksize {}", md.blksize());
        assert_eq!(md.blocks(), ODD_SIZE.div_ceil(512));
        assert_eq!(md.ino(), 2);
        let root = std::fs::metadata(&dir.path).expect("stat root");
        assert!(root.is_dir());
        assert_eq!(root.permissions().mode() & 0o7777, 0o555);
        assert_eq!(root.ino(), 1);
        assert_eq!(
            std::fs::metadata(dir.path.join("missing")).map_err(|e| e.raw_os_error()).err(),
            Some(Some(libc::ENOENT))
        );
        // statfs answers.
        let c = std::ffi::CString::new(dir.path.to_str().expect("utf8")).expect("cstring");
        // SAFETY: an all-zero statvfs is a valid value; c is a valid
        // NUL-terminated path and st a live, writable statvfs.
        let (r, st) = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            (libc::statvfs(c.as_ptr(), &mut st), st)
        };
        assert_eq!(r, 0, "statvfs: {}", std::io::Error::last_os_error());
        assert!(st.f_flag & libc::ST_RDONLY != 0);
        assert!(st.f_bsize >= 4096);
    });
}

fn whole_file_matches(size: u64) {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let _m = mount_on(&dir, Arc::new(PatternFile::new(size)), options());
        let data = std::fs::read(dir.path.join("data")).expect("read whole file");
        assert_eq!(data.len() as u64, size);
        check_pattern(0, &data);
        // Again, with large explicit reads through a fresh open.
        let mut f = File::open(dir.path.join("data")).expect("open");
        let mut buf = vec![0u8; 3 * MIB as usize];
        let mut off = 0u64;
        loop {
            let n = f.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            check_pattern(off, &buf[..n]);
            off += n as u64;
        }
        assert_eq!(off, size);
    });
}

#[test]
fn whole_file_matches_64mib() {
    whole_file_matches(SIZE);
}

#[test]
fn whole_file_matches_odd_size() {
    whole_file_matches(ODD_SIZE);
}

#[test]
fn pread_random_offsets_and_across_eof() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let _m = mount_on(&dir, Arc::new(PatternFile::new(ODD_SIZE)), options());
        let f = File::open(dir.path.join("data")).expect("open");
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut buf = vec![0u8; 3 * MIB as usize];
        for i in 0..400 {
            // Mostly inside the file, some straddling or beyond EOF.
            let off = match i % 5 {
                0 => ODD_SIZE.saturating_sub(rng.below(64 * 1024)),
                1 => ODD_SIZE + rng.below(8192),
                _ => rng.below(ODD_SIZE),
            };
            let len = match i % 3 {
                0 => rng.below(4096) as usize + 1,
                1 => rng.below(256 * 1024) as usize + 1,
                _ => rng.below(buf.len() as u64) as usize + 1,
            };
            let n = pread_full(&f, off, &mut buf[..len]).expect("pread");
            let want = ODD_SIZE.saturating_sub(off).min(len as u64) as usize;
            assert_eq!(n, want, "pread({off}, {len})");
            check_pattern(off, &buf[..n]);
        }
        // Exactly at and beyond EOF: zero bytes.
        assert_eq!(pread_full(&f, ODD_SIZE, &mut buf[..10]).expect("pread at EOF"), 0);
        assert_eq!(pread_full(&f, u64::MAX / 4, &mut buf[..10]).expect("pread far"), 0);
        // The last byte alone.
        assert_eq!(pread_full(&f, ODD_SIZE - 1, &mut buf[..10]).expect("last byte"), 1);
        check_pattern(ODD_SIZE - 1, &buf[..1]);
    });
}

#[test]
fn concurrent_readers() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let _m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), options());
        let file = dir.path.join("data");
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let file = file.clone();
                std::thread::spawn(move || {
                    let f = File::open(&file).expect("open");
                    let mut rng = Rng(0x9e37_79b9 + t);
                    let mut buf = vec![0u8; 2 * MIB as usize];
                    for _ in 0..200 {
                        let off = rng.below(SIZE);
                        let len = rng.below(buf.len() as u64) as usize + 1;
                        let n = pread_full(&f, off, &mut buf[..len]).expect("pread");
                        assert_eq!(n as u64, (SIZE - off).min(len as u64));
                        check_pattern(off, &buf[..n]);
                    }
                    // And one sequential pass in 1 MiB steps, a different
                    // starting point per thread.
                    let start = t * (SIZE / 4);
                    let mut off = start;
                    while off < SIZE {
                        let n = pread_full(&f, off, &mut buf[..MIB as usize]).expect("pread");
                        check_pattern(off, &buf[..n]);
                        off += n as u64;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("reader thread");
        }
    });
}

#[test]
fn open_for_write_fails_with_erofs() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let _m = mount_on(&dir, Arc::new(PatternFile::new(ODD_SIZE)), options());
        let data = dir.path.join("data");
        let e = OpenOptions::new().write(true).open(&data).expect_err("O_WRONLY");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = OpenOptions::new().read(true).write(true).open(&data).expect_err("O_RDWR");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = std::fs::write(&data, b"x").expect_err("write via fs::write");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = File::create(dir.path.join("new")).expect_err("create");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = std::fs::create_dir(dir.path.join("sub")).expect_err("mkdir");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = std::fs::remove_file(&data).expect_err("unlink");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).expect_err("chmod");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    });
}

#[test]
fn write_fails() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let _m = mount_on(&dir, Arc::new(PatternFile::new(ODD_SIZE)), options());
        let mut f = File::open(dir.path.join("data")).expect("open read-only");
        f.write_all(b"hello").expect_err("write on a read-only open");
        use std::os::unix::fs::FileExt;
        f.write_at(b"hello", 0).expect_err("pwrite on a read-only open");
        f.set_len(0).expect_err("ftruncate");
        // Data unchanged.
        let mut buf = [0u8; 5];
        assert_eq!(pread_full(&f, 0, &mut buf).expect("pread"), 5);
        check_pattern(0, &buf);
    });
}

#[test]
fn read_error_gives_eio() {
    for error in [0, libc::EIO] {
        let dir = TestDir::new();
        let path = dir.path.clone();
        with_watchdog(Some(&path), move || {
            let file = Arc::new(FailingFile { size: 1 << 20, error });
            let _m = mount_on(&dir, file, options());
            let e = std::fs::read(dir.path.join("data")).expect_err("read must fail");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
            let f = File::open(dir.path.join("data")).expect("open still works");
            let mut buf = [0u8; 100];
            let e = pread_full(&f, 4096, &mut buf).expect_err("pread must fail");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
            // The mount stays healthy: metadata still answers.
            assert_eq!(std::fs::metadata(dir.path.join("data")).expect("stat").len(), 1 << 20);
        });
    }
}

#[test]
fn panicking_array_gives_eio_and_keeps_serving() {
    struct Panics;
    impl export::ArrayFile for Panics {
        fn size(&self) -> u64 {
            8192
        }
        fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> std::io::Result<()> {
            panic!("simulated bug in the array");
        }
    }
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let _m = mount_on(&dir, Arc::new(Panics), options());
        let e = std::fs::read(dir.path.join("data")).expect_err("read must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(std::fs::metadata(dir.path.join("data")).expect("stat").len(), 8192);
    });
}

#[test]
fn single_and_many_threads() {
    for threads in [0, 1, 8] {
        let dir = TestDir::new();
        let path = dir.path.clone();
        with_watchdog(Some(&path), move || {
            let mut o = options();
            o.threads = threads;
            let m = mount_on(&dir, Arc::new(PatternFile::new(ODD_SIZE)), o);
            let data = std::fs::read(dir.path.join("data")).expect("read");
            check_pattern(0, &data);
            m.unmounter().unmount();
            m.wait().expect("wait");
            assert!(!is_mounted(&dir.path));
        });
    }
}
