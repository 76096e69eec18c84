#!/usr/bin/env bash
# DLRA inside GPT training (--lowrank dlra) against AdamW on the factors at the same rank, on the
# tiny model with the InRank study's schedule (1500 steps, 300-step warm-up, seed 1337; dense and
# efficient InRank from r0 = 32 on that schedule are in ../../inrank/warmup300). Two runs at a
# time on the 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
bin=${LOWRANK_BIN:-../../../target/release/lowrank}
common="--steps 1500 --warmup 300 --eval-every 100 --checkpoint-every 0 --rank-log-every 25"
run() { local out=$1; shift; $bin train $common "$@" --out "$out" > "$out.log" 2>&1; }
run dlra32 --lowrank dlra --rank-init 32 & run dlra32-k1 --lowrank dlra --rank-init 32 --dlra-window 1 & wait
# AdamW on U, V at fixed rank 32: efficient InRank truncated to r0 after its first step.
run factor32 --lowrank efficient --rank-init 32 --stage1-steps 1 & run dlra32-mean --lowrank dlra --rank-init 32 --dlra-fresh-moment mean & wait
for d in dlra32 dlra32-k1 factor32 dlra32-mean; do rm -rf $d/checkpoint-* $d/latest; $bin plot $d > /dev/null; done
