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
        println!(
            "{:<12} {:<24} {:<7} {:>5} {:>7} {:>6} {:>7} {:>7}",
            "file", "kernel", "arch", "regs", "smem", "stack", "spill-st", "spill-ld"
        );
        for f in KERNEL_FILES {
            for r in f.resources {
                println!(
                    "{:<12} {:<24} {:<7} {:>5} {:>7} {:>6} {:>7} {:>7}",
                    f.name,
                    r.kernel,
                    r.arch,
                    r.registers,
                    r.shared_bytes,
                    r.stack_bytes,
                    r.spill_stores,
                    r.spill_loads
                );
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
    serde_json::Value::Object(
        libs.iter()
            .map(|(n, ok)| (n.to_string(), json!(ok)))
            .collect(),
    )
}
