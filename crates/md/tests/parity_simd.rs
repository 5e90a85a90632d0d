//! Every parity implementation the CPU has (portable, AVX2, AVX-512) produces
//! exactly the portable P, Q and XOR results, for many lengths, block counts
//! and patterns of missing (zero) blocks; and the dispatching `gf` functions
//! agree with them and with the definition of Q.

use md::personality::gf;
use md::personality::simd::{gen_syndrome_with, xor_blocks_with, Impl};

/// Deterministic pseudo-random bytes (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 32) as u8).collect()
    }
}

const LENS: [usize; 11] = [1, 31, 32, 33, 63, 64, 65, 255, 4096, 4096 + 17, 65536];

/// Q by the definition, `Σ g^z·D_z`, byte by byte.
fn q_naive(data: &[Option<&[u8]>], len: usize) -> Vec<u8> {
    let mut q = vec![0u8; len];
    for (z, d) in data.iter().enumerate() {
        if let Some(d) = d {
            let g = gf::exp2(z);
            for (qv, dv) in q.iter_mut().zip(d.iter()) {
                *qv ^= gf::gfmul(g, *dv);
            }
        }
    }
    q
}

/// The `None` pattern number `pattern` for `n` slots.
fn holes(n: usize, pattern: usize, rng: &mut Rng) -> Vec<bool> {
    match pattern {
        0 => vec![false; n],                       // all present
        1 => (0..n).map(|z| z == n - 1).collect(), // top slot missing
        2 => (0..n).map(|z| z == 0).collect(),     // bottom slot missing
        3 => (0..n).map(|z| z >= n - 2).collect(), // two top slots missing (DDF-like)
        4 => (0..n).map(|_| rng.next().is_multiple_of(3)).collect(),
        _ => vec![true; n], // all missing
    }
}

#[test]
fn all_impls_match_portable() {
    let available: Vec<Impl> = Impl::ALL.into_iter().filter(|i| i.available()).collect();
    eprintln!("available: {available:?}, best {:?}", Impl::best());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &len in &LENS {
        for n in 2..=16usize {
            // The big lengths with fewer block counts, to keep the test quick.
            if len >= 65536 && n % 5 != 1 {
                continue;
            }
            let blocks: Vec<Vec<u8>> = (0..n).map(|_| rng.bytes(len)).collect();
            for pattern in 0..6 {
                let h = holes(n, pattern, &mut rng);
                let data: Vec<Option<&[u8]>> = blocks
                    .iter()
                    .zip(&h)
                    .map(|(b, &hole)| if hole { None } else { Some(b.as_slice()) })
                    .collect();
                let (mut p0, mut q0) = (rng.bytes(len), rng.bytes(len));
                gen_syndrome_with(Impl::Portable, &data, &mut p0, &mut q0)
                    .expect("portable is always available");
                if len <= 4096 + 17 {
                    assert_eq!(
                        q0,
                        q_naive(&data, len),
                        "portable Q vs definition, len {len} n {n} pattern {pattern}"
                    );
                }
                let srcs: Vec<&[u8]> = data.iter().flatten().copied().collect();
                let mut x0 = rng.bytes(len);
                xor_blocks_with(Impl::Portable, &mut x0, &srcs).unwrap();
                assert_eq!(x0, p0, "portable xor vs P");
                for &imp in &available {
                    let (mut p, mut q) = (rng.bytes(len), rng.bytes(len));
                    gen_syndrome_with(imp, &data, &mut p, &mut q).unwrap();
                    assert!(p == p0, "{imp:?} P differs: len {len} n {n} pattern {pattern}");
                    assert!(q == q0, "{imp:?} Q differs: len {len} n {n} pattern {pattern}");
                    let mut x = rng.bytes(len);
                    xor_blocks_with(imp, &mut x, &srcs).unwrap();
                    assert!(x == x0, "{imp:?} xor differs: len {len} n {n} pattern {pattern}");
                }
                // The dispatching entry points.
                let (mut p, mut q) = (rng.bytes(len), rng.bytes(len));
                gf::gen_syndrome(&data, &mut p, &mut q);
                assert!(p == p0 && q == q0, "gf::gen_syndrome differs: len {len} n {n} pattern {pattern}");
                let mut x = rng.bytes(len);
                gf::xor_blocks(&mut x, &srcs);
                assert!(x == x0, "gf::xor_blocks differs: len {len} n {n} pattern {pattern}");
            }
        }
    }
}

/// Unaligned buffers (offsets 1..63 into their allocations) give the same
/// results: the kernels use unaligned loads and stores.
#[test]
fn unaligned_buffers() {
    let mut rng = Rng(42);
    let len = 4096 + 17;
    for shift in [1usize, 7, 31, 33, 63] {
        let backing: Vec<Vec<u8>> = (0..6).map(|_| rng.bytes(len + 64)).collect();
        let data: Vec<Option<&[u8]>> = backing.iter().map(|b| Some(&b[shift..shift + len])).collect();
        let (mut p0, mut q0) = (vec![0u8; len], vec![0u8; len]);
        gen_syndrome_with(Impl::Portable, &data, &mut p0, &mut q0).unwrap();
        for imp in Impl::ALL {
            let (mut pb, mut qb) = (vec![0u8; len + 64], vec![0u8; len + 64]);
            let ps = (shift * 3) % 64;
            if gen_syndrome_with(imp, &data, &mut pb[ps..ps + len], &mut qb[shift..shift + len]).is_none() {
                continue;
            }
            assert!(pb[ps..ps + len] == p0[..], "{imp:?} P, shift {shift}");
            assert!(qb[shift..shift + len] == q0[..], "{imp:?} Q, shift {shift}");
        }
    }
}

/// Recovery (which runs its syndrome step through the dispatcher) still
/// round-trips with SIMD-generated parity.
#[test]
fn recovery_round_trip_with_dispatch() {
    let mut rng = Rng(7);
    for len in [64usize, 4096 + 17, 65536] {
        let n = 6;
        let blocks: Vec<Vec<u8>> = (0..n).map(|_| rng.bytes(len)).collect();
        let data: Vec<Option<&[u8]>> = blocks.iter().map(|b| Some(b.as_slice())).collect();
        let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
        gf::gen_syndrome(&data, &mut p, &mut q);
        for a in 0..n {
            let mut d = vec![0u8; len];
            gf::raid6_datap_recov(&data, a, &q, &mut d);
            assert!(d == blocks[a], "datap {a} len {len}");
            let b = (a + 2) % n;
            let (mut da, mut db) = (vec![0u8; len], vec![0u8; len]);
            gf::raid6_2data_recov(&data, a, b, &p, &q, &mut da, &mut db);
            assert!(da == blocks[a] && db == blocks[b], "2data {a},{b} len {len}");
        }
    }
}
