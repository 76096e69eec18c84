//! Rank monitoring for every run (SCIENCE.md §5): per layer, the live rank and r90 (the smallest j
//! whose singular values explain more than 90% of Σ s²). Low-rank layers take r90 of their live
//! product U·Vᵀ (the update itself in inrank and lora) from its factors' Gram matrices
//! (`spectrum`); dense runs take r90 of each MLP matrix's cumulative update W − W0 from its Gram
//! matrix. Both Gram products run on the backend.

use super::spectrum::live_spectra;
use crate::backend::{Backend, Buffer, DType, Gemm, Ref};
use crate::linalg::{explained_rank, gram_explained_rank};
use crate::model::{BlockTensor, Gpt};
use anyhow::Result;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The explained-variance threshold of the logged r90.
const R90: f64 = 0.9;

/// One layer's entry in metrics.jsonl's `ranks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRank {
    pub layer: String,
    /// Live rank (low-rank layers) or min(n_in, n_out) (dense layers).
    pub rank: usize,
    pub r90: usize,
}

/// Ranks of every low-rank layer of `model`.
pub fn lowrank_ranks<B: Backend>(b: &B, model: &Gpt<B>) -> Result<Vec<LayerRank>> {
    let spectra = live_spectra(b, model)?;
    Ok(spectra
        .iter()
        .enumerate()
        .map(|(i, s)| LayerRank {
            layer: model.layout().lowrank()[i].layer.prefix.clone(),
            rank: model.lowrank().live[i].rank,
            r90: explained_rank(s, s.iter().map(|x| x * x).sum(), R90, 1).unwrap_or(s.len()),
        })
        .collect())
}

/// A dense MLP matrix and its initial value on the host.
struct DenseLayer {
    prefix: String,
    offset: usize,
    n_in: usize,
    n_out: usize,
    w0: Vec<f32>,
}

/// r90 of W − W0 for each dense MLP matrix.
pub struct DenseMonitor {
    layers: Vec<DenseLayer>,
}

impl DenseMonitor {
    /// Keeps W0 of every dense MLP matrix: with `seed`, GPT-2's init that seed draws (a resumed
    /// run's model holds its checkpoint's values), else `model`'s values now, its starting
    /// weights, copied to the host matrix by matrix.
    pub fn new<B: Backend>(b: &B, model: &Gpt<B>, seed: Option<u64>) -> Result<Self> {
        let layout = model.layout();
        let dense: Vec<(usize, BlockTensor)> = (0..model.config().n_layer)
            .flat_map(|l| [(l, BlockTensor::FcWeight), (l, BlockTensor::FcProjWeight)])
            .filter(|&(l, kind)| layout.lowrank_index(l, kind).is_none())
            .collect();
        let w0s: Vec<Vec<f32>> = match seed {
            // On every core, as the model's init draws them.
            Some(seed) => (dense.par_iter())
                .map(|&(l, kind)| layout.init_block(l, kind, seed))
                .collect(),
            None => (dense.iter())
                .map(|&(l, kind)| {
                    let t = layout.block(l, kind);
                    b.download(model.params().at(t.offset, t.len()))
                })
                .collect::<Result<_>>()?,
        };
        let layers = (dense.into_iter().zip(w0s))
            .map(|((l, kind), w0)| {
                let t = layout.block(l, kind);
                DenseLayer {
                    prefix: t.name.trim_end_matches(".weight").to_string(),
                    offset: t.offset,
                    n_in: t.shape[0],
                    n_out: t.shape[1],
                    w0,
                }
            })
            .collect();
        Ok(DenseMonitor { layers })
    }

    pub fn ranks<B: Backend>(&mut self, b: &B, model: &Gpt<B>) -> Result<Vec<LayerRank>> {
        // The Gram matrices one after the other on the backend, then the host eigensolves in
        // parallel (on a GPU run they are the host's whole share of the cost).
        let grams = self
            .layers
            .iter()
            .map(|d| {
                let w = model.params().at(d.offset, d.n_in * d.n_out);
                update_gram(b, w, &d.w0, d.n_in, d.n_out)
            })
            .collect::<Result<Vec<_>>>()?;
        self.layers
            .par_iter()
            .zip(grams)
            .map(|(d, g)| {
                let n = d.n_in.min(d.n_out);
                Ok(LayerRank {
                    layer: d.prefix.clone(),
                    rank: n,
                    r90: gram_explained_rank(&g, n, R90)?,
                })
            })
            .collect()
    }
}

/// The Gram matrix (row-major f32, min(n_in, n_out)² values) of D = W − W0, n_in × n_out row-major
/// with W on the backend and W0 on the host: D is formed and G = D·Dᵀ or Dᵀ·D, whichever is
/// smaller, multiplied where W lives (in the backend's compute type: on CUDA bf16 operands, f32
/// accumulation); only G comes back to the host.
fn update_gram<B: Backend>(
    b: &B,
    w: Ref<B::Buf>,
    w0: &[f32],
    n_in: usize,
    n_out: usize,
) -> Result<Vec<f32>> {
    let len = n_in * n_out;
    let mut d = b.alloc(DType::F32, len)?;
    b.cast(w, d.all_mut())?;
    let mut w0_dev = b.alloc(DType::F32, len)?;
    b.upload(w0, w0_dev.all_mut())?;
    b.sub(d.all_mut(), w0_dev.all())?;
    let compute = b.compute_dtype();
    let d = if compute == DType::F32 {
        d
    } else {
        let mut dc = b.alloc(compute, len)?;
        b.cast(d.all(), dc.all_mut())?;
        dc
    };
    let n = n_in.min(n_out);
    let gram = if n_in <= n_out {
        Gemm::new(n_in, n_in, n_out).trans_b()
    } else {
        Gemm::new(n_out, n_out, n_in).trans_a()
    };
    let mut g = b.alloc(DType::F32, n * n)?;
    b.gemm(&gram, d.all(), d.all(), g.all_mut())?;
    b.download(g.all())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::linalg::factor::random_orthonormal;
    use crate::util::rng::Rng;
    use faer::Mat;

    /// D = Q1·diag(s)·Q2ᵀ with random orthonormal Q1, Q2: its spectrum is `s` by construction.
    fn with_spectrum(rows: usize, cols: usize, s: &[f64], rng: &mut Rng) -> Mat<f64> {
        let k = s.len();
        let (q1, q2) = (
            random_orthonormal(rows, k, rng),
            random_orthonormal(cols, k, rng),
        );
        let sd = Mat::from_fn(k, k, |i, j| if i == j { s[i] } else { 0.0 });
        q1 * sd * q2.transpose()
    }

    /// W = W0 + D for a random W0 and a D of known spectrum: r90 of the update in closed form, for
    /// a wide and a tall matrix (the Gram matrix is taken on the smaller side).
    #[test]
    fn gram_r90_matches_the_closed_form_of_a_known_spectrum() {
        let mut rng = Rng::new(5);
        // s_i = 0.8^i over 60 values: r90 is the smallest j with 1 − 0.64^j > 0.9·(1 − 0.64^60),
        // i.e. j = 6 (0.64^5 = 0.107, 0.64^6 = 0.069).
        let geometric: Vec<f64> = (0..60).map(|i| 0.8f64.powi(i)).collect();
        // A flat spectrum of 30 at α = 0.9 needs 28 directions (27/30 = 0.9 is not above it).
        let flat = [0.5; 30];
        for (n_in, n_out) in [(96, 160), (160, 96)] {
            for (s, want) in [(&geometric[..], 6), (&flat[..], 28)] {
                let d = with_spectrum(n_in, n_out, s, &mut rng);
                let w0 = rng.normal_vec(n_in * n_out, 0.02);
                let w: Vec<f32> = (0..n_in * n_out)
                    .map(|k| w0[k] + d[(k / n_out, k % n_out)] as f32)
                    .collect();
                let mut wb = Cpu.alloc(DType::F32, w.len()).unwrap();
                Cpu.upload(&w, wb.all_mut()).unwrap();
                let g = update_gram(&Cpu, wb.all(), &w0, n_in, n_out).unwrap();
                let r90 = gram_explained_rank(&g, n_in.min(n_out), R90).unwrap();
                assert_eq!(r90, want, "{n_in} × {n_out}, {} values", s.len());
            }
        }
        // No update at all: rank 1, not a division by zero.
        let w0 = rng.normal_vec(8 * 5, 0.02);
        let mut wb = Cpu.alloc(DType::F32, w0.len()).unwrap();
        Cpu.upload(&w0, wb.all_mut()).unwrap();
        let g = update_gram(&Cpu, wb.all(), &w0, 8, 5).unwrap();
        assert_eq!(gram_explained_rank(&g, 5, R90).unwrap(), 1);
    }
}
