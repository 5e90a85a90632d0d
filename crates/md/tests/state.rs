//! md's `array_state` machine on a running writable (external metadata)
//! array, observed the way a metadata manager observes it: through the
//! `md/array_state` attribute, its poll events, and its stores.

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::unpack_fixture;
use kernfs::{Kernfs, OpenFile, OpenFlags};
use md::sysfs::{self, MdSysfs};
use md::{assemble, AssembleOptions};

fn write(fs: &Kernfs, path: &str, data: &[u8]) -> Result<usize, i32> {
    let n = fs.walk(path).unwrap_or_else(|| panic!("{path} missing"));
    let f = n.open(OpenFlags::RDWR).expect("open");
    f.write(0, data)
}

fn read(fs: &Kernfs, path: &str) -> String {
    let f = fs.walk(path).expect("attr").open(OpenFlags::RDONLY).expect("open");
    let mut buf = [0u8; 256];
    let k = f.read(0, &mut buf).expect("read");
    String::from_utf8_lossy(&buf[..k]).into_owned()
}

struct Rig {
    fs: Arc<Kernfs>,
    sys: Arc<MdSysfs>,
    /// An open `array_state`, as a manager keeps it.
    watch: OpenFile,
}

/// `unpack_fixture`'s directory is per process and fixture: tests of this
/// binary unpack, assemble and publish one at a time, then remove the
/// directory (the array keeps its members open).
static UNPACK: Mutex<()> = Mutex::new(());

fn rig() -> Rig {
    let (fs, sys) = {
        let _g = UNPACK.lock().unwrap_or_else(|p| p.into_inner());
        let (dir, _) = unpack_fixture("raid1_2d", 2);
        let paths: Vec<PathBuf> = (0..2).map(|k| dir.0.join(format!("m{k}.img"))).collect();
        let asm = assemble(&paths, &AssembleOptions::default()).expect("assemble");
        let fs = Kernfs::new();
        let sys = Arc::new(sysfs::publish(&fs, &fs.root(), &asm.array, false).expect("publish"));
        drop(dir);
        (fs, sys)
    };
    let watch = fs.walk("md/array_state").expect("array_state").open(OpenFlags::RDONLY).expect("open");
    let mut buf = [0u8; 64];
    watch.read(0, &mut buf).expect("first read");
    Rig { fs, sys, watch }
}

impl Rig {
    /// The next event on `array_state` (waited for, bounded) and the word
    /// it then reads.
    fn event(&self) -> String {
        let bits = self.watch.poll_wait(Duration::from_secs(10));
        assert_ne!(bits & libc::POLLPRI, 0, "expected a notify on array_state");
        self.word()
    }

    /// The current word; consumes a pending event.
    fn word(&self) -> String {
        let mut buf = [0u8; 64];
        let k = self.watch.read(0, &mut buf).expect("read");
        String::from_utf8_lossy(&buf[..k]).trim_end().to_string()
    }

    fn no_event(&self) {
        assert_eq!(self.watch.poll() & libc::POLLPRI, 0, "unexpected notify");
    }

    fn store(&self, w: &str) -> Result<usize, i32> {
        write(&self.fs, "md/array_state", format!("{w}\n").as_bytes())
    }

    /// Spawns a writer: `write_start`, report, wait for `go`, `write_end`.
    fn writer(&self) -> (mpsc::Receiver<Result<(), i32>>, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let sm = self.sys.machine().clone();
        let t = std::thread::spawn(move || {
            let r = sm.write_start();
            let ok = r.is_ok();
            tx.send(r).expect("send");
            if ok {
                let _ = go_rx.recv();
                sm.write_end();
            }
        });
        (rx, go_tx, t)
    }

    /// Asserts the writer is still blocked after 100 ms.
    fn still_blocked(rx: &mpsc::Receiver<Result<(), i32>>) {
        assert_eq!(rx.recv_timeout(Duration::from_millis(100)), Err(mpsc::RecvTimeoutError::Timeout));
    }
}

#[test]
fn writable_array_reads_external_metadata_and_starts_clean() {
    let r = rig();
    assert!(read(&r.fs, "md/metadata_version").starts_with("external:1."), "external metadata");
    assert_eq!(r.word(), "clean");
    assert_eq!(read(&r.fs, "md/safe_mode_delay"), "0.200\n");
}

#[test]
fn write_burst_handshake_and_safe_mode() {
    let r = rig();
    assert_eq!(write(&r.fs, "md/safe_mode_delay", b"0.050\n"), Ok(6));
    let (rx, go, t) = r.writer();
    assert_eq!(r.event(), "write-pending");
    Rig::still_blocked(&rx);
    // Not-allowed stores while the handshake is pending: state unchanged.
    assert_eq!(r.store("clean"), Err(libc::EBUSY));
    assert_eq!(r.store("readonly"), Err(libc::EBUSY));
    assert_eq!(r.store("read-auto"), Err(libc::EBUSY));
    assert_eq!(r.store("inactive"), Err(libc::EBUSY));
    assert_eq!(r.store("write-pending"), Err(libc::EINVAL));
    r.no_event();
    assert_eq!(r.word(), "write-pending");
    Rig::still_blocked(&rx);
    // The manager acknowledges.
    assert_eq!(r.store("active"), Ok(7));
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
    assert_eq!(r.event(), "active");
    // A write in flight: no clean, no idle.
    assert_eq!(r.store("clean"), Err(libc::EBUSY));
    assert_eq!(r.word(), "active");
    // A second write while active needs no handshake.
    r.sys.machine().write_start().expect("second write");
    r.sys.machine().write_end();
    go.send(()).expect("go");
    t.join().expect("writer");
    // Idle for safe_mode_delay: active-idle (bounded wait on the timer).
    let t0 = Instant::now();
    let mut w = r.event();
    while w != "active-idle" {
        assert!(t0.elapsed() < Duration::from_secs(10), "stuck at {w}");
        w = r.event();
    }
    assert_eq!(r.store("clean"), Ok(6));
    assert_eq!(r.event(), "clean");
    // And the next burst asks again.
    let (rx, go, t) = r.writer();
    assert_eq!(r.event(), "write-pending");
    Rig::still_blocked(&rx);
    assert_eq!(r.store("active"), Ok(7));
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
    go.send(()).expect("go");
    t.join().expect("writer");
}

#[test]
fn read_auto_switches_to_write_pending_on_first_write() {
    let r = rig();
    assert_eq!(r.store("read-auto"), Ok(10));
    assert_eq!(r.event(), "read-auto");
    let (rx, go, t) = r.writer();
    assert_eq!(r.event(), "write-pending");
    Rig::still_blocked(&rx);
    assert_eq!(r.store("active"), Ok(7));
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
    assert_eq!(r.event(), "active");
    go.send(()).expect("go");
    t.join().expect("writer");
}

#[test]
fn readonly_refuses_writes() {
    let r = rig();
    assert_eq!(r.store("readonly"), Ok(9));
    assert_eq!(r.event(), "readonly");
    assert_eq!(r.sys.machine().write_start(), Err(libc::EROFS));
    r.no_event();
    assert_eq!(r.word(), "readonly");
    // Back to read-write: clean (the manager's metadata is clean).
    assert_eq!(r.store("clean"), Ok(6));
    assert_eq!(r.event(), "clean");
}

#[test]
fn invalid_words_and_transitions_change_nothing() {
    let r = rig();
    for w in ["write-pending", "active-idle", "broken", "suspended", "bogus", "Clean", ""] {
        assert_eq!(r.store(w), Err(libc::EINVAL), "{w:?}");
        r.no_event();
        assert_eq!(r.word(), "clean", "{w:?}");
    }
    // Stop an idle array; then writes and clean are refused.
    assert_eq!(r.store("inactive"), Ok(9));
    assert_eq!(r.event(), "inactive");
    assert_eq!(r.sys.machine().write_start(), Err(libc::ENODEV));
    assert_eq!(r.store("clean"), Err(libc::EINVAL));
    assert_eq!(r.store("active"), Err(libc::EBUSY));
    r.no_event();
    assert_eq!(r.word(), "inactive");
}

#[test]
fn stopping_wakes_a_blocked_writer_with_enodev() {
    let r = rig();
    let (rx, _go, t) = r.writer();
    assert_eq!(r.event(), "write-pending");
    Rig::still_blocked(&rx);
    r.sys.machine().stop();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Err(libc::ENODEV)));
    assert_eq!(r.event(), "inactive");
    t.join().expect("writer");
}

#[test]
fn dropping_the_array_stops_its_timer() {
    let r = rig();
    let sm = r.sys.machine().clone();
    assert!(sm.timer_running());
    drop(r);
    // MdSysfs's drop stopped and joined the timer thread.
    assert!(!sm.timer_running());
}
