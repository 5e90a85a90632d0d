//! `copy_file_range(2)` within `DIR/data` of a writable mount reaches
//! [`ArrayFile::copy_range`] (the kernel sends `FUSE_COPY_FILE_RANGE(_64)`),
//! with the kernel's bounds: a source range crossing the end is cut there,
//! a destination past the end is EFBIG, overlapping ranges are EINVAL. A
//! copy with an attribute as its source is not served (EOPNOTSUPP: the
//! kernel copies by reading and writing, or the caller gets the error) and
//! does not switch `copy_file_range` off for `data`. A read-only mount
//! serves no copy.

mod common;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use export::{ArrayFile, MountOptions};

const SIZE: u64 = 8 * MIB;

/// A writable in-memory array counting the copies it serves (by the
/// default, [`export::copy_by_read_write`]).
struct MemFile {
    data: Mutex<Vec<u8>>,
    copies: AtomicU64,
    copied: AtomicU64,
}

impl ArrayFile for MemFile {
    fn size(&self) -> u64 {
        self.data.lock().expect("data").len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.data.lock().expect("data");
        let s = d
            .get(offset as usize..offset as usize + buf.len())
            .ok_or_else(|| io::Error::other("past end"))?;
        buf.copy_from_slice(s);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.data.lock().expect("data");
        let s = d
            .get_mut(offset as usize..offset as usize + data.len())
            .ok_or_else(|| io::Error::other("past end"))?;
        s.copy_from_slice(data);
        Ok(())
    }
    fn copy_range(&self, src: u64, dst: u64, len: u64, buf: &mut [u8]) -> io::Result<u64> {
        assert!(len > 0 && src + len <= self.size() && dst + len <= self.size(), "bounds not checked");
        assert!(src + len <= dst || dst + len <= src, "overlap not checked");
        assert!(!buf.is_empty());
        let n = export::copy_by_read_write(self, src, dst, len, buf)?;
        self.copies.fetch_add(1, Ordering::Relaxed);
        self.copied.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

fn mem_file() -> Arc<MemFile> {
    let mut data = vec![0u8; SIZE as usize];
    fill_pattern(0, &mut data);
    Arc::new(MemFile { data: Mutex::new(data), copies: AtomicU64::new(0), copied: AtomicU64::new(0) })
}

fn copy(src: &File, off_in: u64, dst: &File, off_out: u64, len: usize) -> io::Result<usize> {
    let mut oi = off_in as libc::loff_t;
    let mut oo = off_out as libc::loff_t;
    // SAFETY: both descriptors are open for the call; the offset pointers
    // point at live locals.
    let r = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut oi, dst.as_raw_fd(), &mut oo, len, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[test]
fn copies_within_data_reach_copy_range() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let file = mem_file();
        let m = mount_on(&dir, file.clone(), MountOptions { read_only: false, ..tree_options(&t.tree) });
        let data = dir.path.join("data");
        let f = OpenOptions::new().read(true).write(true).open(&data).expect("open rw");
        let g = OpenOptions::new().read(true).write(true).open(&data).expect("open rw");
        let mut model = file.data.lock().expect("data").clone();
        let stats = || (file.copies.load(Ordering::Relaxed), file.copied.load(Ordering::Relaxed));

        // Longer than the worker's 1 MiB buffer, unaligned.
        let len = 3 * MIB as usize + 4321;
        assert_eq!(copy(&f, 17, &g, 4 * MIB + 3, len).expect("copy"), len);
        model.copy_within(17..17 + len, 4 * MIB as usize + 3);
        assert_eq!(stats(), (1, len as u64));
        // Across the end: cut there. At the end: 0, not sent.
        assert_eq!(copy(&f, SIZE - 100, &f, 0, 1000).expect("copy across the end"), 100);
        model.copy_within(SIZE as usize - 100.., 0);
        assert_eq!(copy(&f, SIZE, &g, 0, 1000).expect("copy at the end"), 0);
        assert_eq!(stats(), (2, len as u64 + 100));
        // Refused, nothing written or served.
        for (off_in, off_out, n, errno) in [
            (0, SIZE - 1, 2, libc::EFBIG),
            (0, SIZE, 1, libc::EFBIG),
            (0, 10, 100, libc::EINVAL),
            (10, 0, 100, libc::EINVAL),
        ] {
            let e = copy(&f, off_in, &g, off_out, n).expect_err("refused copy");
            assert_eq!(e.raw_os_error(), Some(errno), "{off_in} -> {off_out} ({n}): {e}");
        }
        assert_eq!(stats(), (2, len as u64 + 100));
        assert!(*file.data.lock().expect("data") == model);
        let mut back = vec![0u8; SIZE as usize];
        f.read_exact_at(&mut back, 0).expect("read back");
        assert!(back == model, "read back differs");

        // From an attribute: not served by copy_range.
        let a = File::open(dir.path.join("md/array_state")).expect("open attribute");
        match copy(&a, 0, &g, 1000, 100) {
            Ok(n) => {
                assert_eq!(n, t.array_state.get().len() + 1);
                model[1000..1000 + n].copy_from_slice(format!("{}\n", t.array_state.get()).as_bytes());
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}"),
        }
        assert_eq!(stats(), (2, len as u64 + 100));
        // ... which did not switch copy_file_range off.
        assert_eq!(copy(&f, 0, &g, MIB, 4096).expect("copy"), 4096);
        model.copy_within(..4096, MIB as usize);
        assert_eq!(stats(), (3, len as u64 + 4196));
        assert!(*file.data.lock().expect("data") == model);
        drop((f, g, a));
        finish(m);
    });
}

#[test]
fn read_only_mount_serves_no_copy() {
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let t = test_tree();
        let file = mem_file();
        let m = mount_on(&dir, file.clone(), tree_options(&t.tree));
        let data = dir.path.join("data");
        let e = OpenOptions::new().write(true).open(&data).expect_err("opened for writing");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        let (f, g) = (File::open(&data).expect("open"), File::open(&data).expect("open"));
        let e = copy(&f, 0, &g, MIB, 4096).expect_err("copy on a read-only mount");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        assert_eq!(file.copies.load(Ordering::Relaxed), 0);
        drop((f, g));
        finish(m);
    });
}

/// Unmount and join the workers.
fn finish(m: export::Mount) {
    m.unmounter().unmount();
    m.wait().expect("wait");
}
