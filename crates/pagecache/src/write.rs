//! The buffered write loop (`generic_perform_write`) and its sources.
//!
//! ## The loop, per step (today's kernel algorithm, seeds 001/003)
//! 1. throttle dirty memory (reserve one folio's worth, see
//!    [`crate::writeback`]);
//! 2. `write_begin(pos, bytes)`: the destination folio, locked;
//! 3. copy from the source **without waiting on anything**: a source
//!    folio is read only if it can be taken at once (up to date, its lock
//!    free, or it is the destination folio itself); otherwise the copy comes
//!    up short;
//! 4. `write_end(pos, bytes, copied)` commits some or all (unlocks);
//! 5. if it committed 0: halve the step (not below a page); if something
//!    had copied, retry with exactly that many bytes; if nothing copied,
//!    bring the source in *now that no folio is locked* (lock its folio,
//!    read it, copy up to a page into the source's bounce buffer); if that
//!    fails, stop with EFAULT.
//!
//! No folio lock is ever waited for while another is held, so crossed
//! copies (A→B while B→A), a range copied onto itself shifted, or a write
//! whose source is the very folio being written cannot deadlock; and the
//! bounce buffer guarantees progress after every bring-in.

use std::sync::Arc;

use crate::folio::LockedFolio;
use crate::mapping::{AddressSpace, PAGE_SIZE};
use crate::ops::Errno;

/// One piece of a write's source.
#[derive(Clone, Debug)]
pub enum Segment<'a> {
    /// Plain memory.
    Mem(&'a [u8]),
    /// `len` bytes of a mapping from byte `pos` (the mapping being written
    /// may be one of them).
    Cache { mapping: &'a Arc<AddressSpace>, pos: u64, len: usize },
}

impl Segment<'_> {
    fn len(&self) -> usize {
        match self {
            Segment::Mem(b) => b.len(),
            Segment::Cache { len, .. } => *len,
        }
    }
}

/// What `generic_perform_write` copies from: an iterator over segments
/// with a bounce buffer (one page, allocated with the source) for bytes
/// brought in after a failed copy.
pub struct Source<'a> {
    segs: &'a [Segment<'a>],
    /// Current segment and offset in it.
    seg: usize,
    off: usize,
    remaining: usize,
    bounce: Box<[u8]>,
    /// The next `bounce_len` bytes of the stream are in `bounce[bounce_pos..]`.
    bounce_pos: usize,
    bounce_len: usize,
}

impl<'a> Source<'a> {
    /// A source over `segs` (allocates its one-page bounce buffer if a
    /// segment is a cache range).
    pub fn new(segs: &'a [Segment<'a>]) -> Source<'a> {
        let remaining = segs.iter().map(Segment::len).sum();
        let mut s = Source {
            segs,
            seg: 0,
            off: 0,
            remaining,
            // Only cache ranges are ever brought in through the bounce page;
            // a source of plain memory allocates nothing.
            bounce: if segs.iter().any(|s| matches!(s, Segment::Cache { .. })) {
                vec![0u8; PAGE_SIZE].into_boxed_slice()
            } else {
                Box::default()
            },
            bounce_pos: 0,
            bounce_len: 0,
        };
        // The current segment is never an exhausted (or empty) one.
        s.skip_exhausted();
        s
    }

    fn skip_exhausted(&mut self) {
        while self.segs.get(self.seg).is_some_and(|s| s.len() == self.off) {
            self.seg += 1;
            self.off = 0;
        }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Consume `n` bytes.
    fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.remaining);
        n = n.min(self.remaining);
        self.remaining -= n;
        let b = n.min(self.bounce_len);
        self.bounce_pos += b;
        self.bounce_len -= b;
        while n > 0 {
            let Some(seg) = self.segs.get(self.seg) else { break };
            let left = seg.len() - self.off;
            if n < left {
                self.off += n;
                n = 0;
            } else {
                n -= left;
                self.seg += 1;
                self.off = 0;
            }
        }
        self.skip_exhausted();
    }

    /// Copy up to `len` source bytes into `dst` at `dst_off` without
    /// blocking; returns how many were copied (may be short). Does not
    /// consume.
    fn copy_nowait(&mut self, dst: &mut LockedFolio, dst_off: usize, len: usize) -> usize {
        let len = len.min(self.remaining);
        let mut done = 0;
        // The bounce buffer first.
        if self.bounce_len > 0 {
            let n = self.bounce_len.min(len);
            let src = &self.bounce[self.bounce_pos..self.bounce_pos + n];
            dst.data_mut()[dst_off..dst_off + n].copy_from_slice(src);
            done = n;
        }
        let (mut seg, mut off) = (self.seg, self.off);
        // Skip what the bounce covered.
        let mut skip = done;
        while skip > 0 {
            let Some(s) = self.segs.get(seg) else { return done };
            let left = s.len() - off;
            if skip < left {
                off += skip;
                skip = 0;
            } else {
                skip -= left;
                seg += 1;
                off = 0;
            }
        }
        while done < len {
            let Some(s) = self.segs.get(seg) else { break };
            let want = (s.len() - off).min(len - done);
            if want == 0 {
                seg += 1;
                off = 0;
                continue;
            }
            let got = match s {
                Segment::Mem(b) => {
                    dst.data_mut()[dst_off + done..dst_off + done + want]
                        .copy_from_slice(&b[off..off + want]);
                    want
                }
                Segment::Cache { mapping, pos, .. } => {
                    copy_from_cache(mapping, pos + off as u64, dst, dst_off + done, want)
                }
            };
            done += got;
            if got < want {
                break;
            }
            seg += 1;
            off = 0;
        }
        done
    }

    /// With no folio locked: make the next bytes copyable without blocking
    /// (plain memory always is; a cache range is read into the bounce
    /// buffer, up to a page). Returns how many bytes are now available; 0
    /// means the source cannot be brought in.
    fn bring_in(&mut self, len: usize) -> usize {
        if self.bounce_len > 0 {
            return self.bounce_len;
        }
        let Some(s) = self.segs.get(self.seg) else { return 0 };
        match s {
            Segment::Mem(b) => (b.len() - self.off).min(len),
            Segment::Cache { mapping, pos, len: seg_len } => {
                let p = pos + self.off as u64;
                let fs = mapping.folio_size();
                let in_folio = fs - (p & (fs as u64 - 1)) as usize;
                let n = (seg_len - self.off).min(len).min(PAGE_SIZE).min(in_folio);
                let mut lf = mapping.lock_folio(mapping.index_of(p));
                if !lf.folio().is_uptodate() {
                    if mapping.ops().read_folio(mapping, &mut lf).is_err() {
                        return 0;
                    }
                    lf.mark_uptodate();
                }
                let o = (p & (fs as u64 - 1)) as usize;
                self.bounce[..n].copy_from_slice(&lf.data()[o..o + n]);
                self.bounce_pos = 0;
                self.bounce_len = n;
                n
            }
        }
    }
}

/// Copy `len` bytes at `pos` of `src` into the locked `dst` folio at
/// `dst_off`, taking source folios only if that needs no waiting. Returns
/// the bytes copied.
fn copy_from_cache(
    src: &Arc<AddressSpace>,
    pos: u64,
    dst: &mut LockedFolio,
    dst_off: usize,
    len: usize,
) -> usize {
    let fs = src.folio_size();
    let mut done = 0;
    while done < len {
        let p = pos + done as u64;
        let o = (p & (fs as u64 - 1)) as usize;
        let n = (fs - o).min(len - done);
        let Some(f) = src.lookup(src.index_of(p)) else { break };
        if Arc::ptr_eq(&f, dst.folio()) {
            // The folio being written: we hold its lock. Up to date means
            // its bytes are valid; copy within it (ranges may overlap).
            if !f.is_uptodate() {
                break;
            }
            let base = dst.data_mut().as_mut_ptr();
            // SAFETY: both ranges lie inside this folio's buffer (o + n <=
            // fs, dst_off + done + n <= fs), which we hold locked with
            // writeback ended (data_mut waited); ptr::copy allows overlap.
            unsafe { std::ptr::copy(base.add(o), base.add(dst_off + done), n) };
        } else {
            if !f.is_uptodate() {
                break;
            }
            let Some(sl) = f.trylock() else { break };
            if !f.is_uptodate() {
                break;
            }
            dst.data_mut()[dst_off + done..dst_off + done + n].copy_from_slice(&sl.data()[o..o + n]);
        }
        done += n;
        crate::sync::yield_point();
    }
    done
}

/// Write `source` into `mapping` at `pos`, the kernel's way (see the
/// module doc). Returns the bytes written, or the error if none were.
pub fn generic_perform_write(
    mapping: &AddressSpace,
    pos: u64,
    source: &mut Source<'_>,
) -> Result<usize, Errno> {
    let fs = mapping.folio_size();
    let mut chunk = fs;
    let mut pos = pos;
    let mut written = 0usize;
    let mut status: Result<(), Errno> = Ok(());
    // Size changes by truncate wait for this write (taken before any folio
    // lock; only the destination's).
    let _resize = crate::sync::read(&mapping.resize);
    let throttle = Arc::clone(&mapping.cache.throttle);
    let cache = &mapping.cache;
    let accounts = mapping.ops().accounts_dirty();
    while source.remaining() > 0 {
        let offset = (pos & (chunk as u64 - 1)) as usize;
        let mut bytes = (chunk - offset).min(source.remaining());
        if pos.checked_add(bytes as u64).is_none() {
            status = Err(libc::EFBIG);
            break;
        }
        if accounts {
            cache.reserve_step(fs as u64);
        }
        loop {
            let mut folio = match mapping.ops().write_begin(mapping, pos, bytes) {
                Ok(f) => f,
                Err(e) => {
                    if accounts {
                        throttle.unreserve(fs as u64);
                    }
                    status = Err(e);
                    break;
                }
            };
            if accounts {
                folio.reservation = Some((Arc::clone(&throttle), fs as u64));
            }
            let foff = (pos & (fs as u64 - 1)) as usize;
            let copied = source.copy_nowait(&mut folio, foff, bytes);
            // write_end unlocks the folio; an unused reservation goes back
            // with the guard.
            let committed = match mapping.ops().write_end(mapping, pos, bytes, copied, folio) {
                Ok(c) => c.min(copied),
                Err(e) => {
                    status = Err(e);
                    break;
                }
            };
            if committed > 0 {
                source.advance(committed);
                pos += committed as u64;
                written += committed;
                break;
            }
            // A short copy made write_end reject the step.
            if chunk > PAGE_SIZE {
                chunk /= 2;
            }
            if copied > 0 {
                // Retry with exactly what did copy (the step's reservation
                // went back with the folio: take it again).
                bytes = copied;
                if accounts {
                    cache.reserve_step(fs as u64);
                }
                continue;
            }
            // Nothing copied: bring the source in with no folio locked.
            if source.bring_in(bytes) == 0 {
                status = Err(libc::EFAULT);
            }
            break;
        }
        if status.is_err() {
            break;
        }
    }
    match status {
        Err(e) if written == 0 => Err(e),
        _ => Ok(written),
    }
}

/// Write plain memory at `pos` (`pwrite` into the cache).
pub fn write_at(mapping: &AddressSpace, pos: u64, data: &[u8]) -> Result<usize, Errno> {
    let segs = [Segment::Mem(data)];
    generic_perform_write(mapping, pos, &mut Source::new(&segs))
}

/// Copy `len` bytes from `src` at `src_pos` to `dst` at `dst_pos`
/// (`copy_file_range` through the cache), with `memmove` semantics when
/// both are the same mapping and the ranges overlap. The length is clamped
/// to the source's size. Returns the bytes copied.
pub fn copy_range(
    src: &Arc<AddressSpace>,
    src_pos: u64,
    dst: &Arc<AddressSpace>,
    dst_pos: u64,
    len: usize,
) -> Result<usize, Errno> {
    let size = src.size();
    if src_pos >= size {
        return Ok(0);
    }
    let len = len.min((size - src_pos) as usize);
    if len == 0 {
        return Ok(0);
    }
    let overlapping = Arc::ptr_eq(src, dst) && dst_pos > src_pos && dst_pos < src_pos + len as u64;
    if !overlapping {
        // Forward: with dst below src in one mapping, each byte is read
        // before anything is written over it.
        let segs = [Segment::Cache { mapping: src, pos: src_pos, len }];
        return generic_perform_write(dst, dst_pos, &mut Source::new(&segs));
    }
    // Destination above an overlapping source: backward, in pieces no
    // longer than the distance, so no piece reads what an earlier one
    // wrote.
    let dist = (dst_pos - src_pos) as usize;
    if dist < PAGE_SIZE {
        // Pieces of `dist` bytes would cost one write loop per few bytes
        // (a 1-byte shift: one per byte). Instead, page-sized pieces, each
        // read whole into a snapshot before it is written: a piece still
        // reads nothing an earlier (higher) piece wrote.
        let mut snap = [0u8; PAGE_SIZE];
        let mut end = len;
        while end > 0 {
            let start = end.saturating_sub(PAGE_SIZE);
            let n = end - start;
            if src.read(src_pos + start as u64, &mut snap[..n])? < n {
                return Err(libc::EIO);
            }
            if write_at(dst, dst_pos + start as u64, &snap[..n])? < n {
                return Err(libc::EIO);
            }
            end = start;
        }
        return Ok(len);
    }
    let piece = dist.min(crate::mapping::MAX_FOLIO);
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(piece);
        let n = end - start;
        let segs = [Segment::Cache { mapping: src, pos: src_pos + start as u64, len: n }];
        let w = generic_perform_write(dst, dst_pos + start as u64, &mut Source::new(&segs))?;
        if w < n {
            return Err(libc::EIO);
        }
        end = start;
    }
    Ok(len)
}
