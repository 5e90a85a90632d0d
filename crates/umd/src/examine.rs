//! `umd examine`: each member's superblock in `mdadm --examine`'s words.

use std::io::Write;
use std::path::PathBuf;

use blockio::{Access, Member};
use md::examine::{self, Entry};
use md::superblock;

use crate::{CliError, CmdResult};

/// Prints the examine report of every member; text as mdadm prints it, or
/// one JSON object per member per line. Members without a valid superblock
/// get an error line and make the exit status non-zero, but the others are
/// still shown.
pub fn run(members: &[PathBuf], json: bool) -> CmdResult {
    let host = examine::hostname();
    let mut failures = Vec::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for p in members {
        let found = Member::open(p, Access::ReadOnly)
            .map_err(|e| e.to_string())
            .and_then(|m| superblock::load(&m, None, false).map_err(|e| format!("{}: {e}", p.display())));
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                eprintln!("umd: {e}");
                failures.push(p.display().to_string());
                continue;
            }
        };
        let report = examine::report(&found, host.as_deref());
        if json {
            let mut obj = serde_json::Map::new();
            obj.insert("Device".into(), p.display().to_string().into());
            for e in &report.entries {
                if let Entry::Field { padded_key, value } = e {
                    obj.insert(padded_key.trim_start().to_string(), value.clone().into());
                }
            }
            let warnings: Vec<serde_json::Value> = report
                .entries
                .iter()
                .filter_map(|e| if let Entry::Line(l) = e { Some(l.clone().into()) } else { None })
                .collect();
            if !warnings.is_empty() {
                obj.insert("Warnings".into(), warnings.into());
            }
            writeln!(out, "{}", serde_json::Value::Object(obj))?;
        } else {
            writeln!(out, "{}:", p.display())?;
            write!(out, "{}", report.to_text())?;
        }
        if !found.checksum_ok {
            eprintln!(
                "umd: {}: superblock checksum mismatch (stored {:08x}, computed {:08x}): corrupt superblock",
                p.display(),
                found.sb.sb_csum,
                found.sb.compute_checksum()
            );
            failures.push(p.display().to_string());
        }
    }
    out.flush()?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError(format!("examine failed for {}", failures.join(", "))))
    }
}
