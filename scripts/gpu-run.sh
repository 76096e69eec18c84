#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there): finds the CUDA libraries, then doctor, selftest (also under
# compute-sanitizer when present), bench and the PyTorch peer on the same shapes. Logs and JSON go to
# $OUT (or the first argument); a short table is printed last.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-${OUT:-$root/gpu-out}}"
mkdir -p "$out"
bin="$root/.gpu/lowrank"
[[ -x "$bin" ]] || { echo "error: $bin missing: run scripts/gpu-stage.sh on the build machine and carry .gpu" >&2; exit 1; }

# The CUDA libraries live in the Python environment's nvidia packages; the driver may be off the path.
libdirs=$(find / -xdev \( -name 'libcublasLt.so*' -o -name 'libcurand.so*' -o -name 'libnvrtc.so*' -o -name 'libnccl.so*' -o -name 'libnvToolsExt.so*' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1'; then
  libdirs="$libdirs$(find / -xdev -name 'libcuda.so.1' 2>/dev/null | head -1 | xargs -r dirname)"
fi
export LD_LIBRARY_PATH="${libdirs%:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{ date -u +%Y-%m-%dT%H:%M:%SZ; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; cat "$root/.gpu/COMMIT" 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv 2>&1; } > "$out/env.txt"

status=0
step() { # name, command...: runs, logs, records pass/fail
  local name=$1; shift
  echo "== $name: $*"
  # Each step has its own time limit, so one slow step cannot starve the rest of the call.
  if timeout "${STEP_TIMEOUT:-240}" "$@" > "$out/$name.log" 2>&1; then echo "ok" > "$out/$name.status"; else echo "FAILED" > "$out/$name.status"; status=1; fi
  tail -n 60 "$out/$name.log"
}

step doctor "$bin" doctor --json "$out/doctor.json"
step selftest "$bin" selftest --json "$out/selftest.json"
step selftest-lowrank-cublas env LOWRANK_LOWRANK_IMPL=cublas "$bin" selftest --filter lowrank --json "$out/selftest-lowrank-cublas.json"
# On Hopper the default fused path runs the wgmma mainloop where it applies; this covers mma.sync there.
step selftest-lowrank-mma env LOWRANK_LOWRANK_IMPL=mma "$bin" selftest --filter lowrank --json "$out/selftest-lowrank-mma.json"
if command -v compute-sanitizer >/dev/null; then
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 3 "$bin" selftest
fi
step bench "$bin" bench --json "$out/bench.json"
# The whole training step on the GPU: a short run on the built-in corpus, then GPT-2 small's
# step throughput beside PyTorch's (bf16 autocast) on the same shapes.
step train-smoke "$bin" train --device cuda --steps 30 --eval-every 10 --out "$out/train-smoke"
step bench-train "$bin" bench-train --device cuda --model gpt2 --batch 8 --seq 1024 --steps 10
if python3 -c 'import torch' 2>/dev/null; then
  step peer python3 "$root/scripts/peer-bench.py" --json "$out/peer.json"
  step peer-train python3 "$root/scripts/peer-train.py" --device cuda --config gpt2:12:12:768 --batch 8 --seq 1024 --steps 10
fi

echo
echo "== summary ($(head -1 "$out/env.txt"))"
for s in "$out"/*.status; do printf '%-10s %s\n' "$(basename "$s" .status)" "$(cat "$s")"; done
grep -E "passed, [0-9]+ failed" "$out/selftest.log" 2>/dev/null | tail -1
sed -n '/^op /,$p' "$out/bench.log" 2>/dev/null
[[ -f "$out/peer.log" ]] && sed -n '/^op /,$p' "$out/peer.log"
exit $status
