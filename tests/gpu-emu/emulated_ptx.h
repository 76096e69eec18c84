// Models of the PTX instructions in kernels/ptx.cuh, for the CPU emulator (build.sh defines
// LOWRANK_EMULATED). Each follows the PTX ISA's definition, including what a kernel can get wrong:
// cp.async lands only at the cp.async.wait_group that covers its group (so a wrong wait count reads
// stale or poisoned shared memory), ldmatrix / mma.sync are warp-wide (every lane must arrive), and
// wgmma.mma_async is warpgroup-wide and asynchronous: it reads shared memory through its matrix
// descriptors and writes the accumulators only at the wgmma.wait_group that retires its group.
#pragma once
#include "emu.h"

namespace emu {
// cp.async: queued per thread, performed by wait_group.
void cp_async(uint32_t dst, const void* src, bool pred);
void cp_async_commit_group();
void cp_async_wait_group(int n);
// ldmatrix .m8n8.x4 (.trans): lane l supplies the row address of row l % 8 of matrix l / 8.
void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, bool trans);
// mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32, d += a·b.
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
// wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 with A and B in shared memory (descriptors),
// d = A·B + (scale_d ? d : 0); trans_b reads B N-major. Queued per warpgroup until wait_group.
void wgmma_fence();
void wgmma_mma_async(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool scale_d, bool trans_b);
void wgmma_commit_group();
void wgmma_wait_group(int n);
}  // namespace emu

inline uint32_t smem_addr(const void* p) { return uint32_t(emu::smem_offset(p)); }
inline void cp_async_16(uint32_t dst, const void* src, bool pred) { emu::cp_async(dst, src, pred); }
inline void cp_async_commit() { emu::cp_async_commit_group(); }
template <int N>
inline void cp_async_wait() { emu::cp_async_wait_group(N); }
inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) { emu::ldmatrix_x4(r, addr, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) { emu::ldmatrix_x4(r, addr, true); }
inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { emu::mma_m16n8k16_bf16(d, a, b0, b1); }
template <int TRANS_B>
inline void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) { emu::wgmma_mma_async(d, 128, desc_a, desc_b, true, TRANS_B); }
inline void wgmma_fence() { emu::wgmma_fence(); }
inline void wgmma_commit() { emu::wgmma_commit_group(); }
template <int N>
inline void wgmma_wait() { emu::wgmma_wait_group(N); }
// Compiler-only fences on the GPU; the emulator's memory is ordered.
inline void fence_accumulators(float (&)[64]) {}
inline void fence_proxy_async() {}
