//! Functional tests of the public API: the tree, open files, poll/notify,
//! removal and its drain.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Val;
use kernfs::{Attr, AttrOps, Errno, Kernfs, NodeKind, NodeRef, OpenFlags, ShowBuf, PAGE_SIZE};

const PRI: i16 = libc::POLLPRI | libc::POLLERR;
const IN: i16 = libc::POLLIN | libc::POLLRDNORM;
const LONG: Duration = Duration::from_secs(20);

fn attr(fs: &Kernfs, parent: &NodeRef, name: &str, ops: Arc<Val>) -> NodeRef {
    fs.create_attr(parent, name, 0o644, Attr::new(ops)).unwrap()
}

fn read_all(f: &kernfs::OpenFile) -> Vec<u8> {
    let mut buf = vec![0; 2 * PAGE_SIZE + 100];
    let n = f.read(0, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Kernfs>();
    send_sync::<kernfs::Node>();
    send_sync::<kernfs::OpenFile>();
    send_sync::<Attr>();
}

#[test]
fn tree_create_activate_lookup_walk_readdir() {
    let fs = Kernfs::new();
    let root = fs.root();
    assert_eq!(root.id(), 1);
    assert_eq!(root.kind(), NodeKind::Dir);
    assert!(root.is_active());
    assert!(root.parent().is_none());

    let md = fs.create_dir(&root, "md", 0o755).unwrap();
    let v = Val::new("clean\n");
    let st = attr(&fs, &md, "array_state", v.clone());
    let dev = fs.create_dir(&md, "dev-sda", 0o755).unwrap();
    let ds = attr(&fs, &dev, "state", Val::new("in_sync\n"));
    let link = fs.create_symlink(&md, "rd0", "dev-sda").unwrap();

    // Deactivated until activated: invisible, not openable.
    assert!(!md.is_active() && !st.is_active());
    assert!(fs.lookup(&root, "md").is_none());
    assert!(fs.walk("md/array_state").is_none());
    assert!(fs.node(st.id()).is_none());
    assert!(fs.readdir(&root).unwrap().is_empty());
    assert_eq!(st.open(OpenFlags::RDONLY).err(), Some(libc::ENOENT));

    fs.activate(&md);
    assert!(md.is_active() && st.is_active() && ds.is_active() && link.is_active());
    assert!(Arc::ptr_eq(&fs.lookup(&root, "md").unwrap(), &md));
    assert!(Arc::ptr_eq(&fs.walk("md/dev-sda/state").unwrap(), &ds));
    assert!(Arc::ptr_eq(&fs.walk("/md//dev-sda/").unwrap(), &dev));
    assert!(Arc::ptr_eq(&fs.walk("").unwrap(), &root));
    assert!(fs.walk("md/nope").is_none());
    assert!(fs.walk("md/array_state/x").is_none());
    assert!(Arc::ptr_eq(&fs.node(ds.id()).unwrap(), &ds));
    let names: Vec<String> = fs.readdir(&md).unwrap().iter().map(|n| n.name().to_string()).collect();
    assert_eq!(names, ["array_state", "dev-sda", "rd0"]);
    assert_eq!(fs.readdir(&st).err(), Some(libc::ENOTDIR));

    // Node accessors.
    assert_eq!(st.kind(), NodeKind::Attr);
    assert_eq!(st.mode(), 0o644);
    assert_eq!(st.name(), "array_state");
    assert!(Arc::ptr_eq(&st.parent().unwrap(), &md));
    assert_eq!(st.size_hint(), PAGE_SIZE as u64);
    assert_eq!(md.size_hint(), 0);
    assert_eq!(link.kind(), NodeKind::Symlink);
    assert_eq!(link.symlink_target(), Some("dev-sda"));
    assert_eq!(link.mode(), 0o777);
    assert_eq!(st.symlink_target(), None);
    let mut ids = vec![root.id(), md.id(), st.id(), dev.id(), ds.id(), link.id()];
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6);

    // A node created later under an active dir stays hidden until activated.
    let late = attr(&fs, &md, "late", Val::new("x"));
    assert!(fs.lookup(&md, "late").is_none());
    fs.activate(&late);
    assert!(fs.lookup(&md, "late").is_some());

    // Opening non-attributes.
    assert_eq!(md.open(OpenFlags::RDONLY).err(), Some(libc::EISDIR));
    assert_eq!(link.open(OpenFlags::RDONLY).err(), Some(libc::ELOOP));

    // Remove a subtree: gone from lookup, walk, node(), readdir; ids never reused.
    fs.remove(&dev);
    assert!(!dev.is_active() && !ds.is_active());
    assert!(fs.walk("md/dev-sda").is_none());
    assert!(fs.node(ds.id()).is_none());
    assert_eq!(fs.readdir(&dev).err(), Some(libc::ENOENT));
    assert_eq!(fs.create_dir(&dev, "x", 0o755).err(), Some(libc::ENOENT));
    let again = fs.create_dir(&md, "dev-sda", 0o755).unwrap();
    assert!(again.id() > late.id());
    assert!(Arc::ptr_eq(&ds.parent().unwrap(), &dev), "a removed node keeps its parent");
    assert_eq!(v.releases(), 0);
}

#[test]
fn names_and_errors() {
    let fs = Kernfs::new();
    let root = fs.root();
    for bad in ["", ".", "..", "a/b", "/", "nul\0"] {
        assert_eq!(fs.create_dir(&root, bad, 0o755).err(), Some(libc::EINVAL), "{bad:?}");
        assert_eq!(fs.create_attr(&root, bad, 0o644, Attr::new(Val::new(""))).err(), Some(libc::EINVAL));
        assert_eq!(fs.create_symlink(&root, bad, "t").err(), Some(libc::EINVAL));
    }
    assert_eq!(fs.create_dir(&root, &"n".repeat(256), 0o755).err(), Some(libc::ENAMETOOLONG));
    assert_eq!(fs.create_symlink(&root, "l", "").err(), Some(libc::EINVAL));
    assert_eq!(fs.create_symlink(&root, "l", "a\0b").err(), Some(libc::EINVAL));
    let a = attr(&fs, &root, "a", Val::new(""));
    assert_eq!(fs.create_dir(&root, "a", 0o755).err(), Some(libc::EEXIST));
    assert_eq!(fs.create_dir(&a, "x", 0o755).err(), Some(libc::ENOTDIR));
    let d = fs.create_dir(&root, "d", 0o755).unwrap();
    fs.remove(&d);
    assert_eq!(fs.create_dir(&d, "x", 0o755).err(), Some(libc::ENOENT));
    // A node of another tree.
    let other = Kernfs::new();
    assert_eq!(fs.create_dir(&other.root(), "x", 0o755).err(), Some(libc::EINVAL));
}

#[test]
fn show_store_round_trip_and_offsets() {
    let fs = Kernfs::new();
    let v = Val::new("clean\n");
    let n = attr(&fs, &fs.root(), "array_state", v.clone());
    fs.activate(&n);
    let f = n.open(OpenFlags::RDWR).unwrap();
    assert_eq!(v.opens(), 1);
    assert_eq!(read_all(&f), b"clean\n");

    // Partial reads continue from the value generated at offset 0.
    let mut b3 = [0u8; 3];
    assert_eq!(f.read(0, &mut b3), Ok(3));
    assert_eq!(&b3, b"cle");
    *v.value.lock().unwrap() = b"CHANGED".to_vec();
    assert_eq!(f.read(3, &mut b3), Ok(3));
    assert_eq!(&b3, b"an\n");
    assert_eq!(f.read(6, &mut b3), Ok(0));
    assert_eq!(f.read(1000, &mut b3), Ok(0));
    assert_eq!(f.read(u64::MAX, &mut b3), Ok(0));
    assert_eq!(read_all(&f), b"CHANGED");

    // A first read at a non-zero offset generates too.
    let g = n.open(OpenFlags::RDONLY).unwrap();
    assert_eq!(g.read(2, &mut b3), Ok(3));
    assert_eq!(&b3, b"ANG");

    assert_eq!(f.write(0, b"active\n"), Ok(7));
    assert_eq!(read_all(&f), b"active\n");
    assert_eq!(f.write(0, b""), Ok(0));
    assert_eq!(v.stores.load(Ordering::SeqCst), 1, "an empty write does not call store");

    // Flags.
    assert_eq!(g.write(0, b"x"), Err(libc::EBADF));
    let w = n.open(OpenFlags::WRONLY).unwrap();
    assert_eq!(w.read(0, &mut b3), Err(libc::EBADF));
    assert_eq!(w.flags(), OpenFlags::WRONLY);
    assert!(Arc::ptr_eq(w.node(), &n));
    drop((f, g, w));
    assert_eq!(v.releases(), 3);
}

struct ReadOnly;
impl AttrOps for ReadOnly {
    fn show(&self, out: &mut ShowBuf) -> Result<(), Errno> {
        out.emit(format_args!("{}\n", 42))
    }
}

struct Failing;
impl AttrOps for Failing {
    fn show(&self, out: &mut ShowBuf) -> Result<(), Errno> {
        let _ = out.push_bytes(&[b'x'; PAGE_SIZE + 1]);
        Err(libc::EIO)
    }
    fn store(&self, _data: &[u8]) -> Result<usize, Errno> {
        Err(-5)
    }
    fn open(&self) -> Result<(), Errno> {
        Ok(())
    }
}

struct RefuseOpen(AtomicUsize);
impl AttrOps for RefuseOpen {
    fn show(&self, _out: &mut ShowBuf) -> Result<(), Errno> {
        Ok(())
    }
    fn open(&self) -> Result<(), Errno> {
        Err(libc::EBUSY)
    }
    fn release(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn default_store_and_callback_errors() {
    let fs = Kernfs::new();
    let root = fs.root();
    let ro = fs.create_attr(&root, "ro", 0o444, Attr::new(Arc::new(ReadOnly))).unwrap();
    let bad = fs.create_attr(&root, "bad", 0o644, Attr::new(Arc::new(Failing))).unwrap();
    let refuse = Arc::new(RefuseOpen(AtomicUsize::new(0)));
    let rf = fs.create_attr(&root, "refuse", 0o644, Attr::new(refuse.clone())).unwrap();
    fs.activate(&root);
    let f = ro.open(OpenFlags::RDWR).unwrap();
    assert_eq!(read_all(&f), b"42\n");
    assert_eq!(f.write(0, b"1"), Err(libc::EINVAL), "missing store is EINVAL, as kernfs");
    let b = bad.open(OpenFlags::RDWR).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(b.read(0, &mut buf), Err(libc::EIO));
    assert_eq!(b.write(0, b"1"), Err(libc::EIO), "a non-positive errno becomes EIO");
    assert_eq!(rf.open(OpenFlags::RDONLY).err(), Some(libc::EBUSY));
    drop(fs);
    assert_eq!(refuse.0.load(Ordering::SeqCst), 0, "no release for a failed open");
}

#[test]
fn write_limits() {
    let fs = Kernfs::new();
    let root = fs.root();
    let v = Val::new("");
    let awl =
        fs.create_attr(&root, "awl", 0o644, Attr { atomic_write_len: 8, ..Attr::new(v.clone()) }).unwrap();
    let pre_awl = fs
        .create_attr(
            &root,
            "pre_awl",
            0o644,
            Attr { atomic_write_len: 8, prealloc: true, ..Attr::new(v.clone()) },
        )
        .unwrap();
    let plain = attr(&fs, &root, "plain", v.clone());
    let pre = fs.create_attr(&root, "pre", 0o644, Attr { prealloc: true, ..Attr::new(v.clone()) }).unwrap();
    fs.activate(&root);

    for n in [&awl, &pre_awl] {
        let f = n.open(OpenFlags::WRONLY).unwrap();
        assert_eq!(f.write(0, b"123456789"), Err(libc::E2BIG));
        assert_eq!(f.write(0, b"12345678"), Ok(8));
        assert_eq!(&*v.value.lock().unwrap(), b"12345678");
    }
    let big = vec![b'z'; PAGE_SIZE + 500];
    for n in [&plain, &pre] {
        let f = n.open(OpenFlags::WRONLY).unwrap();
        assert_eq!(f.write(0, &big), Ok(PAGE_SIZE), "clamped to PAGE_SIZE");
        assert_eq!(v.last_store_len.load(Ordering::SeqCst), PAGE_SIZE);
        // A shorter write after a longer one sees only its own bytes.
        assert_eq!(f.write(0, b"ab"), Ok(2));
        assert_eq!(&*v.value.lock().unwrap(), b"ab");
    }
}

#[test]
fn seq_attributes() {
    let fs = Kernfs::new();
    let root = fs.root();
    let text: String = (0..2000).map(|i| format!("{i}\n")).collect();
    assert!(text.len() > PAGE_SIZE);
    let v = Val::new(&text);
    let s = fs.create_attr(&root, "seq", 0o444, Attr { seq: true, ..Attr::new(v.clone()) }).unwrap();
    let bad = fs
        .create_attr(&root, "bad", 0o644, Attr { seq: true, prealloc: true, ..Attr::new(v.clone()) })
        .unwrap();
    fs.activate(&root);
    assert_eq!(bad.open(OpenFlags::RDONLY).err(), Some(libc::EINVAL), "prealloc + seq");
    assert_eq!(v.opens(), 0);
    let f = s.open(OpenFlags::RDONLY).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1000];
    loop {
        let n = f.read(out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, text.as_bytes());
    assert_eq!(v.shows.load(Ordering::SeqCst), 1, "one generation for the whole sequential read");
}

#[test]
fn removal_drains_open_files() {
    let fs = Kernfs::new();
    let md = fs.create_dir(&fs.root(), "md", 0o755).unwrap();
    let v = Val::new("clean\n");
    let n =
        fs.create_attr(&md, "array_state", 0o644, Attr { prealloc: true, ..Attr::new(v.clone()) }).unwrap();
    let nested = fs.create_dir(&md, "dev-sda", 0o755).unwrap();
    let v2 = Val::new("in_sync\n");
    let n2 = attr(&fs, &nested, "state", v2.clone());
    fs.activate(&md);
    let f1 = n.open(OpenFlags::RDWR).unwrap();
    let f2 = n.open(OpenFlags::RDONLY).unwrap();
    let f3 = n2.open(OpenFlags::RDWR).unwrap();
    assert_eq!(read_all(&f1), b"clean\n");
    let gen = fs.notify_generation();

    fs.remove(&md);
    assert_eq!(v.releases(), 2, "drain released both files once");
    assert_eq!(v2.releases(), 1, "nested attribute drained too");
    assert!(f1.is_drained() && f2.is_drained() && f3.is_drained());
    assert_ne!(fs.notify_generation(), gen, "drain bumps the generation");
    let mut buf = [0u8; 8];
    for f in [&f1, &f2, &f3] {
        assert_eq!(f.read(0, &mut buf), Err(libc::ENODEV));
        assert_eq!(f.read(3, &mut buf), Err(libc::ENODEV));
        assert_eq!(f.poll(), IN | PRI);
        let t = Instant::now();
        assert_eq!(f.poll_wait(LONG), IN | PRI);
        assert!(t.elapsed() < LONG);
    }
    assert_eq!(f1.write(0, b"active"), Err(libc::ENODEV));
    assert_eq!(f3.write(0, b"x"), Err(libc::ENODEV));
    assert_eq!(n.open(OpenFlags::RDONLY).err(), Some(libc::ENOENT));
    n.notify(); // harmless on a removed node
    f1.release();
    drop(f2);
    drop(f3);
    assert_eq!(v.releases(), 2, "close after drain does not release again");
    assert_eq!(v2.releases(), 1);
    assert_eq!(v.stores.load(Ordering::SeqCst), 0);
}

#[test]
fn release_exactly_once_per_open() {
    let fs = Kernfs::new();
    let v = Val::new("x");
    let n = attr(&fs, &fs.root(), "a", v.clone());
    fs.activate(&n);
    for i in 1..=5 {
        let f = n.open(OpenFlags::RDONLY).unwrap();
        assert_eq!(v.releases(), i - 1);
        f.release();
        assert_eq!(v.releases(), i);
    }
    let keep = n.open(OpenFlags::RDONLY).unwrap();
    drop(fs); // destroying the tree drains
    assert_eq!(v.releases(), 6);
    drop(keep);
    assert_eq!(v.releases(), 6);
    assert_eq!(v.opens(), 6);
}

#[test]
fn poll_semantics() {
    let fs = Kernfs::new();
    let v = Val::new("clean\n");
    let n = fs.create_attr(&fs.root(), "array_state", 0o644, Attr { notify: true, ..Attr::new(v) }).unwrap();
    fs.activate(&n);
    n.notify(); // no open file: nothing to record
    let f = n.open(OpenFlags::RDONLY).unwrap();
    assert_eq!(f.poll(), IN | PRI, "never read: changed, as in the kernel");
    read_all(&f);
    assert_eq!(f.poll(), IN, "no PRI before a notify");
    assert_eq!(f.poll_wait(Duration::ZERO), IN);
    assert_eq!(f.poll_wait(Duration::from_millis(5)), IN, "times out without PRI");

    let gen = fs.notify_generation();
    n.notify();
    assert_eq!(fs.notify_generation(), gen.wrapping_add(1));
    assert_eq!(fs.wait_notify(gen, LONG), gen.wrapping_add(1), "returns at once when already moved");
    assert_eq!(f.poll(), IN | PRI);
    assert_eq!(f.poll_wait(LONG), IN | PRI);
    let mut b = [0u8; 2];
    assert_eq!(f.read(2, &mut b), Ok(2));
    assert_eq!(f.poll(), IN | PRI, "only an offset-0 read records the event");
    assert_eq!(f.read(0, &mut b), Ok(2));
    assert_eq!(f.poll(), IN, "cleared by the offset-0 read");

    // A second file has its own view.
    let g = n.open(OpenFlags::RDONLY).unwrap();
    read_all(&g);
    n.notify();
    assert_eq!(f.poll() & PRI, PRI);
    assert_eq!(g.poll() & PRI, PRI);
    read_all(&g);
    assert_eq!(g.poll(), IN);
    assert_eq!(f.poll() & PRI, PRI);
}

#[test]
fn poll_wait_wakes_on_notify_from_another_thread() {
    let fs = Kernfs::new();
    let n = attr(&fs, &fs.root(), "a", Val::new("x"));
    fs.activate(&n);
    let f = n.open(OpenFlags::RDONLY).unwrap();
    for _ in 0..20 {
        read_all(&f);
        let gen = fs.notify_generation();
        let start = Arc::new(Barrier::new(2));
        let notifier = {
            let (n, start) = (n.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                n.notify();
            })
        };
        start.wait();
        let t = Instant::now();
        assert_eq!(f.poll_wait(LONG), IN | PRI);
        assert!(t.elapsed() < LONG);
        assert_ne!(fs.wait_notify(gen, LONG), gen);
        notifier.join().unwrap();
    }
}

#[test]
fn wait_notify_wakes_from_another_thread() {
    let fs = Kernfs::new();
    let n = attr(&fs, &fs.root(), "a", Val::new("x"));
    fs.activate(&n);
    let gen = fs.notify_generation();
    let fs2 = fs.clone();
    let waiter = thread::spawn(move || fs2.wait_notify(gen, LONG));
    n.notify();
    assert_ne!(waiter.join().unwrap(), gen);
    // And it times out when nothing happens.
    let now = fs.notify_generation();
    assert_eq!(fs.wait_notify(now, Duration::from_millis(5)), now);
}

#[test]
fn poll_wait_wakes_on_removal() {
    let fs = Kernfs::new();
    let n = attr(&fs, &fs.root(), "a", Val::new("x"));
    fs.activate(&n);
    let f = n.open(OpenFlags::RDONLY).unwrap();
    read_all(&f);
    let start = Arc::new(Barrier::new(2));
    let remover = {
        let (fs, n, start) = (fs.clone(), n.clone(), start.clone());
        thread::spawn(move || {
            start.wait();
            fs.remove(&n);
        })
    };
    start.wait();
    assert_eq!(f.poll_wait(LONG), IN | PRI);
    remover.join().unwrap();
    assert!(f.is_drained());
}

/// A store that blocks until told to finish, logging its end.
struct Blocking {
    entered: Mutex<Option<mpsc::Sender<()>>>,
    go: Mutex<mpsc::Receiver<()>>,
    log: Arc<Mutex<Vec<&'static str>>>,
    releases: AtomicUsize,
}

impl AttrOps for Blocking {
    fn show(&self, _out: &mut ShowBuf) -> Result<(), Errno> {
        Ok(())
    }
    fn store(&self, data: &[u8]) -> Result<usize, Errno> {
        if let Some(tx) = self.entered.lock().unwrap().take() {
            tx.send(()).unwrap();
        }
        self.go.lock().unwrap().recv().unwrap();
        self.log.lock().unwrap().push("store-end");
        Ok(data.len())
    }
    fn release(&self) {
        self.log.lock().unwrap().push("release");
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn removal_waits_for_in_flight_store() {
    let fs = Kernfs::new();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let ops = Arc::new(Blocking {
        entered: Mutex::new(Some(entered_tx)),
        go: Mutex::new(go_rx),
        log: log.clone(),
        releases: AtomicUsize::new(0),
    });
    let n =
        fs.create_attr(&fs.root(), "a", 0o644, Attr { prealloc: true, ..Attr::new(ops.clone()) }).unwrap();
    fs.activate(&n);
    let f = Arc::new(n.open(OpenFlags::WRONLY).unwrap());
    let writer = {
        let f = f.clone();
        thread::spawn(move || f.write(0, b"x"))
    };
    entered_rx.recv().unwrap(); // the store is in flight
    let remover = {
        let (fs, n, log) = (fs.clone(), n.clone(), log.clone());
        thread::spawn(move || {
            fs.remove(&n);
            log.lock().unwrap().push("removed");
        })
    };
    go_tx.send(()).unwrap();
    assert_eq!(writer.join().unwrap(), Ok(1));
    remover.join().unwrap();
    assert_eq!(*log.lock().unwrap(), ["store-end", "release", "removed"]);
    assert_eq!(f.write(0, b"y"), Err(libc::ENODEV));
    drop(f);
    assert_eq!(ops.releases.load(Ordering::SeqCst), 1);
}

/// Real threads hammering one tree; exact counts are checked at the end.
#[test]
fn stress_open_ops_notify_remove() {
    for _ in 0..10 {
        let fs = Kernfs::new();
        let d = fs.create_dir(&fs.root(), "d", 0o755).unwrap();
        let v = Val::new("v\n");
        let n = fs.create_attr(&d, "a", 0o644, Attr { prealloc: true, ..Attr::new(v.clone()) }).unwrap();
        fs.activate(&d);
        let start = Arc::new(Barrier::new(4));
        let mut workers = Vec::new();
        for _ in 0..2 {
            let (n, start) = (n.clone(), start.clone());
            workers.push(thread::spawn(move || {
                start.wait();
                for _ in 0..200 {
                    let Ok(f) = n.open(OpenFlags::RDWR) else { continue };
                    let mut b = [0u8; 4];
                    let _ = f.read(0, &mut b);
                    let _ = f.write(0, b"w\n");
                    let _ = f.poll();
                }
            }));
        }
        let notifier = {
            let (n, start) = (n.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for _ in 0..2000 {
                    n.notify();
                }
            })
        };
        start.wait();
        fs.remove(&d);
        for w in workers {
            w.join().unwrap();
        }
        notifier.join().unwrap();
        assert_eq!(v.opens(), v.releases(), "every successful open released exactly once");
    }
}

#[cfg(debug_assertions)]
struct SelfRemover {
    fs: Mutex<Option<Arc<Kernfs>>>,
    me: Mutex<Option<NodeRef>>,
}

#[cfg(debug_assertions)]
impl AttrOps for SelfRemover {
    fn show(&self, _out: &mut ShowBuf) -> Result<(), Errno> {
        Ok(())
    }
    fn store(&self, data: &[u8]) -> Result<usize, Errno> {
        let fs = self.fs.lock().unwrap().clone().unwrap();
        let me = self.me.lock().unwrap().clone().unwrap();
        fs.remove(&me.parent().unwrap());
        Ok(data.len())
    }
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "inside the removed subtree")]
fn remove_from_own_callback_is_caught() {
    let fs = Kernfs::new();
    let d = fs.create_dir(&fs.root(), "d", 0o755).unwrap();
    let ops = Arc::new(SelfRemover { fs: Mutex::new(Some(fs.clone())), me: Mutex::new(None) });
    let n = fs.create_attr(&d, "state", 0o644, Attr::new(ops.clone())).unwrap();
    *ops.me.lock().unwrap() = Some(n.clone());
    fs.activate(&d);
    let f = n.open(OpenFlags::WRONLY).unwrap();
    let _ = f.write(0, b"remove");
}
