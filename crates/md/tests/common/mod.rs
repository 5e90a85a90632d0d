//! The real md fixtures (`shared/fixtures/md`, beside the repository) for
//! the personality tests: unpacking, member images as [`MemberRead`], and a
//! whole-array check against the fixtures' data pattern.
#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use md::personality::{MemberRead, Personality};
use md::synth::pattern_block;

/// Every fixture member's data_offset: 2048 sectors.
pub const DATA_OFFSET: u64 = 2048 * 512;

/// `shared/fixtures/md`, beside the repository. Missing fixtures fail the
/// test: they are part of the suite.
pub fn fixtures_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/md");
    assert!(p.is_dir(), "fixtures not found at {} (shared/ must sit beside the repository)", p.display());
    p
}

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the synthetic array `spec` on fresh images in a unique temp
/// directory (`prefix`, `tag`, the process ID), filled with the fixtures'
/// pattern (id 1); returns the directory, the member paths and the
/// array's content.
pub fn build_synth(prefix: &str, tag: &str, spec: &md::synth::Spec) -> (Scratch, Vec<PathBuf>, Vec<u8>) {
    let dir = Scratch(std::env::temp_dir().join(format!("{prefix}-{}-{tag}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("create temp dir");
    let paths: Vec<PathBuf> = (0..spec.member_bytes.len()).map(|i| dir.0.join(format!("m{i}.img"))).collect();
    let fill = &mut |off, buf: &mut [u8]| md::synth::pattern_fill(off, 1, buf);
    let size = md::synth::write_array(spec, &paths, fill).expect("write synthetic array");
    let mut model = vec![0u8; size as usize];
    md::synth::pattern_fill(0, 1, &mut model);
    (dir, paths, model)
}

/// Member image files, reached past their data offset.
pub struct Images {
    pub files: Vec<File>,
    pub present: Vec<bool>,
}

impl MemberRead for Images {
    fn is_present(&self, slot: usize) -> bool {
        self.present[slot]
    }

    fn read_at(&self, slot: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        assert!(self.present[slot], "read of absent member {slot}");
        self.files[slot].read_exact_at(buf, DATA_OFFSET + offset)
    }
}

/// Unpacks fixture `name`'s `members` images with `xz` into a unique temp
/// directory.
pub fn unpack_fixture(name: &str, members: usize) -> (Scratch, Images) {
    let src = fixtures_dir().join(name);
    let dir = Scratch(std::env::temp_dir().join(format!("umd-md-fixture-{}-{name}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("create temp dir");
    let mut files = Vec::with_capacity(members);
    for m in 0..members {
        let out = dir.0.join(format!("m{m}.img"));
        let status = Command::new("xz")
            .arg("-dc")
            .arg(src.join(format!("m{m}.img.xz")))
            .stdout(File::create(&out).expect("create image"))
            .status()
            .expect("run xz");
        assert!(status.success(), "xz -dc {name}/m{m}.img.xz failed");
        files.push(File::open(&out).expect("open image"));
    }
    (dir, Images { files, present: vec![true; members] })
}

/// The fixtures' logical block `b` with pattern `id`.
pub fn block(b: u64, id: u64) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    pattern_block(b, id, &mut v);
    v
}

/// Reads the whole array in `io_hint` pieces and checks every 4 KiB block
/// (`id_of(b)` gives block `b`'s pattern id), then a few unaligned reads
/// across chunk boundaries against aligned ones.
pub fn check_fixture(
    p: &dyn Personality,
    m: &Images,
    array_bytes: u64,
    id_of: impl Fn(u64) -> u64,
    what: &str,
) {
    assert_eq!(p.array_bytes(), array_bytes, "{what}: array size");
    let hint = p.io_hint() as usize;
    let mut buf = vec![0u8; hint];
    let mut off = 0u64;
    while off < array_bytes {
        let len = hint.min((array_bytes - off) as usize);
        p.read(m, off, &mut buf[..len]).unwrap_or_else(|e| panic!("{what}: read at {off}: {e}"));
        for (i, blk) in buf[..len].chunks(4096).enumerate() {
            let b = off / 4096 + i as u64;
            assert!(blk == block(b, id_of(b)), "{what}: block {b} differs");
        }
        off += len as u64;
    }
    for start in [65536 - 10, 5 * 65536 - 3000, array_bytes - 70000] {
        let mut small = vec![0u8; 9000];
        p.read(m, start, &mut small).unwrap_or_else(|e| panic!("{what}: read at {start}: {e}"));
        let b0 = start / 4096;
        let mut whole = vec![0u8; 4 * 4096];
        p.read(m, b0 * 4096, &mut whole).unwrap_or_else(|e| panic!("{what}: read at {}: {e}", b0 * 4096));
        let skip = (start - b0 * 4096) as usize;
        assert_eq!(&small[..], &whole[skip..skip + 9000], "{what}: unaligned at {start}");
    }
}
