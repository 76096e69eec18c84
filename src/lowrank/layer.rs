//! Which linear layers are low-rank, and each one's fixed sizes: capacity R (allocated once), the
//! rank buffer b and the largest rank growth may reach.

use super::config::{LowRankConfig, LowRankLayers, LowRankMode};
use crate::model::params::BlockTensor;
use crate::model::GptConfig;
use anyhow::{ensure, Result};

/// One low-rank linear layer's static description.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankLayer {
    /// Hugging Face prefix, e.g. `transformer.h.3.mlp.c_fc`.
    pub prefix: String,
    pub block: usize,
    pub weight: BlockTensor,
    pub bias: BlockTensor,
    pub n_in: usize,
    pub n_out: usize,
    /// Rows of Ut and Vt allocated: ⌊min(n_in, n_out)/2⌋ when growing, the rank for LoRA.
    pub capacity: usize,
    /// Rows live beyond the rank while growing (b, clamped to ⌊R/4⌋; 0 for LoRA).
    pub buffer: usize,
    /// Highest rank growth may reach: R − b − 1 (LoRA, dln: R; dlra: R/2, the rank it truncates to).
    pub max_rank: usize,
    /// Whether W = W0 + U·Vᵀ (inrank, lora) rather than U·Vᵀ.
    pub has_w0: bool,
    /// Whether a trained middle factor sits between the two: W = U·M·Vᵀ (dln; dlra's S). Its live
    /// k × k block is stored contiguously at the start of the R × R tensor (k = the live width).
    pub has_mid: bool,
    /// Whether Ut and Vt are orthonormal bases that only the DLRA integrator moves (dlra): the
    /// optimiser trains the middle S alone.
    pub orthonormal_bases: bool,
    /// Init std of the dense weight this layer replaces.
    pub dense_std: f64,
}

impl LowRankLayer {
    /// Rows of the factors the layer computes with at `rank`: rank plus the buffer, within capacity.
    pub fn width(&self, rank: usize) -> usize {
        (rank + self.buffer).min(self.capacity)
    }

    /// The rank a run starts at: `rank_init` for a growing layer, the highest rank for one without
    /// a buffer (lora, dln: the capacity; dlra: half of it, the rest is room for augmentation).
    pub fn start_rank(&self, rank_init: usize) -> usize {
        if self.buffer == 0 {
            self.max_rank
        } else {
            rank_init.min(self.capacity)
        }
    }
}

/// The (weight, bias) pairs of a block that `layers` selects.
fn selected(layers: LowRankLayers) -> &'static [(BlockTensor, BlockTensor)] {
    use BlockTensor::*;
    const ATTN: [(BlockTensor, BlockTensor); 2] =
        [(QkvWeight, QkvBias), (AttnProjWeight, AttnProjBias)];
    const MLP: [(BlockTensor, BlockTensor); 2] = [(FcWeight, FcBias), (FcProjWeight, FcProjBias)];
    const ALL: [(BlockTensor, BlockTensor); 4] = [ATTN[0], ATTN[1], MLP[0], MLP[1]];
    match layers {
        LowRankLayers::Mlp => &MLP,
        LowRankLayers::Attn => &ATTN,
        LowRankLayers::All => &ALL,
    }
}

/// The low-rank layers of a model under `cfg` (none in dense mode). Fails, naming the layer and
/// the limit, when the initial rank does not fit a layer's capacity.
pub fn plan(cfg: &LowRankConfig, model: &GptConfig) -> Result<Vec<LowRankLayer>> {
    if !cfg.is_low_rank() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for block in 0..model.n_layer {
        for &(weight, bias) in selected(cfg.layers) {
            let shape = weight.shape(model.n_embd);
            let (n_in, n_out) = (shape[0], shape[1]);
            let prefix = format!(
                "transformer.h.{block}.{}",
                weight.hf_suffix().trim_end_matches(".weight")
            );
            let layer = sized(cfg, prefix, n_in, n_out)?;
            out.push(LowRankLayer {
                block,
                weight,
                bias,
                dense_std: weight.init_std(model),
                ..layer
            });
        }
    }
    Ok(out)
}

/// Capacity, buffer and rank limit of an (n_in × n_out) layer.
fn sized(cfg: &LowRankConfig, prefix: String, n_in: usize, n_out: usize) -> Result<LowRankLayer> {
    let full = n_in.min(n_out);
    let r0 = cfg.rank_init;
    let (capacity, buffer, max_rank) = if cfg.mode == LowRankMode::Lora {
        ensure!(
            r0 <= full,
            "--rank-init {r0} is above the rank {full} of {prefix} ({n_in}×{n_out}); LoRA's rank must be at most {full}"
        );
        (r0, 0, r0)
    } else if matches!(cfg.mode, LowRankMode::Dln | LowRankMode::Dlra) {
        let what = match cfg.mode {
            LowRankMode::Dln => "the compressed block of",
            _ => "DLRA's augmented bases of",
        };
        ensure!(
            2 * r0 <= full,
            "--rank-init {r0} gives {what} {prefix} ({n_in}×{n_out}) width 2r = {}, above its rank {full}; use --rank-init {} or less",
            2 * r0,
            full / 2
        );
        let max_rank = if cfg.mode == LowRankMode::Dln {
            2 * r0
        } else {
            r0
        };
        (2 * r0, 0, max_rank)
    } else {
        let capacity = full / 2;
        let buffer = cfg.rank_buffer.min(capacity / 4).max(1);
        let max_rank = capacity.saturating_sub(buffer + 1);
        ensure!(
            r0 <= max_rank,
            "--rank-init {r0} is above the capacity of {prefix} ({n_in}×{n_out}): capacity R = ⌊{full}/2⌋ = {capacity} with a buffer of {buffer} leaves ranks up to R − b − 1 = {max_rank}; lower --rank-init"
        );
        (capacity, buffer, max_rank)
    };
    Ok(LowRankLayer {
        prefix,
        block: 0,
        weight: BlockTensor::FcWeight,
        bias: BlockTensor::FcBias,
        n_in,
        n_out,
        capacity,
        buffer,
        max_rank,
        has_w0: matches!(cfg.mode, LowRankMode::Inrank | LowRankMode::Lora),
        has_mid: matches!(cfg.mode, LowRankMode::Dln | LowRankMode::Dlra),
        orthonormal_bases: cfg.mode == LowRankMode::Dlra,
        dense_std: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_mlp_layers_get_half_capacity_a_clamped_buffer_and_a_rank_limit() {
        let model = GptConfig::preset("tiny").unwrap();
        let cfg = LowRankConfig {
            mode: LowRankMode::Efficient,
            ..Default::default()
        };
        let layers = plan(&cfg, &model).unwrap();
        assert_eq!(layers.len(), 2 * model.n_layer);
        let fc = &layers[0];
        assert_eq!(fc.prefix, "transformer.h.0.mlp.c_fc");
        assert_eq!((fc.n_in, fc.n_out), (128, 512));
        // R = 128/2 = 64; b = min(100, 64/4) = 16; max rank 64 − 16 − 1 = 47.
        assert_eq!((fc.capacity, fc.buffer, fc.max_rank), (64, 16, 47));
        assert_eq!(fc.width(2), 18);
        assert!(!fc.has_w0);
        assert_eq!(layers[1].prefix, "transformer.h.0.mlp.c_proj");
        let all = LowRankConfig {
            layers: LowRankLayers::All,
            ..cfg.clone()
        };
        assert_eq!(plan(&all, &model).unwrap().len(), 4 * model.n_layer);
        assert!(plan(&LowRankConfig::default(), &model).unwrap().is_empty());
    }

    #[test]
    fn a_rank_above_capacity_is_refused_naming_the_limit() {
        let model = GptConfig::preset("tiny").unwrap();
        let e = plan(
            &LowRankConfig {
                mode: LowRankMode::Efficient,
                rank_init: 48,
                ..Default::default()
            },
            &model,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--rank-init 48 is above the capacity") && e.contains("47"),
            "{e}"
        );
        let e = plan(
            &LowRankConfig {
                mode: LowRankMode::Lora,
                rank_init: 129,
                lora_base: Some("x".into()),
                ..Default::default()
            },
            &model,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("LoRA's rank must be at most 128"), "{e}");
        let dln = |r| {
            let cfg = LowRankConfig {
                mode: LowRankMode::Dln,
                rank_init: r,
                ..Default::default()
            };
            plan(&cfg, &model)
        };
        let fc = &dln(64).unwrap()[0];
        assert_eq!((fc.capacity, fc.buffer, fc.start_rank(64)), (128, 0, 128));
        assert!(fc.has_mid && !fc.has_w0);
        let e = dln(65).unwrap_err().to_string();
        assert!(
            e.contains("width 2r = 130") && e.contains("--rank-init 64 or less"),
            "{e}"
        );
    }
}
