//! eˣ in f32 as plain arithmetic, so that a loop over a slice of it vectorises (libm's expf is a
//! call per element: the GELU, the attention's softmax and the classifier's took 5–6 % of a GPT-2
//! small CPU step in them). Cephes' expf: x = n·ln 2 + r with |r| ≤ ½ln 2 (ln 2 in two parts, so r
//! is exact), eʳ by its degree-6 minimax polynomial, then 2ⁿ as two exact powers of two, so that
//! the whole range (subnormal results included) needs no branch. Within 2 ulp of the exact value
//! (tested against f64 over the range); overflow gives +∞, underflow 0, NaN stays NaN.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO, LN2_HI with few enough bits that n·LN2_HI is exact for |n| < 2⁹.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding and then subtracting it rounds an f32 of magnitude below 2²² to an integer.
const ROUND: f32 = 12_582_912.0;
/// Beyond these eˣ is +∞ (above 88.73) or 0 (below −103.98) in f32; clamping keeps n in range.
const X_MAX: f32 = 88.8;
const X_MIN: f32 = -104.0;

#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(X_MIN, X_MAX);
    let rounded = x * LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r * r + r + 1.0;
    // n as an integer from the rounded sum's low mantissa bits (`n as i32` checks its range and
    // held the loops scalar), then 2ⁿ for n in [−150, 129] as 2^⌊n/2⌋·2^⌈n/2⌉, each a normal f32.
    // A NaN x makes n meaningless and the result NaN through e_r.
    let n = rounded.to_bits() as i32 - ROUND.to_bits() as i32;
    let half = n >> 1;
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    e_r * pow2(half) * pow2(n - half)
}

#[cfg(test)]
mod tests {
    use super::exp;

    /// Distance in units in the last place of `want` (the f32 spacing at its magnitude, the
    /// subnormal spacing below the normal range).
    fn ulps(got: f32, want: f64) -> f64 {
        let spacing = if want.abs() < f32::MIN_POSITIVE as f64 {
            2f64.powi(-149)
        } else {
            2f64.powi(want.abs().log2().floor() as i32 - 23)
        };
        (got as f64 - want).abs() / spacing
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_over_the_whole_range() {
        // Every 2⁻¹²-th value over the range where eˣ is a positive finite f32 (to −103.3, where
        // the result is a few subnormal spacings) and beyond it on both sides.
        let (mut worst, mut at) = (0.0f64, 0.0f32);
        let mut x = -110.0f32;
        while x < 95.0 {
            let want = (x as f64).exp();
            let got = exp(x);
            if want > f32::MAX as f64 {
                assert_eq!(got, f32::INFINITY, "exp({x}) overflows");
            } else {
                let e = ulps(got, want);
                if e > worst {
                    (worst, at) = (e, x);
                }
            }
            x += 1.0 / 4096.0;
        }
        assert!(worst <= 2.0, "exp({at}) is {worst} ulp off");
    }

    #[test]
    fn exp_at_the_edges_and_special_values() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(1000.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        // The largest finite result and the first that overflows (ln f32::MAX = 88.72284).
        assert!(exp(88.722_83).is_finite() && exp(88.722_83) > 3.4e38);
        assert_eq!(exp(88.7229), f32::INFINITY);
        assert!(ulps(exp(1.0), std::f64::consts::E) <= 1.0);
    }
}
