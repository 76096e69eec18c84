#!/usr/bin/env bash
# The DLRA optimiser study (SCIENCE.md §3): Adam and heavy ball on the factors of W = U·Vᵀ against
# their DLRA versions on W = U·S·Vᵀ, on ½·tr((W − W*)ᵀ·Σ·(W − W*)) with W of 100 × 100, each method
# at its best of 8 step sizes, 2000 steps, same start. CPU, float64.
set -euo pipefail
cd "$(dirname "$0")"
bin=${LOWRANK_BIN:-../../target/release/lowrank}
lrs="--lrs 0.001,0.003,0.01,0.03,0.1,0.3,1,3"
run() { local out=$1; shift; $bin dlra $lrs "$@" --out "$out" 2> /dev/null | tee "$out.txt"; }
run k100 --cond 100
run k100-window10 --cond 100 --window 10
run k1 --cond 1
run k100-r10 --cond 100 --rank 10
run k100-target10 --cond 100 --target-rank 10
for s in 1 2; do run k100-seed$s --cond 100 --seed $s; done
# Ablation: DLRA Adam with the new directions' second moment started at the mean of the transported
# one instead of zero.
for c in "k100 --cond 100" "k1 --cond 1" "k100-r10 --cond 100 --rank 10" "k100-window10 --cond 100 --window 10" \
         "k100-seed1 --cond 100 --seed 1" "k100-seed2 --cond 100 --seed 2"; do
  set -- $c; name=$1; shift
  run "$name-fresh-mean" --methods dlra-adam --fresh-moment mean "$@"
done
