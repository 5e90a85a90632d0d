//! `umd demo`: umd's main job on a built-in example.
//!
//! Builds a 4-member raid5 (left-symmetric, 512 KiB chunks, v1.2) of image
//! files in a scratch directory, filled with the fixtures' data pattern;
//! then examines a member, extracts the array and checks every byte, does the
//! same with one member missing (rebuilt from parity), and mounts it
//! read-only through FUSE and checks every byte read through the mount.
//! Everything it made is removed at the end unless `--keep`.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use md::synth::{self, Spec};
use md::{assemble, AssembleOptions, Level};

use crate::{CliError, CmdResult};

/// Compares everything written to it with the pattern (id 1).
struct Verifier {
    offset: u64,
    block: Vec<u8>,
    mismatch: Option<u64>,
}

impl Write for Verifier {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let b = self.offset / 4096;
            let in_blk = (self.offset % 4096) as usize;
            synth::pattern_block(b, 1, &mut self.block);
            let n = (4096 - in_blk).min(buf.len() - done);
            if self.mismatch.is_none() && buf[done..done + n] != self.block[in_blk..in_blk + n] {
                self.mismatch = Some(self.offset);
            }
            self.offset += n as u64;
            done += n;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Cleanup {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn verify_all(members: &[PathBuf], what: &str) -> Result<u64, CliError> {
    let asm = assemble(members, &AssembleOptions::default())?;
    for n in &asm.notes {
        println!("    note: {n}");
    }
    let mut v = Verifier { offset: 0, block: vec![0; 4096], mismatch: None };
    let n = crate::extract::copy_out(&asm.array, &mut v, 2, what)?;
    if let Some(off) = v.mismatch {
        return Err(CliError(format!("{what}: data mismatch at array byte {off}")));
    }
    Ok(n)
}

/// Runs the demo.
pub fn run(dir: Option<PathBuf>, keep: bool, member_mib: u64) -> CmdResult {
    if member_mib < 2 {
        return Err(CliError("--member-mib must be at least 2".into()));
    }
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("umd-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir).map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
    let _cleanup = Cleanup { dir: dir.clone(), keep };
    let members: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("m{i}.img"))).collect();

    println!("1. building a 4-member raid5 (left-symmetric, 512K chunks, metadata 1.2) of {member_mib} MiB image files in {}", dir.display());
    let mut spec = Spec::new(Level::Raid5, 4, member_mib << 20);
    spec.name = "umd:demo".into();
    spec.stamp_now();
    let size = synth::write_array(&spec, &members, &mut |off, buf| synth::pattern_fill(off, 1, buf))
        .map_err(|e| CliError(format!("building the demo array: {e}")))?;
    println!("   array size {size} bytes");

    println!("2. umd examine {}", members[0].display());
    let f = {
        let m = blockio::Member::open(&members[0], blockio::Access::ReadOnly)?;
        md::superblock::load(&m, None, true)
            .map_err(|e| CliError(format!("{}: {e}", members[0].display())))?
    };
    for line in md::examine::report(&f, None).to_text().lines() {
        println!("   {line}");
    }

    println!("3. extracting the whole array and checking every byte");
    let n = verify_all(&members, "extract")?;
    println!("   ok: {n} bytes match");

    println!("4. the same with member m2 missing (its data rebuilt from parity)");
    let degraded = [members[0].clone(), members[1].clone(), members[3].clone()];
    let n = verify_all(&degraded, "degraded extract")?;
    println!("   ok: {n} bytes match");

    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| CliError(format!("{}: {e}", mnt.display())))?;
    println!(
        "5. umd assemble --readonly --mount {} (in-process) and reading {}/data",
        mnt.display(),
        mnt.display()
    );
    let asm = assemble(&members, &AssembleOptions::default())?;
    // md's attribute tree beside the data: DIR/md/.
    let tree = kernfs::Kernfs::new();
    let sysfs = md::sysfs::publish(&tree, &tree.root(), &asm.array, true).map_err(|e| {
        CliError(format!("publishing md attributes: {}", std::io::Error::from_raw_os_error(e)))
    })?;
    let mount = export::mount(
        &mnt,
        Arc::new(crate::mount::ArrayAdapter { array: asm.array, state: None }),
        export::MountOptions {
            threads: 2,
            fsname: "umd:demo".into(),
            tree: Some(tree.clone()),
            ..Default::default()
        },
    )
    .map_err(|e| CliError(format!("{}: mount failed: {e}", mnt.display())))?;
    let check = (|| -> Result<u64, CliError> {
        let mut f = std::fs::File::open(mnt.join("data"))?;
        let mut v = Verifier { offset: 0, block: vec![0; 4096], mismatch: None };
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            v.write_all(&buf[..n])?;
        }
        if let Some(off) = v.mismatch {
            return Err(CliError(format!("FUSE read: data mismatch at byte {off}")));
        }
        if v.offset != size {
            return Err(CliError(format!("FUSE read: {} bytes, expected {size}", v.offset)));
        }
        let state = std::fs::read_to_string(mnt.join("md/array_state"))?;
        println!("   {}/md/array_state: {}", mnt.display(), state.trim_end());
        println!("   umd detail {}:", mnt.display());
        crate::detail::run(&mnt, false)?;
        Ok(v.offset)
    })();
    mount.unmounter().unmount();
    mount.wait().map_err(|e| CliError(format!("unmount: {e}")))?;
    drop(sysfs);
    let n = check?;
    println!("   ok: {n} bytes read through FUSE match; unmounted");
    if keep {
        println!("done; images kept in {}", dir.display());
    } else {
        println!("done; scratch directory removed");
    }
    Ok(())
}
