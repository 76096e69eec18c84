//! The training loop, checkpoints, metrics and progress.

pub mod atomic;
pub mod tensor_file;
