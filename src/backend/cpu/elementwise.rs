//! Bias, residual and column-sum helpers around the GEMMs (CPU twin of kernels/elementwise.cu).

use crate::backend::MatShape;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;
/// Rows per parallel task of a column sum: fixed so partial sums add in the same order every run.
const ROWS_PER_TASK: usize = 64;

/// out[r,:] += bias.
pub fn add_bias(out: &mut [f32], bias: &[f32], s: MatShape) {
    out.par_chunks_mut(s.cols)
        .for_each(|row| row.iter_mut().zip(bias).for_each(|(o, b)| *o += b));
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

/// out += x.
pub fn add(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, x)| *o += x));
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
    fn bias_ops_reject_mismatched_shapes() {
        let cpu = Cpu;
        let (bias, mut out) = (upload(&cpu, &[0.0; 4]), upload(&cpu, &[0.0; 12]));
        let err = cpu
            .add_bias(out.all_mut(), bias.all(), MatShape::new(4, 3))
            .unwrap_err();
        assert!(err.to_string().contains("add_bias: bias"), "{err}");
    }
}
