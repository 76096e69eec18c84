//! lowrank: low-rank pre-training of GPT-2-class models on a Rust runtime with hand-written CUDA
//! kernels. See README.md for the architecture.

pub mod backend;
pub mod cli;
pub mod data;
pub mod experiments;
pub mod kernels;
pub mod lowrank;
pub mod model;
pub mod optim;
pub mod selftest;
pub mod train;
pub mod util;
