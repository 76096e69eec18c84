//! Compiles every kernels/*.cu with nvcc into a fatbin (sm_80 and sm_90a cubins plus compute_80 PTX
//! as a JIT fallback), embeds the images in the binary and records ptxas's per-kernel resource usage.
//!
//! Without nvcc the build succeeds with a warning and a CPU-only binary, unless
//! LOWRANK_REQUIRE_KERNELS=1, which makes a missing nvcc an error. A kernel compile error always fails
//! the build with nvcc's message.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Real architectures we ship cubins for, and the virtual one shipped as PTX for other GPUs.
const GENCODES: &[&str] = &[
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_80,code=compute_80",
];

struct Resource {
    kernel: String,
    arch: String,
    registers: u32,
    shared_bytes: u32,
    stack_bytes: u32,
    spill_stores: u32,
    spill_loads: u32,
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernels_dir = manifest.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "LOWRANK_REQUIRE_KERNELS",
        "LOWRANK_NVCC_FLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let require = env::var("LOWRANK_REQUIRE_KERNELS").is_ok_and(|v| v == "1");

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernels_dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    sources.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    sources.sort();

    let nvcc = find_nvcc(&manifest);
    let (nvcc, version) = match nvcc {
        Some(n) => {
            let v = nvcc_version(&n);
            (n, v)
        }
        None => {
            let msg = "nvcc not found (looked at $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, $PATH and .cuda/ \
                       from scripts/install-cuda-compiler.sh): building a CPU-only binary without kernels";
            if require {
                panic!(
                    "LOWRANK_REQUIRE_KERNELS=1 but {msg}. Run scripts/install-cuda-compiler.sh."
                );
            }
            println!("cargo:warning={msg}");
            write_table(&out, &[], None);
            return;
        }
    };

    // Compile files in parallel: nvcc is single-threaded and there are a handful of files.
    let results: Vec<(String, PathBuf, Vec<Resource>)> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                let (nvcc, kernels_dir, out) = (&nvcc, &kernels_dir, &out);
                s.spawn(move || compile(nvcc, kernels_dir, src, out))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    write_table(&out, &results, Some(&version));
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(p) = env::var("NVCC") {
        candidates.push(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(p) = env::var(var) {
            candidates.push(Path::new(&p).join("bin/nvcc"));
        }
    }
    if let Ok(path) = env::var("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    candidates.push(manifest.join(".cuda/nvidia/cu13/bin/nvcc"));
    candidates.into_iter().find(|p| p.is_file())
}

fn nvcc_version(nvcc: &Path) -> String {
    let out = Command::new(nvcc).arg("--version").output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.contains("release"))
            .unwrap_or("unknown")
            .trim()
            .to_string(),
        Err(e) => panic!("nvcc at {} cannot run: {e}", nvcc.display()),
    }
}

fn compile(
    nvcc: &Path,
    include: &Path,
    src: &Path,
    out: &Path,
) -> (String, PathBuf, Vec<Resource>) {
    let name = src.file_stem().unwrap().to_string_lossy().to_string();
    let fatbin = out.join(format!("{name}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin")
        .args(GENCODES)
        .args([
            "-O3",
            "-std=c++17",
            "-Xptxas",
            "-v",
            "--expt-relaxed-constexpr",
            "-lineinfo",
        ])
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(&fatbin)
        .arg(src);
    if let Ok(extra) = env::var("LOWRANK_NVCC_FLAGS") {
        cmd.args(extra.split_whitespace());
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!("nvcc failed on {}:\n{stderr}", src.display());
    }
    (name, fatbin, parse_ptxas(&stderr))
}

/// Parses `-Xptxas -v` output: per entry function and arch, registers, shared memory, stack and spills.
fn parse_ptxas(log: &str) -> Vec<Resource> {
    let mut res = Vec::new();
    let mut current: Option<Resource> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some(r) = current.take() {
                res.push(r);
            }
            let kernel = rest.split('\'').next().unwrap_or("").to_string();
            let arch = rest
                .split("for '")
                .nth(1)
                .and_then(|s| s.split('\'').next())
                .unwrap_or("")
                .to_string();
            current = Some(Resource {
                kernel,
                arch,
                registers: 0,
                shared_bytes: 0,
                stack_bytes: 0,
                spill_stores: 0,
                spill_loads: 0,
            });
        } else if let Some(r) = current.as_mut() {
            if line.contains("bytes stack frame") {
                r.stack_bytes = number_before(line, "bytes stack frame");
                r.spill_stores = number_before(line, "bytes spill stores");
                r.spill_loads = number_before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                r.registers = number_before(line, "registers");
                r.shared_bytes = number_before(line, "bytes smem");
            }
        }
    }
    res.extend(current);
    res
}

/// The integer immediately before `marker` in `line`, or 0 when the marker is absent.
fn number_before(line: &str, marker: &str) -> u32 {
    let Some(idx) = line.find(marker) else {
        return 0;
    };
    line[..idx]
        .split_whitespace()
        .last()
        .and_then(|w| w.trim_matches(',').parse().ok())
        .unwrap_or(0)
}

fn write_table(out: &Path, files: &[(String, PathBuf, Vec<Resource>)], nvcc: Option<&str>) {
    let mut s = String::new();
    writeln!(
        s,
        "/// nvcc's version line, or None when the binary was built without kernels."
    )
    .unwrap();
    writeln!(s, "pub const NVCC_VERSION: Option<&str> = {:?};", nvcc).unwrap();
    writeln!(
        s,
        "/// Every kernels/*.cu, compiled to a fatbin, with ptxas's resource report."
    )
    .unwrap();
    writeln!(s, "pub static KERNEL_FILES: &[KernelFile] = &[").unwrap();
    for (name, fatbin, resources) in files {
        writeln!(
            s,
            "    KernelFile {{ name: {name:?}, fatbin: include_bytes!({:?}), resources: &[",
            fatbin.display().to_string()
        )
        .unwrap();
        for r in resources {
            writeln!(
                s,
                "        KernelResource {{ kernel: {:?}, arch: {:?}, registers: {}, shared_bytes: {}, stack_bytes: {}, spill_stores: {}, spill_loads: {} }},",
                r.kernel, r.arch, r.registers, r.shared_bytes, r.stack_bytes, r.spill_stores, r.spill_loads
            )
            .unwrap();
        }
        writeln!(s, "    ] }},").unwrap();
    }
    writeln!(s, "];").unwrap();
    fs::write(out.join("kernels.rs"), s).unwrap();
}
