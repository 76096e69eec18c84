#!/usr/bin/env python3
"""The peer's numbers on the shapes `lowrank bench` times: PyTorch bf16 matmul, fused AdamW, causal
scaled_dot_product_attention and the low-rank linear layer (x@W0 + (x@U)@V.T + b and its backward), timed with CUDA events (warm-up,
median, inputs rotated past L2), printed in the same table formats.

`--device cpu --smoke` runs every code path on tiny shapes without a GPU (timed by the wall clock):
the script otherwise first runs on the GPU machine, where a mistake costs the run its peer numbers."""
import argparse, json, statistics, time
import torch

# Inputs rotate through at least twice the device's L2, as in `lowrank bench`.
L2_FALLBACK_BYTES = 64 << 20


def median_ms(fn, reps, device):
    for i in range(5):
        fn(i)
    times = []
    for i in range(reps):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# The low-rank shapes of `lowrank bench lowrank-linear` (src/cli/bench/lowrank.rs).
LOWRANK_LAYERS = [(1024, 4096), (4096, 1024), (768, 3072), (3072, 768)]
LOWRANK_ROWS = [1024, 4096, 16384]
LOWRANK_RANKS = [16, 64, 128, 256, 512]
# `lowrank bench`'s basic ops: bf16 GEMMs (m, n, k) and AdamW over GPT-2 small's parameter count.
MATMUL_SHAPES = [(4096, 4096, 4096), (8192, 4096, 1024), (8192, 1024, 4096), (8192, 8192, 8192)]
ADAMW_PARAMS = 124_475_904
# `lowrank bench attention` (src/cli/bench/attention.rs): (batch, seq, channels, heads).
ATTENTION_SHAPES = [(8, 1024, 768, 12), (8, 1024, 1024, 16)]


def use_smoke_shapes():
    """`--smoke`: the tiny shapes of `lowrank bench --smoke` (src/cli/bench), so the dry run's two
    JSON files join in scripts/compare-peer.py as a GPU run's do."""
    global LOWRANK_LAYERS, LOWRANK_ROWS, LOWRANK_RANKS, MATMUL_SHAPES, ADAMW_PARAMS, ATTENTION_SHAPES
    LOWRANK_LAYERS, LOWRANK_ROWS, LOWRANK_RANKS = [(64, 256), (256, 64)], [200], [8, 12]
    MATMUL_SHAPES, ADAMW_PARAMS = [(64, 32, 48)], 4096
    ATTENTION_SHAPES = [(2, 100, 128, 2), (1, 70, 96, 3)]


def bench_attention(reps, device):
    """Causal attention as PyTorch users run it: scaled_dot_product_attention(is_causal=True) on q, k, v
    viewed out of one (B, T, 3C) tensor (its flash or memory-efficient kernel on the GPU), and its
    backward through autograd. TF/s count the causal half, as `lowrank bench attention` does."""
    rows = []
    F = torch.nn.functional
    for b, t, c, nh in ATTENTION_SHAPES:
        sets = rotation(b * t * 3 * c * 2, device)
        qkv = [torch.randn(b, t, 3 * c, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(sets)]

        def heads(x):
            q, k, v = x.view(b, t, 3, nh, c // nh).unbind(2)
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        def fwd(i):
            with torch.no_grad():
                F.scaled_dot_product_attention(*heads(qkv[i % sets]), is_causal=True)

        outs = [F.scaled_dot_product_attention(*heads(x), is_causal=True) for x in qkv]
        dout = torch.randn_like(outs[0])
        bwd = lambda i: torch.autograd.grad(outs[i % sets], qkv[i % sets], dout, retain_graph=True)
        flops = 2 * b * t * t * c
        for name, fn, f in (("fwd", fwd, flops), ("bwd", bwd, 2.5 * flops)):
            ms = median_ms(fn, reps, device)
            tf = f / (ms * 1e-3) / 1e12
            rows.append(dict(op=f"torch_sdpa_{name}", shape=f"B{b} T{t} C{c} h{nh}", median_ms=ms, achieved=tf, unit="TF/s", frac_of_peak=tf / 790))
    return rows


def rotation(nbytes, device):
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) if device == "cuda" else 0
    return max(1, min(16, -(-2 * (l2 or L2_FALLBACK_BYTES) // nbytes)))


def lowrank_groups():
    """(n_in, n_out, rows, ranks): every layer at every row count with every rank, in the order of
    `lowrank bench lowrank-linear`."""
    return [(n_in, n_out, n, LOWRANK_RANKS) for n_in, n_out in LOWRANK_LAYERS for n in LOWRANK_ROWS]


def layer_shape(text):
    """`--shape ROWS,N_IN,N_OUT,RANK`, as `lowrank bench lowrank-linear --shape` reads it."""
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a layer: write ROWS,N_IN,N_OUT,RANK with positive whole numbers, e.g. 8192,768,3072,96")
    n, n_in, n_out, r = map(int, parts)
    if r > min(n_in, n_out):
        raise argparse.ArgumentTypeError(f"rank {r} in {text!r} exceeds min(N_IN, N_OUT) = {min(n_in, n_out)}")
    return (n_in, n_out, n, [r])


def bench_lowrank(reps, device, groups):
    """The layer as PyTorch users write it, U (n_in × r) and V (n_out × r) bf16. The backward is the
    explicit matmuls autograd would run (s = dy@V computed once and reused), gradients accumulated in
    bf16 with addmm_ (PyTorch has no bf16 × bf16 → f32 accumulate into an existing tensor)."""
    rows = []
    bf = dict(device=device, dtype=torch.bfloat16)
    for n_in, n_out, n, ranks in groups:
        sets = rotation(2 * n * (n_in + n_out), device)
        xs = [torch.randn(n, n_in, **bf) for _ in range(sets)]
        dys = [torch.randn(n, n_out, **bf) for _ in range(sets)]
        w0, b = torch.randn(n_in, n_out, **bf), torch.randn(n_out, **bf)
        dw0 = torch.zeros(n_in, n_out, **bf)
        dense_fwd = median_ms(lambda i: xs[i % sets] @ w0, reps, device)
        dense_bwd = median_ms(lambda i: dys[i % sets] @ w0.T, reps, device)
        dense_full = median_ms(lambda i: (dys[i % sets] @ w0.T, dw0.addmm_(xs[i % sets].T, dys[i % sets])), reps, device)
        for r in ranks:
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
                    ms = median_ms(fn, reps, device)
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
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a dry run of the script, not a peer number")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, to check the script without a GPU")
    ap.add_argument("--shape", action="append", type=layer_shape, metavar="ROWS,N_IN,N_OUT,RANK",
                    help="time this low-rank layer (repeatable) instead of the GPT-2 grid, and nothing else: the peer of `lowrank bench lowrank-linear --shape`")
    args = ap.parse_args()
    if args.smoke and args.shape:
        ap.error("--shape and --smoke both choose the shapes: give one")
    if args.smoke:
        use_smoke_shapes()
    if args.shape:
        args.only = "lowrank"
    device, reps = args.device, args.reps
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    groups = args.shape or lowrank_groups()
    lowrank_rows = bench_lowrank(reps, device, groups) if args.only in ("all", "lowrank") else []
    rows = []
    if args.only in ("all", "basic"):
        for m, n, k in MATMUL_SHAPES:
            sets = rotation((m * k + k * n) * 2, device)
            a = [torch.randn(m, k, device=device, dtype=torch.bfloat16) for _ in range(sets)]
            b = [torch.randn(k, n, device=device, dtype=torch.bfloat16) for _ in range(sets)]
            ms = median_ms(lambda i: torch.matmul(a[i % sets], b[i % sets]), reps, device)
            tf = 2 * m * n * k / (ms * 1e-3) / 1e12
            rows.append(dict(op="torch_matmul_bf16", shape=f"{m}x{n}x{k}", median_ms=ms, achieved=tf, unit="TF/s", frac_of_peak=tf / 790))
        n = ADAMW_PARAMS
        p = torch.nn.Parameter(torch.randn(n, device=device))
        p.grad = torch.randn(n, device=device)
        opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=device == "cuda")
        ms = median_ms(lambda i: opt.step(), reps, device)
        # fp32 params, grads, m, v: reads 16 B, writes 12 B per parameter (no bf16 copy in PyTorch's step).
        tb = 28 * n / (ms * 1e-3) / 1e12
        rows.append(dict(op="torch_adamw_fused", shape=str(n), median_ms=ms, achieved=tb, unit="TB/s", frac_of_peak=tb / 3.0))
        rows += bench_attention(reps, device)
        print(f"{'op':<22} {'shape':<20} {'median ms':>10} {'achieved':>12} {'of peak':>9}")
        for r in rows:
            print(f"{r['op']:<22} {r['shape']:<20} {r['median_ms']:>10.4f} {r['achieved']:>7.1f} {r['unit']:<4} {100 * r['frac_of_peak']:>8.1f}%")
    if lowrank_rows:
        if rows:
            print()
        print_lowrank(lowrank_rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device_name, torch=torch.__version__, rows=rows, lowrank=lowrank_rows), f, indent=2)


if __name__ == "__main__":
    main()
