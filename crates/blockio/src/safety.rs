//! Safety in the I/O path, for daemon processes that serve an array (the
//! array may be the device memory reclaim is waiting on).
//!
//! [`protect_io_path`] locks the process's memory (`mlockall(MCL_CURRENT |
//! MCL_FUTURE)`, so no page of ours is swapped out and faulting it back in
//! never waits for I/O) and marks the process an I/O flusher
//! (`prctl(PR_SET_IO_FLUSHER)`, Linux 5.6: the kernel's own allocations on
//! our behalf then avoid recursing into I/O). Each may be refused without
//! privileges (`CAP_IPC_LOCK` or `RLIMIT_MEMLOCK`, `CAP_SYS_RESOURCE`);
//! the report says which took effect and why not, and nothing fails.

use std::fmt;

/// `PR_SET_IO_FLUSHER` from `<linux/prctl.h>`.
const PR_SET_IO_FLUSHER: libc::c_int = 57;
/// `PR_GET_IO_FLUSHER`.
const PR_GET_IO_FLUSHER: libc::c_int = 58;

/// What [`protect_io_path`] achieved: `Ok` or the errno that refused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protection {
    pub mlockall: Result<(), i32>,
    pub io_flusher: Result<(), i32>,
}

impl Protection {
    /// Both took effect.
    pub fn complete(&self) -> bool {
        self.mlockall.is_ok() && self.io_flusher.is_ok()
    }
}

fn word(r: &Result<(), i32>) -> String {
    match r {
        Ok(()) => "on".to_string(),
        Err(e) => format!("refused ({})", std::io::Error::from_raw_os_error(*e)),
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mlockall: {}, PR_SET_IO_FLUSHER: {}", word(&self.mlockall), word(&self.io_flusher))
    }
}

/// Lock memory and become an I/O flusher; report which took effect.
pub fn protect_io_path() -> Protection {
    // SAFETY: mlockall has no memory-safety preconditions.
    let mlockall = if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0 {
        Ok(())
    } else {
        Err(crate::engine::last_errno())
    };
    // SAFETY: prctl with integer arguments only.
    let io_flusher = if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(crate::engine::last_errno())
    };
    Protection { mlockall, io_flusher }
}

/// Whether this process is an I/O flusher now.
pub fn is_io_flusher() -> bool {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_what_took_effect() {
        let p = protect_io_path();
        // As root both work; without privileges each reports its errno.
        if let Err(e) = p.io_flusher {
            assert!(e == libc::EPERM || e == libc::EINVAL, "{p}");
        } else {
            assert!(is_io_flusher());
        }
        assert!(p.to_string().contains("mlockall"));
        // SAFETY: undo for the rest of the test binary.
        unsafe { libc::munlockall() };
    }
}
