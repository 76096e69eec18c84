//! Progress on the terminal: a bar when stderr is a terminal, plain lines otherwise (logs, CI).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Clones share one bar.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    /// What is counted: "step" (training), "batch" (evaluation).
    unit: &'static str,
    /// Without a bar, print a line every this many steps.
    every: u32,
}

impl Progress {
    /// Training's progress: `total` steps, from step `start`.
    pub fn new(start: u32, total: u32) -> Self {
        Self::counting("step", start, total)
    }

    /// Progress over `total` of `unit` (a noun: "batch"), from `start`.
    pub fn counting(unit: &'static str, start: u32, total: u32) -> Self {
        let every = (total / 50).max(1);
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                unit,
                every,
            };
        }
        let bar = bar_at(start, total, ProgressDrawTarget::stderr());
        let template =
            format!("{{bar:30.cyan/blue}} {unit} {{pos}}/{{len}} {{msg}} [{{elapsed_precise}}<{{eta_precise}}]");
        bar.set_style(
            ProgressStyle::with_template(&template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Progress {
            bar: Some(bar),
            unit,
            every,
        }
    }

    /// Reports a finished step; `line` is its one-line summary.
    pub fn step(&self, step: u32, total: u32, line: &str, force_line: bool) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step as u64);
                bar.set_message(line.to_string());
                if force_line {
                    bar.println(format!("{} {step}/{total} {line}", self.unit));
                }
            }
            None if force_line || step.is_multiple_of(self.every) || step == total => {
                eprintln!("{} {step}/{total} {line}", self.unit)
            }
            None => {}
        }
    }

    /// A message that must not be overwritten by the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// A bar of `total` steps at step `start` (a resumed run's). indicatif's rate estimator counts
/// from step 0, so it would take a resumed run's finished steps for one step's progress: the ETA
/// near zero, recovering over minutes. Recording them at once, then forgetting that rate, starts
/// the estimate from the steps this process trains.
fn bar_at(start: u32, total: u32, target: ProgressDrawTarget) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    bar.set_position(start as u64);
    bar.tick();
    bar.reset_eta();
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A run resumed at step 5000 of 10000 whose next step takes at least 50 ms has at least
    /// 4999 × 50 ms ≈ 250 s to go (the estimator counting the resumed steps said ≈ 0.05 s).
    #[test]
    fn a_resumed_bar_estimates_from_the_steps_it_trains() {
        let bar = bar_at(5000, 10_000, ProgressDrawTarget::hidden());
        std::thread::sleep(Duration::from_millis(50));
        bar.set_position(5001);
        bar.tick();
        assert!(bar.eta() > Duration::from_secs(100), "{:?}", bar.eta());
    }
}
