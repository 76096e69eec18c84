// Models of the PTX instructions in kernels/ptx.cuh, for the CPU emulator (build.sh defines
// LOWRANK_EMULATED). Each follows the PTX ISA's definition, including what a kernel can get wrong:
// cp.async lands only at the cp.async.wait_group that covers its group (so a wrong wait count reads
// stale or poisoned shared memory), ldmatrix / mma.sync are warp-wide (every lane must arrive), and
// wgmma.mma_async is warpgroup-wide and asynchronous: it reads shared memory through its matrix
// descriptors and writes the accumulators only at the wgmma.wait_group that retires its group.
#pragma once
#include "emu.h"

struct TmaMap;  // kernels/ptx.cuh (the emulator's own sources see only its name)

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
// mbarrier.init / arrive (with expect_tx when tx_bytes > 0) / try_wait.parity on the 8-byte
// barrier at shared-window address `bar`, and the bulk tensor copy (TMA) of one 2-D box described
// by a tensor map of the fake driver's cuTensorMapEncodeTiled, its bytes completing on `bar`.
void mbar_init(uint32_t bar, uint32_t count);
void mbar_arrive(uint32_t bar, uint32_t tx_bytes);
bool mbar_try_wait(uint32_t bar, uint32_t parity);
// `mask` −1: this block only; else .multicast::cluster to the blocks of the cluster in the mask.
void tma_load_2d(uint32_t dst, const void* map, int c0, int c1, uint32_t bar, int mask);
// Clusters: %cluster_ctarank, mapa + mbarrier.arrive.release.cluster.shared::cluster on block
// `cta`'s barrier at `bar`, and barrier.cluster.arrive / wait.
uint32_t cluster_ctarank();
uint32_t cluster_nctarank();
void mbar_arrive_cluster(uint32_t bar, uint32_t cta);
void cluster_arrive();
void cluster_wait();
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
template <int TRANS_B>
inline void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b) { emu::wgmma_mma_async(d, 256, desc_a, desc_b, true, TRANS_B); }
inline void wgmma_fence() { emu::wgmma_fence(); }
inline void wgmma_commit() { emu::wgmma_commit_group(); }
template <int N>
inline void wgmma_wait() { emu::wgmma_wait_group(N); }
// Compiler-only fences on the GPU; the emulator's memory is ordered.
template <int N>
inline void fence_accumulators(float (&)[N]) {}
inline void fence_proxy_async() {}
inline void mbar_init(uint32_t bar, uint32_t count) { emu::mbar_init(bar, count); }
inline void mbar_fence_init() {}
inline void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) { emu::mbar_arrive(bar, bytes); }
inline void mbar_arrive(uint32_t bar) { emu::mbar_arrive(bar, 0); }
inline bool mbar_try_wait(uint32_t bar, uint32_t parity) { return emu::mbar_try_wait(bar, parity); }
inline void tma_load_2d(uint32_t dst, const TmaMap* map, int c0, int c1, uint32_t bar) { emu::tma_load_2d(dst, map, c0, c1, bar, -1); }
inline void tma_load_2d_multicast(uint32_t dst, const TmaMap* map, int c0, int c1, uint32_t bar, uint16_t mask) {
    emu::tma_load_2d(dst, map, c0, c1, bar, mask);
}
inline uint32_t cluster_ctarank() { return emu::cluster_ctarank(); }
inline uint32_t cluster_nctarank() { return emu::cluster_nctarank(); }
inline void mbar_arrive_cluster(uint32_t bar, uint32_t cta) { emu::mbar_arrive_cluster(bar, cta); }
inline void cluster_sync() {
    emu::cluster_arrive();
    emu::cluster_wait();
}
// Register reallocation has no effect on the CPU.
template <int N>
inline void setmaxnreg_inc() {}
template <int N>
inline void setmaxnreg_dec() {}
