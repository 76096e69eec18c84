// What Hopper's two warpgroup-MMA mainloops share (sm_90a only): lowrank_wgmma.cu (cp.async loads
// by every thread) and lowrank_tma.cu (the copy engine, a producer warpgroup and mbarriers). Both
// keep 64-wide K tiles in the 128-byte-swizzled layouts wgmma reads, multiply them with the same
// descriptors and write the same epilogue.
#pragma once
#include "seg_gemm.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// 128-byte swizzle (the PTX ISA's Swizzle<3,4,3>): within each 1024-byte block of eight 128-byte
// rows, 16-byte chunk c of row r lives at chunk c ^ (r % 8). The copy engine writes this layout
// itself (CU_TENSOR_MAP_SWIZZLE_128B); the cp.async kernel computes it (kmajor_offset, nmajor_offset).
//
// K-major tile (A, and B stored N × K): one 128-byte row per M (or N) index holding its 64 K values.
// Descriptor: 8-row groups 1024 bytes apart (stride byte offset); leading byte offset unused.
// N-major tile (B stored K × N): one 128-byte row per K index holding 64 N values; the BN columns
// are BN / 64 such 64 × 64 blocks 8 KB apart (leading byte offset), 8-K-row groups 1024 bytes apart
// (stride byte offset).
constexpr int WG_BK = 64;

// Matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address, leading and stride byte
// offsets, each encoded as (x & 0x3FFFF) >> 4, and the 128-byte swizzle mode (1) in bits 62–63.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    auto enc = [](uint32_t x) { return (uint64_t)((x & 0x3FFFF) >> 4); };
    return enc(addr) | enc(lbo) << 16 | enc(sbo) << 32 | 1ull << 62;
}

// One 64-wide K tile of a warpgroup's 64 × BN slice: four k16 wgmmas. `sa` is the warpgroup's 64
// rows of A. K-major operands advance 32 bytes per k16 inside the swizzled row (the hardware
// applies the XOR to the final address); the N-major B advances two 8-row groups (2 KB).
template <bool NT, int BN>
__device__ __forceinline__ void wg_mma_ktile(float (&d)[BN / 2], uint32_t sa, uint32_t sb, uint32_t lbo, uint32_t sbo) {
#pragma unroll
    for (int kk = 0; kk < WG_BK / 16; ++kk) {
        const uint64_t da = smem_desc(sa + kk * 32, 16, 1024);
        const uint64_t db = NT ? smem_desc(sb + kk * 32, 16, 1024) : smem_desc(sb + kk * 2048, lbo, sbo);
        if constexpr (BN == 256) wgmma_m64n256k16<NT ? 0 : 1>(d, da, db);
        else wgmma_m64n128k16<NT ? 0 : 1>(d, da, db);
    }
}

// Epilogue of a warpgroup's 64 × BN slice at rows m0.., columns n0..: the m64nNk16 accumulator
// layout is mma.sync's m16n8 one per warp (rows 16·warp + lane/4 and +8) repeated every 8 columns:
// d[4j], d[4j+1] at columns 8j + 2·(lane % 4) + {0, 1}.
template <int BN, class OutT>
__device__ __forceinline__ void wg_store(const SegGemmParams& p, const float (&d)[BN / 2], int m0, int n0) {
    OutT* c = static_cast<OutT*>(p.c);
    const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
    const int row0 = m0 + warp * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        const int col = n0 + j * 8 + (lane % 4) * 2;
        if (col >= p.n_store) continue;
        const float b0 = p.bias ? to_float(p.bias[col]) : 0.0f, b1 = p.bias ? to_float(p.bias[col + 1]) : 0.0f;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = row0 + half * 8;
            if (row < p.m) epilogue_pair(p, c, row, col, d[4 * j + 2 * half] + b0, d[4 * j + 2 * half + 1] + b1);
        }
    }
}

template <bool V>
struct Bool {
    static constexpr bool value = V;
};

#endif  // __CUDA_ARCH_FEAT_SM90_ALL
