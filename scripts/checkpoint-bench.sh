#!/usr/bin/env bash
# What checkpoints cost a training run: `lowrank train` with a checkpoint every EVERY steps, for
# each binary given (a build before a change beside one after it), rounds alternating; then
# PyTorch's torch.save of the same model and AdamW state (scripts/peer-checkpoint.py), where torch
# and transformers import and no TRAIN_FLAGS are given. One line a run: wall seconds, the steps'
# own seconds (metrics.jsonl), max RSS, the last checkpoint's size, and the run's `done:` clause on
# its checkpoints (training's pause, the writing's time).
#
#   bash scripts/checkpoint-bench.sh target/release/lowrank [OTHER_BINARY...] [-- TRAIN_FLAGS...]
#   MODEL=gpt2-medium STEPS=15 EVERY=5 ROUNDS=2 DEVICE=cpu BATCH=1 SEQ=32 OUT_DIR=/tmp  (defaults)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 LOWRANK_BINARY [OTHER_BINARY...] [-- TRAIN_FLAGS...]" >&2; exit 2; }
bins=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do bins+=("$1"); shift; done
[ $# -gt 0 ] && shift
MODEL=${MODEL:-gpt2-medium} STEPS=${STEPS:-15} EVERY=${EVERY:-5} ROUNDS=${ROUNDS:-2}
DEVICE=${DEVICE:-cpu} BATCH=${BATCH:-1} SEQ=${SEQ:-32} OUT_DIR=${OUT_DIR:-/tmp}
work=$(mktemp -d "$OUT_DIR/checkpoint-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "# $(date -u '+%F %H:%M UTC'); $MODEL on $DEVICE, B=$BATCH T=$SEQ, $STEPS steps, a checkpoint every $EVERY $*; $(nproc) cores"
for round in $(seq "$ROUNDS"); do
  for bin in "${bins[@]}"; do
    sync
    run="$work/run"
    rm -rf "$run"
    /usr/bin/time -f "%e %M" -o "$work/time" "$bin" train --model "$MODEL" --device "$DEVICE" \
      --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --checkpoint-every "$EVERY" --eval-every 0 \
      --out "$run" "$@" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
    read -r wall rss <"$work/time"
    steps=$(python3 -c "import json,sys; print(round(sum($BATCH*$SEQ/json.loads(l)['tok_per_s'] for l in open(sys.argv[1])),1))" "$run/metrics.jsonl")
    said=$(grep -o 'checkpoints\? ([^)]*)' "$work/log" || echo "checkpoints (not reported by this binary)")
    size=$(du -sb "$run/$(cat "$run/latest")" | cut -f1)
    echo "round $round $bin: wall ${wall} s, steps ${steps} s, max RSS $((rss / 1024)) MiB, checkpoint $((size / 1000000)) MB; $said"
    rm -rf "$run"
  done
done
if [ $# -eq 0 ] && python3 -c "import torch, transformers" 2>/dev/null && [ "$MODEL" != tiny ]; then
  for round in $(seq "$ROUNDS"); do
    sync
    echo "round $round PyTorch: $(python3 "$(dirname "$0")/peer-checkpoint.py" --model "$MODEL" --out "$work/peer" 2>/dev/null)"
  done
fi
