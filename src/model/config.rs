//! GPT-2 model configurations: the named presets, parameter counts and FLOPs per token.

use anyhow::{bail, ensure, Result};

/// GPT-2's vocabulary (the tiktoken `gpt2` encoding).
pub const GPT2_VOCAB: usize = 50257;
/// The vocabulary rounded up to a multiple of 128 so the LM-head GEMM tiles evenly (llm.c's choice).
pub const GPT2_PADDED_VOCAB: usize = 50304;

/// The shape of a GPT-2 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Real vocabulary: token ids and targets are below it.
    pub vocab_size: usize,
    /// Rows of the embedding table (≥ vocab_size); rows from vocab_size on are zero padding.
    pub padded_vocab: usize,
    /// Longest sequence (rows of the position table).
    pub max_seq: usize,
}

/// The presets `GptConfig::preset` knows, in order of size.
pub const PRESETS: [&str; 4] = ["tiny", "gpt2", "gpt2-medium", "gpt2-large"];

impl GptConfig {
    /// A GPT-2-vocabulary network of the given depth and width, with GPT-2's 1024-token context.
    fn gpt2_shaped(n_layer: usize, n_head: usize, n_embd: usize) -> Self {
        GptConfig {
            n_layer,
            n_head,
            n_embd,
            vocab_size: GPT2_VOCAB,
            padded_vocab: GPT2_PADDED_VOCAB,
            max_seq: 1024,
        }
    }

    /// A preset by name: `tiny` (4 layers, 4 heads, width 128, context 128: trains visibly on two CPU
    /// cores in minutes), `gpt2` (124M), `gpt2-medium` (355M), `gpt2-large` (774M).
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "tiny" => GptConfig {
                max_seq: 128,
                ..Self::gpt2_shaped(4, 4, 128)
            },
            "gpt2" => Self::gpt2_shaped(12, 12, 768),
            "gpt2-medium" => Self::gpt2_shaped(24, 16, 1024),
            "gpt2-large" => Self::gpt2_shaped(36, 20, 1280),
            _ => bail!(
                "unknown model config {name:?}; valid names are: {}",
                PRESETS.join(", ")
            ),
        })
    }

    /// Checks the shape is buildable.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.n_layer > 0 && self.n_head > 0 && self.n_embd > 0,
            "model config {self:?}: sizes must be positive"
        );
        ensure!(
            self.n_embd.is_multiple_of(self.n_head),
            "model config: width {} does not split into {} heads",
            self.n_embd,
            self.n_head
        );
        ensure!(
            self.vocab_size > 0 && self.padded_vocab >= self.vocab_size,
            "model config: padded vocab {} is smaller than the vocab {}",
            self.padded_vocab,
            self.vocab_size
        );
        ensure!(self.max_seq > 0, "model config: max_seq must be positive");
        Ok(())
    }

    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Parameters of one transformer block: two LayerNorms, qkv, attention projection, MLP.
    fn block_params(&self) -> usize {
        let c = self.n_embd;
        2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c)
    }

    /// Trainable parameters, without the embedding padding rows (GPT-2 small: 124,439,808).
    pub fn num_params(&self) -> usize {
        let c = self.n_embd;
        self.vocab_size * c + self.max_seq * c + self.n_layer * self.block_params() + 2 * c
    }

    /// Forward FLOPs per token at sequence length `seq`, counting matmuls only (2 per multiply-add):
    /// the blocks' linear layers, the LM head over the padded vocab (as computed), and attention's
    /// q·kᵀ and att·v counted over the full T × T square (the PaLM / nanoGPT convention, so MFU
    /// figures compare with theirs).
    pub fn forward_flops_per_token(&self, seq: usize) -> f64 {
        let (l, c) = (self.n_layer as f64, self.n_embd as f64);
        2.0 * self.matmul_weights() + l * 4.0 * seq as f64 * c
    }

    /// Weights each token multiplies: the blocks' linear layers and the LM head over the padded
    /// vocab (forming their gradient costs 2 FLOPs per weight per token).
    pub fn matmul_weights(&self) -> f64 {
        let (l, c) = (self.n_layer as f64, self.n_embd as f64);
        l * 12.0 * c * c + c * self.padded_vocab as f64
    }

    /// Training FLOPs per token: forward plus a backward of twice the forward.
    pub fn training_flops_per_token(&self, seq: usize) -> f64 {
        3.0 * self.forward_flops_per_token(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_published_parameter_counts() {
        // GPT-2 paper / HF checkpoints, tied head, with position embeddings.
        assert_eq!(GptConfig::preset("gpt2").unwrap().num_params(), 124_439_808);
        assert_eq!(
            GptConfig::preset("gpt2-medium").unwrap().num_params(),
            354_823_168
        );
        assert_eq!(
            GptConfig::preset("gpt2-large").unwrap().num_params(),
            774_030_080
        );
        for name in PRESETS {
            GptConfig::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn unknown_preset_lists_the_valid_names() {
        let err = GptConfig::preset("gpt3").unwrap_err().to_string();
        assert!(
            err.contains("\"gpt3\"") && err.contains("tiny, gpt2, gpt2-medium, gpt2-large"),
            "{err}"
        );
    }

    #[test]
    fn forward_flops_match_hand_count_for_gpt2() {
        // 2·(12·12·768² + 768·50304) + 12·4·1024·768, by hand.
        let want = 284_884_992.0;
        assert_eq!(
            GptConfig::preset("gpt2")
                .unwrap()
                .forward_flops_per_token(1024),
            want
        );
    }
}
