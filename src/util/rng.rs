//! A small, seedable, reproducible random number generator (xoshiro256**, seeded by SplitMix64).
//! Written here rather than pulled in: a training run must give the same numbers on every machine
//! and version, so the generator is part of the project's contract.

use rayon::prelude::*;
use std::sync::OnceLock;

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n); n must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the bias for n ≪ 2⁶⁴ is negligible for our uses.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal by Box–Muller.
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `n` values from N(0, std²) as f32: what `normal() * std` gives n times over, and the
    /// generator left where those n draws leave it. Past a chunk they are drawn on every core
    /// (`normals_into`), the same values: a selftest case's GPT-2-sized inputs took most of its
    /// reference side's time drawn on one core.
    pub fn normal_vec(&mut self, n: usize, std: f64) -> Vec<f32> {
        if n <= DRAW_CHUNK {
            return (0..n).map(|_| (self.normal() * std) as f32).collect();
        }
        let mut values = vec![0.0; n];
        self.normals_into(std, &mut values);
        *self = self.jumped(2 * n as u128); // two steps a normal
        values
    }

    /// `dst` filled with what `normal() * std` would give, as f32, drawn one after the other
    /// from this generator, on every core: each chunk's generator jumps to its first draw (two
    /// steps a normal). The values do not depend on the number of threads.
    pub fn normals_into(&self, std: f64, dst: &mut [f32]) {
        dst.par_chunks_mut(DRAW_CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut rng = self.jumped(2 * (c * DRAW_CHUNK) as u128);
                chunk
                    .iter_mut()
                    .for_each(|x| *x = (rng.normal() * std) as f32);
            });
    }

    /// The generator `steps` calls of `next_u64` later, in a few hundred steps' time: the state
    /// transition T is linear over GF(2), so T^k = r(T) with r(x) = x^k mod p(x), p the
    /// characteristic polynomial of T (as xoshiro's own `jump`, for k = 2^128 alone).
    pub fn jumped(&self, steps: u128) -> Rng {
        let r = x_pow_mod(steps);
        let (mut t, mut acc) = (self.clone(), [0u64; 4]);
        for j in 0..256 {
            if r[j / 64] >> (j % 64) & 1 == 1 {
                acc.iter_mut().zip(&t.s).for_each(|(a, s)| *a ^= s);
            }
            t.next_u64();
        }
        Rng { s: acc }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

/// Values one thread draws at a time in `normals_into`: a jump costs about 40 µs and 2^16 normals
/// 1.7 ms (Zen 4), so 2 % more work buys 16 chunks, all of a 16-core machine, for a million values
/// (a selftest case's 1024 × 1024 operand).
const DRAW_CHUNK: usize = if cfg!(test) { 1000 } else { 1 << 16 };

/// A polynomial over GF(2) of degree below 256: bit j of word j / 64 is x^j's coefficient.
type Poly = [u64; 4];

/// The characteristic polynomial p of xoshiro256's state transition, less its x^256 term: by
/// Berlekamp–Massey on 512 values of one state bit, whose linear complexity is 256 (the
/// generator's period is 2^256 − 1, so p is primitive and the bit's minimal polynomial).
fn characteristic() -> &'static Poly {
    static P: OnceLock<Poly> = OnceLock::new();
    P.get_or_init(|| {
        let mut rng = Rng::new(1);
        let bits: Vec<u8> = (0..512)
            .map(|_| {
                let bit = (rng.s[0] & 1) as u8;
                rng.next_u64();
                bit
            })
            .collect();
        let c = berlekamp_massey(&bits);
        assert_eq!(
            c.len(),
            257,
            "xoshiro256's state bit has linear complexity 256"
        );
        // p(x) = x^256 + Σ c_i x^(256 − i): x^j's coefficient is c_(256 − j).
        let mut p = [0u64; 4];
        for j in 0..256 {
            p[j / 64] |= (c[256 - j] as u64) << (j % 64);
        }
        p
    })
}

/// The shortest linear recurrence of `s` over GF(2): c_0 = 1, …, c_L with
/// s_n = Σ_(i=1..L) c_i s_(n−i).
fn berlekamp_massey(s: &[u8]) -> Vec<u8> {
    let n = s.len();
    let (mut c, mut b) = (vec![0u8; n + 1], vec![0u8; n + 1]);
    (c[0], b[0]) = (1, 1);
    let (mut l, mut m) = (0usize, 1usize);
    for i in 0..n {
        let d = (1..=l).fold(s[i], |d, j| d ^ (c[j] & s[i - j]));
        if d == 0 {
            m += 1;
            continue;
        }
        let before = (2 * l <= i).then(|| c.clone());
        for j in 0..=n - m {
            c[j + m] ^= b[j];
        }
        match before {
            Some(t) => (l, b, m) = (i + 1 - l, t, 1),
            None => m += 1,
        }
    }
    c.truncate(l + 1);
    c
}

/// a·x mod p.
fn times_x(a: Poly) -> Poly {
    let carry = a[3] >> 63;
    let mut r = [
        a[0] << 1,
        a[1] << 1 | a[0] >> 63,
        a[2] << 1 | a[1] >> 63,
        a[3] << 1 | a[2] >> 63,
    ];
    if carry == 1 {
        r.iter_mut()
            .zip(characteristic())
            .for_each(|(r, p)| *r ^= p);
    }
    r
}

/// a·b mod p, by Horner's rule over b's coefficients.
fn times(a: Poly, b: Poly) -> Poly {
    (0..256).rev().fold([0; 4], |r, j| {
        let mut r = times_x(r);
        if b[j / 64] >> (j % 64) & 1 == 1 {
            r.iter_mut().zip(&a).for_each(|(r, a)| *r ^= a);
        }
        r
    })
}

/// x^k mod p, by squaring (from k's highest set bit).
fn x_pow_mod(k: u128) -> Poly {
    (0..128 - k.leading_zeros())
        .rev()
        .fold([1, 0, 0, 0], |r, bit| {
            let r = times(r, r);
            match k >> bit & 1 {
                1 => times_x(r),
                _ => r,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A jump lands where as many steps do.
    #[test]
    fn a_jump_equals_the_steps_it_skips() {
        let start = Rng::new(9);
        let mut stepped = start.clone();
        let mut at = 0u128;
        for k in [0u128, 1, 2, 63, 64, 255, 256, 257, 1000, 4097, 70_001] {
            while at < k {
                stepped.next_u64();
                at += 1;
            }
            assert_eq!(start.jumped(k), stepped, "{k} steps");
        }
    }

    /// x^(2^128) mod p is xoshiro256's own jump polynomial, the authors' published constants.
    #[test]
    fn the_jump_polynomial_of_2_pow_128_is_xoshiros() {
        let published = [
            0x180e_c6d3_3cfd_0aba,
            0xd5a6_1266_f0c9_392c,
            0xa958_2618_e03f_c9aa,
            0x39ab_dc45_29b1_661c,
        ];
        let half = x_pow_mod(1 << 127);
        assert_eq!(times(half, half), published);
    }

    /// Drawn in parallel chunks (1000 values in tests), the same values as one generator's
    /// sequence gives, and `normal_vec` leaves the generator where that sequence does.
    #[test]
    fn normals_in_parallel_chunks_are_the_sequential_ones() {
        let n = 5 * DRAW_CHUNK + 17;
        let mut sequential = Rng::new(5);
        let want: Vec<f32> = (0..n)
            .map(|_| (sequential.normal() * 0.02) as f32)
            .collect();
        let mut got = vec![0.0; n];
        Rng::new(5).normals_into(0.02, &mut got);
        assert_eq!(got, want);
        for n in [DRAW_CHUNK, DRAW_CHUNK + 1, n] {
            let (mut drawn, mut stepped) = (Rng::new(5), Rng::new(5));
            let values = drawn.normal_vec(n, 0.02);
            assert_eq!(values, want[..n], "{n} values");
            (0..n).for_each(|_| {
                stepped.normal();
            });
            assert_eq!(drawn, stepped, "the generator after {n} values");
        }
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/√n ≈ 0.0022 for the mean, √(2/n) ≈ 0.0032 for the variance.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
    }

    #[test]
    fn below_covers_range_evenly() {
        let mut r = Rng::new(1);
        let mut counts = [0usize; 10];
        for _ in 0..100_000 {
            counts[r.below(10) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let a: Vec<u64> = {
            let mut r = Rng::new(3);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(3);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::new(4);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
