//! The memory plan against what a run allocates on the emulated GPU at its peak.

use crate::emulator::Emulator;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

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
