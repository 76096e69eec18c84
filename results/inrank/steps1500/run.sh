#!/usr/bin/env bash
# Dense vs efficient InRank (α = 0.9 and 0.99, r0 = 16 and 32, factor lr ×2) vs a compressed deep linear block per MLP matrix
# (--mlp-dln, width 32) on the tiny config and the embedded corpus, 1500 optimiser steps each
# (B=8 T=64: 768k tokens, about 2.4 passes over the 319k-token training split). Two runs at a time
# on a 2-core machine; tok/s is not a benchmark. Then `lowrank plot` for loss.png and ranks.png.
set -euo pipefail
cd "$(dirname "$0")"
bin=../../../target/release/lowrank
common="--steps 1500 --warmup 50 --eval-every 100 --checkpoint-every 500 --rank-log-every 25"
$bin train $common --out dense
$bin train $common --lowrank efficient --out eff
$bin train $common --lowrank efficient --rank-alpha 0.99 --out eff99
$bin train $common --mlp-dln --rank-init 16 --out dln16
$bin train $common --lowrank efficient --rank-init 32 --out effr32
$bin train $common --lowrank efficient --rank-init 16 --out effr16
# Stopped early by hand (SIGTERM) for the session's time: eff99 at step 1000, effx2 at step 762.
$bin train $common --lowrank efficient --factor-lr-scale 2 --out effx2
for d in dense eff eff99 dln16 effr32 effr16 effx2; do $bin plot $d; rm -rf $d/checkpoint-*; done
