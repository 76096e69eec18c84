#!/usr/bin/env bash
# Builds the release binary WITH kernels on this (GPU-less) machine and stages what a GPU run needs in
# the ignored .gpu/ folder: the binary and, with LLMC_DIR set, llm.c's CUDA trainer built for sm_90.
# Then, from the session: run(command="bash scripts/gpu-run.sh", carry=[".gpu"]).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-cuda-compiler.sh
LOWRANK_REQUIRE_KERNELS=1 cargo build --release
mkdir -p .gpu
cp target/release/lowrank .gpu/lowrank
strip --strip-debug .gpu/lowrank 2>/dev/null || true
# llm.c's CUDA trainer, the training step's second peer (scripts/peer-llmc.py), when LLMC_DIR names
# a checkout of github.com/karpathy/llm.c (not vendored; without it gpu-run.sh skips that step).
if [[ -n ${LLMC_DIR:-} ]]; then
  python3 scripts/peer-llmc.py build-cuda --llmc "$LLMC_DIR" --out .gpu/llmc/train_gpt2cu
fi
git rev-parse --short HEAD > .gpu/COMMIT 2>/dev/null || echo unknown > .gpu/COMMIT
git diff --quiet 2>/dev/null || echo "(with uncommitted changes)" >> .gpu/COMMIT
ls -la .gpu
echo "staged: $(du -sh .gpu | cut -f1) in .gpu/ (commit $(head -1 .gpu/COMMIT))"
