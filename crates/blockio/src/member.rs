//! Member devices: opening (O_DIRECT where the filesystem does direct I/O,
//! buffered otherwise), discovering size and alignment, the positional
//! convenience API, and the per-member persistent I/O descriptor slot.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dio::DioSlot;
use crate::fault::Faults;

/// How a member is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Access {
    /// Read only: nothing this process does can change the member.
    #[default]
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

/// Whether to open with `O_DIRECT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direct {
    /// Direct I/O where the filesystem does it, buffered I/O otherwise.
    #[default]
    Auto,
    /// Always buffered (the page cache of the machine is used).
    Never,
    /// Direct I/O or an error.
    Require,
}

/// How a member's I/O actually goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// `O_DIRECT`: straight between our buffers and the device.
    Direct,
    /// Through the kernel's page cache; `flush` is `fdatasync`.
    Buffered,
}

impl fmt::Display for IoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoMode::Direct => "direct",
            IoMode::Buffered => "buffered",
        })
    }
}

/// How to open a member.
#[derive(Clone, Debug, Default)]
pub struct MemberOptions {
    /// Read-only or read-write (default read-only).
    pub access: Access,
    /// `O_DIRECT` policy (default [`Direct::Auto`]).
    pub direct: Direct,
    /// Fault injection (tests, and `umd` behind an explicit option).
    pub faults: Option<Arc<Faults>>,
}

/// The alignment rules of a member's engine I/O, discovered at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alignment {
    /// Offsets and lengths must be multiples of this (the logical block
    /// size for direct I/O; 512, md's sector, for buffered I/O).
    pub offset: u32,
    /// Buffer addresses must be multiples of this (the device's rule for
    /// direct I/O; 512 for buffered I/O, the same as the smallest
    /// direct-I/O device, so that code tested on tmpfs is right on disk).
    pub memory: u32,
}

/// md's sector: the unit of buffered members.
pub const SECTOR: u32 = 512;

/// One open member device.
pub struct Member {
    file: File,
    path: PathBuf,
    size: u64,
    kind: Kind,
    access: Access,
    mode: IoMode,
    align: Alignment,
    /// The persistent I/O descriptor (seed 002's cached `struct dio`).
    pub(crate) slot: DioSlot,
    pub(crate) faults: Option<Arc<Faults>>,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("kind", &self.kind)
            .field("access", &self.access)
            .field("mode", &self.mode)
            .field("align", &self.align)
            .finish_non_exhaustive()
    }
}

/// `BLKGETSIZE64` from `<linux/fs.h>`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `BLKSSZGET`: logical block size, `_IO(0x12, 104)`.
const BLKSSZGET: libc::c_ulong = 0x1268;

impl Member {
    /// Opens `path` as a member for the positional convenience API
    /// ([`read_exact_at`](Self::read_exact_at) and friends): buffered, any
    /// alignment. Same as [`open_with`](Self::open_with) with
    /// [`Direct::Never`].
    ///
    /// Refuses (with an error naming the path and the reason) anything that is
    /// not a regular file or a block device: a directory, a FIFO, a socket.
    pub fn open(path: &Path, access: Access) -> io::Result<Member> {
        Member::open_with(path, &MemberOptions { access, direct: Direct::Never, faults: None })
    }

    /// Opens `path` as a member: with `O_DIRECT` when `opts.direct` allows
    /// it and the filesystem does direct I/O (`statx` reports its
    /// alignment, or a block device reports its logical block size);
    /// buffered otherwise (tmpfs). The alignment rules are discovered here.
    pub fn open_with(path: &Path, opts: &MemberOptions) -> io::Result<Member> {
        Member::open_named(path, path, opts)
    }

    /// A second, independent open of this member's file (the same inode,
    /// through `/proc/self/fd`, whatever its path names now) with other
    /// options: a reader that wants `O_DIRECT` beside a buffered member
    /// (md's sync thread streaming reads past the page cache). Its own
    /// persistent I/O descriptor; the path shown is this member's. The
    /// kernel keeps the two coherent the way it keeps direct and buffered
    /// I/O on one file coherent: a direct read first writes back the
    /// range's dirty cached pages.
    pub fn reopen(&self, opts: &MemberOptions) -> io::Result<Member> {
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        Member::open_named(&self.path, &fd_path, opts)
    }

    /// [`open_with`](Self::open_with) opening `open_path`, naming `path`
    /// in errors and [`path`](Self::path).
    fn open_named(path: &Path, open_path: &Path, opts: &MemberOptions) -> io::Result<Member> {
        let meta = std::fs::metadata(open_path).map_err(|e| annotate(path, e))?;
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
        let open = |direct: bool| {
            OpenOptions::new()
                .read(true)
                .write(opts.access == Access::ReadWrite)
                .custom_flags(libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 })
                .open(open_path)
        };
        let mut chosen = None;
        if opts.direct != Direct::Never {
            match open(true) {
                Ok(f) => match direct_alignment(&f, kind) {
                    Ok(Some(a)) => chosen = Some((f, IoMode::Direct, a)),
                    Ok(None) => {}
                    Err(e) => return Err(annotate(path, e)),
                },
                // EINVAL: the filesystem refuses O_DIRECT.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(annotate(path, e)),
            }
            if chosen.is_none() && opts.direct == Direct::Require {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{}: the filesystem does not do direct I/O (O_DIRECT)", path.display()),
                ));
            }
        }
        let (file, mode, align) = match chosen {
            Some(c) => c,
            None => {
                let f = open(false).map_err(|e| annotate(path, e))?;
                // The kernel needs no alignment here, but the same rules as
                // the smallest direct-I/O device keep code tested on tmpfs
                // correct on disk.
                (f, IoMode::Buffered, Alignment { offset: SECTOR, memory: SECTOR })
            }
        };
        let size = match kind {
            Kind::File => file.metadata().map_err(|e| annotate(path, e))?.len(),
            Kind::BlockDevice => block_device_size(&file).map_err(|e| annotate(path, e))?,
        };
        Ok(Member {
            file,
            path: path.to_path_buf(),
            size,
            kind,
            access: opts.access,
            mode,
            align,
            slot: DioSlot::new(),
            faults: opts.faults.clone(),
        })
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

    /// Direct or buffered.
    pub fn mode(&self) -> IoMode {
        self.mode
    }

    /// The alignment engine I/O must respect.
    pub fn alignment(&self) -> Alignment {
        self.align
    }

    /// The open descriptor (for the engines of this crate).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The fault injector, if any.
    pub fn faults(&self) -> Option<&Arc<Faults>> {
        self.faults.as_ref()
    }

    /// (hits, misses) of the persistent I/O descriptor: I/Os that found it
    /// in its slot, and I/Os that had to allocate one because another I/O
    /// held it.
    pub fn dio_stats(&self) -> (u64, u64) {
        self.slot.stats()
    }

    /// Checks an engine request: `offset` and `len` multiples of the
    /// alignment, `addr` aligned, the range inside the member (ENXIO past
    /// the end), and writes only on a read-write member (EROFS).
    /// Allocation-free.
    pub fn check_io(&self, write: bool, offset: u64, len: usize, addr: usize) -> Result<(), i32> {
        if write && self.access != Access::ReadWrite {
            return Err(libc::EROFS);
        }
        let a = u64::from(self.align.offset);
        if len == 0
            || !offset.is_multiple_of(a)
            || !(len as u64).is_multiple_of(a)
            || !addr.is_multiple_of(self.align.memory as usize)
        {
            return Err(libc::EINVAL);
        }
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(libc::ENXIO),
        }
    }

    /// Reads exactly `buf.len()` bytes at byte `offset`.
    ///
    /// Fails with `UnexpectedEof` if the range reaches past the end of the
    /// member. Any alignment on a buffered member. The fault injector, if
    /// any, is consulted as for engine I/O (so is it by `write_all_at` and
    /// `flush`). Allocation-free.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the member"));
        }
        if let Some(f) = &self.faults {
            f.on_io(crate::OpKind::Read, &self.file, offset, buf.len())
                .map_err(io::Error::from_raw_os_error)?;
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
        if let Some(f) = &self.faults {
            f.on_io(crate::OpKind::Write, &self.file, offset, buf.len())
                .map_err(io::Error::from_raw_os_error)?;
        }
        self.file.write_all_at(buf, offset)
    }

    /// Asks the kernel to start reading `len` bytes at `offset` into its
    /// cache now (`POSIX_FADV_WILLNEED`), for a reader that will read them
    /// next (md's recovery reads ahead this way). A hint: errors are
    /// ignored, and a member opened `O_DIRECT` has no cache to fill.
    pub fn advise_willneed(&self, offset: u64, len: u64) {
        if self.mode() == IoMode::Direct {
            return;
        }
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else { return };
        // SAFETY: posix_fadvise on a descriptor we own; no memory is passed.
        unsafe { libc::posix_fadvise(self.file.as_raw_fd(), off, n, libc::POSIX_FADV_WILLNEED) };
    }

    /// Makes every completed write durable (`fdatasync`).
    pub fn flush(&self) -> io::Result<()> {
        if let Some(f) = &self.faults {
            f.on_flush().map_err(io::Error::from_raw_os_error)?;
        }
        self.file.sync_data()?;
        if let Some(f) = &self.faults {
            f.flushed();
        }
        Ok(())
    }
}

/// The alignment of direct I/O on `f` (opened with O_DIRECT), or None when
/// the filesystem accepted O_DIRECT but does not do direct I/O (tmpfs:
/// `statx` reports no alignment).
fn direct_alignment(f: &File, kind: Kind) -> io::Result<Option<Alignment>> {
    if kind == Kind::BlockDevice {
        let mut lbs: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points
        // at a live int for the duration of the call.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKSSZGET as _, &mut lbs as *mut libc::c_int) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let lbs = u32::try_from(lbs).ok().filter(|v| v.is_power_of_two()).unwrap_or(SECTOR);
        return Ok(Some(Alignment { offset: lbs, memory: lbs }));
    }
    // SAFETY: statx is plain data; zeroed is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, an empty NUL-terminated path with
    // AT_EMPTY_PATH, and a live statx buffer.
    let rc = unsafe {
        libc::statx(f.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_DIOALIGN, &mut stx)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return Ok(None);
    }
    let offset = stx.stx_dio_offset_align.max(SECTOR);
    let memory = stx.stx_dio_mem_align.max(1);
    if !offset.is_power_of_two() || !memory.is_power_of_two() {
        return Ok(None);
    }
    Ok(Some(Alignment { offset, memory }))
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

    #[test]
    fn reopen_reads_the_same_inode_with_the_same_faults() {
        let dir = std::env::current_dir()
            .expect("cwd")
            .join(format!("target/blockio-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("m.img");
        std::fs::write(&p, (0..=255u8).cycle().take(64 << 10).collect::<Vec<_>>()).expect("write");
        let faults = Arc::new(Faults::parse("read:fail@8").expect("spec"));
        let m = Member::open_with(
            &p,
            &MemberOptions { access: Access::ReadWrite, direct: Direct::Never, faults: Some(faults.clone()) },
        )
        .expect("open");
        // The path is renamed: the reopen still finds the open inode.
        let moved = dir.join("moved.img");
        std::fs::rename(&p, &moved).expect("rename");
        let r = m
            .reopen(&MemberOptions {
                access: Access::ReadOnly,
                direct: Direct::Never,
                faults: m.faults().cloned(),
            })
            .expect("reopen");
        assert_eq!(r.path(), p.as_path(), "shown under the member's own path");
        assert_eq!(r.size(), m.size());
        assert_eq!(r.access(), Access::ReadOnly);
        let mut buf = [0u8; 4];
        r.read_exact_at(&mut buf, 510).expect("read");
        assert_eq!(buf, [254, 255, 0, 1]);
        // A write through the first open is seen through the second.
        m.write_all_at(&[9, 9, 9, 9], 510).expect("write");
        r.read_exact_at(&mut buf, 510).expect("read");
        assert_eq!(buf, [9, 9, 9, 9]);
        // The fault injector came along.
        assert!(r.read_exact_at(&mut buf, 8 * 512).is_err());
        assert!(Arc::ptr_eq(r.faults().expect("faults"), &faults));
        // O_DIRECT where the filesystem does it (the reason to reopen).
        let d = m.reopen(&MemberOptions { direct: Direct::Auto, ..Default::default() }).expect("reopen");
        assert_eq!(d.size(), m.size());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
