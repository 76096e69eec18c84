//! The memory a model takes, planned from its shapes before anything is allocated, and the check
//! that refuses a run that would not fit with a sentence saying what would. A CPU run past the
//! machine's memory is otherwise killed by the kernel without a word, a minute in (GPT-2 medium at
//! batch 8 × 1024 on a 24 GB machine); a GPU run fails at whichever allocation comes last.

use super::activations::Activations;
use super::config::GptConfig;
use super::gpt::{ActivationPlan, Gpt, Keep, Trained};
use super::hf::{param_groups, trained_spans, CheckpointSource};
use super::params::{BlockTensor, ParamLayout};
use super::weights::master_windows;
use crate::backend::{Backend, DType, Gemm, SeqShape, HOST_STAGE};
use crate::lowrank::{LowRankConfig, LowRankRuntime};
use crate::optim::AdamWOptimizer;
use crate::util::meminfo::{self, gb};
use anyhow::{bail, ensure, Result};

/// Bytes a model holds, by what holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The f32 master weights (beside a compute copy, of the tensors that train alone) and the
    /// copy.
    pub weights: usize,
    /// The gradients of the tensors the backward forms one for (`PackedParams`).
    pub gradients: usize,
    /// AdamW's two f32 moments of the trained tensors (training only).
    pub optimizer: usize,
    /// Activations, their gradients and the low-rank layers' scratch: these grow with the batch.
    pub activations: usize,
    /// The most an op allocates and frees during a step (attention's, or the rank log's update
    /// and Gram matrix), and the copies the CPU's GEMM keeps (the LM head's transposed
    /// embedding, from 1024 channels): an estimate, as `margin` is; the rest is exact.
    pub scratch: usize,
    /// For what the plan does not list (`MARGIN`).
    pub margin: usize,
    /// Host memory whatever the device: the copy each checkpoint is written from (the weights
    /// and both moments), held through a training run,
    pub checkpoint: usize,
    /// and a dense run's rank log: its initial MLP weights, which it measures the update from,
    /// and the update's Gram matrices with their eigensolvers' work.
    pub rank_log: usize,
    /// The host memory the weights pass through on their way to a device backend, one tensor at
    /// a time (the largest): a checkpoint's, a LoRA base's or a fresh start's init. Part of
    /// `host`, which only a device's check reads; a host backend writes its weights themselves.
    pub staging: usize,
}

/// Whether a model trains (optimiser state; a host copy for checkpoints when it writes them;
/// `accum` micro-batches a step, None where the command has no `--accum`) or only runs forward
/// (built from a checkpoint's tensors, read into its weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Training {
        checkpoints: bool,
        accum: Option<usize>,
    },
    Inference,
}

/// The margin for what the plan does not list (LayerNorm's and bias gradients' partial sums,
/// split-K slices, the CPU GEMM's packing and transposed copies, what the allocator keeps): this
/// and a hundredth of the device's listed bytes. On the CPU, GPT-2 small's runs peaked 87 MB above
/// what the plan listed, GPT-2 medium's 150 MB (2026-12-07).
const MARGIN: usize = 128 << 20;

impl MemoryPlan {
    /// What the backend's own memory must hold: all but the host's copies.
    pub fn device(&self) -> usize {
        self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.scratch
            + self.margin
    }

    /// What the host must hold whatever the device: the staging is over (freed) before the
    /// first checkpoint's copy is taken, the rank log is kept from before a resume's read.
    pub fn host(&self) -> usize {
        self.checkpoint.max(self.staging) + self.rank_log
    }

    /// Everything, for a backend whose buffers live in host memory (a checkpoint is read into
    /// its weights, and a LoRA base too, tensor by tensor: nothing is held beside them).
    pub fn total(&self) -> usize {
        self.device() + self.checkpoint + self.rank_log
    }

    /// What holds the memory, by name: the device's parts, and the host's beside them.
    fn parts(&self, on_device: bool) -> String {
        let named = [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("AdamW's moments", self.optimizer),
            ("activations", self.activations),
            ("scratch", self.scratch),
            ("margin", self.margin),
        ];
        let mut shown: Vec<String> = (named.iter())
            .filter(|(_, bytes)| *bytes > 0)
            .map(|(name, bytes)| format!("{name} {}", gb(*bytes)))
            .collect();
        let host = if on_device { " on the host" } else { "" };
        for (name, bytes) in [
            ("checkpoint copy", self.checkpoint),
            ("rank log", self.rank_log),
        ] {
            if bytes > 0 {
                shown.push(format!("{name} {}{host}", gb(bytes)));
            }
        }
        if on_device && self.staging > 0 {
            shown.push(format!(
                "the weights passed through the host a tensor at a time (the largest {})",
                gb(self.staging)
            ));
        }
        shown.join(", ")
    }
}

impl<B: Backend> Gpt<B> {
    /// The memory `with_plan` and (for training) the optimiser and checkpoints would take on `b`,
    /// or (for inference) the checkpoint `from_source` reads, from the shapes alone; the same
    /// checks as `with_plan` refuse a model first.
    pub fn memory_plan(
        b: &B,
        config: &GptConfig,
        lr: &LowRankConfig,
        plan: ActivationPlan,
        purpose: Purpose,
    ) -> Result<MemoryPlan> {
        let layers = plan.check(config, lr)?;
        let layout = ParamLayout::with_lowrank(config, &layers);
        let (n, compute) = (layout.len(), b.compute_dtype());
        let copy = match compute {
            DType::F32 => 0,
            dtype => b.stored_bytes(dtype, n),
        };
        let trained = Trained::of(lr);
        // `Weights`: f32 masters of the tensors that train alone beside a compute copy.
        let masters = (master_windows(&layout, trained, plan.trains(), compute).iter())
            .map(|&(_, len)| len)
            .sum();
        let rows = plan.batch * plan.seq;
        let lora = lr.mode == crate::lowrank::LowRankMode::Lora;
        let activations = Activations::bytes_planned(b, config, plan)
            + LowRankRuntime::bytes_planned(b, &layers, rows, lr.rank_init, lora);
        let shape = SeqShape::new(plan.batch, plan.seq, config.n_embd);
        let mut scratch = b.attention_scratch_bytes(shape, config.n_head);
        // The LM head's product (the largest), whose copies a backend may keep between calls:
        // held beside everything else, so added, not the larger of the two.
        let head = Gemm::new(rows, config.padded_vocab, config.n_embd).trans_b();
        let kept = b.gemm_scratch_bytes(&head);
        // `PackedParams`: the tensors the backward forms a gradient for alone.
        let gradients = (trained.gradient_spans(&layout).iter())
            .map(|&(_, len)| len)
            .sum();
        let mut mem = MemoryPlan {
            weights: b.stored_bytes(DType::F32, masters) + copy,
            gradients: match plan.trains() {
                true => b.stored_bytes(DType::F32, gradients),
                false => 0,
            },
            activations,
            ..Default::default()
        };
        // Read or drawn as f32, then (a tensor in the copy alone) rounded to the compute dtype on
        // the host on its way to the device, a piece of at most `HOST_STAGE` values at a time.
        let largest = (layout.tensors().iter()).map(|t| t.len()).max();
        let largest = largest.unwrap_or(0);
        let rounded = match compute {
            DType::F32 => 0,
            dtype => b.stored_bytes(dtype, largest.min(HOST_STAGE)),
        };
        mem.staging = 4 * largest + rounded;
        if let Purpose::Training { checkpoints, .. } = purpose {
            ensure!(
                plan.trains(),
                "a training run's activations must be kept for the backward, not {:?}",
                plan.keep
            );
            let groups = param_groups(&layout, trained, lr);
            let state = AdamWOptimizer::<B>::state_len(&groups);
            mem.optimizer = 2 * b.stored_bytes(DType::F32, state);
            if checkpoints {
                // The checkpoint's copy: the trained tensors off the device (every one in most
                // runs; in LoRA its factors, a PEFT adapter's; in InRank all but its frozen W0;
                // a run resumed from a checkpoint written before they were left out, which holds
                // every tensor, keeps writing all of them: unplanned), then the moments.
                let saved = match trained.every_tensor(&layout) {
                    true => n,
                    false => (trained_spans(&layout, trained, config.vocab_size).iter())
                        .map(|(span, _)| span.elements())
                        .sum(),
                };
                mem.checkpoint = 4 * (saved + 2 * state);
            }
            if lr.logs_dense_ranks() {
                // The rank log keeps each dense MLP matrix's W0 on the host, forms its update
                // D = W − W0 (f32, twice, and in the compute dtype) and D's Gram matrix on the
                // backend one matrix at a time, and eigensolves the Gram matrices on the host,
                // all of them downloaded first, in f64 on each thread.
                let fc = layout.block(0, BlockTensor::FcWeight);
                let (c, matrix, matrices) = (config.n_embd, fc.len(), 2 * config.n_layer);
                let eigensolves = rayon::current_num_threads() * 4 * 8 * c * c;
                mem.rank_log = 4 * matrix * matrices + 4 * c * c * matrices + eigensolves;
                let copy = match compute {
                    DType::F32 => 0,
                    dtype => b.stored_bytes(dtype, matrix),
                };
                scratch = scratch.max(
                    2 * b.stored_bytes(DType::F32, matrix)
                        + copy
                        + b.stored_bytes(DType::F32, c * c),
                );
            }
        }
        mem.scratch = scratch + kept;
        mem.margin = MARGIN + mem.device() / 100;
        Ok(mem)
    }
}

/// What `check` knows of the run it plans, for its sentences.
pub struct Proposal<'a> {
    /// "gpt2-medium", say.
    pub model: &'a str,
    pub config: &'a GptConfig,
    pub lr: &'a LowRankConfig,
    pub plan: ActivationPlan,
    pub purpose: Purpose,
}

impl Proposal<'_> {
    /// " at batch 8 × 1024 tokens", for one sequence decoded " with a context of 1024 tokens",
    /// and nothing for a model that runs nothing (`export`'s, one token's activations).
    fn shape(&self) -> String {
        match (self.plan.keep, self.plan.batch * self.plan.seq) {
            (Keep::KvCache, _) => format!(" with a context of {} tokens", self.plan.seq),
            (Keep::Nothing, 1) => String::new(),
            _ => format!(" at batch {} × {} tokens", self.plan.batch, self.plan.seq),
        }
    }
}

/// The run's memory plan, after checking that it fits what `b` and the host have free: when it
/// does not, an error naming what the run needs, what there is, and the nearest settings that
/// fit (`alternatives`). `LOWRANK_MEMORY_CHECK=0` skips the refusal (an estimate can be wrong).
pub fn check<B: Backend>(b: &B, p: &Proposal) -> Result<Checked> {
    let mem = Gpt::memory_plan(b, p.config, p.lr, p.plan, p.purpose)?;
    let room = Room::of(b)?;
    let skip = std::env::var("LOWRANK_MEMORY_CHECK").is_ok_and(|v| v == "0");
    match refusal(b, p, &mem, &room).filter(|_| !skip) {
        Some(sentence) => bail!(sentence),
        None => Ok(Checked { plan: mem, room }),
    }
}

/// `check` for a model to be built from `ck` (opened, not read) to run forward only (eval,
/// sample, export), named by its preset where the checkpoint records one.
pub fn check_checkpoint<B: Backend>(
    b: &B,
    ck: &CheckpointSource,
    plan: ActivationPlan,
) -> Result<Checked> {
    let name = ck.preset.as_deref().unwrap_or("the model");
    check(
        b,
        &Proposal {
            model: name,
            config: &ck.config,
            lr: &ck.lowrank,
            plan,
            purpose: Purpose::Inference,
        },
    )
}

/// Why `mem` does not fit `room`, what it needs and what would fit instead; None when it fits.
fn refusal<B: Backend>(b: &B, p: &Proposal, mem: &MemoryPlan, room: &Room) -> Option<String> {
    let short = room.short_of(mem)?;
    let options: Vec<String> = (alternatives(b, p, room).iter())
        .map(|(a, need)| a.describe(p, need))
        .collect();
    let model = match p.purpose {
        Purpose::Training { .. } => "--model",
        Purpose::Inference => "model",
    };
    let advice = match (options.is_empty(), room.device) {
        (false, _) => format!("Try {}.", options.join(", or ")),
        (true, Some(free)) if mem.device() <= free => {
            format!("No batch changes what the host holds: a smaller {model}, or a host with more memory.")
        }
        (true, device) if least_does_not_fit(b, p, room) => {
            let what = match p.purpose {
                Purpose::Training { .. } => "Its weights, gradients and AdamW's moments alone",
                Purpose::Inference => "Its weights alone",
            };
            let more = if device.is_some() {
                "a GPU"
            } else {
                "a machine"
            };
            format!("{what} do not fit: {more} with more memory.")
        }
        // Only a shorter sequence (or, training, a smaller model) is left.
        (true, _) => {
            // sample's --context defaults to the prompt and --tokens.
            let flag = match p.plan.keep {
                Keep::KvCache => "--context (or fewer --tokens)",
                _ => "--seq",
            };
            let smaller = match p.purpose {
                Purpose::Training { .. } => " or a smaller --model",
                Purpose::Inference => "",
            };
            let one = ActivationPlan { batch: 1, ..p.plan };
            match Gpt::memory_plan(b, p.config, p.lr, one, p.purpose) {
                Ok(m) if p.plan.batch > 1 => format!(
                    "Even a batch of one sequence does not fit (it needs {}): try a shorter \
                     {flag}{smaller}.",
                    gb(room.need(&m))
                ),
                _ => format!("Try a shorter {flag}{smaller}."),
            }
        }
    };
    Some(format!(
        "{}{} needs about {} on {}: {}. {short}. {advice} \
         (LOWRANK_MEMORY_CHECK=0 starts it anyway.)",
        p.model,
        p.shape(),
        gb(room.need(mem)),
        b.name(),
        room.parts(mem),
    ))
}

/// Whether the proposal does not fit `room` even at one token (the margin grows with the batch),
/// so that no batch or sequence length would help: its weights alone do not fit.
fn least_does_not_fit<B: Backend>(b: &B, p: &Proposal, room: &Room) -> bool {
    let least = ActivationPlan {
        batch: 1,
        seq: 1,
        ..p.plan
    };
    let plan = Gpt::memory_plan(b, p.config, p.lr, least, p.purpose);
    plan.is_ok_and(|m| room.short_of(&m).is_some())
}

/// Settings that fit where the proposal's do not: the batch, GELU recomputed, the rank log off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Alternative {
    plan: ActivationPlan,
    rank_log_off: bool,
}

impl Alternative {
    /// The flags to pass for it: "--batch 4 --recompute-gelu --accum 2 (…, the same 8 sequences a
    /// step)", with what it would need.
    fn describe(&self, p: &Proposal, need: &str) -> String {
        let mut flags = String::new();
        if self.plan.batch != p.plan.batch {
            flags += &format!(" --batch {}", self.plan.batch);
        }
        if self.plan.recomputes_gelu() && !p.plan.recomputes_gelu() {
            flags += " --recompute-gelu";
        }
        if self.rank_log_off {
            flags += " --rank-log-every 0";
        }
        let same = match p.purpose {
            Purpose::Training {
                accum: Some(accum), ..
            } if self.plan.batch != p.plan.batch => {
                let sequences = accum * p.plan.batch;
                flags += &format!(" --accum {}", sequences / self.plan.batch);
                format!(", the same {sequences} sequences a step")
            }
            _ => String::new(),
        };
        format!("{} ({need}{same})", flags.trim_start())
    }
}

/// The settings nearest the proposal's that fit, with what each would need: for training, no
/// rank log (its host copies) or GELU recomputed at the same batch; then the largest smaller
/// batch (one that divides it where `--accum`, raised, keeps the sequences a step) reached as it
/// is or, for training and where the same batch did not fit so, with GELU recomputed, no rank
/// log, or both (of equal batches, the fewest changes).
fn alternatives<B: Backend>(b: &B, p: &Proposal, room: &Room) -> Vec<(Alternative, String)> {
    let quiet = LowRankConfig {
        rank_log_every: 0,
        ..p.lr.clone()
    };
    let need = |a: Alternative| -> Option<String> {
        let lr = if a.rank_log_off { &quiet } else { p.lr };
        let m = Gpt::memory_plan(b, p.config, lr, a.plan, p.purpose).ok()?;
        room.short_of(&m).is_none().then(|| gb(room.need(&m)))
    };
    let training = matches!(p.purpose, Purpose::Training { .. });
    let as_is = Alternative {
        plan: p.plan,
        rank_log_off: false,
    };
    let mut same_batch = Vec::new();
    if training && p.lr.logs_dense_ranks() {
        same_batch.push(Alternative {
            rank_log_off: true,
            ..as_is
        });
    }
    if training && !p.plan.recomputes_gelu() {
        let plan = ActivationPlan {
            keep: Keep::Backward {
                recompute_gelu: true,
            },
            ..p.plan
        };
        same_batch.push(Alternative { plan, ..as_is });
        if let [quiet, _] = same_batch[..] {
            same_batch.push(Alternative { plan, ..quiet });
        }
    }
    let mut found = Vec::new();
    let mut variants = vec![as_is];
    for a in same_batch {
        match need(a) {
            // Both together only where neither alone fits.
            Some(n) if !(a.rank_log_off && a.plan.recomputes_gelu()) || found.is_empty() => {
                found.push((a, n))
            }
            Some(_) => {}
            None => variants.push(a),
        }
    }
    // Training with --accum keeps its sequences a step only at a divisor of the batch; elsewhere
    // the largest smaller batch that fits will do (memory grows with the batch: bisect).
    let batch = p.plan.batch;
    let keeps_sequences = matches!(p.purpose, Purpose::Training { accum: Some(_), .. });
    // The largest batch any variant reaches; of equals, the one that changes least.
    let smaller = variants.iter().rev().filter_map(|&v| {
        let at = |d: usize| Alternative {
            plan: ActivationPlan { batch: d, ..v.plan },
            ..v
        };
        let fits = |d: usize| need(at(d)).is_some();
        let best = match keeps_sequences {
            true => (1..batch)
                .rev()
                .find(|d| batch.is_multiple_of(*d) && fits(*d)),
            false if batch > 1 && fits(1) => {
                let (mut lo, mut hi) = (1, batch - 1); // fits(lo); find the largest that does
                while lo < hi {
                    let mid = (lo + hi).div_ceil(2);
                    (lo, hi) = if fits(mid) { (mid, hi) } else { (lo, mid - 1) };
                }
                Some(lo)
            }
            false => None,
        };
        best.and_then(|d| Some((at(d), need(at(d))?)))
    });
    found.extend(smaller.max_by_key(|(a, _)| a.plan.batch));
    found
}

/// Memory free for a run: the device's, where buffers are not in host memory, and the host's
/// (and whether a container's limit set it).
struct Room {
    device: Option<usize>,
    host: Option<usize>,
    cgroup: bool,
}

impl Room {
    fn of<B: Backend>(b: &B) -> Result<Room> {
        let host = meminfo::host_room();
        Ok(Room {
            device: b.device_memory_free()?,
            host: host.map(|h| h.bytes),
            cgroup: host.is_some_and(|h| h.cgroup),
        })
    }

    /// The bytes `check` quotes: the device's share where there is a device, else everything.
    fn need(&self, m: &MemoryPlan) -> usize {
        match self.device {
            Some(_) => m.device(),
            None => m.total(),
        }
    }

    fn parts(&self, m: &MemoryPlan) -> String {
        m.parts(self.device.is_some())
    }

    /// "the machine has 23.8 GB", or what a container's memory limit leaves.
    fn host_has(&self, host: usize) -> String {
        match self.cgroup {
            true => format!("its container's memory limit leaves {}", gb(host)),
            false => format!("the machine has {}", gb(host)),
        }
    }

    /// What is short for `m`, as a sentence; None when it fits (or nothing is known).
    fn short_of(&self, m: &MemoryPlan) -> Option<String> {
        // The shortfall too: need and room, both rounded, may read the same.
        let short = |need: usize, has: usize| format!(" ({} short)", gb(need - has));
        match (self.device, self.host) {
            (Some(free), _) if m.device() > free => Some(format!(
                "The GPU has {} free{}",
                gb(free),
                short(m.device(), free)
            )),
            (Some(_), Some(host)) if m.host() > host => Some(format!(
                "Its copies on the host need {} and {} available{}",
                gb(m.host()),
                self.host_has(host),
                short(m.host(), host)
            )),
            (None, Some(host)) if m.total() > host => {
                let has = self.host_has(host);
                Some(format!(
                    "{}{} available{}",
                    has[..1].to_uppercase(),
                    &has[1..],
                    short(m.total(), host)
                ))
            }
            _ => None,
        }
    }
}

/// A plan that fits, with the memory that was free for it.
pub struct Checked {
    pub plan: MemoryPlan,
    room: Room,
}

impl Checked {
    /// The banner's words: "memory: about 13.4 GB of 22.1 GB available (weights ...)".
    pub fn describe(&self) -> String {
        let (m, room) = (&self.plan, &self.room);
        let of = match (room.device, room.host) {
            (Some(free), _) => format!(" of the GPU's {} free", gb(free)),
            (None, Some(host)) => format!(" of {} available", gb(host)),
            (None, None) => String::new(),
        };
        format!("memory: about {}{of} ({})", gb(room.need(m)), room.parts(m))
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
