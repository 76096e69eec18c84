#!/usr/bin/env python3
"""The peer's numbers on the shapes `lowrank bench` times: PyTorch bf16 matmul and fused AdamW,
timed with CUDA events (warm-up, median, inputs rotated past L2), printed in the same table format."""
import argparse, json, statistics
import torch

ROTATE_BYTES = 100 << 20


def median_ms(fn, reps):
    for i in range(5):
        fn(i)
    times = []
    for i in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for m, n, k in [(4096, 4096, 4096), (8192, 4096, 1024), (8192, 1024, 4096), (8192, 8192, 8192)]:
        sets = max(1, min(16, -(-ROTATE_BYTES // ((m * k + k * n) * 2))))
        a = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(sets)]
        b = [torch.randn(k, n, device="cuda", dtype=torch.bfloat16) for _ in range(sets)]
        ms = median_ms(lambda i: torch.matmul(a[i % sets], b[i % sets]), args.reps)
        tf = 2 * m * n * k / (ms * 1e-3) / 1e12
        rows.append(dict(op="torch_matmul_bf16", shape=f"{m}x{n}x{k}", median_ms=ms, achieved=tf, unit="TF/s", frac_of_peak=tf / 790))
    n = 124_475_904
    p = torch.nn.Parameter(torch.randn(n, device="cuda"))
    p.grad = torch.randn(n, device="cuda")
    opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    ms = median_ms(lambda i: opt.step(), args.reps)
    # fp32 params, grads, m, v: reads 16 B, writes 12 B per parameter (no bf16 copy in PyTorch's step).
    tb = 28 * n / (ms * 1e-3) / 1e12
    rows.append(dict(op="torch_adamw_fused", shape=str(n), median_ms=ms, achieved=tb, unit="TB/s", frac_of_peak=tb / 3.0))
    print(f"{'op':<22} {'shape':<18} {'median ms':>10} {'achieved':>12} {'of peak':>9}")
    for r in rows:
        print(f"{r['op']:<22} {r['shape']:<18} {r['median_ms']:>10.4f} {r['achieved']:>7.1f} {r['unit']:<4} {100 * r['frac_of_peak']:>8.1f}%")
    if args.json:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), open(args.json, "w"), indent=2)


if __name__ == "__main__":
    main()
