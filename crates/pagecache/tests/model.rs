//! Model tests: random writes, copies (same mapping, overlapping, both
//! directions, across mappings), truncates, reads and fsyncs against a
//! `Vec<u8>` per mapping, for the in-memory and the block-backed (temp
//! file) families, at several folio sizes with memory limits small enough
//! that folios are evicted and re-read all the time.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Rng, TempDir, Watchdog};
use pagecache::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Mem,
    Block,
}

struct Limits {
    span: u64,
    memory: u64,
    dirty: u64,
}

fn limits(fs: usize) -> Limits {
    let fs = fs as u64;
    match fs {
        4096 => Limits { span: 96 << 10, memory: 12 * fs, dirty: 4 * fs },
        65536 => Limits { span: 700 << 10, memory: 6 * fs, dirty: 2 * fs },
        _ => Limits { span: (3 << 20) + (300 << 10), memory: 3 * fs, dirty: fs },
    }
}

/// One mapping under test and its model.
struct Subject {
    m: Arc<AddressSpace>,
    model: Vec<u8>,
    file: Option<PathBuf>,
    cursor: WbErrCursor,
}

impl Subject {
    fn check_size(&self, what: &str) {
        assert_eq!(self.m.size(), self.model.len() as u64, "{what}: size differs from the model");
    }
}

fn model_write(model: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let end = pos as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[pos as usize..end].copy_from_slice(data);
}

/// A random length: mostly small or around a folio, sometimes large.
fn rand_len(rng: &mut Rng, fs: usize, span: u64) -> usize {
    match rng.below(10) {
        0..=3 => rng.range(1, 2 * PAGE_SIZE as u64) as usize,
        4..=7 => rng.range(1, 2 * fs as u64 + 100) as usize,
        _ => rng.range(1, span / 2) as usize,
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or(if a.len() != b.len() {
        Some(a.len().min(b.len()))
    } else {
        None
    })
}

fn run_model(family: Family, fs: usize, seed: u64, ops: usize) {
    let lim = limits(fs);
    let dir = TempDir::new("model");
    let cache = PageCache::new(CacheConfig { memory_limit: lim.memory, dirty_limit: lim.dirty, flushers: 1 });
    let mk = |name: &str| -> Subject {
        let (ops, file): (Arc<dyn AddressSpaceOps>, _) = match family {
            Family::Mem => (Arc::new(MemOps), None),
            Family::Block => {
                let (p, f) = dir.file(name);
                (Arc::new(BlockOps::new(Arc::new(FileBacking(f)))), Some(p))
            }
        };
        let m = cache.mapping(ops, fs).expect("mapping");
        let cursor = m.wb_err_cursor();
        Subject { m, model: Vec::new(), file, cursor }
    };
    let mut subj = [mk("a"), mk("b")];
    let mut rng = Rng::new(seed);
    let wd = Watchdog::new(&format!("model {family:?} fs={fs} seed={seed}"), Duration::from_secs(10));
    let progress = wd.progress();
    let ctx = |i: usize, what: &str| format!("{family:?} fs={fs} seed={seed} op#{i} {what}");

    for i in 0..ops {
        let which = rng.below(2) as usize;
        let kind = rng.below(100);
        if kind < 28 {
            // write_at
            let pos = rng.below(lim.span);
            let n = rand_len(&mut rng, fs, lim.span);
            let data = rng.bytes(n);
            let s = &mut subj[which];
            let what = ctx(i, &format!("write_at({pos}, {})", data.len()));
            assert_eq!(write_at(&s.m, pos, &data), Ok(data.len()), "{what}");
            model_write(&mut s.model, pos, &data);
            s.check_size(&what);
        } else if kind < 50 {
            // copy_range within one mapping, often overlapping, both ways.
            let s = &mut subj[which];
            let size = s.model.len() as u64;
            let src = if size == 0 || rng.chance(5) { rng.below(lim.span) } else { rng.below(size) };
            let len = rand_len(&mut rng, fs, lim.span);
            let dst = match rng.below(4) {
                // overlapping above / below, shifted by less than a folio
                0 => src + rng.range(1, fs as u64 - 1),
                1 => src.saturating_sub(rng.range(1, fs as u64 - 1)),
                // overlapping by some part of the length
                2 => {
                    let d = rng.range(1, len as u64);
                    if rng.chance(50) {
                        src + d
                    } else {
                        src.saturating_sub(d)
                    }
                }
                _ => rng.below(lim.span),
            };
            let what = ctx(i, &format!("copy_range(self, {src} -> {dst}, {len}) size {size}"));
            let expect = if src >= size { 0 } else { len.min((size - src) as usize) };
            assert_eq!(copy_range(&s.m, src, &s.m, dst, len), Ok(expect), "{what}");
            if expect > 0 {
                let piece = s.model[src as usize..src as usize + expect].to_vec();
                model_write(&mut s.model, dst, &piece);
            }
            s.check_size(&what);
        } else if kind < 60 {
            // copy_range across the two mappings.
            let [a, b] = &mut subj;
            let (s, d) = if which == 0 { (a, b) } else { (b, a) };
            let size = s.model.len() as u64;
            let src = if size == 0 { 0 } else { rng.below(size + 100) };
            let dst = rng.below(lim.span);
            let len = rand_len(&mut rng, fs, lim.span);
            let what = ctx(i, &format!("copy_range(other, {src} -> {dst}, {len}) size {size}"));
            let expect = if src >= size { 0 } else { len.min((size - src) as usize) };
            assert_eq!(copy_range(&s.m, src, &d.m, dst, len), Ok(expect), "{what}");
            if expect > 0 {
                let piece = s.model[src as usize..src as usize + expect].to_vec();
                model_write(&mut d.model, dst, &piece);
            }
            d.check_size(&what);
        } else if kind < 66 {
            // truncate, mostly down, sometimes up.
            let s = &mut subj[which];
            let size = s.model.len() as u64;
            let new = if rng.chance(25) || size == 0 {
                rng.below(lim.span)
            } else if rng.chance(30) {
                // on a folio boundary
                rng.below(size + 1) / fs as u64 * fs as u64
            } else {
                rng.below(size + 1)
            };
            let what = ctx(i, &format!("truncate({new}) size {size}"));
            assert_eq!(s.m.truncate(new), Ok(()), "{what}");
            s.model.resize(new as usize, 0);
            s.check_size(&what);
        } else if kind < 90 {
            // read, sometimes past the end.
            let s = &subj[which];
            let size = s.model.len() as u64;
            let pos = rng.below(size.max(1) + fs as u64);
            let len = rand_len(&mut rng, fs, lim.span);
            let mut buf = vec![0u8; len];
            let what = ctx(i, &format!("read({pos}, {len}) size {size}"));
            let expect = if pos >= size { 0 } else { len.min((size - pos) as usize) };
            assert_eq!(s.m.read(pos, &mut buf), Ok(expect), "{what}");
            let want = &s.model[pos.min(size) as usize..pos.min(size) as usize + expect];
            if let Some(d) = first_diff(&buf[..expect], want) {
                panic!("{what}: content differs from the model at byte {}", pos + d as u64);
            }
        } else {
            // fsync of a range or of everything; the file must then hold
            // the model in that range.
            let s = &mut subj[which];
            let size = s.model.len() as u64;
            let (start, end) = if rng.chance(40) {
                (0, u64::MAX)
            } else {
                let a = rng.below(lim.span);
                (a, a + rand_len(&mut rng, fs, lim.span) as u64)
            };
            let what = ctx(i, &format!("fsync({start}, {end}) size {size}"));
            assert_eq!(s.m.fsync(start, end, &mut s.cursor), Ok(()), "{what}");
            if let Some(p) = &s.file {
                let disk = std::fs::read(p).expect("read file");
                if end == u64::MAX {
                    if let Some(d) = first_diff(&disk, &s.model) {
                        panic!(
                            "{what}: file ({} bytes) differs from the model ({} bytes) at byte {d}",
                            disk.len(),
                            s.model.len()
                        );
                    }
                } else {
                    let (a, b) = (start.min(size) as usize, end.min(size) as usize);
                    if a < b {
                        // Past the file's end (a hole not yet written
                        // because only later folios are dirty) reads zero.
                        let mut disk = disk;
                        if disk.len() < b {
                            disk.resize(b, 0);
                        }
                        if let Some(d) = first_diff(&disk[a..b], &s.model[a..b]) {
                            panic!("{what}: file differs from the model at byte {}", a + d);
                        }
                    }
                }
            }
        }
        if family == Family::Block {
            let cached = cache.cached_bytes();
            assert!(
                cached <= lim.memory + fs as u64,
                "{}: {cached} bytes cached, limit {}",
                ctx(i, "after"),
                lim.memory
            );
            let nr = (subj[0].m.nr_folios() + subj[1].m.nr_folios()) as u64;
            assert_eq!(
                nr * fs as u64,
                cached,
                "{}: folio count disagrees with cached bytes",
                ctx(i, "after")
            );
        }
        assert!(
            cache.throttle().max_dirty() <= lim.dirty + fs as u64,
            "{}: dirty reached {}",
            ctx(i, "after"),
            cache.throttle().max_dirty()
        );
        progress.tick();
    }

    // Everything written back and read back whole, through the cache and
    // (block) from the files through a fresh cache.
    for s in &mut subj {
        assert_eq!(s.m.fsync(0, u64::MAX, &mut s.cursor), Ok(()));
        let all = common::read_all(&s.m);
        assert!(first_diff(&all, &s.model).is_none(), "{family:?} fs={fs} seed={seed}: final content");
        if let Some(p) = &s.file {
            let disk = std::fs::read(p).expect("read file");
            assert!(first_diff(&disk, &s.model).is_none(), "{family:?} fs={fs} seed={seed}: final file");
            let f = std::fs::OpenOptions::new().read(true).write(true).open(p).expect("open");
            let fresh =
                PageCache::new(CacheConfig { memory_limit: lim.memory, dirty_limit: lim.dirty, flushers: 0 });
            let m = fresh.mapping(Arc::new(BlockOps::new(Arc::new(FileBacking(f)))), fs).expect("mapping");
            assert_eq!(m.size(), s.model.len() as u64);
            assert!(first_diff(&common::read_all(&m), &s.model).is_none(), "re-read through a fresh cache");
        }
    }
    if family == Family::Block {
        assert_eq!(cache.throttle().dirty(), 0, "dirty bytes left after fsync of everything");
    }
}

/// Seeds every configuration runs; `PAGECACHE_MODEL_SEED=<n>` runs that
/// one instead (to reproduce a failure, whose message names its seed).
fn seeds(n: usize) -> Vec<u64> {
    match std::env::var("PAGECACHE_MODEL_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => [0x5eed_0001, 0xdead_beef, 42, 0x0123_4567_89ab_cdef][..n].to_vec(),
    }
}

#[test]
fn model_mem_4k() {
    for s in seeds(4) {
        run_model(Family::Mem, 4096, s, 3000);
    }
}

#[test]
fn model_mem_64k() {
    for s in seeds(4) {
        run_model(Family::Mem, 64 << 10, s, 1500);
    }
}

#[test]
fn model_mem_1m() {
    for s in seeds(2) {
        run_model(Family::Mem, 1 << 20, s, 500);
    }
}

#[test]
fn model_block_4k() {
    for s in seeds(4) {
        run_model(Family::Block, 4096, s, 3000);
    }
}

#[test]
fn model_block_64k() {
    for s in seeds(4) {
        run_model(Family::Block, 64 << 10, s, 1500);
    }
}

#[test]
fn model_block_1m() {
    for s in seeds(2) {
        run_model(Family::Block, 1 << 20, s, 500);
    }
}
