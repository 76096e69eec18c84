//! A run's low-rank settings (`lowrank train --lowrank ...`), saved in config.json and checked on
//! resume. Defaults follow SCIENCE.md §1 (r0 = 2, b = 100, α = 0.9, warm-up 25 and gap 3 optimiser
//! steps, stage 1 of 130 steps as in the reference code).

use super::dlra::FreshMoment;
use super::init::LowRankInit;
use crate::optim::GroupRule;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// How the selected linear layers are parameterised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LowRankMode {
    /// Ordinary dense weights (rank is only monitored).
    #[default]
    Dense,
    /// W = W0 + U·Vᵀ, W0 the frozen initial weight, growing rank.
    Inrank,
    /// W = U·Vᵀ with a rank buffer, no W0, growing rank (what the reference code trains).
    Efficient,
    /// W = W0 + (α/r)·U·Vᵀ, W0 frozen from `--lora-base`, fixed rank r = `--rank-init`.
    Lora,
    /// W = U·M·Vᵀ, a compressed deep linear block of depth 3 and width 2r (r = `--rank-init`),
    /// started from the layer's surrogate (SCIENCE.md §4): fixed width, every factor trained.
    Dln,
    /// W = U·S·Vᵀ with orthonormal bases U, V of rank up to r = `--rank-init`, trained by the DLRA
    /// integrator (SCIENCE.md §3): AdamW steps S in bases augmented to 2r at the start of each
    /// window of `--dlra-window` steps and truncated back at its end; started from the spectral
    /// factors of the layer's dense init.
    Dlra,
}

/// What steps DLRA's coefficients S.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DlraRule {
    /// AdamW with transported moments (the authors' code).
    #[default]
    Adam,
    /// Heavy ball in friction form, z ← (1 − γ)·z − h·g, S ← S + h·z, with h the learning rate
    /// times --factor-lr-scale and the velocity transported like Adam's first moment.
    HeavyBall,
}

/// Which linear layers of each block are low-rank.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LowRankLayers {
    /// mlp.c_fc and mlp.c_proj.
    #[default]
    Mlp,
    /// attn.c_attn and attn.c_proj.
    Attn,
    /// All four.
    All,
}

/// What happens to AdamW's moments when stage 2 truncates the factors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MomentTransport {
    /// Carried into the new basis (SCIENCE.md §3's rule, see `growth::transport_moments`).
    #[default]
    Rotate,
    /// The first r rows kept as they are, as the reference code does.
    Slice,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LowRankConfig {
    pub mode: LowRankMode,
    pub layers: LowRankLayers,
    /// Initial rank r0 (LoRA: the fixed rank).
    pub rank_init: usize,
    /// Rank buffer b (clamped per layer to ⌊R/4⌋ so small layers keep room to grow).
    pub rank_buffer: usize,
    /// Explained-variance threshold α of rank growth, in (0, 1].
    pub rank_alpha: f64,
    /// First growth check after this many optimiser steps.
    pub rank_warmup: u32,
    /// Optimiser steps between growth checks.
    pub rank_gap: u32,
    /// Stage 1 (growth) lasts this many optimiser steps; then truncation and fixed rank.
    pub stage1_steps: u32,
    pub moment_transport: MomentTransport,
    pub init: LowRankInit,
    /// LoRA's frozen base: a run or checkpoint directory, a Hugging Face model directory or a
    /// safetensors file, as an absolute path (the run's checkpoints read it again).
    pub lora_base: Option<String>,
    /// LoRA's α (scaling α/r); default 2r.
    pub lora_alpha: Option<f32>,
    /// LoRA also trains the token and position embeddings (and so the tied LM head), as PEFT's
    /// `modules_to_save`: a domain whose tokens the base rarely saw needs its own.
    pub lora_embeddings: bool,
    /// Log per-layer ranks every K optimiser steps (0: never).
    pub rank_log_every: u32,
    /// The factors' (U, V) learning rate as a multiple of the schedule's.
    pub factor_lr_scale: f32,
    /// `dln`: the scale ε of each factor at init (None: the surrogate's mean top singular value
    /// to the power 1/3, so the block starts at the surrogate's scale).
    pub dln_eps: Option<f32>,
    /// `dlra`: optimiser steps per window (1: augment and truncate every step, the parallel
    /// integrator).
    pub dlra_window: u32,
    /// `dlra`: truncate to the smallest rank whose dropped singular values hold at most τ of ‖S‖
    /// (at most `rank_init`); None keeps `rank_init`.
    pub dlra_tau: Option<f64>,
    /// `dlra`: Adam's second moment in the directions an augmentation adds.
    pub dlra_fresh_moment: FreshMoment,
    /// `dlra`: the update rule of S.
    pub dlra_rule: DlraRule,
    /// `dlra` heavy ball: the friction γ.
    pub dlra_friction: f32,
}

impl Default for LowRankConfig {
    fn default() -> Self {
        LowRankConfig {
            mode: LowRankMode::Dense,
            layers: LowRankLayers::Mlp,
            rank_init: 2,
            rank_buffer: 100,
            rank_alpha: 0.9,
            rank_warmup: 25,
            rank_gap: 3,
            stage1_steps: 130,
            moment_transport: MomentTransport::Rotate,
            init: LowRankInit::Random,
            lora_base: None,
            lora_alpha: None,
            lora_embeddings: false,
            rank_log_every: 10,
            factor_lr_scale: 1.0,
            dln_eps: None,
            dlra_window: 10,
            dlra_tau: None,
            dlra_fresh_moment: FreshMoment::Zero,
            dlra_rule: DlraRule::Adam,
            dlra_friction: 0.1,
        }
    }
}

impl LowRankConfig {
    /// Checks what needs no model shape (capacities are checked by `layer::plan`).
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.rank_alpha > 0.0 && self.rank_alpha <= 1.0,
            "--rank-alpha {} is outside (0, 1]: it is the fraction of the squared singular values the rank must explain (default 0.9)",
            self.rank_alpha
        );
        ensure!(self.rank_init >= 1, "--rank-init must be at least 1");
        ensure!(
            self.rank_gap >= 1,
            "--rank-gap must be at least 1 optimiser step"
        );
        ensure!(
            self.mode != LowRankMode::Lora || self.lora_base.is_some(),
            "--lowrank lora needs the frozen base weights: pass --lora-base CKPT (a run or checkpoint directory, or a GPT-2 safetensors file)"
        );
        ensure!(
            self.lora_base.is_none() || self.mode == LowRankMode::Lora,
            "--lora-base is only used with --lowrank lora"
        );
        ensure!(
            !self.lora_embeddings || self.mode == LowRankMode::Lora,
            "--lora-embeddings is only used with --lowrank lora"
        );
        ensure!(
            self.factor_lr_scale > 0.0 && self.factor_lr_scale.is_finite(),
            "--factor-lr-scale {} must be positive: it multiplies the learning rate of the factors U and V",
            self.factor_lr_scale
        );
        if let Some(e) = self.dln_eps {
            ensure!(
                e > 0.0 && e.is_finite(),
                "--dln-eps {e} must be positive: it scales each factor of the compressed block at init"
            );
        }
        ensure!(
            self.dln_eps.is_none() || self.mode == LowRankMode::Dln,
            "--dln-eps is only used with --lowrank dln"
        );
        let dlra = self.mode == LowRankMode::Dlra;
        ensure!(
            self.dlra_window >= 1,
            "--dlra-window must be at least 1 optimiser step (1: augment and truncate every step)"
        );
        if let Some(tau) = self.dlra_tau {
            ensure!(
                (0.0..1.0).contains(&tau),
                "--dlra-tau {tau} is outside [0, 1): it is the fraction of ‖S‖ the dropped singular values may hold (SCIENCE.md §3: 0.01–0.15)"
            );
        }
        ensure!(
            (0.0..=1.0).contains(&self.dlra_friction),
            "--dlra-friction {} is outside [0, 1]: heavy ball keeps 1 − γ of its velocity each step",
            self.dlra_friction
        );
        let unset = LowRankConfig::default();
        let dlra_flags_unset = self.dlra_window == unset.dlra_window
            && self.dlra_tau.is_none()
            && self.dlra_fresh_moment == unset.dlra_fresh_moment
            && self.dlra_rule == unset.dlra_rule
            && self.dlra_friction == unset.dlra_friction;
        ensure!(
            dlra || dlra_flags_unset,
            "--dlra-window, --dlra-tau, --dlra-fresh-moment, --dlra-rule and --dlra-friction are only used with --lowrank dlra"
        );
        ensure!(
            !dlra || self.init == LowRankInit::Random,
            "--lowrank dlra starts from the spectral factors of the layer's dense init (orthonormal bases, S = Σ); --lowrank-init does not apply to it"
        );
        if let Some(a) = self.lora_alpha {
            ensure!(a > 0.0 && a.is_finite(), "--lora-alpha must be positive");
        }
        Ok(())
    }

    /// True when the selected layers carry factors (every mode but dense).
    pub fn is_low_rank(&self) -> bool {
        self.mode != LowRankMode::Dense
    }

    /// True when a run logs its dense MLP matrices' ranks (r90 of W − W0 against their starting
    /// values, which it keeps).
    pub fn logs_dense_ranks(&self) -> bool {
        !self.is_low_rank() && self.rank_log_every > 0
    }

    /// True while a growing mode may still change ranks at `step` (stage 1).
    pub fn grows(&self) -> bool {
        matches!(self.mode, LowRankMode::Inrank | LowRankMode::Efficient)
    }

    /// Whether a growth check runs after optimiser step `step` (1-based).
    pub fn check_due(&self, step: u32) -> bool {
        self.grows()
            && step >= self.rank_warmup
            && step < self.stage1_steps
            && (step - self.rank_warmup).is_multiple_of(self.rank_gap)
    }

    /// Whether DLRA augments the bases before optimiser step `step` (1-based): a window's first.
    pub fn dlra_augments(&self, step: u32) -> bool {
        self.mode == LowRankMode::Dlra && (step - 1).is_multiple_of(self.dlra_window)
    }

    /// Whether DLRA truncates after optimiser step `step` (1-based): a window's last.
    pub fn dlra_truncates(&self, step: u32) -> bool {
        self.mode == LowRankMode::Dlra && step.is_multiple_of(self.dlra_window)
    }

    /// How the optimiser steps the low-rank factors: heavy ball for DLRA's S when asked.
    pub fn factor_rule(&self) -> GroupRule {
        match (self.mode, self.dlra_rule) {
            (LowRankMode::Dlra, DlraRule::HeavyBall) => GroupRule::HeavyBall {
                friction: self.dlra_friction,
            },
            _ => GroupRule::AdamW,
        }
    }

    /// LoRA's scale α/r (1 in other modes).
    pub fn lora_scale(&self) -> f32 {
        match self.mode {
            LowRankMode::Lora => {
                let r = self.rank_init as f32;
                self.lora_alpha.unwrap_or(2.0 * r) / r
            }
            _ => 1.0,
        }
    }

    /// Settings a resumed run must share, as (flag, differs) pairs.
    pub fn resume_differences(&self, saved: &LowRankConfig) -> Vec<&'static str> {
        let pairs = [
            ("--lowrank", self.mode != saved.mode),
            ("--lowrank-layers", self.layers != saved.layers),
            ("--rank-init", self.rank_init != saved.rank_init),
            ("--rank-buffer", self.rank_buffer != saved.rank_buffer),
            ("--rank-alpha", self.rank_alpha != saved.rank_alpha),
            ("--rank-warmup", self.rank_warmup != saved.rank_warmup),
            ("--rank-gap", self.rank_gap != saved.rank_gap),
            ("--stage1-steps", self.stage1_steps != saved.stage1_steps),
            (
                "--moment-transport",
                self.moment_transport != saved.moment_transport,
            ),
            ("--lowrank-init", self.init != saved.init),
            (
                "--lora-base",
                self.lora_base.as_deref().map(absolute_path)
                    != saved.lora_base.as_deref().map(absolute_path),
            ),
            ("--lora-alpha", self.lora_alpha != saved.lora_alpha),
            (
                "--lora-embeddings",
                self.lora_embeddings != saved.lora_embeddings,
            ),
            (
                "--factor-lr-scale",
                self.factor_lr_scale != saved.factor_lr_scale,
            ),
            ("--dln-eps", self.dln_eps != saved.dln_eps),
            ("--dlra-window", self.dlra_window != saved.dlra_window),
            ("--dlra-tau", self.dlra_tau != saved.dlra_tau),
            (
                "--dlra-fresh-moment",
                self.dlra_fresh_moment != saved.dlra_fresh_moment,
            ),
            ("--dlra-rule", self.dlra_rule != saved.dlra_rule),
            ("--dlra-friction", self.dlra_friction != saved.dlra_friction),
        ];
        pairs.iter().filter(|(_, d)| *d).map(|(n, _)| *n).collect()
    }
}

/// `path` made absolute against the working directory (not resolved further), so that a path
/// recorded by one command still names the same file when another runs elsewhere.
pub fn absolute_path(path: &str) -> String {
    std::path::absolute(path).map_or_else(|_| path.to_string(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        let bad = |c: LowRankConfig, want: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        for alpha in [0.0, -0.5, 1.5, f64::NAN] {
            bad(
                LowRankConfig {
                    rank_alpha: alpha,
                    ..Default::default()
                },
                "--rank-alpha",
            );
        }
        bad(
            LowRankConfig {
                mode: LowRankMode::Lora,
                ..Default::default()
            },
            "--lora-base",
        );
        bad(
            LowRankConfig {
                lora_embeddings: true,
                ..Default::default()
            },
            "--lora-embeddings is only used with --lowrank lora",
        );
        bad(
            LowRankConfig {
                dln_eps: Some(0.1),
                ..Default::default()
            },
            "--dln-eps is only used with --lowrank dln",
        );
        bad(
            LowRankConfig {
                factor_lr_scale: 0.0,
                ..Default::default()
            },
            "--factor-lr-scale",
        );
        bad(
            LowRankConfig {
                rank_gap: 0,
                ..Default::default()
            },
            "--rank-gap",
        );
        LowRankConfig {
            rank_alpha: 1.0,
            ..Default::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn checks_fall_on_the_schedule_and_lora_scales_by_alpha_over_r() {
        let c = LowRankConfig {
            mode: LowRankMode::Efficient,
            rank_warmup: 5,
            rank_gap: 3,
            stage1_steps: 12,
            ..Default::default()
        };
        let due: Vec<u32> = (1..20).filter(|&s| c.check_due(s)).collect();
        assert_eq!(due, vec![5, 8, 11]);
        let lora = LowRankConfig {
            mode: LowRankMode::Lora,
            rank_init: 4,
            lora_alpha: Some(6.0),
            ..Default::default()
        };
        assert_eq!(lora.lora_scale(), 1.5);
        assert!(!lora.check_due(5));
    }
}
