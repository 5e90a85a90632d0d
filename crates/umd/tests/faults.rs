//! `--faults` / `--member-faults` on umd's own member I/O: an injected read
//! error reaches the reader, faults outside what is read change nothing,
//! latency only delays, and a bad spec is refused before anything happens.

mod common;

use common::*;

#[test]
fn extract_with_injected_faults() {
    let s = Scratch::new("faults");
    let fx = unpack("raid1_2d", &s);
    let clean = s.path("clean.bin");
    let out = run(umd().arg("extract").arg("-o").arg(&clean).args(&fx.members));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = file_hash(&clean);

    // Reads of every member fail: the extract fails with one error line
    // and writes no complete output.
    let failed = s.path("failed.bin");
    let out = run(umd()
        .arg("extract")
        .arg("-o")
        .arg(&failed)
        .arg("--faults")
        .arg("read:fail@2048-")
        .args(&fx.members));
    assert!(!out.status.success(), "extract succeeded through failing reads");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("Input/output error") || err.contains("EIO"), "{err}");

    // A fault on sectors nobody reads, and latency: same bytes.
    let slow = s.path("slow.bin");
    let out = run(umd()
        .arg("extract")
        .arg("-o")
        .arg(&slow)
        .arg("--faults")
        .arg("seed=3,read:latency=10us")
        .arg("--member-faults")
        .arg(&fx.members[0])
        .arg("write:fail")
        .args(&fx.members));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(file_hash(&slow), want);

    // A failing superblock read names the member at assembly.
    let out = run(umd()
        .arg("extract")
        .arg("-o")
        .arg(s.path("x.bin"))
        .arg("--member-faults")
        .arg(&fx.members[1])
        .arg("read:fail@0-16")
        .args(&fx.members));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&*fx.members[1].to_string_lossy()), "{err}");

    // Bad specs: refused with a clear error, nothing done.
    for (args, needle) in [
        (vec!["--faults", "read:p=1.5"], "--faults"),
        (vec!["--faults", "bogus"], "--faults"),
        (vec!["--member-faults", "/nonexistent", "read:fail"], "not one of the members"),
    ] {
        let never = s.path("never.bin");
        let out = run(umd().arg("extract").arg("-o").arg(&never).args(&args).args(&fx.members));
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!never.exists(), "{args:?}: output written");
    }
    let help = run(umd().arg("help-faults"));
    assert!(String::from_utf8_lossy(&help.stdout).contains("trigger"));
}
