//! The binary as a user runs it: doctor, selftest and bench without a GPU, and bad command lines.

mod common;

use common::{lowrank_env as lowrank, text};

fn has_gpu() -> bool {
    lowrank::backend::cuda::driver_present()
}

#[test]
fn doctor_reports_build_and_runtime_facts() {
    let dir = std::env::temp_dir().join(format!("lowrank-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("doctor.json");
    let o = lowrank(&["doctor", "--json", json.to_str().unwrap()], &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("== build") && out.contains("== runtime"),
        "{out}"
    );
    if lowrank::kernels::KERNEL_FILES.is_empty() {
        assert!(out.contains("kernels: none"), "{out}");
    } else {
        assert!(out.contains("adamw_f32") && out.contains("sm_90a"), "{out}");
    }
    if !has_gpu() {
        assert!(out.contains("no NVIDIA driver found"), "{out}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        doc["kernels"].as_array().unwrap().len(),
        lowrank::kernels::KERNEL_FILES.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The settings section reads the same variables the CUDA backend reads, shows each one's
/// effective value, and names a bad one with the sentence the backend would fail with.
#[test]
fn doctor_shows_the_cuda_settings_and_names_a_bad_one() {
    let envs = [
        ("LOWRANK_ATTENTION", "materialized"),
        ("LOWRANK_BIAS_EPILOGUE", "2"),
        ("LOWRANK_TMA_TILE", "128"),
    ];
    let o = lowrank(&["doctor"], &envs);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for line in [
        "LOWRANK_ATTENTION: materialized",
        "LOWRANK_TMA_TILE: 128",
        "LOWRANK_LOWRANK_IMPL: fused",
        "LOWRANK_GELU_EPILOGUE: on",
        "LOWRANK_RESIDUAL_EPILOGUE: on",
        "LOWRANK_BIAS_GRAD_EPILOGUE: on",
        "LOWRANK_BIAS_EPILOGUE: INVALID: LOWRANK_BIAS_EPILOGUE=\"2\": use `1` (the default) or `0`",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
}

#[test]
fn selftest_and_bench_without_gpu_fail_with_a_sentence() {
    if has_gpu() {
        return; // scripts/gpu-run.sh exercises them on a GPU machine
    }
    for cmd in ["selftest", "bench"] {
        let o = lowrank(&[cmd], &[]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {out}");
        assert!(
            out.contains("needs a GPU") && out.contains("no NVIDIA driver found"),
            "{cmd}: {out}"
        );
        assert!(!out.contains("panicked"), "{cmd}: {out}");
    }
}

#[test]
fn bad_device_number_is_a_sentence_not_a_panic() {
    let o = lowrank(&["selftest"], &[("LOWRANK_DEVICE", "7")]);
    let out = text(&o);
    assert!(!o.status.success());
    assert!(!out.contains("panicked"), "{out}");
    if has_gpu() {
        assert!(out.contains("LOWRANK_DEVICE=7"), "{out}");
    }
}

#[test]
fn unknown_subcommand_and_flag_get_clap_errors() {
    let o = lowrank(&["frobnicate"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unrecognized subcommand 'frobnicate'"));
    let o = lowrank(&["doctor", "--no-such-flag"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unexpected argument '--no-such-flag'"));
}
