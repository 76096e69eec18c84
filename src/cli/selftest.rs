//! `lowrank selftest`: every CUDA op against its CPU twin (see src/selftest/).
//!
//! A kernel that faults (an illegal address, say) leaves the process's CUDA context unusable, and
//! every later case would fail with the same error. So after a failed case the context is probed;
//! if it is lost, the remaining cases run in a fresh process (this binary, `--first` the next
//! case), and their results are merged: one fault hides nothing else.

use crate::backend::{cpu::CpuBf16, cuda::Cuda, Backend, Buffer, DType};
use crate::selftest::{all_cases, check, Case, Outcome};
use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Write every case's result as JSON to this file
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Seed of the random inputs (each case draws its own stream from it)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run only cases whose op name contains this text, or one of several separated by commas
    /// (`--filter gemm_,linear_param`)
    #[arg(long)]
    filter: Option<String>,
    /// Leave out cases whose op name contains this text, or one of several separated by commas
    /// (`--skip lowrank` after a `--filter lowrank` run)
    #[arg(long)]
    skip: Option<String>,
    /// Leave out cases of more than this many multiply-adds (elements for elementwise ops), e.g.
    /// 2e8 on the CPU emulator of the GPU (tests/gpu-emu), which runs every kernel variant on the
    /// smaller, ragged shapes in minutes but would take an hour over the GPT-2-sized ones
    #[arg(long, value_name = "MACS")]
    max_work: Option<f64>,
    /// Start at this case index (the fresh process after a lost context)
    #[arg(long, default_value_t = 0, hide = true)]
    first: usize,
}

impl Args {
    /// Whether the case of this op runs: it contains a text of --filter (if given) and none of
    /// --skip.
    fn selects(&self, op: &str) -> bool {
        let any = |texts: &String| texts.split(',').any(|t| op.contains(t));
        self.filter.as_ref().is_none_or(any) && !self.skip.as_ref().is_some_and(any)
    }

    /// Whether this case runs: selected by name and within --max-work.
    fn runs(&self, case: &Case) -> bool {
        self.selects(&case.op()) && self.max_work.is_none_or(|w| case.work() <= w)
    }
}

pub fn run(args: Args) -> Result<()> {
    let gpu =
        Cuda::new().context("selftest compares CUDA ops with the CPU reference and needs a GPU")?;
    let device = serde_json::to_value(gpu.info())?;
    if args.first == 0 {
        println!("selftest: {} against {}", gpu.name(), CpuBf16.name());
        println!(
            "{:<36} {:<16} {:>10} {:>8}  result",
            "op", "shape", "rel err", "bound"
        );
    }
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut gpu = Some(gpu);
    let cases = all_cases();
    // Counted here for the whole run: a fresh process after a lost context skips the same ones.
    let not_applicable = (cases.iter().skip(args.first))
        .filter(|c| args.runs(c) && gpu.as_ref().is_some_and(|g| !c.applies(g)))
        .count();
    for (i, case) in cases.iter().enumerate().skip(args.first) {
        if !args.runs(case) {
            continue;
        }
        let Some(dev) = gpu.as_ref() else { break };
        if !case.applies(dev) {
            continue;
        }
        dev.kernels_used(); // what the last case's context probe launched
        let mut o = check(
            case,
            dev,
            &CpuBf16,
            args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
        );
        o.kernels = dev.kernels_used();
        print_outcome(&o);
        let lost = o.error.is_some() && context_lost(dev);
        outcomes.push(o);
        if lost {
            println!(
                "the CUDA context is lost after this case (a fault is sticky): \
                 the remaining cases run in a fresh process"
            );
            // Release this process's context before the next one opens its own.
            gpu = None;
            outcomes.extend(rest_in_fresh_process(&args, i + 1)?);
        }
    }
    if args.first > 0 {
        // A fresh process reports to its parent, which prints the totals.
        return write_json(&args, &device, &outcomes);
    }
    let failed = outcomes.iter().filter(|o| !o.pass).count();
    println!("{} passed, {} failed", outcomes.len() - failed, failed);
    if not_applicable > 0 {
        println!(
            "{not_applicable} case(s) left out: they compare attention's saved probabilities, \
             which flash attention does not keep (LOWRANK_ATTENTION=materialized runs them)"
        );
    }
    write_json(&args, &device, &outcomes)?;
    if failed > 0 {
        bail!("{failed} selftest case(s) failed");
    }
    Ok(())
}

fn print_outcome(o: &Outcome) {
    println!(
        "{:<36} {:<16} {:>10.2e} {:>8.0e}  {}{}",
        o.op,
        o.shape,
        o.rel_err,
        o.bound,
        if o.pass { "pass" } else { "FAIL" },
        o.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .or_else(|| o.mismatch.as_ref().map(|m| format!(" ({m})")))
            .unwrap_or_default()
    );
}

/// Whether the device still works: a sticky error makes every later call fail, this round trip too.
fn context_lost(gpu: &Cuda) -> bool {
    let probe = || -> Result<bool> {
        gpu.synchronize()?;
        let mut buf = gpu.alloc(DType::F32, 1)?;
        gpu.upload(&[1.5], buf.all_mut())?;
        Ok(gpu.download(buf.all())? == [1.5])
    };
    !matches!(probe(), Ok(true))
}

/// Runs cases `first..` in a new process of this binary and reads back their outcomes.
fn rest_in_fresh_process(args: &Args, first: usize) -> Result<Vec<Outcome>> {
    let json = std::env::temp_dir().join(format!(
        "lowrank-selftest-{}-from-{first}.json",
        std::process::id()
    ));
    let exe = std::env::current_exe().context("cannot find this binary to rerun it")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("selftest")
        .arg("--seed")
        .arg(args.seed.to_string())
        .arg("--first")
        .arg(first.to_string())
        .arg("--json")
        .arg(&json);
    if let Some(f) = &args.filter {
        cmd.arg("--filter").arg(f);
    }
    if let Some(f) = &args.skip {
        cmd.arg("--skip").arg(f);
    }
    if let Some(w) = args.max_work {
        cmd.arg("--max-work").arg(w.to_string());
    }
    let status = cmd
        .status()
        .context("cannot start a fresh selftest process")?;
    let read = || -> Result<Vec<Outcome>> {
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
        Ok(serde_json::from_value(doc["cases"].clone())?)
    };
    let outcomes = read().with_context(|| {
        format!(
            "the fresh selftest process ({status}) left no results in {}",
            json.display()
        )
    });
    let _ = std::fs::remove_file(&json);
    outcomes
}

fn write_json(args: &Args, device: &serde_json::Value, outcomes: &[Outcome]) -> Result<()> {
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"device": device, "seed": args.seed, "cases": outcomes});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn filter_and_skip_select_cases_by_op_name() {
        let selects = |flags: &[&str], op: &str| {
            let f = Flags::try_parse_from([&["selftest"], flags].concat()).unwrap();
            f.args.selects(op)
        };
        assert!(selects(&[], "lowrank_y_w0_b_bf16"));
        assert!(selects(&["--filter", "lowrank"], "lowrank_y_w0_b_bf16"));
        assert!(!selects(&["--filter", "lowrank"], "layernorm_forward_bf16"));
        assert!(!selects(&["--skip", "lowrank"], "lowrank_dx_bf16"));
        assert!(selects(&["--skip", "lowrank"], "layernorm_forward_bf16"));
        let either = ["--filter", "gemm_,linear_param"];
        assert!(selects(&either, "linear_param_grads_db"));
        assert!(selects(&either, "gemm_bias_nn_bf16"));
        assert!(!selects(&either, "lowrank_y_bf16"));
        assert!(!selects(
            &["--skip", "gelu,residual"],
            "gemm_bias_residual_nn_bf16"
        ));
        let both = ["--filter", "lowrank", "--skip", "_f32"];
        assert!(selects(&both, "lowrank_dx_bf16"));
        assert!(!selects(&both, "lowrank_dx_f32"));
    }

    #[test]
    fn max_work_leaves_out_the_large_cases_only() {
        let f = Flags::try_parse_from(["selftest", "--max-work", "2e8"]).unwrap();
        let cases = crate::selftest::all_cases();
        let runs = |op: &str, shape: &str| {
            let case = cases
                .iter()
                .find(|c| c.op() == op && c.shape() == shape)
                .unwrap_or_else(|| panic!("no case {op} {shape}"));
            f.args.runs(case)
        };
        // 257·129·1023 = 3.4e7 multiply-adds; 1024·768·3072 = 2.4e9.
        assert!(runs("gemm_nn_bf16->f32", "257x129x1023"));
        assert!(!runs("gemm_nn_bf16->f32", "1024x768x3072"));
        assert!(runs("lowrank_y_w0_b_bf16", "1000x200>72 r37/40"));
        assert!(!runs("lowrank_y_w0_b_bf16", "1024x768>3072 r100/104"));
        assert!(runs("model_grads_dlra", "tiny 3x37"));
    }
}
