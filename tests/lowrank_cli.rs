//! Low-rank training flags as a user meets them: bad settings fail before training with a sentence,
//! a LoRA run's checkpoint evaluates (and holds its factors alone), a LoRA base of another shape is
//! refused, an efficient-InRank run logs its ranks, and an InRank checkpoint leaves its W0 out.

mod common;

use common::{failed_with, lowrank, text, tmp};
use lowrank::train::tensor_file;
use std::path::Path;
use std::process::{Command, Output};

const SMALL: [&str; 8] = [
    "--batch",
    "2",
    "--seq",
    "16",
    "--warmup",
    "1",
    "--eval-every",
    "0",
];

/// The model file of a run's latest checkpoint.
fn latest(run: &Path) -> std::path::PathBuf {
    let name = std::fs::read_to_string(run.join("latest")).unwrap();
    run.join(name.trim()).join("model.safetensors")
}

/// A checkpoint's state.json, as JSON.
fn state_of(model_file: &Path) -> serde_json::Value {
    let state = std::fs::read_to_string(model_file.with_file_name("state.json")).unwrap();
    serde_json::from_str(&state).unwrap()
}

/// The loss `lowrank eval ARGS` prints (to 4 decimals).
fn eval_loss(args: &[&str]) -> f64 {
    let o = lowrank(&[&["eval"], args].concat());
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    let printed = t.split("loss ").nth(1).unwrap().split(',').next().unwrap();
    printed.parse::<f64>().unwrap()
}

fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--out", out.to_str().unwrap()];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    lowrank(&args)
}

#[test]
fn bad_low_rank_settings_fail_before_training() {
    let dir = tmp("bad");
    for (flags, says) in [
        (
            vec!["--lowrank", "efficient", "--rank-alpha", "1.5"],
            "outside (0, 1]",
        ),
        (
            vec!["--lowrank", "efficient", "--rank-alpha", "0"],
            "outside (0, 1]",
        ),
        (vec!["--lowrank", "lora"], "--lora-base"),
        (
            vec!["--lowrank", "efficient", "--rank-init", "100"],
            "above the capacity",
        ),
        (vec!["--mlp-dln", "--rank-init", "65"], "width 2r = 130"),
        (
            vec!["--mlp-dln", "--lowrank", "efficient"],
            "cannot be used with",
        ),
        (vec!["--dln-eps", "0.1"], "only used with --lowrank dln"),
        (vec!["--dlra-window", "3"], "only used with --lowrank dlra"),
        (
            vec!["--dlra-rule", "heavy-ball"],
            "only used with --lowrank dlra",
        ),
        (
            vec!["--lowrank", "dlra", "--dlra-friction", "1.5"],
            "outside [0, 1]",
        ),
        (
            vec!["--lowrank", "dlra", "--rank-init", "65"],
            "DLRA's augmented bases",
        ),
        (
            vec!["--lowrank", "dlra", "--dlra-tau", "1.5"],
            "outside [0, 1)",
        ),
        (
            vec!["--lowrank", "dlra", "--dlra-window", "0"],
            "--dlra-window must be at least 1",
        ),
        (
            vec!["--lowrank", "dlra", "--lowrank-init", "spectral"],
            "does not apply",
        ),
        (
            vec!["--mlp-dln", "--lowrank-init", "spectral"],
            "--lowrank-init does not apply",
        ),
        (
            vec!["--lowrank", "efficient", "--factor-lr-scale", "0"],
            "--factor-lr-scale 0 must be positive",
        ),
    ] {
        let o = train(&dir, &flags);
        assert!(!o.status.success(), "{flags:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{flags:?}: {}", text(&o));
        assert!(
            !dir.join("metrics.jsonl").exists(),
            "{flags:?} started training"
        );
    }
}

#[test]
fn lora_base_of_another_shape_is_refused_and_efficient_runs_log_ranks() {
    let (base, lora, eff) = (tmp("base"), tmp("lora"), tmp("eff"));
    // A base checkpoint from a dense run, then LoRA over it with another context length works …
    assert!(train(&base, &["--steps", "2"]).status.success());
    let o = train(
        &lora,
        &[
            "--steps",
            "2",
            "--lowrank",
            "lora",
            "--lora-base",
            base.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // … whose checkpoint `eval` reads, by default on the run's own validation split (the
    // built-in corpus's) …
    let o = lowrank(&[
        "eval",
        "--ckpt",
        lora.to_str().unwrap(),
        "--seq",
        "16",
        "--max-batches",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("default-corpus-val"), "{}", text(&o));
    // … and `export` writes as a dense GPT-2 model directory that evaluates to the same loss.
    let file = lora.join("merged");
    let export = |extra: &[&str]| {
        let mut args = vec!["export", "--ckpt", lora.to_str().unwrap()];
        args.extend_from_slice(&["--out", file.to_str().unwrap()]);
        args.extend_from_slice(extra);
        lowrank(&args)
    };
    let o = export(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("8 low-rank layers merged"),
        "{}",
        text(&o)
    );
    // Its factors alone as a PEFT adapter: 8 MLP layers at r = 2 with α = 4 (2r by default); a
    // dense run has none.
    let adapter = lora.join("adapter");
    let export_adapter = |run: &Path| {
        let (run, out) = (run.to_str().unwrap(), adapter.to_str().unwrap());
        lowrank(&["export", "--ckpt", run, "--adapter", "--out", out])
    };
    let o = export_adapter(&lora);
    assert!(o.status.success(), "{}", text(&o));
    let config = std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap();
    let peft: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(peft["r"], 2, "{config}");
    assert_eq!(peft["lora_alpha"], 4.0, "{config}");
    assert_eq!(
        peft["target_modules"].as_array().unwrap().len(),
        8,
        "{config}"
    );
    assert!(adapter.join("adapter_model.safetensors").is_file());
    let o = export_adapter(&base);
    assert!(failed_with(&o, "not a LoRA run"), "{}", text(&o));
    // With --lora-embeddings the trained embeddings travel as PEFT's modules_to_save, the tied
    // head as its own copy (PEFT 0.13.2 reproduces our loss: results/export/check.md).
    let emb = tmp("lora-emb");
    let args = [
        "--steps",
        "2",
        "--lowrank",
        "lora",
        "--lora-embeddings",
        "--lora-base",
    ];
    assert!(
        train(&emb, &[&args[..], &[base.to_str().unwrap()]].concat())
            .status
            .success()
    );
    std::fs::remove_dir_all(&adapter).ok();
    let o = export_adapter(&emb);
    assert!(o.status.success(), "{}", text(&o));
    let config = std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap();
    let peft: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        peft["modules_to_save"],
        serde_json::json!(["wte", "wpe", "lm_head"])
    );
    let (saved, _) = tensor_file::load(&adapter.join("adapter_model.safetensors")).unwrap();
    let trained = lowrank::model::hf::load_model_checkpoint(&emb)
        .unwrap()
        .tensors;
    let find = |ts: &[tensor_file::HostTensor], name: &str| {
        let t = ts.iter().find(|t| t.name == name);
        t.unwrap_or_else(|| panic!("no {name}")).clone()
    };
    let wte = find(&trained, "transformer.wte.weight");
    for (name, want) in [
        ("transformer.wte.weight", &wte),
        ("lm_head.weight", &wte),
        (
            "transformer.wpe.weight",
            &find(&trained, "transformer.wpe.weight"),
        ),
    ] {
        let got = find(&saved, &format!("base_model.model.{name}"));
        assert_eq!((&got.shape, &got.data), (&want.shape, &want.data), "{name}");
    }
    // Into the run's own directory it would replace the run's config.json: refused.
    let config = lora.join("config.json");
    let before = std::fs::read(&config).unwrap();
    let args = [
        "export",
        "--ckpt",
        lora.to_str().unwrap(),
        "--out",
        lora.to_str().unwrap(),
    ];
    let o = lowrank(&args);
    assert!(failed_with(&o, "directory of its own"), "{}", text(&o));
    assert_eq!(std::fs::read(&config).unwrap(), before);
    // transformers' config for tiny: 4 layers of 4 heads, width 128, context 128.
    let config = std::fs::read_to_string(file.join("config.json")).unwrap();
    let hf: serde_json::Value = serde_json::from_str(&config).unwrap();
    let dims = ["n_layer", "n_head", "n_embd", "n_positions"].map(|k| hf[k].as_u64());
    assert_eq!(dims, [4, 4, 128, 128].map(Some), "{config}");
    let o = export(&[]);
    assert!(failed_with(&o, "--overwrite"), "{}", text(&o));
    let loss = |ckpt: &Path| {
        let ckpt = ckpt.to_str().unwrap();
        eval_loss(&["--ckpt", ckpt, "--seq", "16", "--max-batches", "2"])
    };
    // Printed to 4 decimals: equal but for rounding at the last digit.
    let (low, dense) = (loss(&lora), loss(&file));
    assert!((low - dense).abs() <= 1e-4, "{low} vs {dense}");
    // … and a base of another model shape is refused with a sentence.
    let o = train(
        &tmp("lora2"),
        &[
            "--steps",
            "2",
            "--model",
            "gpt2",
            "--lowrank",
            "lora",
            "--lora-base",
            base.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("another shape") || text(&o).contains("lacks tensor"),
        "{}",
        text(&o)
    );
    // An efficient-InRank run records per-layer ranks in its metrics.
    let o = train(
        &eff,
        &[
            "--steps",
            "3",
            "--lowrank",
            "efficient",
            "--rank-log-every",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let last = std::fs::read_to_string(eff.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let rec: serde_json::Value = serde_json::from_str(&last).unwrap();
    let ranks = rec["ranks"].as_array().expect("ranks logged");
    assert_eq!(ranks.len(), 8, "fc and proj of tiny's 4 blocks: {last}");
    assert!(
        ranks
            .iter()
            .all(|r| r["rank"].as_u64().unwrap() >= 2 && r.get("r90").is_some()),
        "{last}"
    );
    // A low-rank run's checkpoint is no LoRA base: its layers are factors. Refused with what to
    // do instead.
    let args = ["--steps", "1", "--lowrank", "lora", "--lora-base"];
    let o = train(
        &tmp("lora-on-factors"),
        &[&args[..], &[eff.to_str().unwrap()]].concat(),
    );
    assert!(
        failed_with(&o, "`--lowrank efficient` run") && text(&o).contains("lowrank export"),
        "{}",
        text(&o)
    );
}

/// A LoRA checkpoint holds its trained tensors alone, as a PEFT adapter does, and reads its base
/// again from the absolute path the run recorded; a base that moved or changed is named in the
/// error, never silently replaced.
#[test]
fn lora_checkpoints_hold_their_factors_alone_and_need_their_very_base() {
    let (base, other, lora) = (tmp("lean-base"), tmp("lean-other"), tmp("lean-lora"));
    assert!(train(&base, &["--steps", "2"]).status.success());
    assert!(train(&other, &["--steps", "2", "--seed", "7"])
        .status
        .success());
    // --lora-base given relative to another working directory than the later commands'.
    let o = Command::new(env!("CARGO_BIN_EXE_lowrank"))
        .current_dir(base.parent().unwrap())
        .args(["train", "--out", lora.to_str().unwrap()])
        .args(SMALL)
        .args(["--steps", "2", "--lowrank", "lora", "--rank-init", "2"])
        .args(["--lora-base", base.file_name().unwrap().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (tensors, meta) = tensor_file::load(&latest(&lora)).unwrap();
    // tiny's 4 blocks × (c_fc, c_proj) × (Ut, Vt).
    assert_eq!(tensors.len(), 16, "{:?}", meta);
    assert!(tensors
        .iter()
        .all(|t| t.name.ends_with(".lowrank_ut") || t.name.ends_with(".lowrank_vt")));
    let size = |f: &Path| std::fs::metadata(f).unwrap().len();
    assert!(
        size(&latest(&lora)) * 100 < size(&latest(&base)),
        "{} vs the base's {}",
        size(&latest(&lora)),
        size(&latest(&base))
    );
    let eval = |ckpt: &Path| {
        let args = ["eval", "--ckpt", ckpt.to_str().unwrap(), "--seq", "16"];
        lowrank(&[&args[..], &["--max-batches", "1"]].concat())
    };
    let o = eval(&lora);
    assert!(o.status.success(), "{}", text(&o));
    // The file alone cannot make a model: the error says to pass the checkpoint directory.
    let o = eval(&latest(&lora));
    assert!(failed_with(&o, "checkpoint directory"), "{}", text(&o));
    // The base moved: named in the error.
    let moved = tmp("lean-base-moved");
    std::fs::rename(&base, &moved).unwrap();
    let o = eval(&lora);
    assert!(failed_with(&o, "cannot load the LoRA base"), "{}", text(&o));
    // Another model in its place: refused by eval and by a resume alike.
    std::fs::rename(&other, &base).unwrap();
    let o = eval(&lora);
    assert!(
        failed_with(&o, "not the one this run was trained on"),
        "{}",
        text(&o)
    );
    let (run, at) = (lora.to_str().unwrap(), base.to_str().unwrap());
    let resume = [
        &["--steps", "3", "--lowrank", "lora", "--rank-init", "2"][..],
        &["--lora-base", at, "--resume", run],
    ];
    let o = train(&lora, &resume.concat());
    assert!(
        failed_with(&o, "not the one this run was trained on"),
        "{}",
        text(&o)
    );
    // The base back in place: the run resumes.
    std::fs::remove_dir_all(&base).unwrap();
    std::fs::rename(&moved, &base).unwrap();
    let o = train(&lora, &resume.concat());
    assert!(o.status.success(), "{}", text(&o));
    // A checkpoint in the earlier layout (every tensor, no fingerprint) resumes and keeps writing
    // every tensor: its frozen weights, not the base on disk, are what the run trained on.
    let whole = lowrank::model::hf::load_model_checkpoint(&lora)
        .unwrap()
        .tensors;
    as_written_before(&latest(&lora), &whole, "lora_base_fingerprint");
    let more = ["--steps", "4", "--lowrank", "lora", "--rank-init", "2"];
    let o = train(&lora, &[&more[..], resume[1]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let (tensors, _) = tensor_file::load(&latest(&lora)).unwrap();
    assert_eq!(tensors.len(), whole.len(), "{}", latest(&lora).display());
}

/// Rewrites the checkpoint of `model_file` as checkpoints were written before they left frozen
/// tensors out: `whole` (every tensor) in its model file, no `key` in its state.json.
fn as_written_before(model_file: &Path, whole: &[tensor_file::HostTensor], key: &str) {
    let meta = [("lowrank_model", "tiny"), ("format", "pt")];
    let meta = meta.map(|(k, v)| (k.to_string(), v.to_string())).into();
    tensor_file::save(model_file, whole, meta).unwrap();
    let mut s = state_of(model_file);
    s.as_object_mut().unwrap().remove(key).unwrap();
    std::fs::write(model_file.with_file_name("state.json"), s.to_string()).unwrap();
}

/// An InRank checkpoint leaves out its frozen W0, which the run's seed draws again: `eval` gives
/// the validation loss the run logged, `export` merges the same W0, a resume continues. A
/// checkpoint written before (every W0 in it, no seed recorded) resumes on its own W0 and keeps
/// writing them.
#[test]
fn inrank_checkpoints_leave_their_w0_out_and_draw_it_again() {
    let (run, merged) = (tmp("inrank-lean"), tmp("inrank-merged"));
    let inrank = ["--lowrank", "inrank", "--seed", "5"];
    let o = common::train(&run, &[&inrank[..], &["--steps", "2"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let (tensors, _) = tensor_file::load(&latest(&run)).unwrap();
    let is_w0 = |t: &tensor_file::HostTensor| t.name.ends_with(".lowrank_w0");
    assert!(!tensors.is_empty() && !tensors.iter().any(is_w0));
    assert_eq!(state_of(&latest(&run))["w0_seed"], 5);
    let logged = common::records(&run).pop().unwrap()["val_loss"].as_f64();
    // On the run's validation split and the one batch it validated with: the loss it logged, to
    // the printed digits.
    let r = run.to_str().unwrap();
    let own = eval_loss(&["--ckpt", r, "--batch", "2", "--max-batches", "1"]);
    assert!((own - logged.unwrap()).abs() <= 1e-4, "{own} vs {logged:?}");
    let m = merged.to_str().unwrap();
    let o = lowrank(&["export", "--ckpt", r, "--out", m]);
    assert!(o.status.success(), "{}", text(&o));
    let same = [
        "--builtin",
        "--seq",
        "16",
        "--batch",
        "2",
        "--max-batches",
        "1",
    ];
    let (low, dense) = (
        eval_loss(&[&["--ckpt", r], &same[..]].concat()),
        eval_loss(&[&["--ckpt", m], &same[..]].concat()),
    );
    assert!((low - dense).abs() <= 1e-4, "{low} vs {dense}");
    let resume = |steps: &str| {
        let args = [&inrank[..], &["--steps", steps, "--resume", r]].concat();
        let o = common::train(&run, &args);
        assert!(o.status.success(), "{}", text(&o));
    };
    resume("3");
    assert_eq!(common::records(&run).len(), 3);
    // The earlier layout, one W0 changed: read and written again, not drawn.
    let mut whole = lowrank::model::hf::load_model_checkpoint(&run)
        .unwrap()
        .tensors;
    let changed = whole.iter_mut().find(|t| is_w0(t)).unwrap();
    changed.data.iter_mut().for_each(|x| *x *= 0.5);
    let changed = changed.clone();
    as_written_before(&latest(&run), &whole, "w0_seed");
    resume("4");
    let (tensors, _) = tensor_file::load(&latest(&run)).unwrap();
    assert_eq!(tensors.len(), whole.len());
    let kept = tensors.iter().find(|t| t.name == changed.name).unwrap();
    assert_eq!(kept.data, changed.data, "{}", changed.name);
    assert!(state_of(&latest(&run)).get("w0_seed").is_none());
}
