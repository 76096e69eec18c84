//! `lowrank bench-train` as a user runs it: one JSON line per model whose rates and memory agree
//! with the step it timed.

mod common;

use common::{lowrank, text};

/// The tiny model (4 layers, 4 heads, width 128, vocabulary padded to 50304) at B = 2, T = 16 on
/// the CPU: the line's activation bytes are the activation plan's closed form (f32 on the CPU,
/// attention's probabilities saved: the CPU runs the materialised attention), and its TFLOP/s are
/// tokens per second times the model's FLOPs per token.
#[test]
fn bench_train_reports_the_step_it_timed() {
    let o = lowrank(&[
        "bench-train",
        "--model",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "16",
        "--steps",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
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
