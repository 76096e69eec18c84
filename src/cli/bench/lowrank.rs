//! `lowrank bench lowrank-linear`: the low-rank linear layer, fused kernels against the unfused
//! cuBLASLt path and against dense cuBLASLt x·W0 of the same layer, on GPT-2 MLP shapes.

use super::{random_bufs, rotation, time_median, Timing, PEAK_TFLOPS};
use crate::backend::cuda::{
    merge_base_from_env, multicast_clusters, product_tile, Cuda, CudaBuf, LowRankImpl,
};
use crate::backend::{
    Backend, Buffer, DType, Gemm, LinearEpilogue, LowRankGrads, LowRankShape, LowRankWeights,
};
use anyhow::{bail, Context, Result};
use serde::Serialize;

/// The layers, row counts and ranks timed: every layer at every row count and rank.
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

impl Sizes {
    pub fn groups(&self) -> Vec<Group> {
        let layers = self.layers.iter();
        let at_rows = |&(n_in, n_out): &(usize, usize)| {
            self.rows.iter().map(move |&n| Group {
                n_in,
                n_out,
                n,
                ranks: self.ranks.to_vec(),
            })
        };
        layers.flat_map(at_rows).collect()
    }
}

/// One layer at one row count, timed at each of its ranks (ascending: the last sizes the factors'
/// buffers), after dense cuBLASLt on the same operands.
pub struct Group {
    n_in: usize,
    n_out: usize,
    n: usize,
    ranks: Vec<usize>,
}

/// `bench lowrank-linear --shape ROWS,N_IN,N_OUT,RANK`: one layer of the user's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerShape {
    n: usize,
    n_in: usize,
    n_out: usize,
    rank: usize,
}

impl LayerShape {
    pub fn group(&self) -> Group {
        Group {
            n_in: self.n_in,
            n_out: self.n_out,
            n: self.n,
            ranks: vec![self.rank],
        }
    }
}

impl std::str::FromStr for LayerShape {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let parts = s
            .split(',')
            .map(|p| {
                let v = p.trim().parse::<usize>().ok().filter(|&v| v > 0);
                v.with_context(|| format!("{p:?} in {s:?} is not a positive whole number"))
            })
            .collect::<Result<Vec<_>>>()?;
        let &[n, n_in, n_out, rank] = parts.as_slice() else {
            bail!("{s:?} is not a layer: write ROWS,N_IN,N_OUT,RANK, e.g. 8192,768,3072,96");
        };
        if rank > n_in.min(n_out) {
            bail!(
                "rank {rank} in {s:?} exceeds min(N_IN, N_OUT) = {}",
                n_in.min(n_out)
            );
        }
        Ok(LayerShape {
            n,
            n_in,
            n_out,
            rank,
        })
    }
}

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
    timing: &Timing,
) -> Result<f64> {
    let sets = inp.x.len();
    time_median(gpu, timing, "", |i| {
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
    timing: &Timing,
) -> Result<f64> {
    let sets = inp.x.len();
    let Outputs {
        t, s, dx, grads, ..
    } = out;
    let dvt = sh.rank * sh.n_in;
    time_median(gpu, timing, "", |i| {
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
    timing: &Timing,
) -> Result<[f64; 3]> {
    let sets = inp.x.len();
    let mut y = gpu.alloc(DType::BF16, n * n_out)?;
    let mut dx = gpu.alloc(DType::BF16, n * n_in)?;
    let mut dw = gpu.alloc(DType::F32, n_in * n_out)?;
    let fwd = Gemm::new(n, n_out, n_in);
    let dgrad = Gemm::new(n, n_in, n_out).trans_b();
    let wgrad = Gemm::new(n_in, n_out, n).trans_a().beta(1.0);
    let f = time_median(gpu, timing, "fwd", |i| {
        gpu.gemm(&fwd, inp.x[i % sets].all(), inp.w0.all(), y.all_mut())
    })?;
    let d = time_median(gpu, timing, "bwd dx", |i| {
        gpu.gemm(&dgrad, inp.dy[i % sets].all(), inp.w0.all(), dx.all_mut())
    })?;
    let full = time_median(gpu, timing, "bwd dx+dW", |i| {
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
    /// The TMA kernel's ping-pong schedule (Hopper)
    Pingpong,
    /// The TMA kernel in clusters of two blocks sharing B by multicast (Hopper)
    Multicast,
    Wgmma,
    Mma,
}

/// Every shape, rank, pass and variant, each row printed as it is measured (a run cut short keeps
/// what it measured); restores the backend's implementation choice at the end.
pub fn run(
    gpu: &mut Cuda,
    groups: &[Group],
    timing: &Timing,
    skip: &[FusedImpl],
) -> Result<Vec<LowRankRow>> {
    // The unfused cuBLASLt path last: every row's `speedup_vs_unfused` divides by it. On Hopper the
    // fused kernels run five times: the default TMA mainloop (`fused`), its ping-pong schedule
    // (`pingpong`), its clusters sharing B (`multicast`), the cp.async wgmma one (`wgmma`) and
    // mma.sync only (`mma`); elsewhere all five are mma.sync, timed once. With a base, `merged`
    // times `fused` on the merged weight too.
    let hopper = gpu.info().compute_capability.0 == 9;
    let fused = [
        (FusedImpl::Fused, LowRankImpl::Fused, false, "fused"),
        (FusedImpl::Merged, LowRankImpl::Fused, true, "merged"),
        (
            FusedImpl::Pingpong,
            LowRankImpl::Pingpong,
            false,
            "pingpong",
        ),
        (
            FusedImpl::Multicast,
            LowRankImpl::Multicast,
            false,
            "multicast",
        ),
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
    if impls.iter().any(|i| i.0 == LowRankImpl::Multicast) {
        if let Some(n) = multicast_clusters(gpu)? {
            println!(
                "multicast: {n} clusters of 2 blocks fit at once on {} SMs (its persistent grid)",
                gpu.info().sms
            );
        }
    }
    print_header();
    let mut rows = Vec::new();
    for g in groups {
        let (n, n_in, n_out) = (g.n, g.n_in, g.n_out);
        let inp = Inputs::new(gpu, n, n_in, n_out, g.ranks[g.ranks.len() - 1])?;
        let dense = timing.labelled(format!("dense {n}x{n_in}>{n_out}"));
        let [dense_fwd, dense_bwd, dense_full_bwd] = time_dense(gpu, n, n_in, n_out, &inp, &dense)?;
        let dense_flops = 2.0 * (n * n_in * n_out) as f64;
        for &rank in &g.ranks {
            let sh = LowRankShape {
                n,
                n_in,
                n_out,
                rank,
            };
            let shape = format!("{n}x{n_in}>{n_out} r{rank}");
            let mut out = Outputs::new(gpu, &sh)?;
            for forward in [true, false] {
                for base in [true, false] {
                    let pass = format!(
                        "{} {}",
                        if forward { "fwd" } else { "bwd" },
                        if base { "w0+lr" } else { "lr" }
                    );
                    let active: Vec<_> = impls.iter().filter(|i| base || !i.1).copied().collect();
                    let mut times = Vec::with_capacity(active.len());
                    let mut tiles = Vec::with_capacity(active.len());
                    for &(imp, merge, name) in &active {
                        gpu.set_lowrank_impl(imp);
                        gpu.set_merge_base(merge);
                        tiles.push(product_tile(gpu, &sh, forward)?);
                        let timing = timing.labelled(format!("{name} {pass} {shape}"));
                        times.push(if forward {
                            time_forward(gpu, &sh, base, &inp, &mut out, &timing)?
                        } else {
                            time_backward(gpu, &sh, base, &inp, &mut out, &timing)?
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
                    for ((&(_, _, imp), &ms), &tile) in active.iter().zip(&times).zip(&tiles) {
                        let tflops = flops / (ms * 1e-3) / 1e12;
                        let row = LowRankRow {
                            pass: pass.clone(),
                            shape: shape.clone(),
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
    gpu.set_lowrank_impl(LowRankImpl::from_env()?);
    gpu.set_merge_base(merge_base_from_env()?);
    Ok(rows)
}

fn print_header() {
    println!(
        "{:<12} {:<22} {:<9} {:>9} {:>8} {:>7} {:>8} {:>9} {:>7}  tile",
        "pass", "shape", "impl", "median ms", "TF/s", "of peak", "x dense", "x unfused", "budget"
    );
}

fn print_row(r: &LowRankRow) {
    let budget = r
        .vs_flop_budget
        .map_or("-".to_string(), |b| format!("{b:.2}"));
    println!(
        "{:<12} {:<22} {:<9} {:>9.4} {:>8.1} {:>6.1}% {:>8.2} {:>9.2} {:>7}  {}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_shapes_parse_or_say_what_is_wrong() {
        let shape: LayerShape = " 8192, 768,3072 ,96".parse().unwrap();
        assert_eq!(
            shape,
            LayerShape {
                n: 8192,
                n_in: 768,
                n_out: 3072,
                rank: 96
            }
        );
        let g = shape.group();
        assert_eq!((g.n, g.n_in, g.n_out, g.ranks), (8192, 768, 3072, vec![96]));
        let err = |s: &str| format!("{:#}", s.parse::<LayerShape>().unwrap_err());
        assert!(err("8192,768,3072").contains("ROWS,N_IN,N_OUT,RANK"));
        assert!(err("8192,768,3072,96,1").contains("ROWS,N_IN,N_OUT,RANK"));
        assert!(err("8192,768,0,96").contains("\"0\" in"));
        assert!(err("8192,768,3072,r96").contains("not a positive whole number"));
        assert!(err("8192,768,3072,769").contains("exceeds min(N_IN, N_OUT) = 768"));
    }

    /// The default grid: every layer at every row count, each group with every rank.
    #[test]
    fn the_grid_pairs_every_layer_with_every_row_count() {
        let groups = FULL.groups();
        assert_eq!(groups.len(), FULL.layers.len() * FULL.rows.len());
        let keys: std::collections::BTreeSet<_> =
            groups.iter().map(|g| (g.n_in, g.n_out, g.n)).collect();
        assert_eq!(keys.len(), groups.len());
        assert!(keys.contains(&(3072, 768, 16384)));
        assert!(groups.iter().all(|g| g.ranks == FULL.ranks));
    }
}
