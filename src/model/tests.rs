//! Whole-model tests: the loss and EVERY parameter's gradient against the f64 reference
//! (reference.rs), the loss at init, decoding, and bad input.

use super::reference::{micro, random_tokens, LowRankRef, Reference};
use super::{ActivationPlan, Gpt, GptConfig, Keep};
use crate::backend::cpu::{Cpu, CpuBf16};
use crate::backend::{Backend, Buffer};
use crate::lowrank::LowRankConfig;
use crate::util::rng::Rng;

#[test]
fn loss_and_every_gradient_match_f64_reference() {
    let gpt = Gpt::new(&Cpu, micro(), 2, 5, 1).unwrap();
    assert_gradients_match_reference(gpt, &[]);
}

/// With GELU formed again in the backward (one layer's output kept), every gradient still
/// matches the reference, on a model of three layers, so the kept slot is overwritten before the
/// backward reads the earlier layers.
#[test]
fn gradients_match_f64_reference_with_gelu_recomputed() {
    let cfg = GptConfig {
        n_layer: 3,
        ..micro()
    };
    let plan = ActivationPlan {
        keep: Keep::Backward {
            recompute_gelu: true,
        },
        ..ActivationPlan::new(2, 5)
    };
    let gpt = Gpt::with_plan(&Cpu, cfg, &LowRankConfig::default(), plan, 1).unwrap();
    assert_gradients_match_reference(gpt, &[]);
}

/// Large random weights in every tensor (LayerNorm scales around 1), returned as uploaded: GPT-2's
/// small init would leave attention nearly uniform and hide errors in it.
fn large_random_weights(gpt: &mut Gpt<Cpu>) -> Vec<f32> {
    let mut rng = Rng::new(2);
    let p: Vec<f32> = gpt
        .layout()
        .tensors()
        .iter()
        .flat_map(|t| {
            let shift = if t.name.contains("ln_") && t.name.ends_with("weight") {
                1.0
            } else {
                0.0
            };
            (0..t.len())
                .map(|_| (shift + 0.4 * rng.normal()) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    Cpu.upload(&p, gpt.params_mut().buf_mut().all_mut())
        .unwrap();
    gpt.refresh_compute_copy(&Cpu).unwrap();
    p
}

/// Decoding the batch's first sequence in pieces (three positions, one, the rest) after a forward
/// of a whole batch leaves in its rows the logits the f64 reference gives that sequence alone:
/// each piece attends to the k and v the earlier pieces left, embeds its own positions, and reads
/// nothing of the batch's other sequences.
pub(super) fn assert_decoding_matches_reference(mut gpt: Gpt<Cpu>, lowrank: &[LowRankRef]) {
    let (cfg, batch, seq) = (*gpt.config(), gpt.batch(), gpt.seq());
    let p: Vec<f64> = large_random_weights(&mut gpt)
        .iter()
        .map(|&x| x as f64)
        .collect();
    let tokens = random_tokens(seq, cfg.vocab_size, 5);
    let batch_tokens = random_tokens(batch * seq, cfg.vocab_size, 6);
    gpt.forward(&Cpu, &batch_tokens, None).unwrap();
    for (start, end) in [(0, 3), (3, 4), (4, seq)] {
        gpt.decode(&Cpu, &tokens[start..end], start).unwrap();
    }
    let logits = Cpu.download(gpt.logits()).unwrap();
    let layout = gpt.layout();
    let want = Reference {
        cfg,
        layout,
        p: &p,
        lowrank,
    }
    .logits(&tokens);
    let scale = want.iter().flatten().fold(0.0f64, |m, z| m.max(z.abs()));
    for (t, want) in want.iter().enumerate() {
        let row = &logits[t * cfg.padded_vocab..][..cfg.vocab_size];
        for (v, (&got, &want)) in row.iter().zip(want).enumerate() {
            assert!(
                (got as f64 - want).abs() <= 1e-5 * scale,
                "position {t}, token {v}: decoded logit {got}, reference {want}"
            );
        }
    }
}

/// Large random weights everywhere (padding rows and dormant low-rank rows included: they must
/// not matter), then the loss and EVERY parameter's gradient against the f64 reference by central
/// differences. Frozen tensors (low-rank bases; in LoRA all but the factors) have no gradient
/// memory (`PackedParams` panics at a window of theirs), so nothing can be formed for them.
pub(super) fn assert_gradients_match_reference(mut gpt: Gpt<Cpu>, lowrank: &[LowRankRef]) {
    let (cpu, cfg, batch, seq) = (Cpu, *gpt.config(), gpt.batch(), gpt.seq());
    let p = large_random_weights(&mut gpt);
    let (inputs, targets) = (
        random_tokens(batch * seq, cfg.vocab_size, 3),
        random_tokens(batch * seq, cfg.vocab_size, 4),
    );

    // Two accumulated micro-steps with scales 0.75 and 0.25 must give the gradient of the loss.
    gpt.zero_grads(&cpu).unwrap();
    let loss = gpt.forward(&cpu, &inputs, Some(&targets)).unwrap().unwrap();
    gpt.backward(&cpu, 0.75).unwrap();
    gpt.forward(&cpu, &inputs, Some(&targets)).unwrap();
    gpt.backward(&cpu, 0.25).unwrap();

    let layout = gpt.layout().clone();
    let mut p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let reference = |p: &[f64]| {
        Reference {
            cfg,
            layout: &layout,
            p,
            lowrank,
        }
        .loss(&inputs, &targets, batch)
    };
    let want = reference(&p64);
    assert!(
        ((loss as f64 - want) / want).abs() < 1e-5,
        "loss {loss} vs f64 reference {want}"
    );

    let h = 1e-5;
    let mut worst = (0.0f64, String::new());
    for (index, t) in layout.tensors().iter().enumerate() {
        if !gpt.has_gradient(index) {
            continue;
        }
        let ours = cpu
            .download(gpt.grads().unwrap().at(t.offset, t.len()))
            .unwrap();
        let (mut diff2, mut norm2) = (0.0, 0.0);
        for (i, g) in (t.offset..t.offset + t.len()).zip(&ours) {
            let x = p64[i];
            p64[i] = x + h;
            let up = reference(&p64);
            p64[i] = x - h;
            let down = reference(&p64);
            p64[i] = x;
            let fd = (up - down) / (2.0 * h);
            diff2 += (*g as f64 - fd).powi(2);
            norm2 += fd * fd;
        }
        assert!(
            norm2 > 0.0 || t.name == "transformer.wte.weight",
            "{}: zero gradient, the check would be vacuous",
            t.name
        );
        let rel = (diff2 / norm2).sqrt();
        assert!(
            rel < 1e-3,
            "{}: relative gradient error {rel:e} (‖fd‖ = {:e})",
            t.name,
            norm2.sqrt()
        );
        if rel > worst.0 {
            worst = (rel, t.name.clone());
        }
    }
    let wte = layout.wte();
    if gpt.has_gradient(0) {
        let real = cfg.vocab_size * cfg.n_embd;
        let padding = gpt.grads().unwrap().at(wte.offset + real, wte.len() - real);
        assert!(
            cpu.download(padding).unwrap().iter().all(|&g| g == 0.0),
            "padding rows of wte got gradient"
        );
    }
    eprintln!("worst relative gradient error {:e} in {}", worst.0, worst.1);
}

#[test]
fn loss_at_init_is_log_vocab_plus_logit_variance() {
    // At init every lnf row has Σ x² = C (LayerNorm, weight 1, bias 0), so each logit is
    // N(0, C·0.02²) over the random wte, and E[loss] ≈ ln V + C·0.02²/2. The target's logit
    // averages over 512 tokens with standard error ≈ √(C·0.02²/512) ≈ 0.01; allow 0.05.
    let (cpu, cfg, batch, seq) = (Cpu, GptConfig::preset("tiny").unwrap(), 8, 64);
    let mut gpt = Gpt::new(&cpu, cfg, batch, seq, 7).unwrap();
    let (inputs, targets) = (
        random_tokens(batch * seq, cfg.vocab_size, 8),
        random_tokens(batch * seq, cfg.vocab_size, 9),
    );
    let loss = gpt.forward(&cpu, &inputs, Some(&targets)).unwrap().unwrap() as f64;
    let want = (cfg.vocab_size as f64).ln() + cfg.n_embd as f64 * 0.02f64.powi(2) / 2.0;
    assert!(
        (loss - want).abs() < 0.05,
        "loss at init {loss}, expected ≈ {want}"
    );
}

#[test]
fn forward_without_targets_gives_logits_matching_the_reference_loss() {
    let (cpu, cfg) = (Cpu, micro());
    let mut gpt = Gpt::new(&cpu, cfg, 1, 4, 5).unwrap();
    let (inputs, targets) = (
        random_tokens(4, cfg.vocab_size, 6),
        random_tokens(4, cfg.vocab_size, 7),
    );
    assert_eq!(gpt.forward(&cpu, &inputs, None).unwrap(), None);
    let logits = cpu.download(gpt.logits()).unwrap();
    let from_logits: f64 = (0..4)
        .map(|r| {
            let row: Vec<f64> = logits[r * cfg.padded_vocab..][..cfg.vocab_size]
                .iter()
                .map(|&z| z as f64)
                .collect();
            row.iter().map(|z| z.exp()).sum::<f64>().ln() - row[targets[r] as usize]
        })
        .sum::<f64>()
        / 4.0;
    let p: Vec<f64> = cpu
        .download(gpt.params().buf().all())
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    let want = Reference {
        cfg,
        layout: gpt.layout(),
        p: &p,
        lowrank: &[],
    }
    .loss(&inputs, &targets, 1);
    assert!(
        (from_logits - want).abs() < 1e-5 * want,
        "{from_logits} vs {want}"
    );
}

#[test]
fn decoding_in_pieces_gives_the_references_logits() {
    assert_decoding_matches_reference(Gpt::new(&Cpu, micro(), 1, 6, 1).unwrap(), &[]);
    assert_decoding_matches_reference(Gpt::new(&Cpu, micro(), 3, 6, 1).unwrap(), &[]);
}

/// Models that keep nothing for a backward (one layer's buffers, each layer's forward writing
/// over the last's; every layer's qkv when they decode) give the f64 reference's loss on a batch
/// and, keeping the keys and values, its decoded logits. Three layers, so the one slice is written
/// over twice. They have no gradients, and say so; one without the keys and values cannot decode.
#[test]
fn models_that_run_forward_only_match_the_reference() {
    let cfg = GptConfig {
        n_layer: 3,
        ..micro()
    };
    let build = |keep| {
        let plan = ActivationPlan {
            keep,
            ..ActivationPlan::new(3, 6)
        };
        Gpt::with_plan(&Cpu, cfg, &LowRankConfig::default(), plan, 1).unwrap()
    };
    for keep in [Keep::Nothing, Keep::KvCache] {
        let mut gpt = build(keep);
        let p: Vec<f64> = (large_random_weights(&mut gpt).iter())
            .map(|&x| x as f64)
            .collect();
        let (inputs, targets) = (
            random_tokens(18, cfg.vocab_size, 3),
            random_tokens(18, cfg.vocab_size, 4),
        );
        let loss = gpt.forward(&Cpu, &inputs, Some(&targets)).unwrap().unwrap() as f64;
        let want = Reference {
            cfg,
            layout: gpt.layout(),
            p: &p,
            lowrank: &[],
        }
        .loss(&inputs, &targets, 3);
        assert!(
            ((loss - want) / want).abs() < 1e-5,
            "{keep:?}: loss {loss} vs f64 reference {want}"
        );
        let err = gpt.backward(&Cpu, 1.0).unwrap_err().to_string();
        assert!(err.contains("built to run forward only"), "{err}");
        assert!(gpt.grads().is_err() && gpt.zero_grads(&Cpu).is_err());
    }
    assert_decoding_matches_reference(build(Keep::KvCache), &[]);
    let err = build(Keep::Nothing).decode(&Cpu, &[0], 0).unwrap_err();
    assert!(
        err.to_string().contains("every layer's keys and values"),
        "{err}"
    );
}

/// Decoding needs the positions before its start computed since the last forward or weight
/// change (the master weights or their compute copy), and room in the model's window.
#[test]
fn decoding_refuses_positions_it_has_not_computed_and_past_the_window() {
    let (cpu, cfg) = (Cpu, micro());
    let mut gpt = Gpt::new(&cpu, cfg, 2, 6, 1).unwrap();
    let tokens = random_tokens(12, cfg.vocab_size, 2);
    let err = |r: anyhow::Result<()>| r.unwrap_err().to_string();
    assert_eq!(
        err(gpt.decode(&cpu, &tokens[..1], 1)),
        "decode at position 1: only positions 0..0 are computed"
    );
    gpt.decode(&cpu, &tokens[..4], 0).unwrap();
    gpt.decode(&cpu, &tokens[4..5], 4).unwrap();
    assert_eq!(
        err(gpt.decode(&cpu, &tokens[5..7], 5)),
        "decode of positions 5..7: the model was built for 6"
    );
    gpt.forward(&cpu, &tokens, None).unwrap();
    assert!(err(gpt.decode(&cpu, &tokens[..1], 2)).contains("only positions 0..0"));
    gpt.decode(&cpu, &tokens[..2], 0).unwrap();
    gpt.params_mut();
    assert!(err(gpt.decode(&cpu, &tokens[2..3], 2)).contains("only positions 0..0"));
    gpt.decode(&cpu, &tokens[..2], 0).unwrap();
    gpt.refresh_compute_copy(&cpu).unwrap();
    assert!(err(gpt.decode(&cpu, &tokens[2..3], 2)).contains("only positions 0..0"));
    assert!(err(gpt.decode(&cpu, &[99], 0)).contains("outside the vocabulary of 11"));
}

#[test]
fn bad_input_gets_clear_errors() {
    let (cpu, cfg) = (Cpu, micro());
    let err = Gpt::new(&cpu, cfg, 1, 7, 0).err().unwrap().to_string();
    assert!(
        err.contains("sequence length 7 exceeds the model's context of 6"),
        "{err}"
    );
    let mut gpt = Gpt::new(&cpu, cfg, 2, 3, 0).unwrap();
    let err = gpt.forward(&cpu, &[0, 1, 2], None).unwrap_err().to_string();
    assert!(
        err.contains("got 3 token ids") && err.contains("batch 2 × seq 3 = 6"),
        "{err}"
    );
    let err = gpt
        .forward(&cpu, &[0, 1, 2, 3, 11, 5], None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token id 11 at position 4 is outside the vocabulary of 11"),
        "{err}"
    );
    let err = gpt
        .forward(&cpu, &[0; 6], Some(&[0; 5]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("targets: got 5 token ids"), "{err}");
    gpt.forward(&cpu, &[0; 6], None).unwrap();
    let err = gpt.backward(&cpu, 1.0).unwrap_err().to_string();
    assert!(
        err.contains("backward needs a forward with targets"),
        "{err}"
    );
    let err = Gpt::new(&cpu, GptConfig { n_head: 3, ..cfg }, 1, 2, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not split into 3 heads"), "{err}");
}

/// The compute-copy check (`train --check-compute-copy`) passes a current copy and names the
/// first stale weight wherever it lies, whether the check's chunks are smaller than a tensor or
/// hold the whole model.
#[test]
fn a_stale_compute_copy_is_named_in_any_chunk() {
    let plan = ActivationPlan::new(1, 4);
    let lr = LowRankConfig::default();
    let mut gpt = Gpt::with_plan(&CpuBf16, micro(), &lr, plan, 1).unwrap();
    let name = "transformer.h.1.mlp.c_fc.weight";
    let offset = gpt.layout().find(name).unwrap().offset;
    assert!(offset > 7 * 10, "past the first chunks of 7");
    for chunk in [7, 1 << 20] {
        assert_eq!(gpt.first_stale(&CpuBf16, chunk).unwrap(), None, "{chunk}");
    }
    // A master weight changed and its copy left as it was.
    let params = gpt.params_mut();
    CpuBf16
        .upload(&[3.0], params.at_mut(offset + 5, 1))
        .unwrap();
    for chunk in [7, 1 << 20] {
        let (tensor, i, master, copy) = gpt.first_stale(&CpuBf16, chunk).unwrap().unwrap();
        assert_eq!((tensor.as_str(), i, master), (name, 5, 3.0), "{chunk}");
        assert!((copy.abs()) < 0.5, "the init's value: {copy}");
    }
    gpt.refresh_compute_copy(&CpuBf16).unwrap();
    assert_eq!(gpt.first_stale(&CpuBf16, 7).unwrap(), None);
}
