#!/usr/bin/env bash
# CPU training-step throughput, ours against PyTorch's, measured side by side in one run: the same
# GPT-2 shapes (tiny and gpt2 at T=64), batch, step (forward, backward, AdamW) and thread count.
# Writes benches/results/cpu-train-<date>.{jsonl,md}. PyTorch must be importable (pip install torch).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
batch="${BATCH:-4}"; seq="${SEQ:-64}"; steps="${STEPS:-5}"; threads="${THREADS:-$(nproc)}"
date=$(date -u +%Y-%m-%d)
out="benches/results/cpu-train-$date"
mkdir -p benches/results
cargo build --release --quiet
export RAYON_NUM_THREADS="$threads"
{
  ./target/release/lowrank bench-train --model tiny --model gpt2 --batch "$batch" --seq "$seq" --steps "$steps"
  python3 scripts/peer-train.py --config tiny:4:4:128 --config gpt2:12:12:768 --batch "$batch" --seq "$seq" --steps "$steps" --threads "$threads" 2>/dev/null
} | tee "$out.jsonl"
python3 - "$out.jsonl" "$out.md" <<'PY'
import json, sys, platform, subprocess, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = {r["model"]: r for r in rows if r["peer"] == "lowrank"}
peer = {r["model"]: r for r in rows if r["peer"] == "pytorch"}
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
load = open("/proc/loadavg").read().split()[:3]
with open(sys.argv[2], "w") as f:
    f.write(f"# CPU training throughput: lowrank vs PyTorch\n\n")
    f.write(f"Date {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; CPU: {cpu}; {rows[0]['threads']} threads; load average at the end {' '.join(load)}.\n")
    f.write(f"Command: `bash scripts/cpu-train-bench.sh` (BATCH={rows[0]['batch']} SEQ={rows[0]['seq']}); one step = forward, backward, AdamW; median of timed steps after two warm-up steps.\n\n")
    f.write("| model | params | lowrank tok/s | PyTorch tok/s | ratio (ours / PyTorch) |\n|---|---|---|---|---|\n")
    for m in ours:
        o, p = ours[m], peer.get(m)
        ratio = f"{o['tok_per_s'] / p['tok_per_s']:.2f}×" if p else "n/a"
        f.write(f"| {m} | {o['params']:,} | {o['tok_per_s']:.0f} | {p['tok_per_s']:.0f} | {ratio} |\n" if p else f"| {m} | {o['params']:,} | {o['tok_per_s']:.0f} | n/a | n/a |\n")
    f.write(f"\nPyTorch {next(iter(peer.values()))['torch'] if peer else 'not installed'}.\n")
print(open(sys.argv[2]).read())
PY
