#!/usr/bin/env bash
# What resuming costs: `lowrank train --resume` of a copy of RUN (its checkpoint files hard-linked,
# the files a run rewrites copied) for one more step, for each binary given (a build before a
# change beside one after it), rounds alternating, the checkpoint's files read into the page cache
# first. One line a run: seconds from the start to the banner (the model built and the checkpoint
# loaded) and to the step's line, the whole run's (its last checkpoint written), max RSS, the loss.
#
#   bash scripts/resume-bench.sh RUN LOWRANK_BINARY [OTHER_BINARY...] [-- TRAIN_FLAGS...]
#   ROUNDS=2 OUT_DIR=/tmp  (defaults; RUN's checkpoint is at step S, the runs train to S + 1)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 RUN LOWRANK_BINARY [OTHER_BINARY...] [-- TRAIN_FLAGS...]" >&2; exit 2; }
src=$1; shift
bins=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do bins+=("$1"); shift; done
[ $# -gt 0 ] && shift
ROUNDS=${ROUNDS:-2} OUT_DIR=${OUT_DIR:-/tmp}
step=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$(cat "$src/latest" | sed "s|^|$src/|")/state.json")
work=$(mktemp -d "$OUT_DIR/resume-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "# $(date -u '+%F %H:%M UTC'); resume $src at step $step to $((step + 1)) $*; $(nproc) cores"
for round in $(seq "$ROUNDS"); do
  for bin in "${bins[@]}"; do
    run="$work/run"
    rm -rf "$run"
    cp -al "$src" "$run"
    for f in metrics.jsonl config.json latest; do rm "$run/$f"; cp "$src/$f" "$run/"; done
    cat "$src"/checkpoint-*/*.safetensors >/dev/null
    start=$(date +%s.%N)
    /usr/bin/time -f "TIME %e %M" "$bin" train --resume "$run" --steps $((step + 1)) "$@" 2>&1 \
      | while IFS= read -r line; do echo "$(date +%s.%N) $line"; done >"$work/log"
    awk -v start="$start" -v what="round $round $bin" '
      / training / && !banner { banner = $1 - start }
      / step [0-9]+\/[0-9]+ / && !stepped { stepped = $1 - start }
      /final training loss/ { match($0, /final training loss [0-9.]+/); loss = substr($0, RSTART + 20, RLENGTH - 20) }
      /^[0-9.]+ TIME / { wall = $3; rss = $4 }
      END {
        if (!stepped) { print what ": failed"; exit 1 }
        printf "%s: banner %.1f s, step %.1f s, wall %s s, max RSS %.2f GB, loss %s\n", what, banner, stepped, wall, rss * 1024 / 1e9, loss
      }' "$work/log" || { cat "$work/log" >&2; exit 1; }
  done
done
