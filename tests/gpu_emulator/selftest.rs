//! The selftest on the emulated GPU: every kernel launched, every case passing, on each mainloop.

use crate::emulator::Emulator;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The selftest's cases of the fused layer's y and dx products (with the GELU and residual
/// epilogues): those whose kernels change with the mainloop.
const PRODUCTS: &str = "lowrank_y,lowrank_dx,lowrank_geluy,lowrank_residualy";

#[test]
fn selftest_passes_on_the_emulated_gpu_and_launches_every_kernel() {
    let Some(emu) = Emulator::get() else { return };
    // The kernels each case says it launched (the selftest's JSON, which scripts/kernel-status.py
    // reads after a GPU run), against what the fake driver saw launched.
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
    // The runs on a worker per core, at least two (one run alone leaves a core idle while its
    // host part, the CPU reference and the inputs, runs). Each traces its launches to a file of its own. After
    // a failure no worker starts another run.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, runs.len()));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let run = next.fetch_add(1, Ordering::Relaxed);
                let Some((arch, sms, filter, skip, settings)) = runs.get(run) else { break };
                let json = emu.dir.join(format!("selftest-{run}.json"));
                let trace = emu.dir.join(format!("launches-{run}.txt"));
                let _ = std::fs::remove_file(&trace);
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
                let passed = out.status.success()
                    && stdout.contains("Emulated GPU")
                    && stdout.contains(" 0 failed");
                failed.fetch_or(!passed, Ordering::Relaxed);
                assert!(
                    passed,
                    "selftest on the emulated sm_{arch} ({sms} SMs, {settings:?}) failed:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let doc: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
                let reported: Vec<String> = (doc["cases"].as_array().unwrap().iter())
                    .flat_map(|case| case["kernels"].as_array().into_iter().flatten())
                    .map(|k| k.as_str().unwrap().to_string())
                    .collect();
                let launched = std::fs::read_to_string(&trace)
                    .unwrap_or_else(|e| panic!("run {run}: no launches traced: {e}"));
                let launched: Vec<String> = launched.lines().map(str::to_string).collect();
                results.lock().unwrap().push((reported, launched));
            });
        }
    });
    let (mut reported, mut launched) = (BTreeSet::new(), BTreeSet::new());
    for (r, l) in results.into_inner().unwrap() {
        reported.extend(r);
        launched.extend(l);
    }
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
