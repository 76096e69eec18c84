#!/usr/bin/env bash
# run.sh at 1500 optimiser steps (warm-up 50, cosine to 1500), seeds 1337 and 2 as two parallel
# streams on the 2-core machine (tok/s is not a benchmark).
set -euo pipefail
cd "$(dirname "$0")"
bin=../../../target/release/lowrank
stream() {
  local seed=$1
  for init in random spectral function-closed function; do
    local out="s1500-seed$seed-$init"
    $bin train --steps 1500 --warmup 50 --eval-every 100 --rank-log-every 25 --checkpoint-every 0 \
      --lowrank efficient --rank-init 16 --lowrank-init "$init" --seed "$seed" --out "$out" > "$out.log" 2>&1
    rm -rf "$out"/checkpoint-* "$out"/latest
    $bin plot "$out" > /dev/null
  done
}
stream 1337 &
stream 2 &
wait
