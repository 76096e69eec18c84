#!/usr/bin/env bash
# run1500.sh's spectral and function-closed runs again with the 300-step warm-up that removes the
# end-of-warm-up spike (seed 1337, both at once on the 2 cores).
set -euo pipefail
cd "$(dirname "$0")"
bin=../../../target/release/lowrank
for init in spectral function-closed; do
  out="w300-$init"
  $bin train --steps 1500 --warmup 300 --eval-every 100 --rank-log-every 25 --checkpoint-every 0 \
    --lowrank efficient --rank-init 16 --lowrank-init "$init" --out "$out" > "$out.log" 2>&1 &
done
wait
for init in spectral function-closed; do
  rm -rf "w300-$init"/checkpoint-* "w300-$init"/latest
  $bin plot "w300-$init" > /dev/null
done
