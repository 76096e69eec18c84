//! `lowrank bench epilogue`: the work a training step does in the epilogue of a GEMM against the
//! same work in two passes, at GPT-2's MLP shapes, dense (cuBLASLt's epilogues) and pure low-rank
//! (the fused kernels' epilogue): the MLP's GELU (`gelu_*`: the fc layer's forward writes y and
//! GELU(y); the projection's backward scales dx by GELU′ of fc's output; GELU_AUX_BIAS and DGELU)
//! the residual connection after the projection (`residual_*`: y = x·W + b + r; BIAS with the
//! residual as cuBLASLt's C) and a dense layer's bias gradient beside its weight gradient
//! (`bias_grad_*`: dW += xᵀ·dy with db += Σ dy from BGRADA, against a pass summing dy). Rates
//! count the GEMMs' FLOPs, so the two rows of a pair compare directly.

use super::{random_bufs, rotation, time_median, Row, Timing, PEAK_TFLOPS};
use crate::backend::cuda::{Cuda, CudaBuf};
use crate::backend::{
    linear_param_grads_in_passes, Backend, Buffer, DType, DenseGrads, Gemm, LinearEpilogue,
    LowRankGrads, LowRankShape, LowRankWeights,
};
use anyhow::Result;

/// (rows N = B·T, channels C, rank of the low-rank layers): the MLP maps C → 4C → C.
pub type Shape = (usize, usize, usize);
/// GPT-2 small and medium at B 8, T 1024, rank C/4.
pub const FULL: &[Shape] = &[(8192, 768, 192), (8192, 1024, 256)];
/// Rows off the tiles, a rank off 16.
pub const SMOKE: &[Shape] = &[(200, 64, 12)];

/// The rows in pairs: each layer and pass with the epilogue, then in two passes.
pub fn run(gpu: &Cuda, shapes: &[Shape], timing: &Timing) -> Result<Vec<Row>> {
    type Pair = fn(&Cuda, &Inputs, &mut Outputs, &Timing) -> Result<[f64; 2]>;
    let mut rows = Vec::new();
    for &(n, c, rank) in shapes {
        let inp = Inputs::new(gpu, n, c, rank)?;
        let mut out = Outputs::new(gpu, &inp)?;
        let (fc, proj) = (inp.fc(), inp.proj());
        let dense = 2.0 * (n * c * 4 * c) as f64;
        let shape = format!("{n}x{c}>{} r{rank}", 4 * c);
        let pairs: [(&str, f64, Pair); 7] = [
            ("gelu_fc_fwd_dense", dense, dense_fc),
            ("gelu_proj_dx_dense", dense, dense_dx),
            ("gelu_fc_fwd_lowrank", fc.forward_flops(false), lowrank_fc),
            (
                "gelu_proj_bwd_lowrank",
                proj.backward_flops(false),
                lowrank_proj,
            ),
            ("residual_proj_fwd_dense", dense, dense_residual),
            (
                "residual_proj_fwd_lowrank",
                proj.forward_flops(false),
                lowrank_residual,
            ),
            ("bias_grad_fc_dense", dense, dense_bias_grad),
        ];
        for (name, flops, pair) in pairs {
            let timing = timing.labelled(format!("{name} {shape}"));
            let [fused, passes] = pair(gpu, &inp, &mut out, &timing)?;
            let row = |how: &str, ms: f64| {
                let tflops = flops / (ms * 1e-3) / 1e12;
                Row {
                    op: format!("{name}_{how}"),
                    shape: shape.clone(),
                    median_ms: ms,
                    achieved: tflops,
                    unit: "TF/s",
                    frac_of_peak: tflops / PEAK_TFLOPS,
                    frac_of_measured: None,
                }
            };
            rows.extend([row("fused", fused), row("passes", passes)]);
        }
    }
    Ok(rows)
}

/// One MLP's read-only operands: activations rotated past L2, weights once.
struct Inputs {
    n: usize,
    rank: usize,
    sets: usize,
    /// n × C: the fc layer's input, the projection's output gradient, and the residual its
    /// forward adds.
    x: Vec<CudaBuf>,
    /// n × 4C: the fc layer's output u (GELU's input), read by the projection's backward, and the
    /// projection's input in its forward.
    u: Vec<CudaBuf>,
    /// The fc weight (C × 4C, stored n_in × n_out); read transposed, the projection's dx operand;
    /// read as 4C × C, the projection's weight.
    w: CudaBuf,
    bias: CudaBuf,
    /// Low-rank factors Ut (rank × 4C) and Vt (rank × 4C): the 4C side of either layer, of which
    /// the C side reads a prefix.
    ut: CudaBuf,
    vt: CudaBuf,
}

/// What the timed calls write.
struct Outputs {
    /// n × 4C: y or dx, and GELU(y) (the projection's y: its first n × C).
    y: CudaBuf,
    gelu: CudaBuf,
    /// The low-rank scratch and gradients, at the 4C side's size.
    t: CudaBuf,
    s: CudaBuf,
    /// dUt and dVt back to back.
    grads: CudaBuf,
    /// The fc layer's dW (C × 4C) and db (4C), f32.
    dense_grads: CudaBuf,
}

impl Inputs {
    fn new(gpu: &Cuda, n: usize, c: usize, rank: usize) -> Result<Self> {
        let bf = DType::BF16;
        let sets = rotation(gpu, 2 * n * 5 * c);
        let one = |len: usize| -> Result<CudaBuf> { Ok(random_bufs(gpu, bf, len, 1)?.remove(0)) };
        Ok(Inputs {
            n,
            rank,
            sets,
            x: random_bufs(gpu, bf, n * c, sets)?,
            u: random_bufs(gpu, bf, n * 4 * c, sets)?,
            w: one(4 * c * c)?,
            bias: one(4 * c)?,
            ut: one(rank * 4 * c)?,
            vt: one(rank * 4 * c)?,
        })
    }

    /// The model width C.
    fn c(&self) -> usize {
        self.x[0].len() / self.n
    }

    /// The MLP's fc (C → 4C) and projection (4C → C) as low-rank layers.
    fn fc(&self) -> LowRankShape {
        self.shape(self.c(), 4 * self.c())
    }

    fn proj(&self) -> LowRankShape {
        self.shape(4 * self.c(), self.c())
    }

    fn shape(&self, n_in: usize, n_out: usize) -> LowRankShape {
        LowRankShape {
            n: self.n,
            n_in,
            n_out,
            rank: self.rank,
        }
    }

    fn weights(&self) -> LowRankWeights<'_, CudaBuf> {
        LowRankWeights {
            w0: None,
            ut: self.ut.all(),
            vt: self.vt.all(),
        }
    }
}

impl Outputs {
    fn new(gpu: &Cuda, inp: &Inputs) -> Result<Self> {
        let (bf, f32) = (DType::BF16, DType::F32);
        let wide = inp.u[0].len();
        // n rows of the rank's padded stride, whatever the layer's widths.
        let scratch = inp.shape(1, 1).scratch_len();
        let factor = inp.ut.len();
        Ok(Outputs {
            y: gpu.alloc(bf, wide)?,
            gelu: gpu.alloc(bf, wide)?,
            t: gpu.alloc(bf, scratch)?,
            s: gpu.alloc(bf, scratch)?,
            grads: gpu.alloc(f32, 2 * factor)?,
            dense_grads: gpu.alloc(f32, inp.w.len() + inp.bias.len())?,
        })
    }
}

/// fc forward: y = x·W + b and GELU(y), in cuBLASLt's epilogue and in two passes.
fn dense_fc(gpu: &Cuda, inp: &Inputs, out: &mut Outputs, timing: &Timing) -> Result<[f64; 2]> {
    let c = inp.c();
    let g = Gemm::new(inp.n, 4 * c, c);
    let (w, b) = (inp.w.all(), inp.bias.all());
    let Outputs { y, gelu, .. } = out;
    let fused = time_median(gpu, timing, "fused", |i| {
        let x = inp.x[i % inp.sets].all();
        gpu.gemm_bias_gelu(&g, x, w, b, y.all_mut(), gelu.all_mut())
    })?;
    let passes = time_median(gpu, timing, "passes", |i| {
        let x = inp.x[i % inp.sets].all();
        gpu.gemm_bias(&g, x, w, b, y.all_mut())?;
        gpu.gelu_forward(gelu.all_mut(), y.all())
    })?;
    Ok([fused, passes])
}

/// The projection's dx = (dy·Wᵀ) ⊙ GELU′(u), W (4C × C) stored n_in × n_out: cuBLASLt's DGELU
/// epilogue and two passes.
fn dense_dx(gpu: &Cuda, inp: &Inputs, out: &mut Outputs, timing: &Timing) -> Result<[f64; 2]> {
    let c = inp.c();
    let g = Gemm::new(inp.n, 4 * c, c).trans_b();
    let w = inp.w.all();
    let dx = &mut out.y;
    let fused = time_median(gpu, timing, "fused", |i| {
        let (dy, u) = (inp.x[i % inp.sets].all(), inp.u[i % inp.sets].all());
        gpu.gemm_gelu_backward(&g, dy, w, u, dx.all_mut())
    })?;
    let passes = time_median(gpu, timing, "passes", |i| {
        let (dy, u) = (inp.x[i % inp.sets].all(), inp.u[i % inp.sets].all());
        gpu.gemm(&g, dy, w, dx.all_mut())?;
        gpu.gelu_backward(dx.all_mut(), u)
    })?;
    Ok([fused, passes])
}

/// The projection's forward y = u·W + b + r (W 4C × C): the residual r as cuBLASLt's input matrix
/// C, and then in a pass.
fn dense_residual(
    gpu: &Cuda,
    inp: &Inputs,
    out: &mut Outputs,
    timing: &Timing,
) -> Result<[f64; 2]> {
    let c = inp.c();
    let g = Gemm::new(inp.n, c, 4 * c);
    let (w, b) = (inp.w.all(), inp.bias.at(0, c));
    let y = &mut out.y;
    let fused = time_median(gpu, timing, "fused", |i| {
        let (x, r) = (inp.u[i % inp.sets].all(), inp.x[i % inp.sets].all());
        gpu.gemm_bias_residual(&g, x, w, b, r, y.at_mut(0, inp.n * c))
    })?;
    let passes = time_median(gpu, timing, "passes", |i| {
        let (x, r) = (inp.u[i % inp.sets].all(), inp.x[i % inp.sets].all());
        gpu.gemm_bias(&g, x, w, b, y.at_mut(0, inp.n * c))?;
        gpu.add(y.at_mut(0, inp.n * c), r)
    })?;
    Ok([fused, passes])
}

/// The fc layer's parameter gradients, dW += xᵀ·dy (x n × C, dy n × 4C) and db += Σ dy: db from
/// the weight GEMM's epilogue, and the GEMM then a pass over dy.
fn dense_bias_grad(
    gpu: &Cuda,
    inp: &Inputs,
    out: &mut Outputs,
    timing: &Timing,
) -> Result<[f64; 2]> {
    let c = inp.c();
    let (dw, db) = (0, inp.w.len());
    let buf = &mut out.dense_grads;
    let fused = time_median(gpu, timing, "fused", |i| {
        let (x, dy) = (inp.x[i % inp.sets].all(), inp.u[i % inp.sets].all());
        gpu.linear_param_grads(x, dy, (c, 4 * c), DenseGrads { buf, dw, db })
    })?;
    let passes = time_median(gpu, timing, "passes", |i| {
        let (x, dy) = (inp.x[i % inp.sets].all(), inp.u[i % inp.sets].all());
        linear_param_grads_in_passes(gpu, x, dy, (c, 4 * c), DenseGrads { buf, dw, db })
    })?;
    Ok([fused, passes])
}

/// The low-rank fc forward with GELU(y) from the y kernel's epilogue, and then in a pass.
fn lowrank_fc(gpu: &Cuda, inp: &Inputs, out: &mut Outputs, timing: &Timing) -> Result<[f64; 2]> {
    let sh = &inp.fc();
    let b = Some(inp.bias.all());
    let Outputs { y, gelu, t, .. } = out;
    let fused = time_median(gpu, timing, "fused", |i| {
        let x = inp.x[i % inp.sets].all();
        let (t, y) = (t.all_mut(), y.all_mut());
        let gelu = LinearEpilogue::Gelu(gelu.all_mut());
        gpu.lowrank_linear_forward(sh, x, inp.weights(), b, t, y, gelu)
    })?;
    let passes = time_median(gpu, timing, "passes", |i| {
        let x = inp.x[i % inp.sets].all();
        let (t, none) = (t.all_mut(), LinearEpilogue::None);
        gpu.lowrank_linear_forward(sh, x, inp.weights(), b, t, y.all_mut(), none)?;
        gpu.gelu_forward(gelu.all_mut(), y.all())
    })?;
    Ok([fused, passes])
}

/// The low-rank projection's forward (4C → C) with the residual added in the y kernel's epilogue,
/// and then in a pass.
fn lowrank_residual(
    gpu: &Cuda,
    inp: &Inputs,
    out: &mut Outputs,
    timing: &Timing,
) -> Result<[f64; 2]> {
    let sh = &inp.proj();
    let (b, len) = (Some(inp.bias.at(0, sh.n_out)), sh.n * sh.n_out);
    let Outputs { y, t, .. } = out;
    let mut run = |i: usize, fused: bool| -> Result<()> {
        let (x, r) = (inp.u[i % inp.sets].all(), inp.x[i % inp.sets].all());
        let epi = match fused {
            true => LinearEpilogue::Residual(r),
            false => LinearEpilogue::None,
        };
        let (t, w) = (t.all_mut(), inp.weights());
        gpu.lowrank_linear_forward(sh, x, w, b, t, y.at_mut(0, len), epi)?;
        if !fused {
            gpu.add(y.at_mut(0, len), r)?;
        }
        Ok(())
    };
    let fused = time_median(gpu, timing, "fused", |i| run(i, true))?;
    let passes = time_median(gpu, timing, "passes", |i| run(i, false))?;
    Ok([fused, passes])
}

/// The low-rank projection's backward (4C → C; dy is n × C) with dx scaled by GELU′(u) in the dx
/// kernel's epilogue, and then in a pass.
fn lowrank_proj(gpu: &Cuda, inp: &Inputs, out: &mut Outputs, timing: &Timing) -> Result<[f64; 2]> {
    let sh = &inp.proj();
    let Outputs {
        y: dx,
        gelu: x,
        t,
        s,
        grads,
        ..
    } = out;
    let mut run = |i: usize, fused: bool| -> Result<()> {
        let (dy, u) = (inp.x[i % inp.sets].all(), inp.u[i % inp.sets].all());
        let grads = LowRankGrads {
            buf: &mut *grads,
            dut: 0,
            dvt: sh.rank * sh.n_in,
            dbias: None,
        };
        // The layer's input x = GELU(u), whatever its values: only the timing matters here.
        let (x, t) = (x.all(), t.all());
        let gelu_input = fused.then_some(u);
        gpu.lowrank_linear_backward(
            sh,
            x,
            inp.weights(),
            t,
            dy,
            s.all_mut(),
            dx.all_mut(),
            gelu_input,
            grads,
        )?;
        if !fused {
            gpu.gelu_backward(dx.all_mut(), u)?;
        }
        Ok(())
    };
    let fused = time_median(gpu, timing, "fused", |i| run(i, true))?;
    let passes = time_median(gpu, timing, "passes", |i| run(i, false))?;
    Ok([fused, passes])
}
