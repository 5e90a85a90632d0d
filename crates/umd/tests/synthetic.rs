//! Arrays of every level, layout and metadata version, laid out by
//! `md::synth` in md's format: the real mdadm must accept their superblocks
//! and agree with `umd examine`, and `umd extract` must read them back,
//! healthy and degraded.

mod common;

use common::*;
use md::superblock::Minor;
use md::Level;
use std::path::PathBuf;
use std::process::Command;

fn build(s: &Scratch, tag: &str, spec: &Spec) -> (Vec<PathBuf>, u64) {
    let paths: Vec<PathBuf> =
        (0..spec.member_bytes.len()).map(|i| s.path(&format!("{tag}-m{i}.img"))).collect();
    let size =
        md::synth::write_array(spec, &paths, &mut |off, buf| pattern_fill(off, 1, buf)).expect("synth");
    (paths, size)
}

fn check_all(data: &[u8], size: u64, what: &str) {
    assert_eq!(data.len() as u64, size, "{what}: size");
    let mut want = vec![0u8; 4096];
    for (b, blk) in data.chunks(4096).enumerate() {
        pattern_block(b as u64, 1, &mut want);
        assert!(blk == &want[..blk.len()], "{what}: block {b} differs");
    }
}

fn spec(level: Level, disks: usize, mib: u64, layout: u32, chunk_kib: u32, minor: Minor) -> Spec {
    let mut sp = Spec::new(level, disks, mib << 20);
    sp.layout = layout;
    sp.chunk_sectors = if level == Level::Raid1 { 0 } else { chunk_kib * 2 };
    sp.minor = minor;
    sp.name = format!("umd:{level}-{layout}");
    sp
}

#[test]
fn mdadm_accepts_our_superblocks_and_examine_agrees() {
    assert!(have_tool("mdadm"), "mdadm is required");
    let s = Scratch::new("synth-examine");
    let cases = [
        spec(Level::Raid5, 4, 4, 0, 64, Minor::V0),
        spec(Level::Raid6, 5, 4, 18, 128, Minor::V1),
        spec(Level::Raid10, 3, 4, 0x102, 64, Minor::V2),
        spec(Level::Raid10, 4, 4, 0x201, 64, Minor::V0),
        spec(Level::Raid10, 4, 4, 0x10201, 64, Minor::V1),
        spec(Level::Raid1, 3, 4, 0, 0, Minor::V0),
        spec(Level::Raid0, 3, 4, 0, 32, Minor::V1),
        spec(Level::Raid4, 3, 4, 0, 64, Minor::V2),
    ];
    for (i, sp) in cases.iter().enumerate() {
        let (paths, _) = build(&s, &format!("c{i}"), sp);
        for p in &paths {
            let ours = run(umd().arg("examine").arg(p));
            assert!(ours.status.success(), "case {i}: {}", String::from_utf8_lossy(&ours.stderr));
            let theirs = run(Command::new("mdadm").arg("--examine").arg(p));
            assert!(theirs.status.success(), "case {i}: mdadm rejects our superblock");
            let (o, t) = (String::from_utf8_lossy(&ours.stdout), String::from_utf8_lossy(&theirs.stdout));
            assert!(t.contains("- correct"), "case {i}: mdadm says the checksum is wrong:\n{t}");
            let strip = |x: &str| x.lines().skip(1).map(|l| l.trim_end().to_string()).collect::<Vec<_>>();
            assert_eq!(strip(&o), strip(&t), "case {i} ({}): umd examine differs from mdadm", p.display());
        }
    }
}

#[test]
fn every_level_reads_back_healthy_and_degraded() {
    let s = Scratch::new("synth-read");
    // (spec, sets of slots to leave out that the level tolerates)
    let cases: Vec<(Spec, Vec<Vec<usize>>)> = vec![
        (spec(Level::Raid0, 3, 3, 0, 16, Minor::V2), vec![]),
        (spec(Level::Raid1, 2, 3, 0, 0, Minor::V0), vec![vec![0], vec![1]]),
        (spec(Level::Raid4, 4, 3, 0, 64, Minor::V1), vec![vec![3], vec![0]]),
        (spec(Level::Raid5, 5, 3, 0, 32, Minor::V2), vec![vec![4]]),
        (spec(Level::Raid5, 3, 3, 3, 128, Minor::V0), vec![vec![1]]),
        (spec(Level::Raid6, 5, 3, 2, 64, Minor::V2), vec![vec![0, 1], vec![2, 4], vec![3]]),
        (spec(Level::Raid6, 6, 3, 17, 32, Minor::V1), vec![vec![0, 5], vec![1, 3]]),
        (spec(Level::Raid10, 5, 3, 0x102, 64, Minor::V2), vec![vec![0], vec![1, 3]]),
        (spec(Level::Raid10, 4, 3, 0x201, 64, Minor::V2), vec![vec![2]]),
        (spec(Level::Raid10, 3, 3, 0x10201, 16, Minor::V0), vec![vec![1]]),
    ];
    for (i, (sp, drops)) in cases.iter().enumerate() {
        let (paths, size) = build(&s, &format!("r{i}"), sp);
        let out = run(umd().arg("extract").args(&paths));
        assert!(out.status.success(), "case {i}: {}", String::from_utf8_lossy(&out.stderr));
        check_all(&out.stdout, size, &format!("case {i} healthy"));
        for d in drops {
            let some: Vec<_> =
                paths.iter().enumerate().filter(|(k, _)| !d.contains(k)).map(|(_, p)| p.clone()).collect();
            let out = run(umd().arg("extract").args(&some));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "case {i} without {d:?}: {err}");
            assert!(err.contains("DEGRADED"), "case {i}: {err}");
            check_all(&out.stdout, size, &format!("case {i} without {d:?}"));
        }
    }
}

#[test]
fn multi_zone_raid0_needs_its_layout() {
    let s = Scratch::new("synth-raid0");
    for layout in [1u32, 2] {
        let mut sp = spec(Level::Raid0, 3, 3, 0, 16, Minor::V2);
        sp.member_bytes = vec![3 << 20, 4 << 20, 5 << 20];
        sp.raid0_layout = Some(layout);
        let (paths, size) = build(&s, &format!("z{layout}"), &sp);
        let out = run(umd().arg("extract").args(&paths));
        assert!(out.status.success(), "layout {layout}: {}", String::from_utf8_lossy(&out.stderr));
        check_all(&out.stdout, size, &format!("multi-zone raid0 layout {layout}"));
        let ex = run(Command::new("mdadm").arg("--examine").arg(&paths[0]));
        let t = String::from_utf8_lossy(&ex.stdout);
        assert!(t.contains(if layout == 1 { "Layout : original" } else { "Layout : alternate" }), "{t}");
    }
    // Without a recorded layout md refuses a multi-zone raid0, and so do we.
    let mut sp = spec(Level::Raid0, 3, 3, 0, 16, Minor::V2);
    sp.member_bytes = vec![3 << 20, 4 << 20, 5 << 20];
    sp.raid0_layout = Some(1);
    let (paths, _) = build(&s, "znone", &sp);
    for p in &paths {
        let m = blockio::Member::open(p, blockio::Access::ReadWrite).expect("open");
        let mut f = md::superblock::load(&m, None, true).expect("load");
        f.sb.feature_map &= !md::superblock::feature::RAID0_LAYOUT;
        f.sb.layout = 0;
        f.sb.update_checksum();
        let mut block = vec![0u8; 4096];
        f.sb.encode(&mut block);
        m.write_all_at(&block[..512], f.sb.super_offset * 512).expect("write");
    }
    let out = run(umd().arg("extract").args(&paths));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("layout"), "{err}");
}

#[test]
fn each_members_own_data_offset_is_honoured() {
    let s = Scratch::new("synth-offset");
    let sp = spec(Level::Raid5, 4, 3, 2, 64, Minor::V2);
    let (paths, size) = build(&s, "off", &sp);
    // Move m1's data area from 1 MiB to 2 MiB into a larger image, as md
    // allows members to differ in data_offset.
    let old = std::fs::read(&paths[1]).expect("read m1");
    let moved = s.path("off-m1-moved.img");
    let mut img = vec![0u8; 4 << 20];
    img[2 << 20..].copy_from_slice(&old[1 << 20..3 << 20]);
    std::fs::write(&moved, &img).expect("write moved");
    let m = blockio::Member::open(&paths[1], blockio::Access::ReadOnly).expect("open");
    let mut sb = md::superblock::load(&m, None, true).expect("load").sb;
    sb.data_offset = 4096;
    sb.data_size = 4096;
    sb.update_checksum();
    let mut block = vec![0u8; 4096];
    sb.encode(&mut block);
    let f = std::fs::OpenOptions::new().write(true).open(&moved).expect("open moved");
    std::os::unix::fs::FileExt::write_all_at(&f, &block, 4096).expect("write sb");
    drop(f);
    let members = vec![paths[0].clone(), moved, paths[2].clone(), paths[3].clone()];
    let out = run(umd().arg("extract").args(&members));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_all(&out.stdout, size, "raid5 with one member at another data offset");
    let ex = run(umd().arg("examine").arg(&members[1]));
    assert!(String::from_utf8_lossy(&ex.stdout).contains("Data Offset : 4096 sectors"));
}
