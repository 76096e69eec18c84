#!/usr/bin/env bash
# Lists, per kernel of each embedded fatbin, the tensor-core instructions in its sm_90a SASS
# (HMMA = mma.sync, HGMMA = wgmma), read with cuobjdump without a GPU. With a kernel name as argument,
# fails unless that kernel uses tensor cores.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.cuda/nvidia/cu13/bin"
[[ -x "$bin/cuobjdump" ]] || { echo "error: cuobjdump missing: run scripts/install-cuda-compiler.sh" >&2; exit 1; }
# The newest build's kernels: a target folder keeps the out/ of earlier builds (other features or
# build-script hashes) beside it.
table=$(ls -t "$root"/target/release/build/lowrank-*/out/kernels.rs 2>/dev/null | head -1)
out_dir=${table%/kernels.rs}
[[ -n "$out_dir" ]] || { echo "error: no kernels built: run LOWRANK_REQUIRE_KERNELS=1 cargo build --release" >&2; exit 1; }
want="${1:-}"
found=0
for fb in "$out_dir"/*.fatbin; do
  sass=$(PATH="$bin:$PATH" cuobjdump -sass -arch sm_90a "$fb")
  echo "$sass" | awk -v file="$(basename "$fb" .fatbin)" '
    /Function :/ { fn=$3 }
    /HMMA|HGMMA/ { n[fn]++ }
    /Function :/ { seen[$3]=1 }
    END { for (f in seen) printf "%-10s %-32s tensor-core instructions: %d\n", file, f, n[f]+0 }'
  if [[ -n "$want" ]] && echo "$sass" | awk -v k="$want" '/Function :/ {on=($3==k)} on && /HMMA|HGMMA/ {f=1} END {exit !f}'; then found=1; fi
done
if [[ -n "$want" && $found -eq 0 ]]; then echo "error: $want has no HMMA/HGMMA in its sm_90a SASS" >&2; exit 1; fi
