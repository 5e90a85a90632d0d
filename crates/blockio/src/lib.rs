//! # blockio — the only layer that touches member file descriptors
//!
//! ## Responsibility boundary
//! `blockio` owns the open file descriptor of every member device (a regular
//! image file or a block device): opening it, discovering its size, and
//! moving bytes between it and caller buffers at absolute byte offsets.
//! It knows nothing of md: superblocks, data offsets and layouts live in the
//! `md` crate, which addresses members through this crate only.
//!
//! This first version is the plain positional reader/writer the read path
//! needs. O_DIRECT, io_uring with registered buffers, the persistent per-file
//! I/O descriptor and fault injection arrive with their own issue and will sit
//! behind the same [`Member`] type.
//!
//! ## Synchronization model
//! A [`Member`] is `Sync`: every operation is a positional `pread`/`pwrite`
//! on a shared descriptor, so any number of threads may read concurrently
//! without a lock. There is no lock in this crate, hence no lock order.
//!
//! ## Allocation
//! [`Member::read_exact_at`] allocates nothing: it reads straight into the
//! caller's buffer.

#![deny(unsafe_op_in_unsafe_fn)]

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// How a member is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only: nothing this process does can change the member.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// What kind of file backs a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (a disk image).
    File,
    /// A block device node.
    BlockDevice,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::File => "file",
            Kind::BlockDevice => "block device",
        })
    }
}

/// One open member device.
#[derive(Debug)]
pub struct Member {
    file: File,
    path: PathBuf,
    size: u64,
    kind: Kind,
    access: Access,
}

/// `BLKGETSIZE64` from `<linux/fs.h>`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl Member {
    /// Opens `path` as a member.
    ///
    /// Refuses (with an error naming the path and the reason) anything that is
    /// not a regular file or a block device: a directory, a FIFO, a socket.
    pub fn open(path: &Path, access: Access) -> io::Result<Member> {
        let meta = std::fs::metadata(path).map_err(|e| annotate(path, e))?;
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_block_device() {
            Kind::BlockDevice
        } else if ft.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: is a directory, not a member device or image file", path.display()),
            ));
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file or block device", path.display()),
            ));
        };
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::ReadWrite)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| annotate(path, e))?;
        let size = match kind {
            Kind::File => file.metadata().map_err(|e| annotate(path, e))?.len(),
            Kind::BlockDevice => block_device_size(&file).map_err(|e| annotate(path, e))?,
        };
        Ok(Member { file, path: path.to_path_buf(), size, kind, access })
    }

    /// The path the member was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the member in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Regular file or block device.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// How the member was opened.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Reads exactly `buf.len()` bytes at byte `offset`.
    ///
    /// Fails with `UnexpectedEof` if the range reaches past the end of the
    /// member. Allocation-free.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the member"));
        }
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at byte `offset`. Refused on a read-only member and
    /// past the end of the member.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.access != Access::ReadWrite {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "write past the end of the member"));
        }
        self.file.write_all_at(buf, offset)
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn annotate(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {}", path.display(), e))
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at
    // a live, properly aligned u64 for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("blockio-test-{}-{}", std::process::id(), name));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn reads_regular_file_and_refuses_past_end() {
        let dir = scratch("read");
        let p = dir.join("m.img");
        let mut f = File::create(&p).expect("create");
        f.write_all(&(0..=255u8).cycle().take(8192).collect::<Vec<_>>()).expect("write");
        drop(f);
        let m = Member::open(&p, Access::ReadOnly).expect("open");
        assert_eq!(m.size(), 8192);
        assert_eq!(m.kind(), Kind::File);
        let mut buf = [0u8; 4];
        m.read_exact_at(&mut buf, 510).expect("read");
        assert_eq!(buf, [254, 255, 0, 1]);
        assert!(m.read_exact_at(&mut buf, 8190).is_err());
        assert!(m.read_exact_at(&mut buf, u64::MAX - 1).is_err());
        assert_eq!(m.write_all_at(&buf, 0).unwrap_err().raw_os_error(), Some(libc::EROFS));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn refuses_directory() {
        let dir = scratch("dir");
        let e = Member::open(&dir, Access::ReadOnly).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
