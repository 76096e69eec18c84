//! The memory plan against closed forms and against what models allocate; the suggestions
//! `check` makes on hosts of chosen sizes.

use super::*;
use crate::backend::cpu::{Cpu, CpuBf16};
use crate::backend::Buffer;
use crate::lowrank::LowRankMode;

/// GPT-2 small's parameters, the vocabulary padded to 50304 rows: embeddings, 12 blocks (two
/// LayerNorms, the attention's qkv and projection, the MLP's two matrices, with biases), ln_f.
const GPT2_PADDED: usize = 50304 * 768
    + 1024 * 768
    + 12 * (2 * 2 * 768
        + 768 * 2304
        + 2304
        + 768 * 768
        + 768
        + 768 * 3072
        + 3072
        + 3072 * 768
        + 768)
    + 2 * 768;

fn training() -> Purpose {
    Purpose::Training {
        checkpoints: true,
        accum: Some(1),
    }
}

fn plan<B: Backend>(b: &B, lr: &LowRankConfig, purpose: Purpose) -> MemoryPlan {
    let config = GptConfig::preset("gpt2").unwrap();
    Gpt::memory_plan(b, &config, lr, ActivationPlan::new(1, 64), purpose).unwrap()
}

/// Four bytes a parameter for the weights and for their gradients, eight for AdamW's moments
/// and twelve for the checkpoint's copy (weights and moments); the bf16 compute copy is kept
/// in f32 on the CPU, four more; inference keeps no moments, reads four bytes a parameter of
/// checkpoint and, keeping nothing for a backward, has no gradients.
#[test]
fn gpt2_small_takes_its_bytes_a_parameter() {
    let dense = LowRankConfig {
        rank_log_every: 0,
        ..Default::default()
    };
    let n = GPT2_PADDED;
    let m = plan(&Cpu, &dense, training());
    assert_eq!(
        (
            m.weights,
            m.gradients,
            m.optimizer,
            m.checkpoint,
            m.rank_log
        ),
        (4 * n, 4 * n, 8 * n, 12 * n, 0)
    );
    assert_eq!(plan(&CpuBf16, &dense, training()).weights, 8 * n);
    // A fresh start's init, as a load, goes to a device a tensor at a time: the largest is the
    // token embedding with its padding rows (f32, and where a copy holds it rounded beside it 4 Mi
    // values at a time, which cpu-bf16 keeps in f32: four bytes each).
    assert_eq!(m.staging, 4 * 50304 * 768);
    let rounded = 4 * (1 << 22);
    assert_eq!(
        plan(&CpuBf16, &dense, training()).staging,
        4 * 50304 * 768 + rounded
    );
    // Staged before the first checkpoint's copy is taken, never beside it.
    assert_eq!(m.host(), 12 * n);
    // Inference reads the checkpoint tensor by tensor into the weights (a LoRA run's, and its
    // base, too): a device backend stages the largest, the token embedding's padded rows, on the
    // host, and nothing else is held beside the weights.
    let inference = plan(&Cpu, &dense, Purpose::Inference);
    assert_eq!(
        (inference.optimizer, inference.checkpoint, inference.staging),
        (0, 0, 4 * 50304 * 768)
    );
    let lora = LowRankConfig {
        mode: crate::lowrank::LowRankMode::Lora,
        rank_init: 8,
        lora_base: Some("the base".into()),
        ..dense.clone()
    };
    let lora_inference = plan(&Cpu, &lora, Purpose::Inference);
    assert!(lora_inference.weights > 4 * n);
    assert_eq!(lora_inference.host(), 4 * 50304 * 768);
    // A LoRA run's checkpoint copies its trained tensors alone: the factors of the 12 MLP's two
    // matrices, 8 × (768 + 3072) values each, and their moments; with --lora-embeddings also
    // wte (its 50257 rows, not the padding) and wpe.
    let factors = 12 * 2 * 8 * (768 + 3072);
    assert_eq!(plan(&Cpu, &lora, training()).checkpoint, 12 * factors);
    let embeddings = LowRankConfig {
        lora_embeddings: true,
        ..lora.clone()
    };
    let trained = factors + 50257 * 768 + 1024 * 768;
    assert_eq!(
        plan(&Cpu, &embeddings, training()).checkpoint,
        4 * trained + 8 * (factors + 50304 * 768 + 1024 * 768)
    );
    // An InRank run's checkpoint leaves out its frozen W0 (the 12 MLPs' two 768 × 3072 matrices):
    // it copies the trained tensors (wte without its 47 padding rows, the factors at capacity
    // 384) and their moments.
    let inrank = LowRankConfig {
        mode: crate::lowrank::LowRankMode::Inrank,
        ..dense.clone()
    };
    let trainable = n - 12 * 2 * 768 * 3072 + 12 * 2 * 384 * (768 + 3072);
    assert_eq!(
        plan(&Cpu, &inrank, training()).checkpoint,
        4 * (trainable - 47 * 768) + 8 * trainable
    );
    // Beside a compute copy (which cpu-bf16 keeps in f32: four bytes) only the trained tensors
    // have f32 masters: LoRA's factors; a model that only evaluates has none, and its tensors
    // are rounded on the host on their way into the copy.
    let lora_bf16 = plan(&CpuBf16, &lora, training()).weights;
    assert_eq!(lora_bf16, 4 * factors + 4 * (n + factors));
    let config = GptConfig::preset("gpt2").unwrap();
    let forward_only = |keep| ActivationPlan {
        keep,
        ..ActivationPlan::new(1, 64)
    };
    let at = forward_only(Keep::Nothing);
    let eval_bf16 = Gpt::memory_plan(&CpuBf16, &config, &dense, at, Purpose::Inference).unwrap();
    assert_eq!(
        (eval_bf16.weights, eval_bf16.staging),
        (4 * n, 4 * 50304 * 768 + rounded)
    );
    assert_eq!(inference.activations, m.activations);
    for keep in [Keep::Nothing, Keep::KvCache] {
        let at = forward_only(keep);
        let m = Gpt::memory_plan(&Cpu, &config, &dense, at, Purpose::Inference).unwrap();
        assert_eq!(m.gradients, 0);
    }

    // The rank log: each MLP matrix's W0 (768 × 3072, 24 of them), their 768² Gram matrices,
    // and each thread's eigensolver work.
    let logged = plan(&Cpu, &LowRankConfig::default(), training());
    let threads = rayon::current_num_threads();
    let grams = 24 * 4 * 768 * 768;
    assert_eq!(
        logged.rank_log,
        24 * 4 * 768 * 3072 + grams + threads * 32 * 768 * 768
    );
}

/// GPT-2 small's activations at batch 1 × 64 on the CPU (f32, attention saving its softmax
/// probabilities, 12 heads × 64²), counted by hand: every layer's for the backward, with the
/// backward's four scratch buffers; one layer's of each with every layer's qkv for decoding;
/// one layer's alone for a forward.
#[test]
fn activations_kept_for_a_backward_for_decoding_and_for_nothing() {
    let config = GptConfig::preset("gpt2").unwrap();
    let dense = LowRankConfig::default();
    let activations = |keep| {
        let plan = ActivationPlan {
            keep,
            ..ActivationPlan::new(1, 64)
        };
        let m = Gpt::memory_plan(&Cpu, &config, &dense, plan, Purpose::Inference).unwrap();
        m.activations
    };
    let (layers, btc, bt, probs) = (12, 64 * 768, 64, 12 * 64 * 64);
    // ln1, qkv (3), atty, residual2, ln2, fch (4), GELU(fch) (4), residual3; four LayerNorm
    // statistics; the probabilities.
    let layer = 16 * btc + 4 * bt + probs;
    // The embeddings, ln_f with its statistics, the logits, the losses.
    let once = btc + btc + 2 * bt + bt * 50304 + bt;
    // dresidual, a (B, T, C) scratch, dqkv, dfch.
    let scratch = btc + btc + 3 * btc + 4 * btc;
    // The low-rank layers' shared scratch, one value in a dense model.
    let once = once + 1;
    let train = Keep::Backward {
        recompute_gelu: false,
    };
    assert_eq!(activations(train), 4 * (layers * layer + once + scratch));
    assert_eq!(
        activations(Keep::KvCache),
        4 * (layer + (layers - 1) * 3 * btc + once)
    );
    assert_eq!(activations(Keep::Nothing), 4 * (layer + once));
}

/// LoRA keeps moments for its adapters alone: rank 8 on the MLP's two matrices of 12 blocks,
/// 8 · (768 + 3072) values each.
#[test]
fn lora_keeps_moments_of_its_adapters_alone() {
    let lora = LowRankConfig {
        mode: LowRankMode::Lora,
        rank_init: 8,
        lora_base: Some("the random init".into()),
        ..Default::default()
    };
    let adapters = 12 * 2 * 8 * (768 + 3072);
    assert_eq!(plan(&Cpu, &lora, training()).optimizer, 8 * adapters);
}

/// The activations, their gradients and the low-rank scratch planned are what a model built
/// for the same plan then holds, in every parameterisation, with GELU kept or recomputed or
/// no backward at all, in f32 and in bf16 (the compute copy too), on a ragged batch.
#[test]
fn the_plan_counts_what_the_model_allocates() {
    fn compare<B: Backend>(b: &B) {
        let config = GptConfig::preset("tiny").unwrap();
        for mode in [
            LowRankMode::Dense,
            LowRankMode::Inrank,
            LowRankMode::Efficient,
            LowRankMode::Lora,
            LowRankMode::Dln,
            LowRankMode::Dlra,
        ] {
            let keeps = [
                Keep::Backward {
                    recompute_gelu: false,
                },
                Keep::Backward {
                    recompute_gelu: true,
                },
                Keep::KvCache,
                Keep::Nothing,
            ];
            for keep in keeps {
                let lr = LowRankConfig {
                    mode,
                    layers: crate::lowrank::LowRankLayers::All,
                    rank_init: 6,
                    lora_base: (mode == LowRankMode::Lora).then(|| "random".into()),
                    ..Default::default()
                };
                let plan = ActivationPlan {
                    batch: 3,
                    seq: 7,
                    keep,
                };
                let m = Gpt::memory_plan(b, &config, &lr, plan, Purpose::Inference).unwrap();
                let model = Gpt::with_plan(b, config, &lr, plan, 1).unwrap();
                let (masters, n) = (model.params().buf().len(), model.layout().len());
                assert_eq!(
                    m.activations,
                    model.activation_bytes(b),
                    "{mode:?} {plan:?}"
                );
                let gradients = model
                    .grads()
                    .map_or(0, |g| b.stored_bytes(g.buf().dtype(), g.buf().len()));
                assert_eq!(m.gradients, gradients);
                assert_eq!(gradients > 0, plan.trains());
                let copy = match b.compute_dtype() {
                    DType::F32 => 0,
                    dtype => b.stored_bytes(dtype, n),
                };
                assert_eq!(m.weights, b.stored_bytes(DType::F32, masters) + copy);
                // Beside a copy, a model that runs forward only keeps no f32 master, and LoRA
                // and InRank none of their frozen tensors.
                let frozen =
                    !plan.trains() || matches!(mode, LowRankMode::Lora | LowRankMode::Inrank);
                assert_eq!(masters < n, copy > 0 && frozen, "{mode:?} {plan:?}");
            }
        }
    }
    compare(&Cpu);
    compare(&CpuBf16);
}

/// A model evaluated from a checkpoint read into its weights (a LoRA run's and its base's too,
/// tensor by tensor) holds no more than while it runs. The check comes before
/// the checkpoint is read, so all of it must be available; where even one token's model does not
/// fit, no batch or length is suggested.
#[test]
fn inference_plans_the_checkpoint_read_into_the_weights() {
    let config = GptConfig::preset("gpt2").unwrap();
    let dense = LowRankConfig::default();
    let eval_at = |batch, seq| ActivationPlan {
        batch,
        seq,
        keep: Keep::Nothing,
    };
    let plan_for = |lr: &LowRankConfig, at| {
        Gpt::memory_plan(&Cpu, &config, lr, at, Purpose::Inference).unwrap()
    };
    let plan = |at| plan_for(&dense, at);
    let small = plan(eval_at(1, 64));
    assert_eq!(small.total(), small.device());
    assert_eq!(small.host(), small.staging);
    let room = |host| Room {
        device: None,
        host: Some(host),
        cgroup: false,
    };
    let p = Proposal {
        model: "gpt2",
        config: &config,
        lr: &dense,
        plan: eval_at(1, 64),
        purpose: Purpose::Inference,
    };
    let free = small.total();
    assert_eq!(refusal(&Cpu, &p, &small, &room(free)), None);
    // A byte short: one token fewer a window would do (the margin grows with the activations).
    let refused = refusal(&Cpu, &p, &small, &room(free - 1)).unwrap();
    assert!(
        refused.contains("The machine has") && refused.contains("Try a shorter --seq."),
        "{refused}"
    );
    // Short of loading even one token's model: no setting helps.
    let least = plan(eval_at(1, 1));
    let refused = refusal(&Cpu, &p, &small, &room(least.total() - 1)).unwrap();
    assert!(
        refused.contains("Its weights alone do not fit: a machine with more memory")
            && !refused.contains("--batch")
            && !refused.contains("--seq"),
        "{refused}"
    );
    // On a GPU short of one token's model (the host roomy): the same, of the GPU.
    let gpu = Room {
        device: Some(least.device() - 1),
        host: Some(1 << 40),
        cgroup: false,
    };
    let refused = refusal(&Cpu, &p, &small, &gpu).unwrap();
    assert!(
        refused.contains("The GPU has")
            && refused.contains("Its weights alone do not fit: a GPU with more memory")
            && !refused.contains("--seq"),
        "{refused}"
    );
}

/// `sample`'s model (one sequence, keys and values kept for decoding): its refusal speaks of
/// the context, its flag --context, and offers no batch (sample has none) and no --seq.
#[test]
fn a_sampling_model_past_the_host_is_told_of_its_context() {
    let config = GptConfig::preset("gpt2").unwrap();
    let dense = LowRankConfig::default();
    let decoding = ActivationPlan {
        batch: 1,
        seq: 1024,
        keep: Keep::KvCache,
    };
    let mem = Gpt::memory_plan(&Cpu, &config, &dense, decoding, Purpose::Inference).unwrap();
    let p = Proposal {
        model: "gpt2",
        config: &config,
        lr: &dense,
        plan: decoding,
        purpose: Purpose::Inference,
    };
    let room = |host| Room {
        device: None,
        host: Some(host),
        cgroup: false,
    };
    let free = mem.total();
    assert_eq!(refusal(&Cpu, &p, &mem, &room(free)), None);
    let refused = refusal(&Cpu, &p, &mem, &room(free - 1)).unwrap();
    assert!(
        refused.starts_with("gpt2 with a context of 1024 tokens needs about")
            && refused.contains("Try a shorter --context (or fewer --tokens).")
            && !refused.contains("--batch")
            && !refused.contains("--seq")
            && !refused.contains("--model"),
        "{refused}"
    );
    // Need and room rounded may read the same: the shortfall says by how much.
    let refused = refusal(&Cpu, &p, &mem, &room(free - 52_000_000)).unwrap();
    assert!(refused.contains("available (52 MB short)."), "{refused}");
}

/// What `alternatives` offers fits the room and is the nearest that does: on a host of a
/// given size, each suggestion's plan fits; a smaller batch is the largest that fits (for
/// eval, any batch: the next one up does not fit; for training with --accum, a divisor of
/// the batch, the next divisor up not fitting, the accumulation keeping the sequences a step).
#[test]
fn alternatives_fit_and_go_no_further_than_they_must() {
    let config = GptConfig::preset("gpt2").unwrap();
    let dense = LowRankConfig::default();
    let room = |host: usize| Room {
        device: None,
        host: Some(host),
        cgroup: false,
    };
    let total = |lr: &LowRankConfig, plan: ActivationPlan, purpose| {
        Gpt::memory_plan(&Cpu, &config, lr, plan, purpose)
            .unwrap()
            .total()
    };
    let quiet = LowRankConfig {
        rank_log_every: 0,
        ..dense.clone()
    };
    let at = |batch| ActivationPlan::new(batch, 256);

    // Evaluation at batch 50 on a host that holds batch 20 and a little, beside the
    // checkpoint it has read already.
    let eval_at = |batch| ActivationPlan {
        keep: Keep::Nothing,
        ..at(batch)
    };
    let p = Proposal {
        model: "gpt2",
        config: &config,
        lr: &dense,
        plan: eval_at(50),
        purpose: Purpose::Inference,
    };
    let twenty = Gpt::memory_plan(&Cpu, &config, &dense, eval_at(20), Purpose::Inference);
    let twenty = twenty.unwrap();
    let host = twenty.total() + 1_000_000;
    let found = alternatives(&Cpu, &p, &room(host));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0.plan, eval_at(20));
    assert_eq!(found[0].0.describe(&p, "x"), "--batch 20 (x)");

    // Training at batch 12 with --accum 3, on a host that holds batch 6 with the rank log
    // off and a little: neither the rank log off nor GELU recomputed fits at 12, so the
    // largest divisor that fits comes with whichever of them it needs.
    let training = Purpose::Training {
        checkpoints: true,
        accum: Some(3),
    };
    let p = Proposal {
        plan: at(12),
        purpose: training,
        ..p
    };
    let host = total(&quiet, at(6), training) + 1_000_000;
    let found = alternatives(&Cpu, &p, &room(host));
    assert_eq!(found.len(), 1, "{found:?}");
    let (a, _) = found[0];
    let lr = if a.rank_log_off { &quiet } else { &dense };
    assert!(total(lr, a.plan, training) <= host);
    assert!(12 % a.plan.batch == 0 && a.plan.batch >= 6, "{a:?}");
    let above = [12, 6, 4, 3, 2, 1]
        .into_iter()
        .rev()
        .find(|&d| d > a.plan.batch)
        .unwrap();
    assert!(
        total(
            &quiet,
            ActivationPlan {
                batch: above,
                ..a.plan
            },
            training
        ) > host
    );
    let said = a.describe(&p, "x");
    assert!(
        said.starts_with(&format!("--batch {}", a.plan.batch))
            && said.contains(&format!("--accum {}", 36 / a.plan.batch))
            && said.ends_with("(x, the same 36 sequences a step)"),
        "{said}"
    );
    // With room for the rank log's absence at batch 12, that alone is offered first.
    let host = total(&quiet, at(12), training) + 1_000_000;
    let found = alternatives(&Cpu, &p, &room(host));
    assert!(
        found[0].0.rank_log_off && found[0].0.plan == at(12),
        "{found:?}"
    );
    assert_eq!(found[0].0.describe(&p, "x"), "--rank-log-every 0 (x)");
}

/// A plan is refused as a model would be: a sequence past the context.
#[test]
fn a_plan_checks_what_the_model_would() {
    let config = GptConfig::preset("gpt2").unwrap();
    let lr = LowRankConfig::default();
    let e =
        Gpt::memory_plan(&Cpu, &config, &lr, ActivationPlan::new(1, 2048), training()).unwrap_err();
    assert!(e.to_string().contains("exceeds the model's context"), "{e}");
}
