//! Progress over a known number of bytes: an indicatif bar on a terminal, plain lines every 10 %
//! otherwise (logs and CI), so the output is readable either way.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: AtomicU64,
    start: Instant,
}

impl Progress {
    pub fn new(total_bytes: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template(
                "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("the template is valid");
            ProgressBar::new(total_bytes).with_style(style)
        });
        Progress {
            bar,
            total: total_bytes,
            done: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// Counts `bytes` more as done; safe to call from many threads.
    pub fn advance(&self, bytes: u64) {
        let before = self.done.fetch_add(bytes, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.inc(bytes),
            None => {
                let tenth = |n: u64| n * 10 / self.total.max(1);
                if tenth(before + bytes) > tenth(before) {
                    let mib = (before + bytes) as f64 / (1u64 << 20) as f64;
                    eprintln!(
                        "tokenize: {}% ({mib:.1} MiB) after {:.1} s",
                        tenth(before + bytes) * 10,
                        self.start.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
