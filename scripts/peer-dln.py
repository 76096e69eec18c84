#!/usr/bin/env python3
"""The deep-linear-network factorisation setup of SCIENCE.md §4 in JAX (float64, CPU), as the
authors' reference code runs it: jax.grad of the loss, a jitted loop of 100 gradient-descent steps,
the loss checked after every chunk. Times the original and the compressed network on this machine,
so `lowrank dln factorization` is compared with JAX side by side rather than with numbers taken on
another computer.

Two timings per network:
  - to tolerance on this script's own target (numpy's RNG: not the same matrix as ours, so the
    iteration counts differ a little);
  - for exactly the iteration count our run needed (read from its summary.json with --ours), the
    like-for-like wall-clock comparison.

Usage (quiet machine; JAX uses every core, as our original network's two threads do):
    python scripts/peer-dln.py --ours results/dln/factorization-quiet/summary.json \
        --json results/dln/peer-jax.json
Needs jax (pip install "jax[cpu]").
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError:
    sys.exit('peer-dln.py needs JAX: pip install "jax[cpu]"')

jax.config.update("jax_enable_x64", True)
CHUNK = 100


def spread_target(d, r, rng):
    """Φ = Σ_k σ_{i_k} u_{i_k} v_{i_k}ᵀ of a Gaussian matrix's SVD at i_k = ⌊k·d/(2r)⌋."""
    u, s, vt = np.linalg.svd(rng.standard_normal((d, d)))
    picks = [k * d // (2 * r) for k in range(r)]
    return (u[:, picks] * s[picks]) @ vt[picks, :]


def haar(n, rng):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def original_init(d, depth, eps, rng):
    return [eps * haar(d, rng) for _ in range(depth)]


def compressed_init(phi, r, depth, eps):
    """W̃_1 = ε·V̂ᵀ, middle ε·I, W̃_L = ε·Û from the target's top-2r singular vectors."""
    width = 2 * r
    u, _, vt = np.linalg.svd(phi)
    mids = [eps * np.eye(width) for _ in range(depth - 2)]
    return [eps * vt[:width, :]] + mids + [eps * u[:, :width]]


def loss(ws, phi):
    w = ws[0]
    for layer in ws[1:]:
        w = layer @ w
    return 0.5 * jnp.mean((w - phi) ** 2)


def make_chunk(phi, lr):
    grad = jax.grad(loss)

    def body(_, ws):
        g = grad(ws, phi)
        return [w - lr * gw for w, gw in zip(ws, g)]

    @jax.jit
    def chunk(ws):
        ws = jax.lax.fori_loop(0, CHUNK, body, ws)
        return ws, loss(ws, phi)

    return chunk


def run(name, ws, phi, lr, tol, max_iters, fixed_iters):
    chunk = make_chunk(jnp.asarray(phi), lr)
    ws = [jnp.asarray(w) for w in ws]
    jax.block_until_ready(chunk(ws))  # compile outside the timing
    out = {"network": name, "width": int(ws[0].shape[0]),
           "parameters": int(sum(w.size for w in ws))}
    # To tolerance, checked every CHUNK iterations (as the reference code does).
    t0, it, cur = time.perf_counter(), 0, ws
    while it < max_iters:
        cur, l = chunk(cur)
        it += CHUNK
        if float(l) < tol:
            break
    out["seconds_to_tol"] = time.perf_counter() - t0
    out["iters_to_tol"] = it if float(l) < tol else None
    out["final_loss"] = float(l)
    if fixed_iters:
        n = -(-fixed_iters // CHUNK)
        t0, cur = time.perf_counter(), ws
        for _ in range(n):
            cur, l = chunk(cur)
        jax.block_until_ready(l)
        out["fixed_iters"] = n * CHUNK
        out["seconds_fixed_iters"] = time.perf_counter() - t0
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--eps", type=float, default=1e-2)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--max-iters", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ours", help="our summary.json: also time JAX for its iteration counts")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    ours = json.load(open(a.ours)) if a.ours else None
    rng = np.random.default_rng(a.seed)
    phi = spread_target(a.d, a.rank, rng)
    results = {
        "jax": jax.__version__, "devices": [str(x) for x in jax.devices()],
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_before": open("/proc/loadavg").read().split()[:3],
        "config": vars(a), "networks": [],
    }
    for name, ws in [("original", original_init(a.d, a.depth, a.eps, rng)),
                     ("compressed", compressed_init(phi, a.rank, a.depth, a.eps))]:
        fixed = ours[name]["iters_to_tol"] if ours else None
        r = run(name, ws, phi, a.lr, a.tol, a.max_iters, fixed)
        if ours:
            r["ours_seconds_to_tol"] = ours[name]["seconds_to_tol"]
            r["ours_iters_to_tol"] = ours[name]["iters_to_tol"]
            r["jax_over_ours_same_iters"] = r["seconds_fixed_iters"] / ours[name]["seconds_to_tol"]
        print(json.dumps(r), flush=True)
        results["networks"].append(r)
    results["load_after"] = open("/proc/loadavg").read().split()[:3]
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
