//! The fault injector through real engine I/O, on both engines (io_uring
//! skipped where the kernel says ENOSYS), on a disk file (direct I/O, under
//! /var/tmp) and on tmpfs (buffered, under /dev/shm): each fault kind
//! produces exactly the errors and data loss it promises.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::*;

use blockio::fault::{CutMode, Faults, Ops, Rule, Trigger};
use blockio::{
    Access, BufPool, Direct, Engine, EngineKind, IoMode, Member, MemberOptions, Op, OpKind, PoolConfig, Queue,
};

// ---- rig ----

const SIZE: usize = 1 << 20;
const BUF: usize = 64 << 10;
const CASES: [(EngineKind, &str, IoMode); 4] = [
    (EngineKind::Sync, "/var/tmp", IoMode::Direct),
    (EngineKind::Sync, "/dev/shm", IoMode::Buffered),
    (EngineKind::Uring, "/var/tmp", IoMode::Direct),
    (EngineKind::Uring, "/dev/shm", IoMode::Buffered),
];

/// One member with an injector, its engine and a queue. Fields drop in
/// order: the queue first, the scratch directory last.
struct Rig {
    q: Queue,
    engine: Engine,
    faults: Arc<Faults>,
    path: PathBuf,
    _scratch: Scratch,
}

impl Rig {
    /// None when io_uring is not available (ENOSYS).
    fn new(kind: EngineKind, base: &str, mode: IoMode, name: &str, faults: Faults) -> Option<Rig> {
        let scratch = Scratch::new(base, &format!("{name}-{kind}"));
        let path = scratch.0.join("m.img");
        let mut rng = Rng(0x5eed ^ SIZE as u64);
        let init: Vec<u8> = (0..SIZE).map(|_| rng.next() as u8).collect();
        std::fs::write(&path, &init).expect("image");
        let faults = Arc::new(faults);
        let m = Member::open_with(
            &path,
            &MemberOptions { access: Access::ReadWrite, direct: Direct::Auto, faults: Some(faults.clone()) },
        )
        .expect("open");
        assert_eq!(m.mode(), mode, "{base}");
        let pool = BufPool::new(PoolConfig { count: 4, size: BUF, huge_pages: false }).expect("pool");
        let engine = Engine::new(kind, vec![m], pool).expect("engine");
        let q = match engine.queue(8) {
            Ok(q) => q,
            Err(e) if kind == EngineKind::Uring && e.raw_os_error() == Some(libc::ENOSYS) => {
                eprintln!("io_uring not available (ENOSYS): skipped {name} on {base}");
                return None;
            }
            Err(e) => panic!("queue: {e}"),
        };
        Some(Rig { q, engine, faults, path, _scratch: scratch })
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), i32> {
        let mut b = self.engine.pool().take().expect("buffer");
        b[..data.len()].copy_from_slice(data);
        self.q.run(Op::write(0, offset, b, data.len())).expect("queue room").result
    }

    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        let b = self.engine.pool().take().expect("buffer");
        let c = self.q.run(Op::read(0, offset, b, len)).expect("queue room");
        c.result.map(|()| c.op.buf[..len].to_vec())
    }

    fn flush(&mut self) -> Result<(), i32> {
        self.q.flush(0)
    }

    /// The member's contents, read past the engine and the injector.
    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read image")
    }
}

/// Runs `f` on every (engine, filesystem) case that is available.
fn each(name: &str, make: impl Fn() -> Faults, mut f: impl FnMut(&mut Rig, &str)) {
    for (kind, base, mode) in CASES {
        if let Some(mut rig) = Rig::new(kind, base, mode, name, make()) {
            f(&mut rig, &format!("{kind} on {base}"));
        }
    }
}

fn overlaps(a: std::ops::Range<u64>, b: std::ops::Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

// ---- tests ----

#[test]
fn sector_range_rules_fail_exactly_the_overlapping_ops() {
    // Writes touching sectors 40..48 fail with ENOSPC; reads touching
    // sector 100 fail with EIO; nothing else fails.
    let make = || {
        let f = Faults::new(1);
        f.add_rule(Rule::new(Ops::Write, Trigger::Always).sectors(40..48).errno(libc::ENOSPC));
        f.add_rule(Rule::new(Ops::Read, Trigger::Always).sectors(100..101));
        f
    };
    each("range", make, |rig, case| {
        let mut model = rig.contents();
        let mut faults = 0;
        for len in [4096usize, 8192, 16384] {
            for off in (0..128u64 << 10).step_by(4096) {
                let sectors = off / 512..(off + len as u64) / 512;
                let data = vec![(off / 4096) as u8 ^ len as u8; len];
                let want = if overlaps(sectors.clone(), 40..48) { Err(libc::ENOSPC) } else { Ok(()) };
                assert_eq!(rig.write(off, &data), want, "{case}: write {len} at {off}");
                if want.is_ok() {
                    model[off as usize..off as usize + len].copy_from_slice(&data);
                } else {
                    faults += 1;
                }
                let want_read = overlaps(sectors, 100..101);
                match rig.read(off, len) {
                    Ok(got) => {
                        assert!(!want_read, "{case}: read {len} at {off} should fail");
                        assert!(
                            got == model[off as usize..off as usize + len],
                            "{case}: read {len} at {off}"
                        );
                    }
                    Err(e) => {
                        assert!(want_read, "{case}: read {len} at {off} failed with {e}");
                        assert_eq!(e, libc::EIO);
                        faults += 1;
                    }
                }
            }
        }
        assert_eq!(rig.flush(), Ok(()), "{case}");
        // Failed writes touched nothing; the others landed.
        assert!(rig.contents() == model, "{case}: contents");
        let st = rig.faults.stats();
        assert_eq!(st.faults, faults, "{case}");
        assert_eq!(st.ops, 2 * 3 * 32, "{case}");
        assert_eq!(st.flushes, 1, "{case}");
        // Disarmed: nothing fails; cleared: nothing fails either.
        rig.faults.disarm();
        assert_eq!(rig.write(40 * 512, &[7; 4096]), Ok(()), "{case}");
        assert!(rig.read(100 * 512, 512).is_ok(), "{case}");
        rig.faults.arm();
        assert_eq!(rig.write(40 * 512, &[7; 4096]), Err(libc::ENOSPC), "{case}");
        rig.faults.clear_rules();
        assert_eq!(rig.write(40 * 512, &[7; 4096]), Ok(()), "{case}");
        assert!(rig.read(100 * 512, 512).is_ok(), "{case}");
    });
}

#[test]
fn flush_rules_fail_flushes() {
    let make = || {
        let f = Faults::new(1);
        f.add_rule(Rule::new(Ops::Flush, Trigger::After(2)).errno(libc::EIO));
        f
    };
    each("flush", make, |rig, case| {
        assert_eq!(rig.write(0, &[1; 4096]), Ok(()), "{case}");
        assert_eq!(rig.flush(), Ok(()), "{case}");
        assert_eq!(rig.flush(), Ok(()), "{case}");
        assert_eq!(rig.flush(), Err(libc::EIO), "{case}");
        assert_eq!(rig.flush(), Err(libc::EIO), "{case}");
        // Reads and writes are not flushes.
        assert_eq!(rig.write(0, &[1; 4096]), Ok(()), "{case}");
        assert!(rig.read(0, 4096).is_ok(), "{case}");
    });
}

#[test]
fn probability_is_deterministic_for_a_seed() {
    const OPS: u64 = 400;
    let pattern = |seed: u64| {
        let mut patterns = Vec::new();
        let make = || {
            let f = Faults::new(seed);
            f.add_rule(Rule::new(Ops::Both, Trigger::Probability(0.25)).errno(libc::ETIMEDOUT));
            f
        };
        each("prob", make, |rig, case| {
            let mut p = Vec::new();
            for i in 0..OPS {
                let off = (i * 4096) % SIZE as u64;
                let r = if i % 3 == 0 {
                    rig.write(off, &[i as u8; 4096])
                } else {
                    rig.read(off, 4096).map(|_| ())
                };
                match r {
                    Ok(()) => p.push(false),
                    Err(e) => {
                        assert_eq!(e, libc::ETIMEDOUT, "{case}");
                        p.push(true);
                    }
                }
            }
            let failed = p.iter().filter(|&&b| b).count() as u64;
            assert_eq!(rig.faults.stats().faults, failed, "{case}");
            // 25% of 400 = 100; far outside 60..=140 is not 0.25.
            assert!((60..=140).contains(&failed), "{case}: {failed} of {OPS} failed at p=0.25");
            patterns.push(p);
        });
        assert!(!patterns.is_empty());
        // The same on every engine and filesystem: a function of the seed.
        for p in &patterns[1..] {
            assert_eq!(p, &patterns[0], "seed {seed}");
        }
        patterns.swap_remove(0)
    };
    let a = pattern(42);
    assert_eq!(pattern(42), a, "same seed, same failures");
    assert_ne!(pattern(43), a, "another seed, other failures");

    // p = 0 never fails, p = 1 always does.
    let make = || {
        let f = Faults::new(9);
        f.add_rule(Rule::new(Ops::Read, Trigger::Probability(0.0)));
        f.add_rule(Rule::new(Ops::Write, Trigger::Probability(1.0)));
        f
    };
    each("prob01", make, |rig, case| {
        for i in 0..50 {
            assert!(rig.read(i * 4096, 4096).is_ok(), "{case}");
            assert_eq!(rig.write(i * 4096, &[0; 4096]), Err(libc::EIO), "{case}");
        }
    });
}

#[test]
fn after_n_fails_exactly_from_op_n_plus_1() {
    const N: u64 = 7;
    let make = || {
        let f = Faults::new(3);
        f.add_rule(Rule::new(Ops::Write, Trigger::After(N)));
        // Counts only the reads of sectors 0..8.
        f.add_rule(Rule::new(Ops::Read, Trigger::After(2)).sectors(0..8).errno(libc::ENODATA));
        f
    };
    each("after", make, |rig, case| {
        let before = rig.contents();
        for i in 1..=3 * N {
            let off = i * 8192;
            let data = vec![i as u8; 8192];
            let r = rig.write(off, &data);
            if i <= N {
                assert_eq!(r, Ok(()), "{case}: write #{i}");
            } else {
                assert_eq!(r, Err(libc::EIO), "{case}: write #{i}");
            }
            // Reads elsewhere neither fail nor count for the read rule.
            let got = rig.read(off, 8192).expect("read elsewhere");
            let want = if i <= N { data } else { before[off as usize..off as usize + 8192].to_vec() };
            assert!(got == want, "{case}: contents after write #{i}");
        }
        assert!(rig.read(0, 4096).is_ok(), "{case}: read #1");
        assert!(rig.read(512, 512).is_ok(), "{case}: read #2");
        for _ in 0..5 {
            assert_eq!(rig.read(0, 4096).map(|_| ()), Err(libc::ENODATA), "{case}: read #3..");
        }
        assert_eq!(rig.faults.stats().faults, 2 * N + 5, "{case}");
    });
}

#[test]
fn latency_adds_at_least_the_delay() {
    const D: Duration = Duration::from_millis(25);
    let make = || {
        let f = Faults::new(0);
        f.set_latency(Ops::Read, D);
        f.set_latency(Ops::Flush, D);
        f
    };
    each("latency", make, |rig, case| {
        for _ in 0..3 {
            let t = Instant::now();
            rig.read(0, 4096).expect("read");
            assert!(t.elapsed() >= D, "{case}: read took {:?}", t.elapsed());
        }
        let t = Instant::now();
        rig.flush().expect("flush");
        assert!(t.elapsed() >= D, "{case}: flush took {:?}", t.elapsed());
        // Writes are not delayed.
        rig.write(0, &[0; 4096]).expect("write");
        assert_eq!(rig.faults.stats().delayed, 4, "{case}");
        rig.faults.set_latency(Ops::Both, 2 * D);
        let t = Instant::now();
        rig.write(0, &[0; 4096]).expect("write");
        assert!(t.elapsed() >= 2 * D, "{case}: write took {:?}", t.elapsed());
        // Disarmed: no delay counted.
        rig.faults.disarm();
        rig.read(0, 4096).expect("read");
        assert_eq!(rig.faults.stats().delayed, 5, "{case}");
    });
}

/// The unflushed writes of the power-cut tests: (offset, data).
const WRITES: usize = 12;
const FLUSH_AT: usize = 5;
const WLEN: usize = 16384;

/// Write #i: 16 KiB at one of 8 offsets 8 KiB apart (so they overlap, and
/// repeat), each sector holding its write number and its sector number.
fn power_write(i: usize) -> (u64, Vec<u8>) {
    let off = ((i * 3) % 8) as u64 * 8192;
    let mut data = vec![0u8; WLEN];
    for (s, chunk) in data.chunks_mut(512).enumerate() {
        chunk.fill(i as u8 + 1);
        chunk[..8].copy_from_slice(&(off / 512 + s as u64).to_le_bytes());
    }
    (off, data)
}

/// Writes 1..=FLUSH_AT, flush, the rest; the contents at the flush.
fn write_flush_write(rig: &mut Rig, case: &str) -> Vec<u8> {
    let mut model = rig.contents();
    let mut at_flush = Vec::new();
    for i in 0..WRITES {
        if i == FLUSH_AT {
            assert_eq!(rig.flush(), Ok(()), "{case}");
            assert_eq!(rig.faults.unflushed_writes(), 0, "{case}");
            assert!(rig.contents() == model, "{case}");
            at_flush = model.clone();
        }
        let (off, data) = power_write(i);
        assert_eq!(rig.write(off, &data), Ok(()), "{case}: write #{i}");
        model[off as usize..off as usize + WLEN].copy_from_slice(&data);
    }
    assert!(rig.contents() == model, "{case}");
    assert_eq!(rig.faults.unflushed_writes(), WRITES - FLUSH_AT, "{case}");
    assert_eq!(rig.faults.stats().writes_logged, WRITES as u64, "{case}");
    at_flush
}

/// After a power cut: every op and flush fails with EIO until revive.
fn dead_until_revive(rig: &mut Rig, case: &str) {
    assert!(rig.faults.is_dead(), "{case}");
    let before = rig.contents();
    assert_eq!(rig.read(0, 4096), Err(libc::EIO), "{case}");
    assert_eq!(rig.write(0, &[0xee; 4096]), Err(libc::EIO), "{case}");
    assert_eq!(rig.flush(), Err(libc::EIO), "{case}");
    assert!(rig.contents() == before, "{case}: a dead member changed");
    rig.faults.revive();
    assert!(!rig.faults.is_dead(), "{case}");
    assert!(rig.read(0, 4096).expect("read after revive") == before[..4096], "{case}");
    assert_eq!(rig.write(0, &[0xee; 4096]), Ok(()), "{case}");
    assert_eq!(rig.flush(), Ok(()), "{case}");
}

#[test]
fn power_cut_lost_undoes_every_unflushed_write() {
    let make = || {
        let f = Faults::new(5);
        f.track_writes(true);
        f
    };
    each("lost", make, |rig, case| {
        let at_flush = write_flush_write(rig, case);
        assert!(rig.contents() != at_flush, "{case}");
        let r = rig.faults.power_cut(CutMode::Lost).expect("power cut");
        assert_eq!(r.writes, (WRITES - FLUSH_AT) as u64, "{case}");
        assert_eq!(r.writes_undone, r.writes, "{case}");
        assert_eq!(r.sectors_undone, r.writes * (WLEN / 512) as u64, "{case}");
        assert_eq!(r.sectors_kept, 0, "{case}");
        // Exactly the contents at the flush: writes up to it intact, those
        // after it gone.
        assert!(rig.contents() == at_flush, "{case}: contents differ from the last flush");
        let st = rig.faults.stats();
        assert_eq!((st.power_cuts, st.writes_undone, st.sectors_torn), (1, r.writes, 0), "{case}");
        dead_until_revive(rig, case);
    });
}

#[test]
fn power_cut_torn_keeps_or_undoes_each_sector() {
    let torn = |seed: u64| {
        let mut results = Vec::new();
        let make = || {
            let f = Faults::new(seed);
            f.track_writes(true);
            f
        };
        each("torn", make, |rig, case| {
            let at_flush = write_flush_write(rig, case);
            let r = rig.faults.power_cut(CutMode::Torn).expect("power cut");
            let got = rig.contents();
            // Every sector holds its contents at the flush or the data of
            // an unflushed write covering it.
            let mut partly = 0;
            let mut from_write = [0usize; WRITES];
            for (s, sector) in got.chunks(512).enumerate() {
                let byte = s * 512;
                if sector == &at_flush[byte..byte + 512] {
                    continue;
                }
                let w = (FLUSH_AT..WRITES).find(|&i| {
                    let (off, data) = power_write(i);
                    let off = off as usize;
                    (off..off + WLEN).contains(&byte) && sector == &data[byte - off..byte - off + 512]
                });
                match w {
                    Some(i) => from_write[i] += 1,
                    None => panic!("{case}: sector {s} is neither old nor any unflushed write's data"),
                }
            }
            // Some write is torn: part of it kept, part undone.
            for &shown in &from_write[FLUSH_AT..] {
                if shown > 0 && shown < WLEN / 512 {
                    partly += 1;
                }
            }
            assert!(partly > 0, "{case}: no write torn");
            assert!(r.sectors_kept > 0 && r.sectors_undone > 0, "{case}: {r:?}");
            assert_eq!(r.writes, (WRITES - FLUSH_AT) as u64, "{case}");
            // A sector shows a write's data exactly when that write was kept
            // there, the newest kept one (older writes leave it alone).
            let shown: usize = from_write.iter().sum();
            assert_eq!(shown as u64, r.sectors_kept, "{case}: {r:?}");
            let st = rig.faults.stats();
            assert_eq!((st.sectors_torn, st.sectors_kept), (r.sectors_undone, r.sectors_kept), "{case}");
            dead_until_revive(rig, case);
            results.push(got);
        });
        assert!(!results.is_empty());
        // Deterministic: the same on every engine and filesystem.
        for g in &results[1..] {
            assert!(g == &results[0], "seed {seed}: torn results differ");
        }
        results.swap_remove(0)
    };
    let a = torn(2024);
    assert!(torn(2024) == a, "same seed, same tearing");
    assert!(torn(2025) != a, "another seed, other tearing");
}

#[test]
fn power_cut_without_tracking_only_kills() {
    each(
        "untracked",
        || Faults::new(0),
        |rig, case| {
            rig.write(0, &[3; 4096]).expect("write");
            let now = rig.contents();
            let r = rig.faults.power_cut(CutMode::Lost).expect("power cut");
            assert_eq!(r.writes, 0, "{case}");
            assert!(rig.contents() == now, "{case}");
            dead_until_revive(rig, case);
        },
    );
}

#[test]
fn parsed_spec_drives_the_engine() {
    let make = || Faults::parse("seed=7, write:fail@16-24/enospc, read:after=3, track").expect("spec");
    each("spec", make, |rig, case| {
        assert_eq!(rig.write(8192, &[1; 4096]), Err(libc::ENOSPC), "{case}");
        assert_eq!(rig.write(4096, &[1; 4096]), Ok(()), "{case}");
        assert_eq!(rig.write(12288, &[1; 4096]), Ok(()), "{case}");
        for _ in 0..3 {
            assert!(rig.read(0, 4096).is_ok(), "{case}");
        }
        assert_eq!(rig.read(0, 4096), Err(libc::EIO), "{case}");
        assert_eq!(rig.faults.unflushed_writes(), 2, "{case}");
    });
}

#[test]
fn steady_state_without_matching_rules_allocates_nothing() {
    // Sync engine (io_uring's own allocation is tests/alloc.rs's business).
    let make = || {
        let f = Faults::new(1);
        f.add_rule(Rule::new(Ops::Both, Trigger::Always).sectors(1 << 30..1 << 31));
        f.add_rule(Rule::new(Ops::Flush, Trigger::After(u64::MAX)));
        f
    };
    for (kind, base, mode) in &CASES[..2] {
        let mut rig = Rig::new(*kind, base, *mode, "alloc", make()).expect("sync rig");
        let mut buf = Some(rig.engine.pool().take().expect("buffer"));
        let (mut failed, mut flush_failed) = (0, 0);
        let n = allocations(|| {
            for i in 0..2000u64 {
                let off = (i * 8192) % SIZE as u64;
                let b = buf.take().expect("buf");
                let op = if i % 2 == 0 { Op::write(0, off, b, 8192) } else { Op::read(0, off, b, 8192) };
                let c = rig.q.run(op).expect("room");
                failed += usize::from(c.result.is_err());
                buf = Some(c.op.buf);
                if i % 100 == 99 {
                    flush_failed += usize::from(rig.q.flush(0).is_err());
                }
            }
        });
        assert_eq!((failed, flush_failed), (0, 0), "{base}");
        assert_eq!(n, 0, "{base}: {n} allocations");
        assert_eq!(rig.faults.stats().ops, 2000, "{base}");
    }
    // on_io itself, called directly, not even for a failing rule.
    let s = Scratch::new("/dev/shm", "alloc-direct");
    let p = s.0.join("f");
    std::fs::write(&p, vec![0u8; 8192]).expect("file");
    let file = std::fs::File::open(&p).expect("open");
    let f = Faults::new(1);
    f.add_rule(Rule::new(Ops::Read, Trigger::Always).sectors(0..1));
    let n = allocations(|| {
        for _ in 0..1000 {
            assert_eq!(f.on_io(OpKind::Write, &file, 0, 4096), Ok(()));
            assert_eq!(f.on_io(OpKind::Read, &file, 0, 4096), Err(libc::EIO));
            assert_eq!(f.on_flush(), Ok(()));
            f.flushed();
        }
    });
    assert_eq!(n, 0);
}
