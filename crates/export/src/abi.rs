//! The FUSE kernel protocol on the wire: opcodes, flags and the fixed
//! structures this server reads and writes.
//!
//! Layouts follow Linux `include/uapi/linux/fuse.h`. Every structure is
//! packed by the kernel to a 64-bit boundary with explicit padding, and all
//! integers are in the host's byte order (the kernel and the server share a
//! CPU), so this module decodes and encodes them field by field with
//! `from_ne_bytes`/`to_ne_bytes` instead of transmuting byte buffers.

/// Protocol major version this server speaks.
pub const KERNEL_VERSION: u32 = 7;
/// Highest protocol minor version this server implements (7.28: `max_pages`
/// in `fuse_init_out`; 7.35: `FOPEN_NOFLUSH`). Nothing between 7.28 and 7.35
/// changes a structure this server exchanges. (`FUSE_POLL` and
/// `FUSE_NOTIFY_POLL` date from 7.11, `FUSE_ATOMIC_O_TRUNC` from 7.9.)
pub const KERNEL_MINOR_VERSION: u32 = 35;
/// First minor version with `FOPEN_NOFLUSH`.
pub const NOFLUSH_MINOR_VERSION: u32 = 35;
/// Oldest minor version accepted: 7.23 introduced the 64-byte
/// `fuse_init_out`, and every structure below has its full size from there on.
pub const MIN_KERNEL_MINOR_VERSION: u32 = 23;

/// Node id of the root directory, fixed by the protocol.
pub const ROOT_ID: u64 = 1;

/// Request opcodes (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const POLL: u32 = 40;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const TMPFILE: u32 = 51;
    /// 7.45: `FUSE_COPY_FILE_RANGE` with a 64-bit reply
    /// (`fuse_copy_file_range_out`). Kernels that know it send it first,
    /// whatever minor version was negotiated, and fall back to
    /// `COPY_FILE_RANGE` (with the length clamped to 32 bits) after ENOSYS.
    pub const COPY_FILE_RANGE_64: u32 = 53;
}

/// `fuse_open_out.open_flags`.
pub mod fopen {
    /// Bypass the page cache: every read and write reaches the server.
    pub const DIRECT_IO: u32 = 1 << 0;
    /// Don't send FLUSH when the file is closed.
    pub const NOFLUSH: u32 = 1 << 5;
}

/// `FUSE_INIT` flags (`fuse_init_in.flags` / `fuse_init_out.flags`).
pub mod init {
    pub const ASYNC_READ: u32 = 1 << 0;
    /// `O_TRUNC` travels in OPEN's flags instead of a separate SETATTR.
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
}

/// `fuse_setattr_in.valid` bits (`FATTR_*`).
/// (`FATTR_MODE`, `FATTR_UID`, `FATTR_GID`, bits 0-2, are never accepted
/// and need no name here.)
pub mod fattr {
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_poll_in.flags`: the kernel has a waiter and wants a
/// `FUSE_NOTIFY_POLL` for `kh` when the file becomes ready.
pub const POLL_SCHEDULE_NOTIFY: u32 = 1 << 0;

/// Notification codes (`enum fuse_notify_code`), sent in the `error` field
/// of an out header whose `unique` is 0.
pub mod notify {
    pub const POLL: i32 = 1;
}

/// `fuse_attr` size in bytes (protocol >= 7.9).
pub const ATTR_SIZE: usize = 88;
/// `fuse_in_header` size in bytes.
pub const IN_HEADER_SIZE: usize = 40;
/// `fuse_out_header` size in bytes.
pub const OUT_HEADER_SIZE: usize = 16;
/// `fuse_write_in` size in bytes: the kernel insists the read buffer holds
/// `IN_HEADER_SIZE + WRITE_IN_SIZE + max_write`.
pub const WRITE_IN_SIZE: usize = 40;
/// `fuse_dirent` size without its name.
pub const DIRENT_HEADER_SIZE: usize = 24;

/// Decoding failed: the request is shorter than its opcode requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short;

/// A cursor over a request body that decodes host-order integers.
pub struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// Decode from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf }
    }

    /// Take the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if self.buf.len() < n {
            return Err(Short);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// Next `u16`.
    pub fn u16(&mut self) -> Result<u16, Short> {
        self.array().map(u16::from_ne_bytes)
    }

    /// Next `u32`.
    pub fn u32(&mut self) -> Result<u32, Short> {
        self.array().map(u32::from_ne_bytes)
    }

    /// Next `u64`.
    pub fn u64(&mut self) -> Result<u64, Short> {
        self.array().map(u64::from_ne_bytes)
    }

    /// A NUL-terminated name; the NUL is consumed and not returned.
    pub fn cstr(&mut self) -> Result<&'a [u8], Short> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(Short)?;
        let name = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(name)
    }
}

/// Append a host-order `u16`.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// Append a host-order `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// Append a host-order `u64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    /// Total length of the request, header included.
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    /// Credentials of the calling process. Unused so far: with
    /// `default_permissions` the kernel checks access itself.
    #[allow(dead_code)]
    pub uid: u32,
    #[allow(dead_code)]
    pub gid: u32,
    #[allow(dead_code)]
    pub pid: u32,
    /// Length of trailing extensions in 8-byte units (7.38; zero before).
    pub total_extlen: u16,
}

impl InHeader {
    /// Decode the header at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, Short> {
        let mut d = Decoder::new(buf);
        let h = InHeader {
            len: d.u32()?,
            opcode: d.u32()?,
            unique: d.u64()?,
            nodeid: d.u64()?,
            uid: d.u32()?,
            gid: d.u32()?,
            pid: d.u32()?,
            total_extlen: d.u16()?,
        };
        d.u16()?; // padding
        Ok(h)
    }
}

/// `struct fuse_out_header`, encoded into a fixed array for `writev`.
pub fn out_header(len: u32, error: i32, unique: u64) -> [u8; OUT_HEADER_SIZE] {
    let mut h = [0u8; OUT_HEADER_SIZE];
    h[0..4].copy_from_slice(&len.to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// The leading fields of `struct fuse_init_in` (the rest is 7.36+ `flags2`
/// and reserved words, which this server does not use).
#[derive(Debug, Clone, Copy)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
}

impl InitIn {
    pub fn decode(body: &[u8]) -> Result<Self, Short> {
        let mut d = Decoder::new(body);
        Ok(InitIn { major: d.u32()?, minor: d.u32()?, max_readahead: d.u32()?, flags: d.u32()? })
    }
}

/// `struct fuse_init_out` (64 bytes since 7.23).
#[derive(Debug, Clone, Copy, Default)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
}

impl InitOut {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.major);
        put_u32(out, self.minor);
        put_u32(out, self.max_readahead);
        put_u32(out, self.flags);
        put_u16(out, self.max_background);
        put_u16(out, self.congestion_threshold);
        put_u32(out, self.max_write);
        put_u32(out, self.time_gran);
        put_u16(out, self.max_pages);
        put_u16(out, 0); // map_alignment
        put_u32(out, 0); // flags2
        out.extend_from_slice(&[0u8; 28]); // unused[7]
    }
}

/// `struct fuse_attr`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl Attr {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.ino);
        put_u64(out, self.size);
        put_u64(out, self.blocks);
        put_u64(out, self.atime);
        put_u64(out, self.mtime);
        put_u64(out, self.ctime);
        put_u32(out, self.atimensec);
        put_u32(out, self.mtimensec);
        put_u32(out, self.ctimensec);
        put_u32(out, self.mode);
        put_u32(out, self.nlink);
        put_u32(out, self.uid);
        put_u32(out, self.gid);
        put_u32(out, self.rdev);
        put_u32(out, self.blksize);
        put_u32(out, 0); // flags
        debug_assert!(out.len() >= ATTR_SIZE);
    }
}

/// Cache validity of an entry or attribute reply, in seconds + nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    pub secs: u64,
    pub nsecs: u32,
}

/// `struct fuse_entry_out`.
pub fn encode_entry_out(
    out: &mut Vec<u8>,
    nodeid: u64,
    generation: u64,
    entry: Timeout,
    attr_valid: Timeout,
    attr: &Attr,
) {
    put_u64(out, nodeid);
    put_u64(out, generation);
    put_u64(out, entry.secs);
    put_u64(out, attr_valid.secs);
    put_u32(out, entry.nsecs);
    put_u32(out, attr_valid.nsecs);
    attr.encode(out);
}

/// `struct fuse_attr_out`.
pub fn encode_attr_out(out: &mut Vec<u8>, valid: Timeout, attr: &Attr) {
    put_u64(out, valid.secs);
    put_u32(out, valid.nsecs);
    put_u32(out, 0); // dummy
    attr.encode(out);
}

/// `struct fuse_open_out`.
pub fn encode_open_out(out: &mut Vec<u8>, fh: u64, open_flags: u32) {
    put_u64(out, fh);
    put_u32(out, open_flags);
    put_u32(out, 0); // padding
}

/// `struct fuse_open_in`.
#[derive(Debug, Clone, Copy)]
pub struct OpenIn {
    /// `open(2)` flags (`O_ACCMODE`, `O_TRUNC`, ...).
    pub flags: u32,
}

impl OpenIn {
    pub fn decode(body: &[u8]) -> Result<Self, Short> {
        let mut d = Decoder::new(body);
        let flags = d.u32()?;
        d.u32()?; // open_flags (FUSE_OPEN_KILL_SUIDGID), unused
        Ok(OpenIn { flags })
    }
}

/// `struct fuse_read_in` (also the body of `FUSE_READDIR`).
#[derive(Debug, Clone, Copy)]
pub struct ReadIn {
    /// File handle from OPEN/OPENDIR: 0 for `data`, `null` and
    /// directories, a slot of the open-file table for attributes.
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
}

impl ReadIn {
    pub fn decode(body: &[u8]) -> Result<Self, Short> {
        let mut d = Decoder::new(body);
        Ok(ReadIn { fh: d.u64()?, offset: d.u64()?, size: d.u32()? })
    }
}

/// `struct fuse_write_in`; the payload follows it in the request.
#[derive(Debug, Clone, Copy)]
pub struct WriteIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
}

impl WriteIn {
    /// Decode the fixed part and return it with the payload (`size` bytes
    /// right after the 40-byte structure, borrowed from `body`).
    pub fn decode(body: &[u8]) -> Result<(Self, &[u8]), Short> {
        let mut d = Decoder::new(body);
        let w = WriteIn { fh: d.u64()?, offset: d.u64()?, size: d.u32()? };
        d.u32()?; // write_flags
        d.u64()?; // lock_owner
        d.u32()?; // flags
        d.u32()?; // padding
        let payload = d.bytes(w.size as usize)?;
        Ok((w, payload))
    }
}

/// `struct fuse_write_out`.
pub fn encode_write_out(out: &mut Vec<u8>, size: u32) {
    put_u32(out, size);
    put_u32(out, 0); // padding
}

/// `struct fuse_copy_file_range_in` (the body of `FUSE_COPY_FILE_RANGE` and
/// `FUSE_COPY_FILE_RANGE_64`; the header's node id is the source's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyFileRangeIn {
    /// File handles from OPEN: 0 for `data`, whose requests need none.
    #[allow(dead_code)]
    pub fh_in: u64,
    pub off_in: u64,
    pub nodeid_out: u64,
    #[allow(dead_code)]
    pub fh_out: u64,
    pub off_out: u64,
    pub len: u64,
    pub flags: u64,
}

impl CopyFileRangeIn {
    pub fn decode(body: &[u8]) -> Result<Self, Short> {
        let mut d = Decoder::new(body);
        Ok(CopyFileRangeIn {
            fh_in: d.u64()?,
            off_in: d.u64()?,
            nodeid_out: d.u64()?,
            fh_out: d.u64()?,
            off_out: d.u64()?,
            len: d.u64()?,
            flags: d.u64()?,
        })
    }
}

/// `struct fuse_copy_file_range_out` (the reply of
/// `FUSE_COPY_FILE_RANGE_64`).
pub fn encode_copy_file_range_out(out: &mut Vec<u8>, bytes_copied: u64) {
    put_u64(out, bytes_copied);
}

/// The leading field of `struct fuse_release_in` (also `fuse_flush_in`).
#[derive(Debug, Clone, Copy)]
pub struct ReleaseIn {
    pub fh: u64,
}

impl ReleaseIn {
    pub fn decode(body: &[u8]) -> Result<Self, Short> {
        Ok(ReleaseIn { fh: Decoder::new(body).u64()? })
    }
}

/// `struct fuse_poll_in`.
#[derive(Debug, Clone, Copy)]
pub struct PollIn {
    pub fh: u64,
    /// The kernel's handle for the polled file, echoed in
    /// `FUSE_NOTIFY_POLL`.
    pub kh: u64,
    pub flags: u32,
}

impl PollIn {
    pub fn decode(body: &[u8]) -> Result<Self, Short> {
        let mut d = Decoder::new(body);
        Ok(PollIn { fh: d.u64()?, kh: d.u64()?, flags: d.u32()? })
    }
}

/// `struct fuse_poll_out`.
pub fn encode_poll_out(out: &mut Vec<u8>, revents: u32) {
    put_u32(out, revents);
    put_u32(out, 0); // padding
}

/// Size of a whole `FUSE_NOTIFY_POLL` message: out header +
/// `fuse_notify_poll_wakeup_out`.
pub const NOTIFY_POLL_SIZE: usize = OUT_HEADER_SIZE + 8;

/// A complete `FUSE_NOTIFY_POLL` message for kernel handle `kh`.
pub fn notify_poll_message(kh: u64) -> [u8; NOTIFY_POLL_SIZE] {
    let mut m = [0u8; NOTIFY_POLL_SIZE];
    m[..OUT_HEADER_SIZE].copy_from_slice(&out_header(NOTIFY_POLL_SIZE as u32, notify::POLL, 0));
    m[OUT_HEADER_SIZE..].copy_from_slice(&kh.to_ne_bytes());
    m
}

/// The fields of `struct fuse_setattr_in` this server looks at.
#[derive(Debug, Clone, Copy)]
pub struct SetattrIn {
    /// `FATTR_*` bits saying which fields are set.
    pub valid: u32,
    pub size: u64,
}

impl SetattrIn {
    pub fn decode(body: &[u8]) -> Result<Self, Short> {
        let mut d = Decoder::new(body);
        let valid = d.u32()?;
        d.u32()?; // padding
        d.u64()?; // fh
        let size = d.u64()?;
        Ok(SetattrIn { valid, size })
    }
}

/// `struct fuse_access_in`.
#[derive(Debug, Clone, Copy)]
pub struct AccessIn {
    pub mask: u32,
}

impl AccessIn {
    pub fn decode(body: &[u8]) -> Result<Self, Short> {
        Ok(AccessIn { mask: Decoder::new(body).u32()? })
    }
}

/// `struct fuse_kstatfs` (inside `fuse_statfs_out`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Kstatfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl Kstatfs {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.blocks);
        put_u64(out, self.bfree);
        put_u64(out, self.bavail);
        put_u64(out, self.files);
        put_u64(out, self.ffree);
        put_u32(out, self.bsize);
        put_u32(out, self.namelen);
        put_u32(out, self.frsize);
        put_u32(out, 0); // padding
        out.extend_from_slice(&[0u8; 24]); // spare[6]
    }
}

/// Size of one `struct fuse_dirent` record with a name of `namelen` bytes,
/// padded to 8 bytes (`FUSE_DIRENT_SIZE`).
pub fn dirent_size(namelen: usize) -> usize {
    (DIRENT_HEADER_SIZE + namelen + 7) & !7
}

/// Append one `struct fuse_dirent` record with its padding.
pub fn encode_dirent(out: &mut Vec<u8>, ino: u64, off: u64, typ: u32, name: &[u8]) {
    let start = out.len();
    put_u64(out, ino);
    put_u64(out, off);
    // Names come from the node table, bounded well below u32::MAX.
    put_u32(out, u32::try_from(name.len()).unwrap_or(u32::MAX));
    put_u32(out, typ);
    out.extend_from_slice(name);
    out.resize(start + dirent_size(name.len()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_fuse_h() {
        let mut v = Vec::new();
        Attr::default().encode(&mut v);
        assert_eq!(v.len(), ATTR_SIZE);
        v.clear();
        let t = Timeout { secs: 1, nsecs: 0 };
        encode_entry_out(&mut v, 2, 0, t, t, &Attr::default());
        assert_eq!(v.len(), 128);
        v.clear();
        encode_attr_out(&mut v, t, &Attr::default());
        assert_eq!(v.len(), 104);
        v.clear();
        InitOut::default().encode(&mut v);
        assert_eq!(v.len(), 64);
        v.clear();
        Kstatfs::default().encode(&mut v);
        assert_eq!(v.len(), 80);
        v.clear();
        encode_open_out(&mut v, 0, 0);
        assert_eq!(v.len(), 16);
        v.clear();
        encode_dirent(&mut v, 1, 1, 4, b"data");
        assert_eq!(v.len(), 32);
        v.clear();
        encode_write_out(&mut v, 5);
        assert_eq!(v.len(), 8);
        v.clear();
        encode_poll_out(&mut v, 1);
        assert_eq!(v.len(), 8);
        v.clear();
        encode_copy_file_range_out(&mut v, 1 << 40);
        assert_eq!(v, (1u64 << 40).to_ne_bytes());
        let m = notify_poll_message(0x1122);
        assert_eq!(&m[0..4], &24u32.to_ne_bytes());
        assert_eq!(&m[4..8], &1i32.to_ne_bytes());
        assert_eq!(&m[8..16], &0u64.to_ne_bytes());
        assert_eq!(&m[16..24], &0x1122u64.to_ne_bytes());
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
    }

    #[test]
    fn header_roundtrip() {
        let mut b = Vec::new();
        put_u32(&mut b, 48);
        put_u32(&mut b, op::GETATTR);
        put_u64(&mut b, 77);
        put_u64(&mut b, ROOT_ID);
        put_u32(&mut b, 1);
        put_u32(&mut b, 2);
        put_u32(&mut b, 3);
        put_u16(&mut b, 0);
        put_u16(&mut b, 0);
        assert_eq!(b.len(), IN_HEADER_SIZE);
        let h = InHeader::decode(&b).expect("full header");
        assert_eq!((h.len, h.opcode, h.unique, h.nodeid), (48, 3, 77, 1));
        assert_eq!((h.uid, h.gid, h.pid), (1, 2, 3));
        assert!(InHeader::decode(&b[..39]).is_err());
    }

    #[test]
    fn write_in_borrows_payload() {
        let mut b = Vec::new();
        put_u64(&mut b, 9); // fh
        put_u64(&mut b, 0); // offset
        put_u32(&mut b, 5); // size
        put_u32(&mut b, 0);
        put_u64(&mut b, 0);
        put_u32(&mut b, 0);
        put_u32(&mut b, 0);
        assert_eq!(b.len(), WRITE_IN_SIZE);
        b.extend_from_slice(b"clean");
        let (w, payload) = WriteIn::decode(&b).expect("write_in");
        assert_eq!((w.fh, w.offset, w.size), (9, 0, 5));
        assert_eq!(payload, b"clean");
        assert!(WriteIn::decode(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn copy_file_range_in_fields() {
        let mut b = Vec::new();
        for v in 1..=7u64 {
            put_u64(&mut b, v);
        }
        assert_eq!(b.len(), 56); // sizeof(struct fuse_copy_file_range_in)
        let c = CopyFileRangeIn::decode(&b).expect("copy_file_range_in");
        assert_eq!(
            c,
            CopyFileRangeIn { fh_in: 1, off_in: 2, nodeid_out: 3, fh_out: 4, off_out: 5, len: 6, flags: 7 }
        );
        assert!(CopyFileRangeIn::decode(&b[..55]).is_err());
    }

    #[test]
    fn cstr_stops_at_nul() {
        let mut d = Decoder::new(b"data\0rest");
        assert_eq!(d.cstr(), Ok(&b"data"[..]));
        assert_eq!(d.bytes(4), Ok(&b"rest"[..]));
        assert!(Decoder::new(b"nonul").cstr().is_err());
    }
}
