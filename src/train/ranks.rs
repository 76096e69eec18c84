//! The training loop's low-rank schedule and rank monitoring: growth checks in stage 1,
//! truncation when stage 2 begins, DLRA's windows, and the per-layer ranks logged to
//! metrics.jsonl.

use super::checkpoint::RankState;
use crate::backend::Backend;
use crate::lowrank::dlra::schedule as dlra;
use crate::lowrank::growth::{self, RankChange};
use crate::lowrank::monitor::{lowrank_ranks, DenseMonitor};
use crate::lowrank::{LayerRank, LowRankConfig, LowRankMode};
use crate::model::Gpt;
use crate::optim::AdamWOptimizer;
use anyhow::{ensure, Result};

/// What happened to the ranks after one optimiser step.
#[derive(Default)]
pub struct RankEvents {
    pub changes: Vec<RankChange>,
    pub truncated: bool,
}

pub struct RankSchedule {
    cfg: LowRankConfig,
    /// r90 of W − W0 for a dense run's MLP matrices.
    dense: Option<DenseMonitor>,
}

impl RankSchedule {
    /// The schedule of `model`. A dense run that logs ranks keeps its MLP matrices' starting
    /// values, the W0 of the W − W0 it measures: the model's now, or with `redraw`, GPT-2's init
    /// drawn again from that seed (a resumed run's model holds its checkpoint's values).
    pub fn new<B: Backend>(
        cfg: &LowRankConfig,
        b: &B,
        model: &Gpt<B>,
        redraw: Option<u64>,
    ) -> Result<Self> {
        let dense = match cfg.logs_dense_ranks() {
            true => Some(DenseMonitor::new(b, model, redraw)?),
            false => None,
        };
        Ok(RankSchedule {
            cfg: cfg.clone(),
            dense,
        })
    }

    /// Restores the live ranks a checkpoint recorded.
    pub fn restore<B: Backend>(model: &mut Gpt<B>, state: Option<&RankState>) -> Result<()> {
        let Some(state) = state else { return Ok(()) };
        let lr = model.lowrank_mut();
        ensure!(
            state.live.len() == lr.live.len(),
            "the checkpoint records ranks of {} low-rank layers, this model has {}",
            state.live.len(),
            lr.live.len()
        );
        lr.live = state.live.clone();
        lr.truncated = state.truncated;
        Ok(())
    }

    /// The live ranks, for a checkpoint (None in a dense model).
    pub fn state<B: Backend>(model: &Gpt<B>) -> Option<RankState> {
        let lr = model.lowrank();
        (!lr.live.is_empty()).then(|| RankState {
            live: lr.live.clone(),
            truncated: lr.truncated,
        })
    }

    /// Runs between the backward passes of optimiser step `step` (1-based) and the step itself:
    /// DLRA augments its bases at a window's start. (The bases' gradients stay out of the
    /// optimiser by their groups' learning-rate scale 0: neither stepped nor in the norm.)
    pub fn before_step<B: Backend>(
        &mut self,
        b: &B,
        model: &mut Gpt<B>,
        opt: &mut AdamWOptimizer<B>,
        step: u32,
    ) -> Result<()> {
        match self.cfg.mode {
            LowRankMode::Dlra if self.cfg.dlra_augments(step) => {
                dlra::augment(b, model, opt, self.cfg.dlra_fresh_moment)
            }
            _ => Ok(()),
        }
    }

    /// Runs after optimiser step `step` (1-based): growth checks, truncation, DLRA's window end.
    pub fn after_step<B: Backend>(
        &mut self,
        b: &B,
        model: &mut Gpt<B>,
        opt: &mut AdamWOptimizer<B>,
        step: u32,
    ) -> Result<RankEvents> {
        let mut ev = RankEvents::default();
        if self.cfg.check_due(step) && !model.lowrank().truncated {
            ev.changes = growth::grow(b, model, self.cfg.rank_alpha)?;
        }
        if self.cfg.grows() && step >= self.cfg.stage1_steps && !model.lowrank().truncated {
            growth::truncate(b, model, opt, self.cfg.moment_transport)?;
            ev.truncated = true;
        }
        if self.cfg.dlra_truncates(step) {
            ev.changes = dlra::truncate(b, model, opt, self.cfg.dlra_tau)?;
        }
        Ok(ev)
    }

    /// The per-layer ranks to log after optimiser step `step` of `last` (None between logging
    /// steps). Monitoring, not the method: the training loop times its steps without it.
    pub fn log<B: Backend>(
        &mut self,
        b: &B,
        model: &Gpt<B>,
        step: u32,
        last: u32,
    ) -> Result<Option<Vec<LayerRank>>> {
        let every = self.cfg.rank_log_every;
        if every == 0 || !(step.is_multiple_of(every) || step == last) {
            return Ok(None);
        }
        Ok(Some(match &mut self.dense {
            Some(d) => d.ranks(b, model)?,
            None => lowrank_ranks(b, model)?,
        }))
    }
}
