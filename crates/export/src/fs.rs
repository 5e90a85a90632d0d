//! The filesystem: a fixed table of nodes and the handlers of every request
//! after `FUSE_INIT`.
//!
//! Nodes are created once at mount and never freed, so a node id is simply
//! an index into the table (plus one), `LOOKUP` does not count references and
//! `FORGET` has nothing to release. New kinds of node (the attribute tree)
//! are new [`NodeKind`] variants; new operations are new arms in
//! [`Filesystem::handle`].

use std::io;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::abi::{self, op, Attr, InHeader, Short, Timeout};
use crate::ArrayFile;

/// Node id of `DIR/data`.
pub const DATA_ID: u64 = 2;
/// Name of the array file in the root directory.
pub const DATA_NAME: &[u8] = b"data";

/// `st_blksize` reported for every node: a hint for the I/O size readers
/// should use, matching the largest read this server answers in one go.
const BLKSIZE: u32 = 128 * 1024;
/// How long the kernel may cache names and attributes.
const TTL: Timeout = Timeout { secs: 1, nsecs: 0 };
/// Largest read reply the data buffer is grown to, should the kernel ever
/// ask for more than was negotiated.
const MAX_READ_REPLY: usize = 64 << 20;

/// An errno to send back as the reply's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<Short> for Errno {
    fn from(_: Short) -> Self {
        Errno(libc::EINVAL)
    }
}

impl Errno {
    /// The errno for an I/O error from the array: its OS error if it has a
    /// valid one (the kernel accepts 1..=511), else EIO.
    pub fn from_io(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) if (1..512).contains(&n) => Errno(n),
            _ => Errno(libc::EIO),
        }
    }
}

/// What a handler produced, besides an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The request takes no reply (FORGET, INTERRUPT).
    None,
    /// Success; the reply body is `ReplyBufs::out` (possibly empty).
    Payload,
    /// Success; the reply body is the first `n` bytes of `ReplyBufs::data`.
    Data(usize),
}

/// A worker's reusable reply buffers.
pub struct ReplyBufs {
    /// Small structured replies; cleared before every request.
    pub out: Vec<u8>,
    /// File data for READ replies, sized for the largest negotiated read.
    pub data: Vec<u8>,
}

impl ReplyBufs {
    /// Buffers for reads of up to `max_read` bytes.
    pub fn new(max_read: usize) -> Self {
        ReplyBufs { out: Vec::with_capacity(4096), data: vec![0u8; max_read] }
    }
}

/// What a node is.
enum NodeKind {
    /// A directory and its entries (name, node id), in readdir order.
    Dir { entries: Vec<(&'static [u8], u64)> },
    /// The array itself, served by [`ArrayFile`].
    ArrayData,
}

struct Node {
    parent: u64,
    kind: NodeKind,
}

/// Everything a worker needs to answer requests; shared by all workers.
pub struct Filesystem {
    file: Arc<dyn ArrayFile>,
    read_only: bool,
    /// `open_flags` of every OPEN reply.
    open_flags: u32,
    uid: u32,
    gid: u32,
    /// atime = mtime = ctime of every node: the mount time.
    time: (u64, u32),
    /// Index `i` holds node id `i + 1`.
    nodes: Vec<Node>,
}

impl Filesystem {
    /// The tree `/` containing `data`, owned by `uid:gid`, for a connection
    /// speaking protocol minor version `minor`.
    pub fn new(file: Arc<dyn ArrayFile>, read_only: bool, uid: u32, gid: u32, minor: u32) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let nodes = vec![
            Node { parent: abi::ROOT_ID, kind: NodeKind::Dir { entries: vec![(DATA_NAME, DATA_ID)] } },
            Node { parent: abi::ROOT_ID, kind: NodeKind::ArrayData },
        ];
        // Closing the file needs no round trip to this server: nothing is
        // buffered and there are no locks. It also means a process that
        // reads its own mount cannot hang at exit in FLUSH once its workers
        // are gone.
        let open_flags = if minor >= abi::NOFLUSH_MINOR_VERSION { abi::fopen::NOFLUSH } else { 0 };
        Filesystem { file, read_only, open_flags, uid, gid, time: (now.as_secs(), now.subsec_nanos()), nodes }
    }

    fn node(&self, id: u64) -> Result<&Node, Errno> {
        id.checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.nodes.get(i))
            .ok_or(Errno(libc::ENOENT))
    }

    /// The errno for an operation that would modify the filesystem.
    fn no_write(&self) -> Errno {
        if self.read_only {
            Errno(libc::EROFS)
        } else {
            // Writes are not implemented yet; `mount` refuses rw mounts.
            Errno(libc::EPERM)
        }
    }

    fn attr(&self, id: u64, node: &Node) -> Attr {
        let (secs, nsecs) = self.time;
        let mut a = Attr {
            ino: id,
            atime: secs,
            mtime: secs,
            ctime: secs,
            atimensec: nsecs,
            mtimensec: nsecs,
            ctimensec: nsecs,
            uid: self.uid,
            gid: self.gid,
            blksize: BLKSIZE,
            ..Attr::default()
        };
        match &node.kind {
            NodeKind::Dir { entries } => {
                let subdirs = entries
                    .iter()
                    .filter(|(_, child)| {
                        matches!(self.node(*child).map(|n| &n.kind), Ok(NodeKind::Dir { .. }))
                    })
                    .count();
                a.mode = libc::S_IFDIR | if self.read_only { 0o555 } else { 0o755 };
                a.nlink = 2 + u32::try_from(subdirs).unwrap_or(0);
            }
            NodeKind::ArrayData => {
                let size = self.file.size();
                a.mode = libc::S_IFREG | if self.read_only { 0o444 } else { 0o644 };
                a.nlink = 1;
                a.size = size;
                a.blocks = size.div_ceil(512);
            }
        }
        a
    }

    /// Answer one request (anything but INIT). `body` is the request after
    /// the header, without extensions.
    pub fn handle(&self, h: &InHeader, body: &[u8], bufs: &mut ReplyBufs) -> Result<Reply, Errno> {
        bufs.out.clear();
        match h.opcode {
            op::FORGET | op::BATCH_FORGET | op::INTERRUPT => Ok(Reply::None),
            op::LOOKUP => self.lookup(h.nodeid, body, &mut bufs.out),
            op::GETATTR => {
                let node = self.node(h.nodeid)?;
                abi::encode_attr_out(&mut bufs.out, TTL, &self.attr(h.nodeid, node));
                Ok(Reply::Payload)
            }
            op::SETATTR => {
                self.node(h.nodeid)?;
                Err(self.no_write())
            }
            op::OPEN => self.open(h.nodeid, body, &mut bufs.out),
            op::OPENDIR => match self.node(h.nodeid)?.kind {
                NodeKind::Dir { .. } => {
                    abi::encode_open_out(&mut bufs.out, 0, 0);
                    Ok(Reply::Payload)
                }
                _ => Err(Errno(libc::ENOTDIR)),
            },
            op::READ => self.read(h.nodeid, body, &mut bufs.data),
            op::READDIR => self.readdir(h.nodeid, body, &mut bufs.out),
            op::FLUSH | op::RELEASE | op::RELEASEDIR | op::FSYNC | op::FSYNCDIR => Ok(Reply::Payload),
            op::STATFS => {
                let size = self.file.size();
                abi::Kstatfs {
                    blocks: size.div_ceil(u64::from(BLKSIZE)),
                    files: self.nodes.len() as u64,
                    bsize: BLKSIZE,
                    frsize: BLKSIZE,
                    namelen: 255,
                    ..abi::Kstatfs::default()
                }
                .encode(&mut bufs.out);
                Ok(Reply::Payload)
            }
            op::ACCESS => {
                self.node(h.nodeid)?;
                let mask = abi::AccessIn::decode(body)?.mask;
                if mask & (libc::W_OK as u32) != 0 && self.read_only {
                    Err(Errno(libc::EROFS))
                } else {
                    Ok(Reply::Payload)
                }
            }
            op::WRITE
            | op::MKNOD
            | op::MKDIR
            | op::SYMLINK
            | op::UNLINK
            | op::RMDIR
            | op::RENAME
            | op::RENAME2
            | op::LINK
            | op::CREATE
            | op::TMPFILE
            | op::FALLOCATE
            | op::COPY_FILE_RANGE => Err(self.no_write()),
            op::DESTROY => Ok(Reply::Payload),
            // A second INIT is a protocol violation.
            op::INIT => Err(Errno(libc::EPROTO)),
            // No symlinks and no extended attributes. ENOSYS makes the
            // kernel stop sending xattr requests (callers get EOPNOTSUPP).
            op::READLINK | op::GETXATTR | op::LISTXATTR | op::SETXATTR | op::REMOVEXATTR => {
                Err(Errno(libc::ENOSYS))
            }
            // Locks, ioctl, poll, lseek, bmap, ...: ENOSYS too, which tells
            // the kernel to fall back to its local behaviour where it has one.
            _ => Err(Errno(libc::ENOSYS)),
        }
    }

    fn lookup(&self, parent: u64, body: &[u8], out: &mut Vec<u8>) -> Result<Reply, Errno> {
        let name = abi::Decoder::new(body).cstr()?;
        let NodeKind::Dir { entries } = &self.node(parent)?.kind else {
            return Err(Errno(libc::ENOTDIR));
        };
        let id = entries.iter().find(|(n, _)| *n == name).map(|&(_, id)| id).ok_or(Errno(libc::ENOENT))?;
        let attr = self.attr(id, self.node(id)?);
        abi::encode_entry_out(out, id, 0, TTL, TTL, &attr);
        Ok(Reply::Payload)
    }

    fn open(&self, id: u64, body: &[u8], out: &mut Vec<u8>) -> Result<Reply, Errno> {
        let flags = abi::OpenIn::decode(body)?.flags as i32;
        match self.node(id)?.kind {
            NodeKind::ArrayData => {}
            NodeKind::Dir { .. } => return Err(Errno(libc::EISDIR)),
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(self.no_write());
        }
        // No FOPEN_KEEP_CACHE (the page cache is dropped on each open) and
        // no FOPEN_DIRECT_IO (reads go through the page cache).
        abi::encode_open_out(out, 0, self.open_flags);
        Ok(Reply::Payload)
    }

    fn read(&self, id: u64, body: &[u8], data: &mut Vec<u8>) -> Result<Reply, Errno> {
        let r = abi::ReadIn::decode(body)?;
        match self.node(id)?.kind {
            NodeKind::ArrayData => {}
            NodeKind::Dir { .. } => return Err(Errno(libc::EISDIR)),
        }
        let size = self.file.size();
        if r.offset >= size || r.size == 0 {
            return Ok(Reply::Data(0));
        }
        // Bounded by r.size (a u32), so it fits usize.
        let n = (size - r.offset).min(u64::from(r.size)) as usize;
        if n > data.len() {
            if n > MAX_READ_REPLY {
                return Err(Errno(libc::EINVAL));
            }
            data.resize(n, 0);
        }
        self.file.read_at(r.offset, &mut data[..n]).map_err(|e| Errno::from_io(&e))?;
        Ok(Reply::Data(n))
    }

    fn readdir(&self, id: u64, body: &[u8], out: &mut Vec<u8>) -> Result<Reply, Errno> {
        let r = abi::ReadIn::decode(body)?;
        let node = self.node(id)?;
        let NodeKind::Dir { entries } = &node.kind else {
            return Err(Errno(libc::ENOTDIR));
        };
        let dots: [(&[u8], u64); 2] = [(b".", id), (b"..", node.parent)];
        let all = dots.iter().chain(entries.iter());
        let limit = r.size as usize;
        // Offsets are 1-based positions: the entry at index i carries off
        // i + 1, which is where the next READDIR resumes.
        let skip = usize::try_from(r.offset).unwrap_or(usize::MAX);
        for (i, &(name, child)) in all.enumerate().skip(skip) {
            if out.len() + abi::dirent_size(name.len()) > limit {
                break;
            }
            let typ = match self.node(child)?.kind {
                NodeKind::Dir { .. } => u32::from(libc::DT_DIR),
                NodeKind::ArrayData => u32::from(libc::DT_REG),
            };
            abi::encode_dirent(out, child, i as u64 + 1, typ, name);
        }
        Ok(Reply::Payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Zeros(u64);
    impl ArrayFile for Zeros {
        fn size(&self) -> u64 {
            self.0
        }
        fn read_at(&self, _offset: u64, buf: &mut [u8]) -> io::Result<()> {
            buf.fill(7);
            Ok(())
        }
    }

    fn header(opcode: u32, nodeid: u64) -> InHeader {
        InHeader { len: 0, opcode, unique: 1, nodeid, uid: 0, gid: 0, pid: 0, total_extlen: 0 }
    }

    fn read_body(offset: u64, size: u32) -> Vec<u8> {
        let mut b = Vec::new();
        abi::put_u64(&mut b, 0);
        abi::put_u64(&mut b, offset);
        abi::put_u32(&mut b, size);
        abi::put_u32(&mut b, 0);
        abi::put_u64(&mut b, 0);
        abi::put_u32(&mut b, 0);
        abi::put_u32(&mut b, 0);
        b
    }

    #[test]
    fn read_clamps_at_eof() {
        let fs = Filesystem::new(Arc::new(Zeros(10_000)), true, 0, 0, 35);
        let mut bufs = ReplyBufs::new(8192);
        let h = header(op::READ, DATA_ID);
        assert_eq!(fs.handle(&h, &read_body(8192, 4096), &mut bufs), Ok(Reply::Data(1808)));
        assert_eq!(fs.handle(&h, &read_body(10_000, 4096), &mut bufs), Ok(Reply::Data(0)));
        assert_eq!(fs.handle(&h, &read_body(0, 16384), &mut bufs), Ok(Reply::Data(10_000)));
        assert_eq!(bufs.data[9_999], 7);
        let h = header(op::READ, abi::ROOT_ID);
        assert_eq!(fs.handle(&h, &read_body(0, 10), &mut bufs), Err(Errno(libc::EISDIR)));
    }

    #[test]
    fn readdir_resumes_by_offset() {
        let fs = Filesystem::new(Arc::new(Zeros(1)), true, 0, 0, 35);
        let mut bufs = ReplyBufs::new(4096);
        let h = header(op::READDIR, abi::ROOT_ID);
        fs.handle(&h, &read_body(0, 4096), &mut bufs).expect("readdir");
        assert_eq!(bufs.out.len(), 3 * 32);
        // Room for one record only.
        fs.handle(&h, &read_body(2, 40), &mut bufs).expect("readdir");
        assert_eq!(bufs.out.len(), 32);
        assert_eq!(&bufs.out[24..28], b"data");
        fs.handle(&h, &read_body(3, 4096), &mut bufs).expect("readdir");
        assert!(bufs.out.is_empty());
    }

    #[test]
    fn lookup_and_open() {
        let fs = Filesystem::new(Arc::new(Zeros(4096)), true, 0, 0, 35);
        let mut bufs = ReplyBufs::new(4096);
        let h = header(op::LOOKUP, abi::ROOT_ID);
        assert_eq!(fs.handle(&h, b"data\0", &mut bufs), Ok(Reply::Payload));
        assert_eq!(bufs.out.len(), 128);
        assert_eq!(fs.handle(&h, b"nope\0", &mut bufs), Err(Errno(libc::ENOENT)));
        let h = header(op::OPEN, DATA_ID);
        let mut body = Vec::new();
        abi::put_u32(&mut body, libc::O_RDWR as u32);
        abi::put_u32(&mut body, 0);
        assert_eq!(fs.handle(&h, &body, &mut bufs), Err(Errno(libc::EROFS)));
        assert_eq!(fs.handle(&header(op::GETATTR, 99), &[], &mut bufs), Err(Errno(libc::ENOENT)));
        assert_eq!(fs.handle(&header(op::GETXATTR, 1), &[], &mut bufs), Err(Errno(libc::ENOSYS)));
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(Errno::from_io(&io::Error::other("x")), Errno(libc::EIO));
        assert_eq!(Errno::from_io(&io::Error::from_raw_os_error(libc::ENXIO)), Errno(libc::ENXIO));
        assert_eq!(Errno::from_io(&io::Error::from_raw_os_error(100_000)), Errno(libc::EIO));
    }
}
