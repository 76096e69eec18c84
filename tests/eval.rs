//! `lowrank eval` on what `train` wrote: a run's checkpoint evaluates on the run's own validation
//! split at the run's sequence length unless told otherwise.

mod common;

use common::{lowrank, text, tmp, tokenize_texts, train};
use std::path::Path;

/// The loss `eval ARGS` prints ("...: loss L, perplexity ...").
fn eval_loss(args: &[&str]) -> f64 {
    let o = lowrank(&[&["eval"], args].concat());
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let loss = out.split("loss ").nth(1).and_then(|s| s.split(',').next());
    loss.and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no loss in {out}"))
}

/// Shards of two WikiText-named files, whose names pin their split: NAME_{train,val}_*.bin.
fn wiki_shards(dir: &Path) -> String {
    let article = |title: &str, body: &str| format!(" = {title} = \n\n {}\n", body.repeat(60));
    let train = article("Bread", "The baker walked to the market and sold bread . ");
    let valid = article("Fish", "The fisher sailed to the harbour and sold fish . ");
    let files = [
        ("wiki.train.tokens", &*train),
        ("wiki.valid.tokens", &*valid),
    ];
    let shards = tokenize_texts(dir, &files, &[]);
    shards
        .join("shards_train_*.bin")
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_runs_checkpoint_evaluates_on_its_own_validation_split() {
    let dir = tmp("eval-own");
    let data = wiki_shards(&dir);
    let run = dir.join("run");
    // SMALL: batch 2, 16 tokens a sequence, one validation batch at every other step.
    let o = train(&run, &["--steps", "2", "--data", &data]);
    assert!(o.status.success(), "{}", text(&o));
    let last = common::records(&run).pop().unwrap();
    let logged = last["val_loss"]
        .as_f64()
        .expect("a validation loss at the last step");
    let r = run.to_str().unwrap();
    // With only the batch the run validated with: its data, its 16 tokens, its logged loss.
    let own = eval_loss(&["--ckpt", r, "--batch", "2", "--max-batches", "1"]);
    assert!(
        (own - logged).abs() < 1e-4,
        "eval {own} against the run's {logged}"
    );
    let val = data.replace("_train_", "_val_");
    let same = [
        "--data",
        &val,
        "--seq",
        "16",
        "--batch",
        "2",
        "--max-batches",
        "1",
    ];
    assert_eq!(eval_loss(&[&["--ckpt", r], &same[..]].concat()), own);
    // The training split is another text: another loss.
    let on_train = ["--data", &data, "--batch", "2", "--max-batches", "1"];
    assert_ne!(eval_loss(&[&["--ckpt", r], &on_train[..]].concat()), own);
    // --builtin: the corpus built into the binary instead.
    let o = lowrank(&["eval", "--ckpt", r, "--builtin", "--max-batches", "1"]);
    assert!(text(&o).contains("default-corpus-val"), "{}", text(&o));
}

#[test]
fn a_run_without_a_validation_split_asks_for_data() {
    let dir = tmp("eval-noval");
    let data = wiki_shards(&dir);
    // The same shard under a name without `_train_`: no validation split can be derived.
    let lone = dir.join("lone.bin");
    std::fs::copy(data.replace('*', "000000"), &lone).unwrap();
    let run = dir.join("run");
    let o = train(
        &run,
        &[
            "--steps",
            "2",
            "--eval-every",
            "0",
            "--data",
            lone.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = lowrank(&["eval", "--ckpt", run.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("names no validation split"),
        "{}",
        text(&o)
    );
    // A checkpoint path that names nothing is said to, not to hold no checkpoint; a directory
    // without one is.
    let gone = dir.join("gone");
    for (path, says) in [
        (gone.as_path(), "does not exist"),
        (&dir, "holds no checkpoint"),
    ] {
        let o = lowrank(&["eval", "--ckpt", path.to_str().unwrap()]);
        assert!(
            !o.status.success() && text(&o).contains(says),
            "{}",
            text(&o)
        );
    }
}

/// `--stride S`: every token of the validation shard but its first is scored once (the count its
/// header gives, less one), at S = --seq (disjoint windows and the tail) and S < --seq alike;
/// without it, disjoint whole batches as training validates. A stride past --seq, or 0, and no
/// batches at all are refused.
#[test]
fn a_stride_scores_every_token_of_the_split() {
    let dir = tmp("eval-stride");
    let data = wiki_shards(&dir);
    let run = dir.join("run");
    let o = train(
        &run,
        &["--steps", "2", "--eval-every", "0", "--data", &data],
    );
    assert!(o.status.success(), "{}", text(&o));
    let val = data.replace("_train_", "_val_");
    let header = std::fs::read(val.replace('*', "000000")).unwrap();
    let val_tokens = i32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
    let r = run.to_str().unwrap();
    let eval = |extra: &[&str]| {
        let base = [
            "eval", "--ckpt", r, "--data", &val, "--seq", "16", "--batch", "2",
        ];
        lowrank(&[&base[..], extra].concat())
    };
    for stride in ["16", "5"] {
        let o = eval(&["--stride", stride]);
        assert!(o.status.success(), "{}", text(&o));
        let want = format!("on {} tokens of", val_tokens - 1);
        let says = text(&o);
        assert!(
            says.contains(&want) && says.contains(&format!("stride {stride})")),
            "{says}"
        );
    }
    let disjoint = text(&eval(&[]));
    let windows = (val_tokens - 1) / 16 / 2 * 2; // whole batches of 2 windows of 16
    let want = format!("on {} tokens of", windows * 16);
    assert!(
        disjoint.contains(&want) && disjoint.contains("disjoint)"),
        "{disjoint}"
    );
    let o = eval(&["--stride", "17"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("--stride 17: must be 1 to the sequence length 16"),
        "{}",
        text(&o)
    );
    assert!(!eval(&["--stride", "0"]).status.success());
    assert!(!eval(&["--stride", "4", "--max-batches", "0"])
        .status
        .success());
}
