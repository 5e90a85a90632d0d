//! Shared helpers for umd's integration tests: scratch directories that
//! clean up after themselves, the real md fixtures, running the binary,
//! and the fixtures' data pattern.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use md::synth::{pattern_block, pattern_fill, Spec};

pub mod served;

/// A unique scratch directory, removed on drop (also when a test panics).
pub struct Scratch(pub PathBuf);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("umd-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        served::forget_run_files(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn fixtures_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = here.join("../../../shared/fixtures/md");
    assert!(p.is_dir(), "fixtures not found at {}", p.display());
    p
}

pub fn fixture_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("read fixtures")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub struct Fixture {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: serde_json::Value,
    pub members: Vec<PathBuf>,
}

/// Decompresses fixture `name`'s member images into `scratch`.
pub fn unpack(name: &str, scratch: &Scratch) -> Fixture {
    let dir = fixtures_dir().join(name);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    let n = manifest["members"].as_array().expect("members").len();
    let mut members = Vec::new();
    for k in 0..n {
        let out = scratch.path(&format!("{name}-m{k}.img"));
        let f = std::fs::File::create(&out).expect("create image");
        let st = Command::new("xz")
            .arg("-dc")
            .arg(dir.join(format!("m{k}.img.xz")))
            .stdout(f)
            .status()
            .expect("run xz (apt-get install xz-utils)");
        assert!(st.success(), "xz failed for {name} m{k}");
        members.push(out);
    }
    Fixture { name: name.to_string(), dir, manifest, members }
}

/// The pattern id of logical block `b` per the manifest's overrides.
pub fn pattern_id(manifest: &serde_json::Value, b: u64) -> u64 {
    let mut id = manifest["pattern"]["id"].as_u64().unwrap_or(1);
    if let Some(ov) = manifest["pattern"]["overrides"].as_array() {
        for o in ov {
            let first = o["first_block"].as_u64().unwrap_or(0);
            let n = o["blocks"].as_u64().unwrap_or(0);
            if b >= first && b < first + n {
                id = o["id"].as_u64().unwrap_or(id);
            }
        }
    }
    id
}

/// Checks `data` (the whole array) against the fixture pattern.
pub fn check_pattern(manifest: &serde_json::Value, data: &[u8], what: &str) {
    let mut want = vec![0u8; 4096];
    assert_eq!(data.len() % 4096, 0, "{what}: size not a multiple of 4096");
    for (b, blk) in data.chunks(4096).enumerate() {
        pattern_block(b as u64, pattern_id(manifest, b as u64), &mut want);
        if blk != &want[..] {
            panic!("{what}: logical block {b} differs from the pattern");
        }
    }
}

pub fn umd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_umd"))
}

/// Runs `cmd` to completion with its output captured in files (not pipes,
/// so a daemon that keeps a descriptor cannot hang the test), and fails the
/// test if it takes longer than two minutes.
pub fn run(cmd: &mut Command) -> Output {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("umd-test-out-{}-{n}", std::process::id()));
    let (out_p, err_p) = (base.with_extension("out"), base.with_extension("err"));
    let out_f = std::fs::File::create(&out_p).expect("stdout file");
    let err_f = std::fs::File::create(&err_p).expect("stderr file");
    let mut child =
        cmd.stdin(std::process::Stdio::null()).stdout(out_f).stderr(err_f).spawn().expect("spawn");
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if t.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command timed out: {cmd:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let stdout = std::fs::read(&out_p).unwrap_or_default();
    let stderr = std::fs::read(&err_p).unwrap_or_default();
    let _ = std::fs::remove_file(&out_p);
    let _ = std::fs::remove_file(&err_p);
    Output { status, stdout, stderr }
}

/// Parses `key : value` lines of an mdadm-style report.
pub fn parse_examine(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(" : ") {
            m.insert(k.trim().to_string(), v.trim_end().to_string());
        }
    }
    m
}

/// A content hash of a file (for "nothing was written" checks).
pub fn file_hash(p: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let data = std::fs::read(p).expect("read for hash");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

pub fn have_tool(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Unmounts `dir` (lazily) if it is mounted, and kills `pid` if alive:
/// the cleanup a failing FUSE test must still do.
pub struct MountGuard {
    pub dir: PathBuf,
    pub pid: Option<u32>,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // SAFETY: plain kill(2) on a PID this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Ok(c) = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()) {
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
            if mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*self.dir.to_string_lossy())) {
                // SAFETY: `c` is a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

pub fn is_mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*dir.to_string_lossy()))
}

/// `count` random pwrites (1 byte up to `max_len`, at any offset) of
/// generated bytes to `f`, each applied to `model` (the file's expected
/// content, as long as the file).
pub fn random_writes(
    f: &std::fs::File,
    model: &mut [u8],
    rng: &mut md::synth::Rng,
    count: usize,
    max_len: u64,
) {
    use std::os::unix::fs::FileExt;
    let size = model.len() as u64;
    for _ in 0..count {
        let len = 1 + rng.below(max_len.min(size)) as usize;
        let off = rng.below(size - len as u64 + 1);
        let buf = rng.bytes(len);
        f.write_all_at(&buf, off).expect("pwrite");
        model[off as usize..off as usize + len].copy_from_slice(&buf);
    }
}
