//! Hooks for Nsight Systems: NVTX ranges that name the phases of a training step (step, forward,
//! backward, each block, optimizer, ranks, eval, checkpoint) and the window of steps to capture.
//! The ranges cost nothing where the NVTX library is absent (every CPU machine): cudarc panics when
//! it cannot load a library, so its presence is checked once, first.
//!
//! Usage: `nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop
//! lowrank train --device cuda --profile-steps 20:25 ...` records only steps 20 to 25.

use anyhow::{bail, Context, Result};
use std::str::FromStr;
use std::sync::OnceLock;

fn nvtx_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen the library's candidate names.
    *LOADED.get_or_init(|| unsafe { cudarc::nvtx::sys::is_culib_present() })
}

/// An NVTX range, open until dropped; empty when NVTX is not loaded.
#[must_use = "the range closes when this guard is dropped"]
pub struct Range(Option<cudarc::nvtx::Range>);

impl Range {
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }
}

/// Opens a range named `name` (built only when NVTX is loaded).
pub fn range(name: impl FnOnce() -> String) -> Range {
    Range(nvtx_loaded().then(|| cudarc::nvtx::scoped_range(name())))
}

/// Steps `first..=last` (1-based optimiser steps) to run between cuProfilerStart and cuProfilerStop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureWindow {
    pub first: u32,
    pub last: u32,
}

impl FromStr for CaptureWindow {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (a, b) = s
            .split_once(':')
            .with_context(|| format!("{s:?} is not a step window: write FIRST:LAST, e.g. 20:25"))?;
        let parse = |x: &str, what: &str| -> Result<u32> {
            x.trim()
                .parse()
                .with_context(|| format!("{what} step {x:?} in {s:?} is not a whole number"))
        };
        let (first, last) = (parse(a, "first")?, parse(b, "last")?);
        if first == 0 || last < first {
            bail!("step window {s:?} must satisfy 1 ≤ FIRST ≤ LAST (steps count from 1)");
        }
        Ok(CaptureWindow { first, last })
    }
}

impl CaptureWindow {
    /// Whether the profiler should start before step `step` (1-based).
    pub fn starts_at(&self, step: u32) -> bool {
        step == self.first
    }

    /// Whether the profiler should stop after step `step`.
    pub fn stops_after(&self, step: u32) -> bool {
        step == self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_windows_parse_or_say_what_is_wrong() {
        assert_eq!(
            "20:25".parse::<CaptureWindow>().unwrap(),
            CaptureWindow {
                first: 20,
                last: 25
            }
        );
        assert_eq!(
            " 3 : 3".parse::<CaptureWindow>().unwrap(),
            CaptureWindow { first: 3, last: 3 }
        );
        let err = |s: &str| s.parse::<CaptureWindow>().unwrap_err().to_string();
        assert!(err("20").contains("FIRST:LAST"));
        assert!(err("0:5").contains("1 ≤ FIRST ≤ LAST"));
        assert!(err("9:5").contains("1 ≤ FIRST ≤ LAST"));
        assert!(err("a:5").contains("first step"));
        assert!(err("5:-1").contains("last step"));
    }

    #[test]
    fn ranges_are_inert_without_the_nvtx_library() {
        let mut built = false;
        let r = range(|| {
            built = true;
            "step".to_string()
        });
        // On a machine with NVTX the range records and its name is built; without, neither.
        assert_eq!(r.is_recording(), nvtx_loaded());
        assert_eq!(built, nvtx_loaded());
    }
}
