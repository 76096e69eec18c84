//! Checkpoints: DIR/checkpoint-NNNNNNN/ holds model.safetensors (Hugging Face GPT-2 names; a LoRA
//! run's holds its trained tensors alone, its base staying where `--lora-base` named it; an
//! InRank run's leaves out its frozen W0, drawn again from the run's seed),
//! optimizer.safetensors (AdamW moments) and state.json (step, loader position, config). Each file
//! is written atomically, the directory is complete before DIR/latest is switched to it, and only
//! then is the previous checkpoint removed: an interruption at any point leaves a loadable one.

use super::atomic;
use super::config::TrainConfig;
use super::tensor_file::{self, FlatTensors, TensorFile, TensorRef, TensorSource};
use crate::data::LoaderPosition;
use crate::lowrank::LiveRank;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

const LATEST: &str = "latest";

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u32,
    pub tokens: u64,
    pub loader: LoaderPosition,
    pub config: TrainConfig,
    /// Live ranks of the low-rank layers and whether stage 2 has truncated them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<RankState>,
    /// Set when model.safetensors holds a LoRA run's trained tensors alone: the frozen base is
    /// read again from `config.lowrank.lora_base`, whose tensors must still have this fingerprint
    /// (`tensor_file::fingerprint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_base_fingerprint: Option<String>,
    /// Set when model.safetensors leaves out an InRank run's frozen W0: each is GPT-2's init of
    /// that tensor drawn again from this seed (the run's), as the run's start drew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w0_seed: Option<u64>,
}

/// model.safetensors' metadata key naming the base a LoRA checkpoint's tensors complete.
pub const LORA_BASE_KEY: &str = "lowrank_lora_base";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankState {
    pub live: Vec<LiveRank>,
    pub truncated: bool,
}

/// optimizer.safetensors' tensors: AdamW's first and second moments.
const MOMENTS: [&str; 2] = ["adamw.m", "adamw.v"];

/// A checkpoint to resume from, its files' headers read and their values not yet: the run reads
/// them straight into its weights and moments (`Moments::read_into`).
pub struct OpenCheckpoint {
    pub dir: PathBuf,
    pub model: TensorFile,
    pub moments: Moments,
    pub state: TrainState,
}

/// A checkpoint's AdamW moments, not read yet.
pub struct Moments {
    file: TensorFile,
    /// Values in each moment.
    pub len: usize,
}

impl Moments {
    fn open(dir: &Path) -> Result<Moments> {
        let path = dir.join("optimizer.safetensors");
        let file = TensorFile::open(&path)?;
        let lens = MOMENTS.map(|name| {
            (file.shapes())
                .find(|(n, _)| *n == name)
                .map(|(_, shape)| shape.iter().product::<usize>())
                .with_context(|| format!("{}: optimizer state lacks {name}", dir.display()))
        });
        let [m, v] = lens;
        let (m, v) = (m?, v?);
        ensure!(
            m == v,
            "{} is damaged: its moments hold {m} and {v} values",
            path.display()
        );
        Ok(Moments { file, len: m })
    }

    /// Moment `i` (0: m, 1: v) into `dst`, of `len` values.
    pub fn read_into(&mut self, i: usize, dst: &mut [f32]) -> Result<()> {
        self.file.read_into(MOMENTS[i], dst)
    }
}

/// Writes a checkpoint of `state.step` under `run_dir` and makes it the latest. A write that fails
/// (a full disk) removes what it wrote of the new checkpoint, freeing that space, and leaves the
/// latest one as it was. What writes cut short by a killed process left is removed first.
pub fn save(
    run_dir: &Path,
    model: &FlatTensors,
    m: &[f32],
    v: &[f32],
    state: &TrainState,
) -> Result<PathBuf> {
    let name = format!("checkpoint-{:07}", state.step);
    let dir = run_dir.join(&name);
    let previous = latest_dir(run_dir).ok().flatten();
    remove_incomplete(run_dir, previous.as_deref());
    if previous.as_deref() != Some(dir.as_path()) {
        // This step's checkpoint, written before a kill that came before `latest` moved to it.
        fs::remove_dir_all(&dir).ok();
    }
    let written = write_files(&dir, model, m, v, state)
        .and_then(|()| atomic::write(&run_dir.join(LATEST), name.as_bytes()));
    if let Err(e) = written {
        // Never the latest checkpoint itself, were the same step ever saved again.
        if previous.as_deref() != Some(dir.as_path()) {
            fs::remove_dir_all(&dir).ok();
        }
        return Err(e);
    }
    if let Some(prev) = previous.filter(|p| *p != dir) {
        fs::remove_dir_all(&prev).ok();
    }
    Ok(dir)
}

/// Removes the checkpoint directories under `run_dir` that lack their state.json, which is
/// written last: what a write cut short by a killed process left (at a step the run may never
/// save again; GPT-2 medium's are up to 4.3 GB). None can be loaded; the latest, which always
/// has one, is left alone whatever a failing disk says, as are links and other names.
fn remove_incomplete(run_dir: &Path, latest: Option<&Path>) {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let digits = name.to_str().and_then(|n| n.strip_prefix("checkpoint-"));
        let named = digits.is_some_and(|d| d.len() >= 7 && d.bytes().all(|c| c.is_ascii_digit()));
        let (path, dir) = (entry.path(), entry.file_type().is_ok_and(|t| t.is_dir()));
        let incomplete = matches!(path.join("state.json").try_exists(), Ok(false));
        if named && dir && incomplete && Some(path.as_path()) != latest {
            fs::remove_dir_all(&path).ok();
        }
    }
}

/// The files of one checkpoint directory, each written atomically.
fn write_files(
    dir: &Path,
    model: &FlatTensors,
    m: &[f32],
    v: &[f32],
    state: &TrainState,
) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("lowrank_model".to_string(), state.config.model.clone()),
    ]);
    if let (Some(_), Some(base)) = (
        &state.lora_base_fingerprint,
        &state.config.lowrank.lora_base,
    ) {
        meta.insert(LORA_BASE_KEY.to_string(), base.clone());
    }
    tensor_file::save_views(&dir.join("model.safetensors"), model.views(), meta)?;
    let shapes = [[m.len()], [v.len()]];
    let moments = (MOMENTS.into_iter().zip([m, v]))
        .zip(&shapes)
        .map(|((name, data), shape)| TensorRef { name, shape, data });
    tensor_file::save_views(&dir.join("optimizer.safetensors"), moments, HashMap::new())?;
    atomic::write(
        &dir.join("state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )
}

/// The directory DIR/latest points at, if any.
pub fn latest_dir(run_dir: &Path) -> Result<Option<PathBuf>> {
    match fs::read_to_string(run_dir.join(LATEST)) {
        Ok(name) => Ok(Some(run_dir.join(name.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", run_dir.join(LATEST).display())),
    }
}

/// The checkpoint directory `path` names: a run directory's latest, or a checkpoint itself.
fn checkpoint_dir(path: &Path) -> Result<PathBuf> {
    ensure!(path.exists(), "{} does not exist", path.display());
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    latest_dir(path)?.with_context(|| {
        format!(
            "{} holds no checkpoint (no `latest` file and no state.json)",
            path.display()
        )
    })
}

fn read_state(dir: &Path) -> Result<TrainState> {
    let state_path = dir.join("state.json");
    serde_json::from_str(
        &fs::read_to_string(&state_path)
            .with_context(|| format!("cannot read {}", state_path.display()))?,
    )
    .with_context(|| format!("{} is not a lowrank training state", state_path.display()))
}

/// The training state (step, loader position, settings) of a run's latest checkpoint, without
/// its tensors.
pub fn load_state(path: &Path) -> Result<TrainState> {
    read_state(&checkpoint_dir(path)?)
}

/// A checkpoint's model file, opened (its values not read yet), and its training state, without
/// the optimiser's moments: what evaluating, sampling and exporting need (for GPT-2 small a third
/// of the checkpoint's bytes).
pub struct CheckpointModel {
    pub dir: PathBuf,
    pub model: TensorFile,
    pub state: TrainState,
}

/// Opens the model and reads the state of a run directory's latest checkpoint (or a checkpoint
/// directory itself).
pub fn open_model(path: &Path) -> Result<CheckpointModel> {
    let dir = checkpoint_dir(path)?;
    let state = read_state(&dir)?;
    let model = TensorFile::open(&dir.join("model.safetensors"))?;
    Ok(CheckpointModel { dir, model, state })
}

/// Opens the latest checkpoint of a run directory (or a checkpoint directory itself) to resume
/// from: its state read, its tensor files' headers checked.
pub fn open(path: &Path) -> Result<OpenCheckpoint> {
    let CheckpointModel { dir, model, state } = open_model(path)?;
    let moments = Moments::open(&dir)?;
    Ok(OpenCheckpoint {
        dir,
        model,
        moments,
        state,
    })
}
