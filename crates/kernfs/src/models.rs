//! Concurrency models: the crate's real code, built over the `sync` facade's
//! shuttle primitives, run under shuttle's randomized and PCT schedulers.
//!
//! What makes a failure visible:
//! * a lost wakeup: futex sleeps are shuttle condition-variable waits that
//!   never time out, so a poller nobody wakes is a deadlock shuttle reports;
//! * a use after free of an open node: the checking RCU marks a retired open
//!   node dead as soon as no read section is active and asserts on every
//!   dereference;
//! * interleaved writers: the model's copy into the prealloc buffer yields to
//!   the scheduler every 4 bytes, so a buffer not held for the whole write
//!   is caught by the store's check;
//! * ordering violations: assertions inside the callbacks (no `release`
//!   while a `store` runs; no `store` still running once `remove` returned).
//!
//! Iterations are bounded so the whole module runs in seconds.

use std::sync::Arc;
use std::time::Duration;

use shuttle::sync::atomic::{AtomicBool, AtomicUsize};
use shuttle::thread;

use crate::sync::Ordering::SeqCst;
use crate::{Attr, AttrOps, Errno, Kernfs, NodeRef, OpenFlags, ShowBuf};

const ITERATIONS: usize = 1000;
const FOREVER: Duration = Duration::MAX;

/// Runs `f` under the random scheduler and the PCT scheduler (depth 3).
fn check(f: impl Fn() + Send + Sync + 'static) {
    let f = Arc::new(f);
    let g = f.clone();
    shuttle::check_random(move || f(), ITERATIONS);
    shuttle::check_pct(move || g(), ITERATIONS, 3);
}

/// A test attribute counting opens, stores and releases, with scheduling
/// points and ordering checks inside its callbacks.
#[derive(Default)]
struct Model {
    opens: AtomicUsize,
    releases: AtomicUsize,
    in_store: AtomicUsize,
    stores: AtomicUsize,
    removed: AtomicBool,
    store_len: usize,
    /// First byte of every stored value, in store order.
    stored: std::sync::Mutex<Vec<u8>>,
}

impl AttrOps for Model {
    fn show(&self, out: &mut ShowBuf) -> Result<(), Errno> {
        out.push_bytes(b"v\n")
    }

    fn store(&self, data: &[u8]) -> Result<usize, Errno> {
        self.in_store.fetch_add(1, SeqCst);
        if self.store_len != 0 {
            assert_eq!(data.len(), self.store_len);
            assert!(data.iter().all(|b| *b == data[0]), "writers interleaved in the buffer: {data:?}");
        }
        thread::yield_now();
        assert!(!self.removed.load(SeqCst), "remove() returned while a store was in flight");
        self.stores.fetch_add(1, SeqCst);
        if let (Some(b), Ok(mut log)) = (data.first(), self.stored.lock()) {
            log.push(*b);
        }
        self.in_store.fetch_sub(1, SeqCst);
        Ok(data.len())
    }

    fn open(&self) -> Result<(), Errno> {
        self.opens.fetch_add(1, SeqCst);
        Ok(())
    }

    fn release(&self) {
        assert_eq!(self.in_store.load(SeqCst), 0, "release() while a store was in flight");
        self.releases.fetch_add(1, SeqCst);
    }
}

fn setup(model: Model, prealloc: bool) -> (Arc<Kernfs>, NodeRef, Arc<Model>) {
    let fs = Kernfs::new();
    let ops = Arc::new(model);
    let n = fs.create_attr(&fs.root(), "a", 0o644, Attr { prealloc, ..Attr::new(ops.clone()) }).unwrap();
    fs.activate(&n);
    (fs, n, ops)
}

/// (1a) No lost wakeup: a notify after the poller's read always wakes both
/// the poller sleeping in `poll_wait` and a `wait_notify` sleeper, whatever
/// point of their check-then-sleep sequence it hits; meanwhile other files
/// of the node are opened and closed.
#[test]
fn notify_never_loses_a_wakeup() {
    check(|| {
        let (fs, n, ops) = setup(Model::default(), false);
        let f = n.open(OpenFlags::RDONLY).unwrap();
        let mut buf = [0u8; 4];
        f.read(0, &mut buf).unwrap();
        let gen0 = fs.notify_generation();

        let poller = thread::spawn(move || {
            let bits = f.poll_wait(FOREVER);
            assert_ne!(bits & libc::POLLPRI, 0);
            assert_ne!(bits & libc::POLLERR, 0);
        });
        let fs2 = fs.clone();
        let gen_waiter = thread::spawn(move || assert_ne!(fs2.wait_notify(gen0, FOREVER), gen0));
        let n2 = n.clone();
        let churn = thread::spawn(move || {
            for _ in 0..2 {
                let g = n2.open(OpenFlags::RDONLY).unwrap();
                drop(g);
            }
        });
        n.notify();
        poller.join().unwrap();
        gen_waiter.join().unwrap();
        churn.join().unwrap();
        assert_eq!(ops.opens.load(SeqCst), 3);
        assert_eq!(ops.releases.load(SeqCst), 3);
    });
}

/// (1b) notify racing open, release and removal: the open node is created
/// and retired under the notifier's feet; no access after a grace period
/// (checked by the model RCU), a poller is woken by the removal if not by a
/// notify, every successful open is released exactly once.
#[test]
fn notify_races_open_release_remove() {
    check(|| {
        let (fs, n, ops) = setup(Model::default(), false);
        let n1 = n.clone();
        let opener = thread::spawn(move || {
            for _ in 0..2 {
                if let Ok(f) = n1.open(OpenFlags::RDWR) {
                    let mut buf = [0u8; 4];
                    let _ = f.read(0, &mut buf);
                    let _ = f.poll();
                    drop(f);
                }
            }
        });
        let n2 = n.clone();
        let notifier = thread::spawn(move || {
            for _ in 0..3 {
                n2.notify();
            }
        });
        let n3 = n.clone();
        let poller = thread::spawn(move || {
            if let Ok(f) = n3.open(OpenFlags::RDONLY) {
                let mut buf = [0u8; 4];
                let read = f.read(0, &mut buf);
                let bits = f.poll_wait(FOREVER);
                assert_ne!(bits & libc::POLLPRI, 0, "poll_wait returned without PRI ({read:?})");
            }
        });
        let fs2 = fs.clone();
        let n4 = n.clone();
        let remover = thread::spawn(move || {
            fs2.remove(&n4);
            assert!(n4.open(OpenFlags::RDONLY).is_err());
        });
        for t in [opener, notifier, poller, remover] {
            t.join().unwrap();
        }
        assert_eq!(ops.opens.load(SeqCst), ops.releases.load(SeqCst));
    });
}

/// (2) Removal racing an in-flight store: `remove` returns only after the
/// store finished (asserted in the store), `release` never overlaps a store
/// and runs exactly once, operations after removal fail with ENODEV.
#[test]
fn removal_waits_for_in_flight_store() {
    check(|| {
        let (fs, n, ops) = setup(Model::default(), true);
        let f = Arc::new(n.open(OpenFlags::RDWR).unwrap());
        let f1 = f.clone();
        let ops1 = ops.clone();
        let writer = thread::spawn(move || {
            for _ in 0..2 {
                let removed_before = ops1.removed.load(SeqCst);
                let r = f1.write(0, b"x");
                if removed_before {
                    assert_eq!(r, Err(libc::ENODEV));
                } else {
                    assert!(r == Ok(1) || r == Err(libc::ENODEV), "{r:?}");
                }
            }
        });
        let f2 = f.clone();
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 4];
            let r = f2.read(0, &mut buf);
            assert!(r == Ok(2) || r == Err(libc::ENODEV), "{r:?}");
            let _ = f2.poll();
        });
        let ops2 = ops.clone();
        let remover = thread::spawn(move || {
            fs.remove(&n);
            assert_eq!(ops2.in_store.load(SeqCst), 0);
            ops2.removed.store(true, SeqCst);
        });
        for t in [writer, reader, remover] {
            t.join().unwrap();
        }
        assert_eq!(f.write(0, b"z"), Err(libc::ENODEV));
        let mut buf = [0u8; 4];
        assert_eq!(f.read(0, &mut buf), Err(libc::ENODEV));
        assert_eq!(f.poll() & libc::POLLERR, libc::POLLERR);
        assert_eq!(ops.releases.load(SeqCst), 1, "the drain released");
        drop(f);
        assert_eq!(ops.releases.load(SeqCst), 1, "close after drain does not release again");
    });
}

/// (3) Two writers on one prealloc open file never interleave inside the
/// shared buffer: the copy (which yields every 4 bytes in the model) and the
/// store run under the buffer's mutex, so every store sees exactly the bytes
/// its own write copied (uniform, and each written value stored once).
#[test]
fn prealloc_writers_do_not_interleave() {
    check(|| {
        let (_fs, n, ops) = setup(Model { store_len: 16, ..Model::default() }, true);
        let f = Arc::new(n.open(OpenFlags::RDWR).unwrap());
        let writers: Vec<_> = [[b'a', b'b'], [b'c', b'd']]
            .into_iter()
            .map(|values| {
                let f = f.clone();
                thread::spawn(move || {
                    for c in values {
                        assert_eq!(f.write(0, &[c; 16]), Ok(16));
                    }
                })
            })
            .collect();
        let mut buf = [0u8; 4];
        assert_eq!(f.read(0, &mut buf), Ok(2));
        for w in writers {
            w.join().unwrap();
        }
        let mut stored = ops.stored.lock().unwrap().clone();
        stored.sort_unstable();
        assert_eq!(stored, b"abcd", "a store saw another write's bytes");
    });
}
