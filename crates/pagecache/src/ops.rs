//! Address-space operations (`struct address_space_operations`) and the
//! two ready families: in-memory ([`MemOps`]) and block-backed
//! ([`BlockOps`] over a [`Backing`] store).

use std::sync::Arc;

use crate::folio::{Folio, LockedFolio};
use crate::mapping::AddressSpace;

/// An errno.
pub type Errno = i32;

/// The operations a mapping's owner provides. Called with no lock of this
/// crate held except as each says.
pub trait AddressSpaceOps: Send + Sync {
    /// Fill `folio` (locked by the caller, not up to date) from the backing
    /// store; the caller marks it up to date on success.
    fn read_folio(&self, mapping: &AddressSpace, folio: &mut LockedFolio) -> Result<(), Errno>;

    /// Prepare a write of `len` bytes at `pos` (inside one folio): return
    /// the folio locked and up to date wherever the write will not cover
    /// it. Called with no folio locked.
    fn write_begin(&self, mapping: &AddressSpace, pos: u64, len: usize) -> Result<LockedFolio, Errno>;

    /// Commit `copied` of the `len` bytes prepared at `pos`: mark the folio
    /// up to date/dirty as appropriate, grow the mapping's size, unlock
    /// (drop) the folio, and return the bytes committed (≤ `copied`; 0
    /// makes the caller redo the step).
    fn write_end(
        &self,
        mapping: &AddressSpace,
        pos: u64,
        len: usize,
        copied: usize,
        folio: LockedFolio,
    ) -> Result<usize, Errno>;

    /// Write `folios` (contiguous indexes, ascending, under writeback, not
    /// locked; their bytes are stable) to the backing store.
    fn writepages(&self, mapping: &AddressSpace, folios: &[Arc<Folio>]) -> Result<(), Errno>;

    /// Whether dirty folios count against the dirty limit and are written
    /// back (false for memory that is its own store).
    fn accounts_dirty(&self) -> bool {
        true
    }

    /// Make written-back data durable (`fsync`'s last step).
    fn flush(&self, _mapping: &AddressSpace) -> Result<(), Errno> {
        Ok(())
    }

    /// The mapping was cut to `new_size`.
    fn truncate(&self, _mapping: &AddressSpace, _new_size: u64) -> Result<(), Errno> {
        Ok(())
    }

    /// The mapping's size when created.
    fn initial_size(&self) -> u64 {
        0
    }
}

/// The in-memory family (tmpfs/ramfs): the folios are the store. A folio
/// is zero-filled when first written (`write_begin` makes it up to date),
/// so a short copy is committed as far as it got. Dirty folios are not
/// throttled or written back, and never evicted.
#[derive(Debug, Default)]
pub struct MemOps;

impl AddressSpaceOps for MemOps {
    fn read_folio(&self, _m: &AddressSpace, _folio: &mut LockedFolio) -> Result<(), Errno> {
        // A hole reads as zeros; a new folio is zero-filled already.
        Ok(())
    }

    fn write_begin(&self, m: &AddressSpace, pos: u64, _len: usize) -> Result<LockedFolio, Errno> {
        let lf = m.lock_folio(m.index_of(pos));
        if !lf.folio().is_uptodate() {
            lf.mark_uptodate();
        }
        Ok(lf)
    }

    fn write_end(
        &self,
        m: &AddressSpace,
        pos: u64,
        _len: usize,
        copied: usize,
        mut folio: LockedFolio,
    ) -> Result<usize, Errno> {
        if copied > 0 {
            m.folio_mark_dirty(&mut folio);
            m.extend_size(pos + copied as u64);
        }
        Ok(copied)
    }

    fn writepages(&self, _m: &AddressSpace, _folios: &[Arc<Folio>]) -> Result<(), Errno> {
        Ok(())
    }

    fn accounts_dirty(&self) -> bool {
        false
    }
}

/// A block store under a [`BlockOps`] mapping.
pub trait Backing: Send + Sync {
    /// Fill `buf` from byte `pos`; bytes past the store's end read as zero.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Write `buf` at byte `pos`.
    fn write_at(&self, pos: u64, buf: &[u8]) -> Result<(), Errno>;
    /// Make written data durable.
    fn flush(&self) -> Result<(), Errno>;
    /// Cut or grow the store to `size` bytes.
    fn set_size(&self, size: u64) -> Result<(), Errno>;
    /// Its size now.
    fn size(&self) -> u64;
}

/// A regular file (or block device) as a [`Backing`].
#[derive(Debug)]
pub struct FileBacking(pub std::fs::File);

impl Backing for FileBacking {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), Errno> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], pos + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
        Ok(())
    }
    fn write_at(&self, pos: u64, buf: &[u8]) -> Result<(), Errno> {
        use std::os::unix::fs::FileExt;
        self.0.write_all_at(buf, pos).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }
    fn flush(&self) -> Result<(), Errno> {
        self.0.sync_data().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }
    fn set_size(&self, size: u64) -> Result<(), Errno> {
        self.0.set_len(size).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }
    fn size(&self) -> u64 {
        self.0.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

/// The block-backed family: folios are read from and written back to a
/// [`Backing`]. `write_begin` reads a folio the write does not wholly
/// cover; a short copy into a folio that is not up to date commits 0 (a
/// partly written, never-read folio must not be marked up to date), which
/// makes the caller redo the step.
pub struct BlockOps {
    backing: Arc<dyn Backing>,
}

impl BlockOps {
    pub fn new(backing: Arc<dyn Backing>) -> BlockOps {
        BlockOps { backing }
    }

    /// The store.
    pub fn backing(&self) -> &Arc<dyn Backing> {
        &self.backing
    }
}

impl std::fmt::Debug for BlockOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockOps").finish_non_exhaustive()
    }
}

impl AddressSpaceOps for BlockOps {
    fn read_folio(&self, m: &AddressSpace, folio: &mut LockedFolio) -> Result<(), Errno> {
        let pos = folio.folio().index() << m.folio_size().trailing_zeros();
        self.backing.read_at(pos, folio.data_mut())
    }

    fn write_begin(&self, m: &AddressSpace, pos: u64, len: usize) -> Result<LockedFolio, Errno> {
        let mut lf = m.lock_folio(m.index_of(pos));
        lf.folio().wait_writeback();
        let covers_all = pos & (m.folio_size() as u64 - 1) == 0 && len == m.folio_size();
        if !lf.folio().is_uptodate() && !covers_all {
            self.read_folio(m, &mut lf)?;
            lf.mark_uptodate();
        }
        Ok(lf)
    }

    fn write_end(
        &self,
        m: &AddressSpace,
        pos: u64,
        len: usize,
        copied: usize,
        mut folio: LockedFolio,
    ) -> Result<usize, Errno> {
        if !folio.folio().is_uptodate() {
            if copied < len {
                return Ok(0);
            }
            folio.mark_uptodate();
        }
        if copied > 0 {
            m.folio_mark_dirty(&mut folio);
            m.extend_size(pos + copied as u64);
        }
        Ok(copied)
    }

    fn writepages(&self, m: &AddressSpace, folios: &[Arc<Folio>]) -> Result<(), Errno> {
        let fs = m.folio_size();
        let size = m.size();
        let mut result = Ok(());
        for f in folios {
            let pos = f.index() * fs as u64;
            if pos >= size {
                continue;
            }
            let n = (size - pos).min(fs as u64) as usize;
            // SAFETY: writeback (our caller) set WRITEBACK on every folio
            // it hands us and ends it only after we return.
            let data = unsafe { f.data_under_writeback() };
            if let Err(e) = self.backing.write_at(pos, &data[..n]) {
                result = result.and(Err(e));
            }
        }
        result
    }

    fn flush(&self, _m: &AddressSpace) -> Result<(), Errno> {
        self.backing.flush()
    }

    fn truncate(&self, _m: &AddressSpace, new_size: u64) -> Result<(), Errno> {
        self.backing.set_size(new_size)
    }

    fn initial_size(&self) -> u64 {
        self.backing.size()
    }
}
