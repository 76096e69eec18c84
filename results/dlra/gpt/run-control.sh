#!/usr/bin/env bash
# Control: DLRA with S frozen (--factor-lr-scale 1e-6), so the MLP matrices stay at their
# spectral init (the bases move only where S does). Shows how much of a run's progress the MLP
# layers' training accounts for on this tiny model. Same schedule as run.sh; an argument sets the
# seed (default 1337: dlra32-frozen; otherwise seedN-dlra32-frozen).
set -euo pipefail
cd "$(dirname "$0")"
bin=${LOWRANK_BIN:-../../../target/release/lowrank}
seed=${1:-1337}
out=dlra32-frozen; [[ $seed == 1337 ]] || out=seed$seed-dlra32-frozen
common="--steps 1500 --warmup 300 --eval-every 100 --checkpoint-every 0 --rank-log-every 25 --seed $seed"
$bin train $common --lowrank dlra --rank-init 32 --factor-lr-scale 1e-6 --out "$out" > "$out.log" 2>&1
rm -rf "$out"/checkpoint-* "$out"/latest; $bin plot "$out" > /dev/null
