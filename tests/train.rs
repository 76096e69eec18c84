//! `lowrank train`, `eval`, `sample` and `plot` as a user runs them, on the built-in corpus with tiny shapes.

mod common;

use common::{lowrank, records, text, tmp, tokenize_texts, train, trajectory};
use std::path::Path;

/// LoRA at rank 4 on every linear layer (the base comes with `--lora-base`).
const LORA_ALL: [&str; 6] = [
    "--lowrank",
    "lora",
    "--lowrank-layers",
    "all",
    "--rank-init",
    "4",
];

/// Trains 6 steps straight and as 3 + 3 with a resume; returns both runs' records. A checkpoint
/// every step: the one resumed from is written into the memory of the snapshots before it.
fn straight_and_resumed(name: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let (a, b) = (
        tmp(&format!("{name}-straight")),
        tmp(&format!("{name}-resumed")),
    );
    let with = |more: &[&'static str]| -> Vec<&str> {
        let mut args = vec!["--steps", "6", "--checkpoint-every", "1"];
        args.extend_from_slice(extra);
        args.extend_from_slice(more);
        args
    };
    let o = train(&a, &with(&[]));
    assert!(o.status.success(), "{}", text(&o));
    let o = train(&b, &with(&["--stop-at", "3"]));
    assert!(
        o.status.success() && text(&o).contains("--resume"),
        "{}",
        text(&o)
    );
    assert_eq!(records(&b).len(), 3);
    let resume = b.to_str().unwrap().to_string();
    let mut args = with(&[]);
    args.extend(["--resume", &resume]);
    let o = train(&b, &args);
    assert!(o.status.success(), "{}", text(&o));
    let (ra, rb) = (records(&a), records(&b));
    assert_eq!(ra.len(), 6);
    assert_eq!(
        trajectory(&ra),
        trajectory(&rb),
        "{name}: resumed run diverged from the uninterrupted one"
    );
    ra
}

#[test]
fn interrupted_and_resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    // DLRA stops in the middle of its first window (augmented bases, S full) and changes ranks
    // at the window's end by its tolerance.
    let dlra = [
        "--lowrank",
        "dlra",
        "--rank-init",
        "8",
        "--dlra-window",
        "4",
        "--dlra-tau",
        "0.6",
        "--rank-log-every",
        "1",
    ];
    let rd = straight_and_resumed("dlra", &dlra);
    let ranks = |r: &serde_json::Value| -> Vec<u64> {
        let ranks = r["ranks"].as_array().expect("ranks logged");
        ranks.iter().map(|x| x["rank"].as_u64().unwrap()).collect()
    };
    assert!(ranks(&rd[2]).iter().all(|&r| r == 8), "{}", rd[2]);
    assert!(
        ranks(&rd[3]).iter().any(|&r| r < 8),
        "τ = 0.6 cuts some rank: {}",
        rd[3]
    );
    // LoRA with its embeddings over a dense base: moments for those tensors alone.
    let base = tmp("resume-lora-base");
    assert!(train(&base, &["--steps", "2"]).status.success());
    let base_arg = ["--lora-embeddings", "--lora-base", base.to_str().unwrap()];
    straight_and_resumed("lora", &[&LORA_ALL[..], &base_arg[..]].concat());
    // InRank in the GPU's precision: its frozen W0 keeps no f32 master there (the compute copy
    // holds it), and its checkpoint leaves it out: the resume draws it again from the seed and
    // rounds it into the copy as the start did.
    let inrank = [
        "--device",
        "cpu-bf16",
        "--lowrank",
        "inrank",
        "--rank-warmup",
        "2",
    ];
    straight_and_resumed("inrank-bf16", &[&inrank[..], &["--rank-gap", "2"]].concat());
    // A dense run from another's weights: the rank log measures W − W0 from --init-from's.
    let from = [
        "--init-from",
        base.to_str().unwrap(),
        "--rank-log-every",
        "1",
    ];
    straight_and_resumed("init-from", &from);
    let ra = straight_and_resumed("dense", &[]);
    for key in [
        "step",
        "tokens",
        "train_loss",
        "lr",
        "tok_per_s",
        "tflops",
        "params",
        "grad_norm",
    ] {
        assert!(ra[0].get(key).is_some(), "metrics lack {key}: {}", ra[0]);
    }
    assert!(
        ra[1].get("val_loss").is_some() && ra[1].get("val_ppl").is_some(),
        "{}",
        ra[1]
    );
}

/// `--device cpu-bf16` runs the program the CUDA backend runs (bf16 weights and activations, f32
/// master weights of the trained tensors): every method trains there with its compute copy
/// current before and after every step (growth, truncation, DLRA's basis changes, LoRA, a
/// resume), and a dense run's validation losses follow the f32 reference's to bf16's precision.
#[test]
fn every_method_trains_in_bf16_with_a_current_compute_copy() {
    let base = tmp("bf16-lora-base");
    assert!(train(&base, &["--steps", "2"]).status.success());
    let checked = |dir: &Path, extra: &[&str]| {
        let args = [
            "--device",
            "cpu-bf16",
            "--check-compute-copy",
            "--steps",
            "12",
        ];
        let o = train(dir, &[&args[..], extra].concat());
        assert!(o.status.success(), "{}: {}", dir.display(), text(&o));
    };
    let growth = [
        "--rank-warmup",
        "2",
        "--rank-gap",
        "2",
        "--stage1-steps",
        "6",
    ];
    let dlra = ["--lowrank", "dlra", "--rank-init", "8"];
    let runs: [(&str, Vec<&str>); 7] = [
        (
            "efficient",
            [&["--lowrank", "efficient"][..], &growth].concat(),
        ),
        ("inrank", [&["--lowrank", "inrank"][..], &growth].concat()),
        (
            "lora",
            [
                &LORA_ALL[..],
                &["--lora-embeddings", "--lora-base"],
                &[base.to_str().unwrap()],
            ]
            .concat(),
        ),
        ("dln", vec!["--mlp-dln", "--rank-init", "8"]),
        (
            "dlra",
            [&dlra[..], &["--dlra-window", "3", "--dlra-tau", "0.3"]].concat(),
        ),
        ("dlra-k1", [&dlra[..], &["--dlra-window", "1"]].concat()),
        (
            "dlra-hb",
            [&dlra[..], &["--dlra-rule", "heavy-ball"]].concat(),
        ),
    ];
    for (name, extra) in &runs {
        let dir = tmp(&format!("bf16-{name}"));
        checked(&dir, extra);
    }
    // A resume reloads the master weights mid-window: the copy must follow.
    let dir = tmp("bf16-resume");
    checked(&dir, &[&dlra[..], &["--stop-at", "4"]].concat());
    checked(
        &dir,
        &[&dlra[..], &["--resume", dir.to_str().unwrap()]].concat(),
    );
    assert_eq!(records(&dir).len(), 12);
    // Dense: bf16 rounding moves the validation losses, by little (single training batches can
    // amplify rounding-level differences of the weights: scripts/compare-runs.py).
    let (bf16, f32) = (tmp("bf16-dense"), tmp("bf16-dense-f32"));
    checked(&bf16, &[]);
    assert!(train(&f32, &["--steps", "12"]).status.success());
    let losses = |d: &Path| -> Vec<f64> {
        records(d)
            .iter()
            .filter_map(|r| r["val_loss"].as_f64())
            .collect()
    };
    let (lb, lf) = (losses(&bf16), losses(&f32));
    assert_eq!(lb.len(), 6, "evaluated every 2 steps");
    assert!(lb != lf, "cpu-bf16 computed exactly the f32 losses: {lb:?}");
    for (b, f) in lb.iter().zip(&lf) {
        assert!((b - f).abs() <= 0.02 * f, "bf16 {lb:?}\nf32  {lf:?}");
    }
}

#[test]
fn eval_and_plot_read_what_train_wrote() {
    let dir = tmp("evalplot");
    let o = train(&dir, &["--steps", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    // Each record's model FLOP rate is its token rate times the tiny model's training FLOPs per
    // token at T = 16, 3·(2·(L·12C² + C·V_padded) + 4·L·T·C) with L = 4, C = 128, V_padded = 50304;
    // MFU only where a GPU's peak is known, so never on the CPU.
    let per_token =
        3.0 * (2.0 * (4.0 * 12.0 * 128.0 * 128.0 + 128.0 * 50304.0) + 4.0 * 4.0 * 16.0 * 128.0);
    for r in records(&dir) {
        let (tflops, tok_s) = (
            r["tflops"].as_f64().unwrap(),
            r["tok_per_s"].as_f64().unwrap(),
        );
        assert!(
            (tflops / (tok_s * per_token / 1e12) - 1.0).abs() < 1e-9,
            "{r}"
        );
        assert!(r.get("mfu").is_none(), "{r}");
    }
    let o = lowrank(&["plot", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let png = std::fs::read(dir.join("loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // Evaluate the checkpoint on a shard written by `tokenize`.
    let bread = "The baker walked to the market and sold bread. ".repeat(40);
    let shards = tokenize_texts(&dir, &[("a.txt", &bread)], &["--val-fraction", "0"]);
    let pattern = shards.join("shards_train_*.bin");
    let eval = |run: &Path| {
        let o = lowrank(&[
            "eval",
            "--ckpt",
            run.to_str().unwrap(),
            "--data",
            pattern.to_str().unwrap(),
            "--batch",
            "2",
            "--seq",
            "16",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("perplexity"), "{}", text(&o));
        let loss = text(&o)
            .split("loss ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string();
        loss.parse::<f64>().unwrap()
    };
    let dense = eval(&dir);
    // A low-rank run's checkpoint evaluates at its live ranks: DLRA stopped in the middle of a
    // window (bases augmented to 2r, S full), on its first training shard's own text.
    let dlra = tmp("evaldlra");
    let o = train(
        &dlra,
        &[
            "--steps",
            "3",
            "--lowrank",
            "dlra",
            "--rank-init",
            "8",
            "--dlra-window",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let low = eval(&dlra);
    assert!(
        dense.is_finite() && low.is_finite() && low < 11.0,
        "{dense} {low}"
    );
    // `sample` continues a prompt from either checkpoint (the DLRA one at its live ranks), the
    // same text for the same seed; a bad setting is a sentence.
    let sample = |run: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--ckpt",
            run.to_str().unwrap(),
            "--prompt",
            "The baker",
        ];
        args.extend_from_slice(&["--tokens", "12", "--no-stop"]);
        args.extend_from_slice(extra);
        lowrank(&args)
    };
    for run in [&dir, &dlra] {
        let o = sample(run, &["--seed", "5"]);
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(out.starts_with("The baker") && out.len() > 12, "{out}");
        // The speed on stderr, out of the text's way.
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("12 tokens in ") && err.contains(" tokens/s) on cpu"),
            "{err}"
        );
        assert_eq!(
            out,
            String::from_utf8_lossy(&sample(run, &["--seed", "5"]).stdout)
        );
    }
    for (bad, says) in [
        ("--temperature=-1", "--temperature"),
        ("--context=0", "--context 0"),
    ] {
        let o = sample(&dir, &[bad]);
        assert!(
            !o.status.success() && text(&o).contains(says),
            "{}",
            text(&o)
        );
    }
    // Both runs on one chart, with a table of their last validation losses.
    let png = dir.join("compare.png");
    let (a, b) = (dir.to_str().unwrap(), dlra.to_str().unwrap());
    let o = lowrank(&["plot", a, b, "--compare", png.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let table = text(&o);
    let last_val = |run: &Path| {
        let rs = records(run);
        let v = rs
            .iter()
            .rev()
            .find_map(|r| r["val_loss"].as_f64())
            .unwrap();
        format!("{v:.4}")
    };
    for (run, name) in [(&dir, "evalplot"), (&dlra, "evaldlra")] {
        let line = table
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(line.contains(&last_val(run)), "{line} vs {}", last_val(run));
    }
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
}

#[test]
fn bad_settings_fail_before_training_with_a_sentence() {
    let dir = tmp("bad");
    let o = train(&dir, &["--seq", "500"]);
    assert!(
        !o.status.success() && text(&o).contains("exceeds the model's context"),
        "{}",
        text(&o)
    );
    assert!(!dir.exists(), "a refused run created {}", dir.display());
    let o = train(&dir, &["--data", "/nonexistent/x_train_*.bin"]);
    assert!(
        !o.status.success() && text(&o).contains("/nonexistent"),
        "{}",
        text(&o)
    );
    // A profiling window outside the run, before anything is written.
    let o = train(&dir, &["--steps", "3", "--profile-steps", "2:4"]);
    assert!(
        !o.status.success()
            && text(&o).contains("must lie within the steps this run trains, 1..=3"),
        "{}",
        text(&o)
    );
    assert!(!dir.exists(), "a refused run created {}", dir.display());
    let o = train(&dir, &["--steps", "3", "--profile-steps", "3"]);
    assert!(
        !o.status.success() && text(&o).contains("FIRST:LAST"),
        "{}",
        text(&o)
    );
    let o = train(&dir, &["--model", "gpt5"]);
    assert!(
        !o.status.success() && text(&o).contains("valid names are"),
        "{}",
        text(&o)
    );
    // A finished run refuses a fresh start into the same directory, and a resume with other settings.
    // (Its profiling window is inert on the CPU: no profiler, and no NVTX library to record into.)
    assert!(train(&dir, &["--steps", "2", "--profile-steps", "1:2"])
        .status
        .success());
    let o = train(&dir, &["--steps", "2"]);
    assert!(
        !o.status.success() && text(&o).contains("already holds a training run"),
        "{}",
        text(&o)
    );
    let o = lowrank(&[
        "train",
        "--resume",
        dir.to_str().unwrap(),
        "--batch",
        "3",
        "--seq",
        "16",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("different batch"),
        "{}",
        text(&o)
    );
    // A resumed run writes into its own directory: --out naming another is refused.
    let elsewhere = tmp("bad-elsewhere");
    let (d, e) = (dir.to_str().unwrap(), elsewhere.to_str().unwrap());
    let o = lowrank(&["train", "--resume", d, "--out", e, "--steps", "3"]);
    assert!(
        !o.status.success() && text(&o).contains("name different directories"),
        "{}",
        text(&o)
    );
    assert!(!elsewhere.exists());
}

/// `train --resume DIR` alone, as an interruption says to continue, keeps every setting of the
/// run (SMALL's batch, sequence and evaluation, its --steps, its device, and its --lr and
/// --warmup rather than the defaults, 3e-3 and 30 % of the steps), so it continues exactly; once
/// finished, the same command trains nothing and says so.
#[test]
fn a_resumed_run_keeps_every_setting_when_its_flags_are_not_repeated() {
    let (a, b) = (tmp("schedule-straight"), tmp("schedule-resumed"));
    let run = |out: &Path, extra: &[&str]| {
        let args = [
            "--steps", "6", "--lr", "1e-3", "--warmup", "4", "--device", "cpu-bf16",
        ];
        train(out, &[&args[..], extra].concat())
    };
    let o = run(&a, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&b, &["--stop-at", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    let resume = ["train", "--resume", b.to_str().unwrap()];
    let o = lowrank(&resume);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("on cpu-bf16"), "{}", text(&o));
    let (ra, rb) = (records(&a), records(&b));
    // Warm-up 4 to a peak of 1e-3: the fourth step's rate is the peak (the default warm-up of 1
    // would have reached it at the first).
    assert!(
        (rb[3]["lr"].as_f64().unwrap() - 1e-3).abs() < 1e-9,
        "{}",
        rb[3]
    );
    assert!(rb[4]["lr"].as_f64().unwrap() < 1e-3, "{}", rb[4]);
    assert_eq!(trajectory(&ra), trajectory(&rb));
    let o = lowrank(&resume);
    assert!(
        o.status.success() && text(&o).contains("nothing to train"),
        "{}",
        text(&o)
    );
    assert_eq!(records(&b).len(), 6);
    // A larger --steps trains it further, with the rest of its settings.
    let o = lowrank(&[&resume[..], &["--steps", "7"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let rb = records(&b);
    assert_eq!(rb.len(), 7);
    assert_eq!(rb[6]["tokens"].as_u64(), Some(7 * 2 * 16), "{}", rb[6]);
}

/// `--init-from` starts a dense run from a checkpoint's weights: at a negligible learning rate its
/// first validation loss is the one the checkpoint's run logged last on the same batch (a fresh
/// start's is far from it); a low-rank run refuses the flag with a sentence.
#[test]
fn a_run_started_from_a_checkpoint_continues_its_function() {
    let (base, tuned, fresh) = (tmp("init-base"), tmp("init-tuned"), tmp("init-fresh"));
    let run = |out: &Path, steps: &str, lr: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--out",
            out.to_str().unwrap(),
            "--batch",
            "2",
            "--seq",
            "16",
            "--eval-every",
            "1",
            "--eval-batches",
            "1",
            "--warmup",
            "1",
            "--steps",
            steps,
            "--lr",
            lr,
        ];
        args.extend_from_slice(extra);
        lowrank(&args)
    };
    let val = |dir: &Path, at: usize| records(dir)[at]["val_loss"].as_f64().unwrap();
    assert!(run(&base, "30", "3e-3", &[]).status.success());
    let from = ["--init-from", base.to_str().unwrap()];
    let o = run(&tuned, "1", "1e-9", &from);
    assert!(o.status.success(), "{}", text(&o));
    assert!(run(&fresh, "1", "1e-9", &[]).status.success());
    let (want, got, start) = (val(&base, 29), val(&tuned, 0), val(&fresh, 0));
    assert!((got - want).abs() < 1e-3, "{got} vs the base's {want}");
    assert!(
        (start - want).abs() > 0.1,
        "a fresh start ({start}) is no different"
    );
    let mut low_rank = from.to_vec();
    low_rank.extend(["--lowrank", "efficient"]);
    let o = run(&tmp("init-lowrank"), "1", "1e-9", &low_rank);
    assert!(
        !o.status.success() && text(&o).contains("--lora-base"),
        "{}",
        text(&o)
    );
}

#[test]
fn samples_during_training_are_printed_and_change_nothing() {
    let (plain, sampled) = (tmp("sample-off"), tmp("sample-on"));
    let o = train(&plain, &["--steps", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = train(
        &sampled,
        &[
            "--steps",
            "4",
            "--sample-every",
            "2",
            "--sample-tokens",
            "5",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    for step in [2, 4] {
        let line = format!("step {step} sample:");
        assert!(text(&o).contains(&line), "no {line:?} in {}", text(&o));
    }
    assert!(!text(&o).contains("step 1 sample:"), "{}", text(&o));
    assert_eq!(trajectory(&records(&plain)), trajectory(&records(&sampled)));
}
