//! md's `array_state` machine for an array: the words md shows, the words a
//! store accepts in which state, and the write-pending/active/clean
//! handshake with an external metadata manager (`md_write_start`,
//! `md_write_end`, the safe-mode timer, `array_state_store`).
//!
//! ## Responsibility boundary
//! This module owns the array's run state as md keeps it: `ro` (read-write,
//! `readonly`, `read-auto`), `in_sync`, the "change pending" bit an external
//! manager must clear by storing `active`, `safemode`, the count of writes in
//! flight, and whether the array runs at all. What `array_state` shows is
//! derived from those exactly as md's `array_state_show` derives it. The
//! attribute files are `sysfs`'s; this module only calls the notify hook it
//! is given (the `array_state` node's [`kernfs::Node::notify`]).
//!
//! md's rules, as implemented (`W` = writes in flight, counting writers
//! blocked in [`StateMachine::write_start`]):
//!
//! | store           | state                         | result                                   |
//! |-----------------|-------------------------------|------------------------------------------|
//! | `active`        | write-pending                 | handshake done: active, writers wake     |
//! | `active`        | clean/active/active-idle      | accepted, state unchanged (md's fast path) |
//! | `active`        | readonly/read-auto            | restart read-write: clean (`EBUSY` without a write path) |
//! | `clean`         | active/active-idle, `W` = 0   | clean                                    |
//! | `clean`         | any read-write, `W` > 0       | `EBUSY` (write-pending always has `W` > 0) |
//! | `clean`         | clean                         | accepted, unchanged                      |
//! | `clean`         | readonly/read-auto            | restart read-write, then as above        |
//! | `readonly`      | read-write, change pending    | `EBUSY` (md, external metadata)          |
//! | `readonly`      | read-write, `W` > 0           | `EBUSY` (in use)                         |
//! | `readonly`      | read-write idle/read-auto     | readonly (a read-write array is marked clean) |
//! | `readonly`      | readonly                      | accepted, unchanged (md: `ENXIO`; kept for read-only assemblies) |
//! | `read-auto`     | read-write                    | as `readonly`, then read-auto            |
//! | `read-auto`     | readonly                      | read-auto (`EBUSY` without a write path) |
//! | `read-auto`     | read-auto                     | `EINVAL` (md)                            |
//! | `inactive`/`clear` | running, `W` = 0           | stopped (inactive/clear) (`EBUSY` without a write path) |
//! | `inactive`/`clear` | running, `W` > 0           | `EBUSY` (in use)                         |
//! | `inactive`      | inactive/clear                | accepted, unchanged                      |
//! | `clear`         | inactive/clear                | clear                                    |
//! | `active`        | inactive/clear                | `EBUSY` (a stopped array is not re-run here) |
//! | `clean`         | inactive/clear                | `EINVAL` (md: no personality)            |
//! | `suspended`, `write-pending`, `active-idle`, `broken` | any | `EINVAL` (md: cannot be set) |
//! | anything else   | any                           | `EINVAL`                                 |
//!
//! Data path: [`StateMachine::write_start`] from `clean` sets change-pending
//! (shows `write-pending`), notifies and blocks until `active` is stored;
//! from `read-auto` it first switches to read-write; from `active-idle` it
//! clears safemode (shows `active`: the metadata is still dirty, so md asks
//! no handshake); from `readonly` it fails `EROFS`; on a stopped array
//! `ENODEV`; on a broken array `EIO`. [`StateMachine::write_end`] re-arms
//! the safe-mode deadline; `safe_mode_delay` after the last write ends (and
//! none is in flight) the array shows `active-idle` until the manager
//! stores `clean`. A delay of 0 disables safe mode, as in md.
//!
//! Every visible change notifies, and every successful store notifies (md's
//! store does). md does not notify on `active-idle` → `active` in
//! `md_write_start`; we do (more events are harmless to a manager).
//!
//! ## Synchronization model
//! One `Mutex<Inner>` and one `Condvar`, shared by blocked writers, the
//! safe-mode timer thread and stores. The notify hook is lock-free and is
//! called with the mutex held (allowed by kernfs). Lock order: this mutex is
//! a leaf (no other lock is taken under it).
//!
//! The safe-mode timer is a dedicated thread per writable array (started by
//! [`StateMachine::start_timer`]); it sleeps on the condvar until the
//! deadline or a change, and exits when [`TimerHandle`] is dropped (which
//! joins it), so no thread outlives its array.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kernfs::Errno;

pub use crate::sysfs::ArrayState;

/// md's `mddev->ro`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ro {
    Rdwr,
    Readonly,
    AutoRead,
}

/// Whether the array runs (has a personality).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Running,
    Inactive,
    Clear,
}

#[derive(Debug)]
struct Inner {
    run: Run,
    ro: Ro,
    in_sync: bool,
    change_pending: bool,
    safemode: bool,
    broken: bool,
    writes: u32,
    safe_mode_delay: Duration,
    deadline: Option<Instant>,
    shutdown: bool,
    timer_alive: bool,
}

impl Inner {
    /// md's `array_state_show`.
    fn show(&self) -> ArrayState {
        match self.run {
            Run::Clear => return ArrayState::Clear,
            Run::Inactive => return ArrayState::Inactive,
            Run::Running => {}
        }
        if self.broken {
            return ArrayState::Broken;
        }
        match self.ro {
            Ro::Readonly => ArrayState::Readonly,
            Ro::AutoRead => ArrayState::ReadAuto,
            Ro::Rdwr if self.change_pending => ArrayState::WritePending,
            Ro::Rdwr if self.in_sync => ArrayState::Clean,
            Ro::Rdwr if self.safemode => ArrayState::ActiveIdle,
            Ro::Rdwr => ArrayState::Active,
        }
    }
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// md's run state of one array. See the module docs for the rules.
pub struct StateMachine {
    inner: Mutex<Inner>,
    cv: Condvar,
    /// Whether a write path exists: without one, restarting read-write,
    /// read-auto and stopping are `EBUSY` (read-only assemblies).
    writable: bool,
    notify: OnceLock<Hook>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("state", &self.state())
            .field("writable", &self.writable)
            .finish()
    }
}

impl StateMachine {
    /// A running array: `readonly` for a read-only assembly (no write
    /// path), `clean` for a writable one.
    pub fn new(writable: bool, safe_mode_delay: Duration) -> StateMachine {
        StateMachine {
            inner: Mutex::new(Inner {
                run: Run::Running,
                ro: if writable { Ro::Rdwr } else { Ro::Readonly },
                in_sync: true,
                change_pending: false,
                safemode: false,
                broken: false,
                writes: 0,
                safe_mode_delay,
                deadline: None,
                shutdown: false,
                timer_alive: false,
            }),
            cv: Condvar::new(),
            writable,
            notify: OnceLock::new(),
        }
    }

    /// Installs the notify hook (once; later calls are ignored). It is
    /// called with the state lock held and must not block.
    pub fn set_notify(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.notify.set(Box::new(hook));
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under this lock leaves consistent flags; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fire(&self) {
        if let Some(h) = self.notify.get() {
            h();
        }
    }

    /// Notifies if the shown state changed since `before`; wakes waiters.
    fn changed(&self, g: &Inner, before: ArrayState) {
        if g.show() != before {
            self.fire();
        }
        self.cv.notify_all();
    }

    /// What `array_state` shows now.
    pub fn state(&self) -> ArrayState {
        self.lock().show()
    }

    /// Writes in flight (including writers blocked in `write_start`).
    pub fn writes_in_flight(&self) -> u32 {
        self.lock().writes
    }

    /// Whether a safe-mode timer thread is running for this array.
    pub fn timer_running(&self) -> bool {
        self.lock().timer_alive
    }

    /// `safe_mode_delay`.
    pub fn safe_mode_delay(&self) -> Duration {
        self.lock().safe_mode_delay
    }

    /// Sets `safe_mode_delay` (0 disables safe mode). Re-arms a pending
    /// deadline with the new delay.
    pub fn set_safe_mode_delay(&self, d: Duration) {
        let mut g = self.lock();
        g.safe_mode_delay = d;
        if g.deadline.is_some() {
            g.deadline = (!d.is_zero()).then(|| Instant::now() + d);
        }
        self.cv.notify_all();
    }

    /// md's `array_state_store`: `word` is the stored text (one trailing
    /// newline allowed). Returns the errno md would; on error nothing changes.
    pub fn store(&self, word: &[u8]) -> Result<(), Errno> {
        let w = word.strip_suffix(b"\n").unwrap_or(word);
        let want = ArrayState::from_word(w).ok_or(libc::EINVAL)?;
        let mut g = self.lock();
        let running = g.run == Run::Running;
        match want {
            ArrayState::Suspended
            | ArrayState::WritePending
            | ArrayState::ActiveIdle
            | ArrayState::Broken => return Err(libc::EINVAL),
            ArrayState::Active if running => {
                if g.ro != Ro::Rdwr {
                    self.restart(&mut g)?;
                }
                g.change_pending = false;
            }
            ArrayState::Clean if running => {
                if g.ro != Ro::Rdwr {
                    self.restart(&mut g)?;
                }
                // set_in_sync: only with no write in flight.
                if g.writes > 0 {
                    return Err(libc::EBUSY);
                }
                g.in_sync = true;
                g.safemode = false;
                g.deadline = None;
            }
            ArrayState::Readonly | ArrayState::ReadAuto if running => {
                if g.ro == Ro::Rdwr {
                    if !self.writable || g.change_pending || g.writes > 0 {
                        return Err(libc::EBUSY);
                    }
                    // md_set_readonly writes the superblock clean.
                    g.in_sync = true;
                    g.safemode = false;
                    g.deadline = None;
                } else if want == ArrayState::ReadAuto {
                    match g.ro {
                        // md: neither set_readonly nor restart runs.
                        Ro::AutoRead => return Err(libc::EINVAL),
                        _ if !self.writable => return Err(libc::EBUSY),
                        _ => {}
                    }
                }
                g.ro = if want == ArrayState::Readonly { Ro::Readonly } else { Ro::AutoRead };
            }
            ArrayState::Inactive | ArrayState::Clear if running => {
                if !self.writable || g.writes > 0 {
                    return Err(libc::EBUSY);
                }
                g.run = if want == ArrayState::Inactive { Run::Inactive } else { Run::Clear };
                g.deadline = None;
            }
            ArrayState::Inactive => {}
            ArrayState::Clear => g.run = Run::Clear,
            ArrayState::Clean => return Err(libc::EINVAL),
            // Running a stopped array again is assembly's job.
            _ => return Err(libc::EBUSY),
        }
        // md's store notifies on success even when nothing changed.
        self.fire();
        self.cv.notify_all();
        Ok(())
    }

    /// md's `restart_array`: read-only → read-write.
    fn restart(&self, g: &mut Inner) -> Result<(), Errno> {
        if !self.writable {
            return Err(libc::EBUSY);
        }
        g.ro = Ro::Rdwr;
        Ok(())
    }

    /// md's `md_write_start`: call before every write. Blocks while the
    /// external manager has not acknowledged (stored `active`) the switch
    /// from clean. `EROFS` on a `readonly` array, `ENODEV` once stopped,
    /// `EIO` when broken. On success the caller must call
    /// [`write_end`](Self::write_end) after the write.
    pub fn write_start(&self) -> Result<(), Errno> {
        let mut g = self.lock();
        let before = g.show();
        if g.run != Run::Running {
            return Err(libc::ENODEV);
        }
        if g.broken {
            return Err(libc::EIO);
        }
        match g.ro {
            Ro::Readonly => return Err(libc::EROFS),
            Ro::AutoRead => g.ro = Ro::Rdwr,
            Ro::Rdwr => {}
        }
        g.writes += 1;
        g.safemode = false;
        if g.in_sync {
            g.in_sync = false;
            g.change_pending = true;
        }
        self.changed(&g, before);
        while g.change_pending && g.run == Run::Running && !g.broken {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if g.run != Run::Running || g.broken {
            let err = if g.run != Run::Running { libc::ENODEV } else { libc::EIO };
            g.writes -= 1;
            self.cv.notify_all();
            return Err(err);
        }
        Ok(())
    }

    /// md's `md_write_end`: call after each write whose `write_start`
    /// succeeded. Arms the safe-mode deadline.
    pub fn write_end(&self) {
        let mut g = self.lock();
        g.writes = g.writes.saturating_sub(1);
        if !g.safe_mode_delay.is_zero() {
            g.deadline = Some(Instant::now() + g.safe_mode_delay);
        }
        self.cv.notify_all();
    }

    /// md's `md_error` on a member of this array: "change pending" is set
    /// (a running read-write array shows `write-pending` until the manager
    /// has recorded the failure and stored `active`), and pollers are told.
    pub fn member_failed(&self) {
        let mut g = self.lock();
        if g.run == Run::Running {
            g.change_pending = true;
        }
        // Notify even if the word did not change: the manager must look.
        self.fire();
        self.cv.notify_all();
    }

    /// Wakes waiters of [`wait_while`](Self::wait_while) after the
    /// condition they test changed (callers change it first).
    pub fn poke(&self) {
        let _g = self.lock();
        self.cv.notify_all();
    }

    /// md's `md_wait_for_blocked_rdev`: blocks while `blocked()` holds and
    /// the array runs and is not broken; `ENODEV` if it stopped meanwhile,
    /// `EIO` if it broke. Whoever makes `blocked()` false calls
    /// [`poke`](Self::poke) afterwards.
    pub fn wait_while(&self, blocked: impl Fn() -> bool) -> Result<(), Errno> {
        let mut g = self.lock();
        loop {
            if g.run != Run::Running {
                return Err(libc::ENODEV);
            }
            if g.broken {
                return Err(libc::EIO);
            }
            if !blocked() {
                return Ok(());
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Marks the array broken (md's `MD_BROKEN`): shows `broken`, blocked
    /// and later writers fail `EIO`.
    pub fn set_broken(&self) {
        let mut g = self.lock();
        let before = g.show();
        g.broken = true;
        self.changed(&g, before);
    }

    /// Stops the array (the owner's `umd stop`): shows `inactive`, blocked
    /// and later writers fail `ENODEV`.
    pub fn stop(&self) {
        let mut g = self.lock();
        let before = g.show();
        g.run = Run::Inactive;
        g.deadline = None;
        self.changed(&g, before);
    }

    /// Forces the flags so that the array shows `s` (for md's own
    /// transitions that have no dedicated method yet, and for tests).
    pub fn force(&self, s: ArrayState) {
        let mut g = self.lock();
        let before = g.show();
        g.broken = s == ArrayState::Broken;
        g.run = match s {
            ArrayState::Clear => Run::Clear,
            ArrayState::Inactive => Run::Inactive,
            _ => Run::Running,
        };
        g.ro = match s {
            ArrayState::Readonly | ArrayState::Suspended => Ro::Readonly,
            ArrayState::ReadAuto => Ro::AutoRead,
            _ => g.ro,
        };
        if matches!(
            s,
            ArrayState::Clean | ArrayState::Active | ArrayState::WritePending | ArrayState::ActiveIdle
        ) {
            g.ro = Ro::Rdwr;
            g.in_sync = s == ArrayState::Clean;
            g.change_pending = s == ArrayState::WritePending;
            g.safemode = s == ArrayState::ActiveIdle;
        }
        self.changed(&g, before);
    }

    /// Starts the safe-mode timer thread of `this`; it stops when the
    /// returned handle is dropped.
    pub fn start_timer(this: &Arc<StateMachine>) -> std::io::Result<TimerHandle> {
        let sm = this.clone();
        {
            let mut g = this.lock();
            g.shutdown = false;
            g.timer_alive = true;
        }
        let thread = std::thread::Builder::new().name("md-safemode".into()).spawn(move || sm.timer_loop())?;
        Ok(TimerHandle { sm: this.clone(), thread: Some(thread) })
    }

    fn timer_loop(&self) {
        let mut g = self.lock();
        loop {
            if g.shutdown {
                g.timer_alive = false;
                return;
            }
            match g.deadline {
                None => g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now < d {
                        g = self.cv.wait_timeout(g, d - now).unwrap_or_else(|p| p.into_inner()).0;
                        continue;
                    }
                    // md_safemode_timeout: idle only with nothing in flight.
                    g.deadline = None;
                    if g.writes == 0 && g.run == Run::Running && g.ro == Ro::Rdwr && !g.in_sync {
                        let before = g.show();
                        g.safemode = true;
                        self.changed(&g, before);
                    }
                }
            }
        }
    }
}

/// Owns a safe-mode timer thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct TimerHandle {
    sm: Arc<StateMachine>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TimerHandle {
    fn drop(&mut self) {
        self.sm.lock().shutdown = true;
        self.sm.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn counted(writable: bool) -> (Arc<StateMachine>, Arc<AtomicU32>) {
        let sm = Arc::new(StateMachine::new(writable, Duration::from_millis(20)));
        let n = Arc::new(AtomicU32::new(0));
        let n2 = n.clone();
        sm.set_notify(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        });
        (sm, n)
    }

    #[test]
    fn store_table() {
        let (sm, n) = counted(true);
        assert_eq!(sm.state(), ArrayState::Clean);
        for w in [&b"write-pending"[..], b"active-idle", b"broken", b"suspended", b"bogus", b"", b"clean\n\n"]
        {
            assert_eq!(sm.store(w), Err(libc::EINVAL), "{:?}", String::from_utf8_lossy(w));
        }
        assert_eq!(sm.state(), ArrayState::Clean);
        assert_eq!(n.load(Ordering::SeqCst), 0);
        // active from clean: accepted, unchanged (fast path), notifies.
        assert_eq!(sm.store(b"active\n"), Ok(()));
        assert_eq!(sm.state(), ArrayState::Clean);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        sm.force(ArrayState::Active);
        assert_eq!(sm.store(b"clean"), Ok(()));
        assert_eq!(sm.state(), ArrayState::Clean);
        assert_eq!(sm.store(b"readonly"), Ok(()));
        assert_eq!(sm.state(), ArrayState::Readonly);
        assert_eq!(sm.write_start(), Err(libc::EROFS));
        assert_eq!(sm.store(b"read-auto"), Ok(()));
        assert_eq!(sm.state(), ArrayState::ReadAuto);
        assert_eq!(sm.store(b"read-auto"), Err(libc::EINVAL));
        assert_eq!(sm.store(b"active"), Ok(()));
        assert_eq!(sm.state(), ArrayState::Clean, "restart keeps in_sync");
        assert_eq!(sm.store(b"read-auto"), Ok(()));
        assert_eq!(sm.store(b"clean"), Ok(()));
        assert_eq!(sm.state(), ArrayState::Clean);
        assert_eq!(sm.store(b"inactive"), Ok(()));
        assert_eq!(sm.state(), ArrayState::Inactive);
        assert_eq!(sm.write_start(), Err(libc::ENODEV));
        assert_eq!(sm.store(b"clean"), Err(libc::EINVAL));
        assert_eq!(sm.store(b"active"), Err(libc::EBUSY));
        assert_eq!(sm.store(b"clear"), Ok(()));
        assert_eq!(sm.state(), ArrayState::Clear);
    }

    #[test]
    fn read_only_assembly_refuses_restart() {
        let (sm, _) = counted(false);
        assert_eq!(sm.state(), ArrayState::Readonly);
        for w in ["clean", "active", "read-auto", "inactive", "clear"] {
            assert_eq!(sm.store(w.as_bytes()), Err(libc::EBUSY), "{w}");
        }
        assert_eq!(sm.store(b"readonly"), Ok(()));
        assert_eq!(sm.state(), ArrayState::Readonly);
    }

    #[test]
    fn busy_while_writing_and_idle_rules() {
        let (sm, _) = counted(true);
        sm.force(ArrayState::Active);
        sm.write_start().expect("active: no handshake");
        assert_eq!(sm.store(b"clean"), Err(libc::EBUSY));
        assert_eq!(sm.store(b"readonly"), Err(libc::EBUSY));
        assert_eq!(sm.store(b"inactive"), Err(libc::EBUSY));
        assert_eq!(sm.state(), ArrayState::Active);
        sm.write_end();
        // active-idle → active on a write, no handshake (metadata dirty).
        sm.force(ArrayState::ActiveIdle);
        sm.write_start().expect("active-idle: no handshake");
        assert_eq!(sm.state(), ArrayState::Active);
        sm.write_end();
        // Change pending: readonly refused (external metadata).
        sm.force(ArrayState::WritePending);
        assert_eq!(sm.store(b"readonly"), Err(libc::EBUSY));
        assert_eq!(sm.state(), ArrayState::WritePending);
    }

    #[test]
    fn stop_and_broken_wake_blocked_writers() {
        for (end, err) in [(0, libc::ENODEV), (1, libc::EIO)] {
            let (sm, _) = counted(true);
            let s2 = sm.clone();
            let t = std::thread::spawn(move || s2.write_start());
            while sm.state() != ArrayState::WritePending {
                std::thread::yield_now();
            }
            if end == 0 {
                sm.stop();
            } else {
                sm.set_broken();
            }
            assert_eq!(t.join().expect("join"), Err(err));
            assert_eq!(sm.writes_in_flight(), 0);
        }
    }

    #[test]
    fn timer_thread_idles_and_stops() {
        let (sm, _) = counted(true);
        let timer = StateMachine::start_timer(&sm).expect("timer");
        sm.force(ArrayState::Active);
        sm.write_start().expect("start");
        sm.write_end();
        let t0 = Instant::now();
        while sm.state() != ArrayState::ActiveIdle {
            assert!(t0.elapsed() < Duration::from_secs(10), "no safe mode");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sm.timer_running());
        drop(timer);
        assert!(!sm.timer_running());
        assert_eq!(Arc::strong_count(&sm), 1, "timer thread released the machine");
    }
}
