//! The CUDA backend end to end without a GPU: tests/gpu-emu builds a fake libcuda (every kernel of
//! kernels/ compiled for the CPU by g++, its PTX instructions modelled, each CUDA thread a fiber)
//! and a fake libcuBLASLt, and the binary runs on them against the CPU reference.
//!
//! The selftest, five times: an sm_80 of 108 SMs with the threads of each block run in reverse
//! order (narrow tiles, split K), one of 4 SMs in forward order (the wide mma.sync tiles; the tiny
//! GPT's forward and backward run only in the first), and the low-rank cases on an sm_90a of 4 SMs
//! in random order, on its default mainloop (TMA, both tiles), on the cp.async wgmma one and with
//! the merged weight (LOWRANK_MERGE_BASE=1); between them every kernel must have run, and the
//! kernels the cases report are those the fake driver launched. Then a few steps of training (the
//! launchers, buffers and optimiser paths of the training loop) against the same run on the CPU
//! backend, `bench --smoke` (the bench's own code, before a GPU run depends on it), and the dense
//! layers' passes where cuBLASLt offers no algorithm for an epilogue. Where g++ has AddressSanitizer, the kernels are built
//! with it, so every global-memory access outside its allocation fails the run (the emulator's
//! compute-sanitizer memcheck). What this cannot show: speed, and memory-ordering faults of real
//! hardware.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The emulated GPU, built once for the tests of this file.
struct Emulator {
    dir: PathBuf,
    /// g++'s AddressSanitizer runtime, when the emulator was built with it.
    asan: Option<String>,
}

impl Emulator {
    /// Builds it, or None (the test is skipped) when the binary embeds no kernels to load.
    fn get() -> Option<&'static Emulator> {
        static EMULATOR: OnceLock<Option<Emulator>> = OnceLock::new();
        EMULATOR.get_or_init(Emulator::build).as_ref()
    }

    fn build() -> Option<Emulator> {
        if lowrank::kernels::NVCC_VERSION.is_none() {
            assert!(
                std::env::var("LOWRANK_REQUIRE_KERNELS").as_deref() != Ok("1"),
                "LOWRANK_REQUIRE_KERNELS=1 but the binary has no kernels"
            );
            eprintln!(
                "skipped: this binary was built without nvcc, so it embeds no kernels to load"
            );
            return None;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-emu");
        let asan = asan_runtime();
        if asan.is_none() {
            eprintln!(
                "note: g++ has no AddressSanitizer runtime: the kernels' memory accesses go unchecked"
            );
        }
        let build = Command::new("bash")
            .arg(root.join("tests/gpu-emu/build.sh"))
            .arg(&dir)
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
        Some(Emulator { dir, asan })
    }

    /// The lowrank binary with these arguments on the emulated GPU of this arch and SM count.
    fn run(&self, args: &[&str], arch: &str, sms: &str, env: &[(&str, &OsStr)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lowrank"));
        if let Some(lib) = &self.asan {
            // The ASan runtime must be the process's first library, and the sanitized libcuda.so
            // is preloaded for its static TLS (tests/gpu-emu/build.sh); leaks are not the question.
            let mut preload = std::ffi::OsString::from(lib);
            preload.push(" ");
            preload.push(self.dir.join("libcuda.so"));
            cmd.env("LD_PRELOAD", preload)
                .env("ASAN_OPTIONS", "detect_leaks=0");
        }
        cmd.args(args)
            .env("LD_LIBRARY_PATH", &self.dir)
            .env("LOWRANK_EMU_ARCH", arch)
            .env("LOWRANK_EMU_SMS", sms)
            .env_remove("LOWRANK_LOWRANK_IMPL")
            .env_remove("LOWRANK_WGMMA_NMAJOR")
            .env_remove("LOWRANK_TMA_TILE")
            .env_remove("LOWRANK_MERGE_BASE")
            .env_remove("LOWRANK_EMU_WGMMA");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("the binary runs")
    }
}

/// The selftest's cases of the fused layer's y and dx products (with the GELU and residual
/// epilogues): those whose kernels change with the mainloop.
const PRODUCTS: &str = "lowrank_y,lowrank_dx,lowrank_geluy,lowrank_residualy";

#[test]
fn selftest_passes_on_the_emulated_gpu_and_launches_every_kernel() {
    let Some(emu) = Emulator::get() else { return };
    let trace = emu.dir.join("launches.txt");
    let _ = std::fs::remove_file(&trace);
    // The kernels each case says it launched (the selftest's JSON, which scripts/kernel-status.py
    // reads after a GPU run), against what the fake driver saw launched.
    let mut reported = BTreeSet::new();
    // The tiny GPT's whole forward and backward (`model_`, three quarters of a run's time under
    // AddressSanitizer) once: its ops are the cases before it, which both sm_80 runs repeat.
    // Each run's settings over the defaults (`Emulator::run` clears them: the TMA mainloop, no
    // merge, warps meeting at every wgmma). LOWRANK_EMU_WGMMA=warp lets a warpgroup's warps issue wgmma at their own pace and
    // one lag far behind (the PTX ISA syncs them per warp only), which the ping-pong schedule's
    // turn hand-off once relied on not happening (review 2026-12-06, pingpong.md F1: with the
    // leader-only hand-off that run deadlocks).
    let order = |o| ("LOWRANK_EMU_ORDER", o);
    let imp = |i| ("LOWRANK_LOWRANK_IMPL", i);
    let warp = ("LOWRANK_EMU_WGMMA", "warp");
    let runs = [
        ("80", "108", "", None, vec![order("reverse")]),
        ("80", "4", "", Some("model_"), vec![order("forward")]),
        ("90", "4", "lowrank", None, vec![order("random")]),
        // The other mainloops of the y and dx products: their cases only (the projections'
        // kernels are those of the run above). The cp.async wgmma kernel; the merged weight on the
        // ping-pong schedule (what merging changes is the operands, not the mainloop, and this
        // run is then also the ping-pong kernels'); the TMA kernel in clusters of two (blocks run
        // together, sharing B by multicast) at 3 SMs, a grid of one cluster walking several pairs
        // of tiles.
        (
            "90",
            "4",
            PRODUCTS,
            None,
            vec![order("random"), imp("wgmma")],
        ),
        (
            "90",
            "4",
            PRODUCTS,
            None,
            vec![
                order("random"),
                imp("pingpong"),
                ("LOWRANK_MERGE_BASE", "1"),
                warp,
            ],
        ),
        (
            "90",
            "3",
            PRODUCTS,
            None,
            vec![order("reverse"), imp("multicast"), warp],
        ),
    ];
    for (run, (arch, sms, filter, skip, settings)) in runs.into_iter().enumerate() {
        let json = emu.dir.join(format!("selftest-{run}.json"));
        let json_arg = json.to_str().expect("a UTF-8 target path");
        let mut args = vec![
            "selftest",
            "--max-work",
            "2e8",
            "--filter",
            filter,
            "--json",
            json_arg,
        ];
        if let Some(skip) = skip {
            args.extend(["--skip", skip]);
        }
        let mut env = vec![("LOWRANK_EMU_TRACE", trace.as_os_str())];
        env.extend(settings.iter().map(|&(k, v)| (k, OsStr::new(v))));
        let out = emu.run(&args, arch, sms, &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("Emulated GPU") && stdout.contains(" 0 failed"),
            "selftest on the emulated sm_{arch} ({sms} SMs, {settings:?}) failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        for case in doc["cases"].as_array().unwrap() {
            for k in case["kernels"].as_array().into_iter().flatten() {
                reported.insert(k.as_str().unwrap().to_string());
            }
        }
    }

    let launched: BTreeSet<String> = std::fs::read_to_string(&trace)
        .expect("the fake driver wrote its launches")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        reported, launched,
        "the kernels the selftest's cases report are not those the driver launched"
    );
    let mut compiled = BTreeSet::new();
    for entry in std::fs::read_dir(emu.dir.join("obj")).unwrap() {
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

/// Four steps of the tiny GPT with DLRA (low-rank factors; windows of 3 steps, so the bases are
/// augmented at steps 1 and 4 and S is truncated by an SVD at step 3; the check that the bf16
/// compute copy follows the f32 master weights) on the emulated GPU, and the same on the CPU
/// backend in bf16: the losses agree to 0.2 % (measured: 0.005 %), where a wrong launch, buffer or
/// update would move them by far more. A run stopped after step 2 and resumed ends where the
/// straight run does.
#[test]
fn training_on_the_emulated_gpu_follows_the_cpu_backend() {
    let Some(emu) = Emulator::get() else { return };
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-emu-train");
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut losses = Vec::new();
    // "cuda-resumed" stops after step 2 and is resumed: its checkpoint read back into the GPU's
    // weights and moments, through a host staging copy, continues the straight run.
    for run in ["cuda", "cpu-bf16", "cuda-resumed"] {
        let run_dir = out_dir.join(run);
        let device = run.trim_end_matches("-resumed");
        let mut args = vec![
            "train",
            "--device",
            device,
            "--lowrank",
            "dlra",
            "--rank-init",
            "16",
            "--dlra-window",
            "3",
            "--check-compute-copy",
            "--warmup",
            "2",
            "--steps",
            "4",
            "--eval-every",
            "4",
            // 3 × 40 tokens, ragged against the 64-row tiles, and two validation batches: a
            // quarter of the default's tokens (the emulated LM head over GPT-2's vocabulary is
            // most of the run).
            "--batch",
            "3",
            "--seq",
            "40",
            "--eval-batches",
            "2",
            "--out",
            run_dir.to_str().unwrap(),
        ];
        let resume = ["train", "--resume", run_dir.to_str().unwrap()];
        let runs: Vec<&[&str]> = match run.ends_with("-resumed") {
            true => {
                args.extend(["--stop-at", "2"]);
                vec![&args, &resume]
            }
            false => vec![&args],
        };
        for args in runs {
            let out = emu.run(args, "80", "108", &[]);
            assert!(
                out.status.success(),
                "{args:?} failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        losses.push(read_losses(&run_dir.join("metrics.jsonl")));
    }
    // The resumed run's losses are the straight run's but for the order of the emulated
    // blocks' atomic additions.
    for (i, (r, g)) in losses[2].iter().zip(&losses[0]).enumerate() {
        assert!(
            ((r - g) / g).abs() < 1e-5,
            "loss {i}: {r} resumed, {g} straight on the emulated GPU ({:?} vs {:?})",
            losses[2],
            losses[0]
        );
    }
    let (gpu, cpu) = (&losses[0], &losses[1]);
    assert_eq!(
        gpu.len(),
        5,
        "four training losses and one validation loss: {gpu:?}"
    );
    assert_eq!(gpu.len(), cpu.len());
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            ((g - c) / c).abs() < 2e-3,
            "loss {i}: {g} on the emulated GPU, {c} on cpu-bf16 (all: {gpu:?} vs {cpu:?})"
        );
    }
    // The checkpoints' weights and moments, copied off the device, follow the CPU's: over each
    // file (a tensor that started at zero, a bias, has moved by a few Adam steps, whose signs
    // bf16 may flip, so it is not held alone), but for DLRA's orthonormal bases, which the two
    // may turn differently within their span (seen: U·S·Vᵀ the same, U and V not).
    let basis = |name: &str| name.ends_with(".lowrank_ut") || name.ends_with(".lowrank_vt");
    for (file, bound) in [("model.safetensors", 1e-2), ("optimizer.safetensors", 5e-2)] {
        let load = |device: &str| {
            let path = out_dir.join(device).join("checkpoint-0000004").join(file);
            lowrank::train::tensor_file::load(&path).unwrap().0
        };
        let (gpu, cpu) = (load("cuda"), load("cpu-bf16"));
        // The resumed run's weights and moments are the straight run's.
        for (r, g) in load("cuda-resumed").iter().zip(&gpu) {
            let d = (r.data.iter().zip(&g.data)).map(|(a, b)| ((a - b) as f64).powi(2));
            let n = g.data.iter().map(|&b| (b as f64).powi(2));
            let (d, n) = (d.sum::<f64>().sqrt(), n.sum::<f64>().sqrt());
            assert!(
                r.name == g.name && d <= 1e-4 * n + 1e-12,
                "{file} {}: resumed {} off the straight run by {d:.3e} (|straight| = {n:.3e})",
                g.name,
                r.name
            );
        }
        let names = |ts: &[lowrank::train::tensor_file::HostTensor]| -> Vec<(String, Vec<usize>)> {
            ts.iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect()
        };
        assert_eq!(names(&gpu), names(&cpu), "{file}");
        let (mut diff, mut size) = (0.0f64, 0.0f64);
        for (g, c) in gpu.iter().zip(&cpu).filter(|(g, _)| !basis(&g.name)) {
            let (mut d, mut n) = (0.0f64, 0.0f64);
            for (a, b) in g.data.iter().zip(&c.data) {
                d += ((a - b) as f64).powi(2);
                n += (*b as f64).powi(2);
            }
            (diff, size) = (diff + d, size + n);
            // Each tensor alone, but for what 4 Adam steps at the tiny model's 3e-3 may move an
            // element apart (at most 4 · 3e-3 each way): a tensor copied from the wrong place,
            // or not at all, is off by its whole size.
            let slack = 8.0 * 3e-3 * (g.data.len() as f64).sqrt();
            assert!(
                file != "model.safetensors" || d.sqrt() <= 0.05 * n.sqrt() + slack,
                "{file} {}: |gpu − cpu| = {:.3e}, |cpu| = {:.3e}",
                g.name,
                d.sqrt(),
                n.sqrt()
            );
        }
        let rel = (diff / size).sqrt();
        assert!(rel < bound, "{file}: |gpu − cpu| / |cpu| = {rel:.3e}");
    }
}

/// LoRA with trained embeddings on the emulated GPU follows the CPU in the GPU's precision: its
/// base put into the weights tensor by tensor, gradients packed for its trained tensors alone
/// (the factors' offsets translated in the fused low-rank backward), AdamW over them, and a
/// checkpoint of those tensors copied off the device one by one; the checkpoint then evaluates on
/// the emulated GPU, completed from its base, to the CPU's loss.
#[test]
fn lora_on_the_emulated_gpu_follows_the_cpu_backend() {
    let Some(emu) = Emulator::get() else { return };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-emu-lora");
    let _ = std::fs::remove_dir_all(&dir);
    let run = |args: &[&str]| {
        let out = emu.run(args, "80", "108", &[]);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} failed:\n{text}");
        text
    };
    let base = dir.join("base");
    let base = base.to_str().unwrap();
    run(&["train", "--steps", "2", "--eval-every", "0", "--out", base]);
    for device in ["cuda", "cpu-bf16"] {
        let out = dir.join(device);
        run(&[
            "train",
            "--device",
            device,
            "--lowrank",
            "lora",
            "--rank-init",
            "4",
            "--lora-embeddings",
            "--lora-base",
            base,
            "--check-compute-copy",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--eval-every",
            "3",
            "--eval-batches",
            "1",
            "--batch",
            "3",
            "--seq",
            "40",
            "--out",
            out.to_str().unwrap(),
        ]);
    }
    let losses = |device: &str| read_losses(&dir.join(device).join("metrics.jsonl"));
    let (gpu, cpu) = (losses("cuda"), losses("cpu-bf16"));
    assert_eq!(
        gpu.len(),
        4,
        "three training losses and one validation loss: {gpu:?}"
    );
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert!(
            ((g - c) / c).abs() < 2e-3,
            "loss {i}: {g} on the emulated GPU, {c} on cpu-bf16 ({gpu:?} vs {cpu:?})"
        );
    }
    // The checkpoints hold the same tensors (the factors, wte and wpe), near in value: three
    // Adam steps, whose first moves every element by the learning rate with its gradient's sign,
    // which bf16 may flip where a gradient is near zero, left the Ut 0–4 % apart and the Vt,
    // which start at zero (LoRA's B), 0.4–14 % (seen); a tensor copied off the device from the
    // wrong place would be off by its whole size, so 10 % and 50 % bound them.
    let load = |device: &str| {
        let path = dir
            .join(device)
            .join("checkpoint-0000003/model.safetensors");
        lowrank::train::tensor_file::load(&path).unwrap().0
    };
    let (gpu, cpu) = (load("cuda"), load("cpu-bf16"));
    assert_eq!(
        gpu.len(),
        4 * 2 * 2 + 2,
        "tiny's 4 blocks × 2 MLP matrices × (Ut, Vt), wte, wpe"
    );
    for (g, c) in gpu.iter().zip(&cpu) {
        assert_eq!((&g.name, &g.shape), (&c.name, &c.shape));
        let d = (g.data.iter().zip(&c.data)).map(|(a, b)| ((a - b) as f64).powi(2));
        let n = c.data.iter().map(|&b| (b as f64).powi(2));
        let (d, n) = (d.sum::<f64>().sqrt(), n.sum::<f64>().sqrt());
        let bound = match g.name.ends_with(".lowrank_vt") {
            true => 0.5,
            false => 0.1,
        };
        assert!(
            d <= bound * n,
            "{}: |gpu − cpu| = {d:.3e}, |cpu| = {n:.3e}",
            g.name
        );
    }
    // Evaluated on the emulated GPU and on the CPU from the emulated GPU's checkpoint.
    let eval = |device: &str| -> f64 {
        let ckpt = dir.join("cuda");
        let args = ["eval", "--ckpt", ckpt.to_str().unwrap(), "--device", device];
        let text = run(&[&args[..], &["--max-batches", "1"]].concat());
        let loss = text
            .split("loss ")
            .last()
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        loss.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no loss in:\n{text}"))
    };
    let (on_gpu, on_cpu) = (eval("cuda"), eval("cpu"));
    assert!(
        ((on_gpu - on_cpu) / on_cpu).abs() < 5e-3,
        "eval: {on_gpu} on the emulated GPU, {on_cpu} on the CPU"
    );
}

/// A CUDA run's memory plan (the banner's "memory: about N MB", checked against the GPU's free
/// memory before anything is allocated) is, less its margin, what the run allocates on the
/// emulated GPU at its peak to within the banner's rounding, attention's scratch included, with
/// materialised attention too (whose B·heads·T² score gradients, 6 MB here, are the largest
/// scratch); so does `eval`'s forward-only model, which holds no gradients and fewer activations
/// than training at the same batch. On a GPU 10 MB short of the plan the run is refused before
/// it writes anything, with the batch that fits at the same tokens a step, and those settings
/// then train on that GPU.
#[test]
fn training_stays_within_its_memory_plan_and_a_smaller_gpu_is_told_what_fits() {
    let Some(emu) = Emulator::get() else { return };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-emu-memory");
    let _ = std::fs::remove_dir_all(&dir);
    let train = |name: &str, extra: &[&str], env: &[(&str, &OsStr)]| {
        let out = dir.join(name);
        let mut args = vec![
            "train",
            "--device",
            "cuda",
            "--steps",
            "2",
            "--eval-every",
            "2",
        ];
        args.extend(["--eval-batches", "1", "--rank-log-every", "1"]);
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        let mut env = env.to_vec();
        env.push(("LOWRANK_EMU_PEAK", OsStr::new("1")));
        (emu.run(&args, "80", "4", &env), out)
    };
    let text = |o: &Output| {
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    };
    // "… 327 MB …" after `after`, in bytes (the banner rounds to the MB).
    let mb = |t: &str, after: &str| -> usize {
        let rest = &t[t
            .find(after)
            .unwrap_or_else(|| panic!("no {after:?} in:\n{t}"))
            + after.len()..];
        let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        assert!(
            rest[n.len()..].starts_with(" MB"),
            "{after:?} not in MB:\n{t}"
        );
        n.parse::<usize>().unwrap() * 1_000_000
    };
    let peak = |t: &str| -> usize {
        let after = "peak device memory ";
        let rest = &t[t.find(after).unwrap_or_else(|| panic!("no peak in:\n{t}")) + after.len()..];
        rest.split(' ').next().unwrap().parse().unwrap()
    };
    // A GPU of 900 MB, whose free memory the banner gives in MB.
    let gpu = 900_000_000usize;
    let roomy = gpu.to_string();
    let roomy = ("LOWRANK_EMU_MEMORY", OsStr::new(&roomy));
    let (mut flash, mut flash_activations) = ((0, 0), 0);
    for (name, extra, attention) in [
        ("flash", &["--batch", "8"][..], "flash"),
        (
            "materialized",
            &["--batch", "16", "--seq", "128"][..],
            "materialized",
        ),
    ] {
        let (o, _) = train(
            name,
            extra,
            &[("LOWRANK_ATTENTION", OsStr::new(attention)), roomy],
        );
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        // What the backend held before the plan was made (cuBLASLt's workspace), and the plan
        // without its margin: at the peak every buffer listed is allocated, attention's scratch
        // (the largest transient) included, and little else. Each figure is rounded to the MB.
        let held = gpu - mb(&t, "of the GPU's ");
        let planned = mb(&t, "memory: about ");
        let listed = planned - mb(&t, "margin ");
        let peak = peak(&t);
        assert!(
            peak.abs_diff(held + listed) <= 3_000_000,
            "{name}: peak {peak} bytes, planned {listed} without the margin, beside {held} \
             held before:\n{t}"
        );
        if name == "flash" {
            flash = (held, planned);
            flash_activations = mb(&t, "activations ");
        }
    }

    // `eval` of the flash run's checkpoint: its model runs forward only, so the GPU holds the
    // weights, one layer's activations and the logits, as its own plan says, and no gradients.
    let ckpt = dir.join("flash");
    let args = ["eval", "--device", "cuda", "--ckpt", ckpt.to_str().unwrap()];
    let args = [&args[..], &["--batch", "8", "--max-batches", "1"]].concat();
    let env = [roomy, ("LOWRANK_EMU_PEAK", OsStr::new("1"))];
    let o = emu.run(&args, "80", "4", &env);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let held = gpu - mb(&t, "of the GPU's ");
    let listed = mb(&t, "memory: about ") - mb(&t, "margin ");
    assert!(
        peak(&t).abs_diff(held + listed) <= 3_000_000,
        "eval: peak {} bytes, planned {listed} without the margin, beside {held} held before:\n{t}",
        peak(&t)
    );
    assert!(
        !t.contains("gradients") && mb(&t, "activations ") < flash_activations,
        "eval plans gradients, or training's {flash_activations} bytes of activations:\n{t}"
    );

    let (held, planned) = flash;
    let limit = (held + planned - 10_000_000).to_string();
    let small = [("LOWRANK_EMU_MEMORY", OsStr::new(&limit))];
    let (refused, out) = train("small", &[], &small);
    let t = text(&refused);
    assert!(!refused.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "tiny at batch 8 × 64 tokens needs about {} MB",
            planned / 1_000_000
        )) && t.contains("Try --batch 4 --accum 2 (")
            && t.contains("the same 8 sequences a step"),
        "{t}"
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());
    let (fits, out) = train("small", &["--batch", "4", "--accum", "2"], &small);
    let t = text(&fits);
    assert!(fits.status.success(), "{t}");
    assert!(out.join("checkpoint-0000002").exists(), "{t}");
}

/// `bench --smoke` on the emulated Hopper: every op family and, for the low-rank layer, every
/// implementation (fused, whose y and dx products take the TMA kernels; the same on the merged
/// weight, for passes with W0; the TMA kernel's ping-pong schedule; the cp.async wgmma ones;
/// mma.sync alone; unfused cuBLASLt) of
/// every shape, pass and variant gets a time, and the JSON that
/// scripts/compare-peer.py reads has them all. Times mean nothing here: this is the bench's code
/// (events, rotation, its loops and report) run before a GPU's minutes are. With `--capture`,
/// one call of each timed op, and only that, lies between the profiler's start and stop.
#[test]
fn bench_smoke_times_every_op_and_low_rank_path_on_the_emulated_hopper() {
    let Some(emu) = Emulator::get() else { return };
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (json, trace) = (
        tmp.join("gpu-emu-bench.json"),
        tmp.join("gpu-emu-bench-launches.txt"),
    );
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&trace);
    let args = [
        "bench",
        "--smoke",
        "--capture",
        "--json",
        json.to_str().unwrap(),
    ];
    let out = emu.run(
        &args,
        "90",
        "4",
        &[("LOWRANK_EMU_TRACE", trace.as_os_str())],
    );
    assert!(
        out.status.success(),
        "bench --smoke failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("bench wrote its JSON"))
            .unwrap();
    assert!(doc["lowrank_error"].is_null(), "{}", doc["lowrank_error"]);
    assert!(doc["epilogue_error"].is_null(), "{}", doc["epilogue_error"]);
    let time = |row: &serde_json::Value| row["median_ms"].as_f64().unwrap();
    // The ops of a part's rows, each timed.
    let ops = |part: &str| -> BTreeSet<String> {
        doc[part]
            .as_array()
            .unwrap()
            .iter()
            .inspect(|r| assert!(time(r) > 0.0, "{r}"))
            .map(|r| r["op"].as_str().unwrap().to_string())
            .collect()
    };
    let basics = ["adamw_f32+bf16copy", "copy_f32", "gemm_cublaslt_bf16"];
    assert_eq!(ops("rows"), basics.map(String::from).into());
    // The GELU and residual epilogues against two passes: dense and low-rank, the GELU's fc
    // forward and projection backward, the residual's projection forward, each timed both ways.
    let want: BTreeSet<String> = [
        "gelu_fc_fwd_dense",
        "gelu_proj_dx_dense",
        "gelu_fc_fwd_lowrank",
        "gelu_proj_bwd_lowrank",
        "residual_proj_fwd_dense",
        "residual_proj_fwd_lowrank",
        "bias_grad_fc_dense",
    ]
    .iter()
    .flat_map(|l| ["fused", "passes"].map(|how| format!("{l}_{how}")))
    .collect();
    assert_eq!(ops("epilogue"), want);
    // 2 layers × 1 row count × 2 ranks × {fwd, bwd} × ({w0+lr, lr} × 5 implementations + merged
    // for w0+lr).
    let lowrank = doc["lowrank"].as_array().unwrap();
    let mut keys = BTreeSet::new();
    for row in lowrank {
        assert!(
            time(row) > 0.0 && row["speedup_vs_unfused"].as_f64().unwrap() > 0.0,
            "{row}"
        );
        keys.insert((
            row["pass"].as_str().unwrap(),
            row["shape"].as_str().unwrap(),
            row["imp"].as_str().unwrap(),
        ));
        // Which kernel tile ran the row's y or dx product: none on cuBLASLt, and for the fused
        // implementations the one their mainloop gives a grid of 2 × 2 wide tiles on 4 SMs.
        // y of the up-projection (64 → 256) and dx of the down-projection (256 → 64) have 256
        // output columns; the other products 64, a grid the narrow tile takes.
        let (pass, shape) = (
            row["pass"].as_str().unwrap(),
            row["shape"].as_str().unwrap(),
        );
        let wide_grid = (pass.starts_with("fwd") && shape.starts_with("200x64>256"))
            || (pass.starts_with("bwd") && shape.starts_with("200x256>64"));
        let tile = row["tile"].as_str();
        let expected = match (row["imp"].as_str().unwrap(), wide_grid) {
            ("cublas", _) => None,
            (_, false) => Some("narrow"),
            ("fused" | "merged", true) => Some("tma128"),
            ("pingpong", true) => Some("pingpong"),
            ("multicast", true) => Some("mc128"),
            ("wgmma", true) => Some("wgmma"),
            ("mma", true) => Some("wide"),
            (other, _) => panic!("unexpected implementation {other}"),
        };
        assert_eq!(tile, expected, "{row}");
    }
    assert_eq!((lowrank.len(), keys.len()), (104, 104), "{lowrank:#?}");
    let imps: BTreeSet<_> = keys.iter().map(|k| k.2).collect();
    assert_eq!(
        imps,
        BTreeSet::from([
            "cublas",
            "fused",
            "merged",
            "mma",
            "multicast",
            "pingpong",
            "wgmma"
        ])
    );
    let launched = std::fs::read_to_string(&trace).expect("the fake driver wrote its launches");
    for kernel in [
        "lowrank_y_tma128_bf16",
        "lowrank_dx_tma128_bf16",
        "lowrank_y_pingpong_bf16",
        "lowrank_dx_pingpong_bf16",
        "lowrank_y_mc128_bf16",
        "lowrank_dx_mc128_bf16",
        "lowrank_y_wgmma_bf16",
        "lowrank_dx_wgmma_bf16",
    ] {
        assert!(launched.lines().any(|l| l == kernel), "{kernel} never ran");
    }
    // The capture windows (the fake driver traces cuProfilerStart and Stop among the launches),
    // in the order of the ops' names on stdout. cuBLASLt's GEMMs are no launches of the fake
    // driver: their windows hold only the kernels of ours around them.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let captured: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("capture: "))
        .collect();
    let (mut windows, mut open) = (Vec::new(), None::<Vec<&str>>);
    for line in launched.lines() {
        match line {
            "cuProfilerStart" => assert!(open.replace(Vec::new()).is_none(), "nested start"),
            "cuProfilerStop" => windows.push(open.take().expect("a stop without a start")),
            kernel => open.iter_mut().for_each(|w| w.push(kernel)),
        }
    }
    assert!(open.is_none(), "a capture left open");
    // Every timed op once, under its own name: 3 basic ops, attention's 2 shapes × 2
    // implementations × 2 passes, the epilogues' 7 pairs, the 104 low-rank rows and each layer's
    // 3 dense times.
    assert_eq!(captured.len(), windows.len());
    let names: BTreeSet<_> = captured.iter().collect();
    assert_eq!((captured.len(), names.len()), (135, 135), "{captured:#?}");
    let window = |name: &str| {
        let at = captured.iter().position(|c| *c == name);
        &windows[at.unwrap_or_else(|| panic!("{name} not captured: {captured:#?}"))]
    };
    assert_eq!(window("copy_f32"), &["cast_f32_f32"]);
    // One call of the layer, not the timed reps: its wide product launches once.
    for (name, kernel) in [
        ("fused fwd w0+lr 200x64>256 r8", "lowrank_y_tma128_bf16"),
        ("fused bwd lr 200x256>64 r12", "lowrank_dx_tma128_bf16"),
        ("mma fwd lr 200x64>256 r12", "lowrank_y_wide_bf16"),
        (
            "pingpong bwd w0+lr 200x256>64 r8",
            "lowrank_dx_pingpong_bf16",
        ),
        ("multicast fwd lr 200x64>256 r12", "lowrank_y_mc128_bf16"),
    ] {
        let w = window(name);
        assert_eq!(
            w.iter().filter(|k| **k == kernel).count(),
            1,
            "{name}: {w:?}"
        );
    }
}

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

/// The training losses of every step, then the last validation loss, from a run's metrics.jsonl.
fn read_losses(path: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(path).expect("the run wrote its metrics");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("metrics lines are JSON"))
        .collect();
    let mut losses: Vec<f64> = lines
        .iter()
        .filter_map(|v| v["train_loss"].as_f64())
        .collect();
    losses.extend(lines.iter().rev().find_map(|v| v["val_loss"].as_f64()));
    losses
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
