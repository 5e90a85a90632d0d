//! Mount and unmount paths: Unmounter, external umount, Drop, open files at
//! unmount, and refused mount points.

mod common;

use std::fs::File;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use common::*;

const SIZE: u64 = 4 * MIB + 100;

#[test]
fn unmounter_makes_wait_return() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), options());
        assert!(is_mounted(&dir.path));
        let u = m.unmounter();
        assert_eq!(u.mount_point(), dir.path.as_path());
        let waiter = std::thread::spawn(move || m.wait());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "wait() returned before unmount");
        // From a different thread than the one waiting.
        let u2 = u.clone();
        std::thread::spawn(move || u2.unmount()).join().expect("unmount thread");
        waiter.join().expect("waiter").expect("wait");
        assert!(!is_mounted(&dir.path));
        // Idempotent.
        u.unmount();
        assert!(!is_mounted(&dir.path));
    });
}

#[test]
fn external_umount_makes_wait_return() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), options());
        let data = std::fs::read(dir.path.join("data")).expect("read");
        check_pattern(0, &data);
        let status = std::process::Command::new("umount").arg(&dir.path).status().expect("run umount");
        assert!(status.success(), "umount failed: {status}");
        m.wait().expect("wait after external umount");
        assert!(!is_mounted(&dir.path));
    });
}

#[test]
fn external_fusermount_u_makes_wait_return() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), options());
        let status = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&dir.path)
            .status()
            .expect("run fusermount3");
        assert!(status.success(), "fusermount3 -u failed: {status}");
        m.wait().expect("wait after fusermount3 -u");
        assert!(!is_mounted(&dir.path));
    });
}

#[test]
fn drop_unmounts() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), options());
        assert!(is_mounted(&dir.path));
        drop(m);
        assert!(!is_mounted(&dir.path));
    });
}

#[test]
fn unmount_with_open_file_and_active_readers() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), options());
        let held = File::open(dir.path.join("data")).expect("open");
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let file = dir.path.join("data");
                std::thread::spawn(move || {
                    // Read until the unmount makes reads fail.
                    let mut buf = vec![0u8; MIB as usize];
                    for _ in 0..100_000 {
                        let Ok(f) = File::open(&file) else { return };
                        let mut off = 0;
                        loop {
                            match pread_full(&f, off, &mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    check_pattern(off, &buf[..n]);
                                    off += n as u64;
                                }
                                Err(_) => return,
                            }
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        m.unmounter().unmount();
        m.wait().expect("wait with a file still open");
        assert!(!is_mounted(&dir.path));
        for r in readers {
            r.join().expect("reader");
        }
        // The connection is gone: the held descriptor now fails once the
        // page cache no longer has the data.
        use std::os::fd::AsRawFd;
        // SAFETY: plain advice on an open descriptor.
        unsafe { libc::posix_fadvise(held.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let mut buf = [0u8; 16];
        let e = (&held).read(&mut buf).expect_err("read after abort");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    });
}

#[test]
fn refuses_missing_or_non_directory_mount_point() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let file = Arc::new(PatternFile::new(4096));
        let missing = dir.path.join("missing");
        let e = export::mount(&missing, file.clone(), options()).expect_err("missing dir");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(!is_mounted(&missing));

        let regular = dir.path.join("regular");
        std::fs::write(&regular, b"x").expect("create file");
        let e = export::mount(&regular, file.clone(), options()).expect_err("regular file");
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(!is_mounted(&regular));
        std::fs::remove_file(&regular).expect("cleanup");

        // Read-write: `data` opens for writing; an ArrayFile without its
        // own write_at refuses (EROFS), past the end is EFBIG, O_TRUNC EROFS.
        let mut o = options();
        o.read_only = false;
        let m = export::mount(&dir.path, file, o).expect("rw mount");
        {
            use std::os::unix::fs::FileExt;
            let data = dir.path.join("data");
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&data).expect("open rw");
            let e = f.write_at(b"x", 0).expect_err("default write_at");
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
            let e = f.write_at(b"xy", 4095).expect_err("past the end");
            assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
            let e = std::fs::OpenOptions::new().write(true).truncate(true).open(&data).expect_err("O_TRUNC");
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
            f.sync_all().expect("fsync");
        }
        drop(m);
        assert!(!is_mounted(&dir.path));
    });
}
