//! An assembled array: the personality plus the members in their slots,
//! and md's member-failure rules (`md_error`, the `Blocked` wait).
//!
//! ## Member failure (md's protocol, external metadata)
//! A member write (or flush) that fails with an I/O error calls
//! [`Health::fail`] (md's `md_error`): the member becomes `faulty` and
//! `blocked` ([`flags`]), stops being read or written (it counts as
//! missing), and the array's [`ArrayEvents`] sink (the attribute tree) is
//! told: md sets "change pending", so `array_state` shows `write-pending`,
//! and notifies the member's `state`. The write that saw the error, and
//! every write that completes while any member is blocked, waits in
//! [`ArrayEvents::wait_unblocked`] until the metadata manager has recorded
//! the failure in the survivors' superblocks and stored `-blocked`: no
//! write that needed the failed member is acknowledged before the
//! metadata says so. A failure the level cannot survive (the array would
//! lose data) leaves the member in place (reads it can still serve go on,
//! as md keeps the last mirror), marks the array broken, and fails the
//! write with `EIO`.
//!
//! ## Read errors
//! A member read that fails with an I/O error is answered from redundancy
//! ([`Array::read_at`], [`crate::repair`]): the read is retried with the
//! failing member left out, so the personality takes a mirror or rebuilds
//! from parity; the good bytes are then written back over the member's
//! failed range and read again (md's `fix_read_error`), and the member's
//! [`SlotMember::read_errors`] (`dev-*/errors`) rises by one. Past md's
//! limit ([`crate::repair::MAX_CORRECTED_READ_ERRORS`]), or when the
//! rewrite or its re-read fails, the member is failed as above (a
//! failure the level cannot survive leaves it in place, and the read
//! still returns the good bytes). A read-only array counts but does not
//! rewrite; raid0 has nothing to answer from. A read that no combination
//! of members can answer fails with `EIO`, never with zeros or stale
//! bytes, and fails no member. On a writable raid4/5/6 array the retry and
//! the rewrite of a row run under the row's stripe lock.
//!
//! ## Synchronization model
//! Member flags are atomics read lock-free by the I/O paths; changes to
//! them go through `Health::lock` (a leaf mutex held for the decision and
//! the flag update only; the sink is called after it is released).

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use blockio::{Access, Member};

use crate::fanout::{WriteJob, WritePool};
use crate::personality::{MemberRead, Personality, StripeMap, WritePiece};
use crate::repair::{eio, Excluding, Failure, Repair, Tally};
use crate::stripe::{Ctx, StripeCache, StripeCounts};
use crate::superblock::Superblock;
use crate::sync::SyncCtl;

/// A member placed in its slot.
#[derive(Debug)]
pub struct SlotMember {
    /// The open member.
    pub dev: Arc<Member>,
    /// Byte offset of the data area on the member (`data_offset * 512`).
    pub data_start: u64,
    /// Bytes of the data area that may be read (`data_size * 512`).
    pub data_bytes: u64,
    /// The member's own superblock.
    pub sb: Superblock,
    /// md's member flags ([`flags`]).
    pub flags: AtomicU32,
    /// The slot it holds ([`NO_SLOT`] for a spare or a removed member).
    pub slot: AtomicUsize,
    /// Its id in the array ([`Slots::by_id`]).
    pub id: AtomicUsize,
    /// md's `saved_raid_disk`: the slot a member coming back (re-add) held
    /// before; placed there again it is recovered from the write-intent
    /// bitmap only ([`NO_SLOT`]: a new member).
    pub saved_slot: AtomicUsize,
    /// Member sectors rebuilt so far while it is recovered (md's
    /// `recovery_offset`, `dev-*/recovery_start`).
    pub recovery_offset: AtomicU64,
    /// Read errors corrected on this member (`dev-*/errors`; see the
    /// module doc's "Read errors"). Stores through `errors` set it.
    pub read_errors: AtomicU32,
}

/// [`SlotMember::slot`] of a member in no slot.
pub const NO_SLOT: usize = usize::MAX;

/// md's per-member flags (`rdev->flags`), the ones umd keeps.
pub mod flags {
    /// Failed: neither read nor written; counts as missing.
    pub const FAULTY: u32 = 1;
    /// Writes wait until the manager has recorded the failure and stored
    /// `-blocked`.
    pub const BLOCKED: u32 = 2;
    /// A write to the member failed (`write_error`).
    pub const WRITE_ERROR: u32 = 4;
    /// Taken out of the array (`remove`): the slot is empty.
    pub const REMOVED: u32 = 8;
    /// Added, in no slot yet (`spare`).
    pub const SPARE: u32 = 16;
    /// In a slot, not in sync: written, not read, rebuilt by recovery.
    pub const RECOVERING: u32 = 32;
    /// Being recovered after a re-add: only chunks the write-intent bitmap
    /// marks are rebuilt (the member missed only those writes).
    pub const BITMAP_RECOVERY: u32 = 64;
}

impl SlotMember {
    /// A member in service (no flags).
    pub fn new(dev: Arc<Member>, sb: Superblock) -> SlotMember {
        SlotMember {
            data_start: sb.data_offset * 512,
            data_bytes: sb.data_size * 512,
            dev,
            sb,
            flags: AtomicU32::new(0),
            read_errors: AtomicU32::new(0),
            slot: AtomicUsize::new(NO_SLOT),
            id: AtomicUsize::new(NO_SLOT),
            saved_slot: AtomicUsize::new(NO_SLOT),
            recovery_offset: AtomicU64::new(0),
        }
    }

    /// The member's flags.
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }
}

/// Members added while the array runs (`new_dev`), over the array's
/// life: a limit, like every table here (re-assemble to add more).
pub const MAX_ADDED: usize = 8;

/// [`Slots::holder`] value of a slot with no member.
const EMPTY: usize = usize::MAX;
/// [`Slots::holder`] value of a slot held by its assembled member.
const ASSEMBLED: usize = usize::MAX - 1;

/// The array's members: the ones assembled, by slot, and the ones added
/// while it runs (spares, then members being recovered). Every member
/// stays allocated for the array's life, so the I/O paths hold plain
/// references; which member holds a slot is an atomic per slot, changed
/// only under [`Health`]'s lock.
#[derive(Debug)]
pub struct Slots {
    assembled: Vec<Option<SlotMember>>,
    added: Box<[OnceLock<SlotMember>]>,
    /// Entries of `added` taken.
    added_len: AtomicUsize,
    /// By slot: [`EMPTY`], [`ASSEMBLED`] or an index into `added`.
    holder: Box<[AtomicUsize]>,
}

impl MemberRead for Slots {
    /// A member holds `slot`, has not failed and is in sync (a member
    /// being recovered is written, not read).
    fn is_present(&self, slot: usize) -> bool {
        self.get(slot).is_some_and(|m| m.flags() & (flags::FAULTY | flags::RECOVERING) == 0)
    }

    fn read_at(&self, slot: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let Some(m) = self.get(slot) else {
            return Err(io::Error::other(format!("slot {slot} has no member")));
        };
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > m.data_bytes) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "read of {} bytes at {offset} beyond the data area ({} bytes) of {}",
                    buf.len(),
                    m.data_bytes,
                    m.dev.path().display()
                ),
            ));
        }
        m.dev.read_exact_at(buf, m.data_start + offset)
    }
}

impl Slots {
    /// The assembled members, by slot (`None`: missing).
    pub fn new(assembled: Vec<Option<SlotMember>>) -> Slots {
        let holder =
            assembled.iter().map(|m| AtomicUsize::new(if m.is_some() { ASSEMBLED } else { EMPTY })).collect();
        for (slot, m) in assembled.iter().enumerate() {
            if let Some(m) = m {
                m.slot.store(slot, Ordering::Release);
                m.id.store(slot, Ordering::Release);
            }
        }
        Slots {
            assembled,
            added: (0..MAX_ADDED).map(|_| OnceLock::new()).collect(),
            added_len: AtomicUsize::new(0),
            holder,
        }
    }

    /// Number of slots (`raid_disks`).
    pub fn len(&self) -> usize {
        self.holder.len()
    }

    /// Whether the array has no slots (never, for an assembled array).
    pub fn is_empty(&self) -> bool {
        self.holder.is_empty()
    }

    /// The member holding `slot` (whatever its flags).
    pub fn get(&self, slot: usize) -> Option<&SlotMember> {
        match self.holder.get(slot)?.load(Ordering::Acquire) {
            EMPTY => None,
            ASSEMBLED => self.assembled.get(slot)?.as_ref(),
            i => self.added.get(i)?.get(),
        }
    }

    /// Every slot's member, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = Option<&SlotMember>> {
        (0..self.len()).map(|s| self.get(s))
    }

    /// Every member holding a slot.
    pub fn members(&self) -> impl Iterator<Item = &SlotMember> {
        self.iter().flatten()
    }

    /// A member by id: assembled slot `id` (`id < len()`), else added
    /// member `id - len()`; whether or not it holds a slot now.
    pub fn by_id(&self, id: usize) -> Option<&SlotMember> {
        match id.checked_sub(self.len()) {
            None => self.assembled.get(id)?.as_ref(),
            Some(i) => self.added.get(i)?.get(),
        }
    }

    /// Every member ever part of the array (assembled or added), with its
    /// id ([`Slots::by_id`]).
    pub fn all(&self) -> impl Iterator<Item = (usize, &SlotMember)> {
        let n = self.len();
        let assembled = self.assembled.iter().enumerate().filter_map(|(i, m)| m.as_ref().map(|m| (i, m)));
        let added = self.added.iter().enumerate().filter_map(move |(i, m)| m.get().map(|m| (n + i, m)));
        assembled.chain(added)
    }

    /// Empties `slot` before the array is made (tests, tools).
    pub fn clear(&mut self, slot: usize) {
        if let Some(h) = self.holder.get(slot) {
            h.store(EMPTY, Ordering::Release);
        }
    }

    /// The member in `slot` if it is in service (present, not faulty, in
    /// sync).
    pub fn in_service(&self, slot: usize) -> Option<&SlotMember> {
        self.get(slot).filter(|m| m.flags() & (flags::FAULTY | flags::RECOVERING) == 0)
    }

    /// Whether writes for `slot` go to its member: present and not
    /// faulty (a member being recovered takes writes).
    pub fn takes_writes(&self, slot: usize) -> bool {
        self.get(slot).is_some_and(|m| m.flags() & flags::FAULTY == 0)
    }

    /// Slots with no member in service: md's `degraded`.
    pub fn missing(&self) -> usize {
        (0..self.len()).filter(|&s| self.in_service(s).is_none()).count()
    }

    /// Members whose writes wait for the manager (`blocked`).
    pub fn blocked(&self) -> usize {
        self.members().filter(|m| m.flags() & flags::BLOCKED != 0).count()
    }

    /// Slots whose member is being recovered.
    pub fn recovering(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&s| self.get(s).is_some_and(|m| m.flags() & flags::RECOVERING != 0))
    }

    /// Writes all of `data` at `offset` of `slot`'s data area, refusing
    /// writes outside the data area.
    pub fn write_at(&self, slot: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        let Some(m) = self.get(slot) else {
            return Err(io::Error::other(format!("slot {slot} has no member")));
        };
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > m.data_bytes) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "write of {} bytes at {offset} beyond the data area ({} bytes) of {}",
                    data.len(),
                    m.data_bytes,
                    m.dev.path().display()
                ),
            ));
        }
        m.dev.write_all_at(data, m.data_start + offset)
    }
}

/// What the array's owner does on md's member events: the attribute tree
/// implements it (md's "change pending", the notifications, the wait for
/// `-blocked`, member directories). Members are named by id
/// ([`Slots::by_id`]). Called with no array lock held.
pub trait ArrayEvents: Send + Sync {
    /// Member `id` was marked faulty (and blocked, if failures block).
    fn member_failed(&self, id: usize);
    /// Member `id`'s flags changed by a store (`blocked`, …), or it
    /// finished recovery.
    fn member_changed(&self, id: usize);
    /// Member `id` was taken out of the array (`remove`); it held `slot`.
    fn member_removed(&self, id: usize, slot: Option<usize>);
    /// Member `id` (a spare) now holds `slot` and is being recovered.
    fn member_placed(&self, id: usize, slot: usize);
    /// A failure the level cannot survive: the array is broken.
    fn broken(&self);
    /// Blocks until no member is blocked. Fails if the array stops or
    /// breaks meanwhile (the write is then not acknowledged).
    fn wait_unblocked(&self, slots: &Slots) -> io::Result<()>;
}

/// md's member-failure state of an array (see the module doc); shared
/// with the attribute tree.
pub struct Health {
    slots: Arc<Slots>,
    personality: Arc<dyn Personality>,
    /// Serialises flag and slot changes (leaf).
    lock: Mutex<()>,
    events: OnceLock<(Arc<dyn ArrayEvents>, bool)>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flags: Vec<Option<u32>> = self.slots.iter().map(|m| m.map(SlotMember::flags)).collect();
        f.debug_struct("Health").field("flags", &flags).finish()
    }
}

impl Health {
    /// Connects the events sink; `blocks`: failures block writes until a
    /// manager stores `-blocked` (read-write arrays with a manager). Only
    /// the first call counts.
    pub fn set_events(&self, events: Arc<dyn ArrayEvents>, blocks: bool) {
        let _ = self.events.set((events, blocks));
    }

    fn events(&self) -> Option<&Arc<dyn ArrayEvents>> {
        self.events.get().map(|(e, _)| e)
    }

    /// The members.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// `slot`'s member's flags (`None`: no member in the slot).
    pub fn flags(&self, slot: usize) -> Option<u32> {
        self.slots.get(slot).map(SlotMember::flags)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// md's `md_error` on the member in `slot` (an I/O error): marks it
    /// faulty (and blocked when failures block). Returns whether the
    /// member is now out of service: `false` when the slot is empty or the
    /// array cannot lose the member (it is kept, the array is marked
    /// broken, and the caller's I/O fails).
    ///
    /// Called under: no array lock (a stripe lock is fine).
    pub fn fail(&self, slot: usize, write_error: bool) -> bool {
        let Some(m) = self.slots.get(slot) else { return false };
        self.fail_member(m, write_error, true)
    }

    /// md's `faulty` store on member `id`'s `state`: as [`fail`](Self::fail),
    /// except that a member the array cannot lose is refused (`false`)
    /// and nothing changes. (md marks the array broken here too; umd
    /// keeps a refused request harmless.) A spare is simply marked faulty.
    pub fn fail_request(&self, id: usize) -> bool {
        let Some(m) = self.slots.by_id(id) else { return false };
        self.fail_member(m, false, false)
    }

    fn fail_member(&self, m: &SlotMember, write_error: bool, io_error: bool) -> bool {
        let extra = if write_error { flags::WRITE_ERROR } else { 0 };
        let guard = self.lock();
        let f = m.flags();
        if f & flags::REMOVED != 0 {
            return false;
        }
        if f & flags::FAULTY != 0 {
            m.flags.fetch_or(extra, Ordering::AcqRel);
            return true;
        }
        let slot = m.slot.load(Ordering::Acquire);
        // A spare or a member being recovered holds no data the array
        // needs: losing it never breaks the array.
        if slot != NO_SLOT && f & flags::RECOVERING == 0 {
            let present: Vec<bool> =
                (0..self.slots.len()).map(|s| s != slot && self.slots.is_present(s)).collect();
            if !self.personality.readable_with(&present) {
                drop(guard);
                if io_error {
                    if let Some(e) = self.events() {
                        e.broken();
                    }
                }
                return false;
            }
        }
        let blocks = slot != NO_SLOT && self.events.get().is_some_and(|(_, b)| *b);
        let blocked = if blocks { flags::BLOCKED } else { 0 };
        m.flags.fetch_or(flags::FAULTY | blocked | extra, Ordering::AcqRel);
        let id = m.id.load(Ordering::Acquire);
        drop(guard);
        if let Some(e) = self.events() {
            e.member_failed(id);
        }
        true
    }

    /// md's `blocked` / `-blocked` stores on member `id`'s `state`.
    pub fn set_blocked(&self, id: usize, on: bool) -> Result<(), i32> {
        let Some(m) = self.slots.by_id(id) else { return Err(libc::ENODEV) };
        {
            let _g = self.lock();
            if m.flags() & flags::REMOVED != 0 {
                return Err(libc::ENODEV);
            }
            if on {
                m.flags.fetch_or(flags::BLOCKED, Ordering::AcqRel);
            } else {
                m.flags.fetch_and(!flags::BLOCKED, Ordering::AcqRel);
            }
        }
        if let Some(e) = self.events() {
            e.member_changed(id);
        }
        Ok(())
    }

    /// md's `remove` store on member `id`: takes a faulty, unblocked
    /// member out of its slot, or a spare out of the array (`EBUSY` for a
    /// member in service or still blocked, as md). Its file stays open
    /// until the array is dropped.
    pub fn remove(&self, id: usize) -> Result<(), i32> {
        let Some(m) = self.slots.by_id(id) else { return Err(libc::ENODEV) };
        let slot = {
            let _g = self.lock();
            let f = m.flags();
            if f & flags::REMOVED != 0 {
                return Err(libc::ENODEV);
            }
            let slot = m.slot.load(Ordering::Acquire);
            let spare = slot == NO_SLOT;
            if (!spare && f & flags::FAULTY == 0) || f & flags::BLOCKED != 0 {
                return Err(libc::EBUSY);
            }
            if !spare {
                if let Some(h) = self.slots.holder.get(slot) {
                    h.store(EMPTY, Ordering::Release);
                }
                m.slot.store(NO_SLOT, Ordering::Release);
            }
            m.flags.fetch_or(flags::REMOVED, Ordering::AcqRel);
            (!spare).then_some(slot)
        };
        if let Some(e) = self.events() {
            e.member_removed(id, slot);
        }
        Ok(())
    }

    /// Adds `m` as a spare (md's `new_dev`); returns its id. `ENOSPC`
    /// past [`MAX_ADDED`] members added over the array's life.
    pub fn add(&self, m: SlotMember) -> Result<usize, i32> {
        let _g = self.lock();
        let i = self.slots.added_len.load(Ordering::Acquire);
        if i >= MAX_ADDED {
            return Err(libc::ENOSPC);
        }
        let id = self.slots.len() + i;
        m.id.store(id, Ordering::Release);
        m.slot.store(NO_SLOT, Ordering::Release);
        m.flags.store(flags::SPARE, Ordering::Release);
        self.slots.added[i].set(m).map_err(|_| libc::EBUSY)?;
        self.slots.added_len.store(i + 1, Ordering::Release);
        Ok(id)
    }

    /// md's `slot` store on a spare: it takes empty `slot` and is
    /// recovered from there (`EBUSY`: not a spare, or the slot is held;
    /// `EINVAL`: no such slot).
    pub fn place(&self, id: usize, slot: usize) -> Result<(), i32> {
        let Some(m) = self.slots.by_id(id) else { return Err(libc::ENODEV) };
        let index = id.checked_sub(self.slots.len()).ok_or(libc::EBUSY)?;
        {
            let _g = self.lock();
            let h = self.slots.holder.get(slot).ok_or(libc::EINVAL)?;
            if m.flags() != flags::SPARE || h.load(Ordering::Acquire) != EMPTY {
                return Err(libc::EBUSY);
            }
            m.recovery_offset.store(0, Ordering::Release);
            m.slot.store(slot, Ordering::Release);
            let readd = m.saved_slot.load(Ordering::Acquire) == slot;
            m.flags
                .store(flags::RECOVERING | if readd { flags::BITMAP_RECOVERY } else { 0 }, Ordering::Release);
            h.store(index, Ordering::Release);
        }
        if let Some(e) = self.events() {
            e.member_placed(id, slot);
        }
        Ok(())
    }

    /// Recovery of the member in `slot` finished: it is in sync.
    pub fn recovered(&self, slot: usize) {
        let Some(m) = self.slots.get(slot) else { return };
        {
            let _g = self.lock();
            if m.flags() & flags::FAULTY != 0 {
                return;
            }
            m.flags.fetch_and(!(flags::RECOVERING | flags::BITMAP_RECOVERY), Ordering::AcqRel);
        }
        if let Some(e) = self.events() {
            e.member_changed(m.id.load(Ordering::Acquire));
        }
    }

    /// Returns once no member is blocked (at once without a manager).
    pub fn wait_unblocked(&self) -> io::Result<()> {
        if self.slots.blocked() == 0 {
            return Ok(());
        }
        match self.events() {
            Some(e) => e.wait_unblocked(&self.slots),
            None => Ok(()),
        }
    }

    /// What a failed member I/O does: an I/O error fails the member
    /// (absorbed: `true`); a request outside the data area is a bug and
    /// fails the I/O.
    pub(crate) fn absorb(&self, slot: usize, e: &io::Error) -> bool {
        e.kind() != io::ErrorKind::InvalidInput && self.fail(slot, true)
    }
}

/// md's `new_dev` for a running array: opens the device or image file at
/// `path` read-write as a member of the array whose superblock is
/// `template`, with the array's data offset and all the space after it.
/// A member that belonged to this array (its superblock names the array,
/// it is in sync, and — md's rule — its `events` are not older than the
/// bitmap's `events_cleared`) is marked for re-add to its old slot
/// ([`SlotMember::saved_slot`]). `ENOSPC`: too small.
pub fn spare_from_path(
    path: &std::path::Path,
    template: &Superblock,
    bitmap: Option<&crate::bitmap::Bitmap>,
) -> Result<SlotMember, i32> {
    spare_with_faults(path, template, bitmap, None)
}

/// [`spare_from_path`], the member's I/O going through `faults` (tests).
pub fn spare_with_faults(
    path: &std::path::Path,
    template: &Superblock,
    bitmap: Option<&crate::bitmap::Bitmap>,
    faults: Option<Arc<blockio::fault::Faults>>,
) -> Result<SlotMember, i32> {
    let dev = Member::open_with(
        path,
        &blockio::MemberOptions { access: Access::ReadWrite, direct: blockio::Direct::Never, faults },
    )
    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let sectors = dev.size() / 512;
    let mut sb = template.clone();
    if sectors < sb.data_offset + sb.size {
        return Err(libc::ENOSPC);
    }
    sb.data_size = sectors - sb.data_offset;
    sb.recovery_offset = 0;
    let saved = match (crate::superblock::load(&dev, None, true), bitmap) {
        (Ok(f), Some(bm))
            if f.sb.set_uuid == template.set_uuid
                && f.sb.data_offset == template.data_offset
                && !f.sb.has_feature(crate::superblock::feature::RECOVERY_OFFSET)
                && usize::from(f.sb.role()) < template.raid_disks as usize
                && f.sb.events >= bm.events_cleared() =>
        {
            usize::from(f.sb.role())
        }
        _ => NO_SLOT,
    };
    let m = SlotMember::new(Arc::new(dev), sb);
    m.saved_slot.store(saved, Ordering::Release);
    Ok(m)
}

/// An assembled array.
#[derive(Debug)]
pub struct Array {
    /// The authoritative (freshest) superblock.
    pub sb: Superblock,
    /// The personality serving reads.
    pub personality: Arc<dyn Personality>,
    /// The members by slot.
    pub slots: Arc<Slots>,
    /// Member failures.
    health: Arc<Health>,
    /// Resync, check, repair (md's sync thread's state).
    sync: Arc<SyncCtl>,
    /// The write-intent bitmap, if the array has one.
    bitmap: OnceLock<Arc<crate::bitmap::Bitmap>>,
    /// The write side, made at the first write.
    writer: OnceLock<Writer>,
}

/// What writes need: the member write fan-out and, for parity levels, the
/// stripe cache.
#[derive(Debug)]
struct Writer {
    pool: WritePool,
    stripes: Option<StripeCache>,
    /// Mirror levels: write-window locks ([`crate::sync::MIRROR_WINDOW`]
    /// of the array each, hashed): writes take the windows they touch
    /// shared, a sync step takes its window exclusively.
    windows: Box<[RwLock<()>]>,
}

/// Write-window locks of a mirror array.
const WINDOW_LOCKS: usize = 256;

impl Array {
    /// An array of `slots` laid out by `personality`.
    pub fn new(sb: Superblock, personality: impl Into<Arc<dyn Personality>>, slots: Slots) -> Array {
        let personality = personality.into();
        let slots = Arc::new(slots);
        let health = Arc::new(Health {
            slots: Arc::clone(&slots),
            personality: Arc::clone(&personality),
            lock: Mutex::new(()),
            events: OnceLock::new(),
        });
        let sync = Arc::new(SyncCtl::new(sb.resync_offset));
        Array { sb, personality, slots, health, sync, bitmap: OnceLock::new(), writer: OnceLock::new() }
    }

    /// Takes the array apart: its superblock, its personality, and its
    /// members (`None` if something still shares them, e.g. an attribute
    /// tree published for the array).
    pub fn into_parts(self) -> (Superblock, Arc<dyn Personality>, Option<Slots>) {
        let Array { sb, personality, slots, health, sync, bitmap, writer } = self;
        drop(bitmap);
        drop(sync);
        drop(writer);
        drop(health);
        (sb, personality, Arc::try_unwrap(slots).ok())
    }

    /// The write-intent bitmap, if the array has one.
    pub fn bitmap(&self) -> Option<&Arc<crate::bitmap::Bitmap>> {
        self.bitmap.get()
    }

    /// Attaches the array's bitmap (assembly); only the first call counts.
    pub fn set_bitmap(&self, b: crate::bitmap::Bitmap) {
        let _ = self.bitmap.set(Arc::new(b));
    }

    /// The sync space (md's `resync_max_sectors`): per-member sectors
    /// for raid1/4/5/6 (whole stripe rows), array sectors for raid10 and
    /// raid0.
    pub fn sync_size(&self) -> u64 {
        match self.personality.parity_shape() {
            Some(shape) => shape.stripes * (shape.chunk_bytes / 512),
            None => self.size() / 512,
        }
    }

    /// The sync units `[start, end)` an array write of `len` bytes at
    /// `offset` touches (whole stripe rows for parity levels).
    pub fn sync_units(&self, offset: u64, len: usize) -> (u64, u64) {
        let end = offset + len as u64;
        match self.personality.parity_shape() {
            Some(shape) => {
                let row = shape.stripe_bytes();
                let cs = shape.chunk_bytes / 512;
                (offset / row * cs, end.div_ceil(row) * cs)
            }
            None => (offset / 512, end.div_ceil(512)),
        }
    }

    /// The sync state (shared with the attribute tree and the sync thread).
    pub fn sync_ctl(&self) -> &Arc<SyncCtl> {
        &self.sync
    }

    /// The stripe cache (parity levels).
    pub(crate) fn stripe_cache(&self) -> Option<&StripeCache> {
        self.writer().stripes.as_ref()
    }

    /// Runs `f` holding the write window of array byte `offset`
    /// exclusively (mirror levels): no write of that window runs
    /// meanwhile.
    ///
    /// Called under: no lock.
    pub(crate) fn with_mirror_window<R>(&self, offset: u64, f: impl FnOnce() -> R) -> R {
        let w = self.writer();
        let i = (offset / crate::sync::MIRROR_WINDOW) as usize % WINDOW_LOCKS;
        let _g = w.windows[i].write().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// Runs `f` holding exclusively every write window of the array bytes
    /// from `offset` for `len` (in lock order, each once): a mirror read's
    /// repair. Writers hold theirs shared in the same order.
    ///
    /// Called under: no lock.
    fn with_mirror_windows<R>(&self, offset: u64, len: usize, f: impl FnOnce() -> R) -> R {
        let w = self.writer();
        let win = crate::sync::MIRROR_WINDOW;
        let (first, last) = (offset / win, (offset + len.max(1) as u64 - 1) / win);
        let mut idx: Vec<usize> =
            (first..=last.min(first + WINDOW_LOCKS as u64 - 1)).map(|k| k as usize % WINDOW_LOCKS).collect();
        idx.sort_unstable();
        idx.dedup();
        let _held: Vec<_> =
            idx.iter().map(|&i| w.windows[i].write().unwrap_or_else(|p| p.into_inner())).collect();
        f()
    }

    /// The member-failure state (shared with the attribute tree).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    fn writer(&self) -> &Writer {
        self.writer.get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let members = self.slots.len();
            Writer {
                pool: WritePool::new(members.saturating_sub(1).min(cpus)),
                stripes: StripeCache::new(self.personality.as_ref(), Arc::clone(&self.slots)),
                windows: (0..WINDOW_LOCKS).map(|_| RwLock::new(())).collect(),
            }
        })
    }

    /// Member writes run so far by writing threads and by the write
    /// workers (`(0, 0)` before the first write).
    pub fn write_jobs(&self) -> (u64, u64) {
        self.writer.get().map_or((0, 0), |w| w.pool.jobs_run())
    }

    /// How the stripe cache has written rows (parity levels; `None` for
    /// other levels or before the first write).
    pub fn stripe_stats(&self) -> Option<StripeCounts> {
        self.writer.get()?.stripes.as_ref().map(StripeCache::stats)
    }

    /// Array size in bytes.
    pub fn size(&self) -> u64 {
        self.personality.array_bytes()
    }

    /// Number of slots without a member in service (missing, faulty or
    /// removed): md's `degraded`.
    pub fn missing(&self) -> usize {
        self.slots.missing()
    }

    /// Reads exactly `buf.len()` bytes at `offset`. Fails for ranges outside
    /// the array (`InvalidInput`) and, with `EIO`, for data no combination
    /// of members in service can supply.
    ///
    /// A member read that fails with an I/O error is answered from
    /// redundancy, the good bytes are written back over the member, and its
    /// read-error count rises (see the module doc's "Read errors" and
    /// [`crate::repair`]).
    ///
    /// A writable raid4/5/6 array that is degraded, or whose read met a
    /// member error, reads row by row under the rows' stripe locks (see
    /// `StripeCache::with_row`): rebuilt data is never torn by a
    /// concurrent write of the same row, and a row's repair is not
    /// interleaved with a write of it.
    ///
    /// Called under: no lock.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.sync.note_io();
        crate::personality::check_range(offset, buf.len(), self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        let writable = self.writable();
        let repair = Repair {
            personality: self.personality.as_ref(),
            slots: &self.slots,
            health: &self.health,
            rewrite: writable,
        };
        if writable && self.personality.parity_shape().is_some() {
            // Healthy: no lock unless a member read fails.
            let mut seed = Vec::new();
            if self.missing() == 0 {
                let reader = Excluding::new(&self.slots, &[]);
                let r = self.personality.read(&reader, offset, buf);
                seed = reader.into_failures();
                match r {
                    Ok(()) if seed.is_empty() => return Ok(()),
                    Err(e) if seed.is_empty() => return Err(read_error(e)),
                    _ => {}
                }
            }
            let writer = self.writer();
            if let Some(stripes) = &writer.stripes {
                return self.read_rows_repairing(&repair, stripes, offset, buf, &seed);
            }
        }
        let failures = repair.read_recovering(offset, buf, Vec::new())?;
        if !failures.is_empty() {
            let mut tally = Tally::default();
            if self.personality.parity_shape().is_some() {
                // Read-only parity array: count, never rewrite.
                for f in &failures {
                    repair.note(&mut tally, f.slot);
                }
            } else if writable {
                // Read again under the range's write windows, held
                // exclusively, and repair from that read: a write of the
                // range cannot land between the read and the rewrite.
                self.with_mirror_windows(offset, buf.len(), || -> io::Result<()> {
                    let failures = repair.read_recovering(offset, buf, failures)?;
                    repair.repair_mirrors(offset, buf, &failures, &mut tally);
                    Ok(())
                })?;
            } else {
                repair.repair_mirrors(offset, buf, &failures, &mut tally);
            }
        }
        Ok(())
    }

    /// A writable raid4/5/6 array's read, row by row, each row's read,
    /// retries and repair under its stripe lock. `seed`: member reads
    /// already found failing (an unlocked first try); their slots are left
    /// out of the rows they touch and repaired there.
    ///
    /// Called under: no lock.
    fn read_rows_repairing(
        &self,
        repair: &Repair<'_>,
        stripes: &StripeCache,
        offset: u64,
        buf: &mut [u8],
        seed: &[Failure],
    ) -> io::Result<()> {
        let Some(shape) = self.personality.parity_shape() else {
            return Err(io::Error::other("read_rows_repairing on a level without parity"));
        };
        let sb = shape.stripe_bytes();
        let chunk = shape.chunk_bytes;
        let end = offset + buf.len() as u64;
        let mut tally = Tally::default();
        let mut map = StripeMap::default();
        let mut pos = offset;
        while pos < end {
            let stripe = pos / sb;
            let row_end = end.min((stripe + 1) * sb);
            let part = &mut buf[(pos - offset) as usize..(row_end - offset) as usize];
            let (lo, hi) = (stripe * chunk, (stripe + 1) * chunk);
            let row_seed: Vec<Failure> = seed.iter().filter(|f| f.clip(lo, hi).is_some()).copied().collect();
            stripes.with_row(stripe, || -> io::Result<()> {
                let failures = repair.read_recovering(pos, part, row_seed)?;
                if failures.is_empty() {
                    return Ok(());
                }
                if !self.personality.stripe_map(stripe, &mut map) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("stripe row {stripe} is past the end of the array"),
                    ));
                }
                if let Some((a, b)) = repair.repair_row(&shape, &map, stripe, &failures, &mut tally) {
                    stripes.forget_columns(stripe, a, b);
                }
                Ok(())
            })?;
            pos = row_end;
        }
        Ok(())
    }

    fn ctx<'a>(&'a self, writer: &'a Writer) -> Ctx<'a> {
        Ctx {
            personality: self.personality.as_ref(),
            slots: &self.slots,
            pool: &writer.pool,
            resync_from: self.sync.resync_cp(),
            health: &self.health,
        }
    }

    /// Whether the array takes writes: every present member was opened
    /// read-write (see [`crate::assemble_writable`]).
    pub fn writable(&self) -> bool {
        self.slots.members().all(|m| m.dev.access() == Access::ReadWrite)
    }

    /// Writes all of `data` at array byte `offset`: every copy of every
    /// piece (raid0/1/10, mapped as reads are), or through the stripe cache
    /// with the parity of every touched row kept right (raid4/5/6, see
    /// [`crate::stripe`]). Any alignment is accepted. Returns once every
    /// member write has completed (not flushed: see [`Array::flush`]); the
    /// member writes of one call run in parallel.
    ///
    /// Refused, with nothing written: a read-only array (`EROFS`), a range
    /// past the end of the array (`EFBIG`), more members missing than the
    /// level tolerates, and a piece with no member in service. Copies on
    /// missing or faulty slots are skipped (a degraded mirror takes writes;
    /// a degraded parity row keeps its parity right for the members in
    /// service).
    ///
    /// A member write that fails with an I/O error fails the member (see
    /// the module doc) and the write goes on without it; it returns only
    /// once no member is blocked, i.e. after the manager recorded the
    /// failure. If the array cannot lose the member, the write fails `EIO`
    /// and the range is undefined.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.writable() {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > self.size()) {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.check_readable()?;
        self.sync.note_io();
        let writer = self.writer();
        // md_bitmap_startwrite: the chunks' bits are on every member
        // before any data write goes out.
        let units = self.sync_units(offset, data.len());
        if let Some(bm) = self.bitmap.get() {
            if let Err(e) = bm.start_write(&self.slots, &self.health, units.0, units.1) {
                bm.end_write(units.0, units.1, true);
                return Err(e);
            }
        }
        let r = self.write_members(writer, offset, data);
        if let Some(bm) = self.bitmap.get() {
            bm.end_write(units.0, units.1, self.missing() > 0 || r.is_err());
        }
        // Nothing is acknowledged while a failure is not yet recorded.
        let waited = self.health.wait_unblocked();
        r.and(waited)
    }

    fn check_readable(&self) -> io::Result<()> {
        let present: Vec<bool> = (0..self.slots.len()).map(|s| self.slots.is_present(s)).collect();
        if !self.personality.readable_with(&present) {
            return Err(crate::personality::unrecoverable(&format!(
                "{} of {} members are missing or failed, more than {} tolerates",
                present.iter().filter(|p| !**p).count(),
                present.len(),
                self.personality.geometry().level
            )));
        }
        Ok(())
    }

    fn write_members(&self, writer: &Writer, offset: u64, data: &[u8]) -> io::Result<()> {
        if let Some(stripes) = &writer.stripes {
            return stripes.write(&self.ctx(writer), offset, data);
        }
        let pieces = self.personality.map_write(offset, data.len())?;
        // Every piece needs a present copy; copies share `buf_start`.
        let mut starts: Vec<(usize, bool)> =
            pieces.iter().map(|p| (p.buf_start, self.slots.is_present(p.slot))).collect();
        starts.sort_unstable();
        for group in starts.chunk_by(|a, b| a.0 == b.0) {
            if !group.iter().any(|&(_, present)| present) {
                return Err(crate::personality::unrecoverable(&format!(
                    "no member in service holds array byte {}",
                    offset + group[0].0 as u64
                )));
            }
        }
        let mut jobs: Vec<WriteJob<'_>> = pieces
            .iter()
            .filter(|p| self.slots.takes_writes(p.slot))
            .map(|&WritePiece { slot, member_offset, buf_start, len }| WriteJob {
                slot,
                offset: member_offset,
                data: &data[buf_start..buf_start + len],
            })
            .collect();
        jobs.sort_unstable_by_key(|j| (j.slot, j.offset));
        // The write windows it touches, shared, in lock order (a sync
        // step holds one exclusively, and no other).
        let w = crate::sync::MIRROR_WINDOW;
        let (first, last) = (offset / w, (offset + data.len() as u64 - 1) / w);
        let mut idx: Vec<usize> =
            (first..=last.min(first + WINDOW_LOCKS as u64 - 1)).map(|k| k as usize % WINDOW_LOCKS).collect();
        idx.sort_unstable();
        idx.dedup();
        let _held: Vec<_> =
            idx.iter().map(|&i| writer.windows[i].read().unwrap_or_else(|p| p.into_inner())).collect();
        writer.pool.write_all(&self.slots, &jobs, &|slot, e| self.health.absorb(slot, e))
    }

    /// Makes every completed write durable on every member in service; a
    /// member whose flush fails is failed like one whose write failed
    /// (and, as for writes, the call returns once that is recorded).
    pub fn flush(&self) -> io::Result<()> {
        let mut first = None;
        for (slot, m) in self.slots.iter().enumerate() {
            let Some(m) = m else { continue };
            if m.flags() & flags::FAULTY != 0 {
                continue;
            }
            if let Err(e) = m.dev.flush() {
                if !self.health.absorb(slot, &e) {
                    first.get_or_insert(e);
                }
            }
        }
        let waited = self.health.wait_unblocked();
        first.map_or(waited, Err)
    }

    /// A good size for large sequential reads.
    pub fn io_hint(&self) -> u64 {
        self.personality.io_hint().max(4096)
    }
}

/// What a read that failed with no member read failing returns: range
/// errors (`InvalidInput`) as they are, anything else (data no member in
/// service holds) as `EIO`.
fn read_error(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::InvalidInput {
        e
    } else {
        eio()
    }
}
