#!/usr/bin/env bash
# Dense vs efficient InRank (the paper's r0 = 2) with a 300-step lr warm-up instead of 50 (the
# step-44 spike and the unigram plateau of the low-rank runs vanish with it; see results.md), 1500
# steps, otherwise the settings of ../steps1500/run.sh. The two runs share the 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
bin=../../../target/release/lowrank
common="--steps 1500 --warmup 300 --eval-every 100 --checkpoint-every 0 --rank-log-every 25"
$bin train $common --out dense > dense.log 2>&1 &
$bin train $common --lowrank efficient --out eff > eff.log 2>&1 &
wait
for d in dense eff; do rm -rf $d/checkpoint-* $d/latest; $bin plot $d > /dev/null; done
