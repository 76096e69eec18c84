#!/usr/bin/env bash
# The default run's learning-rate schedule: `lowrank train` (the tiny model on the built-in corpus,
# 100 steps at lr 3e-3) with the former default warm-up of 10 steps against longer ones, at three
# seeds; then 300 steps at one seed. Writes runs/ (metrics only) and table.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bin=${LOWRANK:-../../target/release/lowrank}
mkdir -p runs
run() {
  local out=runs/$1; shift
  [[ -f $out/metrics.jsonl && $(wc -l < "$out/metrics.jsonl") -gt 0 ]] && return
  rm -rf "$out"
  "$bin" train "$@" --checkpoint-every 0 --out "$out" > "$out.log" 2>&1
}
for seed in 1337 7 42; do
  run "s100-w10-lr3e-3-seed$seed" --steps 100 --warmup 10 --lr 3e-3 --seed $seed
  run "s100-w30-lr3e-3-seed$seed" --steps 100 --warmup 30 --lr 3e-3 --seed $seed
  run "s100-w50-lr5e-3-seed$seed" --steps 100 --warmup 50 --lr 5e-3 --seed $seed
done
for w in 10 30 90 150; do
  run "s300-w$w-lr3e-3-seed1337" --steps 300 --warmup $w --lr 3e-3 --eval-every 100
done
python3 - <<'PY' | tee table.md
import json, glob, os, re, statistics
rows = {}
for d in sorted(glob.glob("runs/*/")):
    m = re.match(r"runs/s(\d+)-w(\d+)-lr([\de.-]+)-seed(\d+)/", d)
    recs = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    last = [r for r in recs if "val_loss" in r][-1]
    key = (int(m.group(1)), int(m.group(2)), m.group(3))
    rows.setdefault(key, []).append((int(m.group(4)), last["val_loss"], max(r["grad_norm"] for r in recs),
                                     [r["step"] for r in recs if r["grad_norm"] > 5]))
print("| steps | warm-up | peak lr | seed: final validation loss | mean | max gradient norm | steps with norm > 5 |")
print("|---|---|---|---|---|---|---|")
for (steps, w, lr), rs in sorted(rows.items()):
    rs.sort()
    vals = ", ".join(f"{s}: {v:.3f}" for s, v, _, _ in rs)
    spikes = "; ".join(f"{s}: {','.join(map(str, k)) or '-'}" for s, _, _, k in rs)
    print(f"| {steps} | {w} | {lr} | {vals} | {statistics.fmean(v for _, v, _, _ in rs):.3f} | "
          f"{max(g for _, _, g, _ in rs):.1f} | {spikes} |")
PY
