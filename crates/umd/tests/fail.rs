//! md's member-failure protocol over real read-write mounts, with `umd
//! mon` managing the superblocks (issue 8, item 1):
//!
//! * `umd fail DIR MEMBER` on raid1/4/5/6/10: the member turns faulty,
//!   the manager records its role as faulty (`0xfffe`) in the superblocks
//!   of the members in service (checked on the images and with the real
//!   `mdadm --examine`) and then removes it; the failed member's own
//!   superblock is left as it was; the array runs degraded with every
//!   byte intact, takes writes, and assembles again without the member.
//! * A member whose writes fail (blockio fault injection) during a write
//!   burst: every write of the burst completes, degraded, data verified.
//!   The order is observable: with the manager dead, the write that hit
//!   the error does not return and the survivors' superblocks do not
//!   change; a manager started by hand records the failure, and only then
//!   does the write return.
//! * Every redundant level, a member failing its writes in the middle of
//!   a write burst: the burst completes degraded, every byte right.
//! * `umd add` of a fresh member after a failure, every redundant level:
//!   the manager gives it the empty slot and writes its superblock, md
//!   recovers it while writes go on; then `check` finds 0 mismatches, the
//!   superblocks agree and the array assembles whole.
//! * Two members failing at once on a raid5: the write fails with EIO, the
//!   array is `broken` (FAILED in `umd detail` and `umd status`), writes
//!   are refused, reads still answer.
//! * Bad input changes nothing: failing a member the array cannot lose,
//!   removing a member in service, naming something that is no member,
//!   adding a file too small, a member, or to a read-only array.

mod common;

use common::served::*;
use common::*;
use md::synth::Rng;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// md's role of a failed member.
const ROLE_FAULTY: u16 = 0xfffe;

/// `dev_number`, `events` and the `dev_roles` table of a member's
/// superblock, read from its image.
fn roles(member: &Path) -> (u32, u64, Vec<u16>) {
    let f = std::fs::File::open(member).expect("open member");
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, 4096).expect("read superblock");
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let events = u64::from_le_bytes(b[200..208].try_into().expect("8 bytes"));
    let max_dev = u32_at(220) as usize;
    let roles = (0..max_dev).map(|i| u16::from_le_bytes([b[256 + 2 * i], b[257 + 2 * i]])).collect();
    (u32_at(160), events, roles)
}

fn sb_block(member: &Path) -> Vec<u8> {
    let f = std::fs::File::open(member).expect("open member");
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, 4096).expect("read superblock");
    b
}

/// `mdadm --examine`'s `Array State` of `member` (e.g. `AA.A`).
fn mdadm_array_state(member: &Path) -> String {
    assert!(have_tool("mdadm"), "mdadm is not installed (scripts/setup.sh installs it)");
    let out = run(Command::new("mdadm").arg("--examine").arg(member));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mdadm --examine {}: {}",
        member.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let m = parse_examine(&text);
    let csum = m.get("Checksum").cloned().unwrap_or_default();
    assert!(csum.ends_with("- correct"), "mdadm --examine checksum {csum:?}:\n{text}");
    m.get("Array State").map(|s| s.split_whitespace().next().unwrap_or("").to_string()).unwrap_or_default()
}

/// Waits until `cond` holds (10 s at most).
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "not {what} after 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `dev-*` directory of `member` under `dir/md`, if it is still there.
fn dev_dir(dir: &Path, member: &Path) -> Option<PathBuf> {
    let want = std::fs::canonicalize(member).ok()?;
    std::fs::read_dir(dir.join("md")).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dev-"))
            && std::fs::read_link(p.join("block")).ok().as_deref() == Some(want.as_path())
    })
}

fn data_file(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().read(true).write(true).open(dir.join("data")).expect("open data")
}

fn verify(dir: &Path, model: &[u8], what: &str) {
    let mut back = vec![0u8; model.len()];
    data_file(dir).read_exact_at(&mut back, 0).unwrap_or_else(|e| panic!("{what}: read back: {e}"));
    if let Some(i) = back.iter().zip(model).position(|(a, b)| a != b) {
        panic!("{what}: array byte {i} differs from what was written");
    }
}

fn umd_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = run(umd().args(args.iter().map(|a| a.as_ref())));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "umd {:?}: {}{text}", out.status, String::from_utf8_lossy(&out.stderr));
    text
}

fn umd_err(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = run(umd().args(args.iter().map(|a| a.as_ref())));
    assert!(!out.status.success(), "umd succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every redundant level: md's level, members, extra `umd create` options.
const LEVELS: [(&str, usize, &[&str]); 5] = [
    ("1", 2, &[]),
    ("4", 3, &["-c", "64"]),
    ("5", 4, &["-c", "64"]),
    ("6", 5, &["-c", "64"]),
    ("10", 4, &["-c", "64"]),
];

/// A clean array of `level` on `n` image files of `size` in `s`.
fn create_level(s: &Scratch, level: &str, n: usize, extra: &[&str], size: &str) -> Vec<PathBuf> {
    let all = members(s, n);
    let ns = n.to_string();
    let mut args = vec!["-l", level, "-n", &ns];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-z", size, "--assume-clean"]);
    create(&args, &all);
    all
}

/// `umd fail` of one member of every redundant level: recorded, removed,
/// degraded with data intact, writable, assembled again without it.
#[test]
fn fail_by_hand_every_level() {
    for (level, n, extra) in LEVELS {
        let s = Scratch::new(&format!("fail-raid{level}"));
        let all = create_level(&s, level, n, extra, "4M");
        let (a, _) = Served::assemble(&s.path("mnt"), &all, &[]);
        let tag = format!("raid{level}");
        let size = data_file(&a.dir).metadata().expect("stat data").len() as usize;
        let mut model = vec![0u8; size];
        data_file(&a.dir).read_exact_at(&mut model, 0).expect("read initial content");
        let mut rng = Rng::new(0xfa11 + n as u64);
        random_writes(&data_file(&a.dir), &mut model, &mut rng, 60, 300_000);

        let victim = all[1].clone();
        let (victim_dev, e_before, _) = roles(&victim);
        let victim_sb = sb_block(&victim);
        let out = umd_ok(&[&"fail", &a.dir, &victim]);
        assert!(out.contains("faulty") && out.contains("recorded"), "{tag}: umd fail said {out:?}");
        wait_until(&format!("{tag}: victim removed"), || dev_dir(&a.dir, &victim).is_none());
        let st = status_until(&a.dir, "failure recorded and member removed", |st| {
            st["failures"] == "1" && st["removed"] == "1"
        });
        assert_eq!((num(&st, "errors"), num(&st, "monitor_allocs")), (0, 0), "{tag}: status {st:?}");
        assert_eq!(std::fs::read_to_string(a.md("degraded")).expect("degraded").trim(), "1", "{tag}");
        for (k, m) in all.iter().enumerate() {
            if *m == victim {
                continue;
            }
            let (_, ev, r) = roles(m);
            assert_eq!(r[victim_dev as usize], ROLE_FAULTY, "{tag}: member {k}'s roles {r:?}");
            assert!(ev > e_before, "{tag}: member {k} events {ev} not above {e_before}");
            let state = mdadm_array_state(m);
            assert_eq!(state.chars().nth(1), Some('.'), "{tag}: mdadm Array State {state:?} of member {k}");
            assert_eq!(state.chars().filter(|&c| c == 'A').count(), n - 1, "{tag}: {state:?}");
        }
        assert!(sb_block(&victim) == victim_sb, "{tag}: the failed member's superblock was written");
        verify(&a.dir, &model, &format!("{tag}: after the failure"));

        // Degraded: writes go on.
        random_writes(&data_file(&a.dir), &mut model, &mut rng, 60, 300_000);
        verify(&a.dir, &model, &format!("{tag}: degraded writes"));
        // mdadm's habit: --fail then --remove. Already done by the manager.
        let out = umd_ok(&[&"remove", &a.dir, &victim]);
        assert!(out.contains("already removed"), "{tag}: umd remove said {out:?}");
        a.stop();

        // Assembled again from every image: the failed one is left out.
        let (b, ready) = Served::assemble(&s.path("mnt"), &all, &["--force"]);
        assert!(ready.contains("DEGRADED"), "{tag}: ready line {ready:?}");
        verify(&b.dir, &model, &format!("{tag}: re-assembled"));
        b.stop();
        let out = run(umd().arg("extract").arg("-o").arg(s.path("out")).args(&all));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{tag}: extract: {err}");
        assert!(
            err.contains("recorded as faulty"),
            "{tag}: extract did not say why the member is out: {err}"
        );
    }
}

/// A 192 KiB write (a whole raid5 row of 64 KiB chunks on 4 members) in
/// a thread; its result arrives on the returned channel.
fn row_write_in_thread(data: &Path, off: u64, bytes: Vec<u8>) -> mpsc::Receiver<std::io::Result<()>> {
    let data = data.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::fs::OpenOptions::new().write(true).open(&data).and_then(|f| f.write_all_at(&bytes, off));
        let _ = tx.send(r);
    });
    rx
}

/// A member whose writes fail during a write burst: the burst completes,
/// degraded, with every byte right; and no write that needed the member
/// is acknowledged before the survivors' superblocks say it failed.
#[test]
fn write_errors_fail_the_member_after_the_metadata() {
    let s = Scratch::new("fail-write-error");
    let all = members(&s, 4);
    create(&RAID5, &all);
    let victim = all[2].clone();
    let spec = "disarmed,write:fail";
    let victim_arg = victim.to_string_lossy().into_owned();
    let (a, _) = Served::assemble_hooks(&s.path("mnt"), &all, &["--member-faults", &victim_arg, spec], true);
    let hook = |cmd: &str| write_attr(&a.dir.join("umd-test-hook"), cmd);
    let size = data_file(&a.dir).metadata().expect("stat data").len() as usize;
    let mut model = vec![0u8; size];
    data_file(&a.dir).read_exact_at(&mut model, 0).expect("read initial content");
    let mut rng = Rng::new(77);

    // Active and dirty, and kept so (a long safe-mode delay); then the
    // manager dies and the member starts failing its writes.
    write_attr(&a.md("safe_mode_delay"), "60.000\n");
    random_writes(&data_file(&a.dir), &mut model, &mut rng, 20, 100_000);
    let (victim_dev, _, _) = roles(&victim);
    kill_manager(&a.dir);
    let sbs_before: Vec<Vec<u8>> = all.iter().map(|m| sb_block(m)).collect();
    hook("faults arm");

    // A whole row: one piece goes to the failing member.
    let row = rng.bytes(192 << 10);
    let done = row_write_in_thread(&a.dir.join("data"), 0, row.clone());
    model[..row.len()].copy_from_slice(&row);
    match done.recv_timeout(Duration::from_millis(800)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => {
            panic!("the write that hit the member error returned before the failure was recorded: {other:?}")
        }
    }
    let dev = dev_dir(&a.dir, &victim).expect("victim's dev dir");
    let state = std::fs::read_to_string(dev.join("state")).expect("state");
    assert_eq!(state.trim(), "faulty,blocked,write_error", "member state while nobody records the failure");
    assert_eq!(std::fs::read_to_string(a.md("array_state")).expect("array_state").trim(), "write-pending");
    let sbs_now: Vec<Vec<u8>> = all.iter().map(|m| sb_block(m)).collect();
    assert!(sbs_now == sbs_before, "superblocks changed without a manager");

    // A manager started by hand records the failure; then the write returns.
    let (_mon, _) = MonChild::start(&a.dir, &s.path("mon.err"));
    done.recv_timeout(Duration::from_secs(10))
        .expect("the write did not return after the failure was recorded")
        .expect("the write that hit the member error failed");
    for (k, m) in all.iter().enumerate() {
        if *m == victim {
            continue;
        }
        let (_, _, r) = roles(m);
        assert_eq!(r[victim_dev as usize], ROLE_FAULTY, "member {k}'s roles once the write returned: {r:?}");
    }
    assert!(sb_block(&victim) == sbs_before[2], "the failed member's superblock was written");
    wait_until("victim removed", || dev_dir(&a.dir, &victim).is_none());

    // The rest of the burst: degraded, every byte right.
    random_writes(&data_file(&a.dir), &mut model, &mut rng, 100, 200_000);
    verify(&a.dir, &model, "after the burst");
    let st = status_until(&a.dir, "failure recorded and member removed", |st| {
        st["failures"] == "1" && st["removed"] == "1"
    });
    assert_eq!(num(&st, "monitor_allocs"), 0, "status {st:?}");
    let state = mdadm_array_state(&all[0]);
    assert_eq!(state, "AA.A", "mdadm --examine Array State of a survivor");
    a.stop();
}

/// Bad input changes nothing: a member the array cannot lose, a member
/// in service removed, a path that is no member, a directory that is no
/// array.
#[test]
fn fail_and_remove_bad_input() {
    let s = Scratch::new("fail-bad");
    let all = members(&s, 4);
    create(&RAID5, &all);
    let (a, _) = Served::assemble(&s.path("mnt"), &all, &[]);
    let size = data_file(&a.dir).metadata().expect("stat data").len() as usize;
    let mut model = vec![0u8; size];
    data_file(&a.dir).read_exact_at(&mut model, 0).expect("read initial content");
    let mut rng = Rng::new(5);
    random_writes(&data_file(&a.dir), &mut model, &mut rng, 20, 100_000);

    // In service: cannot be removed.
    let e = umd_err(&[&"remove", &a.dir, &all[0]]);
    assert!(e.contains("in service") && e.contains("fail it first"), "remove in service: {e}");
    assert!(dev_dir(&a.dir, &all[0]).is_some());

    umd_ok(&[&"fail", &a.dir, &all[3]]);
    wait_until("member 3 removed", || dev_dir(&a.dir, &all[3]).is_none());
    // Failing another would lose data: refused, nothing changes.
    let sbs: Vec<Vec<u8>> = all.iter().map(|m| sb_block(m)).collect();
    let e = umd_err(&[&"fail", &a.dir, &all[0]]);
    assert!(e.contains("would lose data"), "fail beyond redundancy: {e}");
    let dev = dev_dir(&a.dir, &all[0]).expect("member 0 still in the array");
    assert_eq!(std::fs::read_to_string(dev.join("state")).expect("state").trim(), "in_sync");
    assert_ne!(std::fs::read_to_string(a.md("array_state")).expect("array_state").trim(), "broken");
    assert_eq!(std::fs::read_to_string(a.md("degraded")).expect("degraded").trim(), "1");
    random_writes(&data_file(&a.dir), &mut model, &mut rng, 20, 100_000);
    verify(&a.dir, &model, "after the refused fail");
    let now: Vec<Vec<u8>> = all.iter().map(|m| sb_block(m)).collect();
    for k in 0..3 {
        // Only events/utime/checksum/resync move with writes; the roles
        // are what a refused fail would have changed.
        assert_eq!(now[k][256..256 + 8], sbs[k][256..256 + 8], "member {k}'s roles changed");
    }

    // Not members.
    let stranger = s.path("stranger.img");
    std::fs::write(&stranger, vec![0u8; 1 << 20]).expect("write stranger");
    let e = umd_err(&[&"fail", &a.dir, &stranger]);
    assert!(e.contains("not a member"), "fail of a stranger: {e}");
    let e = umd_err(&[&"remove", &a.dir, &stranger]);
    assert!(e.contains("not a member"), "remove of a stranger: {e}");
    let e = umd_err(&[&"fail", &s.path("nowhere"), &all[0]]);
    assert!(e.contains("not an array served by umd"), "fail on a non-array: {e}");
    // A garbage word into a member's state: EINVAL, nothing changes.
    let dev = dev_dir(&a.dir, &all[1]).expect("member 1");
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open(dev.join("state"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"explode"));
    assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(libc::EINVAL)), "garbage into dev state");
    assert_eq!(std::fs::read_to_string(dev.join("state")).expect("state").trim(), "in_sync");
    verify(&a.dir, &model, "at the end");
    a.stop();
}

/// Polls until `sync_action` is idle and `degraded` is 0 (60 s at most).
fn wait_recovered(dir: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let action = std::fs::read_to_string(dir.join("md/sync_action")).unwrap_or_default();
        let degraded = std::fs::read_to_string(dir.join("md/degraded")).unwrap_or_default();
        if action.trim() == "idle" && degraded.trim() == "0" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not recovered after 60 s ({action:?}, degraded {degraded:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `check` and returns `mismatch_cnt`.
fn check(dir: &Path, what: &str) -> u64 {
    write_attr(&dir.join("md/sync_action"), "check");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let action = std::fs::read_to_string(dir.join("md/sync_action")).unwrap_or_default();
        if action.trim() == "idle" {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: check still running after 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(dir.join("md/mismatch_cnt"))
        .expect("mismatch_cnt")
        .trim()
        .parse()
        .expect("number")
}

/// `umd add` of a fresh member after a failure, every redundant level:
/// the manager gives it the empty slot and writes its superblock, md
/// recovers it while writes go on, and the array is whole again: every
/// byte right, `check` finds no mismatch, the superblocks agree, and it
/// assembles from the members in service without the failed one.
#[test]
fn add_recovers_every_level() {
    for (level, n, extra) in LEVELS {
        let s = Scratch::new(&format!("add-raid{level}"));
        let all = create_level(&s, level, n, extra, "8M");
        let tag = format!("raid{level}");
        let (a, _) = Served::assemble(&s.path("mnt"), &all, &[]);
        let size = data_file(&a.dir).metadata().expect("stat data").len() as usize;
        let mut model = vec![0u8; size];
        data_file(&a.dir).read_exact_at(&mut model, 0).expect("read initial content");
        let mut rng = Rng::new(0xadd + n as u64);
        random_writes(&data_file(&a.dir), &mut model, &mut rng, 40, 400_000);

        let victim = all[1].clone();
        umd_ok(&[&"fail", &a.dir, &victim]);
        wait_until(&format!("{tag}: victim removed"), || dev_dir(&a.dir, &victim).is_none());
        // Slow recovery down so writes land while it runs.
        write_attr(&a.md("sync_speed_max"), "20000");
        let fresh = s.path("fresh.img");
        std::fs::write(&fresh, vec![0x5a; std::fs::metadata(&all[0]).expect("size").len() as usize])
            .expect("fill fresh image");
        let out = umd_ok(&[&"add", &a.dir, &fresh]);
        assert!(out.contains("takes slot 1"), "{tag}: umd add said {out:?}");
        // Writes while it recovers.
        random_writes(&data_file(&a.dir), &mut model, &mut rng, 40, 200_000);
        write_attr(&a.md("sync_speed_max"), "system");
        wait_recovered(&a.dir, &tag);
        let dev = dev_dir(&a.dir, &fresh).expect("the new member's directory");
        assert_eq!(std::fs::read_to_string(dev.join("state")).expect("state").trim(), "in_sync", "{tag}");
        assert_eq!(std::fs::read_to_string(dev.join("slot")).expect("slot").trim(), "1", "{tag}");
        verify(&a.dir, &model, &format!("{tag}: after recovery"));
        assert_eq!(check(&a.dir, &tag), 0, "{tag}: mismatches after recovery");
        let st = status_until(&a.dir, "spare activated", |st| st["spares"] == "1");
        assert_eq!((num(&st, "errors"), num(&st, "monitor_allocs")), (0, 0), "{tag}: status {st:?}");
        a.stop();

        // The superblocks: every member in service, the new one included,
        // says all slots active, same events; the new one is in sync.
        let now: Vec<PathBuf> =
            all.iter().map(|m| if *m == victim { fresh.clone() } else { m.clone() }).collect();
        let events: Vec<u64> = now.iter().map(|m| roles(m).1).collect();
        assert!(events.iter().all(|&e| e == events[0]), "{tag}: events {events:?}");
        for m in &now {
            let state = mdadm_array_state(m);
            assert_eq!(state, "A".repeat(n), "{tag}: mdadm Array State of {}", m.display());
        }
        let text = String::from_utf8_lossy(&run(Command::new("mdadm").arg("--examine").arg(&fresh)).stdout)
            .into_owned();
        assert!(text.contains("Active device 1"), "{tag}: mdadm --examine of the new member:\n{text}");
        assert!(!text.contains("Recovery Offset"), "{tag}: recovery offset left:\n{text}");

        // Assembled again from all images: the failed one stays out, the
        // array is whole.
        let mut with_old = now.clone();
        with_old.push(victim.clone());
        let (b, ready) = Served::assemble(&s.path("mnt"), &with_old, &[]);
        assert!(!ready.contains("DEGRADED"), "{tag}: ready line {ready:?}");
        verify(&b.dir, &model, &format!("{tag}: re-assembled"));
        b.stop();
        // Every byte of the new member is right: read with it alone
        // standing in for its slot's redundancy (its neighbour left out).
        let without: Vec<PathBuf> = now.iter().filter(|m| **m != now[0]).cloned().collect();
        let out = run(umd().arg("extract").arg("-o").arg(s.path("out")).args(&without));
        assert!(out.status.success(), "{tag}: extract: {}", String::from_utf8_lossy(&out.stderr));
        let back = std::fs::read(s.path("out")).expect("read extract");
        assert!(back == model, "{tag}: extract without member 0 differs");
    }
}

/// `umd add` refuses what it cannot use, changing nothing.
#[test]
fn add_bad_input() {
    let s = Scratch::new("add-bad");
    let all = members(&s, 4);
    create(&RAID5, &all);
    let (a, _) = Served::assemble(&s.path("mnt"), &all, &[]);
    let small = s.path("small.img");
    std::fs::write(&small, vec![0u8; 1 << 20]).expect("small image");
    let e = umd_err(&[&"add", &a.dir, &small]);
    assert!(e.contains("too small"), "add of a small file: {e}");
    let e = umd_err(&[&"add", &a.dir, &all[2]]);
    assert!(e.contains("already a member"), "add of a member: {e}");
    let e = umd_err(&[&"add", &a.dir, &s.path("missing.img")]);
    assert!(e.contains("missing.img"), "add of a missing file: {e}");
    assert_eq!(std::fs::read_to_string(a.md("degraded")).expect("degraded").trim(), "0");
    let names: Vec<String> = std::fs::read_dir(a.dir.join("md"))
        .expect("md")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("dev-"))
        .collect();
    assert_eq!(names.len(), 4, "members after refused adds: {names:?}");
    a.stop();
    let (r, _) = Served::assemble(&s.path("ro"), &all, &["--readonly"]);
    let spare = s.path("spare.img");
    std::fs::copy(&all[0], &spare).expect("copy");
    let e = umd_err(&[&"add", &r.dir, &spare]);
    assert!(e.contains("read-only"), "add to a read-only array: {e}");
    r.stop();
}

/// Every redundant level: a member starts failing its writes in the
/// middle of a write burst (blockio fault injection); every write of the
/// burst completes, the member is failed, recorded on the survivors (real
/// `mdadm --examine`) and removed, and every byte reads back right.
#[test]
fn write_errors_during_a_burst_every_level() {
    for (level, n, extra) in LEVELS {
        let s = Scratch::new(&format!("burst-raid{level}"));
        let all = create_level(&s, level, n, extra, "4M");
        let tag = format!("raid{level}");
        let victim = all[n - 1].clone();
        let victim_arg = victim.to_string_lossy().into_owned();
        let (a, _) = Served::assemble_hooks(
            &s.path("mnt"),
            &all,
            &["--member-faults", &victim_arg, "disarmed,write:fail"],
            true,
        );
        let size = data_file(&a.dir).metadata().expect("stat data").len() as usize;
        let mut model = vec![0u8; size];
        data_file(&a.dir).read_exact_at(&mut model, 0).expect("read initial content");
        let mut rng = Rng::new(0xb0 + n as u64);
        random_writes(&data_file(&a.dir), &mut model, &mut rng, 30, 200_000);
        let victim_sb = sb_block(&victim);
        write_attr(&a.dir.join("umd-test-hook"), "faults arm");
        // The burst goes on: every write succeeds (random_writes panics on
        // a failed pwrite).
        random_writes(&data_file(&a.dir), &mut model, &mut rng, 80, 200_000);
        wait_until(&format!("{tag}: failing member removed"), || dev_dir(&a.dir, &victim).is_none());
        verify(&a.dir, &model, &format!("{tag}: after the burst"));
        let st = status_until(&a.dir, "failure recorded", |st| st["failures"] == "1" && st["removed"] == "1");
        assert_eq!(num(&st, "monitor_allocs"), 0, "{tag}: status {st:?}");
        for m in &all[..n - 1] {
            let state = mdadm_array_state(m);
            assert_eq!(
                state,
                format!("{}.", "A".repeat(n - 1)),
                "{tag}: mdadm Array State of {}",
                m.display()
            );
        }
        assert!(sb_block(&victim) == victim_sb, "{tag}: the failed member's superblock was written");
        a.stop();
    }
}

/// Two members of a raid5 fail their writes at once: the first is failed
/// and recorded, the second cannot be (the array would lose data), so the
/// write fails with EIO, `array_state` says `broken`, `umd detail` and
/// `umd status` say FAILED, later writes fail too, and reads still answer
/// every byte right (the kept member still reads).
#[test]
fn failures_beyond_redundancy_break_the_array() {
    let s = Scratch::new("broken");
    let all = members(&s, 4);
    create(&RAID5, &all);
    let (a2, a3) = (all[2].to_string_lossy().into_owned(), all[3].to_string_lossy().into_owned());
    let spec = "disarmed,write:fail";
    let (a, _) = Served::assemble_hooks(
        &s.path("mnt"),
        &all,
        &["--member-faults", &a2, spec, "--member-faults", &a3, spec],
        true,
    );
    let size = data_file(&a.dir).metadata().expect("stat data").len() as usize;
    let mut model = vec![0u8; size];
    data_file(&a.dir).read_exact_at(&mut model, 0).expect("read initial content");
    let mut rng = Rng::new(99);
    random_writes(&data_file(&a.dir), &mut model, &mut rng, 20, 100_000);
    write_attr(&a.dir.join("umd-test-hook"), "faults arm");
    // A whole row: both failing members are written.
    let e = data_file(&a.dir).write_all_at(&rng.bytes(192 << 10), 0).expect_err("a write beyond redundancy");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(std::fs::read_to_string(a.md("array_state")).expect("array_state").trim(), "broken");
    let e = data_file(&a.dir).write_all_at(&[1; 4096], 1 << 20).expect_err("a write to a broken array");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let detail = umd_ok(&[&"detail", &a.dir]);
    assert!(detail.contains("broken") && detail.contains("FAILED"), "umd detail:\n{detail}");
    let status = umd_ok(&[&"status"]);
    let line =
        status.lines().find(|l| l.starts_with(&*a.dir.to_string_lossy())).expect("our array in umd status");
    assert!(line.contains("FAILED"), "umd status: {line}");
    // Reads: everything outside the failed write's row reads as written.
    let mut back = vec![0u8; size];
    data_file(&a.dir).read_exact_at(&mut back, 0).expect("reads of a broken array");
    let row = 192 << 10;
    assert!(back[row..] == model[row..], "data outside the failed row");
    a.stop();
}
