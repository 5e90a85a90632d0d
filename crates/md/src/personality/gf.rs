//! GF(2^8) arithmetic as Linux `lib/raid6` uses it, and the raid4/5/6
//! parity operations built on it.
//!
//! ## Responsibility boundary
//! The field is GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (`0x11d`) and
//! generator {02}, exactly as `lib/raid6/mktables.c` builds its tables. On top
//! of it this module computes the P (xor) and Q (Reed–Solomon) syndromes of a
//! stripe ([`gen_syndrome`], like `raid6_call.gen_syndrome`) and rebuilds
//! lost data blocks from them: one data block from P ([`xor_blocks`]), one
//! data block from Q ([`raid6_datap_recov`]) and two data blocks from P and Q
//! ([`raid6_2data_recov`]), following `lib/raid6/recov.c`. It knows nothing of
//! disks or layouts: callers pass data blocks in *syndrome slot* order, where
//! slot `z` carries the coefficient g^z in Q.
//!
//! ## Synchronization model
//! Pure functions over caller buffers; the tables are compile-time constants.
//!
//! ## Performance
//! [`gen_syndrome`], [`xor_blocks`] and the syndrome step of the recovery
//! functions run on the vector kernels of [`super::simd`] (AVX-512 or AVX2,
//! chosen at run time), which compute exactly what the portable loops here
//! compute. The portable buffer loops work byte-wise over zipped slices with
//! no data-dependent branches or table lookups, so the compiler turns them
//! into SIMD code too.
//! Multiplying by a constant uses the eight bit-planes of the input byte
//! (`x·c = ⊕_{i: bit i of x} c·2^i`), which vectorises where a per-byte table
//! lookup would not. Syndrome generation is blocked so P and Q stay in L1.

use super::simd;

/// The low byte of md's field polynomial `0x11d` (what is xored in when a
/// doubling carries out of bit 7).
const POLY_LOW: u8 = 0x1d;

/// Multiplies two field elements bit by bit (the definition, as in
/// `mktables.c`'s `gfmul`). Usable in constant expressions.
pub const fn gfmul(mut a: u8, mut b: u8) -> u8 {
    let mut v = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            v ^= a;
        }
        a = (a << 1) ^ if a & 0x80 != 0 { POLY_LOW } else { 0 };
        b >>= 1;
    }
    v
}

/// Builds `EXP`: `EXP[i] = g^i` for `i` in `0..255`, with `EXP[255] = 1` so
/// that any exponent can be reduced with `% 255` first.
const fn make_exp() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut v = 1u8;
    let mut i = 0;
    while i < 256 {
        t[i] = v;
        v = gfmul(v, 2);
        i += 1;
    }
    t
}

/// Builds `LOG`: `LOG[g^i] = i`; `LOG[0]` is meaningless (0).
const fn make_log() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut v = 1u8;
    let mut i = 0;
    while i < 255 {
        t[v as usize] = i as u8;
        v = gfmul(v, 2);
        i += 1;
    }
    t
}

/// Powers of the generator {02} (`raid6_gfexp`).
const EXP: [u8; 256] = make_exp();
/// Discrete logarithms to base {02} (`raid6_gflog`).
const LOG: [u8; 256] = make_log();

/// g^`e` for any exponent (reduced modulo 255, the group order).
pub fn exp2(e: usize) -> u8 {
    EXP[e % 255]
}

/// The multiplicative inverse of `a` (`raid6_gfinv`); `inv(0)` is 0, as in
/// the kernel's table.
pub fn inv(a: u8) -> u8 {
    if a == 0 {
        return 0;
    }
    EXP[(255 - LOG[a as usize] as usize) % 255]
}

/// Table-driven multiply: the same result as [`gfmul`], via logarithms.
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    EXP[(LOG[a as usize] as usize + LOG[b as usize] as usize) % 255]
}

/// Multiplies one element by {02} (`int.uc`'s `MASK`/`SHLBYTE` step),
/// branch-free so loops over it vectorise.
#[inline(always)]
fn mul2(x: u8) -> u8 {
    // 0xff when the top bit is set, else 0: an arithmetic shift of the sign.
    let carry = ((x as i8) >> 7) as u8;
    (x << 1) ^ (carry & POLY_LOW)
}

/// The eight products `c·2^i`, one per bit-plane of a multiplicand.
#[inline]
fn planes(c: u8) -> [u8; 8] {
    let mut t = [0u8; 8];
    let mut v = c;
    for slot in &mut t {
        *slot = v;
        v = mul2(v);
    }
    t
}

/// `x·c` where `t = planes(c)`: xor of the planes selected by `x`'s bits.
#[inline(always)]
fn mul_planes(x: u8, t: &[u8; 8]) -> u8 {
    let mut acc = 0u8;
    for (i, &p) in t.iter().enumerate() {
        acc ^= 0u8.wrapping_sub((x >> i) & 1) & p;
    }
    acc
}

/// `dst ^= src`, byte for byte. Panics in debug builds if the lengths differ;
/// in release only the common prefix is processed.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

/// `dst = src₀ ⊕ src₁ ⊕ …`: P of `srcs`, and equally the one block missing
/// from a stripe whose other blocks (data and P) are `srcs`. With no sources
/// `dst` is zeroed.
pub fn xor_blocks(dst: &mut [u8], srcs: &[&[u8]]) {
    simd::xor_blocks(dst, srcs);
}

/// [`xor_blocks`] in portable code (what the SIMD kernels must match).
pub(crate) fn xor_blocks_portable(dst: &mut [u8], srcs: &[&[u8]]) {
    match srcs.split_first() {
        None => dst.fill(0),
        Some((first, rest)) => {
            dst.copy_from_slice(first);
            for s in rest {
                xor_into(dst, s);
            }
        }
    }
}

/// `buf = buf · c` in place.
pub fn mul_in_place(buf: &mut [u8], c: u8) {
    let t = planes(c);
    for b in buf.iter_mut() {
        *b = mul_planes(*b, &t);
    }
}

/// Bytes per column block of the syndrome loops: P, Q and one data block
/// stay in L1 while every slot is folded in.
const BLOCK: usize = 4096;

/// Horner evaluation shared by the syndrome functions, over `slots` blocks
/// where `block(z)` is the block in slot `z` (`None`: a zero block): sets
/// `q = Σ g^z·block(z)` and, when `WITH_P`, `p = ⊕ block(z)`. When `!WITH_P`,
/// `p` is not touched. Dispatches to the fastest [`simd`] implementation.
fn syndrome<'a, const WITH_P: bool>(
    slots: usize,
    block: impl Fn(usize) -> Option<&'a [u8]>,
    p: &mut [u8],
    q: &mut [u8],
) {
    simd::syndrome::<WITH_P>(slots, block, p, q);
}

/// [`syndrome`] in portable code (what the SIMD kernels must match).
pub(crate) fn syndrome_portable<'a, const WITH_P: bool>(
    slots: usize,
    block: impl Fn(usize) -> Option<&'a [u8]>,
    p: &mut [u8],
    q: &mut [u8],
) {
    let len = q.len();
    debug_assert!(!WITH_P || p.len() == len);
    let mut start = 0;
    while start < len {
        let end = len.min(start + BLOCK);
        let qb = &mut q[start..end];
        qb.fill(0);
        if WITH_P {
            p[start..end].fill(0);
        }
        // Horner from the highest slot down: q = q·2 ⊕ d.
        for z in (0..slots).rev() {
            match block(z) {
                Some(d) => {
                    let d = &d[start..end];
                    for (qv, dv) in qb.iter_mut().zip(d) {
                        *qv = mul2(*qv) ^ *dv;
                    }
                    if WITH_P {
                        xor_into(&mut p[start..end], d);
                    }
                }
                None => {
                    for qv in qb.iter_mut() {
                        *qv = mul2(*qv);
                    }
                }
            }
        }
        start = end;
    }
}

/// Computes P (xor) and Q (`Σ g^z·data[z]`) of a stripe, like the kernel's
/// `gen_syndrome`. `data[z]` is the block in syndrome slot `z`; `None` stands
/// for a zero block (the kernel's `raid6_empty_zero_page`, which fills the
/// P/Q positions of DDF layouts, whose Q coefficients follow disk order).
/// Every present block, `p` and `q` must have the same length.
pub fn gen_syndrome(data: &[Option<&[u8]>], p: &mut [u8], q: &mut [u8]) {
    debug_assert!(data.iter().flatten().all(|d| d.len() == q.len()));
    syndrome::<true>(data.len(), |z| data[z], p, q);
}

/// Rebuilds the data block in syndrome slot `faila` from Q and the other data
/// blocks (the data half of `raid6_datap_recov`, for when P is lost too or
/// unwanted): `da = (q ⊕ Q(others)) · g^-faila`. `data[faila]` is ignored.
/// P, if wanted, can then be regenerated with [`gen_syndrome`].
pub fn raid6_datap_recov(data: &[Option<&[u8]>], faila: usize, q: &[u8], da: &mut [u8]) {
    debug_assert_eq!(q.len(), da.len());
    syndrome::<false>(data.len(), |z| if z == faila { None } else { data[z] }, &mut [], da);
    xor_into(da, q);
    mul_in_place(da, inv(exp2(faila)));
}

/// Rebuilds the two data blocks in syndrome slots `faila` and `failb`
/// (`faila != failb`) from P, Q and the other data blocks, as
/// `raid6_2data_recov` does. `data[faila]` and `data[failb]` are ignored.
pub fn raid6_2data_recov(
    data: &[Option<&[u8]>],
    faila: usize,
    failb: usize,
    p: &[u8],
    q: &[u8],
    da: &mut [u8],
    db: &mut [u8],
) {
    debug_assert_ne!(faila, failb);
    debug_assert!(da.len() == p.len() && db.len() == p.len() && q.len() == p.len());
    // da ← P of the survivors, db ← Q of the survivors; then the deltas.
    let survivor = |z: usize| {
        if z == faila || z == failb {
            None
        } else {
            data[z]
        }
    };
    syndrome::<true>(data.len(), survivor, da, db);
    xor_into(da, p); // Pxy = Da ⊕ Db
    xor_into(db, q); // Qxy = g^a·Da ⊕ g^b·Db
                     // Solving Da ⊕ Db = Pxy and g^a·Da ⊕ g^b·Db = Qxy as recov.c does:
                     // Db = Pxy·g^a/(g^a+g^b) ⊕ Qxy/(g^a+g^b), then Da = Db ⊕ Pxy.
    let (ga, gb) = (exp2(faila), exp2(failb));
    let denom = ga ^ gb;
    let pbmul = planes(mul(ga, inv(denom)));
    let qmul = planes(inv(denom));
    for (a, b) in da.iter_mut().zip(db.iter_mut()) {
        let pxy = *a;
        let d_b = mul_planes(pxy, &pbmul) ^ mul_planes(*b, &qmul);
        *b = d_b;
        *a = d_b ^ pxy;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Q computed from the definition, for cross-checking.
    fn q_naive(data: &[Option<&[u8]>], len: usize) -> Vec<u8> {
        let mut q = vec![0u8; len];
        for (z, d) in data.iter().enumerate() {
            if let Some(d) = d {
                let mut g = 1u8;
                for _ in 0..z {
                    g = gfmul(g, 2);
                }
                for (qv, dv) in q.iter_mut().zip(d.iter()) {
                    *qv ^= gfmul(g, *dv);
                }
            }
        }
        q
    }

    /// Deterministic pseudo-random bytes (xorshift); shared by the parity
    /// unit tests of this module and `simd`.
    pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn known_values() {
        assert_eq!(gfmul(2, 0x80), 0x1d);
        assert_eq!(gfmul(0x80, 2), 0x1d);
        assert_eq!(gfmul(1, 0x53), 0x53);
        assert_eq!(gfmul(0, 0x53), 0);
        assert_eq!(exp2(0), 1);
        assert_eq!(exp2(1), 2);
        assert_eq!(exp2(8), 0x1d);
        assert_eq!(exp2(255), 1);
        assert_eq!(mul2(0x80), 0x1d);
        assert_eq!(mul2(0x41), 0x82);
        // {02} generates the whole multiplicative group.
        let mut seen = [false; 256];
        for e in 0..255 {
            assert!(!seen[exp2(e) as usize]);
            seen[exp2(e) as usize] = true;
        }
        assert!(!seen[0]);
    }

    #[test]
    fn tables_match_definition() {
        for a in 0..=255u8 {
            let t = planes(a);
            for b in 0..=255u8 {
                let want = gfmul(a, b);
                assert_eq!(mul(a, b), want, "{a} * {b}");
                assert_eq!(mul_planes(b, &t), want, "{a} * {b} by planes");
            }
        }
    }

    #[test]
    fn inverse_property() {
        assert_eq!(inv(0), 0);
        for a in 1..=255u8 {
            assert_eq!(gfmul(a, inv(a)), 1, "inv({a})");
        }
    }

    #[test]
    fn syndrome_matches_definition() {
        let len = 3 * BLOCK + 77;
        let blocks: Vec<Vec<u8>> = (0..7).map(|i| noise(i + 1, len)).collect();
        let mut data: Vec<Option<&[u8]>> = blocks.iter().map(|b| Some(b.as_slice())).collect();
        data[2] = None;
        let (mut p, mut q) = (vec![0xaa; len], vec![0x55; len]);
        gen_syndrome(&data, &mut p, &mut q);
        assert_eq!(q, q_naive(&data, len));
        let srcs: Vec<&[u8]> = data.iter().flatten().copied().collect();
        let mut p2 = vec![0; len];
        xor_blocks(&mut p2, &srcs);
        assert_eq!(p, p2);
    }

    #[test]
    fn recovery_round_trip() {
        let len = BLOCK + 333;
        for disks in [1usize, 2, 3, 6, 20] {
            let blocks: Vec<Vec<u8>> = (0..disks).map(|i| noise(100 + i as u64, len)).collect();
            let data: Vec<Option<&[u8]>> = blocks.iter().map(|b| Some(b.as_slice())).collect();
            let (mut p, mut q) = (vec![0; len], vec![0; len]);
            gen_syndrome(&data, &mut p, &mut q);
            for a in 0..disks {
                // One data block from P.
                let others: Vec<&[u8]> = (0..disks)
                    .filter(|&i| i != a)
                    .map(|i| blocks[i].as_slice())
                    .chain(std::iter::once(p.as_slice()))
                    .collect();
                let mut d = vec![0; len];
                xor_blocks(&mut d, &others);
                assert_eq!(d, blocks[a]);
                // One data block from Q.
                let mut d = vec![0; len];
                raid6_datap_recov(&data, a, &q, &mut d);
                assert_eq!(d, blocks[a], "datap slot {a} of {disks}");
                // Two data blocks from P and Q.
                for b in 0..disks {
                    if a == b {
                        continue;
                    }
                    let (mut da, mut db) = (vec![0; len], vec![0; len]);
                    raid6_2data_recov(&data, a, b, &p, &q, &mut da, &mut db);
                    assert_eq!(da, blocks[a], "2data {a},{b} of {disks}");
                    assert_eq!(db, blocks[b], "2data {a},{b} of {disks}");
                }
            }
        }
    }
}
