//! Parameter count and training FLOPs per token of a configuration, for the start-up banner.

use super::layer::LowRankLayer;
use super::runtime::LiveRank;
use crate::backend::LowRankShape;
use crate::model::{GptConfig, Trained};

/// What one configuration costs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    /// Trainable parameters at the live widths (frozen bases and dormant rows excluded).
    pub params: usize,
    /// Training FLOPs (forward + backward) per token.
    pub flops_per_token: f64,
}

/// The model's cost with `layers` at widths `live`: each low-rank layer's dense matrix (n_in·n_out
/// parameters, 6·n_in·n_out FLOPs per token) replaced by k·(n_in + n_out) parameters (plus k² for a
/// compressed block's middle) and the fused op's forward and backward FLOPs (which include x·W0 and
/// dy·W0ᵀ when there is a base). A middle factor's GEMMs run once per micro-batch, not per token,
/// and are left out. In LoRA the factors alone train (and the embeddings if asked): they are the
/// parameters, and no dense matrix has its gradient formed (4 FLOPs per weight per token instead
/// of 6), the LM head's only when the embeddings train.
pub fn cost(
    model: &GptConfig,
    seq: usize,
    layers: &[LowRankLayer],
    live: &[LiveRank],
    trained: Trained,
) -> Cost {
    let (mut params, mut flops, dense_flops) = match trained.base() {
        true => (
            model.num_params() as f64,
            model.training_flops_per_token(seq),
            6.0,
        ),
        false => (
            0.0,
            model.training_flops_per_token(seq) - 2.0 * model.matmul_weights(),
            4.0,
        ),
    };
    if !trained.base() && trained.embeddings() {
        let c = model.n_embd as f64;
        params += c * (model.vocab_size + model.max_seq) as f64;
        flops += 2.0 * c * model.padded_vocab as f64;
    }
    for (l, lr) in layers.iter().zip(live) {
        let (i, o) = (l.n_in as f64, l.n_out as f64);
        let sh = LowRankShape {
            n: 1,
            n_in: l.n_in,
            n_out: l.n_out,
            rank: lr.width,
        };
        let k = lr.width as f64;
        let mid = if l.has_mid { k * k } else { 0.0 };
        params += k * (i + o) + mid - if trained.base() { i * o } else { 0.0 };
        flops += sh.forward_flops(l.has_w0) + sh.backward_flops(l.has_w0) - dense_flops * i * o;
    }
    Cost {
        params: params as usize,
        flops_per_token: flops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lowrank::{layer::plan, LowRankConfig, LowRankMode};

    #[test]
    fn efficient_tiny_costs_by_hand() {
        let model = GptConfig::preset("tiny").unwrap();
        let cfg = LowRankConfig {
            mode: LowRankMode::Efficient,
            ..Default::default()
        };
        let layers = plan(&cfg, &model).unwrap();
        let live = vec![LiveRank { rank: 2, width: 18 }; layers.len()];
        let c = cost(&model, 64, &layers, &live, Trained::All);
        // Each of 8 MLP matrices (128×512): −65536 + 18·640 = −54016 parameters and
        // 6·18·640 − 6·65536 = −324096 FLOPs per token.
        assert_eq!(c.params, model.num_params() - 8 * 54016);
        let want = model.training_flops_per_token(64) - 8.0 * 324096.0;
        assert!((c.flops_per_token - want).abs() < 1e-6 * want);
        assert_eq!(
            cost(&model, 64, &[], &[], Trained::All).params,
            model.num_params()
        );
        // A compressed block of width 2r = 16 on each: 2·d·r̂ + r̂² per matrix (SCIENCE.md §4).
        let dln = LowRankConfig {
            mode: LowRankMode::Dln,
            rank_init: 8,
            ..Default::default()
        };
        let layers = plan(&dln, &model).unwrap();
        let live = vec![
            LiveRank {
                rank: 16,
                width: 16
            };
            layers.len()
        ];
        let c = cost(&model, 64, &layers, &live, Trained::All);
        assert_eq!(
            c.params,
            model.num_params() - 8 * (65536 - 16 * 640 - 16 * 16)
        );
    }

    #[test]
    fn lora_trains_and_costs_its_factors_alone() {
        let model = GptConfig::preset("tiny").unwrap();
        let cfg = LowRankConfig {
            mode: LowRankMode::Lora,
            lora_base: Some("base".into()),
            ..Default::default()
        };
        let layers = plan(&cfg, &model).unwrap();
        assert_eq!(layers.len(), 8);
        let live = vec![LiveRank { rank: 8, width: 8 }; layers.len()];
        let lora = |embeddings| cost(&model, 64, &layers, &live, Trained::Lora { embeddings });
        let c = lora(false);
        // 8 MLP matrices 128×512 with factors of 8·(128 + 512) = 5120 parameters each.
        assert_eq!(c.params, 8 * 5120);
        // Per token, every matrix (4 blocks of 12·128² and the 128 × padded-vocab head) costs 2
        // FLOPs per weight forward and 2 for dx, no weight gradient; attention as dense (3 × its
        // forward 4·T·C per block); each factor pair 6·5120 (x·U, ·Vᵀ, s, dx, dU, dV).
        let head = 128.0 * model.padded_vocab as f64;
        let want = 4.0 * (4.0 * 12.0 * 128.0 * 128.0 + head)
            + 3.0 * 4.0 * 4.0 * 64.0 * 128.0
            + 8.0 * 6.0 * 5120.0;
        assert!((c.flops_per_token - want).abs() < 1e-9 * want);
        // With the embeddings: their 128·(50257 + 128) parameters and the head's weight gradient.
        let c = lora(true);
        assert_eq!(c.params, 8 * 5120 + 128 * (50257 + 128));
        let want = want + 2.0 * head;
        assert!((c.flops_per_token - want).abs() < 1e-9 * want);
    }
}
