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

#[test]
fn a_short_study_reports_every_method_and_writes_its_files() {
    let dir = tmp("dlra");
    let o = lowrank(&[
        "dlra",
        "--d-in",
        "20",
        "--d-out",
        "16",
        "--rank",
        "3",
        "--target-rank",
        "2",
        "--steps",
        "30",
        "--lrs",
        "0.01,0.1,100",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for m in ["factor-adam", "factor-hb", "dlra-adam", "dlra-hb"] {
        assert!(text(&o).contains(m), "{m} missing:\n{}", text(&o));
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let best = summary["best"].as_array().unwrap();
    assert_eq!(best.len(), 4);
    for b in best {
        // Step size 100 diverges for heavy ball (θ moves by h² per unit of velocity) and is never best.
        assert_ne!(b["lr"].as_f64().unwrap(), 100.0, "{b}");
        assert!(b["final_rel_loss"].as_f64().unwrap() < 1.0, "{b}");
    }
    assert!(dir.join("curves.png").exists() && dir.join("curves.jsonl").exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// With a rank budget above the target's and the τ truncation, DLRA heavy ball converges and ends at
/// the target's rank.
#[test]
fn tolerance_truncation_finds_the_targets_rank() {
    let dir = tmp("dlra-tau");
    let o = lowrank(&[
        "dlra",
        "--d-in",
        "20",
        "--d-out",
        "16",
        "--rank",
        "4",
        "--target-rank",
        "2",
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
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let b = &summary["best"][0];
    assert_eq!(b["final_rank"].as_u64(), Some(2), "{b}");
    assert!(b["final_rel_loss"].as_f64().unwrap() < 1e-6, "{b}");
    std::fs::remove_dir_all(&dir).ok();
}
