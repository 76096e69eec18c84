//! `lowrank bench` on the emulated Hopper: the bench's own code before a GPU run depends on it.

use crate::emulator::Emulator;
use std::collections::BTreeSet;
use std::path::Path;

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
