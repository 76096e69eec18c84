//! The CUDA backend end to end without a GPU: tests/gpu-emu builds a fake libcuda (every kernel of
//! kernels/ compiled for the CPU by g++, its PTX instructions modelled, each CUDA thread a fiber)
//! and a fake libcuBLASLt, and the binary's `selftest` runs on them against the CPU reference: the
//! launchers, argument lists, grid and shared-memory sizes and cuBLASLt descriptors of the Rust
//! side, and the kernels' own arithmetic. Three times: an sm_80 of 108 SMs with the threads of each
//! block run in reverse order (narrow tiles, split K), one of 4 SMs in forward order (the wide
//! mma.sync tiles), and the low-rank cases on an sm_90a of 4 SMs in random order (the wgmma
//! mainloop); between them every kernel must have run. Where g++ has AddressSanitizer, the
//! kernels are built with it, so every global-memory access outside its allocation fails the run
//! (the emulator's compute-sanitizer memcheck). What it cannot show: speed, and memory-ordering
//! faults of real hardware.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

#[test]
fn selftest_passes_on_the_emulated_gpu_and_launches_every_kernel() {
    if lowrank::kernels::NVCC_VERSION.is_none() {
        assert!(
            std::env::var("LOWRANK_REQUIRE_KERNELS").as_deref() != Ok("1"),
            "LOWRANK_REQUIRE_KERNELS=1 but the binary has no kernels"
        );
        eprintln!("skipped: this binary was built without nvcc, so it embeds no kernels to load");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let emu = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-emu");
    let asan = asan_runtime();
    if asan.is_none() {
        eprintln!(
            "note: g++ has no AddressSanitizer runtime: the kernels' memory accesses go unchecked"
        );
    }
    let build = Command::new("bash")
        .arg(root.join("tests/gpu-emu/build.sh"))
        .arg(&emu)
        .env(
            "LOWRANK_EMU_SANITIZE",
            if asan.is_some() { "address" } else { "" },
        )
        .output()
        .expect("bash runs");
    assert!(
        build.status.success(),
        "tests/gpu-emu/build.sh failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let trace = emu.join("launches.txt");
    let _ = std::fs::remove_file(&trace);
    for (arch, sms, order, filter) in [
        ("80", "108", "reverse", ""),
        ("80", "4", "forward", ""),
        ("90", "4", "random", "lowrank"),
    ] {
        let mut selftest = Command::new(env!("CARGO_BIN_EXE_lowrank"));
        if let Some(lib) = &asan {
            // The ASan runtime must be the process's first library; leaks are not the question.
            selftest
                .env("LD_PRELOAD", lib)
                .env("ASAN_OPTIONS", "detect_leaks=0");
        }
        let out = selftest
            .args(["selftest", "--max-work", "2e8", "--filter", filter])
            .env("LD_LIBRARY_PATH", &emu)
            .env("LOWRANK_EMU_ARCH", arch)
            .env("LOWRANK_EMU_SMS", sms)
            .env("LOWRANK_EMU_ORDER", order)
            .env("LOWRANK_EMU_TRACE", &trace)
            .env_remove("LOWRANK_LOWRANK_IMPL")
            .env_remove("LOWRANK_WGMMA_NMAJOR")
            .output()
            .expect("the binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("Emulated GPU") && stdout.contains(" 0 failed"),
            "selftest on the emulated sm_{arch} ({sms} SMs, {order} order) failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let launched: BTreeSet<String> = std::fs::read_to_string(&trace)
        .expect("the fake driver wrote its launches")
        .lines()
        .map(str::to_string)
        .collect();
    let mut compiled = BTreeSet::new();
    for entry in std::fs::read_dir(emu.join("obj")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cpp") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if let Some(name) = line.strip_prefix("EMU_REGISTER(") {
                    compiled.insert(name.trim_end_matches(')').to_string());
                }
            }
        }
    }
    assert!(compiled.len() > 50, "too few kernels found: {compiled:?}");
    let missed: Vec<_> = compiled.iter().filter(|k| !launched.contains(*k)).collect();
    assert!(
        missed.is_empty(),
        "never launched by the selftest: {missed:?}"
    );
}

/// g++'s AddressSanitizer runtime library, if it has one.
fn asan_runtime() -> Option<String> {
    let out = Command::new("g++")
        .arg("-print-file-name=libasan.so")
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    // Without the library, g++ echoes the bare name back.
    Path::new(&path).is_absolute().then_some(path)
}
