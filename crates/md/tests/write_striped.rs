//! raid0, raid1 and raid10 write path: synthetic arrays assembled writable
//! take random writes (unaligned included) checked against an in-memory
//! model through `Array::read_at`, then every degraded assembly the level
//! allows reads the same bytes back; writes past the end and writes to
//! read-only assemblies are refused with nothing changed.

mod common;

use std::path::PathBuf;

use common::build_synth;
use md::synth::Rng;
use md::synth::Spec;
use md::{assemble, assemble_writable, AssembleOptions, Level};

const MIB: u64 = 1 << 20;

fn read_all(array: &md::Array) -> Vec<u8> {
    let mut v = vec![0u8; array.size() as usize];
    array.read_at(0, &mut v).unwrap();
    v
}

/// Random writes against the model, checked after every few writes and at
/// the end; then every degraded assembly the level allows.
fn exercise(tag: &str, spec: &Spec, seed: u64) {
    let (_dir, paths, mut model) = build_synth("umd-write", tag, spec);
    let asm = assemble_writable(&paths, &AssembleOptions::default()).unwrap();
    let array = &asm.array;
    assert!(array.writable());
    assert_eq!(array.size(), model.len() as u64, "{tag}");
    assert_eq!(read_all(array), model, "{tag}: initial content");
    let size = array.size();
    let chunk = u64::from(spec.chunk_sectors.max(8)) * 512;
    let mut rng = Rng(seed | 1);
    for i in 0..120 {
        let len = match rng.below(4) {
            0 => rng.below(64) + 1,
            1 => rng.below(chunk * 2) + 1,
            2 => rng.below(chunk * 5) + 1,
            _ => chunk,
        }
        .min(size);
        let offset =
            if rng.below(3) == 0 { rng.below(size / chunk) * chunk } else { rng.below(size - len + 1) };
        let offset = offset.min(size - len);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        array.write_at(offset, &data).unwrap();
        model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
        let mut back = vec![0u8; len as usize];
        array.read_at(offset, &mut back).unwrap();
        assert_eq!(back, data, "{tag}: write {i} at {offset} len {len}");
        if i % 30 == 0 {
            assert_eq!(read_all(array), model, "{tag}: after write {i}");
        }
    }
    // Writes at the very edges.
    let tail = vec![0x5au8; 777];
    array.write_at(size - 777, &tail).unwrap();
    model[(size - 777) as usize..].copy_from_slice(&tail);
    array.write_at(0, &tail[..3]).unwrap();
    model[..3].copy_from_slice(&tail[..3]);
    array.write_at(5, &[]).unwrap();
    // Past the end: refused, nothing written.
    for (off, len) in [(size - 10, 11u64), (size, 1), (u64::MAX - 2, 5)] {
        let e = array.write_at(off, &vec![0xffu8; len as usize]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{tag}: {e}");
    }
    array.flush().unwrap();
    assert_eq!(read_all(array), model, "{tag}: final");
    drop(asm);

    // Every subset of members the level can do without.
    let n = paths.len();
    let geom = spec.geometry().unwrap();
    let pers = md::personality::build(&geom).unwrap();
    let mut checked = 0;
    for mask in 1u32..(1 << n) - 1 {
        let present: Vec<bool> = (0..n).map(|s| mask & (1 << s) != 0).collect();
        if !pers.readable_with(&present) {
            continue;
        }
        let sub: Vec<PathBuf> = (0..n).filter(|&s| present[s]).map(|s| paths[s].clone()).collect();
        let asm = assemble(&sub, &AssembleOptions::default()).unwrap();
        assert!(asm.degraded);
        assert_eq!(read_all(&asm.array), model, "{tag}: degraded, members {mask:#b}");
        checked += 1;
    }
    if spec.level != Level::Raid0 {
        assert!(checked > 0, "{tag}: no degraded assembly checked");
    }

    // Read-only assembly refuses writes, nothing changed.
    let ro = assemble(&paths, &AssembleOptions::default()).unwrap();
    assert!(!ro.array.writable());
    let e = ro.array.write_at(0, &[1, 2, 3]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(read_all(&ro.array), model, "{tag}: after refused writes");
}

fn spec(level: Level, disks: usize, member_bytes: u64, chunk_sectors: u32, layout: u32) -> Spec {
    let mut s = Spec::new(level, disks, member_bytes);
    s.chunk_sectors = chunk_sectors;
    s.layout = layout;
    s
}

#[test]
fn raid0_single_zone() {
    for (i, chunk) in [8u32, 64, 128].into_iter().enumerate() {
        exercise(&format!("r0-{chunk}"), &spec(Level::Raid0, 3, 3 * MIB, chunk, 0), 11 + i as u64);
    }
}

#[test]
fn raid0_multi_zone() {
    for (layout, chunk) in [(1u32, 16u32), (2, 16), (2, 128), (1, 64)] {
        let mut s = spec(Level::Raid0, 4, 0, chunk, 0);
        s.member_bytes = vec![3 * MIB, 2 * MIB + 512 * 1024, 4 * MIB, 3 * MIB];
        s.raid0_layout = Some(layout);
        exercise(&format!("r0mz-{layout}-{chunk}"), &s, 7 * u64::from(chunk) + u64::from(layout));
    }
}

#[test]
fn raid1_two_and_three_mirrors() {
    exercise("r1-2", &spec(Level::Raid1, 2, 3 * MIB, 0, 0), 3);
    exercise("r1-3", &spec(Level::Raid1, 3, 3 * MIB, 0, 0), 5);
}

#[test]
fn raid10_near() {
    exercise("r10-n2-4", &spec(Level::Raid10, 4, 3 * MIB, 8, 0x102), 21);
    exercise("r10-n2-3", &spec(Level::Raid10, 3, 3 * MIB, 16, 0x102), 22);
    exercise("r10-n3-5", &spec(Level::Raid10, 5, 3 * MIB, 128, 0x103), 23);
}

#[test]
fn raid10_far_and_offset() {
    exercise("r10-f2-4", &spec(Level::Raid10, 4, 3 * MIB, 8, 0x201), 31);
    exercise("r10-f2-3", &spec(Level::Raid10, 3, 3 * MIB, 64, 0x201), 32);
    exercise("r10-o2-4", &spec(Level::Raid10, 4, 3 * MIB, 16, 0x10201), 33);
    exercise("r10-o3-5", &spec(Level::Raid10, 5, 3 * MIB, 8, 0x10301), 34);
    exercise("r10-n2f2-4", &spec(Level::Raid10, 4, 3 * MIB, 8, 0x202), 35);
}

#[test]
fn raid10_far_sets() {
    // Far-set variant 2: sets of near * far devices, the last set larger.
    exercise("r10-fs-f2-5", &spec(Level::Raid10, 5, 3 * MIB, 8, (2 << 17) | 0x201), 41);
    exercise("r10-fs-o2-6", &spec(Level::Raid10, 6, 3 * MIB, 16, (2 << 17) | 0x10201), 42);
    // Variant 1, which md still reads.
    exercise("r10-fs1-f2-4", &spec(Level::Raid10, 4, 3 * MIB, 8, (1 << 17) | 0x201), 43);
}

#[test]
fn degraded_mirror_takes_writes() {
    for (tag, s) in [
        ("deg-r1", spec(Level::Raid1, 3, 3 * MIB, 0, 0)),
        ("deg-r10", spec(Level::Raid10, 4, 3 * MIB, 8, 0x102)),
        ("deg-r10f", spec(Level::Raid10, 4, 3 * MIB, 8, 0x201)),
    ] {
        let (_dir, paths, mut model) = build_synth("umd-write", tag, &s);
        let asm = assemble_writable(&paths[1..], &AssembleOptions::default()).unwrap();
        assert!(asm.degraded);
        let array = &asm.array;
        let mut rng = Rng(99);
        for _ in 0..40 {
            let len = rng.below(20_000) + 1;
            let off = rng.below(array.size() - len + 1);
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            array.write_at(off, &data).unwrap();
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
        array.flush().unwrap();
        assert_eq!(read_all(array), model, "{tag}");
    }
}
