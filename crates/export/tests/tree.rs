//! The attribute tree through a real FUSE mount: listing, reading and
//! writing attributes (also from a shell), errors, symlinks, poll/notify,
//! removal under an open file, and the null file.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const SIZE: u64 = MIB + 3;
const PRI_ERR: i16 = libc::POLLPRI | libc::POLLERR;

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("dirent").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> Option<i32> {
    r.expect_err("must fail").raw_os_error()
}

/// `sh -c 'echo WORD > PATH'`; returns the shell's status and stderr.
fn shell_echo(word: &str, path: &std::path::Path) -> (bool, String) {
    shell_echo_with("sh", word, path)
}

/// `SHELL -c 'echo WORD > PATH'`; returns the shell's status and stderr.
fn shell_echo_with(shell: &str, word: &str, path: &std::path::Path) -> (bool, String) {
    let out = Command::new(shell)
        .arg("-c")
        .arg("echo \"$1\" > \"$2\"")
        .arg("sh")
        .arg(word)
        .arg(path)
        .output()
        .expect("run sh");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn tree_is_listed_next_to_data() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), tree_options(&t.tree));
        assert_eq!(names(&dir.path), ["data", "md"]);
        let md = dir.path.join("md");
        assert_eq!(names(&md), ["array_state", "awl", "bytes", "dev-x", "level", "link", "sync_action"]);
        assert_eq!(names(&md.join("dev-x")), ["state"]);

        let st = std::fs::metadata(&md).expect("stat md");
        assert!(st.is_dir());
        assert_eq!(st.mode() & 0o7777, 0o755);
        assert_eq!(st.nlink(), 3, "md has one subdirectory");
        assert_eq!(st.ino(), export_tree_ino(t.md.id()));
        let a = std::fs::metadata(md.join("array_state")).expect("stat array_state");
        assert!(a.is_file());
        assert_eq!(a.mode() & 0o7777, 0o644);
        assert_eq!(a.len(), 4096, "attributes report PAGE_SIZE, like sysfs");
        assert_eq!(std::fs::metadata(md.join("level")).expect("stat").mode() & 0o7777, 0o444);
        let l = std::fs::symlink_metadata(md.join("link")).expect("lstat link");
        assert!(l.file_type().is_symlink());
        assert_eq!(std::fs::read_link(md.join("link")).expect("readlink"), std::path::Path::new("dev-x"));
        // Followed, it is the directory.
        assert!(std::fs::metadata(md.join("link")).expect("stat via link").is_dir());
        let root = std::fs::metadata(&dir.path).expect("stat root");
        assert_eq!(root.nlink(), 3);
        // The data file is unchanged; no null file unless asked for.
        assert_eq!(std::fs::metadata(dir.path.join("data")).expect("stat data").len(), SIZE);
        check_pattern(0, &std::fs::read(dir.path.join("data")).expect("read data"));
        assert_eq!(errno(std::fs::metadata(dir.path.join("null"))), Some(libc::ENOENT));
        assert_eq!(errno(std::fs::metadata(md.join("missing"))), Some(libc::ENOENT));
        // With a tree the mount is not MS_RDONLY.
        let line = mounts_line(&dir.path).expect("mounted");
        assert!(line.contains(" fuse.umd rw,"), "{line}");
        m.unmounter().unmount();
        m.wait().expect("wait");
        assert!(!is_mounted(&dir.path));
    });
}

/// Node ids of tree nodes, as documented: kernfs id + 1024.
fn export_tree_ino(id: u64) -> u64 {
    id + 1024
}

#[test]
fn data_and_structure_stay_read_only() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let _m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), tree_options(&t.tree));
        let data = dir.path.join("data");
        let md = dir.path.join("md");
        assert_eq!(errno(OpenOptions::new().write(true).open(&data)), Some(libc::EROFS));
        assert_eq!(errno(std::fs::write(&data, b"x")), Some(libc::EROFS));
        assert_eq!(errno(File::create(dir.path.join("new"))), Some(libc::EROFS));
        assert_eq!(errno(File::create(md.join("new"))), Some(libc::EROFS));
        assert_eq!(errno(std::fs::create_dir(md.join("sub"))), Some(libc::EROFS));
        assert_eq!(errno(std::fs::remove_file(md.join("bytes"))), Some(libc::EROFS));
        assert_eq!(errno(std::fs::remove_dir(md.join("dev-x"))), Some(libc::EROFS));
        assert_eq!(errno(std::fs::rename(md.join("bytes"), md.join("b2"))), Some(libc::EROFS));
        assert_eq!(errno(std::fs::remove_file(&data)), Some(libc::EROFS));
        assert_eq!(
            errno(std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644))),
            Some(libc::EROFS)
        );
        assert_eq!(
            errno(std::fs::set_permissions(md.join("bytes"), std::fs::Permissions::from_mode(0o600))),
            Some(libc::EROFS)
        );
        let c = std::ffi::CString::new(data.to_str().expect("utf-8")).expect("cstring");
        // SAFETY: a valid NUL-terminated path.
        let r = unsafe { libc::truncate(c.as_ptr(), 0) };
        assert_eq!(r, -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EROFS));
        // Truncating an attribute to a non-zero size is refused.
        let a = OpenOptions::new().write(true).open(md.join("bytes")).expect("open bytes");
        assert_eq!(errno(a.set_len(10)), Some(libc::EROFS));
        assert_eq!(std::fs::read(&data).expect("data intact").len() as u64, SIZE);
    });
}

#[test]
fn read_and_write_attributes() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let _m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), tree_options(&t.tree));
        let md = dir.path.join("md");
        let state = md.join("array_state");
        assert_eq!(std::fs::read_to_string(&state).expect("read"), "readonly\n");
        assert_eq!(std::fs::read_to_string(md.join("level")).expect("read"), "raid5\n");

        // std::fs::write: O_WRONLY|O_CREAT|O_TRUNC, then one write.
        std::fs::write(&state, b"clean").expect("write clean");
        assert_eq!(t.array_state.get(), "clean");
        assert_eq!(std::fs::read_to_string(&state).expect("read"), "clean\n");

        // From a shell, with the trailing newline.
        let (ok, err) = shell_echo("readonly", &state);
        assert!(ok, "sh: {err}");
        assert_eq!(t.array_state.get(), "readonly");
        let (ok, err) = shell_echo("frozen", &md.join("sync_action"));
        assert!(ok, "sh: {err}");
        assert_eq!(t.sync_action.get(), "frozen");
        assert_eq!(std::fs::read_to_string(md.join("sync_action")).expect("read"), "frozen\n");
        let (ok, err) = shell_echo("clean", &state);
        assert!(ok, "sh: {err}");
        assert_eq!(std::fs::read_to_string(&state).expect("read"), "clean\n");

        // Garbage: EINVAL, value unchanged (also from the shell).
        assert_eq!(errno(std::fs::write(&state, b"garbage")), Some(libc::EINVAL));
        assert_eq!(t.array_state.get(), "clean");
        let (ok, err) = shell_echo("bogus", &state);
        assert!(!ok, "sh accepted garbage: {err}");
        // bash reports the errno of the failed write (dash just says
        // "I/O error").
        if std::path::Path::new("/bin/bash").exists() {
            let (ok, err) = shell_echo_with("bash", "bogus", &state);
            assert!(!ok && err.contains("Invalid argument"), "bash: {err}");
            let (ok, err) = shell_echo_with("bash", "frozen", &md.join("sync_action"));
            assert!(ok, "bash: {err}");
        }
        assert_eq!(std::fs::read_to_string(&state).expect("read"), "clean\n");

        // atomic_write_len 8: 8 bytes pass, 9 are E2BIG.
        std::fs::write(md.join("awl"), b"12345678").expect("8 bytes");
        assert_eq!(t.awl.0.lock().expect("lock").as_slice(), b"12345678");
        assert_eq!(errno(std::fs::write(md.join("awl"), b"123456789")), Some(libc::E2BIG));
        assert_eq!(t.awl.0.lock().expect("lock").as_slice(), b"12345678");

        // A non-prealloc attribute, one descriptor, several writes and
        // re-reads after lseek(0).
        let mut f = OpenOptions::new().read(true).write(true).open(md.join("bytes")).expect("open rw");
        for v in ["1", "22", "333"] {
            f.write_all(v.as_bytes()).expect("write");
            f.seek(SeekFrom::Start(0)).expect("lseek 0");
            let mut s = String::new();
            f.read_to_string(&mut s).expect("read");
            assert_eq!(s, format!("{v}\n"));
            f.seek(SeekFrom::Start(0)).expect("lseek 0");
        }
        // Reading in small pieces continues the value generated at offset 0.
        let mut b = [0u8; 2];
        assert_eq!(f.read_at(&mut b, 0).expect("pread"), 2);
        assert_eq!(&b, b"33");
        assert_eq!(f.read_at(&mut b, 2).expect("pread"), 2);
        assert_eq!(&b, b"3\n");
        assert_eq!(f.read_at(&mut b, 4).expect("pread at end"), 0);
        // truncate(0) of an attribute is accepted and changes nothing.
        f.set_len(0).expect("ftruncate 0");
        assert_eq!(std::fs::read_to_string(md.join("bytes")).expect("read"), "333\n");
        drop(f);

        // Read-only attribute: no write open, even for root (as sysfs).
        assert_eq!(errno(OpenOptions::new().write(true).open(md.join("level"))), Some(libc::EACCES));
        // Not opened for reading / writing.
        let w = OpenOptions::new().write(true).open(&state).expect("open wo");
        assert_eq!(errno(w.read_at(&mut b, 0)), Some(libc::EBADF));
        let r = File::open(&state).expect("open ro");
        assert_eq!(errno(r.write_at(b"clean", 0)), Some(libc::EBADF));
    });
}

#[test]
fn poll_wakes_on_notify() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let _m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), tree_options(&t.tree));
        let f = File::open(dir.path.join("md/array_state")).expect("open");
        let fd = f.as_raw_fd();
        // Never read: the change is pending at once (kernfs semantics).
        assert_eq!(poll_fd(fd, libc::POLLPRI, 0), (1, PRI_ERR));
        let mut buf = [0u8; 64];
        for (round, word) in ["clean", "active", "readonly"].into_iter().enumerate() {
            let n = f.read_at(&mut buf, 0).expect("read at 0");
            assert!(n > 0);
            // Nothing pending after the read.
            assert_eq!(poll_fd(fd, libc::POLLPRI, 100), (0, 0), "round {round}: early POLLPRI");
            // Change it from another thread while this one sleeps in poll.
            let a = Arc::clone(&t.array_state);
            let changer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                a.set(word);
            });
            let start = Instant::now();
            let (r, revents) = poll_fd(fd, libc::POLLPRI, 10_000);
            let waited = start.elapsed();
            changer.join().expect("changer");
            assert_eq!((r, revents), (1, PRI_ERR), "round {round}");
            assert!(waited >= Duration::from_millis(150), "round {round}: woke after {waited:?}");
            assert!(waited < Duration::from_secs(5), "round {round}: woke after {waited:?}");
            // Still pending until re-read from offset 0.
            assert_eq!(poll_fd(fd, libc::POLLPRI, 0), (1, PRI_ERR));
            let n = f.read_at(&mut buf, 0).expect("re-read at 0");
            assert_eq!(&buf[..n], format!("{word}\n").as_bytes());
        }
        // A change made by a write through FUSE (another descriptor) wakes a
        // poller too: the store notifies.
        f.read_at(&mut buf, 0).expect("read");
        let state = dir.path.join("md/array_state");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::write(state, b"clean").expect("write");
        });
        assert_eq!(poll_fd(fd, libc::POLLPRI, 10_000), (1, PRI_ERR));
        writer.join().expect("writer");
        // Plain readability is always there (POLLIN), as for sysfs.
        let (r, revents) = poll_fd(fd, libc::POLLIN, 0);
        assert_eq!(r, 1);
        assert_ne!(revents & libc::POLLIN, 0);
        // poll on data answers too (regular file: always ready).
        let d = File::open(dir.path.join("data")).expect("open data");
        assert_eq!(poll_fd(d.as_raw_fd(), libc::POLLIN, 0), (1, libc::POLLIN));
    });
}

#[test]
fn many_pollers_each_woken() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let _m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), tree_options(&t.tree));
        let files: Vec<File> =
            (0..8).map(|_| File::open(dir.path.join("md/array_state")).expect("open")).collect();
        let mut buf = [0u8; 64];
        for f in &files {
            f.read_at(&mut buf, 0).expect("read");
        }
        let pollers: Vec<_> = files
            .into_iter()
            .map(|f| {
                std::thread::spawn(move || {
                    let r = poll_fd(f.as_raw_fd(), libc::POLLPRI, 10_000);
                    (r, f)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        t.array_state.set("active");
        for p in pollers {
            let (r, _f) = p.join().expect("poller");
            assert_eq!(r, (1, PRI_ERR));
        }
    });
}

#[test]
fn removed_node_under_open_file() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let _m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), tree_options(&t.tree));
        let dev = dir.path.join("md/dev-x");
        let held = File::open(dev.join("state")).expect("open state");
        let poller_file = File::open(dev.join("state")).expect("open state again");
        let mut buf = [0u8; 64];
        let n = held.read_at(&mut buf, 0).expect("read");
        assert_eq!(&buf[..n], b"in_sync\n");
        poller_file.read_at(&mut buf, 0).expect("read");
        let poller = std::thread::spawn(move || {
            let start = Instant::now();
            let r = poll_fd(poller_file.as_raw_fd(), libc::POLLPRI, 10_000);
            (r, start.elapsed(), poller_file)
        });
        std::thread::sleep(Duration::from_millis(200));
        t.tree.remove(&t.dev_x);
        let ((r, revents), waited, poller_file) = poller.join().expect("poller");
        assert_eq!((r, revents), (1, PRI_ERR), "removal wakes pollers");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert_eq!(errno(held.read_at(&mut buf, 0)), Some(libc::ENODEV));
        assert_eq!(errno(held.read_at(&mut buf, 3)), Some(libc::ENODEV));
        assert_eq!(poll_fd(held.as_raw_fd(), libc::POLLPRI, 0), (1, PRI_ERR));
        let w = OpenOptions::new().write(true).open(dev.join("state"));
        assert_eq!(errno(w), Some(libc::ENOENT));
        drop(held);
        drop(poller_file);
        assert_eq!(errno(std::fs::metadata(&dev)), Some(libc::ENOENT));
        assert_eq!(errno(std::fs::metadata(dev.join("state"))), Some(libc::ENOENT));
        assert!(!names(&dir.path.join("md")).contains(&"dev-x".to_string()));
        // The rest of the tree still works.
        assert_eq!(std::fs::read_to_string(dir.path.join("md/array_state")).expect("read"), "readonly\n");
        assert_eq!(t.dev_state.get(), "in_sync");
    });
}

#[test]
fn concurrent_readers_writers_and_notifies() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let _m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), tree_options(&t.tree));
        let state = dir.path.join("md/array_state");
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let state = state.clone();
                std::thread::spawn(move || {
                    let f = OpenOptions::new().read(true).write(true).open(&state).expect("open");
                    let mut buf = [0u8; 64];
                    for j in 0..300 {
                        let w: &[u8] = if (i + j) % 2 == 0 { b"clean\n" } else { b"active\n" };
                        assert_eq!(f.write_at(w, 0).expect("write"), w.len());
                        let n = f.read_at(&mut buf, 0).expect("read");
                        let v = &buf[..n];
                        assert!(matches!(v, b"clean\n" | b"active\n" | b"readonly\n"), "{v:?}");
                        let _ = poll_fd(f.as_raw_fd(), libc::POLLPRI, 0);
                    }
                })
            })
            .collect();
        for _ in 0..300 {
            t.array_state.set("readonly");
        }
        for w in workers {
            w.join().expect("worker");
        }
    });
}

#[test]
fn unmount_wakes_pollers_and_wait_returns() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), tree_options(&t.tree));
        let f = File::open(dir.path.join("md/array_state")).expect("open");
        let mut buf = [0u8; 64];
        f.read_at(&mut buf, 0).expect("read");
        let poller = std::thread::spawn(move || {
            let start = Instant::now();
            let r = poll_fd(f.as_raw_fd(), libc::POLLPRI, 20_000);
            (r, start.elapsed(), f)
        });
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        m.unmounter().unmount();
        m.wait().expect("wait");
        assert!(start.elapsed() < Duration::from_secs(3), "wait took {:?}", start.elapsed());
        assert!(!is_mounted(&dir.path));
        let ((r, revents), waited, f) = poller.join().expect("poller");
        assert_eq!(r, 1, "poller woken by the abort");
        assert_ne!(revents & libc::POLLERR, 0, "{revents:#x}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        drop(f);
        // The tree itself is intact and usable in process.
        assert_eq!(t.array_state.get(), "readonly");
        assert!(t.tree.walk("md/array_state").is_some());
    });
}

#[test]
fn refuses_tree_child_named_data() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let tree = kernfs::Kernfs::new();
        let n = tree.create_dir(&tree.root(), "data", 0o755).expect("create");
        tree.activate(&n);
        let e = export::mount(&dir.path, Arc::new(PatternFile::new(SIZE)), tree_options(&tree))
            .expect_err("a tree child named data");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        assert!(!is_mounted(&dir.path));
        // "null" is only reserved with the null file.
        tree.remove(&n);
        let n = tree.create_dir(&tree.root(), "null", 0o755).expect("create");
        tree.activate(&n);
        let mut o = tree_options(&tree);
        o.null_file = true;
        let e = export::mount(&dir.path, Arc::new(PatternFile::new(SIZE)), o.clone()).expect_err("null");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        o.null_file = false;
        let m = export::mount(&dir.path, Arc::new(PatternFile::new(SIZE)), o).expect("mount");
        assert_eq!(names(&dir.path), ["data", "null"]);
        assert!(std::fs::metadata(dir.path.join("null")).expect("stat").is_dir());
        drop(m);
    });
}

#[test]
fn null_file_is_a_page_of_zeros() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let mut o = tree_options(&t.tree);
        o.null_file = true;
        let _m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), o);
        assert_eq!(names(&dir.path), ["data", "md", "null"]);
        let null = dir.path.join("null");
        let st = std::fs::metadata(&null).expect("stat");
        assert_eq!((st.len(), st.mode() & 0o7777, st.ino()), (4096, 0o444, 3));
        assert_eq!(std::fs::read(&null).expect("read"), vec![0u8; 4096]);
        let f = File::open(&null).expect("open");
        let mut buf = [1u8; 200];
        assert_eq!(f.read_at(&mut buf, 4000).expect("pread"), 96);
        assert!(buf[..96].iter().all(|&b| b == 0));
        assert_eq!(f.read_at(&mut buf, 4096).expect("pread at end"), 0);
        // Every pread reaches the server (direct I/O), so repeated reads
        // keep answering.
        for _ in 0..100 {
            assert_eq!(f.read_at(&mut buf[..16], 0).expect("pread"), 16);
        }
        assert_eq!(errno(OpenOptions::new().write(true).open(&null)), Some(libc::EROFS));
        // Without a tree, too.
        drop(_m);
        let o = MountOptionsExt::with_null(options());
        let m = mount_on(&dir, Arc::new(PatternFile::new(SIZE)), o);
        assert_eq!(names(&dir.path), ["data", "null"]);
        assert_eq!(std::fs::read(&null).expect("read").len(), 4096);
        drop(m);
    });
}

trait MountOptionsExt {
    fn with_null(self) -> Self;
}

impl MountOptionsExt for export::MountOptions {
    fn with_null(mut self) -> Self {
        self.null_file = true;
        self
    }
}
