#!/usr/bin/env python3
"""Compares two training runs of the same settings (their metrics.jsonl) by their validation losses,
taken on the same held-out batches at the same steps. gpu-run.sh uses it to hold a CUDA run against
the same run on `--device cpu-bf16`, the CPU in the GPU's precision: the two differ only by
summation order and rounding, so their validation losses agree to a fraction of a per cent, and a
wrong kernel shows as a curve that leaves the other. Single training batches are no criterion: an
outlier batch (gradient norm 100x the usual, as at step 19 of the default run) turns rounding-level
differences between the weights into a loss spike in one run and not the other. Exits 1 when the
largest relative validation-loss difference exceeds --tol. Standard library only."""
import argparse, json, os, sys


def records(run):
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.isfile(path):
        sys.exit(f"{path} does not exist: did that run start?")
    with open(path) as f:
        return {r["step"]: r for r in map(json.loads, f) if r.get("step") is not None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--tol", type=float, default=0.02, help="largest relative validation-loss difference allowed")
    args = ap.parse_args()
    a, b = records(args.run_a), records(args.run_b)
    steps = sorted(set(a) & set(b))
    if not steps:
        sys.exit(f"no common steps: {len(a)} records in {args.run_a}, {len(b)} in {args.run_b}")
    rel = lambda x, y: abs(x - y) / max(abs(y), 1e-12)
    train = sorted(rel(a[s]["train_loss"], b[s]["train_loss"]) for s in steps)
    worst = 0.0
    print(f"{'step':>5} {'val A':>10} {'val B':>10} {'rel diff':>9}")
    for s in steps:
        x, y = a[s].get("val_loss"), b[s].get("val_loss")
        if x is None or y is None:
            continue
        worst = max(worst, rel(x, y))
        print(f"{s:>5} {x:>10.4f} {y:>10.4f} {rel(x, y):>9.2%}")
    if worst == 0.0 and not any(a[s].get("val_loss") is not None for s in steps):
        sys.exit("the runs share no evaluation step: give them the same --eval-every")
    print(f"training loss over {len(steps)} common steps: median relative difference "
          f"{train[len(train) // 2]:.2%}, largest {train[-1]:.2%} (information only)")
    verdict = "within" if worst <= args.tol else "OUTSIDE"
    print(f"largest relative validation-loss difference {worst:.2%}: {verdict} {args.tol:.1%}")
    sys.exit(0 if worst <= args.tol else 1)

if __name__ == "__main__":
    main()
