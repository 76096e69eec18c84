//! The training loop, checkpoints, metrics and progress.

pub mod atomic;
pub mod checkpoint;
pub mod checkpoint_writer;
pub mod config;
pub mod evaluate;
pub mod metrics;
pub mod progress;
pub mod ranks;
pub mod run;
mod stops;
pub mod tensor_file;

pub use config::TrainConfig;
pub use run::{run, RunOptions, RunSummary, SampleEvery};
