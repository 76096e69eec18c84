#!/usr/bin/env bash
# A CPU change measured side by side: two builds of lowrank (before and after) time the same
# bench-train configurations, alternating, ROUNDS rounds; one line per configuration and round
# with each binary's median step time.
#   git worktree add /tmp/before REV && (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release)
#   bash scripts/cpu-ab.sh /tmp/before-target/release/lowrank target/release/lowrank
# CONFIGS (one bench-train flag set per line) replaces the default set; THREADS (default nproc).
set -euo pipefail
if [ $# -ne 2 ] || [ ! -x "$1" ] || [ ! -x "$2" ]; then
  echo "usage: $0 BEFORE_BINARY AFTER_BINARY (both executable lowrank builds)" >&2
  exit 2
fi
before="$1"; after="$2"
export RAYON_NUM_THREADS="${THREADS:-$(nproc)}"
configs="${CONFIGS:-"--model tiny --steps 30
--model gpt2 --steps 5
--model gpt2 --steps 5 --lowrank lora --lowrank-layers all --rank-init 8
--model gpt2 --steps 5 --lowrank efficient --rank-init 96
--model tiny --steps 30 --device cpu-bf16"}"
median() {
  # shellcheck disable=SC2086 # the configuration is a flag list
  "$1" bench-train --batch "${BATCH:-4}" --seq "${SEQ:-64}" $2 2>/dev/null |
    python3 -c "import json, sys; print(' '.join('%.4f' % json.loads(l)['median_step_s'] for l in sys.stdin if l.startswith('{')))"
}
for round in $(seq "${ROUNDS:-3}"); do
  while IFS= read -r cfg; do
    b=$(median "$before" "$cfg"); a=$(median "$after" "$cfg")
    echo "round $round | $cfg | before $b | after $a"
  done <<< "$configs"
done
