//! Optimisation: AdamW over parameter groups, the learning-rate schedule, clipping by global norm.

pub mod adamw;
mod grads;
pub mod schedule;

pub use adamw::{AdamWConfig, AdamWOptimizer, Diverged, GroupRule, ParamGroup};
pub use grads::ParamGrads;
pub use schedule::{Decay, LrSchedule};
