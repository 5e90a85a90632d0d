//! Bad input gets a one-line error naming the member and the reason, and
//! nothing is written to any member.

mod common;

use common::*;
use md::superblock::{self, Superblock};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Rewrites a member's superblock in place (the test's own tool, not umd's).
fn rewrite_sb(p: &Path, f: impl FnOnce(&mut Superblock)) {
    let m = blockio::Member::open(p, blockio::Access::ReadOnly).expect("open");
    let found = superblock::load(&m, None, true).expect("load");
    drop(m);
    let mut sb = found.sb;
    f(&mut sb);
    sb.update_checksum();
    let mut block = vec![0u8; 4096];
    sb.encode(&mut block);
    let file = std::fs::OpenOptions::new().write(true).open(p).expect("open rw");
    file.write_all_at(&block[..sb.sb_bytes().div_ceil(512) * 512], sb.super_offset * 512).expect("write");
}

struct Case {
    members: Vec<PathBuf>,
    hashes: Vec<(PathBuf, u64)>,
}

impl Case {
    fn new(members: Vec<PathBuf>, also: &[PathBuf]) -> Case {
        let mut all: Vec<PathBuf> = members.iter().chain(also).filter(|p| p.is_file()).cloned().collect();
        all.sort();
        all.dedup();
        let hashes = all.iter().map(|p| (p.clone(), file_hash(p))).collect();
        Case { members, hashes }
    }

    /// Runs extract and assemble --mount; both must fail with one line that
    /// names `culprit` (when given) and contains `reason`; no member changes.
    fn expect_error(&self, culprit: Option<&Path>, reason: &str, s: &Scratch) {
        let out = run(umd().arg("extract").arg("-o").arg(s.path("never.out")).args(&self.members));
        self.check_failed("extract", &out, culprit, reason);
        assert!(!s.path("never.out").exists(), "extract created its output despite the error");
        let dir = s.path("never-mnt");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let _g = MountGuard { dir: dir.clone(), pid: None };
        let out = run(umd().arg("assemble").arg("--readonly").arg("--mount").arg(&dir).args(&self.members));
        self.check_failed("assemble", &out, culprit, reason);
        assert!(!is_mounted(&dir), "mounted despite the error");
        self.check_unchanged();
    }

    fn check_failed(&self, what: &str, out: &std::process::Output, culprit: Option<&Path>, reason: &str) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} succeeded on bad input ({reason}): {err}");
        assert!(out.stdout.is_empty(), "{what} printed data on bad input");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: exactly one error line expected: {err}");
        let last = lines[0];
        assert!(last.starts_with("umd: "), "{what}: error line format: {err}");
        if let Some(c) = culprit {
            assert!(
                last.contains(&c.display().to_string()),
                "{what}: error must name {}: {err}",
                c.display()
            );
        }
        assert!(last.contains(reason), "{what}: error must say {reason:?}: {err}");
    }

    fn check_unchanged(&self) {
        for (p, h) in &self.hashes {
            assert_eq!(file_hash(p), *h, "{} was modified", p.display());
        }
    }
}

fn fixture_raid5(s: &Scratch) -> Fixture {
    unpack("raid5_ls_4d_64k", s)
}

#[test]
fn truncated_member() {
    let s = Scratch::new("bad-trunc");
    let fx = fixture_raid5(&s);
    let f = std::fs::OpenOptions::new().write(true).open(&fx.members[3]).expect("open");
    f.set_len(4 << 20).expect("truncate");
    drop(f);
    let c = Case::new(fx.members.clone(), &[]);
    c.expect_error(Some(&fx.members[3]), "truncated", &s);
    // examine says so as well.
    let out = run(umd().arg("examine").arg(&fx.members[3]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
}

#[test]
fn zeroed_superblock() {
    let s = Scratch::new("bad-zero");
    let fx = fixture_raid5(&s);
    let f = std::fs::OpenOptions::new().write(true).open(&fx.members[1]).expect("open");
    f.write_all_at(&[0u8; 4096], 4096).expect("zero");
    drop(f);
    let c = Case::new(fx.members.clone(), &[]);
    c.expect_error(Some(&fx.members[1]), "no md superblock", &s);
    let out = run(umd().arg("examine").arg(&fx.members[1]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&fx.members[1].display().to_string()) && err.contains("no md superblock"), "{err}");
}

#[test]
fn one_flipped_bit_fails_the_checksum() {
    let s = Scratch::new("bad-flip");
    let fx = fixture_raid5(&s);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&fx.members[2]).expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 4096 + 200).expect("read");
    b[0] ^= 0x10; // a bit of `events`
    f.write_all_at(&b, 4096 + 200).expect("flip");
    drop(f);
    let c = Case::new(fx.members.clone(), &[]);
    c.expect_error(Some(&fx.members[2]), "checksum", &s);
    // examine shows it as mdadm does ("expected"), and fails.
    let out = run(umd().arg("examine").arg(&fx.members[2]));
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("- expected"), "{text}");
}

#[test]
fn members_of_two_different_arrays() {
    let s = Scratch::new("bad-two");
    let a = fixture_raid5(&s);
    let b = unpack("raid0_4d_64k", &s);
    let members =
        vec![a.members[0].clone(), a.members[1].clone(), a.members[2].clone(), b.members[3].clone()];
    let c = Case::new(members, &[]);
    c.expect_error(Some(&b.members[3]), "belongs to array", &s);
}

#[test]
fn duplicate_slot() {
    let s = Scratch::new("bad-dup");
    let fx = fixture_raid5(&s);
    // m3 now claims device number 1, i.e. slot 1, like m1.
    rewrite_sb(&fx.members[3], |sb| sb.dev_number = 1);
    let c = Case::new(fx.members.clone(), &[]);
    c.expect_error(Some(&fx.members[3]), "claims slot 1", &s);
}

#[test]
fn too_few_members() {
    let s = Scratch::new("bad-few");
    let fx = fixture_raid5(&s);
    let c = Case::new(fx.members[..2].to_vec(), &fx.members);
    c.expect_error(None, "too few members", &s);
    let r0 = unpack("raid0_4d_64k", &s);
    let c = Case::new(r0.members[..3].to_vec(), &r0.members);
    c.expect_error(None, "too few members", &s);
}

#[test]
fn directory_instead_of_a_file() {
    let s = Scratch::new("bad-dir");
    let fx = fixture_raid5(&s);
    let d = s.path("a-directory");
    std::fs::create_dir_all(&d).expect("mkdir");
    let mut members = fx.members[..3].to_vec();
    members.push(d.clone());
    let c = Case::new(members, &fx.members);
    c.expect_error(Some(&d), "is a directory", &s);
}

#[test]
fn member_given_twice() {
    let s = Scratch::new("bad-twice");
    let fx = fixture_raid5(&s);
    let members =
        vec![fx.members[0].clone(), fx.members[1].clone(), fx.members[2].clone(), fx.members[1].clone()];
    let c = Case::new(members, &fx.members);
    c.expect_error(Some(&fx.members[1]), "given twice", &s);
    // A byte-for-byte copy is the same member too (same device UUID).
    let copy = s.path("m1-copy.img");
    std::fs::copy(&fx.members[1], &copy).expect("copy");
    let members = vec![fx.members[0].clone(), fx.members[1].clone(), fx.members[2].clone(), copy.clone()];
    let c = Case::new(members, &fx.members);
    c.expect_error(Some(&copy), "given twice", &s);
}

#[test]
fn missing_file() {
    let s = Scratch::new("bad-missing");
    let fx = fixture_raid5(&s);
    let nope = s.path("does-not-exist.img");
    let mut members = fx.members[..3].to_vec();
    members.push(nope.clone());
    let c = Case::new(members, &fx.members);
    c.expect_error(Some(&nope), "No such file", &s);
}

#[test]
fn stale_member_is_left_out_and_said() {
    let s = Scratch::new("bad-stale");
    let fx = fixture_raid5(&s);
    // Every member but m2 moves two events ahead: m2 is stale.
    for k in [0, 1, 3] {
        rewrite_sb(&fx.members[k], |sb| sb.events += 2);
    }
    let c = Case::new(fx.members.clone(), &[]);
    let out = run(umd().arg("extract").args(&fx.members));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&fx.members[2].display().to_string()) && err.contains("stale"), "{err}");
    assert!(err.contains("DEGRADED"), "{err}");
    check_pattern(&fx.manifest, &out.stdout, "raid5 with a stale member left out");
    c.check_unchanged();
    // One event behind is within md's slack: still used, not degraded.
    let s2 = Scratch::new("bad-stale1");
    let fx = fixture_raid5(&s2);
    for k in [0, 1, 3] {
        rewrite_sb(&fx.members[k], |sb| sb.events += 1);
    }
    let out = run(umd().arg("extract").args(&fx.members));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("DEGRADED"), "{err}");
    // A stale member of raid0 leaves too few.
    let r0 = unpack("raid0_4d_64k", &s2);
    for k in [0, 1, 2] {
        rewrite_sb(&r0.members[k], |sb| sb.events += 5);
    }
    let c = Case::new(r0.members.clone(), &[]);
    c.expect_error(None, "too few members", &s2);
    let out = run(umd().arg("extract").args(&r0.members));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stale"), "the reason must include the stale member: {err}");
}

#[test]
fn unsupported_feature_is_refused_by_name() {
    let s = Scratch::new("bad-feature");
    let fx = fixture_raid5(&s);
    for k in 0..4 {
        rewrite_sb(&fx.members[k], |sb| sb.feature_map |= superblock::feature::RESHAPE_ACTIVE);
    }
    let c = Case::new(fx.members.clone(), &[]);
    c.expect_error(Some(&fx.members[0]), "active reshape", &s);
    let s2 = Scratch::new("bad-feature2");
    let fx = fixture_raid5(&s2);
    for k in 0..4 {
        rewrite_sb(&fx.members[k], |sb| sb.feature_map |= superblock::feature::JOURNAL);
    }
    let c = Case::new(fx.members.clone(), &[]);
    c.expect_error(Some(&fx.members[0]), "journal", &s2);
}

#[test]
fn output_onto_a_member_is_refused() {
    let s = Scratch::new("bad-output");
    let fx = fixture_raid5(&s);
    let c = Case::new(fx.members.clone(), &[]);
    let out = run(umd().arg("extract").arg("-o").arg(&fx.members[0]).args(&fx.members));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite a member"));
    c.check_unchanged();
}

#[test]
fn degraded_read_write_needs_force() {
    // Read-write with a member missing would leave it silently stale until
    // member failures are recorded in the superblocks: refused unless
    // --force, with nothing mounted and no member changed.
    let s = Scratch::new("bad-rw-degraded");
    let fx = fixture_raid5(&s);
    let present: Vec<PathBuf> = fx.members[..3].to_vec();
    let before: Vec<u64> = fx.members.iter().map(|m| file_hash(m)).collect();
    let dir = s.path("mnt");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _g = MountGuard { dir: dir.clone(), pid: None };
    let out = run(umd().arg("assemble").arg("--mount").arg(&dir).arg("--daemon").args(&present));
    assert!(!out.status.success(), "degraded read-write assembled without --force");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("degraded") && err.contains("--force") && err.contains("--readonly"),
        "stderr: {err}"
    );
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(!is_mounted(&dir));
    let after: Vec<u64> = fx.members.iter().map(|m| file_hash(m)).collect();
    assert_eq!(before, after, "a member changed");
}

#[test]
fn stop_without_a_mount_says_so() {
    let s = Scratch::new("bad-stop");
    let out = run(umd().arg("stop").arg(s.path("nothing")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no umd array is mounted here"));
}
