//! Steady-state engine I/O allocates nothing: a counting global allocator
//! (counting only on threads that arm it) sees 0 allocations across 10,000
//! I/Os per engine with one I/O in flight per member, and, with more than
//! one in flight on a member, exactly as many allocations as the
//! persistent descriptor's slot misses.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

mod common;

use common::*;

use blockio::{Access, BufPool, Direct, Engine, EngineKind, Member, MemberOptions, Op, PoolConfig};

fn setup(kind: EngineKind, base: &str, members: usize) -> (Scratch, Engine) {
    let d = Path::new(base).join(format!("blockio-alloc-{}-{kind}-{members}", std::process::id()));
    std::fs::create_dir_all(&d).expect("mkdir");
    let s = Scratch(d);
    let ms = (0..members)
        .map(|i| {
            let p = s.0.join(format!("m{i}.img"));
            std::fs::write(&p, vec![0u8; 1 << 20]).expect("image");
            Member::open_with(
                &p,
                &MemberOptions { access: Access::ReadWrite, direct: Direct::Auto, faults: None },
            )
            .expect("open")
        })
        .collect();
    let pool = BufPool::new(PoolConfig { count: 16, size: 8192, huge_pages: false }).expect("pool");
    (s, Engine::new(kind, ms, pool).expect("engine"))
}

const IOS: usize = 10_000;

/// One I/O in flight per member: `IOS` reads and writes (and a flush every
/// 1,000) round-robin over the members, 0 allocations.
fn steady_state(kind: EngineKind, base: &str) {
    let (_s, e) = setup(kind, base, 3);
    let mut q = e.queue(4).expect("queue");
    let mut buf = Some(e.pool().take().expect("buffer"));
    // Warm-up outside the window.
    let c = q.run(Op::write(0, 0, buf.take().expect("buf"), 4096)).expect("room");
    buf = Some(c.op.buf);
    let (mut failed, mut flush_failed) = (0, 0);
    let allocs = allocations(|| {
        for i in 0..IOS {
            let member = i % 3;
            let off = ((i * 8192) % (1 << 20)) as u64;
            let b = buf.take().expect("buf");
            let op =
                if i % 2 == 0 { Op::write(member, off, b, 8192) } else { Op::read(member, off, b, 8192) };
            match q.run(op) {
                Ok(c) => {
                    if c.result.is_err() {
                        failed += 1;
                    }
                    buf = Some(c.op.buf);
                }
                Err(_) => panic!("queue full"),
            }
            if i % 1000 == 999 && q.flush_all().is_err() {
                flush_failed += 1;
            }
        }
    });
    assert_eq!((failed, flush_failed), (0, 0), "{kind} {base}");
    assert_eq!(allocs, 0, "{kind} {base}: {allocs} allocations in {IOS} steady-state I/Os");
    let misses: u64 = e.members().iter().map(|m| m.dio_stats().1).sum();
    assert_eq!(misses, 0);
}

#[test]
fn sync_steady_state_allocates_nothing() {
    steady_state(EngineKind::Sync, "/var/tmp");
    steady_state(EngineKind::Sync, "/dev/shm");
}

#[test]
fn uring_steady_state_allocates_nothing() {
    steady_state(EngineKind::Uring, "/var/tmp");
    steady_state(EngineKind::Uring, "/dev/shm");
}

/// io_uring, 8 ops in flight on one member: every op past the first in
/// flight misses the slot, and allocations equal the misses.
#[test]
fn uring_concurrency_allocations_equal_misses() {
    let (_s, e) = setup(EngineKind::Uring, "/var/tmp", 1);
    let mut q = e.queue(8).expect("queue");
    let mut bufs: Vec<_> = (0..8).map(|_| Some(e.pool().take().expect("buffer"))).collect();
    let before = e.members()[0].dio_stats();
    let allocs = allocations(|| {
        for round in 0..200u64 {
            for (i, b) in bufs.iter_mut().enumerate() {
                let off = (i as u64 * 8192 + round * 65536) % (1 << 20);
                let op = Op { tag: i as u64, ..Op::write(0, off, b.take().expect("buf"), 8192) };
                if q.push(op).is_err() {
                    panic!("queue full");
                }
            }
            q.wait(8).expect("wait");
            while let Some(c) = q.pop() {
                assert_eq!(c.result, Ok(()));
                let i = c.op.tag as usize;
                bufs[i] = Some(c.op.buf);
            }
        }
    });
    let after = e.members()[0].dio_stats();
    let misses = after.1 - before.1;
    assert_eq!(after.0 - before.0 + misses, 1600, "every op took a descriptor");
    assert!(misses > 0, "8 ops in flight on one member never missed");
    assert_eq!(allocs, misses, "allocations {allocs} != slot misses {misses}");
}

/// The sync engine from two threads on one member: allocations equal the
/// misses (each thread arms its own counting).
#[test]
fn sync_two_threads_allocations_equal_misses() {
    let (_s, e) = setup(EngineKind::Sync, "/var/tmp", 1);
    let total = std::sync::Arc::new(AtomicU64::new(0));
    let before = e.members()[0].dio_stats();
    std::thread::scope(|sc| {
        for t in 0..2u64 {
            let e = e.clone();
            let total = total.clone();
            sc.spawn(move || {
                let mut q = e.queue(1).expect("queue");
                let mut buf = Some(e.pool().take().expect("buffer"));
                let mut failed = 0;
                let n = allocations(|| {
                    for i in 0..2000u64 {
                        let off = (t * 524_288 + (i % 64) * 8192) % (1 << 20);
                        let c = q.run(Op::write(0, off, buf.take().expect("buf"), 8192)).expect("room");
                        failed += usize::from(c.result.is_err());
                        buf = Some(c.op.buf);
                    }
                });
                assert_eq!(failed, 0);
                total.fetch_add(n, Ordering::SeqCst);
            });
        }
    });
    let after = e.members()[0].dio_stats();
    let misses = after.1 - before.1;
    assert_eq!(after.0 - before.0 + misses, 4000);
    let allocs = total.load(Ordering::SeqCst);
    assert_eq!(allocs, misses, "allocations {allocs} != slot misses {misses}");
}
