#!/usr/bin/env bash
# The second session's 1500-step variants (../steps1500/run.sh: r0 = 16 and 32, α = 0.99, factor lr ×2,
# --mlp-dln width 16) rerun with the 300-step warm-up, which removed the low-rank runs' step-44
# spike; their 50-step ranking was measured through that spike. Two runs at a time on the 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
bin=${LOWRANK_BIN:-../../../target/release/lowrank}
common="--steps 1500 --warmup 300 --eval-every 100 --checkpoint-every 0 --rank-log-every 25"
run() { local out=$1; shift; $bin train $common "$@" --out "$out" > "$out.log" 2>&1; }
run effr16 --lowrank efficient --rank-init 16 & run effr32 --lowrank efficient --rank-init 32 & wait
run eff99 --lowrank efficient --rank-alpha 0.99 & run effx2 --lowrank efficient --factor-lr-scale 2 & wait
run dln16 --mlp-dln --rank-init 16
for d in effr16 effr32 eff99 effx2 dln16; do rm -rf $d/checkpoint-* $d/latest; $bin plot $d > /dev/null; done
