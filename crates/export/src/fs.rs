//! The filesystem: the fixed nodes (root, `data`, optionally `null`), the
//! attribute tree's nodes, and the handlers of every request after
//! `FUSE_INIT`.
//!
//! Fixed nodes have fixed node ids (1, 2, 3). A node of the attribute tree
//! has node id `kernfs id + TREE_INO_OFFSET`, except the tree's root, whose
//! children appear in the FUSE root next to `data`. kernfs ids are never
//! reused, so a node id never names two nodes; nothing is counted on
//! LOOKUP and FORGET has nothing to release: every request resolves its
//! node id afresh ([`kernfs::Kernfs::node`] sees only active nodes, so a
//! removed node answers ENOENT). Attribute files opened through FUSE live
//! in the mount's [`OpenTable`](crate::attrs::OpenTable), keyed by file
//! handle.

use std::io;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kernfs::{NodeKind as KNodeKind, NodeRef, OpenFlags};

use crate::abi::{self, fattr, op, Attr, InHeader, Short, Timeout};
use crate::attrs::TreeState;
use crate::ArrayFile;

/// Node id of `DIR/data`.
pub const DATA_ID: u64 = 2;
/// Name of the array file in the root directory.
pub const DATA_NAME: &[u8] = b"data";
/// Node id of `DIR/null` (when enabled).
pub const NULL_ID: u64 = 3;
/// Name of the null file in the root directory.
pub const NULL_NAME: &[u8] = b"null";
/// Size of the null file: one page of zeros.
pub const NULL_SIZE: usize = kernfs::PAGE_SIZE;
/// Node id of kernfs node `id` (for `id` >= 2) is `id + TREE_INO_OFFSET`.
pub const TREE_INO_OFFSET: u64 = 1024;

/// The bytes of the null file.
pub static ZEROS: [u8; NULL_SIZE] = [0; NULL_SIZE];

/// `st_blksize` reported for every node: a hint for the I/O size readers
/// should use, matching the largest read this server answers in one go.
const BLKSIZE: u32 = 128 * 1024;
/// How long the kernel may cache names and attributes of the fixed nodes,
/// and attributes of tree nodes.
const TTL: Timeout = Timeout { secs: 1, nsecs: 0 };
/// How long the kernel may cache a tree node's name: not at all, so that
/// every path walk asks again and a removed node is gone at once.
const TREE_ENTRY_TTL: Timeout = Timeout { secs: 0, nsecs: 0 };
/// Largest read reply the data buffer is grown to, should the kernel ever
/// ask for more than was negotiated.
const MAX_READ_REPLY: usize = 64 << 20;
/// Most bytes one COPY_FILE_RANGE(_64) request copies: the kernel's
/// `MAX_RW_COUNT` (`INT_MAX & PAGE_MASK`), the most one read or write moves
/// in one call. A longer request is answered with this short count and the
/// caller goes on from there, as `copy_file_range(2)` allows. It also fits
/// the 32-bit count of `FUSE_COPY_FILE_RANGE`'s reply (`fuse_write_out`).
const MAX_COPY: u64 = 0x7fff_f000;
/// What a regular file without its own poll reports (the kernel's
/// `DEFAULT_POLLMASK`).
const DEFAULT_POLLMASK: u32 = (libc::POLLIN | libc::POLLOUT | libc::POLLRDNORM | libc::POLLWRNORM) as u32;
/// SETATTR fields accepted on an attribute, as no-ops (truncation to 0 from
/// `open(O_TRUNC)`/`truncate`, time updates), like sysfs.
const ATTR_SETATTR_OK: u32 = fattr::SIZE
    | fattr::ATIME
    | fattr::MTIME
    | fattr::ATIME_NOW
    | fattr::MTIME_NOW
    | fattr::CTIME
    | fattr::FH
    | fattr::LOCKOWNER
    | fattr::KILL_SUIDGID;

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

    /// The errno from a kernfs operation (always positive there; anything
    /// else becomes EIO).
    pub fn from_kernfs(e: kernfs::Errno) -> Self {
        if (1..512).contains(&e) {
            Errno(e)
        } else {
            Errno(libc::EIO)
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
    /// Success; the reply body is `n` zero bytes (from [`ZEROS`]).
    Zeros(usize),
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

/// What a node id names.
enum Node {
    /// The FUSE root: `data`, `null` and the tree root's children.
    Root,
    /// `DIR/data`, served by [`ArrayFile`].
    Data,
    /// `DIR/null`: a page of zeros.
    Null,
    /// A node of the attribute tree (never its root).
    Tree(NodeRef),
}

/// `d_type` of a tree node.
fn tree_dtype(kind: KNodeKind) -> u32 {
    u32::from(match kind {
        KNodeKind::Dir => libc::DT_DIR,
        KNodeKind::Attr => libc::DT_REG,
        KNodeKind::Symlink => libc::DT_LNK,
    })
}

/// Node id of kernfs node `id`: the tree's root is the FUSE root.
fn tree_ino(id: u64) -> u64 {
    if id <= abi::ROOT_ID {
        abi::ROOT_ID
    } else {
        id.saturating_add(TREE_INO_OFFSET)
    }
}

/// Whether node id `ino` belongs to a (non-root) tree node.
fn is_tree_ino(ino: u64) -> bool {
    ino >= TREE_INO_OFFSET + 2
}

/// Everything a worker needs to answer requests; shared by all workers.
pub struct Filesystem {
    file: Arc<dyn ArrayFile>,
    read_only: bool,
    /// Whether `DIR/null` exists.
    null_file: bool,
    /// The attribute tree and its open files, if one is served.
    tree: Option<Arc<TreeState>>,
    /// `open_flags` of OPEN replies for `data`.
    open_flags: u32,
    /// `open_flags` of OPEN replies for attributes and `null`.
    direct_open_flags: u32,
    uid: u32,
    gid: u32,
    /// atime = mtime = ctime of every node: the mount time.
    time: (u64, u32),
}

impl Filesystem {
    /// The tree `/` containing `data`, owned by `uid:gid`, for a connection
    /// speaking protocol minor version `minor`.
    pub fn new(file: Arc<dyn ArrayFile>, read_only: bool, uid: u32, gid: u32, minor: u32) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        // Closing a file needs no round trip to this server: nothing is
        // buffered and there are no locks. It also means a process that
        // reads its own mount cannot hang at exit in FLUSH once its workers
        // are gone.
        let open_flags = if minor >= abi::NOFLUSH_MINOR_VERSION { abi::fopen::NOFLUSH } else { 0 };
        Filesystem {
            file,
            read_only,
            null_file: false,
            tree: None,
            open_flags,
            // Attributes are generated on every read at offset 0, like
            // sysfs: no page cache. FOPEN_NONSEEKABLE is not set: readers
            // lseek(0) and read again.
            direct_open_flags: open_flags | abi::fopen::DIRECT_IO,
            uid,
            gid,
            time: (now.as_secs(), now.subsec_nanos()),
        }
    }

    /// Also serve `tree`'s root children in the root directory.
    pub fn with_tree(mut self, tree: Arc<TreeState>) -> Self {
        self.tree = Some(tree);
        self
    }

    /// Also serve `DIR/null`.
    pub fn with_null_file(mut self, on: bool) -> Self {
        self.null_file = on;
        self
    }

    /// Whether an attribute tree is served.
    pub fn has_tree(&self) -> bool {
        self.tree.is_some()
    }

    fn tree(&self) -> Result<&TreeState, Errno> {
        self.tree.as_deref().ok_or(Errno(libc::ENOENT))
    }

    fn node(&self, ino: u64) -> Result<Node, Errno> {
        match ino {
            abi::ROOT_ID => Ok(Node::Root),
            DATA_ID => Ok(Node::Data),
            NULL_ID if self.null_file => Ok(Node::Null),
            _ if is_tree_ino(ino) => {
                let t = self.tree()?;
                t.tree.node(ino - TREE_INO_OFFSET).map(Node::Tree).ok_or(Errno(libc::ENOENT))
            }
            _ => Err(Errno(libc::ENOENT)),
        }
    }

    /// Whether a root child of the tree is hidden by a fixed node's name.
    fn shadowed(&self, name: &[u8]) -> bool {
        name == DATA_NAME || (self.null_file && name == NULL_NAME)
    }

    /// The errno for an operation that would modify the filesystem's
    /// structure (the only writable thing is the content of `data`).
    fn no_write(&self) -> Errno {
        if self.read_only {
            Errno(libc::EROFS)
        } else {
            Errno(libc::EPERM)
        }
    }

    /// Number of subdirectories of a tree directory (for `st_nlink`).
    fn tree_subdirs(&self, dir: &NodeRef) -> u32 {
        let Some(t) = self.tree.as_deref() else { return 0 };
        t.tree
            .readdir(dir)
            .map(|c| c.iter().filter(|n| n.kind() == KNodeKind::Dir).count())
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX - 2))
    }

    fn attr(&self, ino: u64, node: &Node) -> Attr {
        let (secs, nsecs) = self.time;
        let mut a = Attr {
            ino,
            atime: secs,
            mtime: secs,
            ctime: secs,
            atimensec: nsecs,
            mtimensec: nsecs,
            ctimensec: nsecs,
            uid: self.uid,
            gid: self.gid,
            blksize: BLKSIZE,
            nlink: 1,
            ..Attr::default()
        };
        match node {
            Node::Root => {
                let subdirs = self.tree.as_deref().map_or(0, |t| self.tree_subdirs(&t.tree.root()));
                a.mode = libc::S_IFDIR | if self.read_only { 0o555 } else { 0o755 };
                a.nlink = 2 + subdirs;
            }
            Node::Data => {
                let size = self.file.size();
                a.mode = libc::S_IFREG | if self.read_only { 0o444 } else { 0o644 };
                a.size = size;
                a.blocks = size.div_ceil(512);
            }
            Node::Null => {
                a.mode = libc::S_IFREG | 0o444;
                a.size = NULL_SIZE as u64;
            }
            Node::Tree(n) => match n.kind() {
                KNodeKind::Dir => {
                    a.mode = libc::S_IFDIR | n.mode();
                    a.nlink = 2 + self.tree_subdirs(n);
                }
                KNodeKind::Attr => {
                    a.mode = libc::S_IFREG | n.mode();
                    a.size = n.size_hint();
                }
                KNodeKind::Symlink => {
                    a.mode = libc::S_IFLNK | 0o777;
                    a.size = n.symlink_target().map_or(0, |t| t.len() as u64);
                }
            },
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
                abi::encode_attr_out(&mut bufs.out, TTL, &self.attr(h.nodeid, &node));
                Ok(Reply::Payload)
            }
            op::SETATTR => self.setattr(h.nodeid, body, &mut bufs.out),
            op::OPEN => self.open(h.nodeid, body, &mut bufs.out),
            op::OPENDIR => match self.node(h.nodeid)? {
                Node::Root => Ok(()),
                Node::Tree(n) if n.kind() == KNodeKind::Dir => Ok(()),
                _ => Err(Errno(libc::ENOTDIR)),
            }
            .map(|()| {
                abi::encode_open_out(&mut bufs.out, 0, 0);
                Reply::Payload
            }),
            op::READ => self.read(h.nodeid, body, &mut bufs.data),
            op::WRITE => self.write(h.nodeid, body, &mut bufs.out),
            op::POLL => self.poll(h.nodeid, body, &mut bufs.out),
            op::RELEASE => {
                if is_tree_ino(h.nodeid) {
                    let fh = abi::ReleaseIn::decode(body)?.fh;
                    // Dropped here, outside the table's locks: closes the
                    // kernfs file unless a request still in flight holds
                    // it (then that request's end does).
                    drop(self.tree()?.opens.remove(fh));
                }
                Ok(Reply::Payload)
            }
            op::READDIR => self.readdir(h.nodeid, body, &mut bufs.out),
            op::READLINK => match self.node(h.nodeid)? {
                Node::Tree(n) => {
                    let target = n.symlink_target().ok_or(Errno(libc::EINVAL))?;
                    bufs.out.extend_from_slice(target.as_bytes());
                    Ok(Reply::Payload)
                }
                _ => Err(Errno(libc::EINVAL)),
            },
            // fsync(2) on a writable `data` makes its writes durable
            // (FLUSH is not sent with FOPEN_NOFLUSH, but honoured if it is).
            op::FLUSH | op::FSYNC if h.nodeid == DATA_ID && !self.read_only => {
                self.file.flush().map_err(|e| Errno::from_io(&e))?;
                Ok(Reply::Payload)
            }
            op::FLUSH | op::RELEASEDIR | op::FSYNC | op::FSYNCDIR => Ok(Reply::Payload),
            op::STATFS => {
                let size = self.file.size();
                abi::Kstatfs {
                    blocks: size.div_ceil(u64::from(BLKSIZE)),
                    files: if self.null_file { 3 } else { 2 },
                    bsize: BLKSIZE,
                    frsize: BLKSIZE,
                    namelen: 255,
                    ..abi::Kstatfs::default()
                }
                .encode(&mut bufs.out);
                Ok(Reply::Payload)
            }
            op::ACCESS => {
                let node = self.node(h.nodeid)?;
                let mask = abi::AccessIn::decode(body)?.mask;
                if mask & (libc::W_OK as u32) == 0 {
                    return Ok(Reply::Payload);
                }
                match node {
                    Node::Tree(n) if n.kind() == KNodeKind::Attr => {
                        if n.mode() & 0o222 == 0 {
                            Err(Errno(libc::EACCES))
                        } else {
                            Ok(Reply::Payload)
                        }
                    }
                    _ if self.read_only => Err(Errno(libc::EROFS)),
                    _ => Ok(Reply::Payload),
                }
            }
            op::MKNOD
            | op::MKDIR
            | op::SYMLINK
            | op::UNLINK
            | op::RMDIR
            | op::RENAME
            | op::RENAME2
            | op::LINK
            | op::CREATE
            | op::TMPFILE
            | op::FALLOCATE => Err(self.no_write()),
            op::COPY_FILE_RANGE | op::COPY_FILE_RANGE_64 => {
                let n = self.copy_file_range(h.nodeid, body, &mut bufs.data)?;
                if h.opcode == op::COPY_FILE_RANGE {
                    // n <= MAX_COPY < 2^32.
                    abi::encode_write_out(&mut bufs.out, u32::try_from(n).map_err(|_| Errno(libc::EIO))?);
                } else {
                    abi::encode_copy_file_range_out(&mut bufs.out, n);
                }
                Ok(Reply::Payload)
            }
            op::DESTROY => Ok(Reply::Payload),
            // A second INIT is a protocol violation.
            op::INIT => Err(Errno(libc::EPROTO)),
            // No extended attributes. ENOSYS makes the kernel stop sending
            // xattr requests (callers get EOPNOTSUPP).
            op::GETXATTR | op::LISTXATTR | op::SETXATTR | op::REMOVEXATTR => Err(Errno(libc::ENOSYS)),
            // Locks, ioctl, lseek, bmap, ...: ENOSYS too, which tells the
            // kernel to fall back to its local behaviour where it has one.
            _ => Err(Errno(libc::ENOSYS)),
        }
    }

    fn lookup(&self, parent: u64, body: &[u8], out: &mut Vec<u8>) -> Result<Reply, Errno> {
        let name = abi::Decoder::new(body).cstr()?;
        let dir = match self.node(parent)? {
            Node::Root if name == DATA_NAME => return Ok(self.entry(DATA_ID, &Node::Data, out)),
            Node::Root if self.null_file && name == NULL_NAME => {
                return Ok(self.entry(NULL_ID, &Node::Null, out))
            }
            Node::Root => match &self.tree {
                Some(t) => t.tree.root(),
                None => return Err(Errno(libc::ENOENT)),
            },
            Node::Tree(n) if n.kind() == KNodeKind::Dir => n,
            _ => return Err(Errno(libc::ENOTDIR)),
        };
        let name = std::str::from_utf8(name).map_err(|_| Errno(libc::ENOENT))?;
        let child = self.tree()?.tree.lookup(&dir, name).ok_or(Errno(libc::ENOENT))?;
        Ok(self.entry(tree_ino(child.id()), &Node::Tree(child), out))
    }

    fn entry(&self, ino: u64, node: &Node, out: &mut Vec<u8>) -> Reply {
        let entry_ttl = if matches!(node, Node::Tree(_)) { TREE_ENTRY_TTL } else { TTL };
        abi::encode_entry_out(out, ino, 0, entry_ttl, TTL, &self.attr(ino, node));
        Reply::Payload
    }

    fn setattr(&self, ino: u64, body: &[u8], out: &mut Vec<u8>) -> Result<Reply, Errno> {
        let node = self.node(ino)?;
        match &node {
            Node::Tree(n) if n.kind() == KNodeKind::Attr => {
                let s = abi::SetattrIn::decode(body)?;
                if s.valid & !ATTR_SETATTR_OK != 0 || (s.valid & fattr::SIZE != 0 && s.size != 0) {
                    return Err(Errno(libc::EROFS));
                }
                abi::encode_attr_out(out, TTL, &self.attr(ino, &node));
                Ok(Reply::Payload)
            }
            // A writable `data` cannot be resized (EROFS: truncation is not
            // supported); time updates and a "resize" to its own size are
            // accepted as no-ops; mode and owner changes are refused.
            Node::Data if !self.read_only => {
                let s = abi::SetattrIn::decode(body)?;
                if s.valid & fattr::SIZE != 0 && s.size != self.file.size() {
                    return Err(Errno(libc::EROFS));
                }
                if s.valid & !ATTR_SETATTR_OK != 0 {
                    return Err(Errno(libc::EPERM));
                }
                abi::encode_attr_out(out, TTL, &self.attr(ino, &node));
                Ok(Reply::Payload)
            }
            _ => Err(self.no_write()),
        }
    }

    fn open(&self, ino: u64, body: &[u8], out: &mut Vec<u8>) -> Result<Reply, Errno> {
        let flags = abi::OpenIn::decode(body)?.flags as i32;
        let read_only_open = flags & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_TRUNC == 0;
        let (fh, open_flags) = match self.node(ino)? {
            Node::Root => return Err(Errno(libc::EISDIR)),
            // Truncation is not supported, also on a writable mount.
            Node::Data | Node::Null if flags & libc::O_TRUNC != 0 => return Err(Errno(libc::EROFS)),
            Node::Null if !read_only_open => return Err(Errno(libc::EROFS)),
            Node::Data if !read_only_open && self.read_only => return Err(Errno(libc::EROFS)),
            // Read-only: no FOPEN_KEEP_CACHE (the page cache is dropped on
            // each open) and no FOPEN_DIRECT_IO (reads go through the page
            // cache). Writable: FOPEN_DIRECT_IO, so that no cached page can
            // go stale behind a write (at the cost of readahead and read
            // caching).
            Node::Data if self.read_only => (0, self.open_flags),
            Node::Data => (0, self.direct_open_flags),
            Node::Null => (0, self.direct_open_flags),
            Node::Tree(n) => {
                match n.kind() {
                    KNodeKind::Dir => return Err(Errno(libc::EISDIR)),
                    KNodeKind::Symlink => return Err(Errno(libc::ELOOP)),
                    KNodeKind::Attr => {}
                }
                let (read, write) = match flags & libc::O_ACCMODE {
                    libc::O_RDONLY => (true, false),
                    libc::O_WRONLY => (false, true),
                    libc::O_RDWR => (true, true),
                    _ => return Err(Errno(libc::EINVAL)),
                };
                // As kernfs_fop_open: no writing a file without write bits
                // (nor reading one without read bits), whoever asks. O_TRUNC
                // is ignored, as sysfs does.
                if (write && n.mode() & 0o222 == 0) || (read && n.mode() & 0o444 == 0) {
                    return Err(Errno(libc::EACCES));
                }
                let file = n.open(OpenFlags { read, write }).map_err(Errno::from_kernfs)?;
                (self.tree()?.opens.insert(file)?, self.direct_open_flags)
            }
        };
        abi::encode_open_out(out, fh, open_flags);
        Ok(Reply::Payload)
    }

    /// The open attribute file behind (`ino`, `fh`).
    fn open_file(&self, ino: u64, fh: u64) -> Result<Arc<kernfs::OpenFile>, Errno> {
        let file = self.tree()?.opens.get(fh)?;
        if tree_ino(file.node().id()) != ino {
            return Err(Errno(libc::EBADF));
        }
        Ok(file)
    }

    fn read(&self, ino: u64, body: &[u8], data: &mut Vec<u8>) -> Result<Reply, Errno> {
        let r = abi::ReadIn::decode(body)?;
        match ino {
            DATA_ID => {}
            NULL_ID if self.null_file => {
                let n = NULL_SIZE.saturating_sub(usize::try_from(r.offset).unwrap_or(usize::MAX));
                return Ok(Reply::Zeros(n.min(r.size as usize)));
            }
            _ if is_tree_ino(ino) => {
                let file = self.open_file(ino, r.fh)?;
                let n = (r.size as usize).min(data.len());
                let got = file.read(r.offset, &mut data[..n]).map_err(Errno::from_kernfs)?;
                return Ok(Reply::Data(got));
            }
            abi::ROOT_ID => return Err(Errno(libc::EISDIR)),
            _ => return Err(Errno(libc::ENOENT)),
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

    /// WRITE: only attributes take writes. The payload is handed to
    /// [`kernfs::OpenFile::write`] straight from the request buffer and the
    /// reply is encoded into the worker's reply buffer: for a prealloc
    /// attribute (and a `store` that does not allocate) this allocates
    /// nothing.
    ///
    /// On a writable mount `data` takes writes too: the range must lie
    /// within the file (else EFBIG, nothing written), then
    /// [`ArrayFile::write_at`] writes it in full.
    fn write(&self, ino: u64, body: &[u8], out: &mut Vec<u8>) -> Result<Reply, Errno> {
        if ino == DATA_ID && !self.read_only {
            let (w, payload) = abi::WriteIn::decode(body)?;
            let end = w.offset.checked_add(payload.len() as u64).ok_or(Errno(libc::EFBIG))?;
            if end > self.file.size() {
                return Err(Errno(libc::EFBIG));
            }
            if !payload.is_empty() {
                self.file.write_at(w.offset, payload).map_err(|e| Errno::from_io(&e))?;
            }
            abi::encode_write_out(out, u32::try_from(payload.len()).unwrap_or(w.size));
            return Ok(Reply::Payload);
        }
        if !is_tree_ino(ino) {
            return Err(self.no_write());
        }
        let (w, payload) = abi::WriteIn::decode(body)?;
        let file = self.open_file(ino, w.fh)?;
        let n = file.write(w.offset, payload).map_err(Errno::from_kernfs)?;
        // n <= payload.len() <= u32::MAX.
        abi::encode_write_out(out, u32::try_from(n).unwrap_or(w.size));
        Ok(Reply::Payload)
    }

    /// COPY_FILE_RANGE and COPY_FILE_RANGE_64 (`copy_file_range(2)` with
    /// both files on this mount; the header's node id is the source's).
    /// Returns the bytes copied.
    ///
    /// Only `data` to `data` on a writable mount is served, by
    /// [`ArrayFile::copy_range`], with the kernel's own rules
    /// (`generic_copy_file_checks`) applied again here: a source range past
    /// the end is cut at the end (0 at or past it), a destination range
    /// past the end is EFBIG (the file cannot grow; nothing is written, as
    /// for WRITE), overlapping ranges are EINVAL, `flags` must be 0
    /// (EINVAL), and a copy is cut to [`MAX_COPY`] bytes (a short count).
    /// Anything else (an attribute or `null` on either side) is EOPNOTSUPP,
    /// so that the kernel (a splice within one filesystem) or the caller
    /// copies by reading and writing: not ENOSYS, which would switch
    /// `copy_file_range` off for the whole connection, `data` included. A
    /// read-only mount answers EROFS (the kernel does not send the request
    /// there: `data` cannot be opened for writing).
    fn copy_file_range(&self, src_ino: u64, body: &[u8], buf: &mut [u8]) -> Result<u64, Errno> {
        let c = abi::CopyFileRangeIn::decode(body)?;
        if c.flags != 0 {
            return Err(Errno(libc::EINVAL));
        }
        if src_ino != DATA_ID || c.nodeid_out != DATA_ID {
            return Err(Errno(libc::EOPNOTSUPP));
        }
        if self.read_only {
            return Err(Errno(libc::EROFS));
        }
        let size = self.file.size();
        if c.off_in >= size || c.len == 0 {
            return Ok(0);
        }
        let count = c.len.min(size - c.off_in).min(MAX_COPY);
        let end = c.off_out.checked_add(count).ok_or(Errno(libc::EFBIG))?;
        if end > size {
            return Err(Errno(libc::EFBIG));
        }
        // Same file: the ranges must not overlap (c.off_in + count <= size).
        if end > c.off_in && c.off_out < c.off_in + count {
            return Err(Errno(libc::EINVAL));
        }
        let n = self.file.copy_range(c.off_in, c.off_out, count, buf).map_err(|e| Errno::from_io(&e))?;
        if n > count {
            // The kernel would take more than it asked for as an error too.
            return Err(Errno(libc::EIO));
        }
        Ok(n)
    }

    /// POLL. Never ENOSYS, which would switch poll off for the whole
    /// connection.
    fn poll(&self, ino: u64, body: &[u8], out: &mut Vec<u8>) -> Result<Reply, Errno> {
        let p = abi::PollIn::decode(body)?;
        let revents = if is_tree_ino(ino) {
            let t = self.tree()?;
            // Check that the handle is this node's before registering.
            self.open_file(ino, p.fh)?;
            let kh = (p.flags & abi::POLL_SCHEDULE_NOTIFY != 0).then_some(p.kh);
            u32::from(t.opens.poll(p.fh, kh)? as u16)
        } else {
            DEFAULT_POLLMASK
        };
        abi::encode_poll_out(out, revents);
        Ok(Reply::Payload)
    }

    fn readdir(&self, ino: u64, body: &[u8], out: &mut Vec<u8>) -> Result<Reply, Errno> {
        let r = abi::ReadIn::decode(body)?;
        let dir_t = u32::from(libc::DT_DIR);
        let reg_t = u32::from(libc::DT_REG);
        let mut fixed: Vec<(&[u8], u64, u32)> = Vec::with_capacity(4);
        let children = match self.node(ino)? {
            Node::Root => {
                fixed.extend([(&b"."[..], ino, dir_t), (b"..", ino, dir_t), (DATA_NAME, DATA_ID, reg_t)]);
                if self.null_file {
                    fixed.push((NULL_NAME, NULL_ID, reg_t));
                }
                match &self.tree {
                    Some(t) => t.tree.readdir(&t.tree.root()).map_err(Errno::from_kernfs)?,
                    None => Vec::new(),
                }
            }
            Node::Tree(n) if n.kind() == KNodeKind::Dir => {
                let parent = n.parent().map_or(abi::ROOT_ID, |p| tree_ino(p.id()));
                fixed.extend([(&b"."[..], ino, dir_t), (b"..", parent, dir_t)]);
                self.tree()?.tree.readdir(&n).map_err(Errno::from_kernfs)?
            }
            _ => return Err(Errno(libc::ENOTDIR)),
        };
        let in_root = ino == abi::ROOT_ID;
        let tree_entries = children
            .iter()
            .filter(|c| !(in_root && self.shadowed(c.name().as_bytes())))
            .map(|c| (c.name().as_bytes(), tree_ino(c.id()), tree_dtype(c.kind())));
        let limit = r.size as usize;
        // Offsets are 1-based positions: the entry at index i carries off
        // i + 1, which is where the next READDIR resumes.
        let skip = usize::try_from(r.offset).unwrap_or(usize::MAX);
        for (i, (name, child, typ)) in fixed.iter().copied().chain(tree_entries).enumerate().skip(skip) {
            if out.len() + abi::dirent_size(name.len()) > limit {
                break;
            }
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

    /// A writable file in memory, counting the bytes written.
    struct Mem(std::sync::Mutex<Vec<u8>>);
    impl ArrayFile for Mem {
        fn size(&self) -> u64 {
            self.0.lock().expect("mem").len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let m = self.0.lock().expect("mem");
            buf.copy_from_slice(&m[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut m = self.0.lock().expect("mem");
            m[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn copy_body(off_in: u64, nodeid_out: u64, off_out: u64, len: u64, flags: u64) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [0, off_in, nodeid_out, 0, off_out, len, flags] {
            abi::put_u64(&mut b, v);
        }
        b
    }

    #[test]
    fn copy_file_range_within_data() {
        let init: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
        let file = Arc::new(Mem(std::sync::Mutex::new(init.clone())));
        let fs = Filesystem::new(file.clone(), false, 0, 0, 35);
        // A small data buffer: the default copies through it in pieces.
        let mut bufs = ReplyBufs::new(1000);
        let mut model = init.clone();
        let h64 = header(op::COPY_FILE_RANGE_64, DATA_ID);
        let h32 = header(op::COPY_FILE_RANGE, DATA_ID);
        // Unaligned, several pieces, the 64-bit reply.
        assert_eq!(fs.handle(&h64, &copy_body(13, DATA_ID, 5_001, 2_500, 0), &mut bufs), Ok(Reply::Payload));
        assert_eq!(bufs.out, 2_500u64.to_ne_bytes());
        model.copy_within(13..2_513, 5_001);
        // Source crossing the end: cut there; the 32-bit reply.
        assert_eq!(fs.handle(&h32, &copy_body(9_000, DATA_ID, 100, 5_000, 0), &mut bufs), Ok(Reply::Payload));
        assert_eq!(&bufs.out[..4], &1_000u32.to_ne_bytes());
        assert_eq!(bufs.out.len(), 8);
        model.copy_within(9_000..10_000, 100);
        // At or past the end: 0.
        for off in [10_000, u64::MAX] {
            assert_eq!(fs.handle(&h64, &copy_body(off, DATA_ID, 0, 10, 0), &mut bufs), Ok(Reply::Payload));
            assert_eq!(bufs.out, 0u64.to_ne_bytes());
        }
        assert_eq!(*file.0.lock().expect("mem"), model);
        // Refused, nothing written: destination past the end (also when
        // the sum wraps), overlap (either way round), flags.
        let refused = [
            (copy_body(0, DATA_ID, 9_999, 2, 0), libc::EFBIG),
            (copy_body(0, DATA_ID, u64::MAX - 1, 4, 0), libc::EFBIG),
            (copy_body(0, DATA_ID, 99, 100, 0), libc::EINVAL),
            (copy_body(100, DATA_ID, 1, 100, 0), libc::EINVAL),
            (copy_body(100, DATA_ID, 100, 1, 0), libc::EINVAL),
            (copy_body(0, DATA_ID, 100, 10, 1), libc::EINVAL),
            (copy_body(0, NULL_ID, 100, 10, 0), libc::EOPNOTSUPP),
            (copy_body(0, TREE_INO_OFFSET + 5, 100, 10, 0), libc::EOPNOTSUPP),
        ];
        for (body, errno) in refused {
            assert_eq!(fs.handle(&h64, &body, &mut bufs), Err(Errno(errno)), "{body:?}");
            assert_eq!(fs.handle(&h32, &body, &mut bufs), Err(Errno(errno)), "{body:?}");
        }
        // Adjacent ranges are fine.
        assert_eq!(fs.handle(&h64, &copy_body(0, DATA_ID, 100, 100, 0), &mut bufs), Ok(Reply::Payload));
        model.copy_within(0..100, 100);
        // From an attribute (or null) into data: EOPNOTSUPP too.
        let h = header(op::COPY_FILE_RANGE_64, TREE_INO_OFFSET + 5);
        assert_eq!(fs.handle(&h, &copy_body(0, DATA_ID, 0, 1, 0), &mut bufs), Err(Errno(libc::EOPNOTSUPP)));
        assert_eq!(fs.handle(&h64, &[0u8; 55], &mut bufs), Err(Errno(libc::EINVAL)));
        assert_eq!(*file.0.lock().expect("mem"), model);

        // A read-only mount: EROFS, still EOPNOTSUPP for attributes.
        let ro = Filesystem::new(file.clone(), true, 0, 0, 35);
        let body = copy_body(0, DATA_ID, 5_000, 10, 0);
        assert_eq!(ro.handle(&h64, &body, &mut bufs), Err(Errno(libc::EROFS)));
        let body = copy_body(0, TREE_INO_OFFSET + 5, 5_000, 10, 0);
        assert_eq!(ro.handle(&h64, &body, &mut bufs), Err(Errno(libc::EOPNOTSUPP)));
        assert_eq!(*file.0.lock().expect("mem"), model);
    }

    #[test]
    fn copy_by_read_write_pieces_and_errors() {
        let file = Mem(std::sync::Mutex::new((0..=255u8).collect()));
        // An empty buffer is replaced.
        assert_eq!(crate::copy_by_read_write(&file, 0, 128, 100, &mut []).expect("copy"), 100);
        let mut buf = [0u8; 7];
        assert_eq!(crate::copy_by_read_write(&file, 200, 10, 50, &mut buf).expect("copy"), 50);
        let mut model: Vec<u8> = (0..=255u8).collect();
        model.copy_within(0..100, 128);
        model.copy_within(200..250, 10);
        assert_eq!(*file.0.lock().expect("mem"), model);
        // The default write_at refuses: the error when nothing was copied.
        let e = crate::copy_by_read_write(&Zeros(100), 0, 50, 10, &mut buf).expect_err("EROFS");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(Errno::from_io(&io::Error::other("x")), Errno(libc::EIO));
        assert_eq!(Errno::from_io(&io::Error::from_raw_os_error(libc::ENXIO)), Errno(libc::ENXIO));
        assert_eq!(Errno::from_io(&io::Error::from_raw_os_error(100_000)), Errno(libc::EIO));
        assert_eq!(Errno::from_kernfs(libc::ENODEV), Errno(libc::ENODEV));
        assert_eq!(Errno::from_kernfs(-5), Errno(libc::EIO));
    }

    struct Word(std::sync::atomic::AtomicU8);
    impl kernfs::AttrOps for Word {
        fn show(&self, out: &mut kernfs::ShowBuf) -> Result<(), kernfs::Errno> {
            out.emit(format_args!("{}\n", self.0.load(std::sync::atomic::Ordering::Relaxed)))
        }
        fn store(&self, data: &[u8]) -> Result<usize, kernfs::Errno> {
            match data {
                [d @ b'0'..=b'9', ..] => self.0.store(d - b'0', std::sync::atomic::Ordering::Relaxed),
                _ => return Err(libc::EINVAL),
            }
            Ok(data.len())
        }
    }

    fn tree_fs() -> (Filesystem, Arc<kernfs::Kernfs>, kernfs::NodeRef) {
        let tree = kernfs::Kernfs::new();
        let md = tree.create_dir(&tree.root(), "md", 0o755).expect("md");
        let a = tree
            .create_attr(
                &md,
                "a",
                0o644,
                kernfs::Attr { prealloc: true, ..kernfs::Attr::new(Arc::new(Word(0.into()))) },
            )
            .expect("a");
        tree.activate(&md);
        let state = Arc::new(TreeState::new(tree.clone()));
        (Filesystem::new(Arc::new(Zeros(4096)), true, 0, 0, 35).with_tree(state), tree, a)
    }

    fn entry_nodeid(out: &[u8]) -> u64 {
        u64::from_ne_bytes(out[..8].try_into().expect("8 bytes"))
    }

    #[test]
    fn tree_ops_by_handle() {
        let (fs, _tree, a) = tree_fs();
        let mut bufs = ReplyBufs::new(4096);
        assert_eq!(fs.handle(&header(op::LOOKUP, abi::ROOT_ID), b"md\0", &mut bufs), Ok(Reply::Payload));
        let md = entry_nodeid(&bufs.out);
        // entry_valid 0 for tree nodes.
        assert_eq!(&bufs.out[16..24], &0u64.to_ne_bytes());
        assert_eq!(fs.handle(&header(op::LOOKUP, md), b"a\0", &mut bufs), Ok(Reply::Payload));
        let ino = entry_nodeid(&bufs.out);
        assert_eq!(ino, a.id() + TREE_INO_OFFSET);
        // Open read-write, write, read back.
        let mut body = Vec::new();
        abi::put_u32(&mut body, (libc::O_RDWR | libc::O_TRUNC) as u32);
        abi::put_u32(&mut body, 0);
        assert_eq!(fs.handle(&header(op::OPEN, ino), &body, &mut bufs), Ok(Reply::Payload));
        let fh = u64::from_ne_bytes(bufs.out[..8].try_into().expect("fh"));
        let open_flags = u32::from_ne_bytes(bufs.out[8..12].try_into().expect("flags"));
        assert_ne!(open_flags & abi::fopen::DIRECT_IO, 0);
        let mut w = Vec::new();
        abi::put_u64(&mut w, fh);
        abi::put_u64(&mut w, 0);
        abi::put_u32(&mut w, 2);
        w.extend_from_slice(&[0u8; 20]);
        w.extend_from_slice(b"7\n");
        assert_eq!(fs.handle(&header(op::WRITE, ino), &w, &mut bufs), Ok(Reply::Payload));
        assert_eq!(&bufs.out[..4], &2u32.to_ne_bytes());
        let mut r = read_body(0, 100);
        r[..8].copy_from_slice(&fh.to_ne_bytes());
        assert_eq!(fs.handle(&header(op::READ, ino), &r, &mut bufs), Ok(Reply::Data(2)));
        assert_eq!(&bufs.data[..2], b"7\n");
        // Wrong handle for the node, or no handle.
        assert_eq!(fs.handle(&header(op::READ, md), &r, &mut bufs), Err(Errno(libc::EBADF)));
        assert_eq!(fs.handle(&header(op::READ, ino), &read_body(0, 100), &mut bufs), Err(Errno(libc::EBADF)));
        // SETATTR: size 0 and times accepted, mode or other sizes refused.
        let setattr = |valid: u32, size: u64| {
            let mut b = Vec::new();
            abi::put_u32(&mut b, valid);
            abi::put_u32(&mut b, 0);
            abi::put_u64(&mut b, 0);
            abi::put_u64(&mut b, size);
            b.extend_from_slice(&[0u8; 64]);
            b
        };
        let h = header(op::SETATTR, ino);
        assert_eq!(fs.handle(&h, &setattr(fattr::SIZE | fattr::MTIME, 0), &mut bufs), Ok(Reply::Payload));
        assert_eq!(fs.handle(&h, &setattr(fattr::SIZE, 1), &mut bufs), Err(Errno(libc::EROFS)));
        assert_eq!(fs.handle(&h, &setattr(1, 0), &mut bufs), Err(Errno(libc::EROFS)));
        assert_eq!(
            fs.handle(&header(op::SETATTR, DATA_ID), &setattr(0, 0), &mut bufs),
            Err(Errno(libc::EROFS))
        );
        // POLL never answers ENOSYS.
        let mut p = Vec::new();
        abi::put_u64(&mut p, 0);
        abi::put_u64(&mut p, 5);
        abi::put_u32(&mut p, 0);
        abi::put_u32(&mut p, 0);
        assert_eq!(fs.handle(&header(op::POLL, DATA_ID), &p, &mut bufs), Ok(Reply::Payload));
        p[..8].copy_from_slice(&fh.to_ne_bytes());
        assert_eq!(fs.handle(&header(op::POLL, ino), &p, &mut bufs), Ok(Reply::Payload));
        // Released: the handle is gone.
        let mut rel = Vec::new();
        abi::put_u64(&mut rel, fh);
        rel.extend_from_slice(&[0u8; 16]);
        assert_eq!(fs.handle(&header(op::RELEASE, ino), &rel, &mut bufs), Ok(Reply::Payload));
        assert_eq!(fs.handle(&header(op::WRITE, ino), &w, &mut bufs), Err(Errno(libc::EBADF)));
        // Unknown and root-of-tree node ids.
        assert_eq!(
            fs.handle(&header(op::GETATTR, TREE_INO_OFFSET + 1), &[], &mut bufs),
            Err(Errno(libc::ENOENT))
        );
        assert_eq!(fs.handle(&header(op::GETATTR, NULL_ID), &[], &mut bufs), Err(Errno(libc::ENOENT)));
    }
}
