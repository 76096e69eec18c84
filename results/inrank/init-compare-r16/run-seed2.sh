#!/usr/bin/env bash
# run.sh again with --seed 2 (other init draws and data order): the seed-to-seed spread.
set -euo pipefail
cd "$(dirname "$0")"
bin=../../../target/release/lowrank
for init in random spectral function-closed function; do
  $bin train --steps 300 --warmup 50 --eval-every 50 --rank-log-every 25 --checkpoint-every 0 \
    --lowrank efficient --rank-init 16 --lowrank-init "$init" --seed 2 --out "seed2-$init" > "seed2-$init.log" 2>&1
  grep -o '"step":300[^}]*"val_loss":[0-9.]*' "seed2-$init/metrics.jsonl" | tail -1
done
