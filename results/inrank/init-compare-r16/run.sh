#!/usr/bin/env bash
# The consequence of the init for training (issue 4): efficient InRank from r0 = 16 on the tiny
# config, 300 optimiser steps (warm-up 50, cosine to step 300), each --lowrank-init on the same
# seed and data order. Rank growth, stage 2 and everything else at the defaults.
set -euo pipefail
cd "$(dirname "$0")"
bin=../../../target/release/lowrank
for init in random spectral function-closed function; do
  $bin train --steps 300 --warmup 50 --eval-every 50 --rank-log-every 25 --checkpoint-every 0 \
    --lowrank efficient --rank-init 16 --lowrank-init "$init" --out "$init" > "$init.log" 2>&1
  $bin plot "$init" > /dev/null
  grep -o '"step":300[^}]*"val_loss":[0-9.]*' "$init/metrics.jsonl" | tail -1
done
