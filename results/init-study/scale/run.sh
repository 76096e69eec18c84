#!/usr/bin/env bash
# The closed-form GELU gap (no Adam fit) as the weights' scale grows: spectral vs the exact
# per-column optimum given the spectral directions, on 4096 fresh Gaussian samples.
set -euo pipefail
cd "$(dirname "$0")"
bin=../../../target/release/lowrank
for shape in 768x3072 1024x4096; do
  for act in relu gelu; do
    for scale in 0.5 1 2 4; do
      [ "$act" = relu ] && [ "$scale" != 1 ] && continue  # ReLU is homogeneous: scale-free
      name="$act-${shape%%x*}-x$scale"
      "$bin" init-study --shapes "$shape" --ranks 4,8,16,32,64,128 --activations "$act" \
        --samples 4096 --fit-steps 0 --weight-scale "$scale" --seed 0 \
        --json "$name.json" > "$name.txt" 2>&1
      grep -A1 '^acceptance' "$name.txt" | tail -1
    done
  done
done
