#!/usr/bin/env bash
# Builds the emulated GPU into OUT (default target/gpu-emu): libcuda.so, a fake CUDA driver whose
# kernels are kernels/*.cu compiled for the CPU by g++ (driver.cpp, runtime.cpp, warp_ops.cpp,
# cp_async.cpp, wgmma.cpp, tma.cpp, emu.h), and
# libcublasLt.so (cublaslt.cpp). With OUT on LD_LIBRARY_PATH, cudarc loads them in place of
# NVIDIA's libraries and the binary's CUDA backend runs end to end on the CPU:
#
#   bash tests/gpu-emu/build.sh && LD_LIBRARY_PATH=target/gpu-emu target/release/lowrank selftest
#
# The kernels compile unchanged but for two things: their inline PTX (kernels/ptx.cuh) is replaced
# by models of the instructions (emulated_ptx.h), and `extern __shared__` arrays become the block's
# shared-memory arena (the sed below). Rebuilds what changed only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(mkdir -p "${1:-$root/target/gpu-emu}" && cd "${1:-$root/target/gpu-emu}" && pwd)
mkdir -p "$out/kernels" "$out/obj"
cxx=${CXX:-g++}
# One image serves both emulated GPUs, so the sm_90a-only code (wgmma) is compiled in; the emulated
# wgmma instructions refuse to run on the emulated sm_80.
# -march=native: the emulator is built on the machine that runs it (its vector units for the fake
# cuBLASLt's products and the kernels' loops).
flags=(-std=c++17 -O3 -march=native -g -fPIC -Wall -Wno-unknown-pragmas -Wno-unused-function -Wno-psabi -DLOWRANK_EMULATED -D__CUDA_ARCH_FEAT_SM90_ALL
  -I"$here" -I"$here/include")
# LOWRANK_EMU_SANITIZE=address: every kernel's global-memory access checked by AddressSanitizer
# against the exact allocation (the emulator's compute-sanitizer memcheck). The binary then needs
# the ASan runtime first, and this libcuda.so preloaded too:
#   LD_PRELOAD="$(g++ -print-file-name=libasan.so) OUT/libcuda.so" ASAN_OPTIONS=detect_leaks=0
# Its thread-locals (`__shared__` arrays, the current launch) are then initial-exec, a fixed offset
# from the thread pointer: the default model calls __tls_get_addr, which ASan intercepts, on every
# read (a sixth of a sanitized run). A library opened later by dlopen cannot have that much static
# TLS ("cannot allocate memory in static TLS block"), a preloaded one can; cudarc's dlopen then
# finds the preloaded library by its file.
# Instrumented (`checked`): the code that reads or writes device memory: the kernels, cp.async and
# the TMA copies (cp_async.cpp, tma.cpp), the driver's copies, the fake cuBLASLt. Not: the
# scheduler (runtime.cpp) and the models of ldmatrix, mma.sync and wgmma (warp_ops.cpp,
# wgmma.cpp), which touch registers and shared memory only, through smem_at's own bounds check;
# instrumented, they were a third of an emulated Hopper run.
checked=()
case ${LOWRANK_EMU_SANITIZE:-} in
  "") ;;
  address)
    flags+=(-fno-omit-frame-pointer -ftls-model=initial-exec -DEMU_ASAN)
    checked=(-fsanitize=address) ;;
  *) echo "build.sh: LOWRANK_EMU_SANITIZE=$LOWRANK_EMU_SANITIZE: only 'address' is supported" >&2; exit 1 ;;
esac
# Other flags than last time, or another CPU under -march=native: rebuild everything.
# (What -march=native turns on, every target option, by its checksum.)
native=$("$cxx" -march=native -Q --help=target 2>/dev/null | cksum | cut -d' ' -f1 || true)
echo "${flags[*]} ${checked[*]} (native target options: ${native})" > "$out/flags.new"
if ! cmp -s "$out/flags.new" "$out/flags"; then rm -f "$out"/obj/*.o "$out"/*.so; mv "$out/flags.new" "$out/flags"; fi
rm -f "$out/flags.new"

# The kernel sources, with dynamic shared memory mapped onto the arena (copied only when changed,
# so that make-style timestamps below stay meaningful).
for f in "$root"/kernels/*.cu "$root"/kernels/*.cuh; do
  sed -E 's/extern __shared__ __align__\(([0-9]+)\) unsigned char ([A-Za-z_][A-Za-z0-9_]*)\[\];/unsigned char* \2 = ::emu::dynamic_smem();/' \
    "$f" > "$out/kernels/.tmp"
  cmp -s "$out/kernels/.tmp" "$out/kernels/$(basename "$f")" || mv "$out/kernels/.tmp" "$out/kernels/$(basename "$f")"
done
rm -f "$out/kernels/.tmp"
for f in "$out"/kernels/*; do  # a kernel file since removed from kernels/
  [[ -e $root/kernels/$(basename "$f") ]] || rm -f "$f" "$out/obj/$(basename "$f" .cu)".{cpp,o}
done
if grep -l "extern __shared__" "$out"/kernels/* >/dev/null 2>&1; then
  echo "build.sh: an extern __shared__ declaration of a form the emulator does not map:" >&2
  grep -n "extern __shared__" "$out"/kernels/* >&2
  exit 1
fi

newer() {  # true when $1 is missing or older than any later argument
  local target=$1; shift
  [[ -e $target ]] || return 0
  for d in "$@"; do [[ $d -nt $target ]] && return 0; done
  return 1
}

headers=("$out"/kernels/*.cuh "$here"/*.h "$here"/include/*.h)
objects=()
pids=()
for f in "$out"/kernels/*.cu; do
  name=$(basename "$f" .cu)
  obj=$out/obj/$name.o
  objects+=("$obj")
  newer "$obj" "$f" "${headers[@]}" "$0" || continue
  (
    # Entry points: every `__global__` function after macro expansion, registered by name.
    entries=$("$cxx" "${flags[@]}" -D__global__=EMU_KERNEL_MARKER -include emu.h -E -x c++ "$f" | tr '\n' ' ' |
      grep -oE 'EMU_KERNEL_MARKER +void +[A-Za-z0-9_]+ *\(' | sed -E 's/.*void +([A-Za-z0-9_]+).*/\1/' | sort -u || true)
    [[ -n $entries ]] || { echo "build.sh: no kernels found in $f" >&2; exit 1; }
    {
      echo "#include \"kernels/$name.cu\""
      for e in $entries; do echo "EMU_REGISTER($e)"; done
    } > "$out/obj/$name.cpp"
    "$cxx" "${flags[@]}" "${checked[@]}" -I"$out" -include emu.h -x c++ -c "$out/obj/$name.cpp" -o "$obj"
  ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done

for part in runtime warp_ops cp_async wgmma tma driver; do
  obj=$out/obj/$part.o
  objects+=("$obj")
  newer "$obj" "$here/$part.cpp" "$here"/*.h "$here"/include/*.h "$0" || continue
  case $part in
    runtime | warp_ops | wgmma) "$cxx" "${flags[@]}" -c "$here/$part.cpp" -o "$obj" ;;
    *) "$cxx" "${flags[@]}" "${checked[@]}" -c "$here/$part.cpp" -o "$obj" ;;
  esac
done
if newer "$out/libcuda.so" "${objects[@]}"; then
  "$cxx" "${flags[@]}" "${checked[@]}" -shared -o "$out/libcuda.so" "${objects[@]}"
fi
if newer "$out/libcublasLt.so" "$here/cublaslt.cpp" "$here/cublaslt_matmul.h" "$here/cublaslt_objects.h" "$0"; then
  "$cxx" "${flags[@]}" "${checked[@]}" -shared -o "$out/libcublasLt.so" "$here/cublaslt.cpp" -lpthread
fi
echo "$out"
