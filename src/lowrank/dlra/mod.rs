//! Geometry-aware low-rank training (SCIENCE.md §3): the f64 DLRA integrator, and its schedule on a
//! GPT's low-rank layers (`lowrank train --lowrank dlra`).

pub mod basis;
pub mod integrator;
pub mod schedule;

pub use integrator::{apply, Dlra, FreshMoment, Keep, Moments, Rule};
