//! The selftest's cases: each op family at ragged and realistic shapes, in every dtype it supports.

use super::draws::normals;
use crate::backend::{AdamW, Backend, Buffer, DType, HeavyBall};
use crate::linalg::factor::random_orthonormal;
use crate::lowrank::dlra::basis::{extend, Extension};
use crate::util::rng::Rng;
use anyhow::Result;

#[path = "gemm_cases.rs"]
mod gemm_cases;
pub use gemm_cases::GemmCase;
#[path = "lowrank_cases.rs"]
mod lowrank_cases;
pub use lowrank_cases::LowRankCase;
#[path = "gpt_cases.rs"]
mod gpt_cases;
pub use gpt_cases::GptCase;
#[path = "model_cases.rs"]
mod model_cases;
pub use model_cases::ModelCase;

/// Bound for ops whose output is f32 and whose only difference is summation order.
const F32_BOUND: f64 = 1e-5;
/// Bound for GEMMs with f32 output: bf16 products are exact in f32, so only accumulation order
/// differs, which grows like √k·2⁻²⁴.
const GEMM_F32_BOUND: f64 = 1e-4;
/// Bound for bf16 outputs: one rounding to 8 mantissa bits (2⁻⁹ relative) plus ties that may round
/// the other way when the f32 values differ in their last bits.
const BF16_BOUND: f64 = 1e-2;

#[derive(Clone, Debug)]
pub enum Case {
    /// A dense GEMM, or a linear layer's fused epilogue or parameter gradients.
    Gemm(GemmCase),
    Cast {
        from: DType,
        to: DType,
        n: usize,
    },
    /// An upload into a window `offset` elements into a buffer filled with 0.5, and a download of
    /// the window and one element either side: the host side of a device's copies (in pieces past
    /// `HOST_STAGE` values for bf16), and that nothing beside the window is written.
    Transfer {
        dtype: DType,
        n: usize,
        offset: usize,
    },
    Fill {
        dtype: DType,
        n: usize,
    },
    /// AdamW's f32 state (params, m, v) or, with `copy`, the compute copy it writes.
    AdamW {
        n: usize,
        copy: Option<DType>,
    },
    /// Heavy ball's f32 state (params, velocity) or, with `copy`, the compute copy it writes.
    HeavyBall {
        n: usize,
        copy: Option<DType>,
    },
    SumSquares {
        dtype: DType,
        n: usize,
    },
    /// DLRA's basis extension (projections, CholeskyQR2 in f32 GEMMs): the r new rows of a basis
    /// of length-n rows, from r random directions.
    DlraExtend {
        n: usize,
        r: usize,
    },
    /// One output of the low-rank linear layer's forward or backward.
    LowRank(LowRankCase),
    /// An op of the GPT-2 step.
    Gpt(GptCase),
    /// A whole forward and backward of the tiny GPT.
    Model(ModelCase),
}

/// A window of `n` values of `dtype` drawn from N(0, 1).
fn input<B: Backend>(b: &B, rng: &mut Rng, dtype: DType, n: usize) -> Result<B::Buf> {
    scaled_input(b, rng, dtype, n, 1.0)
}

/// A window of `n` values of `dtype` drawn from N(0, std²).
fn scaled_input<B: Backend>(
    b: &B,
    rng: &mut Rng,
    dtype: DType,
    n: usize,
    std: f64,
) -> Result<B::Buf> {
    let mut buf = b.alloc(dtype, n)?;
    b.upload(&normals(rng, n, std), buf.all_mut())?;
    Ok(buf)
}

/// A window of `n` NaNs: an output element the op leaves unwritten fails the comparison.
fn poisoned<B: Backend>(b: &B, dtype: DType, n: usize) -> Result<B::Buf> {
    let mut buf = b.alloc(dtype, n)?;
    b.fill(buf.all_mut(), f32::NAN)?;
    Ok(buf)
}

fn dt(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
    }
}

/// Every case the selftest runs.
pub fn all_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = gemm_cases::cases().into_iter().map(Case::Gemm).collect();
    for n in [1, 1_000_003] {
        for (from, to) in [
            (DType::F32, DType::BF16),
            (DType::BF16, DType::F32),
            (DType::F32, DType::F32),
            (DType::BF16, DType::BF16),
        ] {
            cases.push(Case::Cast { from, to, n });
        }
    }
    // A window of f32, and of bf16 past a device's host staging (two pieces each way).
    for (dtype, n) in [
        (DType::F32, 1000),
        (DType::BF16, crate::backend::HOST_STAGE + 4099),
    ] {
        cases.push(Case::Transfer {
            dtype,
            n,
            offset: 3,
        });
    }
    cases.push(Case::Fill {
        dtype: DType::F32,
        n: 12_345,
    });
    cases.push(Case::Fill {
        dtype: DType::BF16,
        n: 12_345,
    });
    for n in [1, 100_003] {
        cases.push(Case::AdamW { n, copy: None });
        cases.push(Case::AdamW {
            n,
            copy: Some(DType::BF16),
        });
        cases.push(Case::HeavyBall { n, copy: None });
        cases.push(Case::HeavyBall {
            n,
            copy: Some(DType::BF16),
        });
    }
    for n in [1, 3_000_017] {
        cases.push(Case::SumSquares {
            dtype: DType::F32,
            n,
        });
        cases.push(Case::SumSquares {
            dtype: DType::BF16,
            n,
        });
    }
    for (n, r) in [(77, 5), (3072, 64)] {
        cases.push(Case::DlraExtend { n, r });
    }
    cases.extend(gpt_cases::cases().into_iter().map(Case::Gpt));
    cases.extend(model_cases::cases().into_iter().map(Case::Model));
    cases.extend(lowrank_cases::cases().into_iter().map(Case::LowRank));
    cases
}

impl Case {
    pub fn op(&self) -> String {
        match self {
            Case::Gemm(c) => c.op(),
            Case::Cast { from, to, .. } => format!("cast_{}_{}", dt(*from), dt(*to)),
            Case::Transfer { dtype, .. } => format!("transfer_{}", dt(*dtype)),
            Case::Fill { dtype, .. } => format!("fill_{}", dt(*dtype)),
            Case::AdamW { copy: None, .. } => "adamw_state".into(),
            Case::AdamW { copy: Some(d), .. } => format!("adamw_copy_{}", dt(*d)),
            Case::HeavyBall { copy: None, .. } => "heavy_ball_state".into(),
            Case::HeavyBall { copy: Some(d), .. } => format!("heavy_ball_copy_{}", dt(*d)),
            Case::SumSquares { dtype, .. } => format!("sum_squares_{}", dt(*dtype)),
            Case::DlraExtend { .. } => "dlra_extend".into(),
            Case::LowRank(c) => c.op(),
            Case::Gpt(c) => c.op(),
            Case::Model(c) => c.op(),
        }
    }

    /// The case's size in multiply-adds (elements for the elementwise ops), to an order of
    /// magnitude: what `selftest --max-work` compares, so that a slow device (the CPU emulator of
    /// tests/gpu-emu) can leave out the GPT-2-sized cases and keep every kernel variant.
    pub fn work(&self) -> f64 {
        let f = |x: usize| x as f64;
        match self {
            Case::Gemm(c) => c.work(),
            Case::Cast { n, .. }
            | Case::Transfer { n, .. }
            | Case::Fill { n, .. }
            | Case::AdamW { n, .. }
            | Case::HeavyBall { n, .. }
            | Case::SumSquares { n, .. } => f(*n),
            Case::DlraExtend { n, r } => f(*n) * f(*r) * f(*r),
            Case::LowRank(c) => {
                let s = c.sh;
                let base = if c.base { f(s.n_in) * f(s.n_out) } else { 0.0 };
                f(s.n) * (base + f(c.capacity) * f(s.n_in + s.n_out))
            }
            Case::Gpt(c) => f(c.s.batch) * f(c.s.seq) * (f(c.s.seq) * f(c.s.channels) + f(c.vocab)),
            // The tiny GPT (rank 11, 3 × 37 tokens): a few million multiply-adds a step.
            Case::Model(_) => 1e7,
        }
    }

    pub fn shape(&self) -> String {
        match self {
            Case::Gemm(c) => c.shape(),
            Case::Cast { n, .. }
            | Case::Fill { n, .. }
            | Case::AdamW { n, .. }
            | Case::HeavyBall { n, .. }
            | Case::SumSquares { n, .. } => n.to_string(),
            Case::Transfer { n, offset, .. } => format!("{n} at {offset}"),
            Case::DlraExtend { n, r } => format!("{r}x{n}"),
            Case::LowRank(c) => c.shape(),
            Case::Gpt(c) => c.shape(),
            Case::Model(c) => c.shape(),
        }
    }

    pub fn bound(&self) -> f64 {
        match self {
            Case::Gemm(c) => c.bound(),
            Case::Cast {
                to: DType::BF16, ..
            }
            | Case::AdamW {
                copy: Some(DType::BF16),
                ..
            }
            | Case::HeavyBall {
                copy: Some(DType::BF16),
                ..
            } => BF16_BOUND,
            // bf16 operands and a bf16 t or s on both sides: an element of t that rounds the other
            // way (2⁻⁸ relative) moves f32 outputs too, so every output gets the bf16 bound.
            Case::LowRank(_) => BF16_BOUND,
            Case::Gpt(c) => c.bound(),
            Case::Model(c) => c.bound(),
            // Orthonormalisation divides by the new directions' lengths: f32 GEMM rounding, amplified.
            Case::DlraExtend { .. } => GEMM_F32_BOUND,
            _ => F32_BOUND,
        }
    }

    /// Whether the case applies to `b`'s implementation of its op (see `GptCase::applies`).
    pub fn applies<B: Backend>(&self, b: &B) -> bool {
        match self {
            Case::Gpt(c) => c.applies(b),
            _ => true,
        }
    }

    /// Runs the case on `b` with inputs drawn from `seed`, returning the output as f64.
    pub fn run<B: Backend>(&self, b: &B, seed: u64) -> Result<Vec<f64>> {
        let mut rng = Rng::new(seed);
        let out: Vec<f32> = match self {
            Case::Gemm(c) => c.run(b, &mut rng)?,
            Case::Transfer { dtype, n, offset } => {
                let mut buf = b.alloc(*dtype, n + offset + 1)?;
                b.fill(buf.all_mut(), 0.5)?;
                b.upload(&normals(&mut rng, *n, 1.0), buf.at_mut(*offset, *n))?;
                b.download(buf.at(offset - 1, n + 2))?
            }
            Case::Cast { from, to, n } => {
                let src = input(b, &mut rng, *from, *n)?;
                let mut dst = poisoned(b, *to, *n)?;
                b.cast(src.all(), dst.all_mut())?;
                b.download(dst.all())?
            }
            Case::Fill { dtype, n } => {
                let mut dst = input(b, &mut rng, *dtype, *n)?;
                b.fill(dst.all_mut(), 0.3)?;
                b.download(dst.all())?
            }
            Case::AdamW { n, copy } => {
                let mut p = input(b, &mut rng, DType::F32, *n)?;
                let g = input(b, &mut rng, DType::F32, *n)?;
                let mut m = input(b, &mut rng, DType::F32, *n)?;
                // v must be non-negative: square a normal draw.
                let v_host: Vec<f32> = normals(&mut rng, *n, 1.0).iter().map(|x| x * x).collect();
                let mut v = b.alloc(DType::F32, *n)?;
                b.upload(&v_host, v.all_mut())?;
                let hp = AdamW {
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.95,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    step: 7,
                    grad_scale: 0.5,
                };
                match copy {
                    None => {
                        b.adamw(&hp, p.all_mut(), g.all(), m.all_mut(), v.all_mut(), None)?;
                        [
                            b.download(p.all())?,
                            b.download(m.all())?,
                            b.download(v.all())?,
                        ]
                        .concat()
                    }
                    Some(d) => {
                        let mut c = poisoned(b, *d, *n)?;
                        b.adamw(
                            &hp,
                            p.all_mut(),
                            g.all(),
                            m.all_mut(),
                            v.all_mut(),
                            Some(c.all_mut()),
                        )?;
                        b.download(c.all())?
                    }
                }
            }
            Case::HeavyBall { n, copy } => {
                let mut p = input(b, &mut rng, DType::F32, *n)?;
                let g = input(b, &mut rng, DType::F32, *n)?;
                let mut z = input(b, &mut rng, DType::F32, *n)?;
                let hp = HeavyBall {
                    h: 0.3,
                    friction: 0.1,
                    weight_decay: 0.1,
                    grad_scale: 0.5,
                };
                match copy {
                    None => {
                        b.heavy_ball(&hp, p.all_mut(), g.all(), z.all_mut(), None)?;
                        [b.download(p.all())?, b.download(z.all())?].concat()
                    }
                    Some(d) => {
                        let mut c = poisoned(b, *d, *n)?;
                        b.heavy_ball(&hp, p.all_mut(), g.all(), z.all_mut(), Some(c.all_mut()))?;
                        b.download(c.all())?
                    }
                }
            }
            Case::SumSquares { dtype, n } => {
                let x = input(b, &mut rng, *dtype, *n)?;
                // From 16 elements on, three windows, one empty, with gaps of 5 between and after
                // (a norm over a model's trained tensors alone): on a GPU each window is its own
                // launch into one partials buffer.
                let n = *n;
                let windows = match n {
                    0..16 => vec![x.all()],
                    _ => vec![
                        x.at(0, n / 3),
                        x.at(n / 3, 0),
                        x.at(n / 3 + 5, n - n / 3 - 10),
                    ],
                };
                return Ok(vec![b.sum_squares(&windows)?]);
            }
            Case::DlraExtend { n, r } => {
                let (n, r) = (*n, *r);
                let u = random_orthonormal(n, r, &mut rng);
                let mut rows: Vec<f32> = (0..r)
                    .flat_map(|j| (0..n).map(move |i| (i, j)))
                    .map(|(i, j)| u[(i, j)] as f32)
                    .collect();
                rows.resize(2 * r * n, f32::NAN);
                let mut basis = b.alloc(DType::F32, 2 * r * n)?;
                b.upload(&rows, basis.all_mut())?;
                let dir = input(b, &mut rng, DType::F32, r * n)?;
                let job = Extension {
                    name: "selftest",
                    basis: 0,
                    dir: 0,
                    n,
                    r,
                    seed,
                };
                extend(b, &mut basis, &dir, &[job])?;
                b.download(basis.at(r * n, r * n))?
            }
            Case::LowRank(c) => c.run(b, seed)?,
            Case::Gpt(c) => c.run(b, seed)?,
            Case::Model(c) => c.run(b, seed)?,
        };
        Ok(out.into_iter().map(f64::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    #[test]
    fn elementwise_and_update_cases_run_on_the_cpu_and_fill_their_outputs() {
        let plain = |c: &Case| {
            !matches!(
                c,
                Case::Gemm(GemmCase::Plain { .. }) | Case::LowRank(_) | Case::Gpt(_)
            )
        };
        for c in all_cases().into_iter().filter(plain) {
            let out = c.run(&Cpu, 1).unwrap();
            assert!(
                !out.is_empty() && out.iter().all(|x| x.is_finite()),
                "{} {}",
                c.op(),
                c.shape()
            );
        }
    }
}
