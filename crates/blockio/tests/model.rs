//! Both engines against an in-memory model: random reads, writes and
//! flushes on a real file on disk (direct I/O) and on tmpfs (buffered
//! fallback), batched and one at a time; refused requests (unaligned,
//! past the end, read-only) complete with their errno and change nothing.

use std::path::Path;

mod common;

use common::*;

use blockio::{
    Access, BufPool, Direct, Engine, EngineKind, IoMode, Member, MemberOptions, Op, OpKind, PoolConfig,
};

const SIZE: u64 = 4 << 20;
const MAX_IO: usize = 64 << 10;

fn engine(kind: EngineKind, path: &Path, access: Access) -> Engine {
    let m =
        Member::open_with(path, &MemberOptions { access, direct: Direct::Auto, faults: None }).expect("open");
    let pool = BufPool::new(PoolConfig { count: 16, size: MAX_IO, huge_pages: false }).expect("pool");
    Engine::new(kind, vec![m], pool).expect("engine")
}

fn make_file(path: &Path, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let data: Vec<u8> = (0..SIZE).map(|_| rng.next() as u8).collect();
    std::fs::write(path, &data).expect("write image");
    data
}

/// Random ops against the model, `batch` at a time, then a full compare of
/// the file with the model.
fn run_model(kind: EngineKind, base: &str, expect_mode: IoMode, batch: usize) {
    let s = Scratch::new(base, &format!("{kind}-{batch}"));
    let path = s.0.join("m.img");
    let mut model = make_file(&path, 42);
    let e = engine(kind, &path, Access::ReadWrite);
    assert_eq!(e.members()[0].mode(), expect_mode, "{base}");
    let align = e.members()[0].alignment().offset as u64;
    let mut q = e.queue(batch).expect("queue");
    let mut rng = Rng(7 + batch as u64);
    let (mut reads, mut writes, mut flushes) = (0, 0, 0);
    for round in 0..300 {
        if rng.below(10) == 0 {
            q.flush(0).expect("flush");
            flushes += 1;
            continue;
        }
        // A batch of non-overlapping ops (overlap within a batch has no
        // defined order on io_uring), each checked at completion.
        let mut taken: Vec<(u64, u64)> = Vec::new();
        for i in 0..batch {
            let len = (1 + rng.below(MAX_IO as u64 / align)) * align;
            let off = rng.below((SIZE - len) / align + 1) * align;
            if taken.iter().any(|&(a, b)| off < b && a < off + len) {
                continue;
            }
            taken.push((off, off + len));
            let mut buf = e.pool().take().expect("buffer");
            let len = len as usize;
            let op = if rng.below(2) == 0 {
                buf[..len].fill(0xee);
                Op { tag: (round * 100 + i) as u64, ..Op::read(0, off, buf, len) }
            } else {
                for (j, b) in buf[..len].iter_mut().enumerate() {
                    *b = (round as u8).wrapping_mul(31).wrapping_add(j as u8);
                }
                Op { tag: (round * 100 + i) as u64, ..Op::write(0, off, buf, len) }
            };
            q.push(op).expect("room");
        }
        q.wait(usize::MAX).expect("wait");
        while let Some(c) = q.pop() {
            assert_eq!(c.result, Ok(()), "{kind} {base} op {:?}", c.op);
            let (off, len) = (c.op.offset as usize, c.op.len);
            match c.op.kind {
                OpKind::Read => {
                    reads += 1;
                    assert!(
                        c.op.buf[..len] == model[off..off + len],
                        "{kind} {base}: read at {off}+{len} differs"
                    );
                }
                OpKind::Write => {
                    writes += 1;
                    model[off..off + len].copy_from_slice(&c.op.buf[..len]);
                }
            }
        }
        assert_eq!(q.outstanding(), 0);
    }
    q.flush_all().expect("flush all");
    drop(q);
    assert!(reads > 50 && writes > 50 && flushes > 5, "{reads} {writes} {flushes}");
    let on_disk = std::fs::read(&path).expect("read back");
    assert!(on_disk == model, "{kind} {base}: file differs from the model");
    let (hits, misses) = e.members()[0].dio_stats();
    assert_eq!(hits + misses, (reads + writes) as u64, "every op took a descriptor");
    if batch == 1 || kind == EngineKind::Sync {
        assert_eq!(misses, 0, "one op in flight never misses");
    }
}

fn refused_ops(kind: EngineKind, base: &str) {
    let s = Scratch::new(base, &format!("{kind}-refused"));
    let path = s.0.join("m.img");
    let model = make_file(&path, 9);
    let e = engine(kind, &path, Access::ReadWrite);
    let a = e.members()[0].alignment().offset as usize;
    let mut q = e.queue(4).expect("queue");
    let mut check = |op: Op, want: i32, what: &str| {
        let c = q.run(op).expect("room");
        assert_eq!(c.result, Err(want), "{kind} {base}: {what}");
    };
    let b = || e.pool().take().expect("buffer");
    check(Op::read(0, 1, b(), a), libc::EINVAL, "unaligned offset");
    check(Op::write(0, 0, b(), a + 1), libc::EINVAL, "unaligned length");
    check(Op::write(0, 0, b(), 0), libc::EINVAL, "empty");
    check(Op { start: 1, ..Op::read(0, 0, b(), a) }, libc::EINVAL, "unaligned buffer address");
    check(Op::read(0, 0, b(), MAX_IO + a), libc::EINVAL, "longer than the buffer");
    check(Op::read(0, SIZE, b(), a), libc::ENXIO, "read at the end");
    check(Op::read(0, SIZE - a as u64, b(), 2 * a), libc::ENXIO, "read across the end");
    check(Op::write(0, SIZE - a as u64, b(), 2 * a), libc::ENXIO, "write across the end");
    check(Op::read(0, u64::MAX - a as u64 + 1, b(), a), libc::ENXIO, "offset overflow");
    check(Op::read(7, 0, b(), a), libc::EINVAL, "no such member");
    // A buffer of another pool.
    let other = BufPool::new(PoolConfig { count: 1, size: 4096, huge_pages: false }).expect("pool");
    check(Op::read(0, 0, other.take().expect("buffer"), a), libc::EINVAL, "foreign buffer");
    assert_eq!(q.flush(5), Err(libc::EINVAL));
    drop(q);
    assert!(std::fs::read(&path).expect("read") == model, "a refused op changed the file");

    // Read-only member: writes EROFS, reads fine.
    let e = engine(kind, &path, Access::ReadOnly);
    let mut q = e.queue(1).expect("queue");
    let c = q.run(Op::write(0, 0, e.pool().take().expect("buffer"), a)).expect("room");
    assert_eq!(c.result, Err(libc::EROFS));
    let c = q.run(Op::read(0, 0, c.op.buf, a)).expect("room");
    assert_eq!(c.result, Ok(()));
    assert!(c.op.buf[..a] == model[..a]);
    // A full queue gives the op back.
    let b1 = e.pool().take().expect("buffer");
    q.push(Op::read(0, 0, b1, a)).expect("room");
    assert!(q.push(Op::read(0, 0, e.pool().take().expect("buffer"), a)).is_err());
    q.wait(1).expect("wait");
    assert!(q.pop().is_some_and(|c| c.result.is_ok()));
}

const DISK: &str = "/var/tmp";
const TMPFS: &str = "/dev/shm";

#[test]
fn sync_engine_on_disk_matches_model() {
    run_model(EngineKind::Sync, DISK, IoMode::Direct, 1);
    run_model(EngineKind::Sync, DISK, IoMode::Direct, 8);
}

#[test]
fn sync_engine_on_tmpfs_matches_model() {
    run_model(EngineKind::Sync, TMPFS, IoMode::Buffered, 4);
}

#[test]
fn uring_engine_on_disk_matches_model() {
    run_model(EngineKind::Uring, DISK, IoMode::Direct, 1);
    run_model(EngineKind::Uring, DISK, IoMode::Direct, 8);
}

#[test]
fn uring_engine_on_tmpfs_matches_model() {
    run_model(EngineKind::Uring, TMPFS, IoMode::Buffered, 4);
}

#[test]
fn refused_ops_change_nothing_both_engines() {
    for kind in [EngineKind::Sync, EngineKind::Uring] {
        refused_ops(kind, DISK);
        refused_ops(kind, TMPFS);
    }
}

#[test]
fn direct_policy() {
    let s = Scratch::new(TMPFS, "policy");
    let p = s.0.join("m.img");
    std::fs::write(&p, vec![0u8; 8192]).expect("write");
    let e = Member::open_with(&p, &MemberOptions { direct: Direct::Require, ..Default::default() })
        .expect_err("tmpfs does not do direct I/O");
    assert!(e.to_string().contains("direct I/O"), "{e}");
    let m = Member::open_with(&p, &MemberOptions::default()).expect("auto");
    assert_eq!(m.mode(), IoMode::Buffered);
    assert_eq!(m.alignment().offset, 512);
    let d = Scratch::new(DISK, "policy");
    let p = d.0.join("m.img");
    std::fs::write(&p, vec![0u8; 8192]).expect("write");
    let m = Member::open_with(&p, &MemberOptions { direct: Direct::Require, ..Default::default() })
        .expect("direct");
    assert_eq!(m.mode(), IoMode::Direct);
    assert!(m.alignment().offset >= 512 && m.alignment().offset.is_power_of_two());
    let m =
        Member::open_with(&p, &MemberOptions { direct: Direct::Never, ..Default::default() }).expect("never");
    assert_eq!(m.mode(), IoMode::Buffered);
}
