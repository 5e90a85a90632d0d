//! The raid4/5/6 write path's choices, seen through `Array::stripe_stats`:
//! whole rows are written without reading, a small write to a wide row
//! reads old data and parity (read-modify-write), a write covering most
//! of a row reads the rest (reconstruct-write), blocks already cached are
//! not read again, and a degraded row is recomputed. Each case also checks
//! the bytes (model) and a degraded re-read (parity right).

mod common;

use std::path::PathBuf;

use common::{build_synth, Scratch};
use md::stripe::StripeCounts;
use md::synth::Spec;
use md::{assemble, assemble_writable, AssembleOptions, Level};

const MIB: u64 = 1 << 20;

fn spec(level: Level, disks: usize, chunk_kib: u32) -> Spec {
    let mut s = Spec::new(level, disks, 4 * MIB);
    s.chunk_sectors = chunk_kib * 2;
    s
}

fn delta(a: StripeCounts, b: StripeCounts) -> StripeCounts {
    StripeCounts {
        full: b.full - a.full,
        rcw: b.rcw - a.rcw,
        rmw: b.rmw - a.rmw,
        degraded: b.degraded - a.degraded,
        reads: b.reads - a.reads,
    }
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every degraded assembly the level allows reads `model`.
fn check_degraded(paths: &[PathBuf], model: &[u8], tag: &str) {
    let n = paths.len();
    for skip in 0..n {
        let sub: Vec<PathBuf> = (0..n).filter(|&s| s != skip).map(|s| paths[s].clone()).collect();
        let asm = assemble(&sub, &AssembleOptions::default()).unwrap();
        let mut back = vec![0u8; model.len()];
        asm.array.read_at(0, &mut back).unwrap();
        assert!(back == model, "{tag}: member {skip} missing: data differs");
    }
}

#[test]
fn full_rows_read_nothing() {
    for level in [Level::Raid4, Level::Raid5, Level::Raid6] {
        let s = spec(level, 5, 64);
        let tag = format!("full-{level}");
        let (_d, paths, mut model) = build_synth("umd-rows", &tag, &s);
        let asm = assemble_writable(&paths, &AssembleOptions::default()).unwrap();
        let a = &asm.array;
        let row = 64 * 1024 * if level == Level::Raid6 { 3 } else { 4 };
        let data = noise(7, 5 * row);
        a.write_at(2 * row as u64, &data).unwrap();
        model[2 * row..7 * row].copy_from_slice(&data);
        let st = a.stripe_stats().unwrap();
        assert_eq!(st, StripeCounts { full: 5, ..Default::default() }, "{tag}");
        drop(asm);
        check_degraded(&paths, &model, &tag);
    }
}

#[test]
fn small_write_to_wide_row_is_read_modify_write() {
    for level in [Level::Raid5, Level::Raid6] {
        // 6 members: a 4 KiB write must read its old block and P (and Q):
        // 2-3 reads, where reconstruct-write would read 3-4 other blocks.
        let s = spec(level, 6, 16);
        let tag = format!("rmw-{level}");
        let (_d, paths, mut model) = build_synth("umd-rows", &tag, &s);
        let asm = assemble_writable(&paths, &AssembleOptions::default()).unwrap();
        let a = &asm.array;
        let data = noise(9, 4096);
        a.write_at(40960 + 100, &data).unwrap();
        model[40960 + 100..40960 + 100 + 4096].copy_from_slice(&data);
        let st = a.stripe_stats().unwrap();
        assert_eq!(st.full + st.degraded, 0, "{tag}: {st:?}");
        assert!(st.rmw >= 1 && st.rcw == 0, "{tag}: {st:?}");
        let parity = if level == Level::Raid6 { 2 } else { 1 };
        // The write straddles two 16 KiB chunks' folio? No: 40960+100..+4096
        // stays in one chunk and one folio: old data + parity.
        assert_eq!(st.reads, 1 + parity, "{tag}: {st:?}");
        // The same block again: everything is cached, nothing is read.
        let before = a.stripe_stats().unwrap();
        let data2 = noise(10, 300);
        a.write_at(40960 + 200, &data2).unwrap();
        model[40960 + 200..40960 + 500].copy_from_slice(&data2);
        let d = delta(before, a.stripe_stats().unwrap());
        assert_eq!(d.reads, 0, "{tag}: {d:?}");
        let mut back = vec![0u8; model.len()];
        a.read_at(0, &mut back).unwrap();
        assert!(back == model, "{tag}: data differs");
        drop(asm);
        check_degraded(&paths, &model, &tag);
    }
}

#[test]
fn most_of_a_row_is_reconstruct_write() {
    for level in [Level::Raid4, Level::Raid5, Level::Raid6] {
        let s = spec(level, 5, 16);
        let tag = format!("rcw-{level}");
        let (_d, paths, mut model) = build_synth("umd-rows", &tag, &s);
        let asm = assemble_writable(&paths, &AssembleOptions::default()).unwrap();
        let a = &asm.array;
        let dd: usize = if level == Level::Raid6 { 3 } else { 4 };
        let row = 16 * 1024 * dd;
        // All of row 3 but its last chunk: reconstruct-write reads one chunk.
        let len = row - 16 * 1024;
        let data = noise(11, len);
        a.write_at(3 * row as u64, &data).unwrap();
        model[3 * row..3 * row + len].copy_from_slice(&data);
        let st = a.stripe_stats().unwrap();
        assert_eq!((st.full, st.rmw, st.degraded), (0, 0, 0), "{tag}: {st:?}");
        assert_eq!((st.rcw, st.reads), (1, 1), "{tag}: {st:?}");
        // Sequential continuation completes the row from the cache (rcw,
        // nothing read) and starts the next row with a 5000-byte piece:
        // read-modify-write reads the old block and parity, fewer than the
        // other data chunks reconstruct-write would.
        let before = a.stripe_stats().unwrap();
        let tail = noise(12, 16 * 1024 + 5000);
        a.write_at((3 * row + len) as u64, &tail).unwrap();
        model[3 * row + len..3 * row + len + tail.len()].copy_from_slice(&tail);
        let d = delta(before, a.stripe_stats().unwrap());
        // raid6 on 5 members: rmw would read block, P and Q, rcw the block
        // and the two other chunks: a tie, which md settles for rcw.
        let expect = if level == Level::Raid6 { (2, 0, 3) } else { (1, 1, 2) };
        assert_eq!((d.rcw, d.rmw, d.reads), expect, "{tag}: {d:?}");
        drop(asm);
        check_degraded(&paths, &model, &tag);
    }
}

#[test]
fn degraded_rows_keep_parity() {
    for level in [Level::Raid4, Level::Raid5, Level::Raid6] {
        let s = spec(level, 5, 16);
        let tag = format!("deg-{level}");
        let (_d, paths, mut model) = build_synth("umd-rows", &tag, &s);
        // Leave member 1 out, write partial and whole rows.
        let asm =
            assemble_writable(&[&paths[..1], &paths[2..]].concat(), &AssembleOptions::default()).unwrap();
        let a = &asm.array;
        let size = a.size() as usize;
        let mut seed = 99;
        for (off, len) in [(0usize, 100usize), (5000, 70_000), (16384 * 7 + 3, 16384), (size - 9000, 9000)] {
            seed += 1;
            let data = noise(seed, len);
            a.write_at(off as u64, &data).unwrap();
            model[off..off + len].copy_from_slice(&data);
        }
        let st = a.stripe_stats().unwrap();
        assert!(st.degraded >= 3, "{tag}: {st:?}");
        let mut back = vec![0u8; size];
        a.read_at(0, &mut back).unwrap();
        assert!(back == model, "{tag}: data differs");
        drop(asm);
        if level == Level::Raid6 {
            // Member 1 is stale; any one more may go.
            for skip in [0usize, 2, 3, 4] {
                let sub: Vec<PathBuf> =
                    (0..5).filter(|&s| s != 1 && s != skip).map(|s| paths[s].clone()).collect();
                let asm = assemble(&sub, &AssembleOptions { force: true, ..Default::default() }).unwrap();
                let mut back = vec![0u8; size];
                asm.array.read_at(0, &mut back).unwrap();
                assert!(back == model, "{tag}: members 1 and {skip} missing: data differs");
            }
        }
    }
}

#[test]
fn rows_not_in_sync_are_reconstructed() {
    // Created without --assume-clean: resync_offset 0, parity on disk is
    // whatever the images held. Small writes that would be rmw on a clean
    // array must be rcw, and then the row's parity is right.
    for level in [Level::Raid5, Level::Raid6] {
        let dir =
            Scratch(std::env::temp_dir().join(format!("umd-rows-{}-unsync-{level}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        let paths: Vec<PathBuf> = (0..6).map(|i| dir.0.join(format!("m{i}.img"))).collect();
        for (i, p) in paths.iter().enumerate() {
            // Junk everywhere (no md superblock: create writes it after).
            let mut junk = noise(500 + i as u64, 6 << 20);
            junk[..8192].fill(0);
            std::fs::write(p, &junk).unwrap();
        }
        let req = md::create::Request {
            level,
            raid_devices: 6,
            chunk_kib: Some(16),
            layout: None,
            name: Some("unsync".into()),
            homehost: Some("test".into()),
            size_kib: None,
            assume_clean: false,
            bitmap: false,
            bitmap_chunk_kib: None,
            force: true,
            members: paths.iter().cloned().map(Some).collect(),
        };
        md::create::plan(&req).unwrap().write().unwrap();
        let asm = assemble_writable(&paths, &AssembleOptions::default()).unwrap();
        let a = &asm.array;
        assert_eq!(a.sb.resync_offset, 0, "{level}: a new array needs resync");
        let data = noise(77, 4096);
        a.write_at(16384 * 9 + 512, &data).unwrap();
        let st = a.stripe_stats().unwrap();
        assert_eq!((st.rmw, st.rcw), (0, 1), "{level}: {st:?}");
        // The touched row is now consistent: with any one member missing,
        // the written bytes read back.
        drop(asm);
        for skip in 0..6 {
            let sub: Vec<PathBuf> = (0..6).filter(|&s| s != skip).map(|s| paths[s].clone()).collect();
            // Dirty and degraded: md refuses without force.
            assert!(assemble(&sub, &AssembleOptions::default()).is_err());
            let asm = assemble(&sub, &AssembleOptions { force: true, ..Default::default() }).unwrap();
            let mut back = vec![0u8; 4096];
            asm.array.read_at(16384 * 9 + 512, &mut back).unwrap();
            assert!(back == data, "{level}: member {skip} missing: written bytes differ");
        }
    }
}
