//! `lowrank bench-train` as a user runs it: one JSON line per model whose rates and memory agree
//! with the step it timed.

mod common;

use common::{lowrank, text};

/// bench-train on the tiny model at B = 2, T = 16 on the CPU, `steps` timed steps.
fn tiny_run(steps: usize, extra: &[&str]) -> std::process::Output {
    let steps = steps.to_string();
    let args = [
        "bench-train",
        "--model",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "16",
        "--steps",
    ];
    let o = lowrank(&[&args[..], &[steps.as_str()], extra].concat());
    assert!(o.status.success(), "{}", text(&o));
    o
}

/// `tiny_run`'s JSON line.
fn tiny_line(steps: usize, extra: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&tiny_run(steps, extra).stdout).expect("one JSON line")
}

/// The tiny model (4 layers, 4 heads, width 128, vocabulary padded to 50304) at B = 2, T = 16 on
/// the CPU: the line's activation bytes are the activation plan's closed form (f32 on the CPU,
/// attention's probabilities saved: the CPU runs the materialised attention), and its TFLOP/s are
/// tokens per second times the model's FLOPs per token.
#[test]
fn bench_train_reports_the_step_it_timed() {
    let line = tiny_line(1, &[]);
    assert_eq!(line["attention"], "materialized", "{line}");
    assert_eq!(line["model"], "tiny");
    assert_eq!(
        line["settings"],
        serde_json::json!({}),
        "the CPU has no backend settings"
    );

    let (l, nh, c, vp, b, t) = (4usize, 4, 128, 50304, 2, 16);
    let (bt, btc) = (b * t, b * t * c);
    let forward = btc // the embeddings' sum, block 0's input
        + l * (btc + 2 * bt) // ln1 and its mean, rstd
        + l * 3 * btc // qkv
        + l * btc // attention output
        + l * b * nh * t * t // the softmax probabilities
        + l * (btc + btc + 2 * bt) // residual2; ln2 and its mean, rstd
        + l * 8 * btc // the MLP's hidden layer before and after GELU
        + l * btc // residual3
        + btc + 2 * bt // ln_f and its mean, rstd
        + bt * vp // logits
        + bt; // losses

    // The running gradients: residual, BTC, qkv, MLP.
    let backward = btc + btc + 3 * btc + 4 * btc;
    // A dense run keeps the low-rank runtime's scratch s at one element.
    let want = 4 * (forward + backward + 1);
    assert_eq!(line["activation_bytes"], want, "{line}");

    let tok_per_s = line["tok_per_s"].as_f64().unwrap();
    assert!(tok_per_s > 0.0, "{line}");
    // PaLM's count: 6 FLOPs per parameter of the matrices (LM head included) and 12·L·C·T for
    // attention's scores and their use, per token.
    let matrices = l * 12 * c * c + c * vp;
    let per_token = 6.0 * matrices as f64 + 12.0 * (l * c * t) as f64;
    let tflops = line["tflops"].as_f64().unwrap();
    let want = tok_per_s * per_token / 1e12;
    assert!((tflops - want).abs() <= 1e-9 * want, "{tflops} vs {want}");
}

/// `--recompute-gelu` keeps one layer's GELU output and a buffer to form each again in the
/// backward instead of every layer's: (4 − 2) layers × B·T·4C f32 fewer on the tiny model, and
/// the same gradients, so the same loss after its optimiser steps.
#[test]
fn recomputing_gelu_saves_its_activations_and_changes_no_number() {
    let (kept, recomputed) = (tiny_line(2, &[]), tiny_line(2, &["--recompute-gelu"]));
    assert_eq!(kept["recompute_gelu"], false);
    assert_eq!(recomputed["recompute_gelu"], true);
    let (l, btc) = (4u64, 2 * 16 * 128);
    let saved = 4 * (l - 2) * 4 * btc;
    let bytes = |line: &serde_json::Value| line["activation_bytes"].as_u64().unwrap();
    assert_eq!(
        bytes(&kept) - bytes(&recomputed),
        saved,
        "{kept}\n{recomputed}"
    );
    assert_eq!(kept["loss"], recomputed["loss"], "{kept}\n{recomputed}");
}

/// `--lowrank lora` times LoRA's step on the random init without a base checkpoint, and its line
/// counts the trained adapters alone: rank r on the tiny model's four MLP pairs, r·(128 + 512) per
/// matrix, two matrices a block, four blocks. A --lora-base given is said not to be read.
#[test]
fn lora_needs_no_base_and_counts_its_adapters() {
    let line = tiny_line(1, &["--lowrank", "lora", "--rank-init", "4"]);
    assert_eq!(line["lowrank"], "lora", "{line}");
    assert_eq!(line["params"], 4 * 2 * 4 * (128 + 512), "{line}");
    let o = tiny_run(
        1,
        &[
            "--lowrank",
            "lora",
            "--rank-init",
            "4",
            "--lora-base",
            "/no/such/base",
        ],
    );
    assert!(
        text(&o).contains("--lora-base /no/such/base is not read"),
        "{}",
        text(&o)
    );
}
