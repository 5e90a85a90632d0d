//! Helpers shared by the integration tests: a seeded PRNG, a temp dir
//! removed on drop, a watchdog, an in-memory [`Backing`] with injectable
//! faults and latency, and an ops wrapper that records `write_end`.

#![allow(dead_code)]

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pagecache::{AddressSpace, AddressSpaceOps, Backing, Errno, Folio, LockedFolio};

/// xorshift64*.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Directories of live [`TempDir`]s, removed by the watchdog before it
/// aborts (an abort runs no destructors).
static LIVE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn remove_live_dirs() {
    for d in LIVE_DIRS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Abort the process with a message (a hang cannot be unwound), removing
/// the temp dirs first.
pub fn abort_with(msg: &str) -> ! {
    eprintln!("WATCHDOG: {msg}");
    remove_live_dirs();
    std::process::abort();
}

/// A unique directory under the system temp dir, removed (with its
/// contents) when dropped, also while a failing test unwinds (and by the
/// watchdog before it aborts).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "pagecache-test-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).expect("create temp dir");
        LIVE_DIRS.lock().unwrap_or_else(|e| e.into_inner()).push(p.clone());
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// A new read-write file in the dir.
    pub fn file(&self, name: &str) -> (PathBuf, std::fs::File) {
        let p = self.0.join(name);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .expect("create temp file");
        (p, f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        LIVE_DIRS.lock().unwrap_or_else(|e| e.into_inner()).retain(|d| d != &self.0);
    }
}

/// Aborts the process (a hang cannot be unwound) with a message when no
/// progress is reported for `limit`. Stops when dropped.
pub struct Watchdog {
    progress: Arc<AtomicU64>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(what: &str, limit: Duration) -> Watchdog {
        let progress = Arc::new(AtomicU64::new(0));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (p, s, what) = (Arc::clone(&progress), Arc::clone(&stop), what.to_string());
        let thread = std::thread::spawn(move || {
            let mut last = p.load(Ordering::SeqCst);
            let mut since = Instant::now();
            let mut stopped = s.0.lock().unwrap_or_else(|e| e.into_inner());
            while !*stopped {
                stopped =
                    s.1.wait_timeout(stopped, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                let now = p.load(Ordering::SeqCst);
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() >= limit && !*stopped {
                    abort_with(&format!(
                        "{what}: no operation completed for {limit:?} ({now} completed): deadlock or starvation"
                    ));
                }
            }
        });
        Watchdog { progress, stop, thread: Some(thread) }
    }

    /// A handle to report progress with.
    pub fn progress(&self) -> Progress {
        Progress(Arc::clone(&self.progress))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    pub fn tick(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A store in memory with injectable faults (reads or writes touching a
/// range fail with EIO) and write latency.
#[derive(Default)]
pub struct FaultBacking {
    pub data: Mutex<Vec<u8>>,
    pub fail_read: Mutex<Option<Range<u64>>>,
    pub fail_write: Mutex<Option<Range<u64>>>,
    pub write_delay: Mutex<Duration>,
    pub writes: AtomicUsize,
    pub failed_writes: AtomicUsize,
    pub in_write: AtomicBool,
}

fn touches(r: &Option<Range<u64>>, pos: u64, len: usize) -> bool {
    r.as_ref().is_some_and(|r| pos < r.end && pos + len as u64 > r.start)
}

impl FaultBacking {
    pub fn new() -> Arc<FaultBacking> {
        Arc::new(FaultBacking::default())
    }
    pub fn set_fail_read(&self, r: Option<Range<u64>>) {
        *self.fail_read.lock().expect("lock") = r;
    }
    pub fn set_fail_write(&self, r: Option<Range<u64>>) {
        *self.fail_write.lock().expect("lock") = r;
    }
    pub fn set_write_delay(&self, d: Duration) {
        *self.write_delay.lock().expect("lock") = d;
    }
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().expect("lock").clone()
    }
}

impl Backing for FaultBacking {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if touches(&self.fail_read.lock().expect("lock"), pos, buf.len()) {
            return Err(libc::EIO);
        }
        let v = self.data.lock().expect("lock");
        for (i, b) in buf.iter_mut().enumerate() {
            *b = v.get(pos as usize + i).copied().unwrap_or(0);
        }
        Ok(())
    }
    fn write_at(&self, pos: u64, buf: &[u8]) -> Result<(), Errno> {
        let delay = *self.write_delay.lock().expect("lock");
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if touches(&self.fail_write.lock().expect("lock"), pos, buf.len()) {
            self.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Err(libc::EIO);
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        let mut v = self.data.lock().expect("lock");
        let end = pos as usize + buf.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[pos as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), Errno> {
        Ok(())
    }
    fn set_size(&self, size: u64) -> Result<(), Errno> {
        self.data.lock().expect("lock").resize(size as usize, 0);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.data.lock().expect("lock").len() as u64
    }
}

/// One `write_end` call: (pos, len, copied, returned).
pub type EndCall = (u64, usize, usize, Result<usize, Errno>);

/// Delegates to `inner`, recording every `write_end`.
pub struct Recording<O> {
    pub inner: O,
    pub ends: Mutex<Vec<EndCall>>,
}

impl<O> Recording<O> {
    pub fn new(inner: O) -> Arc<Recording<O>> {
        Arc::new(Recording { inner, ends: Mutex::new(Vec::new()) })
    }
    pub fn ends(&self) -> Vec<EndCall> {
        self.ends.lock().expect("lock").clone()
    }
}

impl<O: AddressSpaceOps> AddressSpaceOps for Recording<O> {
    fn read_folio(&self, m: &AddressSpace, folio: &mut LockedFolio) -> Result<(), Errno> {
        self.inner.read_folio(m, folio)
    }
    fn write_begin(&self, m: &AddressSpace, pos: u64, len: usize) -> Result<LockedFolio, Errno> {
        self.inner.write_begin(m, pos, len)
    }
    fn write_end(
        &self,
        m: &AddressSpace,
        pos: u64,
        len: usize,
        copied: usize,
        folio: LockedFolio,
    ) -> Result<usize, Errno> {
        let r = self.inner.write_end(m, pos, len, copied, folio);
        self.ends.lock().expect("lock").push((pos, len, copied, r));
        r
    }
    fn writepages(&self, m: &AddressSpace, folios: &[Arc<Folio>]) -> Result<(), Errno> {
        self.inner.writepages(m, folios)
    }
    fn accounts_dirty(&self) -> bool {
        self.inner.accounts_dirty()
    }
    fn flush(&self, m: &AddressSpace) -> Result<(), Errno> {
        self.inner.flush(m)
    }
    fn truncate(&self, m: &AddressSpace, new_size: u64) -> Result<(), Errno> {
        self.inner.truncate(m, new_size)
    }
    fn initial_size(&self) -> u64 {
        self.inner.initial_size()
    }
}

/// Read all of a mapping (up to its size).
pub fn read_all(m: &AddressSpace) -> Vec<u8> {
    let mut v = vec![0u8; m.size() as usize];
    let n = m.read(0, &mut v).expect("read");
    v.truncate(n);
    v
}

/// Run `f` on a thread and wait at most `limit` for it; panics (failing
/// the test) if it does not finish, aborting if it can't be abandoned.
pub fn within<T: Send + 'static>(what: &str, limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = h.join();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => panic!("{what}: thread ended without a result"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            abort_with(&format!("{what}: did not finish within {limit:?} (deadlock)"));
        }
    }
}
