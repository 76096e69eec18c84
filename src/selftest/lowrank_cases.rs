//! Selftest cases of the low-rank linear layer: each output of the forward and of the backward is
//! its own case, so a small output (db) is not hidden behind a large one (dx) in one relative error.

use super::{input, poisoned, scaled_input};
use crate::backend::{
    Backend, Buffer, DType, LinearEpilogue, LowRankGrads, LowRankShape, LowRankWeights,
};
use crate::selftest::draws::normals;
use crate::util::rng::Rng;
use anyhow::{bail, Result};

/// Which output a case compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowRankOutput {
    /// Forward: y.
    Y,
    /// Forward with the MLP's GELU fused: GELU(y), written beside y.
    GeluY,
    /// Forward with the residual connection fused: y + r.
    ResidualY,
    /// Forward: t with its padding (which must come out zero).
    T,
    /// Backward: s with its padding.
    S,
    Dx,
    /// Backward with the GELU before the layer fused: dx·GELU′(u).
    DxGelu,
    /// Backward: the live rows of dUt (accumulated onto random values).
    DUt,
    DVt,
    Db,
    /// Backward: rows ≥ rank of dUt and dVt, which must keep their initial values.
    DeadRows,
}

const FORWARD: [LowRankOutput; 2] = [LowRankOutput::Y, LowRankOutput::T];
/// The outputs with an epilogue's work fused, on the shapes that take each mainloop and the
/// fallback.
const EPILOGUES: [LowRankOutput; 3] = [
    LowRankOutput::GeluY,
    LowRankOutput::DxGelu,
    LowRankOutput::ResidualY,
];
const BACKWARD: [LowRankOutput; 6] = [
    LowRankOutput::S,
    LowRankOutput::Dx,
    LowRankOutput::DUt,
    LowRankOutput::DVt,
    LowRankOutput::Db,
    LowRankOutput::DeadRows,
];

#[derive(Clone, Debug)]
pub struct LowRankCase {
    pub sh: LowRankShape,
    /// Rows of Ut and Vt allocated (≥ rank): the rows past rank must be ignored and left alone.
    pub capacity: usize,
    pub base: bool,
    pub bias: bool,
    /// dtype of y or dx.
    pub out: DType,
    pub output: LowRankOutput,
}

fn shape(n: usize, n_in: usize, n_out: usize, rank: usize) -> LowRankShape {
    LowRankShape {
        n,
        n_in,
        n_out,
        rank,
    }
}

/// Every variant on a ragged shape, a GPT-2 shape, and one the fused kernels hand to the cuBLASLt
/// path (n_in not a multiple of 8); the products on a ragged shape big enough for the wide (on
/// Hopper, wgmma) tile and for split-K projections, and on one with more tiles than the GPU has
/// SMs; the realistic outputs on the other GPT-2 MLP shapes and ranks (at n = 1024 their
/// projections split K too).
pub fn cases() -> Vec<LowRankCase> {
    let mut cases = Vec::new();
    let full = [
        (shape(1000, 200, 72, 37), 40),
        (shape(1024, 768, 3072, 100), 104),
        (shape(513, 203, 77, 19), 24),
    ];
    for (sh, capacity) in full {
        for base in [true, false] {
            for bias in [true, false] {
                for out in [DType::BF16, DType::F32] {
                    for output in FORWARD.into_iter().chain(BACKWARD).chain(EPILOGUES) {
                        cases.push(LowRankCase {
                            sh,
                            capacity,
                            base,
                            bias,
                            out,
                            output,
                        });
                    }
                }
            }
        }
    }
    // The products and projections alone on two more shapes. 2500 × 1000 → 1160: ragged in every
    // dimension of the wide tiles (n, n_out and n_in not multiples of 128, K not of 64, rank not of
    // 8), yet with enough blocks (20 × 10 for y, 20 × 8 for dx) that on Hopper the y and dx
    // products take the wgmma mainloop; its projections have 20 blocks, so they split K (s
    // unevenly: 37 k-tiles) and s carries the bias gradient's column sums. 300 × 264 → 1000, in a
    // tenth of the work (for the CPU emulator of the GPU): few blocks (3 × 8 for y, 3 × 3 for dx)
    // over a deep K (6 wgmma k-tiles for y, 17 for dx), so the pipelines refill their stages, and
    // an s projection of 32 k-tiles on 5 row blocks, which splits K with the column sums.
    for sh in [shape(2500, 1000, 1160, 37), shape(300, 264, 1000, 37)] {
        for base in [true, false] {
            for out in [DType::BF16, DType::F32] {
                for output in [
                    LowRankOutput::Y,
                    LowRankOutput::T,
                    LowRankOutput::Dx,
                    LowRankOutput::S,
                    LowRankOutput::Db,
                    LowRankOutput::GeluY,
                    LowRankOutput::DxGelu,
                    LowRankOutput::ResidualY,
                ] {
                    cases.push(LowRankCase {
                        sh,
                        capacity: 40,
                        base,
                        bias: true,
                        out,
                        output,
                    });
                }
            }
        }
    }
    // More output tiles than an H100 has SMs (y: 65 × 5 of Hopper's 128 × 256 tiles, 65 × 10 of
    // 128 × 128; dx: 65 × 4 or 65 × 8), ragged as above: on a GPU, only a shape this large has the
    // TMA kernel's persistent blocks walk several tiles each (2 or 3, unevenly), carrying their
    // stages' phases from one tile to the next. (The emulated GPU of 4 SMs walks them on every
    // shape; these cases are above the work its runs allow.)
    for base in [true, false] {
        for out in [DType::BF16, DType::F32] {
            for output in [LowRankOutput::Y, LowRankOutput::Dx] {
                cases.push(LowRankCase {
                    sh: shape(8200, 1000, 1160, 37),
                    capacity: 40,
                    base,
                    bias: true,
                    out,
                    output,
                });
            }
        }
    }
    for (n_in, n_out) in [(768, 3072), (3072, 768), (1024, 4096), (4096, 1024)] {
        for rank in [16, 100, 256] {
            if (n_in, n_out, rank) == (768, 3072, 100) {
                continue; // in the full set above
            }
            for output in FORWARD.into_iter().chain(BACKWARD) {
                cases.push(LowRankCase {
                    sh: shape(1024, n_in, n_out, rank),
                    capacity: rank + 8,
                    base: true,
                    bias: true,
                    out: DType::BF16,
                    output,
                });
            }
        }
        // Pure low-rank (efficient InRank) at the largest rank.
        for output in [LowRankOutput::Y, LowRankOutput::Dx] {
            cases.push(LowRankCase {
                sh: shape(1024, n_in, n_out, 256),
                capacity: 256,
                base: false,
                bias: true,
                out: DType::BF16,
                output,
            });
        }
    }
    cases
}

impl LowRankCase {
    pub fn op(&self) -> String {
        let dt = match self.out {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
        };
        format!(
            "lowrank_{:?}{}{}_{dt}",
            self.output,
            if self.base { "_w0" } else { "" },
            if self.bias { "_b" } else { "" }
        )
        .to_lowercase()
    }

    pub fn shape(&self) -> String {
        let LowRankShape {
            n,
            n_in,
            n_out,
            rank,
        } = self.sh;
        format!("{n}x{n_in}>{n_out} r{rank}/{}", self.capacity)
    }

    fn is_forward(&self) -> bool {
        FORWARD.contains(&self.output)
            || [LowRankOutput::GeluY, LowRankOutput::ResidualY].contains(&self.output)
    }

    /// Runs the layer on `b` with inputs drawn from `seed` and returns the selected output.
    pub fn run<B: Backend>(&self, b: &B, seed: u64) -> Result<Vec<f32>> {
        // bf16 operands on both backends, so the CPU reference sees exactly the GPU's inputs.
        let (sh, cap, op) = (self.sh, self.capacity, DType::BF16);
        let mut rng = Rng::new(seed);
        let x = input(b, &mut rng, op, sh.n * sh.n_in)?;
        let w0 = input(b, &mut rng, op, sh.n_in * sh.n_out)?;
        let ut = input(b, &mut rng, op, cap * sh.n_in)?;
        let vt = input(b, &mut rng, op, cap * sh.n_out)?;
        let bias = input(b, &mut rng, op, sh.n_out)?;
        let w = LowRankWeights {
            w0: self.base.then(|| w0.all()),
            ut: ut.all(),
            vt: vt.all(),
        };
        if self.is_forward() {
            let mut t = poisoned(b, op, sh.scratch_len())?;
            let mut y = poisoned(b, self.out, sh.n * sh.n_out)?;
            let mut gelu = poisoned(b, self.out, sh.n * sh.n_out)?;
            let bias = self.bias.then(|| bias.all());
            // The residual, drawn only where it is read, so the other cases' inputs stay the same,
            // and at y's scale (x, W0, Ut and Vt are N(0, 1): y's variance is about
            // n_in·(rank + 1 with W0)), so a residual the epilogue lost in part could not hide
            // under the bf16 bound.
            let residual = match self.output {
                LowRankOutput::ResidualY => {
                    let var = sh.n_in * (sh.rank + usize::from(self.base));
                    let std = (var as f64).sqrt();
                    Some(scaled_input(b, &mut rng, self.out, sh.n * sh.n_out, std)?)
                }
                _ => None,
            };
            let epi = match (self.output, &residual) {
                (LowRankOutput::GeluY, _) => LinearEpilogue::Gelu(gelu.all_mut()),
                (_, Some(r)) => LinearEpilogue::Residual(r.all()),
                _ => LinearEpilogue::None,
            };
            b.lowrank_linear_forward(&sh, x.all(), w, bias, t.all_mut(), y.all_mut(), epi)?;
            return b.download(match self.output {
                LowRankOutput::Y | LowRankOutput::ResidualY => y.all(),
                LowRankOutput::GeluY => gelu.all(),
                _ => t.all(),
            });
        }
        // A saved t whose padding is NaN: the backward must read only its live columns.
        let stride = sh.scratch_stride();
        let mut t_host = normals(&mut rng, sh.scratch_len(), 1.0);
        t_host
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| i % stride >= sh.rank)
            .for_each(|(_, v)| *v = f32::NAN);
        let mut t = b.alloc(op, t_host.len())?;
        b.upload(&t_host, t.all_mut())?;
        let dy = input(b, &mut rng, op, sh.n * sh.n_out)?;
        // One gradient buffer as the training step's: dUt's and dVt's capacity rows and db, back to
        // back, drawn at random (the backward accumulates onto them).
        let (dut_at, dvt_at, db_at) = (0, cap * sh.n_in, cap * (sh.n_in + sh.n_out));
        let mut grads = input(b, &mut rng, DType::F32, db_at + sh.n_out)?;
        let mut s = poisoned(b, op, sh.scratch_len())?;
        let mut dx = poisoned(b, self.out, sh.n * sh.n_in)?;
        // The pre-activation u whose GELU was the layer's input, drawn only where it is read, so
        // the other cases see the same inputs as before.
        let gelu_input = match self.output {
            LowRankOutput::DxGelu => Some(input(b, &mut rng, self.out, sh.n * sh.n_in)?),
            _ => None,
        };
        let g = LowRankGrads {
            buf: &mut grads,
            dut: dut_at,
            dvt: dvt_at,
            dbias: self.bias.then_some(db_at),
        };
        b.lowrank_linear_backward(
            &sh,
            x.all(),
            w,
            t.all(),
            dy.all(),
            s.all_mut(),
            dx.all_mut(),
            gelu_input.as_ref().map(|u| u.all()),
            g,
        )?;
        let (live_u, live_v) = (sh.rank * sh.n_in, sh.rank * sh.n_out);
        Ok(match self.output {
            LowRankOutput::S => b.download(s.all())?,
            LowRankOutput::Dx | LowRankOutput::DxGelu => b.download(dx.all())?,
            LowRankOutput::DUt => b.download(grads.at(dut_at, live_u))?,
            LowRankOutput::DVt => b.download(grads.at(dvt_at, live_v))?,
            LowRankOutput::Db => b.download(grads.at(db_at, sh.n_out))?,
            LowRankOutput::DeadRows => [
                b.download(grads.at(dut_at + live_u, dvt_at - dut_at - live_u))?,
                b.download(grads.at(dvt_at + live_v, db_at - dvt_at - live_v))?,
            ]
            .concat(),
            LowRankOutput::Y
            | LowRankOutput::T
            | LowRankOutput::GeluY
            | LowRankOutput::ResidualY => {
                bail!("{:?} is a forward output", self.output)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    /// The harness itself on the CPU: every ragged case runs, overwrites its poisoned output
    /// completely, returns the expected length, and dead rows keep their drawn values.
    #[test]
    fn ragged_cases_run_on_the_cpu_and_fill_their_outputs() {
        let ragged: Vec<LowRankCase> = cases().into_iter().filter(|c| c.sh.n == 1000).collect();
        let outputs = FORWARD.len() + BACKWARD.len() + EPILOGUES.len();
        assert_eq!(ragged.len(), 2 * 2 * 2 * outputs);
        for case in &ragged {
            let out = case.run(&Cpu, 7).unwrap();
            let sh = case.sh;
            let dead = (case.capacity - sh.rank) * (sh.n_in + sh.n_out);
            let want_len = match case.output {
                LowRankOutput::Y | LowRankOutput::GeluY | LowRankOutput::ResidualY => {
                    sh.n * sh.n_out
                }
                LowRankOutput::T | LowRankOutput::S => sh.scratch_len(),
                LowRankOutput::Dx | LowRankOutput::DxGelu => sh.n * sh.n_in,
                LowRankOutput::DUt => sh.rank * sh.n_in,
                LowRankOutput::DVt => sh.rank * sh.n_out,
                LowRankOutput::Db => sh.n_out,
                LowRankOutput::DeadRows => dead,
            };
            assert_eq!(out.len(), want_len, "{}", case.op());
            assert!(
                out.iter().all(|v| v.is_finite()),
                "{}: poison left",
                case.op()
            );
        }
    }
}
