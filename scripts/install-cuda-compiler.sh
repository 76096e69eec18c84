#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, its crt headers, nvvm, the runtime headers, cccl)
# from PyPI into .cuda/ at the repository root, where build.rs looks for it. No GPU needed.
# Pinned because a newer nvvm emits PTX that the target's 580 driver (CUDA 13.0) rejects.
# Idempotent: a second run with the same pins does nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${LOWRANK_CUDA_DIR:-$root/.cuda}"
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  # cuobjdump + nvdisasm (no 13.0 wheel exists; a newer one reads 13.0 cubins): read the SASS of a cubin without a GPU (scripts/check-sass.sh)
  nvidia-cuda-cuobjdump==13.2.86
  nvidia-cuda-nvdisasm==13.2.86
)
stamp="$dest/.pins"
want="$(printf '%s\n' "${pins[@]}")"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dest/nvidia/cu13/bin/nvcc" ]]; then
  echo "CUDA compiler already installed in $dest"
  exit 0
fi

python3 -m pip --version >/dev/null 2>&1 || { echo "error: python3 with pip is needed to install nvcc" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest"
echo "installing ${pins[*]} into $dest"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest" "${pins[@]}"

bin="$dest/nvidia/cu13/bin"
# The wheels lay nvcc's pieces side by side; nvcc finds cicc and libdevice relative to itself via nvcc.profile.
if [[ ! -x "$bin/nvcc" ]]; then
  echo "error: nvcc not found at $bin/nvcc after install" >&2
  exit 1
fi
chmod +x "$bin"/* 2>/dev/null || true
find "$dest/nvidia" -path '*nvvm/bin/*' -type f -exec chmod +x {} + 2>/dev/null || true
echo "$want" > "$stamp"
# build.rs reruns when a kernel source changes: a build made before this install (CPU-only) would
# otherwise stay without kernels until the next kernel edit.
touch "$root"/kernels/*.cu
"$bin/nvcc" --version | tail -n 2
echo "CUDA compiler installed: $bin/nvcc"
