//! Training on the emulated GPU against the same run on the CPU backend in the GPU's precision.

use crate::emulator::Emulator;
use std::path::Path;

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
