#!/usr/bin/env bash
# DLRA heavy ball on S (--dlra-rule heavy-ball, friction γ = 0.1) at rank 32, same schedule as
# run.sh. Heavy ball's step is h = lr × --factor-lr-scale and its steady steps scale as h²·g/γ, so
# the scale is searched: 30, 100 and 300 (peak h = 0.09, 0.3, 0.9).
set -euo pipefail
cd "$(dirname "$0")"
bin=${LOWRANK_BIN:-../../../target/release/lowrank}
common="--steps 1500 --warmup 300 --eval-every 100 --checkpoint-every 0 --rank-log-every 25"
run() { local out=$1; shift; $bin train $common "$@" --out "$out" > "$out.log" 2>&1; }
hb="--lowrank dlra --rank-init 32 --dlra-rule heavy-ball"
run dlra32-hb100 $hb --factor-lr-scale 100 & run dlra32-hb300 $hb --factor-lr-scale 300 & wait
run dlra32-hb30 $hb --factor-lr-scale 30 & wait
for d in dlra32-hb100 dlra32-hb300 dlra32-hb30; do rm -rf $d/checkpoint-* $d/latest; $bin plot $d > /dev/null; done
