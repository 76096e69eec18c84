//! `lowrank init-study` as a user runs it: bad settings fail with a sentence, and `--weight-scale`
//! does what ReLU's homogeneity predicts (relative errors unchanged) and GELU's does not.

mod common;

use common::{lowrank, text, tmp_file};

#[test]
fn bad_study_settings_fail_with_a_sentence() {
    for (flags, says) in [
        (
            vec!["--weight-scale", "0"],
            "weight scale 0 must be positive",
        ),
        (
            vec!["--shapes", "32x64", "--ranks", "40"],
            "rank 40 does not fit shape 32x64",
        ),
        (vec!["--shapes", "32by64"], "is not N_INxN_OUT"),
    ] {
        let mut args = vec!["init-study"];
        args.extend_from_slice(&flags);
        let o = lowrank(&args);
        assert!(!o.status.success(), "{flags:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{flags:?}: {}", text(&o));
    }
}

/// Relative errors of (activation, rank, method) rows from a study at `scale`, without the fit.
fn errors(activation: &str, scale: &str) -> Vec<f64> {
    let json = tmp_file(&format!("study-{activation}-{scale}"), "json");
    let o = lowrank(&[
        "init-study",
        "--shapes",
        "64x128",
        "--ranks",
        "4,8",
        "--activations",
        activation,
        "--samples",
        "2048",
        "--fit-steps",
        "0",
        "--weight-scale",
        scale,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["relative"].as_f64().unwrap())
        .collect()
}

#[test]
fn weight_scale_leaves_relu_errors_unchanged_and_changes_gelu_errors() {
    // ReLU(c·z) = c·ReLU(z): scaling W scales σ(xW) and σ(xŴ) alike, and every init here is
    // equivariant to the scale, so the relative errors (same seed, same samples) stay put.
    let (relu1, relu3) = (errors("relu", "1"), errors("relu", "3"));
    assert_eq!(relu1.len(), 6);
    for (a, b) in relu1.iter().zip(&relu3) {
        assert!(
            (a - b).abs() < 1e-4 * a,
            "ReLU at scale 1 {relu1:?}, at 3 {relu3:?}"
        );
    }
    // GELU is not homogeneous: at 3× scale it is closer to ReLU and the errors move.
    let (gelu1, gelu3) = (errors("gelu", "1"), errors("gelu", "3"));
    assert!(
        gelu1.iter().zip(&gelu3).all(|(a, b)| (a - b).abs() > 1e-3),
        "GELU at scale 1 {gelu1:?}, at 3 {gelu3:?}"
    );
}
