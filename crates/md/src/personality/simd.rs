//! SIMD kernels for parity generation (raid4/5 XOR, raid6 P+Q), selected at
//! run time, byte-identical to the portable code in [`super::gf`].
//!
//! ## Responsibility boundary
//! This module computes exactly what [`gf::gen_syndrome`](super::gf::gen_syndrome)
//! and [`gf::xor_blocks`](super::gf::xor_blocks) define — P = ⊕ D_z and
//! Q = Σ g^z·D_z over GF(2^8) with md's polynomial `0x11d` and generator
//! {02}, `None` slots standing for zero blocks — only faster. It offers one
//! implementation per instruction set ([`Impl`]): AVX-512 (AVX512F +
//! AVX512BW, 64-byte `zmm` registers and mask compares), AVX2 (32-byte `ymm`
//! registers, `vpcmpgtb`/`vpaddb`/`vpand 0x1d` for the doubling) and the
//! portable byte loops of `gf`. [`Impl::best`] picks the fastest one the CPU
//! has, once (`is_x86_feature_detected!`, cached). Every implementation is
//! reachable by name ([`gen_syndrome_with`], [`xor_blocks_with`]) so tests
//! can check that each matches the portable result.
//!
//! ## Synchronization model
//! Pure functions over caller buffers; the detected [`Impl`] is cached in a
//! process-wide atomic (written at most once per value, races benign).
//!
//! ## Performance
//! Like `lib/raid6/avx2.c` and `avx512.c`: for each column of four vectors
//! (128 bytes with AVX2, 256 with AVX-512) P and Q stay in registers while
//! every slot, from the highest down, is folded in by Horner's rule
//! (`q = q·2 ⊕ d`, `p ^= d`), so each data byte is read once and each P/Q
//! byte written once. The bytes after the last whole vector are finished by
//! the portable code.

use std::sync::atomic::{AtomicU8, Ordering};

use super::gf;

/// One parity implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Impl {
    /// The byte loops of [`super::gf`]; always available.
    Portable,
    /// x86-64 AVX2, 32-byte vectors.
    Avx2,
    /// x86-64 AVX512F + AVX512BW, 64-byte vectors.
    Avx512,
}

impl Impl {
    /// Every implementation, fastest last.
    pub const ALL: [Impl; 3] = [Impl::Portable, Impl::Avx2, Impl::Avx512];

    /// Whether this CPU can run the implementation.
    pub fn available(self) -> bool {
        match self {
            Impl::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Impl::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Impl::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest implementation this CPU can run (detected once).
    pub fn best() -> Impl {
        static BEST: AtomicU8 = AtomicU8::new(0);
        let code = match BEST.load(Ordering::Relaxed) {
            0 => {
                let best = Impl::ALL.into_iter().rev().find(|i| i.available()).unwrap_or(Impl::Portable);
                let code = best as u8 + 1;
                BEST.store(code, Ordering::Relaxed);
                code
            }
            c => c,
        };
        Impl::ALL[(code - 1) as usize]
    }

    /// A short name, for benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Portable => "portable",
            Impl::Avx2 => "avx2",
            Impl::Avx512 => "avx512bw",
        }
    }
}

/// Most syndrome slots the vector kernels take (md allows at most 256
/// devices); wider stripes use the portable code.
const MAX_SLOTS: usize = 256;

/// [`gf::gen_syndrome`] with implementation `imp`; `None` (nothing written)
/// when this CPU cannot run it.
pub fn gen_syndrome_with(imp: Impl, data: &[Option<&[u8]>], p: &mut [u8], q: &mut [u8]) -> Option<()> {
    if !imp.available() {
        return None;
    }
    syndrome_impl::<true>(imp, data.len(), |z| data[z], p, q);
    Some(())
}

/// [`gf::xor_blocks`] with implementation `imp`; `None` (nothing written)
/// when this CPU cannot run it.
pub fn xor_blocks_with(imp: Impl, dst: &mut [u8], srcs: &[&[u8]]) -> Option<()> {
    if !imp.available() {
        return None;
    }
    xor_impl(imp, dst, srcs);
    Some(())
}

/// The dispatching syndrome used by `gf`: `q = Σ g^z·block(z)` over `slots`
/// slots and, when `WITH_P`, `p = ⊕ block(z)` (`p` untouched otherwise).
/// Every present block must be at least `q.len()` bytes long.
pub(crate) fn syndrome<'a, const WITH_P: bool>(
    slots: usize,
    block: impl Fn(usize) -> Option<&'a [u8]>,
    p: &mut [u8],
    q: &mut [u8],
) {
    syndrome_impl::<WITH_P>(Impl::best(), slots, block, p, q);
}

/// The dispatching `dst = ⊕ srcs` used by `gf`.
pub(crate) fn xor_blocks(dst: &mut [u8], srcs: &[&[u8]]) {
    xor_impl(Impl::best(), dst, srcs);
}

fn syndrome_impl<'a, const WITH_P: bool>(
    imp: Impl,
    slots: usize,
    block: impl Fn(usize) -> Option<&'a [u8]>,
    p: &mut [u8],
    q: &mut [u8],
) {
    let len = q.len();
    let width = match imp {
        Impl::Portable => 0,
        Impl::Avx2 => 32,
        Impl::Avx512 => 64,
    };
    if width == 0 || len < width || slots > MAX_SLOTS || (WITH_P && p.len() < len) {
        gf::syndrome_portable::<WITH_P>(slots, &block, p, q);
        return;
    }
    // The present blocks, cut to `len`; short ones go to the portable code,
    // which panics on them as it always has.
    let mut blocks: [Option<&[u8]>; MAX_SLOTS] = [None; MAX_SLOTS];
    for (z, slot) in blocks.iter_mut().enumerate().take(slots) {
        match block(z) {
            Some(d) if d.len() >= len => *slot = Some(&d[..len]),
            Some(_) => {
                gf::syndrome_portable::<WITH_P>(slots, &block, p, q);
                return;
            }
            None => {}
        }
    }
    let blocks = &blocks[..slots];
    let main = len - len % width;
    let p_main: &mut [u8] = if WITH_P { &mut p[..main] } else { &mut [] };
    let q_main = &mut q[..main];
    match imp {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `imp` was checked available (AVX2) by every caller; each
        // present block and `q_main` (and `p_main` when WITH_P) hold `main`
        // bytes, a multiple of 32.
        Impl::Avx2 => unsafe { x86::syndrome_avx2::<WITH_P>(blocks, p_main, q_main) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above with AVX512F+AVX512BW and 64-byte multiples.
        Impl::Avx512 => unsafe { x86::syndrome_avx512::<WITH_P>(blocks, p_main, q_main) },
        _ => unreachable!("no vector kernel for {imp:?}"),
    }
    if main < len {
        let p_tail: &mut [u8] = if WITH_P { &mut p[main..len] } else { &mut [] };
        gf::syndrome_portable::<WITH_P>(slots, |z| blocks[z].map(|d| &d[main..]), p_tail, &mut q[main..]);
    }
}

fn xor_impl(imp: Impl, dst: &mut [u8], srcs: &[&[u8]]) {
    let len = dst.len();
    let width = match imp {
        Impl::Portable => 0,
        Impl::Avx2 => 32,
        Impl::Avx512 => 64,
    };
    if width == 0 || len < width || srcs.is_empty() || srcs.iter().any(|s| s.len() != len) {
        gf::xor_blocks_portable(dst, srcs);
        return;
    }
    let main = len - len % width;
    match imp {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 checked available by every caller; `srcs` is non-empty
        // and every source and `dst` hold `len >= main` bytes, `main` a
        // multiple of 32.
        Impl::Avx2 => unsafe { x86::xor_avx2(&mut dst[..main], srcs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above with AVX512F+AVX512BW and 64-byte multiples.
        Impl::Avx512 => unsafe { x86::xor_avx512(&mut dst[..main], srcs) },
        _ => unreachable!("no vector kernel for {imp:?}"),
    }
    // The last partial vector, byte by byte.
    for (i, d) in dst.iter_mut().enumerate().skip(main) {
        *d = srcs.iter().fold(0, |acc, s| acc ^ s[i]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Vectors per unrolled column.
    const UNROLL: usize = 4;

    /// The highest present slot, if any.
    fn top(blocks: &[Option<&[u8]>]) -> Option<usize> {
        blocks.iter().rposition(|b| b.is_some())
    }

    /// AVX2 syndrome over whole 32-byte vectors.
    ///
    /// # Safety
    /// The CPU must support AVX2. `q.len()` is a multiple of 32, every
    /// present block holds at least `q.len()` bytes and, when `WITH_P`,
    /// `p.len() == q.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn syndrome_avx2<const WITH_P: bool>(
        blocks: &[Option<&[u8]>],
        p: &mut [u8],
        q: &mut [u8],
    ) {
        const W: usize = 32;
        let len = q.len();
        debug_assert!(len.is_multiple_of(W) && (!WITH_P || p.len() == len));
        let Some(top) = top(blocks) else {
            q.fill(0);
            if WITH_P {
                p.fill(0);
            }
            return;
        };
        let zero = _mm256_setzero_si256();
        let poly = _mm256_set1_epi8(0x1d);
        // q·2: shift each byte left, xor 0x1d where the top bit was set.
        let mul2 = |v: __m256i| {
            let carry = _mm256_cmpgt_epi8(zero, v);
            _mm256_xor_si256(_mm256_add_epi8(v, v), _mm256_and_si256(carry, poly))
        };
        let qp = q.as_mut_ptr();
        let pp = p.as_mut_ptr();
        let first = blocks[top].unwrap_or_default().as_ptr();
        let mut off = 0;
        while off + UNROLL * W <= len {
            // SAFETY: `off + UNROLL*W <= len` and every present block, `q`
            // and (WITH_P) `p` hold `len` bytes; unaligned loads/stores.
            unsafe {
                let mut qv = [zero; UNROLL];
                for (k, v) in qv.iter_mut().enumerate() {
                    *v = _mm256_loadu_si256(first.add(off + k * W).cast());
                }
                let mut pv = qv;
                for d in blocks[..top].iter().rev() {
                    match d {
                        Some(d) => {
                            let dp = d.as_ptr().add(off);
                            for k in 0..UNROLL {
                                let x = _mm256_loadu_si256(dp.add(k * W).cast());
                                qv[k] = _mm256_xor_si256(mul2(qv[k]), x);
                                if WITH_P {
                                    pv[k] = _mm256_xor_si256(pv[k], x);
                                }
                            }
                        }
                        None => {
                            for v in qv.iter_mut() {
                                *v = mul2(*v);
                            }
                        }
                    }
                }
                for k in 0..UNROLL {
                    _mm256_storeu_si256(qp.add(off + k * W).cast(), qv[k]);
                    if WITH_P {
                        _mm256_storeu_si256(pp.add(off + k * W).cast(), pv[k]);
                    }
                }
            }
            off += UNROLL * W;
        }
        while off < len {
            // SAFETY: `off + W <= len` (len is a multiple of W); as above.
            unsafe {
                let mut qv = _mm256_loadu_si256(first.add(off).cast());
                let mut pv = qv;
                for d in blocks[..top].iter().rev() {
                    match d {
                        Some(d) => {
                            let x = _mm256_loadu_si256(d.as_ptr().add(off).cast());
                            qv = _mm256_xor_si256(mul2(qv), x);
                            if WITH_P {
                                pv = _mm256_xor_si256(pv, x);
                            }
                        }
                        None => qv = mul2(qv),
                    }
                }
                _mm256_storeu_si256(qp.add(off).cast(), qv);
                if WITH_P {
                    _mm256_storeu_si256(pp.add(off).cast(), pv);
                }
            }
            off += W;
        }
    }

    /// AVX-512 syndrome over whole 64-byte vectors.
    ///
    /// # Safety
    /// The CPU must support AVX512F and AVX512BW. `q.len()` is a multiple of
    /// 64, every present block holds at least `q.len()` bytes and, when
    /// `WITH_P`, `p.len() == q.len()`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn syndrome_avx512<const WITH_P: bool>(
        blocks: &[Option<&[u8]>],
        p: &mut [u8],
        q: &mut [u8],
    ) {
        const W: usize = 64;
        let len = q.len();
        debug_assert!(len.is_multiple_of(W) && (!WITH_P || p.len() == len));
        let Some(top) = top(blocks) else {
            q.fill(0);
            if WITH_P {
                p.fill(0);
            }
            return;
        };
        let zero = _mm512_setzero_si512();
        let poly = _mm512_set1_epi8(0x1d);
        // q·2: shift each byte left, xor 0x1d where the top bit was set
        // (the sign bits as a mask register).
        let mul2 = |v: __m512i| {
            let carry = _mm512_movepi8_mask(v);
            _mm512_xor_si512(_mm512_add_epi8(v, v), _mm512_maskz_mov_epi8(carry, poly))
        };
        let qp = q.as_mut_ptr();
        let pp = p.as_mut_ptr();
        let first = blocks[top].unwrap_or_default().as_ptr();
        let mut off = 0;
        while off + UNROLL * W <= len {
            // SAFETY: `off + UNROLL*W <= len` and every present block, `q`
            // and (WITH_P) `p` hold `len` bytes; unaligned loads/stores.
            unsafe {
                let mut qv = [zero; UNROLL];
                for (k, v) in qv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(first.add(off + k * W).cast());
                }
                let mut pv = qv;
                for d in blocks[..top].iter().rev() {
                    match d {
                        Some(d) => {
                            let dp = d.as_ptr().add(off);
                            for k in 0..UNROLL {
                                let x = _mm512_loadu_si512(dp.add(k * W).cast());
                                qv[k] = _mm512_xor_si512(mul2(qv[k]), x);
                                if WITH_P {
                                    pv[k] = _mm512_xor_si512(pv[k], x);
                                }
                            }
                        }
                        None => {
                            for v in qv.iter_mut() {
                                *v = mul2(*v);
                            }
                        }
                    }
                }
                for k in 0..UNROLL {
                    _mm512_storeu_si512(qp.add(off + k * W).cast(), qv[k]);
                    if WITH_P {
                        _mm512_storeu_si512(pp.add(off + k * W).cast(), pv[k]);
                    }
                }
            }
            off += UNROLL * W;
        }
        while off < len {
            // SAFETY: `off + W <= len` (len is a multiple of W); as above.
            unsafe {
                let mut qv = _mm512_loadu_si512(first.add(off).cast());
                let mut pv = qv;
                for d in blocks[..top].iter().rev() {
                    match d {
                        Some(d) => {
                            let x = _mm512_loadu_si512(d.as_ptr().add(off).cast());
                            qv = _mm512_xor_si512(mul2(qv), x);
                            if WITH_P {
                                pv = _mm512_xor_si512(pv, x);
                            }
                        }
                        None => qv = mul2(qv),
                    }
                }
                _mm512_storeu_si512(qp.add(off).cast(), qv);
                if WITH_P {
                    _mm512_storeu_si512(pp.add(off).cast(), pv);
                }
            }
            off += W;
        }
    }

    /// AVX2 `dst = ⊕ srcs` over whole 32-byte vectors.
    ///
    /// # Safety
    /// The CPU must support AVX2. `srcs` is non-empty, `dst.len()` is a
    /// multiple of 32 and every source holds at least `dst.len()` bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn xor_avx2(dst: &mut [u8], srcs: &[&[u8]]) {
        const W: usize = 32;
        let len = dst.len();
        debug_assert!(len.is_multiple_of(W) && !srcs.is_empty());
        let (first, rest) = srcs.split_first().expect("xor_avx2 needs a source");
        let dp = dst.as_mut_ptr();
        let mut off = 0;
        while off + UNROLL * W <= len {
            // SAFETY: `off + UNROLL*W <= len` and every buffer holds `len` bytes.
            unsafe {
                let mut acc = [_mm256_setzero_si256(); UNROLL];
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_si256(first.as_ptr().add(off + k * W).cast());
                }
                for s in rest {
                    let sp = s.as_ptr().add(off);
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_xor_si256(*a, _mm256_loadu_si256(sp.add(k * W).cast()));
                    }
                }
                for (k, a) in acc.iter().enumerate() {
                    _mm256_storeu_si256(dp.add(off + k * W).cast(), *a);
                }
            }
            off += UNROLL * W;
        }
        while off < len {
            // SAFETY: `off + W <= len`; as above.
            unsafe {
                let mut a = _mm256_loadu_si256(first.as_ptr().add(off).cast());
                for s in rest {
                    a = _mm256_xor_si256(a, _mm256_loadu_si256(s.as_ptr().add(off).cast()));
                }
                _mm256_storeu_si256(dp.add(off).cast(), a);
            }
            off += W;
        }
    }

    /// AVX-512 `dst = ⊕ srcs` over whole 64-byte vectors.
    ///
    /// # Safety
    /// The CPU must support AVX512F and AVX512BW. `srcs` is non-empty,
    /// `dst.len()` is a multiple of 64 and every source holds at least
    /// `dst.len()` bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn xor_avx512(dst: &mut [u8], srcs: &[&[u8]]) {
        const W: usize = 64;
        let len = dst.len();
        debug_assert!(len.is_multiple_of(W) && !srcs.is_empty());
        let (first, rest) = srcs.split_first().expect("xor_avx512 needs a source");
        let dp = dst.as_mut_ptr();
        let mut off = 0;
        while off + UNROLL * W <= len {
            // SAFETY: `off + UNROLL*W <= len` and every buffer holds `len` bytes.
            unsafe {
                let mut acc = [_mm512_setzero_si512(); UNROLL];
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_loadu_si512(first.as_ptr().add(off + k * W).cast());
                }
                for s in rest {
                    let sp = s.as_ptr().add(off);
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_xor_si512(*a, _mm512_loadu_si512(sp.add(k * W).cast()));
                    }
                }
                for (k, a) in acc.iter().enumerate() {
                    _mm512_storeu_si512(dp.add(off + k * W).cast(), *a);
                }
            }
            off += UNROLL * W;
        }
        while off < len {
            // SAFETY: `off + W <= len`; as above.
            unsafe {
                let mut a = _mm512_loadu_si512(first.as_ptr().add(off).cast());
                for s in rest {
                    a = _mm512_xor_si512(a, _mm512_loadu_si512(s.as_ptr().add(off).cast()));
                }
                _mm512_storeu_si512(dp.add(off).cast(), a);
            }
            off += W;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::personality::gf::tests::noise;

    #[test]
    fn best_is_available_and_stable() {
        let b = Impl::best();
        assert!(b.available());
        assert_eq!(b, Impl::best());
        assert!(Impl::Portable.available());
    }

    #[test]
    fn every_impl_matches_portable() {
        for len in [0usize, 1, 31, 32, 33, 64, 200, 256, 4096 + 96 + 5] {
            for slots in [0usize, 1, 2, 5, 9] {
                let blocks: Vec<Vec<u8>> =
                    (0..slots).map(|i| noise(7 + i as u64 * 31 + len as u64, len)).collect();
                let mut data: Vec<Option<&[u8]>> = blocks.iter().map(|b| Some(b.as_slice())).collect();
                if slots > 2 {
                    data[1] = None;
                    data[slots - 1] = None;
                }
                let (mut p0, mut q0) = (vec![1u8; len], vec![2u8; len]);
                gf::syndrome_portable::<true>(slots, |z| data[z], &mut p0, &mut q0);
                let srcs: Vec<&[u8]> = data.iter().flatten().copied().collect();
                let mut x0 = vec![3u8; len];
                gf::xor_blocks_portable(&mut x0, &srcs);
                for imp in Impl::ALL {
                    let (mut p, mut q) = (vec![9u8; len], vec![8u8; len]);
                    if gen_syndrome_with(imp, &data, &mut p, &mut q).is_none() {
                        continue;
                    }
                    assert_eq!((&p, &q), (&p0, &q0), "{imp:?} len {len} slots {slots}");
                    let mut q1 = vec![4u8; len];
                    syndrome_impl::<false>(imp, slots, |z| data[z], &mut [], &mut q1);
                    assert_eq!(q1, q0, "{imp:?} q-only len {len} slots {slots}");
                    let mut x = vec![5u8; len];
                    xor_blocks_with(imp, &mut x, &srcs).unwrap();
                    assert_eq!(x, x0, "{imp:?} xor len {len} slots {slots}");
                }
            }
        }
    }
}
