//! Optimisation: AdamW over parameter groups, the learning-rate schedule, clipping by global norm.

pub mod adamw;
pub mod schedule;

pub use adamw::{AdamWConfig, AdamWOptimizer, Diverged, GroupRule, ParamGroup};
pub use schedule::{Decay, LrSchedule};
