#!/usr/bin/env bash
# A third seed of dense and of efficient InRank from r0 = 32 with the 300-step warm-up, the closest
# pair of run-variants.sh and run-variants-seed2.sh (1500 steps, two runs side by side).
set -euo pipefail
cd "$(dirname "$0")"
bin=${LOWRANK_BIN:-../../../target/release/lowrank}
common="--steps 1500 --warmup 300 --eval-every 100 --checkpoint-every 0 --rank-log-every 25 --seed 3"
run() { local out=$1; shift; $bin train $common "$@" --out "$out" > "$out.log" 2>&1; }
run seed3-dense & run seed3-effr32 --lowrank efficient --rank-init 32 & wait
for d in seed3-dense seed3-effr32; do rm -rf $d/checkpoint-* $d/latest; $bin plot $d > /dev/null; done
