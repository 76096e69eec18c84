//! GPT-2: configurations, the flat parameter layout with Hugging Face names, activations, and the
//! forward and backward passes written once against `Backend` (llm.c's train_gpt2.c, no autograd).

mod activations;
mod backward;
pub mod config;
pub mod drawn_w0;
mod export;
mod forward;
pub mod generate;
mod gpt;
pub mod hf;
mod linear;
pub mod lora_base;
pub mod memory;
pub mod params;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lowrank;
mod weights;

pub use config::{GptConfig, GPT2_PADDED_VOCAB, GPT2_VOCAB, PRESETS};
pub use gpt::{ActivationPlan, Gpt, Keep, OptimizerBuffers, Trained};
pub use params::{BlockTensor, Init, LowRankTensors, ParamLayout, SpanRole, TensorView};
pub use weights::{master_windows, Start, Weights};
