//! `lowrank doctor`: what this binary was built with and what this machine offers.

use crate::backend::cuda;
use crate::kernels::{self, KERNEL_FILES, NVCC_VERSION};
use anyhow::{bail, Result};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also write the facts as JSON to this file
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Exit non-zero if a kernel spills registers on sm_90a and is not excused in kernels/spill-allow.txt
    #[arg(long)]
    fail_on_spills: bool,
    /// Exit non-zero if this binary carries no CUDA kernels
    #[arg(long)]
    require_kernels: bool,
}

pub fn run(args: Args) -> Result<()> {
    println!("lowrank {}", env!("CARGO_PKG_VERSION"));
    println!("\n== build");
    match NVCC_VERSION {
        Some(v) => println!("kernels: {} files embedded, compiled by nvcc ({v}) for sm_80, sm_90a (+ compute_80 PTX)", KERNEL_FILES.len()),
        None => println!("kernels: none (built without nvcc: a CPU-only binary; run scripts/install-cuda-compiler.sh and rebuild)"),
    }
    if !KERNEL_FILES.is_empty() {
        // Columns as wide as the longest file and kernel names (the flash kernels' run past 24).
        let file_w = KERNEL_FILES.iter().map(|f| f.name.len()).max().unwrap_or(0);
        let kernel_w = (KERNEL_FILES.iter().flat_map(|f| f.resources))
            .map(|r| r.kernel.len())
            .max()
            .unwrap_or(0);
        let row = |cells: [&dyn std::fmt::Display; 8]| {
            let [file, kernel, arch, regs, smem, stack, st, ld] = cells;
            println!(
                "{file:<file_w$} {kernel:<kernel_w$} {arch:<7} {regs:>5} {smem:>7} {stack:>6} {st:>8} {ld:>8}"
            )
        };
        row([
            &"file",
            &"kernel",
            &"arch",
            &"regs",
            &"smem",
            &"stack",
            &"spill-st",
            &"spill-ld",
        ]);
        for f in KERNEL_FILES {
            for r in f.resources {
                row([
                    &f.name,
                    &r.kernel,
                    &r.arch,
                    &r.registers,
                    &r.shared_bytes,
                    &r.stack_bytes,
                    &r.spill_stores,
                    &r.spill_loads,
                ]);
            }
        }
    }

    println!("\n== runtime");
    let device = runtime_facts();
    let libs = library_facts();

    println!("\n== settings (environment; how the CUDA backend will run)");
    let mut settings = serde_json::Map::new();
    for (name, value) in cuda::settings() {
        match &value {
            Ok(v) => println!("{name}: {v}"),
            Err(e) => println!("{name}: INVALID: {e}"),
        }
        settings.insert(
            name.into(),
            json!(value.unwrap_or_else(|e| format!("invalid: {e}"))),
        );
    }

    if let Some(path) = &args.json {
        let files: Vec<_> = KERNEL_FILES
            .iter()
            .map(|f| json!({"name": f.name, "resources": f.resources}))
            .collect();
        let doc = json!({"version": env!("CARGO_PKG_VERSION"), "nvcc": NVCC_VERSION, "kernels": files, "device": device, "libraries": libs, "settings": settings});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    if args.require_kernels && KERNEL_FILES.is_empty() {
        bail!("this binary carries no CUDA kernels");
    }
    if args.fail_on_spills {
        let bad = kernels::unexcused_spills(kernels::SPILL_ALLOW_LIST);
        if !bad.is_empty() {
            for r in &bad {
                eprintln!(
                    "spill: {} on {}: {} bytes stored, {} loaded",
                    r.kernel, r.arch, r.spill_stores, r.spill_loads
                );
            }
            bail!("{} kernel(s) spill registers on sm_90a; fix them or list them with a reason in kernels/spill-allow.txt", bad.len());
        }
        println!("\nno unexcused register spills on sm_90a");
    }
    Ok(())
}

fn runtime_facts() -> serde_json::Value {
    if !cuda::driver_present() {
        println!(
            "no NVIDIA driver found: this machine has no usable GPU (the CPU backend still works)"
        );
        return serde_json::Value::Null;
    }
    let version = cuda::driver_version().unwrap_or_else(|e| format!("unknown ({e})"));
    println!("driver: CUDA {version}");
    match cuda::Cuda::new() {
        Ok(gpu) => {
            let i = gpu.info();
            println!(
                "device {}: {} (compute {}.{}), {} SMs, {:.1} GiB, {} MiB L2",
                i.ordinal,
                i.name,
                i.compute_capability.0,
                i.compute_capability.1,
                i.sms,
                i.memory_bytes as f64 / (1u64 << 30) as f64,
                i.l2_bytes >> 20
            );
            if let Ok(n) = cuda::device_count() {
                println!("devices visible: {n} (LOWRANK_DEVICE picks one)");
            }
            serde_json::to_value(i).unwrap_or_default()
        }
        Err(e) => {
            println!("no usable GPU: {e:#}");
            json!({"error": format!("{e:#}")})
        }
    }
}

fn library_facts() -> serde_json::Value {
    // SAFETY: each probe only tries to dlopen candidate library names.
    let libs = unsafe {
        [
            ("cuBLAS", cudarc::cublas::sys::is_culib_present()),
            ("cuBLASLt", cudarc::cublaslt::sys::is_culib_present()),
            ("cuRAND", cudarc::curand::sys::is_culib_present()),
            ("NVRTC", cudarc::nvrtc::sys::is_culib_present()),
            ("NCCL", cudarc::nccl::sys::is_culib_present()),
            ("NVTX", cudarc::nvtx::sys::is_culib_present()),
        ]
    };
    let line: Vec<String> = libs
        .iter()
        .map(|(n, ok)| format!("{n} {}", if *ok { "yes" } else { "no" }))
        .collect();
    println!("libraries loadable: {}", line.join(", "));
    let mut facts: serde_json::Map<_, _> = libs
        .iter()
        .map(|(n, ok)| (n.to_string(), json!(ok)))
        .collect();
    if libs.iter().any(|&(n, ok)| n == "cuBLASLt" && ok) {
        facts.insert("cuBLASLt_loaded".into(), cublaslt_facts());
    }
    serde_json::Value::Object(facts)
}

/// The cuBLASLt this process loaded, which every GEMM goes through: its version and its file.
/// cudarc's dynamic loading takes the first of its candidate names that opens (an unversioned
/// libcublasLt.so, then CUDA 13's, then 12's...), and this binary's bindings are CUDA 13's
/// (cudarc's `cuda-13000`), so a machine whose first match is another major version is named.
fn cublaslt_facts() -> serde_json::Value {
    // SAFETY: the library is present (probed above); cublasLtGetVersion takes no arguments.
    let v = unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() };
    let version = dotted_version(v);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let file = loaded_library(&maps, "libcublasLt");
    println!(
        "cuBLASLt {version} loaded from {}",
        file.unwrap_or("(its file not found in /proc/self/maps)")
    );
    if v / 10_000 != 13 {
        println!(
            "warning: this binary's cuBLASLt bindings are CUDA 13's; with cuBLASLt {version} a GEMM \
             may fail or differ: put the folder of CUDA 13's libcublasLt.so.13 first on LD_LIBRARY_PATH"
        );
    }
    json!({"version": version, "file": file})
}

/// cuBLAS's version number (major · 10000 + minor · 100 + patch) as `major.minor.patch`.
fn dotted_version(v: usize) -> String {
    format!("{}.{}.{}", v / 10_000, v / 100 % 100, v % 100)
}

/// The path of the first mapping in `maps` (the text of /proc/self/maps) whose file name starts
/// with `stem`.
fn loaded_library<'a>(maps: &'a str, stem: &str) -> Option<&'a str> {
    maps.lines().filter_map(mapped_path).find(|path| {
        path.rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with(stem))
    })
}

/// A maps line's path: everything after its five fields (address, permissions, offset, device,
/// inode), so that a path with spaces comes whole.
fn mapped_path(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start().split_once(char::is_whitespace)?.1;
    }
    Some(rest.trim()).filter(|path| !path.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{dotted_version, loaded_library};

    #[test]
    fn cublas_version_numbers_read_as_major_minor_patch() {
        assert_eq!(dotted_version(130401), "13.4.1");
        assert_eq!(dotted_version(120805), "12.8.5");
        assert_eq!(dotted_version(130000), "13.0.0");
    }

    #[test]
    fn the_loaded_library_is_read_from_the_process_maps() {
        let maps = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 fd:01 1311 /work/target/release/lowrank
7f1e2c000000-7f1e2c400000 r--p 00000000 fd:01 2201 /opt/py/nvidia/cublas/lib/libcublas.so.13
7f1e30000000-7f1e34000000 r-xp 00200000 fd:01 2202                       /opt/my envs/nvidia/cublas/lib/libcublasLt.so.13
7f1e38000000-7f1e38001000 rw-p 00000000 00:00 0
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(
            loaded_library(maps, "libcublasLt"),
            Some("/opt/my envs/nvidia/cublas/lib/libcublasLt.so.13")
        );
        // A path with spaces comes whole. The stem is a file-name prefix: "libcublas." finds cuBLAS's own library, not cuBLASLt's.
        assert_eq!(
            loaded_library(maps, "libcublas."),
            Some("/opt/py/nvidia/cublas/lib/libcublas.so.13")
        );
        assert_eq!(loaded_library(maps, "libnccl"), None);
    }
}
