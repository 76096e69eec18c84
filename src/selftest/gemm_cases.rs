//! Selftest cases of the dense GEMMs (cuBLASLt on CUDA): products in every transpose and output
//! dtype, accumulating, with f32 operands and batched; and a linear layer's fused epilogues (bias,
//! GELU, residual, GELU′) and parameter gradients.

use super::{dt, input, poisoned, scaled_input, BF16_BOUND, GEMM_F32_BOUND};
use crate::backend::{Backend, Buffer, DType, DenseGrads, Gemm};
use crate::util::rng::Rng;
use anyhow::Result;

/// What a `GemmCase::Bias` does after the bias.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BiasThen {
    /// Nothing (`gemm_bias`).
    Nothing,
    /// GELU(C) too (`gemm_bias_gelu`); the output compared is C followed by GELU(C).
    Gelu,
    /// C += a residual matrix (`gemm_bias_residual`; on CUDA, cuBLASLt's input matrix C).
    Residual,
}

#[derive(Clone, Debug)]
pub enum GemmCase {
    /// C = α·op(A)·op(B) + β·C (`gemm`).
    Plain { g: Gemm, ab: DType, out: DType },
    /// A linear layer's forward, bf16 throughout: C = A·B (or A·Bᵀ) + bias, with the bias
    /// `bias_offset` elements into its buffer (0: 16-byte aligned, cuBLASLt's bias epilogue on
    /// CUDA; 1: the GEMM and a bias pass), then `then`.
    Bias {
        g: Gemm,
        bias_offset: usize,
        then: BiasThen,
    },
    /// The MLP projection's dx: C = (A·Bᵀ) ⊙ GELU′(U), bf16 throughout, U `offset` elements into
    /// its buffer (0: cuBLASLt's DGELU epilogue on CUDA; 1: the GEMM and a GELU backward pass).
    GeluBackward { g: Gemm, offset: usize },
    /// A dense linear layer's parameter gradients from bf16 x (rows × n_in) and dy (rows × n_out),
    /// accumulated onto random f32 values in one buffer (db before dW, at odd offsets): dW, or
    /// with `db` the bias gradient (its own case, so n_out sums are not hidden among n_in·n_out).
    LinearParamGrads {
        rows: usize,
        n_in: usize,
        n_out: usize,
        db: bool,
    },
}

pub fn cases() -> Vec<GemmCase> {
    let mut cases = Vec::new();
    let shapes = [
        (1, 1, 1),
        (17, 33, 65),
        (128, 256, 64),
        (257, 129, 1023),
        (1024, 768, 3072),
        (512, 4096, 1024),
    ];
    for &(m, n, k) in &shapes {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut g = Gemm::new(m, n, k);
            g.trans_a = ta;
            g.trans_b = tb;
            for out in [DType::F32, DType::BF16] {
                cases.push(GemmCase::Plain {
                    g,
                    ab: DType::BF16,
                    out,
                });
            }
        }
    }
    // Accumulating into C (the dW += xᵀ·dy of a backward pass), f32 operands, and a batch.
    cases.push(GemmCase::Plain {
        g: Gemm::new(96, 80, 200).trans_a().beta(1.0).alpha(0.5),
        ab: DType::BF16,
        out: DType::F32,
    });
    // f32 operands: the DLRA bases' products (Gram matrices over n = 3072, the projection
    // E −= Pᵀ·U, rotations), which need true f32 (a TF32 path would fail the bound).
    for g in [
        Gemm::new(65, 47, 129),
        Gemm::new(64, 64, 3072).trans_b(),
        Gemm::new(61, 3072, 61).trans_a().alpha(-1.0).beta(1.0),
        Gemm::new(128, 768, 128),
    ] {
        cases.push(GemmCase::Plain {
            g,
            ab: DType::F32,
            out: DType::F32,
        });
    }
    cases.push(GemmCase::Plain {
        g: Gemm::new(65, 33, 17).trans_b().batched(12),
        ab: DType::BF16,
        out: DType::F32,
    });
    for g in [
        Gemm::new(17, 40, 65),
        Gemm::new(257, 136, 1023).trans_b(),
        Gemm::new(1024, 3072, 768),
    ] {
        for bias_offset in [0, 1] {
            for then in [BiasThen::Nothing, BiasThen::Gelu, BiasThen::Residual] {
                cases.push(GemmCase::Bias {
                    g,
                    bias_offset,
                    then,
                });
            }
            // dx = dy·Wᵀ of the same layer: n a multiple of 8, as cuBLASLt's DGELU needs.
            let g = Gemm::new(g.m, g.n, g.k).trans_b();
            cases.push(GemmCase::GeluBackward {
                g,
                offset: bias_offset,
            });
        }
    }
    // Ragged, one row (where cuBLASLt's bias gradient is not used), and GPT-2 small's fc.
    for (rows, n_in, n_out) in [
        (17, 40, 65),
        (1000, 96, 200),
        (1, 16, 24),
        (8192, 768, 3072),
    ] {
        for db in [false, true] {
            cases.push(GemmCase::LinearParamGrads {
                rows,
                n_in,
                n_out,
                db,
            });
        }
    }
    cases
}

impl GemmCase {
    pub fn op(&self) -> String {
        match self {
            GemmCase::Plain { g, ab, out } => format!(
                "gemm_{}{}_{}->{}{}",
                if g.trans_a { "t" } else { "n" },
                if g.trans_b { "t" } else { "n" },
                dt(*ab),
                dt(*out),
                if g.beta != 0.0 { "_acc" } else { "" }
            ),
            GemmCase::Bias {
                g,
                bias_offset,
                then,
            } => format!(
                "gemm_bias{}_n{}_bf16{}",
                match then {
                    BiasThen::Nothing => "",
                    BiasThen::Gelu => "_gelu",
                    BiasThen::Residual => "_residual",
                },
                if g.trans_b { "t" } else { "n" },
                if *bias_offset > 0 { "_unaligned" } else { "" }
            ),
            GemmCase::LinearParamGrads { db, .. } => {
                format!("linear_param_grads_{}", if *db { "db" } else { "dw" })
            }
            GemmCase::GeluBackward { offset, .. } => format!(
                "gemm_gelu_backward_nt_bf16{}",
                if *offset > 0 { "_unaligned" } else { "" }
            ),
        }
    }

    /// Multiply-adds (`Case::work`).
    pub fn work(&self) -> f64 {
        let f = |x: usize| x as f64;
        match self {
            GemmCase::Plain { g, .. }
            | GemmCase::Bias { g, .. }
            | GemmCase::GeluBackward { g, .. } => f(g.m) * f(g.n) * f(g.k) * f(g.batch),
            GemmCase::LinearParamGrads {
                rows, n_in, n_out, ..
            } => f(*rows) * f(*n_in) * f(*n_out),
        }
    }

    pub fn shape(&self) -> String {
        match self {
            GemmCase::Plain { g, .. } if g.batch > 1 => {
                format!("{}x{}x{} x{}", g.m, g.n, g.k, g.batch)
            }
            GemmCase::Plain { g, .. }
            | GemmCase::Bias { g, .. }
            | GemmCase::GeluBackward { g, .. } => {
                format!("{}x{}x{}", g.m, g.n, g.k)
            }
            GemmCase::LinearParamGrads {
                rows, n_in, n_out, ..
            } => format!("{rows}x{n_in}>{n_out}"),
        }
    }

    pub fn bound(&self) -> f64 {
        match self {
            GemmCase::Plain {
                out: DType::BF16, ..
            }
            | GemmCase::Bias { .. }
            | GemmCase::GeluBackward { .. } => BF16_BOUND,
            GemmCase::Plain { .. } | GemmCase::LinearParamGrads { .. } => GEMM_F32_BOUND,
        }
    }

    /// Runs the case on `b` with inputs drawn from `rng` (`Case::run`).
    pub fn run<B: Backend>(&self, b: &B, rng: &mut Rng) -> Result<Vec<f32>> {
        Ok(match self {
            GemmCase::Plain { g, ab, out } => {
                let (la, lb, lc) = g.required_lens();
                let a = input(b, rng, *ab, la)?;
                let bm = input(b, rng, *ab, lb)?;
                let mut c = if g.beta != 0.0 {
                    input(b, rng, *out, lc)?
                } else {
                    poisoned(b, *out, lc)?
                };
                b.gemm(g, a.all(), bm.all(), c.all_mut())?;
                b.download(c.all())?
            }
            GemmCase::Bias {
                g,
                bias_offset,
                then,
            } => {
                let (la, lb, lc) = g.required_lens();
                let bf = DType::BF16;
                let (a, bm) = (input(b, rng, bf, la)?, input(b, rng, bf, lb)?);
                let bias = input(b, rng, bf, g.n + bias_offset)?;
                let mut c = poisoned(b, bf, lc)?;
                let bias = bias.at(*bias_offset, g.n);
                match then {
                    BiasThen::Nothing => {
                        b.gemm_bias(g, a.all(), bm.all(), bias, c.all_mut())?;
                        b.download(c.all())?
                    }
                    BiasThen::Gelu => {
                        let mut out = poisoned(b, bf, lc)?;
                        b.gemm_bias_gelu(g, a.all(), bm.all(), bias, c.all_mut(), out.all_mut())?;
                        [b.download(c.all())?, b.download(out.all())?].concat()
                    }
                    BiasThen::Residual => {
                        // At C's scale (A and B are N(0, 1): C's variance is k), so a residual
                        // the epilogue lost in part could not hide under the bf16 bound.
                        let r = scaled_input(b, rng, bf, lc, (g.k as f64).sqrt())?;
                        b.gemm_bias_residual(g, a.all(), bm.all(), bias, r.all(), c.all_mut())?;
                        b.download(c.all())?
                    }
                }
            }
            GemmCase::LinearParamGrads {
                rows,
                n_in,
                n_out,
                db,
            } => {
                let (bf, (n_in, n_out)) = (DType::BF16, (*n_in, *n_out));
                let x = input(b, rng, bf, rows * n_in)?;
                let dy = input(b, rng, bf, rows * n_out)?;
                let (db_at, dw_at) = (3, 4 + n_out);
                let mut grads = input(b, rng, DType::F32, dw_at + n_in * n_out + 5)?;
                let buf = &mut grads;
                let dense = DenseGrads {
                    buf,
                    dw: dw_at,
                    db: db_at,
                };
                b.linear_param_grads(x.all(), dy.all(), (n_in, n_out), dense)?;
                match db {
                    true => b.download(grads.at(db_at, n_out))?,
                    false => b.download(grads.at(dw_at, n_in * n_out))?,
                }
            }
            GemmCase::GeluBackward { g, offset } => {
                let (la, lb, lc) = g.required_lens();
                let bf = DType::BF16;
                let (a, bm) = (input(b, rng, bf, la)?, input(b, rng, bf, lb)?);
                let u = input(b, rng, bf, lc + offset)?;
                let mut c = poisoned(b, bf, lc)?;
                let u = u.at(*offset, lc);
                b.gemm_gelu_backward(g, a.all(), bm.all(), u, c.all_mut())?;
                b.download(c.all())?
            }
        })
    }
}
