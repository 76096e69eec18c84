//! What the CUDA backend does with the cuBLASLt it finds: passes of its own where an epilogue has
//! no algorithm, and `doctor`'s account of the library.

use crate::emulator::Emulator;
use std::ffi::OsStr;

/// Where cuBLASLt has no algorithm for an epilogue (EMU_CUBLASLT_NO_EPILOGUE makes the fake's
/// heuristic say so for all of them), the dense layers do the bias, GELU, residual and bias
/// gradient work in passes of their own: every GEMM case still passes, and a warning says why, once.
#[test]
fn linear_layers_fall_back_to_passes_where_cublaslt_has_no_epilogue() {
    let Some(emu) = Emulator::get() else { return };
    let args = [
        "selftest",
        "--filter",
        "gemm_,linear_param",
        "--max-work",
        "2e8",
    ];
    let out = emu.run(
        &args,
        "80",
        "4",
        &[("EMU_CUBLASLT_NO_EPILOGUE", OsStr::new("1"))],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let warnings = stderr.matches("cuBLASLt has no algorithm for").count();
    assert_eq!(warnings, 1, "{stderr}");
    for op in [
        "gemm_bias_nn_bf16",
        "gemm_bias_gelu_nt_bf16",
        "gemm_gelu_backward_nt_bf16",
        "gemm_bias_residual_nt_bf16",
        "linear_param_grads_db",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{op} ")) && l.ends_with("pass")),
            "no passing {op} in:\n{stdout}"
        );
    }
}

/// `doctor` names the cuBLASLt it loaded, its version and file (here the emulator's, which reports
/// the version whose ABI it follows).
#[test]
fn doctor_names_the_cublaslt_it_loaded() {
    let Some(emu) = Emulator::get() else { return };
    let json = std::env::temp_dir().join(format!("lowrank-emu-doctor-{}.json", std::process::id()));
    let out = emu.run(
        &["doctor", "--json", json.to_str().unwrap()],
        "90",
        "4",
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("cuBLASLt "))
        .unwrap_or_else(|| panic!("no cuBLASLt line in:\n{stdout}"));
    assert!(
        line.starts_with("cuBLASLt 13.0.0 loaded from ") && line.ends_with("/libcublasLt.so"),
        "{line}"
    );
    assert!(
        !stdout.contains("warning: this binary's cuBLASLt"),
        "{stdout}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).ok();
    let loaded = &doc["libraries"]["cuBLASLt_loaded"];
    assert_eq!(loaded["version"], "13.0.0", "{doc}");
    assert_eq!(
        loaded["file"]
            .as_str()
            .map(|f| f.ends_with("/libcublasLt.so")),
        Some(true),
        "{doc}"
    );
}
