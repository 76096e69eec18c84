//! Small shared helpers with no better home.

pub mod meminfo;
pub mod plot;
pub mod profile;
pub mod rng;
