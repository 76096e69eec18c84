//! Low-rank linear layers (SCIENCE.md §1, §2, §5): the modes and their settings, which layers are
//! low-rank and their capacities, the live rank of each (a view into capacity allocated once), rank
//! growth and stage-2 truncation with moment transport, the factors' initialisation (spectral and
//! function-aware), rank monitoring, and the cost of a
//! configuration next to dense.

pub mod config;
pub mod cost;
pub mod dlra;
pub mod growth;
pub mod init;
pub mod layer;
pub mod monitor;
pub mod runtime;
pub mod spectrum;
pub mod start;

pub use config::{DlraRule, LowRankConfig, LowRankLayers, LowRankMode, MomentTransport};
pub use init::LowRankInit;
pub use layer::LowRankLayer;
pub use monitor::LayerRank;
pub use runtime::{LiveRank, LowRankRuntime};
pub use start::start_factors;
