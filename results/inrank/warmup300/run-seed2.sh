#!/usr/bin/env bash
# run.sh with --seed 2 (other init and data order).
set -euo pipefail
cd "$(dirname "$0")"
bin=../../../target/release/lowrank
common="--steps 1500 --warmup 300 --eval-every 100 --checkpoint-every 0 --rank-log-every 25 --seed 2"
$bin train $common --out seed2-dense > seed2-dense.log 2>&1 &
$bin train $common --lowrank efficient --out seed2-eff > seed2-eff.log 2>&1 &
wait
for d in seed2-dense seed2-eff; do rm -rf $d/checkpoint-* $d/latest; $bin plot $d > /dev/null; done
