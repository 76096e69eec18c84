//! Small shared helpers with no better home.

pub mod rng;
