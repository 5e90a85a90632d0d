//! The buffer pool: every buffer engine I/O uses, allocated and aligned
//! once, when the pool is made (optionally backed by huge pages), and
//! handed out and taken back without allocating.
//!
//! One anonymous mapping holds `count` buffers of `size` bytes each
//! (`size` a multiple of the page size, so every buffer is page aligned,
//! which satisfies any direct-I/O memory alignment). Free buffers are
//! indexes in a bounded lock-free queue allocated with the pool. The
//! io_uring engine registers the whole pool with each ring, one fixed
//! buffer per index.
//!
//! Lock-free; no lock order.

use std::io;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// Most buffers in a pool: io_uring's limit of fixed buffers per ring.
pub const MAX_BUFFERS: usize = 16384;

/// How to make a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Number of buffers (1..=16384: io_uring registers at most 16384
    /// fixed buffers per ring).
    pub count: usize,
    /// Bytes per buffer, rounded up to the page size.
    pub size: usize,
    /// Try huge pages (`MAP_HUGETLB`, then transparent huge pages); falls
    /// back to normal pages silently. [`BufPool::huge`] tells what happened.
    pub huge_pages: bool,
}

impl Default for PoolConfig {
    /// 64 buffers of 1 MiB, normal pages.
    fn default() -> Self {
        PoolConfig { count: 64, size: 1 << 20, huge_pages: false }
    }
}

struct Region {
    base: *mut u8,
    len: usize,
}

// SAFETY: the region is plain memory; access to each buffer is exclusive to
// the IoBuf that holds its index.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: base/len describe the mapping made in BufPool::new, and no
        // IoBuf is alive (each holds an Arc to the pool).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

struct Shared {
    region: Region,
    size: usize,
    count: usize,
    free: ArrayQueue<u16>,
    huge: bool,
}

/// A pool of aligned I/O buffers. Cloning shares the pool.
#[derive(Clone)]
pub struct BufPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BufPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufPool")
            .field("count", &self.shared.count)
            .field("size", &self.shared.size)
            .field("free", &self.shared.free.len())
            .field("huge", &self.shared.huge)
            .finish()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|p| p.is_power_of_two()).unwrap_or(4096)
}

impl BufPool {
    /// Map and fault in the pool's memory (so no page fault allocates
    /// later), and fill the free queue.
    pub fn new(cfg: PoolConfig) -> io::Result<BufPool> {
        if cfg.count == 0 || cfg.count > MAX_BUFFERS || cfg.size == 0 || cfg.size > 1 << 30 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "buffer pool: count must be 1..={MAX_BUFFERS} and size 1..=1 GiB (got {} × {})",
                    cfg.count, cfg.size
                ),
            ));
        }
        let page = page_size();
        let size = cfg.size.div_ceil(page) * page;
        let total = size.checked_mul(cfg.count).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        let mut huge = false;
        let mut base = libc::MAP_FAILED;
        if cfg.huge_pages {
            const HUGE: usize = 2 << 20;
            let len = total.div_ceil(HUGE) * HUGE;
            // SAFETY: an anonymous mapping with no address hint.
            base = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags | libc::MAP_HUGETLB, -1, 0) };
            if base != libc::MAP_FAILED {
                huge = true;
                return Self::finish(base.cast(), len, size, cfg.count, huge);
            }
        }
        if base == libc::MAP_FAILED {
            // SAFETY: an anonymous mapping with no address hint.
            base = unsafe { libc::mmap(std::ptr::null_mut(), total, prot, flags, -1, 0) };
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            if cfg.huge_pages {
                // SAFETY: advice on our own mapping; failure is harmless.
                huge = unsafe { libc::madvise(base, total, libc::MADV_HUGEPAGE) } == 0;
            }
        }
        Self::finish(base.cast(), total, size, cfg.count, huge)
    }

    fn finish(base: *mut u8, len: usize, size: usize, count: usize, huge: bool) -> io::Result<BufPool> {
        let region = Region { base, len };
        let free = ArrayQueue::new(count);
        for i in 0..count {
            // count <= MAX_BUFFERS, so i fits in u16.
            let idx = u16::try_from(i).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            if free.push(idx).is_err() {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        Ok(BufPool { shared: Arc::new(Shared { region, size, count, free, huge }) })
    }

    /// Take a free buffer, or None when all are in use. Allocation-free.
    pub fn take(&self) -> Option<IoBuf> {
        let index = self.shared.free.pop()?;
        // SAFETY: index < count, so the buffer lies inside the region.
        let ptr = unsafe { self.shared.region.base.add(usize::from(index) * self.shared.size) };
        Some(IoBuf { pool: Arc::clone(&self.shared), index, ptr })
    }

    /// Bytes per buffer (a multiple of the page size).
    pub fn buf_size(&self) -> usize {
        self.shared.size
    }

    /// Number of buffers.
    pub fn count(&self) -> usize {
        self.shared.count
    }

    /// Buffers not in use now.
    pub fn free(&self) -> usize {
        self.shared.free.len()
    }

    /// Whether huge pages back the pool.
    pub fn huge(&self) -> bool {
        self.shared.huge
    }

    /// One iovec per buffer, in index order (for io_uring registration).
    /// Allocates the returned vector: call at set-up only.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.shared.count)
            .map(|i| libc::iovec {
                // SAFETY: inside the region, as in take().
                iov_base: unsafe { self.shared.region.base.add(i * self.shared.size) }.cast(),
                iov_len: self.shared.size,
            })
            .collect()
    }

    /// Whether `other` is this same pool.
    pub fn same(&self, other: &BufPool) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// One buffer of a pool, held exclusively; back to the pool on drop.
pub struct IoBuf {
    pool: Arc<Shared>,
    index: u16,
    ptr: *mut u8,
}

// SAFETY: the buffer's memory is owned exclusively by this IoBuf.
unsafe impl Send for IoBuf {}
// SAFETY: shared references only read.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// The buffer's index in its pool (its fixed-buffer index).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Whether this buffer belongs to `pool`.
    pub fn is_from(&self, pool: &BufPool) -> bool {
        Arc::ptr_eq(&self.pool, &pool.shared)
    }
}

impl std::ops::Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+size is this buffer's part of the live region.
        unsafe { std::slice::from_raw_parts(self.ptr, self.pool.size) }
    }
}

impl std::ops::DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and this IoBuf holds the buffer exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.pool.size) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        // Cannot fail: at most `count` indexes exist and this one is out.
        let _ = self.pool.free.push(self.index);
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf").field("index", &self.index).field("len", &self.pool.size).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_all_give_back_aligned() {
        let p = BufPool::new(PoolConfig { count: 3, size: 5000, huge_pages: false }).expect("pool");
        assert_eq!(p.buf_size() % 4096, 0);
        let mut bufs: Vec<IoBuf> = (0..3).map(|_| p.take().expect("buf")).collect();
        assert!(p.take().is_none());
        for b in &mut bufs {
            assert_eq!(b.as_ptr() as usize % 4096, 0);
            let v = b.index() as u8;
            b.fill(v);
        }
        assert_eq!(bufs[1][100], 1);
        drop(bufs.pop());
        assert_eq!(p.free(), 1);
        assert!(p.take().is_some());
        assert!(BufPool::new(PoolConfig { count: 0, size: 1, huge_pages: false }).is_err());
        // Huge pages fall back rather than fail.
        assert!(BufPool::new(PoolConfig { count: 2, size: 4096, huge_pages: true }).is_ok());
    }
}
