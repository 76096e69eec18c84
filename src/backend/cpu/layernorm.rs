//! LayerNorm forward and backward (CPU twin of kernels/layernorm.cu).

use crate::backend::MatShape;
use rayon::prelude::*;

/// GPT-2's LayerNorm epsilon.
pub const EPS: f32 = 1e-5;

/// Rows per parallel task in the backward pass. Fixed (not left to rayon's splitting) so the
/// weight-gradient partial sums are added in the same order on every run.
const ROWS_PER_TASK: usize = 32;

/// out = (x − mean)·rstd·w + b per row; saves mean and rstd. Operands checked by the caller.
pub fn forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight_bias: &[f32],
    s: MatShape,
) {
    let c = s.cols;
    let (w, b) = weight_bias.split_at(c);
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, x), (m, r))| {
            let mu = x.iter().sum::<f32>() / c as f32;
            let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
            let rs = 1.0 / (var + EPS).sqrt();
            for i in 0..c {
                o[i] = (x[i] - mu) * rs * w[i] + b[i];
            }
            (*m, *r) = (mu, rs);
        });
}

/// Accumulates dinp += ∂L/∂x and dweight_bias += (∂L/∂w, ∂L/∂b) (llm.c's layernorm_backward).
#[allow(clippy::too_many_arguments)] // mirrors the kernel's operand list
pub fn backward(
    dinp: &mut [f32],
    dweight_bias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight_bias: &[f32],
    mean: &[f32],
    rstd: &[f32],
    s: MatShape,
) {
    let c = s.cols;
    let w = &weight_bias[..c];
    let task = ROWS_PER_TASK * c;
    let partials: Vec<Vec<f32>> = dinp
        .par_chunks_mut(task)
        .zip(dout.par_chunks(task).zip(inp.par_chunks(task)))
        .zip(
            mean.par_chunks(ROWS_PER_TASK)
                .zip(rstd.par_chunks(ROWS_PER_TASK)),
        )
        .map(|((dx, (dy, x)), (mean, rstd))| {
            let mut dwb = vec![0.0f32; 2 * c];
            for (r, (&mu, &rs)) in mean.iter().zip(rstd).enumerate() {
                let rows = r * c..(r + 1) * c;
                row_backward(
                    &mut dx[rows.clone()],
                    &mut dwb,
                    &dy[rows.clone()],
                    &x[rows],
                    w,
                    mu,
                    rs,
                );
            }
            dwb
        })
        .collect();
    // Frozen weights: the row loop forms their partials with dx (one pass over the row), but
    // nothing adds them up.
    if let Some(dweight_bias) = dweight_bias {
        for p in partials {
            dweight_bias.iter_mut().zip(p).for_each(|(d, p)| *d += p);
        }
    }
}

/// One row of the backward pass; `dwb` collects (dw, db) for the task's rows.
fn row_backward(
    dx: &mut [f32],
    dwb: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    mu: f32,
    rs: f32,
) {
    let c = x.len();
    let (mut dnorm_mean, mut dnorm_norm_mean) = (0.0f32, 0.0f32);
    for i in 0..c {
        let norm = (x[i] - mu) * rs;
        let dnorm = w[i] * dy[i];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean /= c as f32;
    dnorm_norm_mean /= c as f32;
    let (dw, db) = dwb.split_at_mut(c);
    for i in 0..c {
        let norm = (x[i] - mu) * rs;
        db[i] += dy[i];
        dw[i] += norm * dy[i];
        dx[i] += (w[i] * dy[i] - dnorm_mean - norm * dnorm_norm_mean) * rs;
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::test_util::{assert_close, random, upload};
    use crate::backend::cpu::Cpu;
    use crate::backend::{Backend, Buffer, DType, MatShape};

    /// Naive f64 LayerNorm of one row: the output and (mean, rstd).
    fn ln_row(x: &[f64], w: &[f64], b: &[f64]) -> (Vec<f64>, f64, f64) {
        let n = x.len() as f64;
        let mu = x.iter().sum::<f64>() / n;
        let rs = 1.0 / (x.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / n + 1e-5).sqrt();
        (
            (0..x.len())
                .map(|i| (x[i] - mu) * rs * w[i] + b[i])
                .collect(),
            mu,
            rs,
        )
    }

    #[test]
    fn layernorm_forward_matches_naive() {
        let cpu = Cpu;
        let s = MatShape::new(37, 45);
        let (x, wb) = (random(s.len(), 1), random(2 * s.cols, 2));
        let (xb, wbb) = (upload(&cpu, &x), upload(&cpu, &wb));
        let mut out = cpu.alloc(DType::F32, s.len()).unwrap();
        let mut mean = cpu.alloc(DType::F32, s.rows).unwrap();
        let mut rstd = cpu.alloc(DType::F32, s.rows).unwrap();
        cpu.layernorm_forward(
            out.all_mut(),
            mean.all_mut(),
            rstd.all_mut(),
            xb.all(),
            wbb.all(),
            s,
        )
        .unwrap();
        let wb64: Vec<f64> = wb.iter().map(|&v| v as f64).collect();
        let (mut want, mut want_mean, mut want_rstd) = (vec![], vec![], vec![]);
        for r in 0..s.rows {
            let row: Vec<f64> = x[r * s.cols..(r + 1) * s.cols]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let (o, mu, rs) = ln_row(&row, &wb64[..s.cols], &wb64[s.cols..]);
            want.extend(o);
            want_mean.push(mu);
            want_rstd.push(rs);
        }
        assert_close("layernorm out", out.as_slice(), &want, 1e-5);
        assert_close("layernorm mean", mean.as_slice(), &want_mean, 1e-6);
        assert_close("layernorm rstd", rstd.as_slice(), &want_rstd, 1e-5);
    }

    /// The backward pass against central differences of the f64 forward: for L = Σ dy·out,
    /// ∂L/∂x, ∂L/∂w and ∂L/∂b, accumulated onto nonzero initial gradients.
    #[test]
    fn layernorm_backward_matches_finite_differences() {
        let cpu = Cpu;
        let s = MatShape::new(70, 19); // more rows than one task, a ragged last task
        let (x, wb, dy) = (
            random(s.len(), 3),
            random(2 * s.cols, 4),
            random(s.len(), 5),
        );
        let (dx0, dwb0) = (random(s.len(), 6), random(2 * s.cols, 7));
        let (xb, wbb, dyb) = (upload(&cpu, &x), upload(&cpu, &wb), upload(&cpu, &dy));
        let mut out = cpu.alloc(DType::F32, s.len()).unwrap();
        let mut mean = cpu.alloc(DType::F32, s.rows).unwrap();
        let mut rstd = cpu.alloc(DType::F32, s.rows).unwrap();
        cpu.layernorm_forward(
            out.all_mut(),
            mean.all_mut(),
            rstd.all_mut(),
            xb.all(),
            wbb.all(),
            s,
        )
        .unwrap();
        let (mut dx, mut dwb) = (upload(&cpu, &dx0), upload(&cpu, &dwb0));
        cpu.layernorm_backward(
            dx.all_mut(),
            Some(dwb.all_mut()),
            dyb.all(),
            xb.all(),
            wbb.all(),
            mean.all(),
            rstd.all(),
            s,
        )
        .unwrap();

        let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let (x64, wb64, dy64) = (f64s(&x), f64s(&wb), f64s(&dy));
        let loss = |x: &[f64], wb: &[f64]| -> f64 {
            (0..s.rows)
                .map(|r| {
                    let rows = r * s.cols..(r + 1) * s.cols;
                    let (o, _, _) = ln_row(&x[rows.clone()], &wb[..s.cols], &wb[s.cols..]);
                    o.iter().zip(&dy64[rows]).map(|(o, d)| o * d).sum::<f64>()
                })
                .sum()
        };
        let h = 1e-5;
        let fd = |v: &[f64], i: usize, f: &dyn Fn(&[f64]) -> f64| {
            let (mut p, mut m) = (v.to_vec(), v.to_vec());
            p[i] += h;
            m[i] -= h;
            (f(&p) - f(&m)) / (2.0 * h)
        };
        let want_dx: Vec<f64> = (0..s.len())
            .map(|i| dx0[i] as f64 + fd(&x64, i, &|x| loss(x, &wb64)))
            .collect();
        let want_dwb: Vec<f64> = (0..2 * s.cols)
            .map(|i| dwb0[i] as f64 + fd(&wb64, i, &|wb| loss(&x64, wb)))
            .collect();
        assert_close("layernorm dx", dx.as_slice(), &want_dx, 1e-4);
        assert_close("layernorm dweight_bias", dwb.as_slice(), &want_dwb, 1e-4);
    }
}
