//! The training loop, written once against `Backend`: micro-batches with gradient accumulation,
//! AdamW with clipping and the LR schedule, evaluation, metrics, progress, checkpoints, Ctrl-C.

use super::checkpoint::{self, OpenCheckpoint, TrainState};
use super::checkpoint_writer::{CheckpointWriter, Snapshot};
use super::config::TrainConfig;
use super::metrics::{MetricsWriter, StepRecord};
use super::progress::Progress;
use super::ranks::RankSchedule;
use super::stops::{checkpoint_failed, refuse_to_overwrite, run_diverged, run_stops};
use super::{atomic, evaluate};
use crate::backend::Backend;
use crate::data::{default_corpus, tokenizer, BatchShape, Loader, ShardSet, EOT_TOKEN};
use crate::lowrank::cost::cost;
use crate::lowrank::{LowRankConfig, LowRankMode};
use crate::model::generate::{generate, Sampling};
use crate::model::hf::{open_model_checkpoint, Completion};
use crate::model::memory::{self, Proposal, Purpose};
use crate::model::Trained;
use crate::model::{ActivationPlan, Gpt, GptConfig, Keep, Start};
use crate::optim::{AdamWConfig, AdamWOptimizer, Diverged, LrSchedule};
use crate::util::profile::{self, CaptureWindow};
use crate::util::rng::Rng;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a run writes, and how it starts and stops.
pub struct RunOptions {
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
    /// Stop after this step with a checkpoint, as an interruption would (time-sliced clusters; tests).
    pub stop_at: Option<u32>,
    /// Set by Ctrl-C (or SIGTERM): the loop checkpoints after the current step and returns.
    pub interrupted: Arc<AtomicBool>,
    /// Steps to run under the profiler's capture (Nsight Systems, `--capture-range=cudaProfilerApi`).
    pub profile: Option<CaptureWindow>,
    /// Print a sample of the model every so many steps.
    pub samples: Option<SampleEvery>,
    /// Verify around every step that the compute copy of the weights is current (a debugging aid).
    pub check_compute_copy: bool,
}

/// `--sample-every`: `tokens` tokens from a document's start after every `every` steps.
#[derive(Clone, Copy, Debug)]
pub struct SampleEvery {
    pub every: u32,
    pub tokens: usize,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunSummary {
    pub step: u32,
    pub last_train_loss: Option<f32>,
    pub last_val_loss: Option<f32>,
    pub interrupted: bool,
    pub checkpoints: CheckpointCost,
}

/// What a run's checkpoints cost: training pauses to copy a step's tensors off the device (and,
/// were the last checkpoint still being written, for that) while the files are written behind
/// it; the run's end waits for the last one's.
#[derive(Debug, Default)]
pub struct CheckpointCost {
    pub written: u32,
    /// Time spent writing them (behind the steps, but for the last).
    pub writing: Duration,
    /// Training's pauses: the copies off the device, and waits for a write not yet done.
    pub paused: Duration,
    /// The run's end waiting for the last checkpoint's write.
    pub last_wait: Duration,
}

/// The train and validation shard sets of a configuration.
pub fn open_data(cfg: &TrainConfig) -> Result<(ShardSet, Option<ShardSet>)> {
    let Some(pattern) = &cfg.data else {
        let corpus = default_corpus();
        return Ok((corpus.train, Some(corpus.val)));
    };
    let train = ShardSet::open(pattern)
        .with_context(|| format!("cannot open training data {pattern:?}"))?;
    let val = match cfg.val_pattern() {
        Some(p) => Some(ShardSet::open(&p).with_context(|| format!("cannot open validation data {p:?} (set --val-data, or --eval-every 0 to skip evaluation)"))?),
        None => None,
    };
    ensure!(
        val.is_some() || cfg.eval_every == 0,
        "no validation data: pass --val-data, or --eval-every 0 to train without evaluation"
    );
    Ok((train, val))
}

/// Splits (B, T+1) windows into inputs and targets (each B·T, targets shifted by one).
pub fn split_windows(
    windows: &[u32],
    batch: usize,
    seq: usize,
    inputs: &mut Vec<u32>,
    targets: &mut Vec<u32>,
) {
    inputs.clear();
    targets.clear();
    for w in windows.chunks_exact(seq + 1).take(batch) {
        inputs.extend_from_slice(&w[..seq]);
        targets.extend_from_slice(&w[1..]);
    }
}

/// `--check-compute-copy`: the forward reads the compute copy, so a code path that changes the
/// master weights without refreshing it trains on stale weights, silently.
fn ensure_current_copy<B: Backend>(b: &B, model: &Gpt<B>, when: &str) -> Result<()> {
    match model.stale_compute_copy(b)? {
        None => Ok(()),
        Some((tensor, i, master, copy)) => bail!(
            "{when}: the compute copy of {tensor}[{i}] is {copy} but its master weight is {master}: a change of the weights was not copied to the compute dtype"
        ),
    }
}

pub fn run<B: Backend>(b: &B, cfg: TrainConfig, opts: RunOptions) -> Result<RunSummary> {
    cfg.validate()?;
    // Settings first: a bad schedule is refused before the model (seconds for GPT-2) is built.
    let schedule = LrSchedule::new(cfg.lr, cfg.final_lr_frac, cfg.warmup, cfg.steps, cfg.decay)?;
    let gpt_config = GptConfig::preset(&cfg.model)?;
    // Capacities and memory first: a rank that does not fit, or a batch the machine cannot hold,
    // is refused before anything is read or written.
    let plan = ActivationPlan {
        batch: cfg.batch,
        seq: cfg.seq,
        keep: Keep::Backward {
            recompute_gelu: cfg.recompute_gelu,
        },
    };
    let memory = memory::check(
        b,
        &Proposal {
            model: &cfg.model,
            config: &gpt_config,
            lr: &cfg.lowrank,
            plan,
            purpose: Purpose::Training {
                checkpoints: true,
                accum: Some(cfg.accum),
            },
        },
    )?;
    let resume = opts.resume.as_deref().map(checkpoint::open).transpose()?;
    if let Some(ck) = &resume {
        if let Some(diff) = cfg.resume_mismatch(&ck.state.config) {
            bail!("cannot resume from {}: it was trained with different {diff}; pass the same settings or start a new run", ck.dir.display());
        }
    } else {
        refuse_to_overwrite(&opts.out)?;
    }
    if let Some(w) = opts.profile {
        let done = resume.as_ref().map_or(0, |ck| ck.state.step);
        ensure!(
            w.last <= cfg.steps && w.first > done,
            "--profile-steps {}:{} must lie within the steps this run trains, {}..={}",
            w.first,
            w.last,
            done + 1,
            cfg.steps
        );
    }
    let (train_set, val_set) = open_data(&cfg)?;
    // The model first: its shape checks (--seq against the context, say) refuse a run before the
    // output directory exists. GPT-2's init is drawn only where it stays: not under a resumed
    // run's checkpoint, nor --init-from's weights (a dense run's), nor LoRA's base (its factors
    // alone are drawn), each of which replaces every value it covers. A dense run's rank log
    // measures W − W0 from the starting weights: a resumed one draws the init of its MLP
    // matrices alone again, or reads --init-from's weights again.
    let fresh = resume.is_none();
    let read_init_from = fresh || cfg.lowrank.logs_dense_ranks();
    let start = match (fresh, &cfg.lowrank.lora_base) {
        (true, Some(_)) => Start::Factors(cfg.seed),
        (true, None) if cfg.init_from.is_none() => Start::Init(cfg.seed),
        _ => Start::Zero,
    };
    let mut model = Gpt::starting(b, gpt_config, &cfg.lowrank, plan, start)?;
    // InRank's frozen W0 as the start drew it: checkpoints leave it out, to be drawn again.
    let has_w0 = model.layout().lowrank().iter().any(|lt| lt.w0.is_some());
    let mut w0_seed = match start {
        Start::Init(seed) if has_w0 => Some(seed),
        _ => None,
    };
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    atomic::write(
        &opts.out.join("config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    // LoRA's base: read into a fresh run's weights tensor by tensor, fingerprinted as it is read;
    // every checkpoint records the fingerprint.
    let mut lora_fingerprint = None;
    if let (Some(path), true) = (&cfg.lowrank.lora_base, fresh) {
        lora_fingerprint = Some(model.load_lora_base(b, path)?);
    }
    if let Some(init) = cfg.init_from.as_ref().filter(|_| read_init_from) {
        // Read tensor by tensor into the weights: the checkpoint is not held beside the model.
        let tensors = open_model_checkpoint(Path::new(init))
            .and_then(|src| src.into_tensors())
            .with_context(|| format!("cannot load --init-from {init}"))?;
        model
            .load_hf_tensors(b, tensors)
            .with_context(|| format!("--init-from {init} does not fit --model {}", cfg.model))?;
    }
    // Before a resumed run's checkpoint replaces the starting weights.
    let redraw = (!fresh && cfg.init_from.is_none()).then_some(cfg.seed);
    let mut ranks = RankSchedule::new(&cfg.lowrank, b, &model, redraw)?;
    let adamw = AdamWConfig {
        weight_decay: cfg.weight_decay,
        clip: cfg.clip,
        ..Default::default()
    };
    let trainable = model.layout().trainable_len();
    let mut opt = AdamWOptimizer::new(b, adamw, trainable, &model.param_groups(&cfg.lowrank))?;
    let shape = BatchShape {
        batch: cfg.batch,
        seq_len: cfg.seq,
    };
    let mut loader = Loader::new(&train_set, shape, cfg.seed)?;
    let (mut step, mut tokens) = (0u32, 0u64);
    if let Some(ck) = resume {
        // Read tensor by tensor into the weights and moments: the checkpoint is not held beside
        // the model. Checkpoints leave frozen tensors out only where the run vouches for them
        // (`Completion`): a run resumed from a checkpoint that holds them (written before they
        // were left out) keeps writing them, since a LoRA base on disk may have changed since.
        let OpenCheckpoint {
            dir,
            model: saved,
            mut moments,
            state,
        } = ck;
        (lora_fingerprint, w0_seed) = (state.lora_base_fingerprint.clone(), state.w0_seed);
        let tensors = Completion::of(&state).tensors(saved, model.config(), &cfg.lowrank)?;
        (model.load_hf_tensors(b, tensors))
            .with_context(|| format!("resuming from {}", dir.display()))?;
        RankSchedule::restore(&mut model, state.ranks.as_ref())?;
        opt.load_state(b, moments.len, &mut |i, dst| moments.read_into(i, dst))
            .with_context(|| format!("resuming from {}", dir.display()))?;
        opt.step = state.step;
        loader.restore(&state.loader)?;
        (step, tokens) = (state.step, state.tokens);
    }
    let mut metrics = MetricsWriter::open(&opts.out.join("metrics.jsonl"), Some(step))?;
    let progress = Progress::new(step, cfg.steps);
    progress.println(&banner(b, &cfg, &model, &train_set, step));
    progress.println(&memory.describe());
    let settings = b.settings();
    if !settings.is_empty() {
        let shown: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        progress.println(&format!("settings: {}", shown.join(" ")));
    }

    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    let mut summary = RunSummary {
        step,
        last_train_loss: None,
        last_val_loss: None,
        interrupted: false,
        checkpoints: CheckpointCost::default(),
    };
    let mut writer = CheckpointWriter::new(&opts.out, {
        let progress = progress.clone();
        move |warning: &str| progress.println(warning)
    });
    while step < cfg.steps {
        // A checkpoint written behind the last steps that failed (a full disk) stops the run.
        writer.poll().map_err(|f| checkpoint_failed(&opts.out, f))?;
        if opts.profile.is_some_and(|w| w.starts_at(step + 1)) {
            b.profiler_capture(true)?;
        }
        let step_range = profile::range(|| format!("step {}", step + 1));
        let started = Instant::now();
        model.zero_grads(b)?;
        let mut loss_sum = 0.0f64;
        for _ in 0..cfg.accum {
            split_windows(
                loader.next_batch(),
                cfg.batch,
                cfg.seq,
                &mut inputs,
                &mut targets,
            );
            let forward = profile::range(|| "forward".into());
            let loss = model
                .forward(b, &inputs, Some(&targets))?
                .context("forward with targets returns a loss")?;
            drop(forward);
            let _backward = profile::range(|| "backward".into());
            model.backward(b, 1.0 / cfg.accum as f32)?;
            loss_sum += loss as f64;
        }
        let train_loss = (loss_sum / cfg.accum as f64) as f32;
        // At the ranks the forward and backward just ran (the schedule may change them below).
        let flops_per_token = model.training_flops_per_token();
        if !train_loss.is_finite() {
            let what = format!("the training loss is {train_loss}");
            let diverged = Diverged {
                what,
                step: step + 1,
            };
            writer.settle();
            bail!(run_diverged(&opts.out, &cfg, &diverged));
        }
        ranks.before_step(b, &mut model, &mut opt, step + 1)?;
        if opts.check_compute_copy {
            let when = format!("step {}, before the optimiser update", step + 1);
            ensure_current_copy(b, &model, &when)?;
        }
        let lr = schedule.lr(step + 1);
        let bufs = model.optimizer_buffers()?;
        let optimizer = profile::range(|| "optimizer".into());
        let report =
            (opt.step(b, lr, bufs.params, bufs.grads, bufs.compute_copy)).map_err(|e| {
                match e.downcast_ref::<Diverged>() {
                    Some(d) => {
                        writer.settle();
                        anyhow!(run_diverged(&opts.out, &cfg, d))
                    }
                    None => e,
                }
            })?;
        b.synchronize()?;
        drop(optimizer);
        step += 1;
        let rank_range = profile::range(|| "ranks".into());
        let events = ranks.after_step(b, &mut model, &mut opt, step)?;
        if opts.check_compute_copy {
            ensure_current_copy(b, &model, &format!("after step {step}"))?;
        }
        b.synchronize()?;
        drop(rank_range);
        for c in &events.changes {
            progress.println(&format!(
                "step {step}: {} rank {} → {}",
                c.layer, c.from, c.to
            ));
        }
        if events.truncated {
            progress.println(&format!(
                "step {step}: stage 2, factors truncated to their ranks ({:?} moment transport); {:.2}M parameters",
                cfg.lowrank.moment_transport,
                model.num_params() as f64 / 1e6
            ));
        }
        tokens += cfg.tokens_per_step() as u64;
        let tok_per_s = cfg.tokens_per_step() as f64 / started.elapsed().as_secs_f64();
        let tflops = tok_per_s * flops_per_token / 1e12;
        let mfu = b.peak_tflops().map(|peak| tflops / peak);
        // Rank logging is monitoring, not training: outside the step's time.
        let logged_ranks = {
            let _log = profile::range(|| "rank log".into());
            ranks.log(b, &model, step, cfg.steps)?
        };

        let eval_now = cfg.eval_every > 0 && (step % cfg.eval_every == 0 || step == cfg.steps);
        let val_loss = match (&val_set, eval_now) {
            (Some(val), true) => Some({
                let _eval = profile::range(|| "eval".into());
                evaluate::mean_loss(b, &mut model, val, shape, cfg.eval_batches, false)?.loss as f32
            }),
            _ => None,
        };
        let record = StepRecord {
            step,
            tokens,
            train_loss,
            lr,
            tok_per_s,
            tflops,
            mfu,
            params: model.num_params(),
            grad_norm: report.grad_norm,
            val_loss,
            val_ppl: val_loss.map(f32::exp),
            ranks: logged_ranks,
        };
        metrics.write(&record).map_err(|e| {
            writer.settle();
            let stops = run_stops(&opts.out, &format!("step {step} could not be logged"), &e);
            e.context(stops)
        })?;
        let mut line = format!(
            "loss {train_loss:.4} lr {lr:.2e} |g| {:.3} {tok_per_s:.0} tok/s",
            report.grad_norm
        );
        if let Some(m) = mfu {
            line += &format!(" MFU {:.1}%", 100.0 * m);
        }
        if let Some(v) = val_loss {
            line += &format!(" val {v:.4} (ppl {:.2})", v.exp());
        }
        progress.step(step, cfg.steps, &line, val_loss.is_some());
        if let Some(s) = opts.samples.filter(|s| step % s.every == 0) {
            let _sample = profile::range(|| "sample".into());
            let text = sample(b, &mut model, s.tokens, step)?;
            progress.println(&format!("step {step} sample: {text}"));
        }
        summary.last_train_loss = Some(train_loss);
        summary.last_val_loss = val_loss.or(summary.last_val_loss);
        drop(step_range);
        if opts.profile.is_some_and(|w| w.stops_after(step)) {
            b.synchronize()?;
            b.profiler_capture(false)?;
        }

        let interrupted = opts.interrupted.load(Ordering::SeqCst);
        let stop = interrupted || opts.stop_at == Some(step);
        if stop
            || step == cfg.steps
            || (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0)
        {
            let checkpoint_range = profile::range(|| "checkpoint".into());
            let paused = Instant::now();
            // One snapshot on the host at a time: the last checkpoint is written first.
            (writer.wait()).map_err(|f| checkpoint_failed(&opts.out, f))?;
            let state = TrainState {
                step,
                tokens,
                loader: loader.position(),
                config: cfg.clone(),
                ranks: RankSchedule::state(&model),
                lora_base_fingerprint: lora_fingerprint.clone(),
                w0_seed,
            };
            // Copied off the device here, into the last snapshot's memory; written to disk
            // behind the next steps.
            let frozen_out = lora_fingerprint.is_some() || w0_seed.is_some();
            let snapshot = take_snapshot(b, &model, &opt, frozen_out, state, writer.take_spare())?;
            (writer.start(snapshot)).map_err(|f| checkpoint_failed(&opts.out, f))?;
            summary.checkpoints.paused += paused.elapsed();
            drop(checkpoint_range);
            if stop {
                let dir = (writer.wait())
                    .map_err(|f| checkpoint_failed(&opts.out, f))?
                    .context("the checkpoint just started")?;
                progress.println(&format!(
                    "{} at step {step}: checkpoint {}; continue with --resume {}",
                    if interrupted {
                        "interrupted"
                    } else {
                        "stopped"
                    },
                    dir.display(),
                    opts.out.display()
                ));
                summary.interrupted = true;
                break;
            }
        }
    }
    // The last checkpoint, written after the last step (a stop waited for its own).
    let last_wait = Instant::now();
    (writer.wait()).map_err(|f| checkpoint_failed(&opts.out, f))?;
    summary.checkpoints.last_wait = last_wait.elapsed();
    (summary.checkpoints.written, summary.checkpoints.writing) = writer.written();
    progress.finish();
    summary.step = step;
    Ok(summary)
}

/// The step's tensors copied off the device for a checkpoint (with `frozen_out`, the trained ones
/// alone: LoRA's base is fingerprinted, InRank's W0 drawn again from the seed), into `spare`'s
/// memory when there is one.
fn take_snapshot<B: Backend>(
    b: &B,
    model: &Gpt<B>,
    opt: &AdamWOptimizer<B>,
    frozen_out: bool,
    state: TrainState,
    spare: Option<Snapshot>,
) -> Result<Snapshot> {
    let (values, mut m, mut v) =
        spare.map_or_else(Default::default, |s| (s.model.values, s.m, s.v));
    let model = match frozen_out {
        true => model.checkpoint_tensors(b, values)?,
        false => model.to_hf_flat(b, values)?,
    };
    let [dm, dv] = opt.state();
    for (host, device) in [(&mut m, dm), (&mut v, dv)] {
        host.resize(device.len, 0.0);
        b.download_into(device, host)?;
    }
    Ok(Snapshot { model, m, v, state })
}

/// Parameters and FLOPs per token of the configuration at its live ranks, next to dense.
fn cost_line<B: Backend>(lr: &LowRankConfig, model: &Gpt<B>) -> String {
    let (c, dense) = (
        model.cost(),
        cost(model.config(), model.seq(), &[], &[], Trained::All),
    );
    let text = |p: usize, f: f64| {
        format!(
            "{:.2}M parameters, {:.2} MFLOP/token",
            p as f64 / 1e6,
            f / 1e6
        )
    };
    if lr.mode == LowRankMode::Dense {
        return text(c.params, c.flops_per_token) + " (forward + backward)";
    }
    let layers = &model.lowrank().layers;
    let sizes = layers.first().map_or(String::new(), |l| {
        format!(
            "capacity R = {}, buffer b = {}, ranks up to {}",
            l.capacity, l.buffer, l.max_rank
        )
    });
    format!(
        "--lowrank {} on {} {} layers ({sizes}): {} trainable (forward + backward), {:.2}× the parameters and {:.2}× the FLOPs of dense ({})",
        flag_value(&lr.mode),
        layers.len(),
        flag_value(&lr.layers),
        text(c.params, c.flops_per_token),
        c.params as f64 / dense.params as f64,
        c.flops_per_token / dense.flops_per_token,
        text(dense.params, dense.flops_per_token)
    )
}

/// A value as the user types it on the command line (`efficient`, not `Efficient`).
fn flag_value(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

fn banner<B: Backend>(
    b: &B,
    cfg: &TrainConfig,
    model: &Gpt<B>,
    data: &ShardSet,
    step: u32,
) -> String {
    format!(
        "training {}{} on {}: {}, {} tokens/step (B={} T={} accum={}), data {}{}",
        cfg.model,
        cfg.init_from
            .as_ref()
            .map(|c| format!(" from {c}"))
            .unwrap_or_default(),
        b.name(),
        cost_line(&cfg.lowrank, model),
        cfg.tokens_per_step(),
        cfg.batch,
        cfg.seq,
        cfg.accum,
        data.describe(),
        if step > 0 {
            format!(", resuming at step {step}")
        } else {
            String::new()
        }
    )
}

/// A sample from a document's start in the training model's row 0 (top-40, temperature 1, seeded
/// by the step, so runs and resumes print the same text); newlines shown as ⏎. The forward
/// passes overwrite only activations, which the next step recomputes.
fn sample<B: Backend>(b: &B, model: &mut Gpt<B>, tokens: usize, step: u32) -> Result<String> {
    let sampling = Sampling {
        temperature: 1.0,
        top_k: 40,
    };
    let mut rng = Rng::new(0x5A3B_1E00 ^ step as u64);
    let eot = u32::from(EOT_TOKEN);
    let out = generate(
        b,
        model,
        &[eot],
        tokens,
        sampling,
        &mut rng,
        |t| t == eot,
        |_| Ok(()),
    )?;
    Ok(tokenizer::decode(&out).replace('\n', "⏎"))
}

#[cfg(test)]
mod tests {
    use super::split_windows;

    #[test]
    fn windows_split_into_shifted_inputs_and_targets() {
        let (mut i, mut t) = (Vec::new(), Vec::new());
        split_windows(&[1, 2, 3, 4, 5, 6, 7, 8], 2, 3, &mut i, &mut t);
        assert_eq!(i, vec![1, 2, 3, 5, 6, 7]);
        assert_eq!(t, vec![2, 3, 4, 6, 7, 8]);
    }
}
