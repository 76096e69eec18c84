#!/usr/bin/env bash
# Second seed (init and data order) of the two r0 variants of run-variants.sh, whose first seed
# ended level with (r0 = 16) and below (r0 = 32) dense at the same warm-up.
set -euo pipefail
cd "$(dirname "$0")"
bin=${LOWRANK_BIN:-../../../target/release/lowrank}
common="--steps 1500 --warmup 300 --eval-every 100 --checkpoint-every 0 --rank-log-every 25 --seed 2"
run() { local out=$1; shift; $bin train $common "$@" --out "$out" > "$out.log" 2>&1; }
run seed2-effr16 --lowrank efficient --rank-init 16 & run seed2-effr32 --lowrank efficient --rank-init 32 & wait
for d in seed2-effr16 seed2-effr32; do rm -rf $d/checkpoint-* $d/latest; $bin plot $d > /dev/null; done
