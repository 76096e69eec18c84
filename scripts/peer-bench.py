#!/usr/bin/env python3
"""The peer's numbers on the shapes `lowrank bench` times: PyTorch bf16 matmul, fused AdamW and the
low-rank linear layer (x@W0 + (x@U)@V.T + b and its backward), timed with CUDA events (warm-up,
median, inputs rotated past L2), printed in the same table formats."""
import argparse, json, statistics
import torch

# Inputs rotate through at least twice the device's L2, as in `lowrank bench`.
L2_FALLBACK_BYTES = 64 << 20


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


# The low-rank shapes of `lowrank bench lowrank-linear` (src/cli/bench/lowrank.rs).
LOWRANK_LAYERS = [(1024, 4096), (4096, 1024), (768, 3072), (3072, 768)]
LOWRANK_ROWS = [1024, 4096, 16384]
LOWRANK_RANKS = [16, 64, 128, 256, 512]


def rotation(nbytes):
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or L2_FALLBACK_BYTES
    return max(1, min(16, -(-2 * l2 // nbytes)))


def bench_lowrank(reps):
    """The layer as PyTorch users write it, U (n_in × r) and V (n_out × r) bf16. The backward is the
    explicit matmuls autograd would run (s = dy@V computed once and reused), gradients accumulated in
    bf16 with addmm_ (PyTorch has no bf16 × bf16 → f32 accumulate into an existing tensor)."""
    rows = []
    bf = dict(device="cuda", dtype=torch.bfloat16)
    for n_in, n_out in LOWRANK_LAYERS:
        for n in LOWRANK_ROWS:
            sets = rotation(2 * n * (n_in + n_out))
            xs = [torch.randn(n, n_in, **bf) for _ in range(sets)]
            dys = [torch.randn(n, n_out, **bf) for _ in range(sets)]
            w0, b = torch.randn(n_in, n_out, **bf), torch.randn(n_out, **bf)
            dw0 = torch.zeros(n_in, n_out, **bf)
            dense_fwd = median_ms(lambda i: xs[i % sets] @ w0, reps)
            dense_bwd = median_ms(lambda i: dys[i % sets] @ w0.T, reps)
            dense_full = median_ms(lambda i: (dys[i % sets] @ w0.T, dw0.addmm_(xs[i % sets].T, dys[i % sets])), reps)
            for r in LOWRANK_RANKS:
                u, v = torch.randn(n_in, r, **bf), torch.randn(n_out, r, **bf)
                du, dv, db = torch.zeros_like(u), torch.zeros_like(v), torch.zeros_like(b)
                t = xs[0] @ u
                for base in (True, False):
                    def fwd(i):
                        x = xs[i % sets]
                        low = (x @ u) @ v.T + b
                        return x @ w0 + low if base else low

                    def bwd(i):
                        x, dy = xs[i % sets], dys[i % sets]
                        s = dy @ v
                        dx = dy @ w0.T + s @ u.T if base else s @ u.T
                        du.addmm_(x.T, s)
                        dv.addmm_(dy.T, t)
                        db.add_(dy.sum(0))
                        return dx

                    lr_flops = 2 * n * r * (n_in + n_out)
                    w0_flops = 2 * n * n_in * n_out if base else 0
                    for name, fn, flops, dense in (
                        ("fwd", fwd, lr_flops + w0_flops, dense_fwd),
                        ("bwd", bwd, 2 * lr_flops + w0_flops, dense_bwd if base else dense_full),
                    ):
                        ms = median_ms(fn, reps)
                        tf = flops / (ms * 1e-3) / 1e12
                        rows.append(dict(pass_=f"{name} {'w0+lr' if base else 'lr'}", shape=f"{n}x{n_in}>{n_out} r{r}", imp="torch",
                                         median_ms=ms, tflops=tf, frac_of_peak=tf / 790, speedup_vs_dense=dense / ms))
    return rows


def print_lowrank(rows):
    print(f"{'pass':<12} {'shape':<22} {'impl':<7} {'median ms':>9} {'TF/s':>8} {'of peak':>7} {'x dense':>8}")
    for r in rows:
        print(f"{r['pass_']:<12} {r['shape']:<22} {r['imp']:<7} {r['median_ms']:>9.4f} {r['tflops']:>8.1f} {100 * r['frac_of_peak']:>6.1f}% {r['speedup_vs_dense']:>8.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--json")
    ap.add_argument("--only", choices=["all", "basic", "lowrank"], default="all")
    args = ap.parse_args()
    lowrank_rows = bench_lowrank(args.reps) if args.only in ("all", "lowrank") else []
    if args.only == "lowrank":
        print_lowrank(lowrank_rows)
        if args.json:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, lowrank=lowrank_rows), open(args.json, "w"), indent=2)
        return
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
    if lowrank_rows:
        print()
        print_lowrank(lowrank_rows)
    if args.json:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows, lowrank=lowrank_rows), open(args.json, "w"), indent=2)


if __name__ == "__main__":
    main()
