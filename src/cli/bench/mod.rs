//! `lowrank bench`: times ops on the GPU with CUDA events (warm-up, median of many, inputs rotated
//! past L2) and reports each against the device's ceilings, nominal (an H100's) and measured in the
//! same run (the copy's TB/s, cuBLASLt's best TFLOP/s): an H200's HBM is faster than the nominal
//! 3.0 TB/s, so only the measured ceiling says how close a memory-bound kernel comes.
//! One file per op family beyond the basics (lowrank.rs: the low-rank linear layer; attention.rs:
//! flash against materialised attention; epilogue.rs: the MLP's GELU and the residual connection in
//! GEMM epilogues against passes).

mod attention;
mod epilogue;
mod lowrank;

use crate::backend::cuda::{Cuda, CudaBuf};
use crate::backend::{AdamW, Backend, Buffer, DType, Gemm};
use crate::util::profile;
use anyhow::{bail, Context, Result};
use cudarc::driver::sys::CUevent_flags;
use serde::Serialize;

/// Nominal ceilings of an H100 (../shared/GPU.md): cuBLAS bf16 8192³ on random data, and
/// device-to-device copy counting bytes read plus written.
const PEAK_TFLOPS: f64 = 790.0;
const PEAK_TBPS: f64 = 3.0;
/// Rotate through input sets totalling at least twice the device's L2 (50 MB on an H100, 60 MB
/// on an H200; this when the driver does not say), so every timed launch reads from HBM as it
/// would in training.
const L2_FALLBACK_BYTES: usize = 64 << 20;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which ops to time
    #[arg(value_enum, default_value_t = Which::All)]
    which: Which,
    /// Timed repetitions per op (the median is reported)
    #[arg(long, default_value_t = 50)]
    reps: usize,
    /// Write the results as JSON to this file
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Low-rank implementations not to time, comma-separated (e.g. `fused,wgmma` where Hopper's
    /// wgmma mainloops failed `selftest`); the unfused cuBLASLt path is always timed, since every
    /// row's "x unfused" divides by it
    #[arg(long, value_enum, value_delimiter = ',', value_name = "IMPL")]
    skip_impl: Vec<lowrank::FusedImpl>,
    /// Tiny shapes and 3 reps: runs every code path of the bench in seconds, e.g. on the emulated
    /// GPU of tests/gpu-emu before a GPU run (`GPU_RUN_SMOKE=1 scripts/gpu-run.sh`); its times
    /// mean nothing
    #[arg(long)]
    smoke: bool,
    /// Time this low-rank layer instead of the GPT-2 grid: ROWS,N_IN,N_OUT,RANK (e.g.
    /// 8192,768,3072,96); repeat for more layers; with `lowrank-linear` only
    #[arg(long, value_name = "ROWS,N_IN,N_OUT,RANK", conflicts_with = "smoke")]
    shape: Vec<lowrank::LayerShape>,
    /// After each op's timing, run it once more under the profiler's capture (cuProfilerStart and
    /// cuProfilerStop, inside an NVTX range named for the op, its name printed first), so a
    /// profiler records one call of every op and nothing else: `ncu --profile-from-start off
    /// lowrank bench lowrank-linear --capture`, or `nsys profile --capture-range=cudaProfilerApi
    /// --capture-range-end=repeat`
    #[arg(long)]
    capture: bool,
}

/// How `bench` times an op: `reps` calls after a warm-up, the median reported; with `capture`, one
/// call more under the profiler's capture, named `label` and what the op's function adds to it.
struct Timing {
    reps: usize,
    capture: bool,
    label: String,
}

impl Timing {
    /// The same timing, its captured calls named `label`.
    fn labelled(&self, label: String) -> Timing {
        Timing {
            reps: self.reps,
            capture: self.capture,
            label,
        }
    }
}

/// What `bench` times: GPT-2-scale operands, or `--smoke`'s tiny ones (ragged where the kernels
/// have edge cases: a row count off the tiles, a rank off 16). `scripts/peer-bench.py --smoke`
/// uses the same shapes, so the two JSON files of a dry run join as a GPU run's do.
struct Sizes {
    copy_elems: usize,
    /// (m, n, k) of the cuBLASLt bf16 GEMMs.
    gemms: &'static [(usize, usize, usize)],
    adamw_params: usize,
    attention: &'static [attention::Shape],
    epilogue: &'static [epilogue::Shape],
    lowrank: lowrank::Sizes,
}

const FULL: Sizes = Sizes {
    copy_elems: 256 << 20, // 1 GiB of f32
    gemms: &[
        (4096, 4096, 4096),
        (8192, 4096, 1024),
        (8192, 1024, 4096),
        (8192, 8192, 8192),
    ],
    adamw_params: 124_475_904, // GPT-2 small
    attention: attention::FULL,
    epilogue: epilogue::FULL,
    lowrank: lowrank::FULL,
};

const SMOKE: Sizes = Sizes {
    copy_elems: 1 << 16,
    gemms: &[(64, 32, 48)],
    adamw_params: 4096,
    attention: attention::SMOKE,
    epilogue: epilogue::SMOKE,
    lowrank: lowrank::SMOKE,
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Which {
    All,
    Gemm,
    Adamw,
    Copy,
    /// Causal attention, flash against materialised, GPT-2 small and medium at T = 1024
    Attention,
    /// The fused low-rank linear layer against cuBLASLt (dense and unfused), GPT-2 MLP shapes
    LowrankLinear,
    /// The MLP's GELU and the residual connection in GEMM epilogues against separate passes,
    /// GPT-2 small and medium
    #[value(alias = "gelu")]
    Epilogue,
}

#[derive(Serialize)]
struct Row {
    op: String,
    shape: String,
    median_ms: f64,
    /// TFLOP/s for compute-bound ops, TB/s for memory-bound ones.
    achieved: f64,
    unit: &'static str,
    /// Achieved over the nominal ceiling (790 TFLOP/s or 3.0 TB/s).
    frac_of_peak: f64,
    /// Achieved over the ceiling measured in this run: the copy's TB/s, or the best cuBLASLt
    /// GEMM's TFLOP/s (None when this run measured no ceiling of the unit).
    frac_of_measured: Option<f64>,
}

/// Fills each row's `frac_of_measured` from the fastest row of its unit: the copy for TB/s, the
/// best GEMM for TF/s (both are what the hardware allows, measured; nothing of ours beats them).
fn against_measured(rows: &mut [Row]) {
    for unit in ["TB/s", "TF/s"] {
        let ceiling = rows
            .iter()
            .filter(|r| r.unit == unit && (r.op == "copy_f32" || r.op.starts_with("gemm_cublaslt")))
            .map(|r| r.achieved)
            .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
        for r in rows.iter_mut().filter(|r| r.unit == unit) {
            r.frac_of_measured = ceiling.map(|c| r.achieved / c);
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    if !args.shape.is_empty() && args.which != Which::LowrankLinear {
        bail!("--shape sets the low-rank layers to time: use it with `bench lowrank-linear`");
    }
    let mut gpu = Cuda::new().context("bench times CUDA kernels and needs a GPU")?;
    let (sizes, reps) = if args.smoke {
        (&SMOKE, args.reps.min(3))
    } else {
        (&FULL, args.reps)
    };
    let timing = Timing {
        reps,
        capture: args.capture,
        label: String::new(),
    };
    println!(
        "bench on {} (median of {reps} reps, inputs rotated past L2{})",
        gpu.name(),
        if args.smoke {
            "; --smoke: tiny shapes, times mean nothing"
        } else {
            ""
        }
    );
    let mut rows = Vec::new();
    if matches!(args.which, Which::All | Which::Copy) {
        rows.push(bench_copy(&gpu, sizes.copy_elems, &timing)?);
    }
    if matches!(args.which, Which::All | Which::Gemm) {
        for &(m, n, k) in sizes.gemms {
            rows.push(bench_gemm(&gpu, Gemm::new(m, n, k), &timing)?);
        }
    }
    if matches!(args.which, Which::All | Which::Adamw) {
        rows.push(bench_adamw(&gpu, sizes.adamw_params, &timing)?);
    }
    against_measured(&mut rows);
    print_rows(&rows);
    // A low-rank or attention kernel that faults must not cost the rows above: they are written
    // either way.
    let lowrank = if matches!(args.which, Which::All | Which::LowrankLinear) {
        if !rows.is_empty() {
            println!();
        }
        let groups = match args.shape.is_empty() {
            true => sizes.lowrank.groups(),
            false => args.shape.iter().map(|s| s.group()).collect(),
        };
        lowrank::run(&mut gpu, &groups, &timing, &args.skip_impl)
    } else {
        Ok(Vec::new())
    };
    let attention = if matches!(args.which, Which::All | Which::Attention) {
        println!();
        attention::run(&mut gpu, sizes.attention, &timing).map(|mut att| {
            // Against this run's best cuBLASLt GEMM, where it timed one.
            let ceiling = rows.iter().filter(|r| r.unit == "TF/s").map(|r| r.achieved);
            let best = ceiling.fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
            att.iter_mut()
                .for_each(|r| r.frac_of_measured = best.map(|c| r.achieved / c));
            print_rows(&att);
            att
        })
    } else {
        Ok(Vec::new())
    };
    let epilogue = if matches!(args.which, Which::All | Which::Epilogue) {
        println!();
        epilogue::run(&gpu, sizes.epilogue, &timing).inspect(|rows| {
            print_rows(rows);
            for pair in rows.chunks(2) {
                let ratio = pair[1].median_ms / pair[0].median_ms;
                let layer = pair[0].op.trim_end_matches("_fused");
                println!(
                    "{layer:<32} {:<20} two passes / fused: {ratio:.3}×",
                    pair[0].shape
                );
            }
        })
    } else {
        Ok(Vec::new())
    };
    let ((lowrank_rows, lowrank_error), (attention_rows, attention_error)) =
        (rows_or_error(&lowrank), rows_or_error(&attention));
    let (epilogue_rows, epilogue_error) = rows_or_error(&epilogue);
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"device": gpu.info(), "reps": reps, "smoke": args.smoke, "peak_tflops": PEAK_TFLOPS, "peak_tbps": PEAK_TBPS, "rows": rows, "lowrank": lowrank_rows, "lowrank_error": lowrank_error, "attention": attention_rows, "attention_error": attention_error, "epilogue": epilogue_rows, "epilogue_error": epilogue_error});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    lowrank.context("the low-rank linear bench failed")?;
    attention.context("the attention bench failed")?;
    epilogue.context("the epilogue bench failed")?;
    Ok(())
}

/// A part's rows for the JSON, or none and its error.
fn rows_or_error<T>(part: &Result<Vec<T>>) -> (&[T], Option<String>) {
    match part {
        Ok(rows) => (rows.as_slice(), None),
        Err(e) => (&[], Some(format!("{e:#}"))),
    }
}

fn print_rows(rows: &[Row]) {
    if !rows.is_empty() {
        println!(
            "{:<32} {:<20} {:>10} {:>12} {:>9} {:>12}",
            "op", "shape", "median ms", "achieved", "of peak", "of measured"
        );
    }
    for r in rows {
        println!(
            "{:<32} {:<20} {:>10.4} {:>7.1} {:<4} {:>8.1}% {:>11}",
            r.op,
            r.shape,
            r.median_ms,
            r.achieved,
            r.unit,
            100.0 * r.frac_of_peak,
            r.frac_of_measured
                .map_or("-".into(), |f| format!("{:.1}%", 100.0 * f))
        );
    }
}

/// Median time in ms of `timing.reps` calls of `f(i)` (i counts up, for rotating inputs), after
/// warm-up; with `timing.capture`, then one call under the profiler's capture, named
/// `timing.label` and `what`.
fn time_median(
    gpu: &Cuda,
    timing: &Timing,
    what: &str,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    for i in 0..5 {
        f(i)?;
    }
    let ctx = gpu.context();
    let reps = timing.reps.max(1);
    let mut times = Vec::with_capacity(reps);
    for i in 0..reps {
        let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let stop = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        start.record(gpu.stream())?;
        f(i)?;
        stop.record(gpu.stream())?;
        stop.synchronize()?;
        times.push(start.elapsed_ms(&stop)? as f64);
    }
    if timing.capture {
        let label = format!("{} {what}", timing.label);
        let label = label.trim();
        // Printed before the call, so the profiler's lines for its kernels follow the op's name.
        println!("capture: {label}");
        let _range = profile::range(|| label.to_string());
        gpu.profiler_capture(true)?;
        let call = f(reps).and_then(|()| gpu.synchronize());
        gpu.profiler_capture(false)?;
        call.with_context(|| format!("the captured call of {label} failed"))?;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// Enough copies of an operand of `bytes` to fill twice the L2 (at least one, at most 16).
fn rotation(gpu: &Cuda, bytes: usize) -> usize {
    let l2 = match gpu.info().l2_bytes {
        0 => L2_FALLBACK_BYTES,
        l2 => l2,
    };
    (2 * l2).div_ceil(bytes.max(1)).clamp(1, 16)
}

fn random_bufs(gpu: &Cuda, dtype: DType, len: usize, count: usize) -> Result<Vec<CudaBuf>> {
    let mut rng = crate::util::rng::Rng::new(len as u64);
    let host = rng.normal_vec(len, 1.0);
    (0..count)
        .map(|_| {
            let mut b = gpu.alloc(dtype, len)?;
            gpu.upload(&host, b.all_mut())?;
            Ok(b)
        })
        .collect()
}

fn bench_copy(gpu: &Cuda, n: usize, timing: &Timing) -> Result<Row> {
    let src = random_bufs(gpu, DType::F32, n, 1)?;
    let mut dst = gpu.alloc(DType::F32, n)?;
    let ms = time_median(gpu, timing, "copy_f32", |_| {
        gpu.cast(src[0].all(), dst.all_mut())
    })?;
    let tbps = 2.0 * (n * 4) as f64 / (ms * 1e-3) / 1e12;
    Ok(Row {
        op: "copy_f32".into(),
        shape: format!("{n}"),
        median_ms: ms,
        achieved: tbps,
        unit: "TB/s",
        frac_of_peak: tbps / PEAK_TBPS,
        frac_of_measured: None,
    })
}

fn bench_gemm(gpu: &Cuda, g: Gemm, timing: &Timing) -> Result<Row> {
    let (la, lb, lc) = g.required_lens();
    let sets = rotation(gpu, (la + lb) * 2);
    let a = random_bufs(gpu, DType::BF16, la, sets)?;
    let b = random_bufs(gpu, DType::BF16, lb, sets)?;
    let mut c = gpu.alloc(DType::BF16, lc)?;
    let what = format!("gemm_cublaslt_bf16 {}x{}x{}", g.m, g.n, g.k);
    let ms = time_median(gpu, timing, &what, |i| {
        gpu.gemm(&g, a[i % sets].all(), b[i % sets].all(), c.all_mut())
    })?;
    let tflops = g.flops() / (ms * 1e-3) / 1e12;
    Ok(Row {
        op: "gemm_cublaslt_bf16".into(),
        shape: format!("{}x{}x{}", g.m, g.n, g.k),
        median_ms: ms,
        achieved: tflops,
        unit: "TF/s",
        frac_of_peak: tflops / PEAK_TFLOPS,
        frac_of_measured: None,
    })
}

fn bench_adamw(gpu: &Cuda, n: usize, timing: &Timing) -> Result<Row> {
    let mut p = gpu.alloc(DType::F32, n)?;
    let g = random_bufs(gpu, DType::F32, n, 1)?;
    let mut m = gpu.alloc(DType::F32, n)?;
    let mut v = gpu.alloc(DType::F32, n)?;
    let mut copy = gpu.alloc(DType::BF16, n)?;
    let mut hp = AdamW {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 1,
        grad_scale: 1.0,
    };
    let ms = time_median(gpu, timing, "adamw_f32+bf16copy", |i| {
        hp.step = i as u32 + 1;
        gpu.adamw(
            &hp,
            p.all_mut(),
            g[0].all(),
            m.all_mut(),
            v.all_mut(),
            Some(copy.all_mut()),
        )
    })?;
    // Reads params, grads, m, v (16 B); writes params, m, v (12 B) and the bf16 copy (2 B).
    let tbps = 30.0 * n as f64 / (ms * 1e-3) / 1e12;
    Ok(Row {
        op: "adamw_f32+bf16copy".into(),
        shape: format!("{n}"),
        median_ms: ms,
        achieved: tbps,
        unit: "TB/s",
        frac_of_peak: tbps / PEAK_TBPS,
        frac_of_measured: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(op: &str, achieved: f64, unit: &'static str) -> Row {
        Row {
            op: op.into(),
            shape: String::new(),
            median_ms: 1.0,
            achieved,
            unit,
            frac_of_peak: 0.0,
            frac_of_measured: None,
        }
    }

    /// Memory-bound rows are read against the copy, compute-bound rows against the best cuBLASLt
    /// GEMM of the run; a unit without a ceiling row gets none.
    #[test]
    fn rows_are_read_against_the_ceilings_measured_in_the_run() {
        let mut rows = vec![
            row("copy_f32", 4.0, "TB/s"),
            row("gemm_cublaslt_bf16", 500.0, "TF/s"),
            row("gemm_cublaslt_bf16", 800.0, "TF/s"),
            row("adamw_f32+bf16copy", 3.0, "TB/s"),
        ];
        against_measured(&mut rows);
        let fracs: Vec<_> = rows.iter().map(|r| r.frac_of_measured).collect();
        assert_eq!(fracs, [Some(1.0), Some(0.625), Some(1.0), Some(0.75)]);

        let mut alone = vec![row("adamw_f32+bf16copy", 3.0, "TB/s")];
        against_measured(&mut alone);
        assert_eq!(alone[0].frac_of_measured, None);
    }
}
