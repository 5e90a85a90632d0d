//! Real Linux md arrays (shared/fixtures/md): umd must examine them as mdadm
//! does and read them back byte-exactly, through `extract` and through the
//! FUSE mount.

mod common;

use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Keys whose values depend on the host or the time zone of the recording.
const HOST_DEPENDENT: [&str; 2] = ["Creation Time", "Update Time"];

fn name_base(v: &str) -> &str {
    v.split("  (local to host").next().unwrap_or(v)
}

#[test]
fn examine_agrees_with_mdadm_and_recorded_output() {
    assert!(have_tool("mdadm"), "mdadm is required (scripts/setup.sh installs it)");
    let s = Scratch::new("examine");
    for name in fixture_names() {
        let fx = unpack(&name, &s);
        for (k, m) in fx.members.iter().enumerate() {
            let out = run(umd().arg("examine").arg(m));
            assert!(
                out.status.success(),
                "{name} m{k}: umd examine failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).expect("utf8");
            assert!(text.starts_with(&format!("{}:\n", m.display())), "{name} m{k}: header line");
            let ours = parse_examine(&text);

            // The real mdadm, on the same image, on this machine.
            let live = run(Command::new("mdadm").arg("--examine").arg(m));
            assert!(live.status.success(), "mdadm --examine {name} m{k} failed");
            let live_text = String::from_utf8_lossy(&live.stdout).into_owned();
            let theirs = parse_examine(&live_text);
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>(),
                "{name} m{k}: field set differs from mdadm's"
            );
            for (key, v) in &theirs {
                let o = &ours[key];
                if key == "Name" {
                    assert_eq!(name_base(o), name_base(v), "{name} m{k}: Name");
                } else {
                    assert_eq!(o, v, "{name} m{k}: field {key} differs from live mdadm");
                }
            }
            // Same text, line for line, apart from the device line and Name suffix.
            let strip = |t: &str| -> Vec<String> {
                t.lines().skip(1).map(|l| name_base(l).trim_end().to_string()).collect()
            };
            assert_eq!(strip(&text), strip(&live_text), "{name} m{k}: text layout differs from mdadm's");

            // The output recorded by the machine that made the array.
            let rec =
                std::fs::read_to_string(fx.dir.join(format!("examine_m{k}.txt"))).expect("recorded examine");
            let rec = parse_examine(&rec);
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                rec.keys().collect::<Vec<_>>(),
                "{name} m{k}: keys vs recorded"
            );
            for (key, v) in &rec {
                if HOST_DEPENDENT.contains(&key.as_str()) {
                    continue;
                }
                let o = &ours[key];
                if key == "Name" {
                    assert_eq!(name_base(o), name_base(v), "{name} m{k}: Name vs recorded");
                } else {
                    assert_eq!(o, v, "{name} m{k}: field {key} differs from recorded examine");
                }
            }

            // --json carries the same values.
            let out = run(umd().arg("examine").arg("--json").arg(m));
            assert!(out.status.success());
            let line = String::from_utf8(out.stdout).expect("utf8");
            assert_eq!(line.lines().count(), 1, "one JSON object per member");
            let obj: serde_json::Value = serde_json::from_str(&line).expect("json");
            assert_eq!(obj["Device"], m.display().to_string());
            for (key, v) in &ours {
                assert_eq!(obj[key.as_str()].as_str(), Some(v.as_str()), "{name} m{k}: json {key}");
            }
        }
    }
}

#[test]
fn examine_json_gives_one_object_per_member() {
    let s = Scratch::new("examine-json");
    let fx = unpack("raid5_ls_4d_64k", &s);
    let out = run(umd().arg("examine").arg("--json").args(&fx.members));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    let objs: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(objs.len(), 4);
    for (k, o) in objs.iter().enumerate() {
        assert_eq!(o["Device Role"], format!("Active device {k}"));
        assert_eq!(o["Raid Level"], "raid5");
        assert_eq!(o["Events"], "18");
    }
}

#[test]
fn extract_reads_every_fixture_byte_exactly() {
    let s = Scratch::new("extract");
    for name in fixture_names() {
        let fx = unpack(&name, &s);
        let out_file = s.path(&format!("{name}.out"));
        let out = run(umd().arg("extract").arg("-o").arg(&out_file).args(&fx.members));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{name}: extract failed: {err}");
        let data = std::fs::read(&out_file).expect("read output");
        assert_eq!(
            data.len() as u64,
            fx.manifest["array_size_bytes"].as_u64().expect("size"),
            "{name}: size"
        );
        check_pattern(&fx.manifest, &data, &name);
        assert!(err.contains("extracted"), "{name}: summary line missing: {err}");
        if let Some(failed) = fx.manifest["failed_member"].as_str() {
            let k: usize = failed.trim_start_matches('m').parse().expect("member index");
            let failed_path = fx.members[k].display().to_string();
            assert!(
                err.contains(&failed_path) && err.contains("faulty"),
                "{name}: must say {failed} is left out: {err}"
            );
            assert!(err.contains("DEGRADED"), "{name}: must say degraded loudly: {err}");
        }
        std::fs::remove_file(&out_file).expect("rm");
    }
}

#[test]
fn extract_to_stdout_and_member_order_does_not_matter() {
    let s = Scratch::new("extract-stdout");
    let fx = unpack("raid10_n2_4d_64k", &s);
    let mut reversed = fx.members.clone();
    reversed.reverse();
    let out = run(umd().arg("extract").arg("-o").arg("-").args(&reversed));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check_pattern(&fx.manifest, &out.stdout, "raid10 via stdout");
    // Default output is stdout as well.
    let out = run(umd().arg("extract").args(&fx.members));
    assert!(out.status.success());
    check_pattern(&fx.manifest, &out.stdout, "raid10 default stdout");
}

#[test]
fn extract_of_healthy_raid5_without_each_member_rebuilds_from_parity() {
    let s = Scratch::new("extract-degraded");
    let fx = unpack("raid5_ls_4d_64k", &s);
    for skip in 0..fx.members.len() {
        let some: Vec<_> =
            fx.members.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, p)| p.clone()).collect();
        let out = run(umd().arg("extract").args(&some));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "without m{skip}: {err}");
        assert!(err.contains("DEGRADED"), "without m{skip}: degraded must be said: {err}");
        check_pattern(&fx.manifest, &out.stdout, &format!("raid5 without m{skip}"));
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fuse_mount_serves_every_fixture_byte_exactly() {
    let s = Scratch::new("fuse");
    for name in fixture_names() {
        let fx = unpack(&name, &s);
        let dir = s.path(&format!("{name}-mnt"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let _guard = MountGuard { dir: dir.clone(), pid: None };
        let out = run(umd()
            .arg("assemble")
            .arg("--readonly")
            .arg("--mount")
            .arg(&dir)
            .arg("--daemon")
            .args(&fx.members));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: assemble failed: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.lines().count(), 1, "{name}: one ready line: {stdout}");
        assert!(is_mounted(&dir), "{name}: not mounted after the ready line");
        let data_path = dir.join("data");
        let meta = std::fs::metadata(&data_path).expect("stat data");
        assert_eq!(meta.len(), fx.manifest["array_size_bytes"].as_u64().expect("size"));
        let mut data = Vec::new();
        std::fs::File::open(&data_path).expect("open").read_to_end(&mut data).expect("read");
        check_pattern(&fx.manifest, &data, &format!("{name} via FUSE"));
        // Writes are refused with EROFS.
        let e = std::fs::OpenOptions::new().write(true).open(&data_path).expect_err("write open must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{name}: {e}");
        let out = run(umd().arg("stop").arg(&dir));
        assert!(out.status.success(), "{name}: stop failed: {}", String::from_utf8_lossy(&out.stderr));
        wait_until("unmount", Duration::from_secs(10), || !is_mounted(&dir));
    }
}

#[test]
fn foreground_mount_unmounts_on_sigterm_and_sigint() {
    let s = Scratch::new("fuse-fg");
    let fx = unpack("raid1_2d", &s);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = s.path(&format!("mnt-{sig}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut child = umd()
            .arg("assemble")
            .arg("--readonly")
            .arg("--mount")
            .arg(&dir)
            .args(&fx.members)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let _guard = MountGuard { dir: dir.clone(), pid: Some(child.id()) };
        let mut line = String::new();
        {
            use std::io::BufRead;
            let stdout = child.stdout.take().expect("stdout");
            std::io::BufReader::new(stdout).read_line(&mut line).expect("ready line");
        }
        assert!(line.contains("mounted"), "ready line: {line}");
        assert!(is_mounted(&dir));
        let mut head = vec![0u8; 8192];
        std::fs::File::open(dir.join("data")).expect("open").read_exact(&mut head).expect("read");
        let mut want = vec![0u8; 4096];
        pattern_block(1, 1, &mut want);
        assert_eq!(&head[4096..], &want[..]);
        // SAFETY: plain kill(2) of our child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let t = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "umd did not exit on signal {sig}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "exit status after signal {sig}: {status}");
        assert!(!is_mounted(&dir), "mount left behind after signal {sig}");
    }
}
