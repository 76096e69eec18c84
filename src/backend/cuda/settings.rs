//! The CUDA backend's `LOWRANK_*` settings: how each is read, and their effective values.

use super::{gemm, lowrank_linear, LowRankImpl};
use anyhow::Result;

/// The CUDA backend's settings from the environment, each with its effective value or the sentence
/// that rejects it (`lowrank doctor` prints them; `Cuda::new` and the first launch that reads one
/// fail on a bad one).
pub fn settings() -> Vec<(&'static str, std::result::Result<String, String>)> {
    fn show<T>(r: Result<T>, f: impl Fn(T) -> String) -> std::result::Result<String, String> {
        r.map(f).map_err(|e| format!("{e:#}"))
    }
    let on_off = |on: bool| if on { "on" } else { "off" }.to_string();
    vec![
        (
            "LOWRANK_LOWRANK_IMPL",
            show(LowRankImpl::from_env(), |i| format!("{i:?}").to_lowercase()),
        ),
        (
            "LOWRANK_MERGE_BASE",
            show(lowrank_linear::merge_base_from_env(), on_off),
        ),
        (
            "LOWRANK_TMA_TILE",
            show(lowrank_linear::forced_tma_width(), |w| {
                w.map_or("auto (per shape)".into(), |w| w.to_string())
            }),
        ),
        (
            "LOWRANK_WGMMA_NMAJOR",
            show(lowrank_linear::wgmma_nmajor_offsets(), |o| match o {
                (8192, 1024) => "canonical".into(),
                _ => "swap".into(),
            }),
        ),
        (
            "LOWRANK_ATTENTION",
            show(AttentionImpl::from_env(), |i| {
                format!("{i:?}").to_lowercase()
            }),
        ),
        (
            "LOWRANK_BIAS_EPILOGUE",
            show(gemm::bias_epilogue_from_env(), on_off),
        ),
        (
            "LOWRANK_GELU_EPILOGUE",
            show(gemm::gelu_epilogue_from_env(), on_off),
        ),
        (
            "LOWRANK_RESIDUAL_EPILOGUE",
            show(gemm::residual_epilogue_from_env(), on_off),
        ),
        (
            "LOWRANK_BIAS_GRAD_EPILOGUE",
            show(gemm::bias_grad_epilogue_from_env(), on_off),
        ),
    ]
}

/// How the CUDA backend runs causal attention (LOWRANK_ATTENTION sets it at start-up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionImpl {
    /// kernels/flash_attention.cu where it applies (bf16 activations, head size 32 or 64: every
    /// GPT-2 size), the materialised path elsewhere.
    Flash,
    /// Scores and probabilities in memory around cuBLASLt GEMMs (kernels/attention.cu).
    Materialized,
}

impl AttentionImpl {
    /// The choice in LOWRANK_ATTENTION (`flash`, the default, or `materialized`).
    pub fn from_env() -> Result<Self> {
        match std::env::var("LOWRANK_ATTENTION") {
            Err(_) => Ok(AttentionImpl::Flash),
            Ok(v) => match v.trim() {
                "flash" | "" => Ok(AttentionImpl::Flash),
                "materialized" => Ok(AttentionImpl::Materialized),
                other => anyhow::bail!(
                    "LOWRANK_ATTENTION={other:?} is not an implementation; use `flash` or `materialized`"
                ),
            },
        }
    }
}
