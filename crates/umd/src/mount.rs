//! `umd assemble [--readonly] --mount DIR` and `umd stop DIR`.
//!
//! Without `--readonly`, raid0/raid1/raid10 arrays are served read-write:
//! members open read-write, md's attributes are published as a running
//! array with external metadata (`array_state` starts `clean`), and every
//! write through `DIR/data` runs md's write handshake
//! ([`md::state::StateMachine::write_start`]/`write_end`). Until the
//! metadata manager of issue 7 exists, this process acknowledges the
//! handshake itself (see [`MetadataAcknowledger`]). Parity levels are
//! refused (their writes come with the stripe cache).
//!
//! The serving process records its PID in `/run/umd/<escaped DIR>.pid`;
//! `umd stop DIR` sends it SIGTERM and waits until the mount is gone. The
//! process itself blocks SIGINT/SIGTERM in every thread and takes them in a
//! dedicated thread (`sigwait`), which unmounts; the main thread then joins
//! the FUSE workers and removes the PID file. The mount is released on every
//! exit path.

use std::io::{self, Read, Write};
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use md::{assemble as md_assemble, Array, AssembleOptions, Level};

use crate::{CliError, CmdResult};

/// Options of `umd assemble`.
pub struct Options {
    /// Read-only; without it raid0/1/10 are served read-write.
    pub readonly: bool,
    /// Mount directory.
    pub dir: PathBuf,
    /// Detach when ready.
    pub daemon: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Start dirty+degraded parity arrays.
    pub force: bool,
    /// allow_other mount option.
    pub allow_other: bool,
    /// Fault injectors for members (testing).
    pub faults: crate::faults::Injectors,
}

/// The array as the FUSE layer sees it.
pub struct ArrayAdapter {
    /// The array.
    pub array: Array,
    /// md's state machine of a writable array: every write is bracketed
    /// by its `write_start`/`write_end`. `None`: writes are refused (EROFS).
    pub state: Option<Arc<md::state::StateMachine>>,
}

impl export::ArrayFile for ArrayAdapter {
    fn size(&self) -> u64 {
        self.array.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.array.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let Some(state) = &self.state else { return Err(io::Error::from_raw_os_error(libc::EROFS)) };
        state.write_start().map_err(io::Error::from_raw_os_error)?;
        let r = self.array.write_at(offset, data);
        state.write_end();
        r
    }

    fn flush(&self) -> io::Result<()> {
        if self.state.is_none() {
            return Ok(());
        }
        self.array.flush()
    }
}

/// The internal metadata acknowledger: stands in for the external metadata
/// manager (issue 7 replaces it with the real one) so that writes do not
/// block forever in md's handshake. It watches `md/array_state` through an
/// open kernfs file (read at offset 0, then [`kernfs::OpenFile::poll_wait`])
/// and stores `active` when it reads `write-pending`, `clean` when it reads
/// `active-idle`. It writes no superblocks: the on-disk state is not marked
/// dirty/clean (members stay as `umd create --assume-clean` or the last
/// md run left them).
struct MetadataAcknowledger {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetadataAcknowledger {
    fn start(array_state: &kernfs::NodeRef) -> io::Result<MetadataAcknowledger> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let file = array_state
            .open(kernfs::OpenFlags { read: true, write: true })
            .map_err(io::Error::from_raw_os_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("umd-md-ack".into()).spawn(move || {
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Acquire) {
                let n = match file.read(0, &mut buf) {
                    Ok(n) => n,
                    Err(_) => return, // the attribute is gone
                };
                let word = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
                let reply: Option<&[u8]> = match word {
                    b"write-pending" => Some(b"active"),
                    b"active-idle" => Some(b"clean"),
                    _ => None,
                };
                if let Some(r) = reply {
                    // EBUSY (`clean` while a write started meanwhile): the
                    // next notify brings us back.
                    let _ = file.write(0, r);
                    continue;
                }
                file.poll_wait(Duration::from_millis(250));
            }
        })?;
        Ok(MetadataAcknowledger { stop, thread: Some(thread) })
    }
}

impl Drop for MetadataAcknowledger {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const RUN_DIR: &str = "/run/umd";

/// The PID file recording which process serves `dir`.
fn pid_file(dir: &Path) -> PathBuf {
    let s = dir.to_string_lossy();
    let mut name = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '/' => name.push('_'),
            '_' => name.push_str("__"),
            c if c.is_ascii_alphanumeric() || c == '-' || c == '.' => name.push(c),
            c => name.push_str(&format!("%{:x}", c as u32)),
        }
    }
    Path::new(RUN_DIR).join(format!("{name}.pid"))
}

/// An absolute form of `dir` that does not touch the mount itself (a dead
/// FUSE mount fails `stat` with ENOTCONN).
fn absolute(dir: &Path) -> PathBuf {
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            std::fs::canonicalize(parent).map(|p| p.join(name)).unwrap_or_else(|_| dir.to_path_buf())
        }
        (_, Some(name)) => {
            std::env::current_dir().map(|c| c.join(name)).unwrap_or_else(|_| dir.to_path_buf())
        }
        _ => std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
    }
}

/// Whether `dir` is a mount point in /proc/mounts (escaped as the kernel does).
pub fn is_mounted(dir: &Path) -> bool {
    let want = escape_mount_path(&dir.to_string_lossy());
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(want.as_str())))
        .unwrap_or(false)
}

fn escape_mount_path(p: &str) -> String {
    let mut s = String::new();
    for c in p.chars() {
        match c {
            ' ' => s.push_str("\\040"),
            '\t' => s.push_str("\\011"),
            '\n' => s.push_str("\\012"),
            '\\' => s.push_str("\\134"),
            c => s.push(c),
        }
    }
    s
}

/// Runs `umd assemble`.
pub fn assemble(members: &[PathBuf], o: Options) -> CmdResult {
    let dir = absolute(&o.dir);
    let meta = std::fs::metadata(&dir).map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(CliError(format!("{}: not a directory", dir.display())));
    }
    if is_mounted(&dir) {
        return Err(CliError(format!("{}: something is already mounted here", dir.display())));
    }
    // Assemble before detaching, so errors reach the user's terminal.
    let aopts = AssembleOptions { force: o.force, faults: o.faults.clone() };
    let asm =
        if o.readonly { md_assemble(members, &aopts)? } else { md::assemble_writable(members, &aopts)? };
    if !o.readonly {
        let level = asm.array.personality.geometry().level;
        if !matches!(level, Level::Raid0 | Level::Raid1 | Level::Raid10) {
            return Err(CliError(format!("{level} writes are not supported yet; use --readonly")));
        }
    }
    for n in &asm.notes {
        eprintln!("umd: {n}");
    }
    let ready_fd = if o.daemon { Some(daemonize(&pid_file(&dir).with_extension("log"))?) } else { None };
    serve(asm.array, asm.degraded, &dir, &o, ready_fd)
}

/// Forks: the parent waits for the child's "ready" line on a pipe, prints
/// it and exits; the child returns the pipe's write end, with its standard
/// streams detached (stderr appended to `log`). Runs before any thread
/// exists.
fn daemonize(log: &Path) -> Result<i32, CliError> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(CliError(format!("pipe: {}", io::Error::last_os_error())));
    }
    // SAFETY: the process is single-threaded here (no thread has been
    // spawned yet), so the child may continue running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(CliError(format!("fork: {}", io::Error::last_os_error())));
    }
    if pid > 0 {
        // Parent.
        // SAFETY: fds[1] is our open write end, closed exactly once here.
        unsafe { libc::close(fds[1]) };
        // SAFETY: fds[0] is an open descriptor that this File now owns.
        let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let mut msg = String::new();
        let _ = r.read_to_string(&mut msg);
        if let Some(line) = msg.strip_prefix("ok ") {
            println!("{}", line.trim_end());
            std::process::exit(0);
        }
        let err = msg.strip_prefix("err ").unwrap_or("the daemon exited before the mount was ready");
        eprintln!("umd: {}", err.trim_end());
        std::process::exit(1);
    }
    // Child.
    // SAFETY: fds[0] is the read end, unused in the child.
    unsafe { libc::close(fds[0]) };
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() };
    redirect_stdio(log);
    Ok(fds[1])
}

/// Detaches the daemon from the caller's standard streams: stdin and stdout
/// go to /dev/null, stderr (late errors) to `log`, or /dev/null when the log
/// cannot be opened. A daemon must not keep its caller's pipes open.
fn redirect_stdio(log: &Path) {
    use std::os::unix::io::AsRawFd;
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null");
    let _ = std::fs::create_dir_all(RUN_DIR);
    let err = std::fs::OpenOptions::new().create(true).append(true).open(log);
    if let Ok(null) = &null {
        // SAFETY: dup2 onto the standard descriptors with a valid source fd.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
    let err_fd = match (&err, &null) {
        (Ok(f), _) => Some(f.as_raw_fd()),
        (Err(_), Ok(n)) => Some(n.as_raw_fd()),
        _ => None,
    };
    if let Some(fd) = err_fd {
        // SAFETY: dup2 onto stderr with a valid source fd.
        unsafe { libc::dup2(fd, 2) };
    }
}

fn write_ready(fd: Option<i32>, msg: &str) {
    if let Some(fd) = fd {
        // SAFETY: `fd` is the pipe's write end, owned by us; the File closes it.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = f.write_all(msg.as_bytes());
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in
/// every thread it spawns afterwards).
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; the sig* calls initialise and fill it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn serve(array: Array, degraded: bool, dir: &Path, o: &Options, ready_fd: Option<i32>) -> CmdResult {
    let sigset = block_signals();
    // This process serves an array that memory reclaim may be waiting on:
    // lock our memory and mark us an I/O flusher (each may be refused
    // without privileges: say so, and go on).
    let protection = blockio::safety::protect_io_path();
    if !protection.complete() {
        eprintln!("umd: warning: I/O path protection incomplete: {protection}");
    }
    let size = array.size();
    let level = array.personality.geometry().level;
    let name = array.sb.name();
    let uuid = md::superblock::format_uuid(&array.sb.set_uuid);
    // md's attribute tree, served as DIR/md/.
    let tree = kernfs::Kernfs::new();
    let sysfs = match md::sysfs::publish(&tree, &tree.root(), &array, o.readonly) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let msg = format!(
                "{}: publishing md attributes failed: {}",
                dir.display(),
                io::Error::from_raw_os_error(e)
            );
            write_ready(ready_fd, &format!("err {msg}\n"));
            return Err(CliError(msg));
        }
    };
    if std::env::var_os("UMD_TEST_HOOKS").is_some_and(|v| v == "1") {
        if let Err(e) = add_test_hooks(&tree, &sysfs) {
            eprintln!("umd: warning: test hooks unavailable: errno {e}");
        }
    }
    let acknowledger = if o.readonly {
        None
    } else {
        match MetadataAcknowledger::start(&sysfs.array_state) {
            Ok(a) => Some(a),
            Err(e) => {
                let msg = format!("{}: metadata acknowledger: {e}", dir.display());
                write_ready(ready_fd, &format!("err {msg}\n"));
                return Err(CliError(msg));
            }
        }
    };
    let opts = export::MountOptions {
        threads: o.threads.clamp(1, 64),
        read_only: o.readonly,
        fsname: format!("umd:{name}"),
        allow_other: o.allow_other,
        tree: Some(tree.clone()),
        null_file: false,
    };
    let mount = match export::mount(
        dir,
        Arc::new(ArrayAdapter { array, state: (!o.readonly).then(|| sysfs.machine().clone()) }),
        opts,
    ) {
        Ok(m) => m,
        Err(e) => {
            let msg = format!("{}: mount failed: {e}", dir.display());
            write_ready(ready_fd, &format!("err {msg}\n"));
            return Err(CliError(msg));
        }
    };
    let pidf = pid_file(dir);
    let _ = std::fs::create_dir_all(RUN_DIR);
    if let Err(e) = std::fs::write(&pidf, format!("{}\n", std::process::id())) {
        eprintln!(
            "umd: warning: cannot record PID in {}: {e} (`umd stop` will unmount directly)",
            pidf.display()
        );
    }
    let unmounter = mount.unmounter();
    std::thread::Builder::new()
        .name("umd-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `sigset` is an initialised set; `sig` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&sigset, &mut sig) };
            if rc == 0 {
                unmounter.unmount();
                return;
            }
        })
        .map_err(|e| CliError(format!("signal thread: {e}")))?;
    let ready = format!(
        "umd: {level} array {name} ({uuid}) of {} bytes{} mounted {} at {} (file {})",
        size,
        if degraded { ", DEGRADED" } else { "" },
        if o.readonly { "read-only" } else { "read-write" },
        dir.display(),
        dir.join("data").display()
    );
    if ready_fd.is_some() {
        write_ready(ready_fd, &format!("ok {ready}\n"));
    } else {
        println!("{ready}");
        let _ = io::stdout().flush();
    }
    let r = mount.wait();
    // Every FUSE worker is gone: no write is in flight any more.
    drop(acknowledger);
    drop(sysfs);
    let _ = std::fs::remove_file(&pidf);
    if ready_fd.is_some() {
        // A daemon's log that stayed empty says nothing worth keeping.
        let log = pidf.with_extension("log");
        if std::fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&log);
        }
    }
    r.map_err(|e| CliError(format!("{}: {e}", dir.display())))
}

/// With `UMD_TEST_HOOKS=1` in the environment, `umd assemble` adds a
/// write-only attribute `DIR/umd-test-hook` that drives changes md's own
/// machinery will make later (so tests can observe notify/poll and member
/// removal over the real mount): `array_state WORD` sets md/array_state and
/// notifies; `remove SLOT` removes md/dev-*/ of that slot as md does when a
/// member leaves the array. Never present without the variable.
fn add_test_hooks(tree: &Arc<kernfs::Kernfs>, sysfs: &Arc<md::sysfs::MdSysfs>) -> Result<(), kernfs::Errno> {
    struct Hook(Arc<md::sysfs::MdSysfs>);
    impl kernfs::AttrOps for Hook {
        fn show(&self, _out: &mut kernfs::ShowBuf) -> Result<(), kernfs::Errno> {
            Err(libc::EACCES)
        }
        fn store(&self, data: &[u8]) -> Result<usize, kernfs::Errno> {
            let text = std::str::from_utf8(data).map_err(|_| libc::EINVAL)?.trim();
            let (cmd, arg) = text.split_once(' ').ok_or(libc::EINVAL)?;
            match cmd {
                "array_state" => {
                    let s = md::sysfs::ArrayState::from_word(arg.as_bytes()).ok_or(libc::EINVAL)?;
                    self.0.set_array_state(s);
                }
                "remove" => {
                    let slot: usize = arg.parse().map_err(|_| libc::EINVAL)?;
                    self.0.remove_member(slot)?;
                }
                _ => return Err(libc::EINVAL),
            }
            Ok(data.len())
        }
    }
    let attr = kernfs::Attr {
        ops: Arc::new(Hook(sysfs.clone())),
        prealloc: false,
        atomic_write_len: 0,
        seq: false,
        notify: false,
    };
    let node = tree.create_attr(&tree.root(), "umd-test-hook", 0o200, attr)?;
    tree.activate(&node);
    Ok(())
}

/// Runs `umd stop DIR`.
pub fn stop(dir: &Path) -> CmdResult {
    let dir = absolute(dir);
    let pidf = pid_file(&dir);
    let pid = std::fs::read_to_string(&pidf).ok().and_then(|s| s.trim().parse::<i32>().ok());
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = |p: i32| unsafe { libc::kill(p, 0) } == 0;
    match pid {
        Some(p) if p > 0 && alive(p) => {
            // SAFETY: sending SIGTERM to a process we recorded as ours.
            unsafe { libc::kill(p, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while (alive(p) || is_mounted(&dir)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(p) {
                return Err(CliError(format!("{}: process {p} did not stop within 20 s", dir.display())));
            }
            let _ = std::fs::remove_file(&pidf);
            eprintln!("umd: stopped the array at {}", dir.display());
            Ok(())
        }
        _ => {
            let _ = std::fs::remove_file(&pidf);
            if is_mounted(&dir) && is_umd_mount(&dir) {
                let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                    .map_err(|_| CliError(format!("{}: path contains NUL", dir.display())))?;
                // SAFETY: `c` is a valid NUL-terminated path.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    return Err(CliError(format!(
                        "{}: unmount failed: {}",
                        dir.display(),
                        io::Error::last_os_error()
                    )));
                }
                eprintln!("umd: unmounted {} (its process was gone)", dir.display());
                Ok(())
            } else {
                Err(CliError(format!("{}: no umd array is mounted here", dir.display())))
            }
        }
    }
}

fn is_umd_mount(dir: &Path) -> bool {
    let want = escape_mount_path(&dir.to_string_lossy());
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() > 2 && f[1] == want && f[2].starts_with("fuse") && f[0].starts_with("umd")
            })
        })
        .unwrap_or(false)
}
