//! DIR/metrics.jsonl: one JSON object per logged step, flushed as it is written so a crash loses
//! at most the line being written.

use crate::lowrank::LayerRank;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// One logged optimiser step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u32,
    /// Training tokens consumed so far.
    pub tokens: u64,
    pub train_loss: f32,
    pub lr: f32,
    pub tok_per_s: f64,
    /// Model FLOPs per second (forward and backward at the live ranks, attention included), in
    /// TFLOP/s; 0 in records written before it was logged.
    #[serde(default)]
    pub tflops: f64,
    /// `tflops` over the GPU's dense bf16 peak, where the peak is known (`Backend::peak_tflops`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mfu: Option<f64>,
    pub params: usize,
    pub grad_norm: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_ppl: Option<f32>,
    /// Per-layer live rank and r90, every `--rank-log-every` steps.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ranks: Option<Vec<LayerRank>>,
}

pub struct MetricsWriter {
    file: File,
}

impl MetricsWriter {
    /// Opens DIR/metrics.jsonl. On resume, lines after `keep_through` (steps an interrupted run
    /// logged after its last checkpoint) are dropped, so the file tells one consistent history.
    pub fn open(path: &Path, keep_through: Option<u32>) -> Result<Self> {
        if let Some(step) = keep_through {
            let kept: Vec<String> = read(path)?
                .into_iter()
                .filter(|r| r.step <= step)
                .map(|r| serde_json::to_string(&r).unwrap())
                .collect();
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            super::atomic::write(path, text.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsWriter { file })
    }

    pub fn write(&mut self, r: &StepRecord) -> Result<()> {
        let line = serde_json::to_string(r)?;
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .context("cannot append to metrics.jsonl")
    }
}

/// Every record of a metrics file (missing file: none). A last line without its newline that does
/// not parse is a write cut short (a full disk, a killed process) and is left out; any other line
/// that does not parse is an error.
pub fn read(path: &Path) -> Result<Vec<StepRecord>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() => {} // no newline after it: a torn last write
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("{} line {}: not a metrics record", path.display(), i + 1)
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_left_out_and_a_corrupt_one_elsewhere_is_an_error() {
        let dir = std::env::temp_dir().join(format!("lowrank-metrics-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let line = |step: u32| {
            format!(
                r#"{{"step":{step},"tokens":64,"train_loss":1.5,"lr":0.001,"tok_per_s":10.0,"params":7,"grad_norm":0.5}}"#
            )
        };
        let (one, two) = (line(1), line(2));
        fs::write(&path, format!("{one}\n{two}\n{}", &line(3)[..40])).unwrap();
        let steps: Vec<u32> = read(&path).unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, [1, 2]);
        // Complete records without a final newline are kept.
        fs::write(&path, format!("{one}\n{two}")).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        // A torn line followed by more is corruption, not a cut-short write.
        fs::write(&path, format!("{one}\n{}\n{two}\n", &line(3)[..40])).unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("line 2: not a metrics record"), "{err}");
        // Resuming rewrites the file without the torn line, so appends start on a fresh line.
        fs::write(&path, format!("{one}\n{two}\n{}", &line(3)[..40])).unwrap();
        let mut w = MetricsWriter::open(&path, Some(2)).unwrap();
        w.write(&read(&path).unwrap()[0]).unwrap();
        assert_eq!(read(&path).unwrap().len(), 3);
        fs::remove_dir_all(&dir).ok();
    }
}
