#!/usr/bin/env python3
"""Joins `lowrank bench --json` and `scripts/peer-bench.py --json` of the same GPU run on the low-rank
layer's shapes and checks issue 5's targets row by row:
  - base + low-rank (w0+lr) at r <= d/8 (d = min(n_in, n_out)), forward and backward:
    at most 1.10x the FLOP budget (dense cuBLAS time scaled by the FLOP share), and at least
    1.3x faster than the unfused cuBLASLt path and than PyTorch;
  - pure low-rank (lr) at r = 256 on 1024<->4096: at least 1.7x faster than dense full rank.
Writes a markdown table (--md) and prints how many rows meet each target. Standard library only."""
import argparse, json, re, sys

SHAPE = re.compile(r"(\d+)x(\d+)>(\d+) r(\d+)")


def load(path, key="lowrank"):
    with open(path) as f:
        return json.load(f).get(key, [])


def targets(row, torch_ms):
    """(name, value, wanted, met) for each target that applies to this row."""
    n, n_in, n_out, r = map(int, SHAPE.fullmatch(row["shape"]).groups())
    base = row["pass"].endswith("w0+lr")
    out = []
    if base and r <= min(n_in, n_out) // 8:
        out.append(("flop budget", row["vs_flop_budget"], "<= 1.10", row["vs_flop_budget"] <= 1.10))
        out.append(("x unfused", row["speedup_vs_unfused"], ">= 1.30", row["speedup_vs_unfused"] >= 1.30))
        if torch_ms is not None:
            x = torch_ms / row["median_ms"]
            out.append(("x torch", x, ">= 1.30", x >= 1.30))
    if not base and r == 256 and {n_in, n_out} == {1024, 4096}:
        out.append(("x dense", row["speedup_vs_dense"], ">= 1.70", row["speedup_vs_dense"] >= 1.70))
    return out


def compare(ours, peer, impl):
    torch = {(p["pass_"], p["shape"]): p["median_ms"] for p in peer}
    table, tally = [], {}
    for row in ours:
        if row["imp"] != impl:
            continue
        t = torch.get((row["pass"], row["shape"]))
        checks = targets(row, t)
        for name, _, _, met in checks:
            good, total = tally.get(name, (0, 0))
            tally[name] = (good + met, total + 1)
        table.append((row, t, checks))
    return table, tally


def markdown(table, impl):
    lines = [f"| pass | shape | {impl} ms | torch ms | x torch | x unfused | x dense | budget | targets |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for row, t, checks in table:
        xt = f"{t / row['median_ms']:.2f}" if t else "-"
        budget = f"{row['vs_flop_budget']:.2f}" if row.get("vs_flop_budget") is not None else "-"
        marks = ", ".join(f"{name} {'met' if met else 'MISSED'}" for name, _, _, met in checks) or "-"
        lines.append(f"| {row['pass']} | {row['shape']} | {row['median_ms']:.4f} | {t:.4f} | {xt} | "
                     f"{row['speedup_vs_unfused']:.2f} | {row['speedup_vs_dense']:.2f} | {budget} | {marks} |"
                     if t else
                     f"| {row['pass']} | {row['shape']} | {row['median_ms']:.4f} | - | - | "
                     f"{row['speedup_vs_unfused']:.2f} | {row['speedup_vs_dense']:.2f} | {budget} | {marks} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_json")
    ap.add_argument("peer_json", nargs="?")
    ap.add_argument("--impl", default="fused", help="which of our rows to judge: fused, merged, pingpong, multicast, wgmma, mma or cublas")
    ap.add_argument("--md", help="write the joined table here")
    a = ap.parse_args()
    ours = load(a.bench_json)
    if not ours:
        sys.exit(f"error: {a.bench_json} has no low-rank rows (run `lowrank bench --json FILE`)")
    peer = load(a.peer_json) if a.peer_json else []
    table, tally = compare(ours, peer, a.impl)
    if not table:
        sys.exit(f"error: no rows of implementation {a.impl!r} in {a.bench_json}")
    if a.md:
        with open(a.md, "w") as f:
            f.write(markdown(table, a.impl))
    print(f"issue 5 targets, {a.impl} rows ({len(table)} rows; {'with' if peer else 'without'} the PyTorch peer):")
    for name, (good, total) in sorted(tally.items()):
        print(f"  {name:<12} met in {good} of {total}")


if __name__ == "__main__":
    main()
