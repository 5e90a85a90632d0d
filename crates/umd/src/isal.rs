//! ISA-L's RAID parity functions (`pq_gen`, `xor_gen` from `raid.h`), loaded
//! at run time with `dlopen`, as the baseline of `umd bench array`.
//!
//! ## Responsibility boundary
//! Only finds libisal and calls its two multi-binary entry points (which
//! pick ISA-L's best kernel for the CPU themselves). The umd binary does not
//! link libisal: when the library is absent, [`Isal::load`] says so and the
//! bench fails rather than inventing a number.
//!
//! ## Synchronization model
//! The handle is never closed; the function pointers are plain `extern "C"`
//! functions, callable from any thread.

use std::ffi::{c_int, c_void, CStr};

/// `int pq_gen(int vects, int len, void **array)` and
/// `int xor_gen(int vects, int len, void **array)`.
type GenFn = unsafe extern "C" fn(c_int, c_int, *mut *mut c_void) -> c_int;

/// The loaded library's parity functions.
pub struct Isal {
    pq_gen: GenFn,
    xor_gen: GenFn,
}

/// Sonames tried, in order.
const SONAMES: [&CStr; 2] = [c"libisal.so.2", c"libisal.so"];

impl Isal {
    /// Loads libisal, or says it is missing.
    pub fn load() -> Result<Isal, String> {
        let handle = SONAMES
            .iter()
            // SAFETY: a NUL-terminated soname; loading libisal runs only its
            // (side-effect free) initialisers.
            .map(|n| unsafe { libc::dlopen(n.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) })
            .find(|h| !h.is_null())
            .ok_or_else(|| "libisal not found: run scripts/setup.sh".to_string())?;
        let sym = |name: &CStr| -> Result<GenFn, String> {
            // SAFETY: `handle` is a live dlopen handle, `name` NUL-terminated.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            if p.is_null() {
                return Err(format!("libisal lacks {}", name.to_string_lossy()));
            }
            // SAFETY: raid.h declares both symbols as
            // `int f(int vects, int len, void **array)`, which is `GenFn`.
            Ok(unsafe { std::mem::transmute::<*mut c_void, GenFn>(p) })
        };
        Ok(Isal { pq_gen: sym(c"pq_gen")?, xor_gen: sym(c"xor_gen")? })
    }

    /// `pq_gen` over `data` into `p` and `q` (ISA-L's array is
    /// `[data..., P, Q]`, Q = Σ g^i·data[i], the same as md's). All buffers
    /// must be `len` bytes, 32-byte aligned, `len` a multiple of 32.
    pub fn pq_gen(&self, data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> Result<(), String> {
        let len = p.len();
        check(data, len, &[p.as_ptr(), q.as_ptr()])?;
        let mut array: Vec<*mut c_void> = data.iter().map(|d| d.as_ptr() as *mut c_void).collect();
        array.push(p.as_mut_ptr().cast());
        array.push(q.as_mut_ptr().cast());
        // SAFETY: `array` holds data.len() readable buffers and two writable
        // ones, all `len` bytes and 32-byte aligned (checked); pq_gen writes
        // only the last two.
        let rc = unsafe { (self.pq_gen)(array.len() as c_int, len as c_int, array.as_mut_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("pq_gen failed ({rc})"))
        }
    }

    /// `xor_gen` over `data` into `dst` (array `[data..., dst]`). Same
    /// buffer rules as [`Isal::pq_gen`].
    pub fn xor_gen(&self, data: &[&[u8]], dst: &mut [u8]) -> Result<(), String> {
        let len = dst.len();
        check(data, len, &[dst.as_ptr()])?;
        let mut array: Vec<*mut c_void> = data.iter().map(|d| d.as_ptr() as *mut c_void).collect();
        array.push(dst.as_mut_ptr().cast());
        // SAFETY: as in `pq_gen`; xor_gen writes only the last buffer.
        let rc = unsafe { (self.xor_gen)(array.len() as c_int, len as c_int, array.as_mut_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("xor_gen failed ({rc})"))
        }
    }
}

/// The buffer rules ISA-L's AVX kernels rely on.
fn check(data: &[&[u8]], len: usize, outs: &[*const u8]) -> Result<(), String> {
    let ok = len.is_multiple_of(32)
        && len <= c_int::MAX as usize
        && data.len() >= 2
        && data.iter().all(|d| d.len() == len && d.as_ptr().align_offset(32) == 0)
        && outs.iter().all(|o| o.align_offset(32) == 0);
    if ok {
        Ok(())
    } else {
        Err("ISA-L needs >= 2 equal, 32-byte aligned buffers of a multiple of 32 bytes".into())
    }
}
