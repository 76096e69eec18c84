//! DIR/metrics.jsonl: one JSON object per logged step, flushed as it is written so a crash loses
//! at most the line being written.

use crate::lowrank::LayerRank;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
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
            .context("cannot append to metrics.jsonl (disk full?)")
    }
}

/// Every record of a metrics file (missing file: none).
pub fn read(path: &Path) -> Result<Vec<StepRecord>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).with_context(|| {
                format!("{} line {}: not a metrics record", path.display(), i + 1)
            })?,
        );
    }
    Ok(out)
}
