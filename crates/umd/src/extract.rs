//! `umd extract`: the assembled array's whole content to a file or stdout.
//!
//! Reader threads fill a fixed pool of buffers (allocated once, at start)
//! with consecutive pieces of the array; one writer puts them out in order.
//! A reader takes a free buffer *before* it claims the next piece, so the
//! lowest unwritten piece is always held by a reader that can finish it: the
//! pipeline cannot deadlock on the pool.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use md::{assemble, Array, AssembleOptions};

use crate::progress::Progress;
use crate::{CliError, CmdResult};

/// Runs `umd extract`.
pub fn run(
    members: &[PathBuf],
    output: &Path,
    force: bool,
    threads: usize,
    faults: crate::faults::Injectors,
) -> CmdResult {
    let asm = assemble(members, &AssembleOptions { force, faults })?;
    for n in &asm.notes {
        eprintln!("umd: {n}");
    }
    let array = asm.array;
    let to_stdout = output == Path::new("-");
    if !to_stdout {
        refuse_member_as_output(output, members)?;
    }
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(io::stdout().lock())
    } else {
        let meta = std::fs::metadata(output).ok();
        let is_regular = meta.as_ref().is_none_or(|m| m.is_file());
        let f = OpenOptions::new()
            .write(true)
            .create(is_regular)
            .truncate(is_regular)
            .open(output)
            .map_err(|e| CliError(format!("{}: {e}", output.display())))?;
        Box::new(f)
    };
    let start = Instant::now();
    let total = array.size();
    let label = format!("extract {}", array.sb.name());
    let written = copy_out(&array, &mut *sink, threads, &label)?;
    sink.flush().map_err(|e| CliError(format!("{}: {e}", output.display())))?;
    drop(sink);
    debug_assert_eq!(written, total);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "umd: extracted {} bytes ({:.2} MiB) of {} array {} ({}){} to {} in {:.2} s ({:.1} MiB/s)",
        written,
        written as f64 / (1 << 20) as f64,
        array.personality.geometry().level,
        array.sb.name(),
        md::superblock::format_uuid(&array.sb.set_uuid),
        if asm.degraded { ", degraded" } else { "" },
        if to_stdout { "stdout".to_string() } else { output.display().to_string() },
        secs,
        written as f64 / (1 << 20) as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Refuses an output that is one of the members (by device and inode, or
/// the same block device).
fn refuse_member_as_output(output: &Path, members: &[PathBuf]) -> Result<(), CliError> {
    let Ok(om) = std::fs::metadata(output) else { return Ok(()) };
    for m in members {
        if let Ok(mm) = std::fs::metadata(m) {
            let same_file = om.dev() == mm.dev() && om.ino() == mm.ino();
            let same_bdev = om.file_type().is_block_device()
                && mm.file_type().is_block_device()
                && om.rdev() == mm.rdev();
            if same_file || same_bdev {
                return Err(CliError(format!(
                    "{}: output is the member {}: refusing to overwrite a member",
                    output.display(),
                    m.display()
                )));
            }
        }
    }
    Ok(())
}

/// Copies the whole array to `sink` with `threads` readers; returns bytes
/// written.
pub fn copy_out(array: &Array, sink: &mut dyn Write, threads: usize, label: &str) -> Result<u64, CliError> {
    let total = array.size();
    // Pieces of a whole number of stripes, near 4 MiB.
    let hint = array.io_hint();
    let piece = (hint * (4u64 << 20).div_ceil(hint).max(1)).min(64 << 20) as usize;
    let pieces = total.div_ceil(piece as u64);
    let threads = threads.clamp(1, 16);
    let nbuf = threads * 2 + 1;
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..nbuf {
        free_tx.send(vec![0u8; piece]).map_err(|_| CliError("buffer pool".into()))?;
    }
    let free_rx = std::sync::Mutex::new(free_rx);
    let (full_tx, full_rx) = mpsc::sync_channel::<(u64, io::Result<Vec<u8>>)>(nbuf);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let mut progress = Progress::new(label, total);
    std::thread::scope(|s| -> Result<u64, CliError> {
        for _ in 0..threads {
            let full_tx = full_tx.clone();
            let (free_rx, next, stop) = (&free_rx, &next, &stop);
            s.spawn(move || loop {
                let buf = match free_rx.lock() {
                    Ok(rx) => match rx.recv() {
                        Ok(b) => b,
                        Err(_) => return,
                    },
                    Err(_) => return,
                };
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let idx = next.fetch_add(1, Ordering::Relaxed);
                if idx >= pieces {
                    return;
                }
                let mut buf = buf;
                let off = idx * piece as u64;
                let len = (total - off).min(piece as u64) as usize;
                let r = array.read_at(off, &mut buf[..len]).map(|_| buf);
                if full_tx.send((idx, r)).is_err() {
                    return;
                }
            });
        }
        drop(full_tx);
        let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut want = 0u64;
        let mut written = 0u64;
        let result = (|| -> Result<u64, CliError> {
            for (idx, r) in full_rx.iter() {
                let buf = r.map_err(|e| {
                    CliError(format!("read of the array at byte {} failed: {e}", idx * piece as u64))
                })?;
                pending.insert(idx, buf);
                while let Some(buf) = pending.remove(&want) {
                    let off = want * piece as u64;
                    let len = (total - off).min(piece as u64) as usize;
                    sink.write_all(&buf[..len]).map_err(|e| CliError(format!("write failed: {e}")))?;
                    written += len as u64;
                    want += 1;
                    progress.update(written);
                    // The pool outlives every reader: a send can only fail
                    // once all readers are gone, and then nothing waits.
                    let _ = free_tx.send(buf);
                }
                if want == pieces {
                    break;
                }
            }
            Ok(written)
        })();
        stop.store(true, Ordering::Relaxed);
        // Readers blocked on a full channel see it closed and exit.
        drop(full_rx);
        // Wake readers blocked on the pool so they see `stop` and exit.
        for _ in 0..threads {
            let _ = free_tx.send(Vec::new());
        }
        progress.finish();
        let written = result?;
        if written != total {
            return Err(CliError(format!("extract ended early: {written} of {total} bytes")));
        }
        Ok(written)
    })
}
