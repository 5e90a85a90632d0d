//! `umd create` against the real `mdadm --examine`: every member of every
//! array umd creates must read, in mdadm's own words, as the array asked
//! for; umd must read it back; bad input must leave every member untouched.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn mdadm_examine(m: &std::path::Path) -> BTreeMap<String, String> {
    let out = run(Command::new("mdadm").arg("--examine").arg(m));
    assert!(
        out.status.success(),
        "mdadm --examine {} failed: {}",
        m.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_examine(&String::from_utf8_lossy(&out.stdout))
}

fn umd_examine(m: &std::path::Path) -> BTreeMap<String, String> {
    let out = run(umd().arg("examine").arg(m));
    assert!(
        out.status.success(),
        "umd examine {} failed: {}",
        m.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_examine(&String::from_utf8_lossy(&out.stdout))
}

fn name_base(v: &str) -> &str {
    v.split("  (local to host").next().unwrap_or(v)
}

fn create(args: &[&str], members: &[PathBuf]) -> std::process::Output {
    run(umd().arg("create").args(args).args(members))
}

struct Case {
    level: &'static str,
    n: usize,
    args: &'static [&'static str],
    layout: Option<&'static str>,
    chunk: Option<&'static str>,
}

#[test]
fn created_arrays_examine_as_mdadm_says() {
    assert!(have_tool("mdadm"), "mdadm is required (scripts/setup.sh installs it)");
    let cases = [
        Case { level: "0", n: 4, args: &["-c", "64"], layout: None, chunk: Some("64K") },
        Case { level: "0", n: 2, args: &[], layout: None, chunk: Some("512K") },
        Case { level: "1", n: 2, args: &[], layout: None, chunk: None },
        Case { level: "1", n: 3, args: &["--assume-clean"], layout: None, chunk: None },
        Case { level: "4", n: 3, args: &["--chunk", "128"], layout: None, chunk: Some("128K") },
        Case { level: "5", n: 4, args: &[], layout: Some("left-symmetric"), chunk: Some("512K") },
        Case {
            level: "5",
            n: 3,
            args: &["-p", "ra", "-c", "32K"],
            layout: Some("right-asymmetric"),
            chunk: Some("32K"),
        },
        Case {
            level: "5",
            n: 5,
            args: &["--layout", "parity-first", "--assume-clean"],
            layout: Some("parity-first"),
            chunk: Some("512K"),
        },
        Case { level: "6", n: 4, args: &[], layout: Some("left-symmetric"), chunk: Some("512K") },
        Case {
            level: "6",
            n: 5,
            args: &["--parity", "left-symmetric-6", "-c", "64"],
            layout: Some("left-symmetric-6"),
            chunk: Some("64K"),
        },
        Case { level: "10", n: 4, args: &[], layout: Some("near=2"), chunk: Some("512K") },
        Case {
            level: "10",
            n: 3,
            args: &["-p", "f2", "-c", "64"],
            layout: Some("far=2"),
            chunk: Some("64K"),
        },
        Case {
            level: "10",
            n: 4,
            args: &["--layout", "o2", "-c", "16"],
            layout: Some("offset=2"),
            chunk: Some("16K"),
        },
    ];
    let s = Scratch::new("create-examine");
    for (ci, c) in cases.iter().enumerate() {
        let members: Vec<PathBuf> = (0..c.n).map(|k| s.path(&format!("c{ci}-m{k}.img"))).collect();
        let mut args = vec!["-l", c.level, "-z", "8M", "-N", "t"];
        let n = c.n.to_string();
        args.extend(["-n", n.as_str()]);
        args.extend(c.args);
        let out = create(&args, &members);
        let what = format!("case {ci} (raid{} {:?})", c.level, c.args);
        assert!(out.status.success(), "{what}: create failed: {}", String::from_utf8_lossy(&out.stderr));
        let clean = c.level == "0" || c.args.contains(&"--assume-clean");
        let mut uuid = None;
        for (k, m) in members.iter().enumerate() {
            let theirs = mdadm_examine(m);
            let ours = umd_examine(m);
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>(),
                "{what} m{k}: fields"
            );
            for (key, v) in &theirs {
                if key == "Name" {
                    assert_eq!(name_base(&ours[key]), name_base(v), "{what} m{k}: Name");
                } else {
                    assert_eq!(&ours[key], v, "{what} m{k}: umd examine {key} differs from mdadm's");
                }
            }
            let t = |key: &str| theirs.get(key).cloned().unwrap_or_default();
            assert_eq!(t("Version"), "1.2", "{what}");
            assert_eq!(t("Raid Level"), format!("raid{}", c.level), "{what} m{k}");
            assert_eq!(t("Raid Devices"), c.n.to_string(), "{what} m{k}");
            assert!(name_base(&t("Name")).ends_with(":t"), "{what} m{k}: name {}", t("Name"));
            assert_eq!(t("Device Role"), format!("Active device {k}"), "{what} m{k}");
            assert_eq!(
                t("Array State"),
                format!("{} ('A' == active, '.' == missing, 'R' == replacing)", "A".repeat(c.n))
            );
            assert!(t("Checksum").ends_with(" - correct"), "{what} m{k}: {}", t("Checksum"));
            assert_eq!(t("Events"), "0", "{what} m{k}");
            assert_eq!(t("State"), if clean { "clean" } else { "active" }, "{what} m{k}");
            assert_eq!(theirs.get("Chunk Size").map(String::as_str), c.chunk, "{what} m{k}: chunk");
            assert_eq!(theirs.get("Layout").map(|l| l.trim()), c.layout, "{what} m{k}: layout");
            // 8M of data per member after mdadm's data offset.
            let off: u64 = t("Data Offset").trim_end_matches(" sectors").parse().expect("data offset");
            let chunk_kib = c.chunk.map_or(0, |c| c.trim_end_matches('K').parse::<u64>().expect("chunk"));
            let dev = std::fs::metadata(m).expect("meta").len() / 512;
            assert_eq!(dev, off + 16384, "{what} m{k}: image length");
            assert_eq!(off, md::create::default_data_offset(dev, chunk_kib), "{what} m{k}: data offset");
            assert!(t("Avail Dev Size").starts_with("16384 sectors"), "{what} m{k}: {}", t("Avail Dev Size"));
            if let Some(u) = theirs.get("Used Dev Size") {
                assert!(u.starts_with("16384 sectors"), "{what} m{k}: {u}");
            }
            let data_kib = match c.level {
                "0" => None,
                "1" => Some(8192),
                "4" | "5" => Some(8192 * (c.n - 1)),
                "6" => Some(8192 * (c.n - 2)),
                _ => Some(8192 * c.n / 2),
            };
            assert_eq!(
                theirs
                    .get("Array Size")
                    .and_then(|a| a.split(' ').next())
                    .map(|a| a.parse::<usize>().expect("size")),
                data_kib,
                "{what} m{k}: array size"
            );
            match &uuid {
                None => uuid = Some(t("Array UUID")),
                Some(u) => assert_eq!(u, &t("Array UUID"), "{what} m{k}: array UUID"),
            }
        }
    }
}

#[test]
fn created_arrays_read_back() {
    let s = Scratch::new("create-read");
    // A clean raid5 of new (zero) files reads as zeros, whole.
    let members: Vec<PathBuf> = (0..4).map(|k| s.path(&format!("r5-{k}.img"))).collect();
    let out = create(&["-l", "5", "-n", "4", "-c", "64", "-z", "4M", "--assume-clean"], &members);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = s.path("r5.out");
    let out = run(umd().arg("extract").arg("-o").arg(&img).args(&members));
    assert!(out.status.success(), "extract: {}", String::from_utf8_lossy(&out.stderr));
    let data = std::fs::read(&img).expect("read");
    assert_eq!(data.len(), (3 * 4) << 20);
    assert!(data.iter().all(|&b| b == 0));

    // Degraded raid5 (one member missing): clean, assembles with 3 of 4.
    let members: Vec<PathBuf> = (0..4).map(|k| s.path(&format!("d5-{k}.img"))).collect();
    let mut given = members.clone();
    given[1] = PathBuf::from("missing");
    let out = create(&["-l", "5", "-n", "4", "-c", "64", "-z", "4M"], &given);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!members[1].exists(), "a missing slot creates no file");
    let present: Vec<PathBuf> = given.iter().filter(|p| p.as_os_str() != "missing").cloned().collect();
    for (k, m) in present.iter().enumerate() {
        let e = mdadm_examine(m);
        assert!(e["Array State"].starts_with("A.AA "), "m{k}: {}", e["Array State"]);
        assert_eq!(e["State"], "clean");
        assert!(e["Checksum"].ends_with("- correct"));
    }
    let img = s.path("d5.out");
    let out = run(umd().arg("extract").arg("-o").arg(&img).args(&present));
    assert!(out.status.success(), "extract degraded: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&img).expect("meta").len(), (3 * 4) << 20);

    // A bigger (sparse) member gets mdadm's larger headroom: 4 GiB of data
    // puts the data at 5 MiB, as mdadm 4.2 computes it.
    let big: Vec<PathBuf> = (0..2).map(|k| s.path(&format!("big-{k}.img"))).collect();
    let out = create(&["-l", "1", "-n", "2", "-z", "4G"], &big);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = mdadm_examine(&big[0]);
    assert_eq!(e["Data Offset"], "10240 sectors");
    assert!(e["Checksum"].ends_with("- correct"));
    for m in &big {
        let _ = std::fs::remove_file(m);
    }

    // raid1, raid6, raid10 and raid0 assemble and extract too.
    for (level, n) in [("1", 2), ("6", 4), ("10", 4), ("0", 3)] {
        let members: Vec<PathBuf> = (0..n).map(|k| s.path(&format!("l{level}-{k}.img"))).collect();
        let n_s = n.to_string();
        let mut args = vec!["-l", level, "-n", &n_s, "-z", "2M", "--assume-clean"];
        if level != "1" {
            args.extend(["-c", "64"]);
        }
        let out = create(&args, &members);
        assert!(out.status.success(), "raid{level}: {}", String::from_utf8_lossy(&out.stderr));
        let img = s.path(&format!("l{level}.out"));
        let out = run(umd().arg("extract").arg("-o").arg(&img).args(&members));
        assert!(out.status.success(), "extract raid{level}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::read(&img).expect("read").iter().all(|&b| b == 0), "raid{level}: zeros");
    }
}

/// Every bad request fails with one error line and leaves the files as they were.
#[test]
fn bad_input_writes_nothing() {
    let s = Scratch::new("create-bad");
    let mk = |name: &str, len: u64| {
        let p = s.path(name);
        std::fs::File::create(&p).and_then(|f| f.set_len(len)).expect("image");
        p
    };
    let a = mk("a.img", 8 << 20);
    let b = mk("b.img", 8 << 20);
    let c = mk("c.img", 8 << 20);
    let small = mk("small.img", 4 << 20);
    let tiny = mk("tiny.img", 512 << 10);
    let ext = mk("ext.img", 8 << 20);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&ext).expect("open");
        f.write_all_at(&[0x53, 0xef], 1080).expect("magic");
    }
    let all = [&a, &b, &c, &small, &tiny, &ext];
    let before: Vec<u64> = all.iter().map(|p| file_hash(p)).collect();
    let p = |x: &PathBuf| x.display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["-l".into(), "5".into(), "-n".into(), "1".into(), p(&a)], "at least 2"),
        (vec!["-l".into(), "6".into(), "-n".into(), "3".into(), p(&a), p(&b), p(&c)], "at least 4"),
        (
            vec!["-l".into(), "5".into(), "-n".into(), "3".into(), p(&a), p(&b), p(&small)],
            "smaller than the other",
        ),
        (
            vec![
                "-l".into(),
                "5".into(),
                "-n".into(),
                "3".into(),
                "-z".into(),
                "6M".into(),
                p(&a),
                p(&b),
                p(&small),
            ],
            "smaller than given size",
        ),
        (
            vec![
                "-l".into(),
                "5".into(),
                "-n".into(),
                "3".into(),
                "-p".into(),
                "f2".into(),
                p(&a),
                p(&b),
                p(&c),
            ],
            "layout f2 not understood",
        ),
        (
            vec![
                "-l".into(),
                "10".into(),
                "-n".into(),
                "3".into(),
                "-p".into(),
                "left-symmetric".into(),
                p(&a),
                p(&b),
                p(&c),
            ],
            "raid10",
        ),
        (
            vec![
                "-l".into(),
                "4".into(),
                "-n".into(),
                "3".into(),
                "-p".into(),
                "ls".into(),
                p(&a),
                p(&b),
                p(&c),
            ],
            "not meaningful",
        ),
        (
            vec![
                "-l".into(),
                "5".into(),
                "-n".into(),
                "3".into(),
                "-c".into(),
                "48".into(),
                p(&a),
                p(&b),
                p(&c),
            ],
            "power of two",
        ),
        (
            vec![
                "-l".into(),
                "5".into(),
                "-n".into(),
                "3".into(),
                "-c".into(),
                "2".into(),
                p(&a),
                p(&b),
                p(&c),
            ],
            "chunk",
        ),
        (vec!["-l".into(), "1".into(), "-n".into(), "2".into(), p(&a), p(&tiny)], "too small"),
        (vec!["-l".into(), "5".into(), "-n".into(), "4".into(), p(&a), p(&b), p(&c)], "--raid-devices is 4"),
        (vec!["-l".into(), "5".into(), "-n".into(), "3".into(), p(&a), p(&b), p(&a)], "given twice"),
        (vec!["-l".into(), "1".into(), "-n".into(), "2".into(), p(&a), p(&ext)], "ext2/ext3/ext4"),
        (
            vec![
                "-l".into(),
                "5".into(),
                "-n".into(),
                "3".into(),
                p(&a),
                p(&b),
                s.path("new.img").display().to_string(),
            ],
            "does not exist",
        ),
        (
            vec!["-l".into(), "5".into(), "-n".into(), "3".into(), p(&a), "missing".into(), "missing".into()],
            "too many members missing",
        ),
        (vec!["-l".into(), "0".into(), "-n".into(), "2".into(), p(&a), "missing".into()], "missing"),
        (vec!["-l".into(), "7".into(), "-n".into(), "2".into(), p(&a), p(&b)], "invalid raid level"),
    ];
    for (args, want) in &cases {
        let out = run(umd().arg("create").args(args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: should fail");
        assert!(err.contains(want), "{args:?}: error {err:?} does not say {want:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one error line, got {err:?}");
        let now: Vec<u64> = all.iter().map(|p| file_hash(p)).collect();
        assert_eq!(now, before, "{args:?}: a member was written");
        assert!(!s.path("new.img").exists(), "{args:?}: created a file");
    }
}

/// Existing md members are refused without --force, and overwritten with it.
#[test]
fn existing_superblock_needs_force() {
    let s = Scratch::new("create-force");
    let members: Vec<PathBuf> = (0..2).map(|k| s.path(&format!("m{k}.img"))).collect();
    let out = create(&["-l", "1", "-n", "2", "-z", "4M"], &members);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = mdadm_examine(&members[0])["Array UUID"].clone();
    let before: Vec<u64> = members.iter().map(|p| file_hash(p)).collect();
    let out = create(&["-l", "1", "-n", "2"], &members);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds an md 1.2 superblock") && err.contains("--force"), "{err}");
    assert_eq!(members.iter().map(|p| file_hash(p)).collect::<Vec<_>>(), before);
    let out = create(&["-l", "1", "-n", "2", "--force", "--assume-clean"], &members);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = mdadm_examine(&members[1]);
    assert_ne!(e["Array UUID"], first);
    assert_eq!(e["State"], "clean");
}
