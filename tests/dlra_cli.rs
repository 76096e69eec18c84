//! `lowrank dlra` as a user runs it: bad flags give sentences, a short study writes its files.

mod common;

use common::{assert_fails_with, lowrank, text, tmp};

#[test]
fn bad_dlra_flags_fail_with_a_sentence() {
    assert_fails_with(
        &["dlra", "--rank", "60"],
        "at most half the smaller dimension",
    );
    assert_fails_with(&["dlra", "--cond", "0.5"], "--cond 0.5 must be at least 1");
    assert_fails_with(&["dlra", "--tau", "1.5"], "--tau 1.5 must lie in [0, 1)");
    assert_fails_with(&["dlra", "--methods", "sgd"], "invalid value");
}

/// Runs `lowrank dlra` on a 20 × 16 problem with a rank-2 target and `extra` flags, writing to `dir`;
/// returns its output and the summary's per-method best runs.
fn study(dir: &std::path::Path, extra: &[&str]) -> (String, Vec<serde_json::Value>) {
    let mut args = vec![
        "dlra",
        "--d-in",
        "20",
        "--d-out",
        "16",
        "--target-rank",
        "2",
        "--out",
    ];
    args.push(dir.to_str().unwrap());
    args.extend_from_slice(extra);
    let o = lowrank(&args);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    (text(&o), summary["best"].as_array().unwrap().clone())
}

#[test]
fn a_short_study_reports_every_method_and_writes_its_files() {
    let dir = tmp("dlra");
    let (out, best) = study(
        &dir,
        &["--rank", "3", "--steps", "30", "--lrs", "0.01,0.1,100"],
    );
    for m in ["factor-adam", "factor-hb", "dlra-adam", "dlra-hb"] {
        assert!(out.contains(m), "{m} missing:\n{out}");
    }
    assert_eq!(best.len(), 4);
    for b in &best {
        // Step size 100 diverges for heavy ball (θ moves by h² per unit of velocity) and is never best.
        assert_ne!(b["lr"].as_f64().unwrap(), 100.0, "{b}");
        assert!(b["final_rel_loss"].as_f64().unwrap() < 1.0, "{b}");
    }
    assert!(dir.join("curves.png").exists() && dir.join("curves.jsonl").exists());
}

/// With a rank budget above the target's and the τ truncation, DLRA heavy ball converges and ends at
/// the target's rank.
#[test]
fn tolerance_truncation_finds_the_targets_rank() {
    let dir = tmp("dlra-tau");
    let (_, best) = study(
        &dir,
        &[
            "--rank",
            "4",
            "--cond",
            "1",
            "--steps",
            "300",
            "--lrs",
            "1",
            "--methods",
            "dlra-hb",
            "--tau",
            "0.01",
        ],
    );
    let b = &best[0];
    assert_eq!(b["final_rank"].as_u64(), Some(2), "{b}");
    assert!(b["final_rel_loss"].as_f64().unwrap() < 1e-6, "{b}");
}
