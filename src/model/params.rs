//! The parameter layout: one flat f32 buffer, named tensor views into it, Hugging Face names, the
//! weight-decay flag of each tensor, and GPT-2's initialisation.
//!
//! Order: all weight-decayed tensors first (wte, wpe, then every block's four matrices), then all
//! the others (every block's LayerNorms and biases, then ln_f), so the optimiser sees two
//! contiguous spans. With low-rank layers, each replaced matrix contributes its transposed factors
//! `{prefix}.lowrank_ut` (R × n_in) and `{prefix}.lowrank_vt` (R × n_out) in its place (and a
//! compressed block's middle `{prefix}.lowrank_mid`, R × R, after them), and a frozen
//! base `{prefix}.lowrank_w0` (inrank, lora) goes after everything trainable: the optimiser's
//! buffers cover only `trainable_len()`, so a frozen tensor has no moments and is never updated.
//! Each LayerNorm's weight is directly followed by its bias: the layernorm ops
//! take them as one (2·C) window. Weights are (n_in × n_out) so y = x·W, as in HF's Conv1D.

use super::config::GptConfig;
use crate::lowrank::LowRankLayer;
use crate::util::rng::Rng;

/// GPT-2's initialisation standard deviation.
const INIT_STD: f64 = 0.02;

/// A tensor of one transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockTensor {
    Ln1Weight,
    Ln1Bias,
    QkvWeight,
    QkvBias,
    AttnProjWeight,
    AttnProjBias,
    Ln2Weight,
    Ln2Bias,
    FcWeight,
    FcBias,
    FcProjWeight,
    FcProjBias,
}

use BlockTensor::*;

/// The block's matrices (weight-decayed) and its vectors (not), each in layout order.
const BLOCK_MATRICES: [BlockTensor; 4] = [QkvWeight, AttnProjWeight, FcWeight, FcProjWeight];
const BLOCK_VECTORS: [BlockTensor; 8] = [
    Ln1Weight,
    Ln1Bias,
    QkvBias,
    AttnProjBias,
    Ln2Weight,
    Ln2Bias,
    FcBias,
    FcProjBias,
];

impl BlockTensor {
    /// The name after `transformer.h.{i}.` in a Hugging Face GPT-2 checkpoint.
    pub fn hf_suffix(self) -> &'static str {
        match self {
            Ln1Weight => "ln_1.weight",
            Ln1Bias => "ln_1.bias",
            QkvWeight => "attn.c_attn.weight",
            QkvBias => "attn.c_attn.bias",
            AttnProjWeight => "attn.c_proj.weight",
            AttnProjBias => "attn.c_proj.bias",
            Ln2Weight => "ln_2.weight",
            Ln2Bias => "ln_2.bias",
            FcWeight => "mlp.c_fc.weight",
            FcBias => "mlp.c_fc.bias",
            FcProjWeight => "mlp.c_proj.weight",
            FcProjBias => "mlp.c_proj.bias",
        }
    }

    /// Shape (n_in × n_out for matrices) in a model of width `c`.
    pub(crate) fn shape(self, c: usize) -> Vec<usize> {
        match self {
            Ln1Weight | Ln1Bias | AttnProjBias | Ln2Weight | Ln2Bias | FcProjBias => vec![c],
            QkvWeight => vec![c, 3 * c],
            QkvBias => vec![3 * c],
            AttnProjWeight => vec![c, c],
            FcWeight => vec![c, 4 * c],
            FcBias => vec![4 * c],
            FcProjWeight => vec![4 * c, c],
        }
    }

    /// The std of a matrix's normal init (0 for tensors that start constant).
    pub(crate) fn init_std(self, cfg: &GptConfig) -> f64 {
        match self.init(cfg) {
            Init::Normal { std, .. } => std,
            _ => 0.0,
        }
    }

    fn init(self, cfg: &GptConfig) -> Init {
        match self {
            Ln1Weight | Ln2Weight => Init::Ones,
            QkvWeight | FcWeight => Init::Normal {
                std: INIT_STD,
                drawn: usize::MAX,
            },
            // Residual projections: each block adds two to the residual stream, so scale by 1/√(2L).
            AttnProjWeight | FcProjWeight => Init::Normal {
                std: INIT_STD / (2.0 * cfg.n_layer as f64).sqrt(),
                drawn: usize::MAX,
            },
            _ => Init::Zeros,
        }
    }
}

/// How a tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// N(0, std²) for the first `drawn` elements (all of them when larger), zero after: the
    /// embedding's padding rows stay zero.
    Normal {
        std: f64,
        drawn: usize,
    },
}

/// A named tensor in the flat parameter buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorView {
    /// Hugging Face GPT-2 name, e.g. `transformer.h.3.mlp.c_fc.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    /// First element in the flat buffer.
    pub offset: usize,
    /// Matrices and embeddings are decayed (as llm.c and nanoGPT do); biases and LayerNorms not.
    pub weight_decay: bool,
    /// False for a frozen base W0: outside the optimiser's span.
    pub trainable: bool,
    pub init: Init,
}

impl TensorView {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a tensor is to the optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanRole {
    /// Ordinary parameters.
    Plain,
    /// Low-rank factors (U, V, a compressed block's M, DLRA's S), which may take their own
    /// learning-rate scale.
    Factor,
    /// DLRA's orthonormal bases U, V: moved only by the integrator's augmentation and truncation,
    /// never by the optimiser.
    Basis,
}

/// Indices in the layout's tensors of one low-rank layer's factors and frozen base.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankTensors {
    pub layer: LowRankLayer,
    pub ut: usize,
    pub vt: usize,
    pub w0: Option<usize>,
    /// The middle factor M (R × R) of a compressed block: W = Utᵀ·M·Vt.
    pub mid: Option<usize>,
}

/// The named tensors of a GPT-2 in one flat buffer.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    tensors: Vec<TensorView>,
    len: usize,
    trainable_len: usize,
    lowrank: Vec<LowRankTensors>,
    /// Index in `tensors` of each block's tensors, by `BlockTensor as usize`.
    blocks: Vec<[usize; 12]>,
    c: usize,
}

impl ParamLayout {
    /// The dense GPT-2 layout.
    pub fn new(cfg: &GptConfig) -> Self {
        Self::with_lowrank(cfg, &[])
    }

    /// The layout with the given layers' matrices replaced by low-rank factors.
    pub fn with_lowrank(cfg: &GptConfig, lowrank: &[LowRankLayer]) -> Self {
        let c = cfg.n_embd;
        let mut layout = ParamLayout {
            tensors: Vec::new(),
            len: 0,
            trainable_len: 0,
            lowrank: Vec::new(),
            blocks: vec![[usize::MAX; 12]; cfg.n_layer],
            c,
        };
        let embedding = |drawn| Init::Normal {
            std: INIT_STD,
            drawn,
        };
        layout.push(
            "transformer.wte.weight".into(),
            vec![cfg.padded_vocab, c],
            true,
            embedding(cfg.vocab_size * c),
        );
        layout.push(
            "transformer.wpe.weight".into(),
            vec![cfg.max_seq, c],
            true,
            embedding(usize::MAX),
        );
        for (group, decay) in [(&BLOCK_MATRICES[..], true), (&BLOCK_VECTORS[..], false)] {
            for l in 0..cfg.n_layer {
                for &t in group {
                    if let Some(lr) = lowrank.iter().find(|x| x.block == l && x.weight == t) {
                        layout.push_factors(lr);
                        continue;
                    }
                    layout.blocks[l][t as usize] = layout.tensors.len();
                    layout.push(
                        format!("transformer.h.{l}.{}", t.hf_suffix()),
                        t.shape(c),
                        decay,
                        t.init(cfg),
                    );
                }
            }
        }
        layout.push("transformer.ln_f.weight".into(), vec![c], false, Init::Ones);
        layout.push("transformer.ln_f.bias".into(), vec![c], false, Init::Zeros);
        layout.trainable_len = layout.len;
        for i in 0..layout.lowrank.len() {
            let l = layout.lowrank[i].layer.clone();
            if l.has_w0 {
                layout.lowrank[i].w0 = Some(layout.tensors.len());
                let init = l.weight.init(cfg);
                layout.push(
                    format!("{}.lowrank_w0", l.prefix),
                    vec![l.n_in, l.n_out],
                    false,
                    init,
                );
                layout.tensors.last_mut().unwrap().trainable = false;
            }
        }
        layout
    }

    /// Ut and Vt of a low-rank layer, decayed like the matrix they replace; values come from
    /// `lowrank::start_factors`.
    fn push_factors(&mut self, l: &LowRankLayer) {
        let ut = self.tensors.len();
        let (r, p) = (l.capacity, &l.prefix);
        self.push(
            format!("{p}.lowrank_ut"),
            vec![r, l.n_in],
            true,
            Init::Zeros,
        );
        self.push(
            format!("{p}.lowrank_vt"),
            vec![r, l.n_out],
            true,
            Init::Zeros,
        );
        let mid = l.has_mid.then(|| {
            self.push(format!("{p}.lowrank_mid"), vec![r, r], true, Init::Zeros);
            ut + 2
        });
        self.lowrank.push(LowRankTensors {
            layer: l.clone(),
            ut,
            vt: ut + 1,
            w0: None,
            mid,
        });
    }

    fn push(&mut self, name: String, shape: Vec<usize>, weight_decay: bool, init: Init) {
        let view = TensorView {
            name,
            shape,
            offset: self.len,
            weight_decay,
            trainable: true,
            init,
        };
        self.len += view.len();
        self.tensors.push(view);
    }

    /// Elements of the flat buffer (including the embedding's padding rows).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Elements the optimiser updates: everything but the frozen bases, which come last.
    pub fn trainable_len(&self) -> usize {
        self.trainable_len
    }
    /// The low-rank layers, in layout order.
    pub fn lowrank(&self) -> &[LowRankTensors] {
        &self.lowrank
    }
    /// The index in `lowrank()` of block `layer`'s matrix `weight`, when it is low-rank.
    pub fn lowrank_index(&self, layer: usize, weight: BlockTensor) -> Option<usize> {
        self.lowrank
            .iter()
            .position(|x| x.layer.block == layer && x.layer.weight == weight)
    }
    /// Every tensor, in buffer order.
    pub fn tensors(&self) -> &[TensorView] {
        &self.tensors
    }
    /// The tensor with this Hugging Face name.
    pub fn find(&self, name: &str) -> Option<&TensorView> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// The token embedding, (padded_vocab × C), also the tied LM head.
    pub fn wte(&self) -> &TensorView {
        &self.tensors[0]
    }
    /// The position embedding, (max_seq × C).
    pub fn wpe(&self) -> &TensorView {
        &self.tensors[1]
    }
    pub fn block(&self, layer: usize, t: BlockTensor) -> &TensorView {
        &self.tensors[self.blocks[layer][t as usize]]
    }
    /// (offset, 2·C) window of a block LayerNorm's weight followed by its bias.
    pub fn block_ln(&self, layer: usize, weight: BlockTensor) -> (usize, usize) {
        debug_assert!(matches!(weight, Ln1Weight | Ln2Weight));
        (self.block(layer, weight).offset, 2 * self.c)
    }
    /// (offset, 2·C) window of the final LayerNorm's weight and bias.
    pub fn ln_f(&self) -> (usize, usize) {
        // The trainable part ends with ln_f's weight and bias (frozen bases follow it).
        (self.trainable_len - 2 * self.c, 2 * self.c)
    }

    /// What tensor `index` is to the optimiser.
    pub fn role(&self, index: usize) -> SpanRole {
        for l in &self.lowrank {
            if index == l.ut || index == l.vt {
                return match l.layer.orthonormal_bases {
                    true => SpanRole::Basis,
                    false => SpanRole::Factor,
                };
            }
            if l.mid == Some(index) {
                return SpanRole::Factor;
            }
        }
        SpanRole::Plain
    }

    /// Block tensor `t` of `layer` as a fresh model's start draws it (`init_tensor_into`): one the
    /// layout holds (a weight low-rank factors replaced has none, and panics, as `block` does).
    pub fn init_block(&self, layer: usize, t: BlockTensor, seed: u64) -> Vec<f32> {
        let index = self.blocks[layer][t as usize];
        let mut values = vec![0.0; self.tensors[index].len()];
        self.init_tensor_into(index, seed, &mut values);
        values
    }

    /// GPT-2's initial values of tensor `index` into `dst` (of its length, whatever it held), as
    /// a fresh model's start draws them (`Weights::start`), and so again wherever they are needed
    /// (a dense run's rank log, InRank's W0 left out of checkpoints: `DrawnW0`). Each tensor draws
    /// from its own generator, seeded by `seed` and its index, on every core: one tensor's values
    /// do not depend on another's size.
    pub fn init_tensor_into(&self, index: usize, seed: u64, dst: &mut [f32]) {
        let tensor = &self.tensors[index];
        assert_eq!(
            dst.len(),
            tensor.len(),
            "{} has {} values",
            tensor.name,
            tensor.len()
        );
        init_tensor(tensor, index, seed, dst);
    }
}

/// Tensor `index`'s initial values into `part`.
fn init_tensor(t: &TensorView, index: usize, seed: u64, part: &mut [f32]) {
    match t.init {
        Init::Zeros => part.fill(0.0),
        Init::Ones => part.fill(1.0),
        Init::Normal { std, drawn } => {
            // One generator's sequence, drawn in parallel chunks (GPT-2 medium's wte is 51M).
            let rng = Rng::new(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (drawn, rest) = part.split_at_mut(drawn.min(part.len()));
            rng.normals_into(std, drawn);
            rest.fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_hf_names_shapes_and_covers_the_buffer() {
        let cfg = GptConfig::preset("gpt2").unwrap();
        let layout = ParamLayout::new(&cfg);
        assert_eq!(layout.tensors().len(), 2 + 12 * 12 + 2);
        assert_eq!(
            layout.len(),
            cfg.num_params() + (cfg.padded_vocab - cfg.vocab_size) * cfg.n_embd
        );
        let shape = |name: &str| {
            layout
                .find(name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .shape
                .clone()
        };
        // Shapes as stored in the Hugging Face `gpt2` checkpoint (Conv1D: n_in × n_out).
        assert_eq!(shape("transformer.wte.weight"), [50304, 768]);
        assert_eq!(shape("transformer.wpe.weight"), [1024, 768]);
        assert_eq!(shape("transformer.h.11.attn.c_attn.weight"), [768, 2304]);
        assert_eq!(shape("transformer.h.0.attn.c_attn.bias"), [2304]);
        assert_eq!(shape("transformer.h.5.attn.c_proj.weight"), [768, 768]);
        assert_eq!(shape("transformer.h.5.mlp.c_fc.weight"), [768, 3072]);
        assert_eq!(shape("transformer.h.5.mlp.c_proj.weight"), [3072, 768]);
        assert_eq!(shape("transformer.h.7.ln_2.bias"), [768]);
        assert_eq!(shape("transformer.ln_f.weight"), [768]);
        // Contiguous, non-overlapping, in order; names unique.
        let mut next = 0;
        for t in layout.tensors() {
            assert_eq!(t.offset, next, "{}", t.name);
            next += t.len();
        }
        let names: std::collections::HashSet<_> =
            layout.tensors().iter().map(|t| &t.name).collect();
        assert_eq!(names.len(), layout.tensors().len());
    }

    #[test]
    fn decay_flags_mark_matrices_and_layernorm_bias_follows_weight() {
        let cfg = GptConfig::preset("tiny").unwrap();
        let layout = ParamLayout::new(&cfg);
        for t in layout.tensors() {
            assert_eq!(
                t.weight_decay,
                t.shape.len() == 2,
                "{}: decay exactly the 2-D tensors",
                t.name
            );
        }
        for l in 0..cfg.n_layer {
            for (w, b) in [(Ln1Weight, Ln1Bias), (Ln2Weight, Ln2Bias)] {
                assert_eq!(
                    layout.block(l, w).offset + cfg.n_embd,
                    layout.block(l, b).offset
                );
                assert_eq!(
                    layout.block_ln(l, w),
                    (layout.block(l, w).offset, 2 * cfg.n_embd)
                );
            }
        }
        assert_eq!(
            layout.ln_f().0,
            layout.find("transformer.ln_f.weight").unwrap().offset
        );
        assert_eq!(
            layout.ln_f().0 + cfg.n_embd,
            layout.find("transformer.ln_f.bias").unwrap().offset
        );
    }

    #[test]
    fn init_follows_gpt2_and_is_deterministic_by_seed() {
        let cfg = GptConfig::preset("tiny").unwrap();
        let layout = ParamLayout::new(&cfg);
        // Into memory holding anything: every value is written.
        let init = |seed| {
            let mut values = vec![f32::NAN; layout.len()];
            for (i, t) in layout.tensors().iter().enumerate() {
                layout.init_tensor_into(i, seed, &mut values[t.offset..t.offset + t.len()]);
            }
            values
        };
        let values = init(42);
        assert_eq!(values, init(42));
        assert_ne!(values, init(43));
        let of = |name: &str| {
            let t = layout.find(name).unwrap();
            &values[t.offset..t.offset + t.len()]
        };
        let std = |x: &[f32]| {
            (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
        };
        // Sample std of n normals has relative standard error 1/√(2n) ≤ 0.6% here; allow 3%.
        let close =
            |got: f64, want: f64| assert!((got / want - 1.0).abs() < 0.03, "std {got} vs {want}");
        let wte = of("transformer.wte.weight");
        let real = cfg.vocab_size * cfg.n_embd;
        close(std(&wte[..real]), 0.02);
        assert!(
            wte[real..].iter().all(|&v| v == 0.0),
            "padding rows must start at zero"
        );
        close(std(of("transformer.wpe.weight")), 0.02);
        close(std(of("transformer.h.2.attn.c_attn.weight")), 0.02);
        close(std(of("transformer.h.2.mlp.c_fc.weight")), 0.02);
        let residual = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        close(std(of("transformer.h.1.attn.c_proj.weight")), residual);
        close(std(of("transformer.h.3.mlp.c_proj.weight")), residual);
        assert!(of("transformer.h.0.ln_1.weight").iter().all(|&v| v == 1.0));
        assert!(of("transformer.h.0.ln_1.bias").iter().all(|&v| v == 0.0));
        assert!(of("transformer.h.0.mlp.c_fc.bias")
            .iter()
            .all(|&v| v == 0.0));
        assert!(of("transformer.ln_f.weight").iter().all(|&v| v == 1.0));
    }
}
