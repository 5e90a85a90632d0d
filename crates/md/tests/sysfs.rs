//! md's attribute set for assembled real md arrays, in process: the values
//! md's own sysfs showed for the same arrays (recorded in each fixture's
//! manifest.json), the read-only semantics of stores, and notify/poll.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{fixtures_dir, unpack_fixture};
use kernfs::{Kernfs, OpenFlags};
use md::sysfs::{self, ArrayState};
use md::{assemble, AssembleOptions};

fn read(fs: &Kernfs, path: &str) -> String {
    let n = fs.walk(path).unwrap_or_else(|| panic!("{path} missing"));
    let f = n.open(OpenFlags::RDONLY).expect("open");
    let mut buf = [0u8; 4096];
    let k = f.read(0, &mut buf).expect("read");
    String::from_utf8_lossy(&buf[..k]).into_owned()
}

fn write(fs: &Kernfs, path: &str, data: &[u8]) -> Result<usize, i32> {
    let n = fs.walk(path).unwrap_or_else(|| panic!("{path} missing"));
    let f = n.open(OpenFlags::RDWR).expect("open");
    f.write(0, data)
}

fn members(dir: &common::Scratch, n: usize) -> Vec<PathBuf> {
    (0..n).map(|k| dir.0.join(format!("m{k}.img"))).collect()
}

#[test]
fn values_match_what_md_showed_for_every_fixture() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let manifest =
            std::fs::read_to_string(fixtures_dir().join(&name).join("manifest.json")).expect("manifest");
        let n = manifest.matches("\"file\"").count();
        let (dir, _) = unpack_fixture(&name, n);
        let asm = assemble(&members(&dir, n), &AssembleOptions::default()).expect("assemble");
        let fs = Kernfs::new();
        let sys = sysfs::publish(&fs, &fs.root(), &asm.array, true).expect("publish");
        for key in ["level", "layout", "chunk_size", "raid_disks", "component_size", "metadata_version"] {
            // "key": "value" in the manifest's sysfs block.
            let pat = format!("\"{key}\": \"");
            let at =
                manifest.find(&pat).unwrap_or_else(|| panic!("{name}: manifest lacks {key}")) + pat.len();
            let want = &manifest[at..at + manifest[at..].find('"').expect("quote")];
            assert_eq!(read(&fs, &format!("md/{key}")), format!("{want}\n"), "{name}: md/{key}");
        }
        assert_eq!(read(&fs, "md/array_state"), "readonly\n", "{name}");
        assert_eq!(read(&fs, "md/array_size"), "default\n");
        assert_eq!(read(&fs, "md/resync_start"), "none\n");
        assert_eq!(read(&fs, "md/safe_mode_delay"), "0.200\n");
        let policy = if name.starts_with("raid0") {
            "none\n"
        } else if name.contains("bitmap") {
            "bitmap\n"
        } else {
            "resync\n"
        };
        assert_eq!(read(&fs, "md/consistency_policy"), policy, "{name}");
        if name.starts_with("raid0") {
            assert!(fs.walk("md/sync_action").is_none(), "raid0 has no redundancy group");
            assert!(fs.walk("md/degraded").is_none());
        } else {
            assert_eq!(read(&fs, "md/sync_action"), "idle\n");
            assert_eq!(read(&fs, "md/sync_completed"), "none\n");
            assert_eq!(read(&fs, "md/mismatch_cnt"), "0\n");
            let degraded = if name.contains("degraded") { "1\n" } else { "0\n" };
            assert_eq!(read(&fs, "md/degraded"), degraded, "{name}");
        }
        for (slot, m) in asm.array.slots.iter().enumerate() {
            let rd = fs.walk(&format!("md/rd{slot}"));
            let Some(m) = m else {
                assert!(rd.is_none(), "{name}: rd{slot} for a missing member");
                continue;
            };
            let target = rd.expect("rd link").symlink_target().expect("target").to_string();
            let base = m.dev.path().file_name().expect("name").to_string_lossy().into_owned();
            assert_eq!(target, format!("dev-{base}"));
            assert_eq!(read(&fs, &format!("md/{target}/state")), "in_sync\n");
            assert_eq!(read(&fs, &format!("md/{target}/slot")), format!("{slot}\n"));
            assert_eq!(read(&fs, &format!("md/{target}/offset")), "2048\n");
            assert_eq!(read(&fs, &format!("md/{target}/size")), "7168\n");
            assert_eq!(read(&fs, &format!("md/{target}/errors")), "0\n");
            assert_eq!(read(&fs, &format!("md/{target}/recovery_start")), "none\n");
            let block = fs.walk(&format!("md/{target}/block")).expect("block link");
            assert_eq!(
                PathBuf::from(block.symlink_target().expect("target")),
                std::fs::canonicalize(m.dev.path()).expect("canonical")
            );
        }
        drop(sys);
    }
}

#[test]
fn stores_keep_read_only_semantics_and_garbage_changes_nothing() {
    let (dir, _) = unpack_fixture("raid5_ls_4d_64k_degraded", 4);
    let asm = assemble(&members(&dir, 4), &AssembleOptions::default()).expect("assemble");
    let fs = Kernfs::new();
    let _sys = sysfs::publish(&fs, &fs.root(), &asm.array, true).expect("publish");
    let dev = fs.walk("md/rd0").and_then(|l| l.symlink_target().map(str::to_string)).expect("rd0");
    // Garbage: EINVAL, value unchanged, on every writable attribute.
    let writable = [
        "md/array_state",
        "md/level",
        "md/raid_disks",
        "md/chunk_size",
        "md/layout",
        "md/component_size",
        "md/metadata_version",
        "md/array_size",
        "md/safe_mode_delay",
        "md/resync_start",
        "md/sync_action",
        "md/consistency_policy",
    ];
    let dev_attrs = ["state", "slot", "offset", "size", "errors", "recovery_start"];
    let mut all: Vec<String> = writable.iter().map(|s| s.to_string()).collect();
    all.extend(dev_attrs.iter().map(|a| format!("md/{dev}/{a}")));
    for path in &all {
        let before = read(&fs, path);
        assert_eq!(write(&fs, path, b"garbage!\n"), Err(libc::EINVAL), "{path}");
        assert_eq!(read(&fs, path), before, "{path} changed by garbage");
    }
    // Semantics that arrive with the write path are refused, not faked.
    assert_eq!(write(&fs, "md/array_state", b"clean\n"), Err(libc::EBUSY));
    assert_eq!(write(&fs, "md/array_state", b"write-pending\n"), Err(libc::EINVAL));
    assert_eq!(write(&fs, "md/array_state", b"readonly\n"), Ok(9));
    assert_eq!(write(&fs, "md/sync_action", b"repair\n"), Err(libc::EROFS));
    assert_eq!(write(&fs, &format!("md/{dev}/state"), b"faulty\n"), Err(libc::EBUSY));
    assert_eq!(write(&fs, "md/raid_disks", b"5\n"), Err(libc::EBUSY));
    assert_eq!(read(&fs, "md/array_state"), "readonly\n");
    // Settings md lets a running array change.
    assert_eq!(write(&fs, "md/safe_mode_delay", b"0.5\n"), Ok(4));
    assert_eq!(read(&fs, "md/safe_mode_delay"), "0.500\n");
    assert_eq!(write(&fs, &format!("md/{dev}/errors"), b"3\n"), Ok(2));
    assert_eq!(read(&fs, &format!("md/{dev}/errors")), "3\n");
    // Longer than a page: refused whole.
    assert_eq!(write(&fs, "md/array_state", &[b'x'; 5000]), Err(libc::E2BIG));
    // Read-only attributes.
    assert_eq!(write(&fs, "md/degraded", b"0\n"), Err(libc::EACCES));
}

#[test]
fn sync_action_and_array_state_notify_pollers() {
    let (dir, _) = unpack_fixture("raid1_2d", 2);
    let asm = assemble(&members(&dir, 2), &AssembleOptions::default()).expect("assemble");
    let fs = Kernfs::new();
    let sys = Arc::new(sysfs::publish(&fs, &fs.root(), &asm.array, true).expect("publish"));
    let f = fs.walk("md/sync_action").expect("sync_action").open(OpenFlags::RDONLY).expect("open");
    let mut buf = [0u8; 64];
    f.read(0, &mut buf).expect("read");
    assert_eq!(f.poll() & libc::POLLPRI, 0, "no event yet");
    assert_eq!(write(&fs, "md/sync_action", b"frozen\n"), Ok(7));
    assert_ne!(f.poll() & (libc::POLLPRI | libc::POLLERR), 0, "frozen must notify");
    let k = f.read(0, &mut buf).expect("re-read");
    assert_eq!(&buf[..k], b"frozen\n");
    assert_eq!(f.poll() & libc::POLLPRI, 0, "re-read consumes the event");

    let a = fs.walk("md/array_state").expect("array_state").open(OpenFlags::RDONLY).expect("open");
    a.read(0, &mut buf).expect("read");
    let s2 = sys.clone();
    let t = std::thread::spawn(move || s2.set_array_state(ArrayState::Broken));
    let bits = a.poll_wait(Duration::from_secs(10));
    t.join().expect("join");
    assert_ne!(bits & libc::POLLPRI, 0);
    let k = a.read(0, &mut buf).expect("re-read");
    assert_eq!(&buf[..k], b"broken\n");

    // Removing a member's directory: open files get ENODEV, no crash.
    let st = sys.member_state(1).expect("member 1").open(OpenFlags::RDONLY).expect("open");
    sys.remove_member(1).expect("remove");
    assert_eq!(st.read(0, &mut buf), Err(libc::ENODEV));
    assert!(fs.walk("md/rd1").is_none());
    st.release();
}
