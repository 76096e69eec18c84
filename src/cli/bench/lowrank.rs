//! `lowrank bench lowrank-linear`: the low-rank linear layer, fused kernels against the unfused
//! cuBLASLt path and against dense cuBLASLt x·W0 of the same layer, on GPT-2 MLP shapes.

use super::{random_bufs, rotation, time_median, PEAK_TFLOPS};
use crate::backend::cuda::{merge_base_from_env, product_tile, Cuda, CudaBuf, LowRankImpl};
use crate::backend::{
    Backend, Buffer, DType, Gemm, LinearEpilogue, LowRankGrads, LowRankShape, LowRankWeights,
};
use anyhow::Result;
use serde::Serialize;

/// The layers, row counts and ranks timed.
pub struct Sizes {
    /// (n_in, n_out) of each layer.
    layers: &'static [(usize, usize)],
    rows: &'static [usize],
    /// Ascending: the largest sizes the factors' buffers.
    ranks: &'static [usize],
}

/// GPT-2 small and medium MLP projections (n_in, n_out), up and down, at N = B·T from 1024 to 16384.
pub const FULL: Sizes = Sizes {
    layers: &[(1024, 4096), (4096, 1024), (768, 3072), (3072, 768)],
    rows: &[1024, 4096, 16384],
    ranks: &[16, 64, 128, 256, 512],
};

/// `bench --smoke`: one layer each way, rows off the 128-row tile, a rank off 16; 2 × 2 wide tiles
/// in y (up) and dx (down), so an emulated Hopper of 4 SMs runs them on the wgmma kernels (the TMA
/// kernel's 128 × 128 tile for `fused`: one wave either way, and the narrower tile wins).
pub const SMOKE: Sizes = Sizes {
    layers: &[(64, 256), (256, 64)],
    rows: &[200],
    ranks: &[8, 12],
};

#[derive(Serialize)]
pub struct LowRankRow {
    /// e.g. "fwd w0+lr" (frozen base plus low-rank) or "bwd lr" (pure low-rank).
    pass: String,
    shape: String,
    imp: &'static str,
    median_ms: f64,
    tflops: f64,
    frac_of_peak: f64,
    /// Dense cuBLASLt time over this time: with a base, dense x·W0 (forward) or dy·W0ᵀ
    /// (backward); without, the full-rank layer it replaces (backward: dx and dW).
    speedup_vs_dense: f64,
    /// Unfused cuBLASLt time over this time (1 for the unfused rows themselves).
    speedup_vs_unfused: f64,
    /// With a base: this time over (dense time × total FLOPs / dense FLOPs), i.e. how far from
    /// running the low-rank share at dense cuBLAS efficiency (target ≤ 1.10).
    vs_flop_budget: Option<f64>,
    /// The block tile of the y (fwd) or dx (bwd) product's kernel, e.g. "tma256"; None on cuBLASLt.
    tile: Option<&'static str>,
}

/// One layer's read-only device buffers at the largest rank's capacity; activations rotated past L2.
struct Inputs {
    x: Vec<CudaBuf>,
    dy: Vec<CudaBuf>,
    w0: CudaBuf,
    ut: CudaBuf,
    vt: CudaBuf,
    bias: CudaBuf,
}

/// What the layer writes: scratch, outputs and gradients.
struct Outputs {
    t: CudaBuf,
    s: CudaBuf,
    y: CudaBuf,
    dx: CudaBuf,
    /// dUt, dVt and db back to back, as the gradient buffer holds them.
    grads: CudaBuf,
}

impl Inputs {
    fn new(gpu: &Cuda, n: usize, n_in: usize, n_out: usize, cap: usize) -> Result<Self> {
        let sets = rotation(gpu, 2 * n * (n_in + n_out));
        let one = |len: usize| -> Result<CudaBuf> {
            Ok(random_bufs(gpu, DType::BF16, len, 1)?.remove(0))
        };
        Ok(Inputs {
            x: random_bufs(gpu, DType::BF16, n * n_in, sets)?,
            dy: random_bufs(gpu, DType::BF16, n * n_out, sets)?,
            w0: one(n_in * n_out)?,
            ut: one(cap * n_in)?,
            vt: one(cap * n_out)?,
            bias: one(n_out)?,
        })
    }

    fn weights(&self, base: bool) -> LowRankWeights<'_, CudaBuf> {
        LowRankWeights {
            w0: base.then(|| self.w0.all()),
            ut: self.ut.all(),
            vt: self.vt.all(),
        }
    }
}

impl Outputs {
    fn new(gpu: &Cuda, sh: &LowRankShape) -> Result<Self> {
        let (bf, f32) = (DType::BF16, DType::F32);
        Ok(Outputs {
            t: gpu.alloc(bf, sh.scratch_len())?,
            s: gpu.alloc(bf, sh.scratch_len())?,
            y: gpu.alloc(bf, sh.n * sh.n_out)?,
            dx: gpu.alloc(bf, sh.n * sh.n_in)?,
            grads: gpu.alloc(f32, sh.rank * (sh.n_in + sh.n_out) + sh.n_out)?,
        })
    }
}

fn time_forward(
    gpu: &Cuda,
    sh: &LowRankShape,
    base: bool,
    inp: &Inputs,
    out: &mut Outputs,
    reps: usize,
) -> Result<f64> {
    let sets = inp.x.len();
    time_median(gpu, reps, |i| {
        gpu.lowrank_linear_forward(
            sh,
            inp.x[i % sets].all(),
            inp.weights(base),
            Some(inp.bias.all()),
            out.t.all_mut(),
            out.y.all_mut(),
            LinearEpilogue::None,
        )
    })
}

fn time_backward(
    gpu: &Cuda,
    sh: &LowRankShape,
    base: bool,
    inp: &Inputs,
    out: &mut Outputs,
    reps: usize,
) -> Result<f64> {
    let sets = inp.x.len();
    let Outputs {
        t, s, dx, grads, ..
    } = out;
    let dvt = sh.rank * sh.n_in;
    time_median(gpu, reps, |i| {
        let grads = LowRankGrads {
            buf: &mut *grads,
            dut: 0,
            dvt,
            dbias: Some(dvt + sh.rank * sh.n_out),
        };
        gpu.lowrank_linear_backward(
            sh,
            inp.x[i % sets].all(),
            inp.weights(base),
            t.all(),
            inp.dy[i % sets].all(),
            s.all_mut(),
            dx.all_mut(),
            None,
            grads,
        )
    })
}

/// Dense cuBLASLt times of the full-rank layer: (x·W0, dy·W0ᵀ, dy·W0ᵀ plus dW0 += xᵀ·dy).
fn time_dense(
    gpu: &Cuda,
    n: usize,
    n_in: usize,
    n_out: usize,
    inp: &Inputs,
    reps: usize,
) -> Result<[f64; 3]> {
    let sets = inp.x.len();
    let mut y = gpu.alloc(DType::BF16, n * n_out)?;
    let mut dx = gpu.alloc(DType::BF16, n * n_in)?;
    let mut dw = gpu.alloc(DType::F32, n_in * n_out)?;
    let fwd = Gemm::new(n, n_out, n_in);
    let dgrad = Gemm::new(n, n_in, n_out).trans_b();
    let wgrad = Gemm::new(n_in, n_out, n).trans_a().beta(1.0);
    let f = time_median(gpu, reps, |i| {
        gpu.gemm(&fwd, inp.x[i % sets].all(), inp.w0.all(), y.all_mut())
    })?;
    let d = time_median(gpu, reps, |i| {
        gpu.gemm(&dgrad, inp.dy[i % sets].all(), inp.w0.all(), dx.all_mut())
    })?;
    let full = time_median(gpu, reps, |i| {
        gpu.gemm(&dgrad, inp.dy[i % sets].all(), inp.w0.all(), dx.all_mut())?;
        gpu.gemm(
            &wgrad,
            inp.x[i % sets].all(),
            inp.dy[i % sets].all(),
            dw.all_mut(),
        )
    })?;
    Ok([f, d, full])
}

/// The fused implementations `bench --skip-impl` can leave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FusedImpl {
    Fused,
    /// `fused` with LOWRANK_MERGE_BASE=1 (base passes only: without W0 it is `fused`).
    Merged,
    Wgmma,
    Mma,
}

/// Every shape, rank, pass and variant, each row printed as it is measured (a run cut short keeps
/// what it measured); restores the backend's implementation choice at the end.
pub fn run(
    gpu: &mut Cuda,
    sizes: &Sizes,
    reps: usize,
    skip: &[FusedImpl],
) -> Result<Vec<LowRankRow>> {
    let cap = sizes.ranks[sizes.ranks.len() - 1];
    // The unfused cuBLASLt path last: every row's `speedup_vs_unfused` divides by it. On Hopper the
    // fused kernels run three times: the default TMA mainloop (`fused`), the cp.async wgmma one
    // (`wgmma`) and mma.sync only (`mma`); elsewhere all three are mma.sync, timed once. With a
    // base, `merged` times `fused` on the merged weight too.
    let hopper = gpu.info().compute_capability.0 == 9;
    let fused = [
        (FusedImpl::Fused, LowRankImpl::Fused, false, "fused"),
        (FusedImpl::Merged, LowRankImpl::Fused, true, "merged"),
        (FusedImpl::Wgmma, LowRankImpl::Wgmma, false, "wgmma"),
        (FusedImpl::Mma, LowRankImpl::Mma, false, "mma"),
    ];
    let on_this_gpu = |f: FusedImpl| hopper || matches!(f, FusedImpl::Fused | FusedImpl::Merged);
    let mut impls: Vec<_> = fused
        .iter()
        .filter(|(f, ..)| !skip.contains(f) && on_this_gpu(*f))
        .map(|&(_, imp, merge, name)| (imp, merge, name))
        .collect();
    impls.push((LowRankImpl::Cublas, false, "cublas"));
    print_header();
    let mut rows = Vec::new();
    for &(n_in, n_out) in sizes.layers {
        for &n in sizes.rows {
            let inp = Inputs::new(gpu, n, n_in, n_out, cap)?;
            let [dense_fwd, dense_bwd, dense_full_bwd] =
                time_dense(gpu, n, n_in, n_out, &inp, reps)?;
            let dense_flops = 2.0 * (n * n_in * n_out) as f64;
            for &rank in sizes.ranks {
                let sh = LowRankShape {
                    n,
                    n_in,
                    n_out,
                    rank,
                };
                let mut out = Outputs::new(gpu, &sh)?;
                for forward in [true, false] {
                    for base in [true, false] {
                        let active: Vec<_> =
                            impls.iter().filter(|i| base || !i.1).copied().collect();
                        let mut times = Vec::with_capacity(active.len());
                        let mut tiles = Vec::with_capacity(active.len());
                        for &(imp, merge, _) in &active {
                            gpu.set_lowrank_impl(imp);
                            gpu.set_merge_base(merge);
                            tiles.push(product_tile(gpu, &sh, forward)?);
                            times.push(if forward {
                                time_forward(gpu, &sh, base, &inp, &mut out, reps)?
                            } else {
                                time_backward(gpu, &sh, base, &inp, &mut out, reps)?
                            });
                        }
                        let unfused = times[times.len() - 1];
                        let dense = match (forward, base) {
                            (true, _) => dense_fwd,
                            (false, true) => dense_bwd,
                            (false, false) => dense_full_bwd,
                        };
                        let flops = if forward {
                            sh.forward_flops(base)
                        } else {
                            sh.backward_flops(base)
                        };
                        let pass = format!(
                            "{} {}",
                            if forward { "fwd" } else { "bwd" },
                            if base { "w0+lr" } else { "lr" }
                        );
                        for ((&(_, _, imp), &ms), &tile) in active.iter().zip(&times).zip(&tiles) {
                            let tflops = flops / (ms * 1e-3) / 1e12;
                            let row = LowRankRow {
                                pass: pass.clone(),
                                shape: format!("{n}x{n_in}>{n_out} r{rank}"),
                                imp,
                                median_ms: ms,
                                tflops,
                                frac_of_peak: tflops / PEAK_TFLOPS,
                                speedup_vs_dense: dense / ms,
                                speedup_vs_unfused: unfused / ms,
                                vs_flop_budget: base.then(|| ms / (dense * flops / dense_flops)),
                                tile,
                            };
                            print_row(&row);
                            rows.push(row);
                        }
                    }
                }
            }
        }
    }
    gpu.set_lowrank_impl(LowRankImpl::from_env()?);
    gpu.set_merge_base(merge_base_from_env()?);
    Ok(rows)
}

fn print_header() {
    println!(
        "{:<12} {:<22} {:<7} {:>9} {:>8} {:>7} {:>8} {:>9} {:>7}  tile",
        "pass", "shape", "impl", "median ms", "TF/s", "of peak", "x dense", "x unfused", "budget"
    );
}

fn print_row(r: &LowRankRow) {
    let budget = r
        .vs_flop_budget
        .map_or("-".to_string(), |b| format!("{b:.2}"));
    println!(
        "{:<12} {:<22} {:<7} {:>9.4} {:>8.1} {:>6.1}% {:>8.2} {:>9.2} {:>7}  {}",
        r.pass,
        r.shape,
        r.imp,
        r.median_ms,
        r.tflops,
        100.0 * r.frac_of_peak,
        r.speedup_vs_dense,
        r.speedup_vs_unfused,
        budget,
        r.tile.unwrap_or("-")
    );
}
