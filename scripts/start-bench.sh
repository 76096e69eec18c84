#!/usr/bin/env bash
# What starting a run costs: a fresh `lowrank train --steps 1` for each binary given (a build before
# a change beside one after it), rounds alternating. One line a run: seconds from the start to the
# banner (the model built and its init drawn) and to the step's line, and the loss.
#
#   bash scripts/start-bench.sh LOWRANK_BINARY [OTHER_BINARY...] [-- TRAIN_FLAGS...]
#   ROUNDS=2 OUT_DIR=/tmp  (defaults)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 LOWRANK_BINARY [OTHER_BINARY...] [-- TRAIN_FLAGS...]" >&2; exit 2; }
bins=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do bins+=("$1"); shift; done
[ $# -gt 0 ] && shift
ROUNDS=${ROUNDS:-2} OUT_DIR=${OUT_DIR:-/tmp}
work=$(mktemp -d "$OUT_DIR/start-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "# $(date -u '+%F %H:%M UTC'); train --steps 1 $*; $(nproc) cores"
for round in $(seq "$ROUNDS"); do
  for bin in "${bins[@]}"; do
    rm -rf "$work/run"
    start=$(date +%s.%N)
    "$bin" train --out "$work/run" --steps 1 --eval-every 0 "$@" 2>&1 \
      | while IFS= read -r line; do echo "$(date +%s.%N) $line"; done >"$work/log"
    awk -v start="$start" -v what="round $round $bin" '
      / training / && !banner { banner = $1 - start }
      / step [0-9]+\/[0-9]+ / && !stepped { stepped = $1 - start }
      /final training loss/ { match($0, /final training loss [0-9.]+/); loss = substr($0, RSTART + 20, RLENGTH - 20) }
      END {
        if (!stepped) { print what ": failed"; exit 1 }
        printf "%s: banner %.1f s, step %.1f s, loss %s\n", what, banner, stepped, loss
      }' "$work/log" || { cat "$work/log" >&2; exit 1; }
  done
done
