#!/usr/bin/env bash
# DLRA with rank adaptation by tolerance (--dlra-tau, SCIENCE.md §3: τ in 0.01–0.15): from the
# spectral init at r = 64, each truncation keeps the smallest rank (at most 64) whose dropped
# singular values hold at most τ of ‖S‖. K = 1 (the best window in run.sh), the schedule of
# run.sh; dlra64-k1 is the fixed-rank reference. Two runs at a time on the 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
bin=${LOWRANK_BIN:-../../../target/release/lowrank}
common="--steps 1500 --warmup 300 --eval-every 100 --checkpoint-every 0 --rank-log-every 25 --lowrank dlra --rank-init 64 --dlra-window 1"
run() { local out=$1; shift; $bin train $common "$@" --out "$out" > "$out.log" 2>&1; }
run dlra64-k1 & run tau05-k1 --dlra-tau 0.05 & wait
run tau10-k1 --dlra-tau 0.1 & run tau20-k1 --dlra-tau 0.2 & wait
for d in dlra64-k1 tau05-k1 tau10-k1 tau20-k1; do rm -rf $d/checkpoint-* $d/latest; $bin plot $d > /dev/null; done
