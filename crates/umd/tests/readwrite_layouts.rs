//! Every layout of every redundant level, written through the read-write
//! FUSE mount: an array made by `umd create --layout NAME`, random
//! unaligned pwrites through DIR/data checked against a model (through the
//! mount, after fsync), then, after `umd stop`, `umd extract` with a member
//! left out (rebuilt from parity or a mirror) must give the model too.
//! `readwrite.rs` goes deeper (every member set, EFBIG) on a few layouts.

mod common;

use common::*;
use md::synth::Rng;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// One array: `level`, `n` members, `layout` (None: the level's default).
fn round_trip(level: &str, n: usize, layout: Option<&str>, seed: u64) {
    let tag = format!("rwl-{level}-{}", layout.unwrap_or("default"));
    let s = Scratch::new(&tag);
    let members: Vec<PathBuf> = (0..n).map(|k| s.path(&format!("m{k}.img"))).collect();
    let mut args = vec!["create", "-l", level, "-n"];
    let n_str = n.to_string();
    args.push(&n_str);
    if level != "1" {
        args.extend(["-c", "16"]);
    }
    args.extend(["-z", "1M", "--assume-clean"]);
    if let Some(l) = layout {
        args.extend(["--layout", l]);
    }
    let out = run(umd().args(&args).args(&members));
    assert!(out.status.success(), "{tag}: create: {}", String::from_utf8_lossy(&out.stderr));

    let dir = s.path("mnt");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let g = MountGuard { dir: dir.clone(), pid: None };
    let out = run(umd().arg("assemble").arg("--mount").arg(&dir).arg("--daemon").args(&members));
    assert!(out.status.success(), "{tag}: assemble: {}", String::from_utf8_lossy(&out.stderr));
    let f = std::fs::OpenOptions::new().read(true).write(true).open(dir.join("data")).expect("open data");
    let size = f.metadata().expect("stat").len();
    let mut model = vec![0u8; size as usize];
    f.read_exact_at(&mut model, 0).expect("read before writing");
    let mut rng = Rng::new(seed);
    random_writes(&f, &mut model, &mut rng, 24, 100_000);
    f.sync_all().expect("fsync");
    let mut back = vec![0u8; size as usize];
    f.read_exact_at(&mut back, 0).expect("read back");
    assert!(back == model, "{tag}: read back through the mount differs");
    drop(f);
    let out = run(umd().arg("stop").arg(&dir));
    assert!(out.status.success(), "{tag}: stop: {}", String::from_utf8_lossy(&out.stderr));
    drop(g);

    // Member 0 left out: its data comes from redundancy.
    let img = s.path("extract.img");
    let out = run(umd().arg("extract").arg("-o").arg(&img).args(&members[1..]));
    assert!(out.status.success(), "{tag}: extract: {}", String::from_utf8_lossy(&out.stderr));
    let got = std::fs::read(&img).expect("read extract");
    assert!(got == model, "{tag}: extract without member 0 differs");
}

#[test]
fn raid4_and_raid5_every_layout() {
    round_trip("4", 4, None, 1);
    for (i, l) in ["la", "ra", "ls", "rs", "parity-first", "parity-last"].into_iter().enumerate() {
        round_trip("5", 4, Some(l), 10 + i as u64);
    }
}

#[test]
fn raid6_every_layout() {
    let layouts = [
        "la",
        "ra",
        "ls",
        "rs",
        "parity-first",
        "parity-last",
        "ddf-zero-restart",
        "ddf-N-restart",
        "ddf-N-continue",
        "left-asymmetric-6",
        "right-asymmetric-6",
        "left-symmetric-6",
        "right-symmetric-6",
        "parity-first-6",
    ];
    for (i, l) in layouts.into_iter().enumerate() {
        round_trip("6", 5, Some(l), 100 + i as u64);
    }
}

#[test]
fn raid1_and_raid10_every_layout() {
    round_trip("1", 3, None, 200);
    for (i, l) in ["n2", "n3", "f2", "f3", "o2", "o3"].into_iter().enumerate() {
        round_trip("10", 5, Some(l), 210 + i as u64);
    }
}
