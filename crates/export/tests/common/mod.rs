//! Shared helpers for the export integration tests: in-memory array files,
//! a mount-point guard that always cleans up, and a watchdog.

#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use export::{ArrayFile, Mount, MountOptions};

pub const MIB: u64 = 1 << 20;
/// Watchdog limit for one test body.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The deterministic byte at `offset`.
pub fn pattern(offset: u64) -> u8 {
    let x = (offset >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 56) as u8) ^ (offset as u8)
}

/// Fill `buf` with the pattern starting at `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern(offset + i as u64);
    }
}

/// An in-memory array holding the pattern.
pub struct PatternFile {
    data: Vec<u8>,
}

impl PatternFile {
    pub fn new(size: u64) -> Self {
        let mut data = vec![0u8; size as usize];
        fill_pattern(0, &mut data);
        PatternFile { data }
    }
}

impl ArrayFile for PatternFile {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = offset as usize;
        let src =
            self.data.get(start..start + buf.len()).ok_or_else(|| io::Error::other("read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// An array whose reads fail with `error` (an errno, or 0 for an error
/// without OS code).
pub struct FailingFile {
    pub size: u64,
    pub error: i32,
}

impl ArrayFile for FailingFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
        if self.error == 0 {
            Err(io::Error::other("simulated member failure"))
        } else {
            Err(io::Error::from_raw_os_error(self.error))
        }
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh empty directory `temp_dir()/export-test-PID-N`. Dropping it
/// lazily unmounts whatever is still mounted on it and removes it, even
/// when the test failed.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("export-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        // Mount points are compared in canonical form.
        let path = path.canonicalize().expect("canonicalize test dir");
        TestDir { path }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        force_unmount(&self.path);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Detach every mount on `dir` (test cleanup; needs root).
pub fn force_unmount(dir: &Path) {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    for _ in 0..8 {
        if !is_mounted(dir) {
            return;
        }
        // SAFETY: c is a valid NUL-terminated path.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Whether `/proc/mounts` lists `dir` as a mount point.
pub fn is_mounted(dir: &Path) -> bool {
    mounts_line(dir).is_some()
}

/// The `/proc/mounts` line for mount point `dir`, if any.
pub fn mounts_line(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let want = dir.to_str()?;
    text.lines().rfind(|l| l.split(' ').nth(1) == Some(want)).map(str::to_string)
}

/// Default test options.
pub fn options() -> MountOptions {
    MountOptions { threads: 4, fsname: "umd:test".to_string(), ..MountOptions::default() }
}

/// Mount `file` on `dir` with `opts`.
pub fn mount_on(dir: &TestDir, file: Arc<dyn ArrayFile>, opts: MountOptions) -> Mount {
    export::mount(&dir.path, file, opts).expect("mount")
}

/// Run `body` on its own thread and fail if it takes longer than
/// [`TIMEOUT`]; on timeout, mounts on `dir` are detached first so the
/// stuck thread has a chance to come unstuck.
pub fn with_watchdog<F>(dir: Option<&Path>, body: F)
where
    F: FnOnce() + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(()) => {
            let _ = handle.join();
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: re-raise its panic here.
            if let Err(p) = handle.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            if let Some(d) = dir {
                force_unmount(d);
                let _ = std::fs::remove_dir(d);
            }
            panic!("test body still running after {TIMEOUT:?}");
        }
    }
}

/// Tiny deterministic PRNG (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `pread` until `buf` is full or EOF; returns the bytes read.
pub fn pread_full(f: &std::fs::File, mut offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], offset)?;
        if n == 0 {
            break;
        }
        done += n;
        offset += n as u64;
    }
    Ok(done)
}

/// Check `buf` holds the pattern from `offset`; panics with the first
/// mismatching offset.
pub fn check_pattern(offset: u64, buf: &[u8]) {
    if let Some(i) = buf.iter().enumerate().position(|(i, &b)| b != pattern(offset + i as u64)) {
        panic!(
            "data mismatch at offset {} (got {:#04x}, want {:#04x})",
            offset + i as u64,
            buf[i],
            pattern(offset + i as u64)
        );
    }
}

/// An attribute whose value is one of a fixed list of words (index in an
/// atomic); `store` accepts exactly those words (one trailing newline
/// allowed), notifies when `notify` is set, and allocates nothing.
pub struct WordAttr {
    pub words: &'static [&'static str],
    pub cur: std::sync::atomic::AtomicUsize,
    pub notify: bool,
    /// The attribute's node, for `notify` (set once it exists).
    pub node: std::sync::OnceLock<std::sync::Weak<kernfs::Node>>,
}

impl WordAttr {
    pub fn new(words: &'static [&'static str], notify: bool) -> Arc<Self> {
        Arc::new(WordAttr { words, cur: AtomicUsize::new(0), notify, node: std::sync::OnceLock::new() })
    }

    /// The current word.
    pub fn get(&self) -> &'static str {
        self.words[self.cur.load(Ordering::SeqCst)]
    }

    /// Set the value in process, as the array would, and notify.
    pub fn set(&self, word: &str) {
        let i = self.words.iter().position(|w| *w == word).expect("known word");
        self.cur.store(i, Ordering::SeqCst);
        self.notify_node();
    }

    fn notify_node(&self) {
        if self.notify {
            if let Some(n) = self.node.get().and_then(std::sync::Weak::upgrade) {
                n.notify();
            }
        }
    }
}

impl kernfs::AttrOps for WordAttr {
    fn show(&self, out: &mut kernfs::ShowBuf) -> Result<(), kernfs::Errno> {
        out.emit(format_args!("{}\n", self.get()))
    }
    fn store(&self, data: &[u8]) -> Result<usize, kernfs::Errno> {
        let word = data.strip_suffix(b"\n").unwrap_or(data);
        let i = self.words.iter().position(|w| w.as_bytes() == word).ok_or(libc::EINVAL)?;
        self.cur.store(i, Ordering::SeqCst);
        self.notify_node();
        Ok(data.len())
    }
}

/// An attribute holding up to 64 arbitrary bytes (non-prealloc by default).
pub struct BytesAttr(pub std::sync::Mutex<Vec<u8>>);

impl kernfs::AttrOps for BytesAttr {
    fn show(&self, out: &mut kernfs::ShowBuf) -> Result<(), kernfs::Errno> {
        let v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        out.push_bytes(&v)?;
        out.push_bytes(b"\n")
    }
    fn store(&self, data: &[u8]) -> Result<usize, kernfs::Errno> {
        let word = data.strip_suffix(b"\n").unwrap_or(data);
        if word.len() > 64 {
            return Err(libc::EINVAL);
        }
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = word.to_vec();
        Ok(data.len())
    }
}

/// The test tree:
///
/// ```text
/// md/                   0755
///   array_state         0644 prealloc, notifies; readonly|clean|active
///   sync_action         0644 idle|frozen (not prealloc)
///   bytes               0644 any value (not prealloc)
///   awl                 0644 atomic_write_len 8
///   level               0444 raid5
///   link -> dev-x
///   dev-x/              0755
///     state             0644 in_sync|faulty, notifies
/// ```
pub struct TestTree {
    pub tree: Arc<kernfs::Kernfs>,
    pub md: kernfs::NodeRef,
    pub array_state: Arc<WordAttr>,
    pub array_state_node: kernfs::NodeRef,
    pub sync_action: Arc<WordAttr>,
    pub bytes: Arc<BytesAttr>,
    pub awl: Arc<BytesAttr>,
    pub dev_x: kernfs::NodeRef,
    pub dev_state: Arc<WordAttr>,
}

pub fn test_tree() -> TestTree {
    use kernfs::{Attr, Kernfs};
    let tree = Kernfs::new();
    let md = tree.create_dir(&tree.root(), "md", 0o755).expect("md");
    let array_state = WordAttr::new(&["readonly", "clean", "active"], true);
    let array_state_node = tree
        .create_attr(
            &md,
            "array_state",
            0o644,
            Attr { prealloc: true, notify: true, ..Attr::new(array_state.clone()) },
        )
        .expect("array_state");
    let _ = array_state.node.set(Arc::downgrade(&array_state_node));
    let sync_action = WordAttr::new(&["idle", "frozen"], false);
    tree.create_attr(&md, "sync_action", 0o644, Attr::new(sync_action.clone())).expect("sync_action");
    let bytes = Arc::new(BytesAttr(std::sync::Mutex::new(b"0".to_vec())));
    tree.create_attr(&md, "bytes", 0o644, Attr::new(bytes.clone())).expect("bytes");
    let awl = Arc::new(BytesAttr(std::sync::Mutex::new(b"x".to_vec())));
    tree.create_attr(&md, "awl", 0o644, Attr { atomic_write_len: 8, ..Attr::new(awl.clone()) }).expect("awl");
    let level = WordAttr::new(&["raid5"], false);
    tree.create_attr(&md, "level", 0o444, Attr::new(level)).expect("level");
    tree.create_symlink(&md, "link", "dev-x").expect("link");
    let dev_x = tree.create_dir(&md, "dev-x", 0o755).expect("dev-x");
    let dev_state = WordAttr::new(&["in_sync", "faulty"], true);
    let dev_state_node = tree
        .create_attr(&dev_x, "state", 0o644, Attr { notify: true, ..Attr::new(dev_state.clone()) })
        .expect("state");
    let _ = dev_state.node.set(Arc::downgrade(&dev_state_node));
    tree.activate(&md);
    TestTree { tree, md, array_state, array_state_node, sync_action, bytes, awl, dev_x, dev_state }
}

/// Options with `tree`.
pub fn tree_options(tree: &Arc<kernfs::Kernfs>) -> MountOptions {
    MountOptions { tree: Some(Arc::clone(tree)), ..options() }
}

/// `poll(2)` one descriptor for `events`; returns (poll's result, revents).
pub fn poll_fd(fd: std::os::fd::RawFd, events: i16, timeout_ms: i32) -> (i32, i16) {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one live pollfd, count 1.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    (r, p.revents)
}
