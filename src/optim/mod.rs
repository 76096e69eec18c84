//! Optimisation: AdamW over parameter groups, the learning-rate schedule, clipping by global norm.

pub mod adamw;
mod packed;
pub mod schedule;

pub use adamw::{AdamWConfig, AdamWOptimizer, Diverged, GroupRule, ParamGroup};
pub use packed::PackedParams;
pub use schedule::{Decay, LrSchedule};
