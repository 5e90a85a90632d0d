//! md's internal write-intent bitmap as the real `mdadm` reads it, on an
//! array made by `umd create --bitmap internal --bitmap-chunk 64K`:
//!
//! * `mdadm -X` (on a loop device: mdadm reads bitmaps from block devices
//!   only) of a new array needing a resync: md's magic, version 4, the
//!   array's UUID, 64 KB chunks, the sync size, every bit dirty.
//! * assembled read-write, the array resyncs itself; with
//!   `md/bitmap/time_base` at 1 s the idle daemon clears every bit
//!   (`md/bitmap/dirty` reads `0 / N`); with it at 60 s, 4 KiB writes
//!   through `DIR/data` leave exactly the chunks they touched dirty, which
//!   `mdadm -X` counts dirty on disk while the array runs (they are there
//!   before the data writes); after `umd stop` (md's `md_bitmap_flush`)
//!   every bit is clear on disk, and `mdadm --examine` shows the bitmap 8
//!   sectors after a superblock whose checksum is correct.
//! * `umd create --bitmap internal` of raid0, and `--bitmap-chunk` without
//!   `--bitmap internal`, fail naming the problem and write nothing.

mod common;

use common::served::*;
use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Bits of the test array: 8 MiB per member in 64 KiB chunks.
const BITS: u64 = 128;
/// Bytes of a raid5 stripe row (3 data chunks of 64 KiB): one bitmap chunk
/// of per-member space each.
const ROW: u64 = 3 * 64 * 1024;

/// A loop device attached to an image file; detached on drop (also when
/// the test fails).
struct Loop(String);

impl Loop {
    fn attach(image: &Path) -> Loop {
        assert!(have_tool("losetup"), "losetup is not installed");
        let out = run(Command::new("losetup").arg("-f").arg("--show").arg(image));
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && dev.starts_with("/dev/loop"),
            "losetup -f --show {}: {}{dev}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(dev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// `mdadm -X` of `member` through a loop device: the parsed fields and
/// the text.
fn examine_bitmap(member: &Path) -> (std::collections::BTreeMap<String, String>, String) {
    assert!(have_tool("mdadm"), "mdadm is not installed (scripts/setup.sh installs it)");
    let dev = Loop::attach(member);
    let out = run(Command::new("mdadm").arg("-X").arg(&dev.0));
    drop(dev);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mdadm -X {}: {}{text}",
        member.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    (parse_examine(&text), text)
}

/// Checks what `mdadm -X` says of every member: md's bitmap of `uuid`,
/// 64 KB chunks, 8 MiB of sync space, [`BITS`] bits of which `dirty`.
fn check_bitmap(members: &[PathBuf], uuid: &str, dirty: u64, what: &str) {
    for m in members {
        let (f, text) = examine_bitmap(m);
        let what = format!("{what}: mdadm -X {}:\n{text}", m.display());
        assert_eq!(f.get("Magic").map(String::as_str), Some("6d746962"), "{what}");
        assert_eq!(f.get("Version").map(String::as_str), Some("4"), "{what}");
        assert_eq!(f.get("UUID").map(String::as_str), Some(uuid), "{what}");
        assert_eq!(f.get("Chunksize").map(String::as_str), Some("64 KB"), "{what}");
        assert!(f.get("Sync Size").is_some_and(|s| s.starts_with("8192 ")), "{what}");
        let bitmap = f.get("Bitmap").cloned().unwrap_or_default();
        let want = format!("{BITS} bits (chunks), {dirty} dirty (");
        assert!(bitmap.starts_with(&want), "{what}: want {want:?}");
        if dirty == BITS {
            assert!(bitmap.ends_with("(100.0%)"), "{what}");
        }
    }
}

/// `mdadm --examine` of every member: the bitmap 8 sectors after the
/// superblock, checksum correct, the array's UUID.
fn check_examine(members: &[PathBuf], uuid: &str, what: &str) {
    for m in members {
        let out = run(Command::new("mdadm").arg("--examine").arg(m));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{what}: mdadm --examine: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = parse_examine(&text);
        let what = format!("{what}: mdadm --examine {}:\n{text}", m.display());
        assert_eq!(f.get("Internal Bitmap").map(String::as_str), Some("8 sectors from superblock"), "{what}");
        assert!(f.get("Checksum").is_some_and(|c| c.ends_with("- correct")), "{what}");
        assert_eq!(f.get("Array UUID").map(String::as_str), Some(uuid), "{what}");
        assert_eq!(f.get("Feature Map").map(String::as_str), Some("0x1"), "{what}");
    }
}

/// Polls `attr` until it reads `want` (trimmed); panics after `limit`.
fn wait_attr(a: &Served, attr: &str, want: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = read_attr(&a.md(attr));
        if now.trim() == want {
            return;
        }
        assert!(Instant::now() < deadline, "md/{attr} reads {:?} after {limit:?}, want {want:?}", now.trim());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn mdadm_reads_the_bitmap() {
    let s = Scratch::new("bitmap-mdadm");
    let all = members(&s, 4);
    let out = run(umd()
        .arg("create")
        .args(["-l", "5", "-n", "4", "-c", "64", "-z", "8M", "--bitmap", "internal", "--bitmap-chunk", "64K"])
        .args(&all));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "create: {}{text}", String::from_utf8_lossy(&out.stderr));
    // "umd: created raid5 array UUID (name …": the UUID mdadm must find.
    let uuid = text
        .split_whitespace()
        .skip_while(|w| *w != "array")
        .nth(1)
        .unwrap_or_else(|| panic!("no UUID in {text:?}"))
        .to_string();
    assert_eq!(uuid.len(), 35, "UUID {uuid:?} in {text:?}");

    // A new array needing a resync: every bit dirty.
    check_bitmap(&all, &uuid, BITS, "new array");
    check_examine(&all, &uuid, "new array");

    // Read-write: the array resyncs itself, then the idle daemon (every
    // second) clears every bit.
    let (a, _) = Served::assemble(&s.path("mnt"), &all, &[]);
    wait_attr(&a, "sync_action", "idle", Duration::from_secs(60));
    wait_attr(&a, "resync_start", "none", Duration::from_secs(60));
    assert_eq!(read_attr(&a.md("bitmap/chunksize")).trim(), "65536");
    write_attr(&a.md("bitmap/time_base"), "1");
    wait_attr(&a, "bitmap/dirty", &format!("0 / {BITS}"), Duration::from_secs(10));

    // No clearing pass for a minute: the writes' bits stay. Rows 0, 5
    // (twice) and 100: three chunks.
    write_attr(&a.md("bitmap/time_base"), "60");
    let data =
        std::fs::OpenOptions::new().read(true).write(true).open(a.dir.join("data")).expect("open data");
    let offsets = [0, 5 * ROW + 4096, 5 * ROW + 2 * 64 * 1024, 100 * ROW + 8192];
    for (i, &off) in offsets.iter().enumerate() {
        data.write_all_at(&[0x40 + i as u8; 4096], off).expect("write 4 KiB");
    }
    data.sync_all().expect("fsync data");
    assert_eq!(read_attr(&a.md("bitmap/dirty")).trim(), format!("3 / {BITS}"), "bits after the writes");
    for (i, &off) in offsets.iter().enumerate() {
        let mut back = [0u8; 4096];
        data.read_exact_at(&mut back, off).expect("read back");
        assert!(back.iter().all(|&b| b == 0x40 + i as u8), "block at {off} reads back other data");
    }
    drop(data);
    check_bitmap(&all, &uuid, 3, "after the writes, the array running");
    a.stop();
    drop(a);

    check_bitmap(&all, &uuid, 0, "after umd stop");
    check_examine(&all, &uuid, "after umd stop");
}

#[test]
fn bitmap_refusals_write_nothing() {
    let s = Scratch::new("bitmap-refusals");
    let all = members(&s, 2);
    for m in &all {
        std::fs::File::create(m).and_then(|f| f.set_len(8 << 20)).expect("image");
    }
    let before: Vec<u64> = all.iter().map(|m| file_hash(m)).collect();
    let cases: [(&[&str], &str); 3] = [
        (&["-l", "0", "-n", "2", "-c", "64", "--bitmap", "internal"], "not raid0"),
        (&["-l", "0", "-n", "2", "-c", "64", "--bitmap", "internal", "--bitmap-chunk", "64K"], "not raid0"),
        (&["-l", "1", "-n", "2", "--bitmap-chunk", "64K"], "--bitmap-chunk needs --bitmap internal"),
    ];
    for (args, want) in cases {
        let out = run(umd().arg("create").args(args).args(&all));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "umd create {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.contains(want), "umd create {args:?}: {err:?} does not say {want:?}");
        let after: Vec<u64> = all.iter().map(|m| file_hash(m)).collect();
        assert_eq!(after, before, "umd create {args:?} wrote to the members");
    }
}
