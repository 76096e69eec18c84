//! Rank monitoring for every run (SCIENCE.md §5): per layer, the live rank and r90 (the smallest j
//! whose singular values explain more than 90% of Σ s²). Low-rank layers take r90 of their live
//! product U·Vᵀ (the update itself in inrank and lora) from the QR core; dense runs take r90 of
//! each MLP matrix's cumulative update W − W0 by randomized range finding.

use super::growth::live_factors;
use crate::backend::{Backend, Buffer};
use crate::linalg::{explained_rank, randomized_explained_rank, CoreSvd};
use crate::model::{BlockTensor, Gpt, ParamLayout};
use crate::util::rng::Rng;
use anyhow::Result;
use faer::Mat;
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
    (0..model.layout().lowrank().len())
        .map(|i| {
            let (ut, vt, k) = live_factors(b, model, i)?;
            let core = CoreSvd::of_transposed(&ut, &vt, k)?;
            Ok(LayerRank {
                layer: model.layout().lowrank()[i].layer.prefix.clone(),
                rank: model.lowrank().live[i].rank,
                r90: explained_rank(&core.s, core.energy(), R90, 1).unwrap_or(k),
            })
        })
        .collect()
}

/// A dense MLP matrix and its initial value on the host.
struct DenseLayer {
    prefix: String,
    offset: usize,
    n_in: usize,
    n_out: usize,
    w0: Vec<f32>,
    /// Columns of the next sketch: the last r90 plus a margin, so one sketch usually suffices.
    sketch: usize,
}

/// r90 of W − W0 for each dense MLP matrix.
pub struct DenseMonitor {
    layers: Vec<DenseLayer>,
    rng: Rng,
}

/// Columns a sketch holds beyond the last r90.
const SKETCH_MARGIN: usize = 8;

impl DenseMonitor {
    /// Keeps W0 of every dense MLP matrix from `initial` (the parameters at step 0, host f32).
    pub fn new(layout: &ParamLayout, n_layer: usize, initial: &[f32]) -> Self {
        let mut layers = Vec::new();
        for l in 0..n_layer {
            for kind in [BlockTensor::FcWeight, BlockTensor::FcProjWeight] {
                if layout.lowrank_index(l, kind).is_some() {
                    continue;
                }
                let t = layout.block(l, kind);
                layers.push(DenseLayer {
                    prefix: t.name.trim_end_matches(".weight").to_string(),
                    offset: t.offset,
                    n_in: t.shape[0],
                    n_out: t.shape[1],
                    w0: initial[t.offset..t.offset + t.len()].to_vec(),
                    sketch: SKETCH_MARGIN,
                });
            }
        }
        DenseMonitor {
            layers,
            rng: Rng::new(0x5EED_4A11),
        }
    }

    pub fn ranks<B: Backend>(&mut self, b: &B, model: &Gpt<B>) -> Result<Vec<LayerRank>> {
        let mut out = Vec::with_capacity(self.layers.len());
        for d in &mut self.layers {
            let w = b.download(model.params().at(d.offset, d.n_in * d.n_out))?;
            let delta = Mat::from_fn(d.n_in, d.n_out, |i, j| {
                let k = i * d.n_out + j;
                w[k] as f64 - d.w0[k] as f64
            });
            let r90 = randomized_explained_rank(delta.as_ref(), R90, d.sketch, &mut self.rng)?;
            d.sketch = r90 + SKETCH_MARGIN;
            out.push(LayerRank {
                layer: d.prefix.clone(),
                rank: d.n_in.min(d.n_out),
                r90,
            });
        }
        Ok(out)
    }
}
