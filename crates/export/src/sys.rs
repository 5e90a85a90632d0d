//! Thin wrappers over the system calls this crate needs: opening and
//! cloning `/dev/fuse`, `mount(2)`/`umount2(2)`, the `fusermount3` fallback,
//! `poll(2)`, an `eventfd` used as the stop signal, and `/proc/self/mountinfo`.
//!
//! Every `unsafe` block of the crate that is not a plain FFI call with
//! borrowed arguments lives here.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The program used when `mount(2)` is not permitted.
pub const FUSERMOUNT: &str = "fusermount3";

/// `_IOR(229, 0, uint32_t)`: FUSE_DEV_IOC_CLONE. The `_IOC` encoding is the
/// generic one except on the architectures that use 3 direction bits.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = {
    const SIZE: libc::c_ulong = 4; // sizeof(uint32_t)
    const NR: libc::c_ulong = 0;
    const TYPE: libc::c_ulong = 229;
    #[cfg(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))]
    const DIR_READ_SHIFTED: libc::c_ulong = 2 << 29;
    #[cfg(not(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc",
        target_arch = "sparc64"
    )))]
    const DIR_READ_SHIFTED: libc::c_ulong = 2 << 30;
    DIR_READ_SHIFTED | (SIZE << 16) | (TYPE << 8) | NR
};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a C string, or `InvalidInput` if it contains a NUL byte.
pub fn path_cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("path {} contains a NUL byte", p.display()))
    })
}

/// Open `/dev/fuse` read-write, close-on-exec, optionally non-blocking.
pub fn open_fuse_device(nonblock: bool) -> io::Result<File> {
    let mut flags = libc::O_RDWR | libc::O_CLOEXEC;
    if nonblock {
        flags |= libc::O_NONBLOCK;
    }
    // SAFETY: the path is a valid NUL-terminated string; open(2) has no other
    // memory-safety preconditions.
    let fd = cvt(unsafe { libc::open(c"/dev/fuse".as_ptr(), flags) })
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/fuse: {e}")))?;
    // SAFETY: open(2) just returned this descriptor; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Open a new `/dev/fuse` descriptor attached to the same connection as
/// `session` (FUSE_DEV_IOC_CLONE), non-blocking and close-on-exec. Requests
/// of the connection can then be read from either descriptor, and replies
/// must be written to the descriptor the request was read from.
pub fn clone_fuse_device(session: BorrowedFd<'_>) -> io::Result<File> {
    let clone = open_fuse_device(true)?;
    let mut src: u32 =
        u32::try_from(session.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one uint32_t through the pointer, which
    // points at a live local; both descriptors are open for the whole call.
    cvt(unsafe { libc::ioctl(clone.as_raw_fd(), FUSE_DEV_IOC_CLONE as _, &mut src as *mut u32) })
        .map_err(|e| io::Error::new(e.kind(), format!("FUSE_DEV_IOC_CLONE failed: {e}")))?;
    Ok(clone)
}

/// Set `O_NONBLOCK` on a descriptor.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl(F_GETFL/F_SETFL) on an open descriptor has no memory
    // effects.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Effective user and group id of this process.
pub fn ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid cannot fail and touch no memory.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Size of a memory page.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).ok().filter(|&v| v > 0).unwrap_or(4096)
}

/// `mount(2)`.
pub fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: &CStr,
) -> io::Result<()> {
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; for the fuse filesystem `data` is a text option string.
    cvt(unsafe {
        libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast())
    })?;
    Ok(())
}

/// `umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW)`.
pub fn umount_detach(target: &CStr) -> io::Result<()> {
    // SAFETY: target is a valid NUL-terminated string.
    cvt(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) })?;
    Ok(())
}

/// Escape a `-o` option value for fusermount3, which splits options on
/// commas and takes a backslash as escape.
fn escape_option(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        if c == ',' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Build the `-o` argument for fusermount3.
pub fn fusermount_options(read_only: bool, fsname: &str, allow_other: bool) -> String {
    let mut o = String::from(if read_only { "ro" } else { "rw" });
    o.push_str(",nosuid,nodev,default_permissions,subtype=umd");
    o.push_str(",fsname=");
    o.push_str(&escape_option(fsname));
    if allow_other {
        o.push_str(",allow_other");
    }
    o
}

fn run_fusermount(mut cmd: Command) -> io::Result<std::process::Child> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.spawn().map_err(|e| {
        io::Error::new(e.kind(), format!("mount(2) not permitted and {FUSERMOUNT} could not be run: {e}"))
    })
}

fn child_failure(what: &str, mut child: std::process::Child) -> io::Error {
    let mut msg = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut msg);
    }
    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{FUSERMOUNT} {what} failed ({status}): {}", msg.trim()),
    )
}

/// Mount through `fusermount3` (the setuid helper): it opens `/dev/fuse`,
/// mounts, and passes the descriptor back over the `_FUSE_COMMFD` socket
/// with SCM_RIGHTS.
pub fn fusermount_mount(dir: &Path, options: &str) -> io::Result<File> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd: RawFd = theirs.as_raw_fd();
    let mut cmd = Command::new(FUSERMOUNT);
    cmd.arg("-o").arg(options).arg("--").arg(dir).env("_FUSE_COMMFD", theirs_fd.to_string());
    // SAFETY: the closure runs in the forked child before exec and only calls
    // fcntl, which is async-signal-safe; it clears close-on-exec so the helper
    // inherits its end of the socket.
    unsafe {
        cmd.pre_exec(move || {
            cvt(libc::fcntl(theirs_fd, libc::F_SETFD, 0))?;
            Ok(())
        });
    }
    let mut child = run_fusermount(cmd)?;
    drop(theirs);
    let received = recv_fd(&ours);
    match received {
        Ok(Some(fd)) => {
            let _ = child.wait();
            Ok(File::from(fd))
        }
        Ok(None) => Err(child_failure("mount", child)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// `fusermount3 -u -z -- DIR`.
pub fn fusermount_unmount(dir: &Path) -> io::Result<()> {
    let mut cmd = Command::new(FUSERMOUNT);
    cmd.arg("-u").arg("-z").arg("--").arg(dir);
    let mut child = run_fusermount(cmd)?;
    if child.wait()?.success() {
        Ok(())
    } else {
        Err(child_failure("-u", child))
    }
}

/// Receive one descriptor passed with SCM_RIGHTS; `None` if the peer closed
/// the socket without sending one.
fn recv_fd(sock: &UnixStream) -> io::Result<Option<OwnedFd>> {
    // Room for one cmsghdr carrying one int, with the alignment the
    // CMSG_* macros expect.
    let mut cbuf = [0u64; 8];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: byte.len() };
    // SAFETY: an all-zero msghdr is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let n = loop {
        // SAFETY: msg points at live buffers (iov, cbuf) of the stated sizes
        // for the duration of the call.
        let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if n == 0 {
        return Ok(None);
    }
    // SAFETY: recvmsg filled msg_control/msg_controllen; the CMSG_* macros
    // walk only within that buffer, and the data of an SCM_RIGHTS message of
    // the checked length holds one int (read unaligned to be safe).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::SOL_SOCKET
                && c.cmsg_type == libc::SCM_RIGHTS
                && c.cmsg_len as usize >= libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize
            {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                if fd >= 0 {
                    return Ok(Some(OwnedFd::from_raw_fd(fd)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(None)
}

/// A level-triggered stop signal shared by all workers: an eventfd that,
/// once written, stays readable forever because nobody reads it.
pub struct StopSignal {
    fd: File,
    /// Set with the eventfd, for threads that sleep elsewhere (the
    /// notifier) and look at the signal between sleeps.
    raised: std::sync::atomic::AtomicBool,
}

impl StopSignal {
    /// A new, unsignalled eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: eventfd just returned this descriptor; nothing else owns it.
        let fd = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(StopSignal { fd, raised: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Whether [`raise`](Self::raise) was called.
    pub fn is_raised(&self) -> bool {
        self.raised.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Make the signal readable; idempotent.
    pub fn raise(&self) {
        self.raised.store(true, std::sync::atomic::Ordering::Release);
        // Can only fail with EAGAIN once the counter is near overflow, which
        // still leaves it readable.
        let _ = (&self.fd).write(&1u64.to_ne_bytes());
    }

    /// Borrow the descriptor for `poll`.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What `wait_readable` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The stop signal was raised.
    Stop,
    /// The device has a request or an error condition to report via read.
    Device,
    /// The timeout passed, or a signal interrupted the wait.
    Nothing,
}

/// Wait until `dev` is readable (or reports an error) or `stop` is raised.
/// `timeout_ms` < 0 waits forever.
pub fn wait_readable(
    dev: BorrowedFd<'_>,
    stop: Option<BorrowedFd<'_>>,
    timeout_ms: i32,
) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd { fd: dev.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop.map_or(-1, |s| s.as_raw_fd()), events: libc::POLLIN, revents: 0 },
    ];
    // SAFETY: fds is a live array of two pollfd and the count matches; a
    // negative fd is ignored by poll(2).
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(Ready::Nothing);
        }
        return Err(e);
    }
    if fds[1].revents != 0 {
        Ok(Ready::Stop)
    } else if fds[0].revents != 0 {
        Ok(Ready::Device)
    } else {
        Ok(Ready::Nothing)
    }
}

/// One line of `/proc/self/mountinfo`, reduced to what this crate needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted filesystem.
    pub dev: String,
    /// Mount point, unescaped.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `fuse.umd`.
    pub fstype: String,
}

/// Undo the octal escapes (`\040` etc.) mountinfo applies to paths.
fn unescape_mountinfo(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (u32::from(b[i + 1] - b'0') << 6)
                | (u32::from(b[i + 2] - b'0') << 3)
                | u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// Parse mountinfo text into entries, skipping malformed lines.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|&f| f == "-")?;
            if sep < 6 {
                return None;
            }
            Some(MountEntry {
                dev: fields.get(2)?.to_string(),
                mount_point: PathBuf::from(unescape_mountinfo(fields.get(4)?)),
                fstype: fields.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// The topmost mount at `dir` (the last mountinfo entry for it), if any.
pub fn top_mount_at(dir: &Path) -> io::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text).into_iter().rfind(|e| e.mount_point.as_os_str() == dir.as_os_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing() {
        let text = "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    80 25 0:52 / /tmp/a\\040b rw,nosuid,nodev,relatime - fuse.umd umd:raid5 ro,user_id=0\n\
                    garbage\n";
        let e = parse_mountinfo(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].fstype, "ext3");
        assert_eq!(e[1].dev, "0:52");
        assert_eq!(e[1].mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(e[1].fstype, "fuse.umd");
    }

    #[test]
    fn option_escaping() {
        assert_eq!(
            fusermount_options(true, "umd:a,b", false),
            "ro,nosuid,nodev,default_permissions,subtype=umd,fsname=umd:a\\,b"
        );
    }

    #[test]
    fn ioctl_number() {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        assert_eq!(FUSE_DEV_IOC_CLONE, 0x8004_e500);
    }
}
