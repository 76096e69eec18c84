//! Experiments that reproduce the papers' studies (SCIENCE.md), one module each: each returns its
//! numbers for the CLI to print and save.

pub mod dln;
pub mod dlra;
pub mod init_study;
