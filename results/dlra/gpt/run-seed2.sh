#!/usr/bin/env bash
# A second seed of run.sh's DLRA runs and factor baseline (seed 2; dense and efficient InRank on
# seed 2 are in ../../inrank/warmup300/seed2-*).
set -euo pipefail
cd "$(dirname "$0")"
bin=${LOWRANK_BIN:-../../../target/release/lowrank}
common="--steps 1500 --warmup 300 --eval-every 100 --checkpoint-every 0 --rank-log-every 25 --seed 2"
run() { local out=$1; shift; $bin train $common "$@" --out "$out" > "$out.log" 2>&1; }
run seed2-dlra32-k1 --lowrank dlra --rank-init 32 --dlra-window 1 & run seed2-factor32 --lowrank efficient --rank-init 32 --stage1-steps 1 & wait
run seed2-dlra32 --lowrank dlra --rank-init 32
for d in seed2-dlra32-k1 seed2-factor32 seed2-dlra32; do rm -rf $d/checkpoint-* $d/latest; $bin plot $d > /dev/null; done
