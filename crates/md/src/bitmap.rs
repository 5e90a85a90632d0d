//! md's internal write-intent bitmap (`drivers/md/md-bitmap.c`, on-disk
//! version 4): one bit per bitmap chunk of the array's sync space, set on
//! every member before the first write of a chunk reaches any member,
//! cleared lazily once the chunk has been idle, so that after an unclean
//! stop only chunks with their bit set are resynced.
//!
//! ## Responsibility boundary
//! This module owns the bitmap area of every member (the header, md's
//! `bitmap_super_t`, and the bits after it, at `super_offset +
//! bitmap_offset`): the format ([`BitmapHeader`], [`format_area`], used by
//! `create` too), the in-memory state of a running array (per chunk: the
//! writes in flight, the bit as on disk, the clearing stage), and the
//! writes of the area. The write path calls [`Bitmap::start_write`] before
//! its member writes and [`Bitmap::end_write`] after; the sync thread asks
//! [`Bitmap::is_dirty`] to skip clean chunks of a resync, marks synced
//! chunks for clearing, and runs [`Bitmap::daemon_pass`] (md's
//! `bitmap_daemon_work`) every `daemon_sleep`. Superblocks are the
//! metadata manager's; the header's `events` is taken from the freshest
//! member superblock each time the area is written.
//!
//! Sync space: the units of [`crate::sync`] — per-member sectors for
//! raid1/4/5/6, array sectors for raid10 (md's `resync_max_sectors`).
//!
//! ## Synchronization model
//! Per chunk, three atomics: the writes in flight (`counters`), the bit as
//! on disk (`durable`, words of 64 bits) and the clearing stage. A writer
//! increments the counter, then reads the bit (both `SeqCst`); if the bit
//! is set the write may go on at once. Otherwise it takes `io` (a mutex
//! held across the area's write: the only lock here, a leaf below the
//! stripe locks, which are never held while calling in), sets the bits,
//! writes the area to every member in service and flushes them. The
//! daemon clears a bit under `io`, then re-reads the counter (`SeqCst`)
//! and puts the bit back if a writer came meanwhile: a writer and the
//! daemon always see each other (Dekker), so no write runs with its bit
//! clear on disk.
//!
//! While the array is degraded, bits are not cleared (md: the missing
//! member missed those writes).
//!
//! ## Allocation
//! The area image is allocated once; a write allocates nothing beyond
//! what the member I/O does.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::array::{Health, Slots};
use crate::superblock::{Superblock, BITMAP_MAGIC};

/// md's bitmap version with 64-bit `events` (`BITMAP_MAJOR_HI`).
pub const BITMAP_VERSION: u32 = 4;
/// Bytes of the header before the bits.
pub const HEADER_BYTES: usize = 256;
/// md's default `daemon_sleep` (seconds).
pub const DEFAULT_DAEMON_SLEEP: u32 = 5;

/// md's `bitmap_super_t` fields umd writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapHeader {
    /// The array UUID.
    pub uuid: [u8; 16],
    /// `events` (the superblocks' when last written).
    pub events: u64,
    /// `events_cleared`.
    pub events_cleared: u64,
    /// Sync space covered, in sectors.
    pub sync_size: u64,
    /// Bytes of sync space per bit.
    pub chunksize: u32,
    /// Seconds between clearing passes.
    pub daemon_sleep: u32,
}

impl BitmapHeader {
    /// Number of bits (chunks).
    pub fn chunks(&self) -> u64 {
        (self.sync_size * 512).div_ceil(u64::from(self.chunksize.max(512)))
    }

    /// Bytes of the area holding the header and every bit, rounded up to
    /// a sector.
    pub fn area_bytes(&self) -> usize {
        (HEADER_BYTES + self.chunks().div_ceil(8) as usize).div_ceil(512) * 512
    }

    /// Encodes the header into `b[..256]`.
    pub fn encode(&self, b: &mut [u8]) {
        b[..HEADER_BYTES].fill(0);
        b[0..4].copy_from_slice(&BITMAP_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&BITMAP_VERSION.to_le_bytes());
        b[8..24].copy_from_slice(&self.uuid);
        b[24..32].copy_from_slice(&self.events.to_le_bytes());
        b[32..40].copy_from_slice(&self.events_cleared.to_le_bytes());
        b[40..48].copy_from_slice(&self.sync_size.to_le_bytes());
        b[52..56].copy_from_slice(&self.chunksize.to_le_bytes());
        b[56..60].copy_from_slice(&self.daemon_sleep.to_le_bytes());
    }

    /// Decodes a header (version 4, the magic right); `None` otherwise.
    pub fn decode(b: &[u8]) -> Option<BitmapHeader> {
        let s = crate::superblock::BitmapSuper::decode(b)?;
        if s.version != BITMAP_VERSION || s.chunksize < 512 || !s.chunksize.is_power_of_two() {
            return None;
        }
        Some(BitmapHeader {
            uuid: s.uuid,
            events: s.events,
            events_cleared: s.events_cleared,
            sync_size: s.sync_size,
            chunksize: s.chunksize,
            daemon_sleep: s.daemon_sleep.max(1),
        })
    }
}

/// The area of a new array (`create`): the header, then every bit set
/// (`dirty`, the array needs a full resync) or clear, and the bits past
/// the last chunk up to `space` bytes set, as mdadm leaves them.
pub fn format_area(h: &BitmapHeader, dirty: bool, space: usize) -> Vec<u8> {
    let mut b = vec![0xffu8; space.max(h.area_bytes())];
    h.encode(&mut b);
    if !dirty {
        for i in 0..h.chunks() {
            b[HEADER_BYTES + (i / 8) as usize] &= !(1u8 << (i % 8));
        }
    }
    b
}

/// Chooses the bitmap chunk (bytes) for `sync_size` sectors with `space`
/// bytes of area: `want` if given (a power of two, at least 4 KiB), else
/// mdadm's default of 64 MiB; doubled until the bits fit. `None`: `want`
/// does not fit, or no area.
pub fn choose_chunk(sync_size: u64, space: usize, want: Option<u32>) -> Option<u32> {
    let bits_room = (space.checked_sub(HEADER_BYTES)? as u64) * 8;
    if bits_room == 0 {
        return None;
    }
    let fits = |c: u64| (sync_size * 512).div_ceil(c) <= bits_room;
    match want {
        Some(c) if c >= 4096 && c.is_power_of_two() => fits(u64::from(c)).then_some(c),
        Some(_) => None,
        None => {
            let mut c: u64 = 64 << 20;
            while !fits(c) {
                c *= 2;
            }
            u32::try_from(c).ok()
        }
    }
}

/// Counters of a running bitmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BitmapStats {
    /// Area writes that set bits.
    pub set_writes: u64,
    /// Area writes that cleared bits.
    pub clear_writes: u64,
    /// Bits set now (as on disk).
    pub dirty: u64,
}

/// The bitmap of a running array (see the module doc).
pub struct Bitmap {
    header: Mutex<BitmapHeader>,
    chunk_units: u64,
    chunks: u64,
    /// Byte offset of the area on each member (`(super_offset +
    /// bitmap_offset) * 512`; the same on every member of a 1.x array).
    area_offset: u64,
    counters: Box<[AtomicU32]>,
    durable: Box<[AtomicU64]>,
    stage: Box<[AtomicU8]>,
    /// The area image, written under this lock.
    io: Mutex<Vec<u8>>,
    set_writes: AtomicU64,
    clear_writes: AtomicU64,
    last_pass: Mutex<Instant>,
    /// The next area write records `events_cleared` (bits were cleared).
    cleared: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitmap").field("chunks", &self.chunks).field("stats", &self.stats()).finish()
    }
}

/// Clearing stages (md's `NEEDED`/`PENDING` bits of a counter).
const STAGE_NONE: u8 = 0;
const STAGE_IDLE_ONCE: u8 = 1;
const STAGE_IDLE_TWICE: u8 = 2;

impl Bitmap {
    /// The bitmap of an assembled array whose freshest superblock is `sb`,
    /// read from the member `slots` holds in service (the first that
    /// reads). `None` when the array has none (no `BITMAP_OFFSET`).
    /// Errors: a header that is not md's version 4 for this array, or
    /// does not match the array's sync space.
    pub fn load(sb: &Superblock, slots: &Slots, sync_size: u64) -> io::Result<Option<Bitmap>> {
        if !sb.has_feature(crate::superblock::feature::BITMAP_OFFSET) {
            return Ok(None);
        }
        let area_offset = (sb.super_offset as i64 + i64::from(sb.bitmap_offset)) as u64 * 512;
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut last = None;
        for m in slots.members() {
            let mut head = vec![0u8; 512];
            if let Err(e) = m.dev.read_exact_at(&mut head, area_offset) {
                last = Some(e);
                continue;
            }
            let h = BitmapHeader::decode(&head).ok_or_else(|| {
                bad(format!("{}: no md bitmap (version 4) at byte {area_offset}", m.dev.path().display()))
            })?;
            if h.uuid != sb.set_uuid {
                return Err(bad(format!("{}: the bitmap belongs to another array", m.dev.path().display())));
            }
            if h.sync_size != sync_size {
                return Err(bad(format!(
                    "{}: bitmap covers {} sectors, the array {sync_size}",
                    m.dev.path().display(),
                    h.sync_size
                )));
            }
            let mut area = vec![0u8; h.area_bytes()];
            m.dev.read_exact_at(&mut area, area_offset)?;
            // A bitmap older than the superblocks says nothing reliable
            // about the writes since: every chunk counts as dirty (md:
            // "bitmap out of date, forcing full recovery").
            let stale =
                h.events.saturating_add(1) < sb.events && sb.resync_offset != crate::superblock::MAX_SECTOR;
            return Ok(Some(Bitmap::from_area(h, area, area_offset, stale)));
        }
        Err(last.unwrap_or_else(|| bad("no member to read the bitmap from".into())))
    }

    fn from_area(h: BitmapHeader, area: Vec<u8>, area_offset: u64, all_dirty: bool) -> Bitmap {
        let chunks = h.chunks();
        let chunk_units = u64::from(h.chunksize) / 512;
        let words = chunks.div_ceil(64) as usize;
        let durable: Box<[AtomicU64]> = (0..words).map(|_| AtomicU64::new(0)).collect();
        for i in 0..chunks {
            let on = all_dirty || area[HEADER_BYTES + (i / 8) as usize] & (1 << (i % 8)) != 0;
            if on {
                durable[(i / 64) as usize].fetch_or(1 << (i % 64), Ordering::Relaxed);
            }
        }
        Bitmap {
            chunk_units,
            chunks,
            area_offset,
            counters: (0..chunks).map(|_| AtomicU32::new(0)).collect(),
            durable,
            stage: (0..chunks).map(|_| AtomicU8::new(STAGE_NONE)).collect(),
            io: Mutex::new(area),
            set_writes: AtomicU64::new(0),
            clear_writes: AtomicU64::new(0),
            last_pass: Mutex::new(Instant::now()),
            cleared: std::sync::atomic::AtomicBool::new(false),
            header: Mutex::new(h),
        }
    }

    /// `events_cleared`: the events when bits were last cleared (a member
    /// whose superblock is not older can be re-added from the bitmap).
    pub fn events_cleared(&self) -> u64 {
        self.header.lock().map_or(u64::MAX, |h| h.events_cleared)
    }

    /// Sync units per bit.
    pub fn chunk_units(&self) -> u64 {
        self.chunk_units
    }

    /// Number of bits.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// `daemon_sleep` in seconds.
    pub fn daemon_sleep(&self) -> u32 {
        self.header.lock().map_or(DEFAULT_DAEMON_SLEEP, |h| h.daemon_sleep)
    }

    /// Sets `daemon_sleep` (seconds, at least 1; md's `bitmap/time_base`).
    pub fn set_daemon_sleep(&self, secs: u32) {
        if let Ok(mut h) = self.header.lock() {
            h.daemon_sleep = secs.max(1);
        }
    }

    fn bit(&self, c: u64) -> bool {
        self.durable[(c / 64) as usize].load(Ordering::SeqCst) & (1 << (c % 64)) != 0
    }

    fn chunk_range(&self, start: u64, end: u64) -> std::ops::Range<u64> {
        let a = (start / self.chunk_units).min(self.chunks);
        let b = end.div_ceil(self.chunk_units).min(self.chunks);
        a..b
    }

    /// Whether any bit of sync units `[start, end)` is set.
    pub fn is_dirty(&self, start: u64, end: u64) -> bool {
        self.chunk_range(start, end).any(|c| self.bit(c))
    }

    /// Counters.
    pub fn stats(&self) -> BitmapStats {
        BitmapStats {
            set_writes: self.set_writes.load(Ordering::Relaxed),
            clear_writes: self.clear_writes.load(Ordering::Relaxed),
            dirty: (0..self.chunks).filter(|&c| self.bit(c)).count() as u64,
        }
    }

    /// md's `md_bitmap_startwrite` for sync units `[start, end)`: counts
    /// the write in, and makes sure every chunk's bit is set on every
    /// member in service before returning. Call [`end_write`](Self::end_write)
    /// with the same range afterwards, whatever happened.
    ///
    /// Called under: no lock of the array (not a stripe lock).
    pub fn start_write(&self, slots: &Slots, health: &Health, start: u64, end: u64) -> io::Result<()> {
        let range = self.chunk_range(start, end);
        let mut missing = false;
        for c in range.clone() {
            self.counters[c as usize].fetch_add(1, Ordering::SeqCst);
            self.stage[c as usize].store(STAGE_NONE, Ordering::Relaxed);
            missing |= !self.bit(c);
        }
        if !missing {
            return Ok(());
        }
        let mut area = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for c in range {
            if !self.bit(c) {
                self.durable[(c / 64) as usize].fetch_or(1 << (c % 64), Ordering::SeqCst);
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        self.set_writes.fetch_add(1, Ordering::Relaxed);
        self.write_area(&mut area, slots, health)
    }

    /// md's `md_bitmap_endwrite`: the write of `[start, end)` is done. A
    /// chunk with no write left becomes a candidate for clearing — not
    /// while the array is `degraded` (the missing member missed it).
    pub fn end_write(&self, start: u64, end: u64, degraded: bool) {
        for c in self.chunk_range(start, end) {
            let left = self.counters[c as usize].fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
            if left == 0 && !degraded {
                self.stage[c as usize].store(STAGE_IDLE_ONCE, Ordering::Relaxed);
            }
        }
    }

    /// After a resync or recovery pass over `[start, end)`: its chunks may
    /// be cleared (when idle).
    pub fn synced(&self, start: u64, end: u64) {
        for c in self.chunk_range(start, end) {
            if self.counters[c as usize].load(Ordering::SeqCst) == 0 {
                self.stage[c as usize].store(STAGE_IDLE_ONCE, Ordering::Relaxed);
            }
        }
    }

    /// md's `md_bitmap_flush` when an array stops: with no write in
    /// flight, the clearing passes run now (forced), so every chunk waiting
    /// to be cleared is cleared (the members flushed first) and a clean stop
    /// leaves a clean bitmap. Chunks found dirty and not synced since stay
    /// set, and nothing is cleared while `degraded`.
    ///
    /// Called under: no lock; no array write in flight.
    pub fn flush_idle(&self, slots: &Slots, health: &Health, degraded: bool) -> io::Result<()> {
        for _ in 0..2 {
            self.daemon_pass(slots, health, degraded, true)?;
        }
        Ok(())
    }

    /// md's `bitmap_daemon_work`, at most once per `daemon_sleep` unless
    /// `force`: a chunk idle for two passes has its bit cleared, and the
    /// area is written if a bit changed. Nothing is cleared while
    /// `degraded`.
    pub fn daemon_pass(&self, slots: &Slots, health: &Health, degraded: bool, force: bool) -> io::Result<()> {
        {
            let mut last = self.last_pass.lock().unwrap_or_else(|p| p.into_inner());
            let period = Duration::from_secs(u64::from(self.daemon_sleep()));
            if !force && last.elapsed() < period {
                return Ok(());
            }
            *last = Instant::now();
        }
        if degraded {
            return Ok(());
        }
        let mut area = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for c in 0..self.chunks {
            let i = c as usize;
            match self.stage[i].load(Ordering::Relaxed) {
                STAGE_IDLE_ONCE => {
                    self.stage[i].store(STAGE_IDLE_TWICE, Ordering::Relaxed);
                }
                STAGE_IDLE_TWICE => {
                    self.stage[i].store(STAGE_NONE, Ordering::Relaxed);
                    let mask = 1u64 << (c % 64);
                    let w = &self.durable[(c / 64) as usize];
                    if w.load(Ordering::SeqCst) & mask == 0 {
                        continue;
                    }
                    w.fetch_and(!mask, Ordering::SeqCst);
                    if self.counters[i].load(Ordering::SeqCst) != 0 {
                        // A writer came: the bit stays.
                        w.fetch_or(mask, Ordering::SeqCst);
                    } else {
                        changed = true;
                    }
                }
                _ => {}
            }
        }
        if !changed {
            return Ok(());
        }
        self.clear_writes.fetch_add(1, Ordering::Relaxed);
        self.cleared.store(true, Ordering::Relaxed);
        // The data the cleared bits covered must be on disk before the
        // bits say so (md writes bitmap pages with a preflush).
        for slot in 0..slots.len() {
            if !slots.takes_writes(slot) {
                continue;
            }
            if let Some(m) = slots.get(slot) {
                if let Err(e) = m.dev.flush() {
                    if !health.fail(slot, true) {
                        // The bits on disk stay set: the safe side.
                        drop(area);
                        return Err(e);
                    }
                }
            }
        }
        self.write_area(&mut area, slots, health)
    }

    /// Writes the area image (bits from `durable`, `events` from the
    /// freshest superblock) to every member in service and flushes it; a
    /// member that fails is failed (md_error). Fails only if no member
    /// took it.
    ///
    /// Called under: `io`.
    fn write_area(&self, area: &mut [u8], slots: &Slots, health: &Health) -> io::Result<()> {
        for c in 0..self.chunks {
            let byte = &mut area[HEADER_BYTES + (c / 8) as usize];
            if self.bit(c) {
                *byte |= 1 << (c % 8);
            } else {
                *byte &= !(1 << (c % 8));
            }
        }
        let events = freshest_events(slots);
        if let Ok(mut h) = self.header.lock() {
            if let Some(e) = events {
                h.events = h.events.max(e);
            }
            // md's events_cleared: the events when bits were last cleared.
            if self.cleared.swap(false, Ordering::Relaxed) {
                h.events_cleared = h.events;
            }
            h.encode(area);
        }
        let mut wrote = 0;
        let mut first_err = None;
        for slot in 0..slots.len() {
            if !slots.takes_writes(slot) {
                continue;
            }
            let Some(m) = slots.get(slot) else { continue };
            let r = m.dev.write_all_at(area, self.area_offset).and_then(|()| m.dev.flush());
            match r {
                Ok(()) => wrote += 1,
                Err(e) => {
                    if !health.fail(slot, true) {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) if wrote == 0 => Err(e),
            _ => Ok(()),
        }
    }
}

/// The highest `events` among the members' superblocks (read from disk).
fn freshest_events(slots: &Slots) -> Option<u64> {
    slots
        .members()
        .filter_map(|m| {
            let mut b = [0u8; 512];
            m.dev.read_exact_at(&mut b, m.sb.super_offset * 512).ok()?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == crate::superblock::MD_SB_MAGIC)
                .then(|| u64::from_le_bytes([b[200], b[201], b[202], b[203], b[204], b[205], b[206], b[207]]))
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_sizes() {
        let h = BitmapHeader {
            uuid: [7; 16],
            events: 15,
            events_cleared: 15,
            sync_size: 14336,
            chunksize: 64 << 20,
            daemon_sleep: 5,
        };
        assert_eq!(h.chunks(), 1);
        assert_eq!(h.area_bytes(), 512);
        let area = format_area(&h, false, 4096);
        assert_eq!(area.len(), 4096);
        assert_eq!(BitmapHeader::decode(&area), Some(h.clone()));
        // mdadm's layout: bit 0 clear, the rest of the area set.
        assert_eq!(area[HEADER_BYTES], 0xfe);
        assert!(area[HEADER_BYTES + 1..].iter().all(|&b| b == 0xff));
        let dirty = format_area(&h, true, 4096);
        assert_eq!(dirty[HEADER_BYTES], 0xff);
    }

    #[test]
    fn chunk_choice() {
        // 4 KiB of area: 3840 bytes of bits.
        assert_eq!(choose_chunk(14336, 4096, None), Some(64 << 20));
        assert_eq!(choose_chunk(14336, 4096, Some(65536)), Some(65536));
        assert_eq!(choose_chunk(14336, 4096, Some(1000)), None);
        // 1 TiB of sync space in 4 KiB: 1 TiB / 30720 bits → 64 MiB is enough.
        assert_eq!(choose_chunk(2 << 30, 4096, None), Some(64 << 20));
        assert_eq!(choose_chunk(14336, 200, None), None);
    }
}
