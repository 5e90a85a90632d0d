//! md's sysfs attributes (`/sys/block/mdX/md/…`) for an assembled array,
//! published in a [`kernfs`] tree: the same names and value formats as
//! Linux md (`drivers/md/md.c`), so that tools written against md's sysfs
//! read umd the same way.
//!
//! ## Responsibility boundary
//! This module owns the mapping between an array's state and its attribute
//! files: what each `show` prints, what each `store` accepts, and which
//! attributes notify. The tree mechanics (open files, prealloc buffers,
//! active references, poll) are `kernfs`'s. The values of a read-only
//! assembly are its true values: `array_state` reads `readonly`, `degraded`
//! counts the missing slots, `sync_action` is `idle` (or `frozen`). Stores
//! whose semantics arrive with resync and failure handling (issue 8) answer
//! `EBUSY`, `EROFS` or `EINVAL` as md would for a running read-only array;
//! none pretends success. Garbage is `EINVAL` and changes nothing.
//! `array_state` and `safe_mode_delay` are [`crate::state`]'s machine, for
//! read-only and writable (external metadata) arrays alike.
//!
//! Attributes md creates only for personalities with redundancy
//! (`md_redundancy_group`: `sync_action`, `sync_completed`, `mismatch_cnt`,
//! `degraded`, …) are absent for raid0, as in md.
//!
//! ## Synchronization model
//! The array's mutable state is a handful of atomics in [`MdState`]; every
//! `show` reads them without a lock and every `store` updates them with one
//! atomic operation, then calls [`kernfs::Node::notify`] (lock-free) on the
//! attribute that changed. Exception: `array_state` and `safe_mode_delay`
//! take the state machine's leaf mutex (see [`crate::state`]), which also
//! notifies `array_state`. `show` formats into the open file's page buffer
//! with `core::fmt` and allocates nothing.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kernfs::{Attr, AttrOps, Errno, Kernfs, NodeRef, ShowBuf};

use crate::array::{flags, Array, ArrayEvents, Health, SlotMember, Slots, MAX_ADDED, NO_SLOT};
use crate::personality::Level;
use crate::state::{StateMachine, TimerHandle};

/// md's `array_state` words, in md's order (`array_states[]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ArrayState {
    /// No devices, no size, no level.
    Clear = 0,
    /// May have some settings, but not active.
    Inactive,
    /// Running, but I/O is suspended.
    Suspended,
    /// Running, no writes allowed.
    Readonly,
    /// Read-only until the first write.
    ReadAuto,
    /// Writes allowed, no write in flight, in sync.
    Clean,
    /// Writes allowed, in use.
    Active,
    /// A write is waiting for the metadata to be marked dirty.
    WritePending,
    /// Active but idle: the metadata may be marked clean.
    ActiveIdle,
    /// Too many members failed.
    Broken,
}

impl ArrayState {
    const ALL: [ArrayState; 10] = [
        ArrayState::Clear,
        ArrayState::Inactive,
        ArrayState::Suspended,
        ArrayState::Readonly,
        ArrayState::ReadAuto,
        ArrayState::Clean,
        ArrayState::Active,
        ArrayState::WritePending,
        ArrayState::ActiveIdle,
        ArrayState::Broken,
    ];

    /// md's word for the state.
    pub fn word(self) -> &'static str {
        match self {
            ArrayState::Clear => "clear",
            ArrayState::Inactive => "inactive",
            ArrayState::Suspended => "suspended",
            ArrayState::Readonly => "readonly",
            ArrayState::ReadAuto => "read-auto",
            ArrayState::Clean => "clean",
            ArrayState::Active => "active",
            ArrayState::WritePending => "write-pending",
            ArrayState::ActiveIdle => "active-idle",
            ArrayState::Broken => "broken",
        }
    }

    /// The state named by md's word.
    pub fn from_word(w: &[u8]) -> Option<ArrayState> {
        ArrayState::ALL.iter().copied().find(|s| s.word().as_bytes() == w)
    }

    /// The state whose number (`state as u8`) is `v`.
    pub fn from_u8(v: u8) -> Option<ArrayState> {
        ArrayState::ALL.get(usize::from(v)).copied()
    }
}

/// The mutable state behind the attributes.
#[derive(Debug)]
pub struct MdState {
    /// `array_state`, `safe_mode_delay` and the write handshake.
    pub machine: Arc<StateMachine>,
    /// `array_state` shows text that is no md word (see
    /// [`MdSysfs::garble_array_state`]).
    garbled: AtomicBool,
}

impl MdState {
    /// The current `array_state`.
    pub fn array_state(&self) -> ArrayState {
        self.machine.state()
    }
}

/// The published attribute tree of one array.
pub struct MdSysfs {
    /// The `md` directory.
    pub md_dir: NodeRef,
    /// `md/array_state`.
    pub array_state: NodeRef,
    /// `md/sync_action` (absent for raid0).
    pub sync_action: Option<NodeRef>,
    /// The members' directories and events.
    tree: Arc<MemberTree>,
    /// The shared state.
    pub state: Arc<MdState>,
    /// The safe-mode timer of a writable array; stopped and joined on drop.
    _timer: Option<TimerHandle>,
}

impl std::fmt::Debug for MdSysfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdSysfs").field("state", &self.state).finish()
    }
}

impl MdSysfs {
    /// Sets `array_state` (as md's own transitions will) and notifies its
    /// pollers. Lock-free; used by the array's state machine and by tests.
    pub fn set_array_state(&self, s: ArrayState) {
        self.state.machine.force(s);
    }

    /// Makes `array_state` show (`on`) or stop showing text that is no md
    /// word, and notifies: for tests of a metadata manager's behaviour
    /// when an attribute answers garbage (umd's `UMD_TEST_HOOKS`). The
    /// state machine itself is unchanged.
    pub fn garble_array_state(&self, on: bool) {
        self.state.garbled.store(on, Ordering::Relaxed);
        self.array_state.notify();
    }

    /// The array's state machine (the data path calls
    /// [`StateMachine::write_start`] / [`StateMachine::write_end`]).
    pub fn machine(&self) -> &Arc<StateMachine> {
        &self.state.machine
    }

    /// Removes the member directory of `slot` (as md does when a member is
    /// removed from the array): open files on its attributes then fail with
    /// ENODEV.
    ///
    /// Must not be called from a `store` of an attribute inside that
    /// member's directory (removal waits for in-flight operations).
    pub fn remove_member(&self, slot: usize) -> Result<(), Errno> {
        let id =
            self.tree.health.slots().get(slot).map(|m| m.id.load(Ordering::Acquire)).ok_or(libc::ENOENT)?;
        self.tree.remove_dir(id, Some(slot))
    }

    /// The `dev-NAME/state` attribute of the member in `slot`, if any.
    pub fn member_state(&self, slot: usize) -> Option<NodeRef> {
        let id = self.tree.health.slots().get(slot)?.id.load(Ordering::Acquire);
        self.tree.members.lock().ok()?.get(id)?.as_ref().map(|e| e.state.clone())
    }
}

/// A member's directory in the tree.
struct MemberDir {
    dir: NodeRef,
    state: NodeRef,
    name: String,
}

/// Per member id ([`Slots::by_id`]): its `md/dev-NAME` directory.
type Members = Mutex<Vec<Option<MemberDir>>>;

/// The members' part of the tree: their directories (made at publish and
/// when a member is added), the `rdN` links of the slots, and md's
/// reactions to member events — "change pending" on the state machine,
/// notifications of a member's `state` and of `degraded`, the deferred
/// removal of a removed member's directory, the wait for `-blocked`.
struct MemberTree {
    fs: Arc<Kernfs>,
    md_dir: NodeRef,
    health: Arc<Health>,
    machine: Arc<StateMachine>,
    sync: Arc<crate::sync::SyncCtl>,
    members: Members,
    /// `md/degraded` (absent for raid0), set once made.
    degraded: std::sync::OnceLock<NodeRef>,
}

impl MemberTree {
    fn notify_member(&self, id: usize) {
        let node = self.members.lock().ok().and_then(|m| m.get(id)?.as_ref().map(|e| e.state.clone()));
        if let Some(n) = node {
            n.notify();
        }
    }

    fn notify_degraded(&self) {
        if let Some(d) = self.degraded.get() {
            d.notify();
        }
    }

    /// Makes member `id`'s `dev-NAME` directory, and its `rdN` link if it
    /// holds a slot.
    ///
    /// Called under: nothing of the tree's (not from a store inside that
    /// directory: there is none yet).
    fn create_dir(self: &Arc<Self>, id: usize) -> Result<(), Errno> {
        let slots = self.health.slots();
        let m = slots.by_id(id).ok_or(libc::ENODEV)?;
        let fs = &self.fs;
        let mut name = dev_name(m.dev.path());
        {
            let taken = self.members.lock().map_err(|_| libc::EIO)?;
            if taken.iter().flatten().any(|e| e.name == format!("dev-{name}")) {
                name = format!("{name}.{id}");
            }
        }
        let dirname = format!("dev-{name}");
        let dir = fs.create_dir(&self.md_dir, &dirname, 0o755)?;
        let (h, h2) = (self.health.clone(), self.health.clone());
        let state = fs.create_attr(
            &dir,
            "state",
            RW,
            pre_attr(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| {
                    show_dev_state(out, h.slots().by_id(id).map_or(flags::REMOVED, SlotMember::flags))
                },
                store: move |data: &[u8]| store_dev_state(&h2, id, data),
            })),
        )?;
        let (h, h2) = (self.health.clone(), self.health.clone());
        fs.create_attr(
            &dir,
            "slot",
            RW,
            plain_attr(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| match h
                    .slots()
                    .by_id(id)
                    .map_or(NO_SLOT, |m| m.slot.load(Ordering::Acquire))
                {
                    NO_SLOT => line(out, format_args!("none")),
                    s => line(out, format_args!("{s}")),
                },
                // md's slot_store: a spare is given a slot (and recovered
                // there); a member in a slot keeps it.
                store: move |data: &[u8]| {
                    if word(data) == b"none" {
                        return Err(libc::EBUSY);
                    }
                    let slot = usize::try_from(parse_u64(data)?).map_err(|_| libc::EINVAL)?;
                    h2.place(id, slot).map(|()| data.len())
                },
            })),
        )?;
        let offset = m.sb.data_offset;
        fs.create_attr(
            &dir,
            "offset",
            RW,
            plain_attr(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| line(out, format_args!("{offset}")),
                store: |data: &[u8]| parse_u64(data).and(Err(libc::EBUSY)),
            })),
        )?;
        let size_kib = m.sb.data_size / 2;
        fs.create_attr(
            &dir,
            "size",
            RW,
            plain_attr(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| line(out, format_args!("{size_kib}")),
                store: |data: &[u8]| parse_u64(data).and(Err(libc::EBUSY)),
            })),
        )?;
        // The member's corrected read errors (`SlotMember::read_errors`).
        let (h, h2) = (self.health.clone(), self.health.clone());
        fs.create_attr(
            &dir,
            "errors",
            RW,
            plain_attr(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| {
                    let e = h.slots().by_id(id).map_or(0, |m| m.read_errors.load(Ordering::Relaxed));
                    line(out, format_args!("{e}"))
                },
                store: move |data: &[u8]| {
                    let v = u32::try_from(parse_u64(data)?).map_err(|_| libc::EINVAL)?;
                    if let Some(m) = h2.slots().by_id(id) {
                        m.read_errors.store(v, Ordering::Relaxed);
                    }
                    Ok(data.len())
                },
            })),
        )?;
        // md's recovery_offset of a member being recovered (sectors), else
        // `none`.
        let h = self.health.clone();
        fs.create_attr(
            &dir,
            "recovery_start",
            RW,
            pre_attr(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| match h.slots().by_id(id) {
                    Some(m) if m.flags() & flags::RECOVERING != 0 => {
                        line(out, format_args!("{}", m.recovery_offset.load(Ordering::Acquire)))
                    }
                    _ => line(out, format_args!("none")),
                },
                store: |data: &[u8]| {
                    if word(data) == b"none" {
                        return Err(libc::EBUSY);
                    }
                    parse_u64(data).and(Err(libc::EBUSY))
                },
            })),
        )?;
        // Linux links dev-*/block to the member's block device; umd links
        // it to the member's path, which `umd detail` reads superblocks from.
        let target = std::fs::canonicalize(m.dev.path()).unwrap_or_else(|_| m.dev.path().to_path_buf());
        fs.create_symlink(&dir, "block", &target.to_string_lossy())?;
        let slot = m.slot.load(Ordering::Acquire);
        if slot != NO_SLOT && m.flags() & flags::REMOVED == 0 {
            fs.create_symlink(&self.md_dir, &format!("rd{slot}"), &dirname)?;
        }
        fs.activate(&dir);
        let mut t = self.members.lock().map_err(|_| libc::EIO)?;
        if let Some(e) = t.get_mut(id) {
            *e = Some(MemberDir { dir, state, name: dirname });
        }
        Ok(())
    }

    /// Removes member `id`'s directory and the `rdN` link of the slot it
    /// held.
    ///
    /// Must not be called from a store inside that directory (removal
    /// waits for in-flight operations).
    fn remove_dir(&self, id: usize, slot: Option<usize>) -> Result<(), Errno> {
        let taken = {
            let mut m = self.members.lock().map_err(|_| libc::EIO)?;
            m.get_mut(id).and_then(Option::take)
        };
        let Some(e) = taken else { return Err(libc::ENOENT) };
        if let Some(slot) = slot {
            if let Some(link) = self.fs.lookup(&self.md_dir, &format!("rd{slot}")) {
                self.fs.remove(&link);
            }
        }
        self.fs.remove(&e.dir);
        Ok(())
    }
}

/// The events sink: a weak reference, since the tree's attributes hold
/// the array's [`Health`], which holds the sink.
struct TreeEvents(std::sync::Weak<MemberTree>);

impl ArrayEvents for TreeEvents {
    fn member_failed(&self, id: usize) {
        let Some(t) = self.0.upgrade() else { return };
        // The member's `state` first: a manager woken by `array_state`
        // (write-pending) then finds the failure notified too.
        t.notify_member(id);
        t.notify_degraded();
        t.machine.member_failed();
    }

    fn member_changed(&self, id: usize) {
        let Some(t) = self.0.upgrade() else { return };
        t.machine.poke();
        t.notify_member(id);
        t.notify_degraded();
    }

    fn member_removed(&self, id: usize, slot: Option<usize>) {
        let Some(t) = self.0.upgrade() else { return };
        // md removes the member's kobject from a work queue: the store
        // that asked is still running inside that directory, and removal
        // waits for it. Without a thread the directory stays (its `state`
        // reads removed); nothing else depends on it.
        let t2 = t.clone();
        let _ = std::thread::Builder::new().name("umd-md-remove".into()).spawn(move || {
            let _ = t2.remove_dir(id, slot);
        });
        t.notify_degraded();
    }

    fn member_placed(&self, id: usize, slot: usize) {
        let Some(t) = self.0.upgrade() else { return };
        let name = t.members.lock().ok().and_then(|m| m.get(id)?.as_ref().map(|e| e.name.clone()));
        if let Some(name) = name {
            let _ = t.fs.create_symlink(&t.md_dir, &format!("rd{slot}"), &name);
        }
        t.notify_member(id);
        t.notify_degraded();
        // The sync thread starts the recovery now.
        t.sync.kick();
    }

    fn broken(&self) {
        if let Some(t) = self.0.upgrade() {
            t.machine.set_broken();
        }
    }

    fn wait_unblocked(&self, slots: &Slots) -> std::io::Result<()> {
        let Some(t) = self.0.upgrade() else { return Ok(()) };
        t.machine.wait_while(|| slots.blocked() > 0).map_err(std::io::Error::from_raw_os_error)
    }
}

/// A prealloc attribute: its write buffer is taken at open, a store
/// allocates nothing (seed 000); it notifies.
fn pre_attr(ops: Arc<dyn AttrOps>) -> Attr {
    Attr { ops, prealloc: true, atomic_write_len: kernfs::PAGE_SIZE, seq: false, notify: true }
}

/// A plain attribute.
fn plain_attr(ops: Arc<dyn AttrOps>) -> Attr {
    Attr { ops, prealloc: false, atomic_write_len: kernfs::PAGE_SIZE, seq: false, notify: false }
}

/// md's `state_show` for a member: its flags, comma-separated, in md's
/// order.
fn show_dev_state(out: &mut ShowBuf, f: u32) -> Result<(), Errno> {
    let mut words: [&str; 4] = [""; 4];
    let mut n = 0;
    let mut push = |w: &'static str| {
        words[n] = w;
        n += 1;
    };
    if f & flags::FAULTY != 0 {
        push("faulty");
    } else if f & (flags::SPARE | flags::RECOVERING) != 0 {
        // md shows a member not in sync as `spare`, in a slot or not.
        push("spare");
    } else if f & flags::REMOVED == 0 {
        push("in_sync");
    }
    if f & flags::BLOCKED != 0 {
        push("blocked");
    }
    if f & flags::WRITE_ERROR != 0 {
        push("write_error");
    }
    for (i, w) in words[..n].iter().enumerate() {
        out.write_str(if i == 0 { "" } else { "," }).map_err(fmt_err)?;
        out.write_str(w).map_err(fmt_err)?;
    }
    out.write_str("\n").map_err(fmt_err)
}

/// md's `state_store` for a member.
fn store_dev_state(health: &Health, id: usize, data: &[u8]) -> Result<usize, Errno> {
    let w = word(data);
    match w {
        // md_error; md answers EBUSY when the member could not be failed.
        b"faulty" => {
            if health.fail_request(id) {
                Ok(data.len())
            } else {
                Err(libc::EBUSY)
            }
        }
        b"-blocked" => health.set_blocked(id, false).map(|()| data.len()),
        b"blocked" => health.set_blocked(id, true).map(|()| data.len()),
        b"remove" => health.remove(id).map(|()| data.len()),
        // Spares, re-add and the other flags arrive with recovery.
        _ if DEV_STATE_WORDS.iter().any(|k| k.as_bytes() == w) => Err(libc::EBUSY),
        _ => Err(libc::EINVAL),
    }
}

/// An attribute whose show and store are closures.
struct FnAttr<S, T>
where
    S: Fn(&mut ShowBuf) -> Result<(), Errno> + Send + Sync + 'static,
    T: Fn(&[u8]) -> Result<usize, Errno> + Send + Sync + 'static,
{
    show: S,
    store: T,
}

impl<S, T> AttrOps for FnAttr<S, T>
where
    S: Fn(&mut ShowBuf) -> Result<(), Errno> + Send + Sync + 'static,
    T: Fn(&[u8]) -> Result<usize, Errno> + Send + Sync + 'static,
{
    fn show(&self, out: &mut ShowBuf) -> Result<(), Errno> {
        (self.show)(out)
    }

    fn store(&self, data: &[u8]) -> Result<usize, Errno> {
        (self.store)(data)
    }
}

/// A read-only attribute's store: md's attributes without `->store` are
/// mode 0444; a write reaching one anyway is EACCES... the VFS refuses it
/// before md sees it. We answer EACCES too.
fn no_store(_: &[u8]) -> Result<usize, Errno> {
    Err(libc::EACCES)
}

fn fmt_err(_: std::fmt::Error) -> Errno {
    libc::EFBIG
}

/// Writes `args` into `out`, followed by a newline.
fn line(out: &mut ShowBuf, args: std::fmt::Arguments<'_>) -> Result<(), Errno> {
    out.write_fmt(args).map_err(fmt_err)?;
    out.write_char('\n').map_err(fmt_err)
}

/// The word written, without one trailing newline (md's `cmd_match`).
fn word(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\n").unwrap_or(data)
}

/// Parses an unsigned decimal number (md's `kstrtoull` with one trailing
/// newline allowed).
fn parse_u64(data: &[u8]) -> Result<u64, Errno> {
    let w = word(data);
    if w.is_empty() || w.len() > 20 {
        return Err(libc::EINVAL);
    }
    let mut v: u64 = 0;
    for &c in w {
        if !c.is_ascii_digit() {
            return Err(libc::EINVAL);
        }
        v = v.checked_mul(10).and_then(|v| v.checked_add(u64::from(c - b'0'))).ok_or(libc::EINVAL)?;
    }
    Ok(v)
}

/// Parses md's `safe_mode_delay` format: seconds with up to three decimals.
fn parse_msec(data: &[u8]) -> Result<u32, Errno> {
    let w = word(data);
    let (int, frac) = match w.iter().position(|&c| c == b'.') {
        Some(i) => (&w[..i], &w[i + 1..]),
        None => (w, &b""[..]),
    };
    if int.is_empty() && frac.is_empty() || frac.len() > 3 {
        return Err(libc::EINVAL);
    }
    let secs = if int.is_empty() { 0 } else { parse_u64(int)? };
    let mut ms = if frac.is_empty() { 0 } else { parse_u64(frac)? };
    for _ in frac.len()..3 {
        ms *= 10;
    }
    let total = secs.checked_mul(1000).and_then(|s| s.checked_add(ms)).ok_or(libc::EINVAL)?;
    u32::try_from(total).map_err(|_| libc::EINVAL)
}

/// md's words for `dev-*/state` stores.
const DEV_STATE_WORDS: [&str; 17] = [
    "faulty",
    "remove",
    "writemostly",
    "-writemostly",
    "blocked",
    "-blocked",
    "insync",
    "-insync",
    "write_error",
    "-write_error",
    "want_replacement",
    "-want_replacement",
    "re-add",
    "failfast",
    "-failfast",
    "external_bbl",
    "-external_bbl",
];

/// A name usable as `dev-NAME`: the member's file name with anything but
/// `[A-Za-z0-9._-]` replaced by `_`.
fn dev_name(path: &Path) -> String {
    let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "member".into());
    base.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

const RO: u32 = 0o444;
const RW: u32 = 0o644;

/// Builds md's attribute tree for `array` under `parent` (a directory
/// named `md` is created there) and activates it.
///
/// `readonly` is the assembly mode: a read-only assembly shows `readonly`
/// and refuses to go read-write; a writable one (`readonly == false`) is a
/// running array with external metadata: `metadata_version` reads
/// `external:<minor>` (e.g. `external:1.2`), `array_state` starts `clean`,
/// and the write handshake of [`crate::state`] runs with a safe-mode timer
/// thread that stops when the returned [`MdSysfs`] is dropped.
pub fn publish(fs: &Arc<Kernfs>, parent: &NodeRef, array: &Array, readonly: bool) -> Result<MdSysfs, Errno> {
    let sb = &array.sb;
    let geom = array.personality.geometry().clone();
    let raid_disks = geom.raid_disks as usize;
    let machine = Arc::new(StateMachine::new(!readonly, Duration::from_millis(200)));
    let state = Arc::new(MdState { machine: machine.clone(), garbled: AtomicBool::new(false) });
    let md = fs.create_dir(parent, "md", 0o755)?;
    // Prealloc attributes take their write buffer at open: a store
    // allocates nothing (seed 000).
    let pre = |ops: Arc<dyn AttrOps>| Attr {
        ops,
        prealloc: true,
        atomic_write_len: kernfs::PAGE_SIZE,
        seq: false,
        notify: true,
    };
    let plain = |ops: Arc<dyn AttrOps>| Attr {
        ops,
        prealloc: false,
        atomic_write_len: kernfs::PAGE_SIZE,
        seq: false,
        notify: false,
    };

    // array_state: prealloc, notifies.
    let st = state.clone();
    let array_state_store = move |data: &[u8]| -> Result<usize, Errno> {
        st.machine.store(data)?;
        Ok(data.len())
    };
    let st = state.clone();
    let array_state = fs.create_attr(
        &md,
        "array_state",
        RW,
        pre(Arc::new(FnAttr {
            show: move |out: &mut ShowBuf| {
                if st.garbled.load(Ordering::Relaxed) {
                    line(out, format_args!("?garbled?"))
                } else {
                    line(out, format_args!("{}", st.array_state().word()))
                }
            },
            store: array_state_store,
        })),
    )?;
    // The machine notifies through a weak reference: the node owns the
    // machine (via its ops), not the other way round.
    let weak = Arc::downgrade(&array_state);
    machine.set_notify(move || {
        if let Some(n) = weak.upgrade() {
            n.notify();
        }
    });

    // level: a level change is a reshape (later); known names are EBUSY.
    let level_s = geom.level.to_string();
    let level_store = |data: &[u8]| -> Result<usize, Errno> {
        const KNOWN: [&[u8]; 14] = [
            b"linear", b"raid0", b"raid1", b"raid4", b"raid5", b"raid6", b"raid10", b"0", b"1", b"4", b"5",
            b"6", b"10", b"-1",
        ];
        if KNOWN.contains(&word(data)) {
            Err(libc::EBUSY)
        } else {
            Err(libc::EINVAL)
        }
    };
    fs.create_attr(
        &md,
        "level",
        RW,
        plain(Arc::new(FnAttr {
            show: move |out: &mut ShowBuf| line(out, format_args!("{level_s}")),
            store: level_store,
        })),
    )?;
    let busy_number = |data: &[u8]| -> Result<usize, Errno> { parse_u64(data).and(Err(libc::EBUSY)) };
    let num_attr = |fs: &Arc<Kernfs>, name: &str, v: String| -> Result<NodeRef, Errno> {
        let ops = Arc::new(FnAttr {
            show: move |out: &mut ShowBuf| line(out, format_args!("{v}")),
            store: busy_number,
        });
        fs.create_attr(&md, name, RW, plain(ops))
    };
    num_attr(fs, "raid_disks", raid_disks.to_string())?;
    num_attr(fs, "chunk_size", (u64::from(geom.chunk_sectors) * 512).to_string())?;
    let layout = if geom.level == Level::Raid0 && !geom.raid0_layout_set {
        "-1".to_string()
    } else {
        geom.layout.to_string()
    };
    let layout_store = |data: &[u8]| -> Result<usize, Errno> {
        let w = word(data);
        let digits = w.strip_prefix(b"-").unwrap_or(w);
        parse_u64(digits).and(Err(libc::EBUSY))
    };
    fs.create_attr(
        &md,
        "layout",
        RW,
        plain(Arc::new(FnAttr {
            show: move |out: &mut ShowBuf| line(out, format_args!("{layout}")),
            store: layout_store,
        })),
    )?;
    num_attr(fs, "component_size", (sb.size / 2).to_string())?;
    let minor = sb.minor();
    let metadata_store = |data: &[u8]| -> Result<usize, Errno> {
        let w = word(data);
        let known = w == b"none"
            || w.starts_with(b"external:")
            || (w.len() >= 3
                && w[1] == b'.'
                && w[0].is_ascii_digit()
                && w[2..].iter().all(u8::is_ascii_digit));
        if known {
            Err(libc::EBUSY)
        } else {
            Err(libc::EINVAL)
        }
    };
    fs.create_attr(
        &md,
        "metadata_version",
        RW,
        pre(Arc::new(FnAttr {
            show: move |out: &mut ShowBuf| {
                if readonly {
                    line(out, format_args!("{}", minor.as_str()))
                } else {
                    line(out, format_args!("external:{}", minor.as_str()))
                }
            },
            store: metadata_store,
        })),
    )?;
    let array_size_store = |data: &[u8]| -> Result<usize, Errno> {
        if word(data) == b"default" {
            return Err(libc::EBUSY);
        }
        parse_u64(data).and(Err(libc::EBUSY))
    };
    fs.create_attr(
        &md,
        "array_size",
        RW,
        plain(Arc::new(FnAttr {
            show: |out: &mut ShowBuf| line(out, format_args!("default")),
            store: array_size_store,
        })),
    )?;
    let st = state.clone();
    let st2 = state.clone();
    fs.create_attr(
        &md,
        "safe_mode_delay",
        RW,
        plain(Arc::new(FnAttr {
            show: move |out: &mut ShowBuf| {
                let ms = st.machine.safe_mode_delay().as_millis();
                line(out, format_args!("{}.{:03}", ms / 1000, ms % 1000))
            },
            store: move |data: &[u8]| {
                let ms = parse_msec(data)?;
                st2.machine.set_safe_mode_delay(Duration::from_millis(u64::from(ms)));
                Ok(data.len())
            },
        })),
    )?;
    let sync = array.sync_ctl().clone();
    let resync_store = |data: &[u8]| -> Result<usize, Errno> {
        if word(data) == b"none" {
            return Err(libc::EBUSY);
        }
        parse_u64(data).and(Err(libc::EBUSY))
    };
    fs.create_attr(
        &md,
        "resync_start",
        RW,
        pre(Arc::new(FnAttr {
            show: move |out: &mut ShowBuf| match sync.resync_cp() {
                u64::MAX => line(out, format_args!("none")),
                cp => line(out, format_args!("{cp}")),
            },
            store: resync_store,
        })),
    )?;

    let policy = if geom.level == Level::Raid0 {
        "none"
    } else if sb.has_feature(crate::superblock::feature::BITMAP_OFFSET) {
        "bitmap"
    } else {
        "resync"
    };
    let policy_store = |data: &[u8]| -> Result<usize, Errno> {
        match word(data) {
            b"none" | b"resync" | b"bitmap" | b"journal" | b"ppl" => Err(libc::EBUSY),
            _ => Err(libc::EINVAL),
        }
    };
    // md's bitmap group, for an array with an internal bitmap.
    if let Some(bm) = array.bitmap() {
        let dir = fs.create_dir(&md, "bitmap", 0o755)?;
        let off = sb.bitmap_offset;
        fs.create_attr(
            &dir,
            "location",
            RW,
            plain_attr(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| line(out, format_args!("{off:+}")),
                store: |_: &[u8]| Err(libc::EBUSY),
            })),
        )?;
        let chunk = bm.chunk_units() * 512;
        fs.create_attr(
            &dir,
            "chunksize",
            RW,
            plain_attr(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| line(out, format_args!("{chunk}")),
                store: |_: &[u8]| Err(libc::EBUSY),
            })),
        )?;
        fs.create_attr(
            &dir,
            "metadata",
            RW,
            plain_attr(Arc::new(FnAttr {
                show: |out: &mut ShowBuf| line(out, format_args!("internal")),
                store: |_: &[u8]| Err(libc::EBUSY),
            })),
        )?;
        let (b1, b2) = (bm.clone(), bm.clone());
        fs.create_attr(
            &dir,
            "time_base",
            RW,
            plain_attr(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| line(out, format_args!("{}", b1.daemon_sleep())),
                // Seconds between clearing passes (md: at least 1).
                store: move |data: &[u8]| {
                    let v = u32::try_from(parse_u64(data)?).map_err(|_| libc::EINVAL)?;
                    if v == 0 {
                        return Err(libc::EINVAL);
                    }
                    b2.set_daemon_sleep(v);
                    Ok(data.len())
                },
            })),
        )?;
        let b = bm.clone();
        fs.create_attr(
            &dir,
            "dirty",
            RO,
            plain_attr(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| {
                    let st = b.stats();
                    line(out, format_args!("{} / {}", st.dirty, b.chunks()))
                },
                store: no_store,
            })),
        )?;
    }
    fs.create_attr(
        &md,
        "consistency_policy",
        RW,
        plain(Arc::new(FnAttr {
            show: move |out: &mut ShowBuf| line(out, format_args!("{policy}")),
            store: policy_store,
        })),
    )?;

    // md_redundancy_group: only for personalities with sync_request.
    let mut sync_action = None;
    let mut degraded = None;
    if geom.level != Level::Raid0 {
        let (sync, sync2) = (array.sync_ctl().clone(), array.sync_ctl().clone());
        let node = fs.create_attr(
            &md,
            "sync_action",
            RW,
            pre(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| line(out, format_args!("{}", sync.action().word())),
                store: move |data: &[u8]| {
                    let w = word(data);
                    // A read-only array cannot be resynced or repaired.
                    if readonly && matches!(w, b"resync" | b"recover" | b"check" | b"repair" | b"reshape") {
                        return Err(libc::EROFS);
                    }
                    sync2.store_action(w).map(|()| data.len())
                },
            })),
        )?;
        sync_action = Some(node.clone());
        let sync = array.sync_ctl().clone();
        let completed = fs.create_attr(
            &md,
            "sync_completed",
            RO,
            Attr {
                ops: Arc::new(FnAttr {
                    show: move |out: &mut ShowBuf| match sync.completed() {
                        Some((done, total)) => line(out, format_args!("{done} / {total}")),
                        None => line(out, format_args!("none")),
                    },
                    store: no_store,
                }),
                prealloc: false,
                atomic_write_len: kernfs::PAGE_SIZE,
                seq: false,
                notify: true,
            },
        )?;
        let (n1, n2) = (node.clone(), completed.clone());
        array.sync_ctl().set_notify(move |c| match c {
            crate::sync::Changed::Action => n1.notify(),
            crate::sync::Changed::Completed => n2.notify(),
        });
        let sync = array.sync_ctl().clone();
        fs.create_attr(
            &md,
            "mismatch_cnt",
            RO,
            plain(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| line(out, format_args!("{}", sync.mismatches())),
                store: no_store,
            })),
        )?;
        let sync = array.sync_ctl().clone();
        fs.create_attr(
            &md,
            "sync_speed",
            RO,
            plain(Arc::new(FnAttr {
                show: move |out: &mut ShowBuf| match sync.speed() {
                    Some(v) => line(out, format_args!("{v}")),
                    None => line(out, format_args!("none")),
                },
                store: no_store,
            })),
        )?;
        for (name, max) in [("sync_speed_min", false), ("sync_speed_max", true)] {
            let (sync, sync2) = (array.sync_ctl().clone(), array.sync_ctl().clone());
            fs.create_attr(
                &md,
                name,
                RW,
                plain(Arc::new(FnAttr {
                    show: move |out: &mut ShowBuf| {
                        let (min, maxv) = sync.speed_limits();
                        let (v, system) = if max { maxv } else { min };
                        line(out, format_args!("{v} ({})", if system { "system" } else { "local" }))
                    },
                    // md: a number of KiB/s, or "system" (0 too) for the
                    // default.
                    store: move |data: &[u8]| {
                        let v = if word(data) == b"system" {
                            None
                        } else {
                            match u32::try_from(parse_u64(data)?).map_err(|_| libc::EINVAL)? {
                                0 => None,
                                v => Some(v),
                            }
                        };
                        sync2.set_speed_limit(max, v);
                        Ok(data.len())
                    },
                })),
            )?;
        }
        let h = array.health().clone();
        degraded = Some(fs.create_attr(
            &md,
            "degraded",
            RO,
            Attr {
                ops: Arc::new(FnAttr {
                    show: move |out: &mut ShowBuf| line(out, format_args!("{}", h.slots().missing())),
                    store: no_store,
                }),
                prealloc: false,
                atomic_write_len: kernfs::PAGE_SIZE,
                seq: false,
                notify: true,
            },
        )?);
    }

    // Members: a directory per member (ids: assembled slots, then members
    // added later through `new_dev`).
    let tree = Arc::new(MemberTree {
        fs: fs.clone(),
        md_dir: md.clone(),
        health: array.health().clone(),
        machine: machine.clone(),
        sync: array.sync_ctl().clone(),
        members: Mutex::new((0..raid_disks + MAX_ADDED).map(|_| None).collect()),
        degraded: std::sync::OnceLock::new(),
    });
    if let Some(d) = degraded {
        let _ = tree.degraded.set(d);
    }
    let ids: Vec<usize> = array.slots.all().map(|(id, _)| id).collect();
    for id in ids {
        tree.create_dir(id)?;
    }
    // md's `new_dev`: umd takes the path of a member device or image file
    // (md takes major:minor), opened read-write, added as a spare.
    if !readonly {
        let t = Arc::downgrade(&tree);
        let template = array.sb.clone();
        let bitmap = array.bitmap().cloned();
        fs.create_attr(
            &md,
            "new_dev",
            0o200,
            plain_attr(Arc::new(FnAttr {
                show: |_: &mut ShowBuf| Err(libc::EACCES),
                store: move |data: &[u8]| {
                    let t = t.upgrade().ok_or(libc::ENODEV)?;
                    add_new_dev(&t, &template, bitmap.as_ref(), data).map(|()| data.len())
                },
            })),
        )?;
    }
    let timer =
        if readonly { None } else { Some(StateMachine::start_timer(&machine).map_err(|_| libc::EAGAIN)?) };
    // Failures block writes until the manager has recorded them; a
    // read-only array has no manager and no writes.
    array.health().set_events(Arc::new(TreeEvents(Arc::downgrade(&tree))), !readonly);
    fs.activate(&md);
    Ok(MdSysfs { md_dir: md, array_state, sync_action, tree, state, _timer: timer })
}

/// md's `new_dev` store: `data` is the path of a device or image file; it
/// is opened read-write, checked (not a member already, large enough for
/// the array's data offset and component size) and added as a spare with
/// its own directory. The metadata manager gives it a slot (`slot`
/// store) and writes its superblock; md then recovers it.
fn add_new_dev(
    tree: &Arc<MemberTree>,
    template: &crate::superblock::Superblock,
    bitmap: Option<&Arc<crate::bitmap::Bitmap>>,
    data: &[u8],
) -> Result<(), Errno> {
    let text = std::str::from_utf8(word(data)).map_err(|_| libc::EINVAL)?;
    if text.is_empty() || text.contains('\0') {
        return Err(libc::EINVAL);
    }
    let path = std::path::PathBuf::from(text);
    let canon = std::fs::canonicalize(&path).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOENT))?;
    let slots = tree.health.slots();
    for (_, m) in slots.all() {
        let theirs = std::fs::canonicalize(m.dev.path()).unwrap_or_else(|_| m.dev.path().to_path_buf());
        if theirs == canon && m.flags() & flags::REMOVED == 0 {
            return Err(libc::EEXIST);
        }
    }
    let m = crate::array::spare_from_path(&canon, template, bitmap.map(|b| &**b))?;
    let id = tree.health.add(m)?;
    tree.create_dir(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_u64(b"123\n"), Ok(123));
        assert_eq!(parse_u64(b"12a"), Err(libc::EINVAL));
        assert_eq!(parse_u64(b""), Err(libc::EINVAL));
        assert_eq!(parse_u64(b"99999999999999999999999"), Err(libc::EINVAL));
        assert_eq!(parse_msec(b"0.200\n"), Ok(200));
        assert_eq!(parse_msec(b"1.5"), Ok(1500));
        assert_eq!(parse_msec(b"2"), Ok(2000));
        assert_eq!(parse_msec(b".05"), Ok(50));
        assert_eq!(parse_msec(b"0.2345"), Err(libc::EINVAL));
        assert_eq!(parse_msec(b"x"), Err(libc::EINVAL));
        assert_eq!(ArrayState::from_word(b"read-auto"), Some(ArrayState::ReadAuto));
        assert_eq!(ArrayState::from_word(b"bogus"), None);
    }

    #[test]
    fn dev_names() {
        assert_eq!(dev_name(Path::new("/tmp/x/m0.img")), "m0.img");
        assert_eq!(dev_name(Path::new("/dev/sdb")), "sdb");
        assert_eq!(dev_name(Path::new("/tmp/a b:c")), "a_b_c");
    }
}
