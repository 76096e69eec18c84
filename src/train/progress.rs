//! Progress on the terminal: a bar when stderr is a terminal, plain lines otherwise (logs, CI).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Without a bar, print a line every this many steps.
    every: u32,
}

impl Progress {
    pub fn new(start: u32, total: u32) -> Self {
        let every = (total / 50).max(1);
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None, every };
        }
        let bar = ProgressBar::new(total as u64).with_position(start as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} step {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Progress {
            bar: Some(bar),
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
                    bar.println(format!("step {step}/{total} {line}"));
                }
            }
            None if force_line || step.is_multiple_of(self.every) || step == total => {
                eprintln!("step {step}/{total} {line}")
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
