//! The non-root path: `mount(2)` fails with EPERM and the mount goes
//! through `fusermount3`. Run as root, this test re-executes itself as user
//! `nobody` (via `setpriv`); it is skipped, with a message, where that is
//! impossible (not root, no setpriv, test binary not reachable by nobody).

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const CHILD_ENV: &str = "EXPORT_TEST_UNPRIVILEGED_CHILD";
const NOBODY: &str = "65534";

fn child_body() {
    // SAFETY: geteuid has no preconditions.
    assert_ne!(unsafe { libc::geteuid() }, 0, "child must not run as root");
    let dir = TestDir::new();
    let path = dir.path.clone();
    with_watchdog(Some(&path), move || {
        let size = 3 * MIB + 7;
        let m = mount_on(&dir, Arc::new(PatternFile::new(size)), options());
        let line = mounts_line(&dir.path).expect("listed in /proc/mounts");
        assert!(line.contains(" fuse.umd ro,"), "{line}");
        assert!(line.contains(&format!("user_id={NOBODY}")), "{line}");
        let data = std::fs::read(dir.path.join("data")).expect("read");
        assert_eq!(data.len() as u64, size);
        check_pattern(0, &data);
        m.unmounter().unmount();
        m.wait().expect("wait");
        assert!(!is_mounted(&dir.path));
    });
}

#[test]
fn fusermount_fallback_as_nobody() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_body();
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to switch to user nobody");
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let setpriv = |extra: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "env", "TMPDIR=/tmp", "HOME=/tmp"]);
        c.args(extra);
        c
    };
    let exe_str = exe.to_str().expect("utf-8 exe path");
    match setpriv(&["test", "-x", exe_str]).status() {
        Ok(s) if s.success() => {}
        Ok(_) => {
            eprintln!("skipped: {} is not executable by nobody", exe.display());
            return;
        }
        Err(e) => {
            eprintln!("skipped: cannot run setpriv: {e}");
            return;
        }
    }
    let mut child = setpriv(&[
        &format!("{CHILD_ENV}=1"),
        exe_str,
        "--exact",
        "fusermount_fallback_as_nobody",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn child");
    let deadline = Instant::now() + TIMEOUT + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unprivileged child still running after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("child output");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(status.success(), "child failed ({status}):\n{text}");
    assert!(text.contains("1 passed"), "child ran no test:\n{text}");
}
