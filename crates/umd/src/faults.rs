//! `--faults` / `--member-faults`: fault injectors for members (testing;
//! the grammar is blockio's, see `umd help-faults`).

use std::path::PathBuf;
use std::sync::Arc;

use blockio::fault::Faults;

use crate::CliError;

/// Injectors for [`md::AssembleOptions::faults`].
pub type Injectors = Vec<(Option<PathBuf>, Arc<Faults>)>;

/// What `umd help-faults` prints.
pub const HELP: &str = "\
Fault injection (for testing): umd extract|assemble ... --faults SPEC applies to
every member, --member-faults MEMBER SPEC to one (repeatable; it wins over
--faults). Injected faults act on umd's own I/O to the members; nothing else
is changed. A failed read reaches the reader as EIO.

spec     := item (',' item)*
item     := seed=U64 | track | disarmed
          | [ops:]latency=DURATION
          | [ops:]trigger[@range][/errno]
ops      := read | write | rw | flush           (default rw)
trigger  := fail | p=FLOAT (0..=1) | after=N     (the first N pass, then all fail)
range    := A-B (512-byte sectors, B excluded) | A- | A
errno    := eio | enospc | erofs | enxio | enodev | enodata | etimedout
          | eagain | ebusy | einval | enomem | 1..4095
DURATION := N(ns|us|ms|s)

Examples:
  --faults 'read:fail@0-8'                  reads of the first 4 KiB fail (EIO)
  --faults 'seed=7,read:p=0.01,latency=2ms' 1% of reads fail, every op 2 ms late
  --member-faults m1.img 'read:after=100'   m1.img fails reads after 100
";

/// Parse the options into injectors; a clear error for a bad spec or a
/// member not among `members`.
pub fn parse(all: Option<&str>, per_member: &[String], members: &[PathBuf]) -> Result<Injectors, CliError> {
    let mut out = Injectors::new();
    for pair in per_member.chunks(2) {
        let [member, spec] = pair else {
            return Err(CliError("--member-faults takes MEMBER SPEC".into()));
        };
        let path = PathBuf::from(member);
        if !members.contains(&path) {
            return Err(CliError(format!("--member-faults {member}: not one of the members given")));
        }
        let f = Faults::parse(spec).map_err(|e| CliError(format!("--member-faults {member}: {e}")))?;
        out.push((Some(path), Arc::new(f)));
    }
    if let Some(spec) = all {
        let f = Faults::parse(spec).map_err(|e| CliError(format!("--faults: {e}")))?;
        out.push((None, Arc::new(f)));
    }
    Ok(out)
}
