//! Experiments that reproduce the papers' studies (SCIENCE.md), one module each.

pub mod dln;
