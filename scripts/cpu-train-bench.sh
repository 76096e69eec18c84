#!/usr/bin/env bash
# CPU training-step throughput, ours against PyTorch's, measured side by side in one run: the same
# GPT-2 shapes (tiny and gpt2 at T=64), batch, step (forward, backward, AdamW) and thread count; and
# GPT-2 small with low-rank MLPs (efficient InRank and DLRA at rank 96) beside our dense step, and
# efficient InRank's step as its reference code trains it, and LoRA (r = 8, every linear layer) as
# loralib does, in PyTorch (scripts/peer-train.py); and
# llm.c's CPU trainer (train_gpt2.c) on the same shapes (scripts/peer-llmc.py: LLMC_DIR names a
# checkout, else one is cloned into target/llm.c; without either the llm.c columns say "-").
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
  ./target/release/lowrank bench-train --model gpt2 --batch "$batch" --seq "$seq" --steps "$steps" --lowrank efficient --rank-init 96
  ./target/release/lowrank bench-train --model gpt2 --batch "$batch" --seq "$seq" --steps 20 --lowrank dlra --rank-init 96 --dlra-window 10
  ./target/release/lowrank bench-train --model gpt2 --batch "$batch" --seq "$seq" --steps "$steps" --lowrank lora --lowrank-layers all --rank-init 8
  python3 scripts/peer-train.py --config tiny:4:4:128 --config gpt2:12:12:768 --batch "$batch" --seq "$seq" --steps "$steps" --threads "$threads" 2>/dev/null
  python3 scripts/peer-train.py --config gpt2:12:12:768 --batch "$batch" --seq "$seq" --steps "$steps" --threads "$threads" --lowrank efficient --rank-init 96 2>/dev/null
  python3 scripts/peer-train.py --config gpt2:12:12:768 --batch "$batch" --seq "$seq" --steps "$steps" --threads "$threads" --lowrank lora --lowrank-layers all --rank-init 8 2>/dev/null
  llmc="${LLMC_DIR:-target/llm.c}"
  if [ -z "${LLMC_DIR:-}" ] && [ ! -d "$llmc" ]; then
    git clone -q --depth 1 https://github.com/karpathy/llm.c "$llmc" >&2 || echo "cpu-train-bench: could not clone llm.c; set LLMC_DIR to a checkout for its columns" >&2
  fi
  if [ -f "$llmc/train_gpt2.c" ]; then
    python3 scripts/peer-llmc.py cpu --llmc "$llmc" --config tiny:4:4:128:128 --config gpt2:12:12:768 --batch "$batch" --seq "$seq" --threads "$threads" \
      || echo "cpu-train-bench: llm.c's run failed (above); its columns say -" >&2
  fi
} | tee "$out.jsonl"
python3 - "$out.jsonl" "$out.md" <<'PY'
import json, sys, platform, subprocess, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = [r for r in rows if r["peer"] == "lowrank"]
dense = {r["model"]: r for r in ours if r["lowrank"] == "dense"}
peer = {(r["model"], r.get("lowrank", "dense")): r for r in rows if r["peer"] == "pytorch"}
llmc = {r["model"]: r for r in rows if r["peer"] == "llm.c"}
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
load = open("/proc/loadavg").read().split()[:3]
with open(sys.argv[2], "w") as f:
    f.write(f"# CPU training throughput: lowrank vs PyTorch and llm.c, low-rank vs dense\n\n")
    f.write(f"Date {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; CPU: {cpu}; {rows[0]['threads']} threads; load average at the end {' '.join(load)}.\n")
    f.write(f"Command: `bash scripts/cpu-train-bench.sh` (BATCH={rows[0]['batch']} SEQ={rows[0]['seq']}); one step = forward, backward, AdamW; median of timed steps after two warm-up steps.\n")
    f.write("Low-rank rows: the MLP matrices as factors (`--rank-init 96`; efficient InRank's factors also hold its rank buffer), attention and the LM head dense; DLRA over 20 steps with a window of 10, whose edges (augmentation, truncation) the mean step includes and the median does not. PyTorch's efficient row trains the same live width as the paper's reference code does (`scripts/peer-train.py --lowrank efficient`: factors allocated at capacity, the forward slicing the live width, AdamW over the capacity, as ours); its LoRA row as loralib and PEFT train adapters (every base tensor frozen, no weight gradient formed for them; our LoRA row's frozen base is the random init, which a step's time does not depend on), and our LoRA row's params are the trained adapters'.\n\n")
    f.write("| model | method | params | mean s/step | lowrank tok/s | PyTorch tok/s | ours / PyTorch | llm.c tok/s | ours / llm.c | ours / our dense |\n|---|---|---|---|---|---|---|---|---|---|\n")
    for o in ours:
        m = o["model"]
        dense_row = o["lowrank"] == "dense"
        peer_cols = lambda p: f"{p['tok_per_s']:.0f} | {o['tok_per_s'] / p['tok_per_s']:.2f}×" if p else "- | -"
        d = dense.get(m)
        vs_dense = f"{o['tok_per_s'] / d['tok_per_s']:.2f}×" if d and o is not d else "-"
        f.write(f"| {m} | {o['lowrank']} | {o['params']:,} | {o['mean_step_s']:.3f} | {o['tok_per_s']:.0f} | {peer_cols(peer.get((m, o['lowrank'])))} | {peer_cols(dense_row and llmc.get(m))} | {vs_dense} |\n")
    f.write(f"\nPyTorch {next(iter(peer.values()))['torch'] if peer else 'not installed'}.\n")
    if llmc:
        l = next(iter(llmc.values()))
        f.write(f"llm.c's train_gpt2.c (fp32, OpenMP; commit {l['llmc_commit']}) compiled by {l['compiler']} with its Makefile's CPU flags "
                "(-Ofast -march=native -fopenmp), OMP_NUM_THREADS as above; its own fixed B = 4, T = 64; median of its steps 2-40 "
                "(its timed region: the batch's load, forward, zero_grad, backward, AdamW; scripts/peer-llmc.py).\n")
    else:
        f.write("llm.c: not run (set LLMC_DIR to a checkout of github.com/karpathy/llm.c).\n")
print(open(sys.argv[2]).read())
PY
