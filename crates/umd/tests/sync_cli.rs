//! `umd status`, `umd wait`, `umd check` (and `umd detail`'s sync lines)
//! against arrays served by `umd assemble`: a raid5 made without
//! --assume-clean resyncs by itself, is waited for, checked, corrupted on
//! one member, checked again (md's count), repaired and checked clean.

mod common;

use common::served::*;
use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Per member: 128 MiB of data (sparse image files: the runs only read
/// them, parity of zeros is zeros): a run at md's default limit (200000
/// KiB/s) lasts 0.6 s at least, so the resync md starts at assembly is
/// still running when the test lowers the limit to `SLOW_KIB_S`, at which
/// it would last 13 s.
const BIG_RAID5: [&str; 8] = ["-l", "5", "-n", "4", "-c", "64", "-z", "128M"];
const SLOW_KIB_S: &str = "10000";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `umd ARGS`: the output, with both streams in panic messages.
fn umd_run(args: &[&std::ffi::OsStr]) -> (Output, String, String) {
    let out = run(umd().args(args));
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    (out, o, e)
}

fn ok(args: &[&std::ffi::OsStr]) -> String {
    let (out, o, e) = umd_run(args);
    assert!(out.status.success(), "umd {args:?} failed: {e}{o}");
    o
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// `umd status`'s lines about the array at `dir` (its line and the ones
/// after it up to the next array or the footer).
fn status_of(dir: &Path) -> Vec<String> {
    let o = ok(&[os("status")]);
    let lines: Vec<&str> = o.lines().collect();
    assert!(lines[0].starts_with("Personalities : "), "status header: {o}");
    assert_eq!(lines.last().copied(), Some("unused devices: <none>"), "status footer: {o}");
    let head = format!("{} : ", dir.display());
    let Some(i) = lines.iter().position(|l| l.starts_with(&head)) else { return Vec::new() };
    let mut v = vec![lines[i].to_string()];
    v.extend(lines[i + 1..].iter().take_while(|l| l.starts_with("      ")).map(|l| l.to_string()));
    v
}

/// `umd status --json`'s object for `dir`.
fn status_json(dir: &Path) -> Option<serde_json::Value> {
    let o = ok(&[os("status"), os("--json")]);
    o.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .find(|v| v["dir"] == dir.display().to_string())
}

/// The data offset (bytes) of `member`, from `umd examine --json`.
fn data_offset(member: &Path) -> u64 {
    let o = ok(&[os("examine"), os("--json"), member.as_os_str()]);
    let v: serde_json::Value = serde_json::from_str(o.trim()).expect("examine json");
    let s = v["Data Offset"].as_str().expect("Data Offset");
    let sectors: u64 = s.strip_suffix(" sectors").and_then(|n| n.parse().ok()).expect("N sectors");
    sectors * 512
}

/// Waits (60 s at most) for a child `umd`; its output.
fn finish(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_umd(args: &[&std::ffi::OsStr]) -> Child {
    umd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// Polls `sync_action` until it reads `want` (20 s at most).
fn wait_action(served: &Served, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = read_attr(&served.md("sync_action"));
        if now.trim() == want {
            return;
        }
        assert!(Instant::now() < deadline, "sync_action still {now:?}, want {want}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn check_reports(dir: &Path, args: &[&str], want: &str) {
    let mut a: Vec<&std::ffi::OsStr> = vec![os("check")];
    a.extend(args.iter().map(|s| os(s)));
    a.push(dir.as_os_str());
    let o = ok(&a);
    let word = if args.contains(&"--repair") { "repair" } else { "check" };
    assert!(
        o.contains(&format!(": {word} finished: mismatch_cnt {want}\n")),
        "umd check {args:?}: {o:?}, want mismatch_cnt {want}"
    );
}

#[test]
fn resync_wait_check_repair() {
    let s = Scratch::new("sync-cli");
    let m = members(&s, 4);
    create(&BIG_RAID5, &m);
    let dir = s.path("mnt");
    let (served, _) = Served::assemble(&dir, &m, &[]);
    let dir = served.dir.clone();
    write_attr(&served.md("sync_speed_max"), SLOW_KIB_S);

    // The resync md started by itself, as /proc/mdstat shows it.
    let st = status_of(&dir);
    assert!(st.len() >= 3, "umd status lines for {}: {st:?}", dir.display());
    assert_eq!(st[0], format!("{} : active raid5 m0.img[0] m1.img[1] m2.img[2] m3.img[3]", dir.display()));
    assert_eq!(
        st[1], "      393216 blocks super external:1.2 level 5, 64k chunk, algorithm 2 [4/4] [UUUU]",
        "{st:?}"
    );
    assert!(
        st[2].starts_with("      [") && st[2].contains("]  resync = ") && st[2].contains("/131072) "),
        "progress line {st:?}"
    );
    assert!(st[2].contains(" speed=") && st[2].ends_with("K/sec"), "progress line {st:?}");
    let j = status_json(&dir).expect("umd status --json lists the array");
    assert_eq!(j["level"], "raid5");
    assert_eq!(j["sync"]["action"], "resync", "{j}");
    assert_eq!(j["sync"]["total"], 262144, "{j}");
    assert_eq!(j["members"].as_array().map(Vec::len), Some(4), "{j}");
    assert_eq!(j["members"][2]["slot"], 2, "{j}");
    let d = ok(&[os("detail"), dir.as_os_str()]);
    assert!(d.contains("     Resync Status : ") && d.contains("% complete\n"), "detail: {d}");
    assert!(d.contains(", resyncing \n"), "detail: {d}");

    // umd wait: returns when it is done (the limit back to md's default).
    let child = spawn_umd(&[os("wait"), dir.as_os_str()]);
    std::thread::sleep(Duration::from_millis(300));
    write_attr(&served.md("sync_speed_max"), "system");
    let out = finish(child, "umd wait");
    let o = text(&out.stdout);
    assert!(out.status.success() && o.contains(": resync finished"), "umd wait: {o:?} {}", text(&out.stderr));
    assert_eq!(read_attr(&served.md("sync_action")).trim(), "idle");
    assert_eq!(read_attr(&served.md("resync_start")).trim(), "none");
    let st = status_of(&dir);
    assert_eq!(st.len(), 3, "no progress line once done: {st:?}");
    assert_eq!(st[2], "      ");
    let d = ok(&[os("detail"), dir.as_os_str()]);
    assert!(!d.contains("Status : ") && !d.contains("resyncing"), "detail: {d}");
    // The superblocks say so (the manager records it).
    Images::open(&m).wait_all_clean(Duration::from_secs(10), "after the resync");
    assert!(have_tool("mdadm"), "mdadm is not installed (scripts/setup.sh installs it)");
    let out = run(Command::new("mdadm").arg("--examine").arg(&m[1]));
    let ex = parse_examine(&text(&out.stdout));
    assert_eq!(ex.get("State").map(String::as_str), Some("clean"), "mdadm --examine: {}", text(&out.stdout));
    let o = ok(&[os("wait"), dir.as_os_str()]);
    assert!(o.contains("nothing to wait for"), "umd wait when idle: {o:?}");

    check_reports(&dir, &[], "0");
    // --no-wait, then umd wait.
    let o = ok(&[os("check"), os("--no-wait"), dir.as_os_str()]);
    assert!(o.contains("check started"), "{o:?}");
    let o = ok(&[os("wait"), dir.as_os_str()]);
    assert!(
        o.contains(": check finished: mismatch_cnt 0") || o.contains("nothing to wait for"),
        "umd wait after check --no-wait: {o:?}"
    );

    // Corrupt two pages (in two stripe rows) of one member's data.
    served.stop();
    drop(served);
    let off = data_offset(&m[1]);
    assert_eq!(off, 2048 * 512, "umd create's data offset");
    let f = std::fs::OpenOptions::new().write(true).open(&m[1]).expect("open member");
    for at in [off + (1 << 20), off + (2 << 20) + 8192] {
        f.write_all_at(&[0x5a; 4096], at).expect("corrupt");
    }
    drop(f);
    let (served, _) = Served::assemble(&dir, &m, &[]);
    check_reports(&dir, &[], "16");
    check_reports(&dir, &["--repair"], "16");
    check_reports(&dir, &[], "0");

    // A check interrupted (idle stored) is an error.
    write_attr(&served.md("sync_speed_max"), SLOW_KIB_S);
    let child = spawn_umd(&[os("check"), dir.as_os_str()]);
    wait_action(&served, "check");
    std::thread::sleep(Duration::from_millis(500));
    let st = status_of(&dir);
    assert!(st.len() == 4 && st[2].contains("]  check = "), "status during a check: {st:?}");
    write_attr(&served.md("sync_action"), "idle");
    let out = finish(child, "umd check, interrupted");
    assert!(!out.status.success(), "an interrupted check succeeded: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("check interrupted at "), "stderr: {}", text(&out.stderr));

    // A running check: a second one is refused, naming it.
    let o = ok(&[os("check"), os("--no-wait"), dir.as_os_str()]);
    assert!(o.contains("check started"), "{o:?}");
    wait_action(&served, "check");
    let (out, _, e) = umd_run(&[os("check"), os("--repair"), dir.as_os_str()]);
    assert!(!out.status.success() && e.contains("a check is running"), "second check: {e}");

    // The array stopping while waiting.
    let child = spawn_umd(&[os("wait"), dir.as_os_str()]);
    std::thread::sleep(Duration::from_millis(300));
    served.stop();
    let out = finish(child, "umd wait, array stopped");
    assert!(!out.status.success(), "umd wait succeeded: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("stopped while waiting"), "stderr: {}", text(&out.stderr));
    assert!(status_of(&dir).is_empty(), "a stopped array is not listed");
}

#[test]
fn status_lists_only_running_arrays() {
    let s = Scratch::new("sync-cli-status");
    let o = ok(&[os("status")]);
    assert!(o.starts_with("Personalities : "), "{o}");
    assert!(o.ends_with("unused devices: <none>\n"), "{o}");
    assert!(!o.contains(&*s.0.to_string_lossy()), "{o}");
    let o = ok(&[os("status"), os("--json")]);
    for l in o.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["dir"].is_string() && v["level"].is_string(), "{v}");
    }
}

#[test]
fn bad_input() {
    let s = Scratch::new("sync-cli-bad");
    let plain = s.path("plain");
    std::fs::create_dir_all(&plain).expect("mkdir");
    let missing = s.path("missing");
    for dir in [&plain, &missing] {
        for args in [vec![os("wait")], vec![os("check")], vec![os("check"), os("--repair")]] {
            let mut a = args.clone();
            a.push(dir.as_os_str());
            let (out, o, e) = umd_run(&a);
            assert!(!out.status.success(), "umd {a:?} succeeded: {o}");
            assert!(e.contains("not a umd array"), "umd {a:?}: {e}");
            assert_eq!(e.lines().count(), 1, "one line: {e}");
        }
    }

    // A read-only assembly: nothing to wait for, nothing can be checked.
    let m = members(&s, 4);
    create(&RAID5, &m);
    let (served, _) = Served::assemble(&s.path("ro"), &m, &["--readonly"]);
    let dir: PathBuf = served.dir.clone();
    let (out, o, e) = umd_run(&[os("check"), dir.as_os_str()]);
    assert!(!out.status.success(), "check of a read-only array succeeded: {o}");
    assert!(e.contains("read-only"), "{e}");
    let o = ok(&[os("wait"), dir.as_os_str()]);
    assert!(o.contains("nothing to wait for"), "{o}");
    let st = status_of(&dir);
    assert_eq!(
        st[0],
        format!("{} : active (read-only) raid5 m0.img[0] m1.img[1] m2.img[2] m3.img[3]", dir.display())
    );
    assert_eq!(st[1], "      12288 blocks super 1.2 level 5, 64k chunk, algorithm 2 [4/4] [UUUU]");
    let j = status_json(&dir).expect("listed");
    assert_eq!(j["readonly"], true, "{j}");
    assert_eq!(j["sync"]["action"], "idle", "{j}");
    drop(served);

    // raid0: no redundancy.
    let m0: Vec<PathBuf> = (0..2).map(|k| s.path(&format!("r0-{k}.img"))).collect();
    create(&["-l", "0", "-n", "2", "-c", "64", "-z", "4M"], &m0);
    let (served, _) = Served::assemble(&s.path("r0"), &m0, &[]);
    let (out, _, e) = umd_run(&[os("check"), served.dir.as_os_str()]);
    assert!(!out.status.success() && e.contains("no redundancy"), "{e}");
    let o = ok(&[os("wait"), served.dir.as_os_str()]);
    assert!(o.contains("nothing to wait for"), "{o}");
    let st = status_of(&served.dir);
    assert!(st.len() == 3 && st[1].ends_with(" blocks super external:1.2 64k chunks"), "{st:?}");
}
