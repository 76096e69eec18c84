//! Bias, residual, difference, ReLU and column-sum helpers around the GEMMs (CPU twin of
//! kernels/elementwise.cu).

use super::simd::vectorized;
use crate::backend::MatShape;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;
/// Rows per parallel task of a column sum: fixed so partial sums add in the same order every run.
const ROWS_PER_TASK: usize = 64;

/// x[i] = value, in parallel chunks: the gradient buffer's zeroing each step (GPT-2 small's
/// 124 M values) took 70 ms on one core of a 2-core machine, 35 on both.
pub fn fill(x: &mut [f32], value: f32) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.fill(value));
}

/// out[r,:] += bias.
pub fn add_bias(out: &mut [f32], bias: &[f32], s: MatShape) {
    out.par_chunks_mut(s.cols)
        .for_each(|row| vectorized!(row.iter_mut().zip(bias).for_each(|(o, b)| *o += b)));
}

/// dst += Σ_r src[r,:].
pub fn add_column_sums(dst: &mut [f32], src: &[f32], s: MatShape) {
    let partials: Vec<Vec<f32>> = src
        .par_chunks(ROWS_PER_TASK * s.cols)
        .map(|rows| {
            let mut acc = vec![0.0f32; s.cols];
            for row in rows.chunks(s.cols) {
                acc.iter_mut().zip(row).for_each(|(a, x)| *a += x);
            }
            acc
        })
        .collect();
    for p in partials {
        dst.iter_mut().zip(p).for_each(|(d, p)| *d += p);
    }
}

/// out[i] = f(out[i], x[i]) over equal-length slices, in parallel chunks.
fn zip_apply(out: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| vectorized!(o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(*o, x))));
}

/// out += x.
pub fn add(out: &mut [f32], x: &[f32]) {
    zip_apply(out, x, |o, x| o + x);
}

/// out −= x.
pub fn sub(out: &mut [f32], x: &[f32]) {
    zip_apply(out, x, |o, x| o - x);
}

/// out = max(inp, 0).
pub fn relu_forward(out: &mut [f32], inp: &[f32]) {
    zip_apply(out, inp, |_, x| x.max(0.0));
}

/// d ← d · [inp > 0].
pub fn relu_backward_inplace(d: &mut [f32], inp: &[f32]) {
    zip_apply(d, inp, |d, x| if x > 0.0 { d } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::test_util::{assert_close, random, upload};
    use crate::backend::cpu::Cpu;
    use crate::backend::{Backend, Buffer, MatShape};

    #[test]
    fn bias_residual_and_column_sums_match_naive() {
        let cpu = Cpu;
        let s = MatShape::new(131, 23);
        let (x, bias, y) = (random(s.len(), 1), random(s.cols, 2), random(s.len(), 3));
        let (bias_b, y_b) = (upload(&cpu, &bias), upload(&cpu, &y));

        let mut out = upload(&cpu, &x);
        cpu.add_bias(out.all_mut(), bias_b.all(), s).unwrap();
        let want: Vec<f64> = (0..s.len())
            .map(|i| x[i] as f64 + bias[i % s.cols] as f64)
            .collect();
        assert_close("add_bias", out.as_slice(), &want, 1e-6);

        let mut out = upload(&cpu, &x);
        cpu.add(out.all_mut(), y_b.all()).unwrap();
        let want: Vec<f64> = (0..s.len()).map(|i| x[i] as f64 + y[i] as f64).collect();
        assert_close("add", out.as_slice(), &want, 1e-6);

        let mut dst = upload(&cpu, &bias);
        cpu.add_column_sums(dst.all_mut(), y_b.all(), s).unwrap();
        let want: Vec<f64> = (0..s.cols)
            .map(|j| bias[j] as f64 + (0..s.rows).map(|r| y[r * s.cols + j] as f64).sum::<f64>())
            .collect();
        assert_close("add_column_sums", dst.as_slice(), &want, 1e-5);
    }

    #[test]
    fn sub_and_relu_match_naive() {
        let cpu = Cpu;
        let n = 40_009; // more than two chunks, ragged
        let (x, y, d) = (random(n, 4), random(n, 5), random(n, 6));
        let (xb, yb) = (upload(&cpu, &x), upload(&cpu, &y));

        let mut out = upload(&cpu, &x);
        cpu.sub(out.all_mut(), yb.all()).unwrap();
        let want: Vec<f64> = (0..n).map(|i| x[i] as f64 - y[i] as f64).collect();
        assert_close("sub", out.as_slice(), &want, 1e-6);

        let mut out = upload(&cpu, &vec![f32::NAN; n]);
        cpu.relu_forward(out.all_mut(), xb.all()).unwrap();
        let want: Vec<f64> = x
            .iter()
            .map(|&v| if v > 0.0 { v as f64 } else { 0.0 })
            .collect();
        assert_close("relu_forward", out.as_slice(), &want, 0.0);

        let mut dd = upload(&cpu, &d);
        cpu.relu_backward(dd.all_mut(), xb.all()).unwrap();
        let want: Vec<f64> = (0..n)
            .map(|i| if x[i] > 0.0 { d[i] as f64 } else { 0.0 })
            .collect();
        assert_close("relu_backward", dd.as_slice(), &want, 0.0);
        let err = cpu
            .sub(dd.all_mut(), upload(&cpu, &[1.0]).all())
            .unwrap_err();
        assert!(err.to_string().contains("sub"), "{err}");
    }

    #[test]
    fn bias_ops_reject_mismatched_shapes() {
        let cpu = Cpu;
        let (bias, mut out) = (upload(&cpu, &[0.0; 4]), upload(&cpu, &[0.0; 12]));
        let err = cpu
            .add_bias(out.all_mut(), bias.all(), MatShape::new(4, 3))
            .unwrap_err();
        assert!(err.to_string().contains("add_bias: bias"), "{err}");
    }
}
